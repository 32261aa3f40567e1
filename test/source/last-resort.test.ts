import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { describe, it } from 'node:test';
import { generateSigningKey } from '../../src/crypto/authority.js';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import { KeyEpochsExhausted } from '../../src/crypto/errors.js';
import { createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { parseGroup } from '../../src/net/address.js';
import { systemRuntime } from '../../src/net/runtime.js';
import {
  decodeAnnounce,
  decodeRepair,
  encodeNack,
  ListenState,
  type PeerEndpoint,
} from '../../src/protocol/control.js';
import { encodeData, offsetSequence, offsetType, PacketType } from '../../src/protocol/packet.js';
import { encodeManifestUnsigned } from '../../src/protocol/restricted.js';
import { authTrailerBytes, headerBytes, repairFixedBytes } from '../../src/protocol/sizes.js';
import { openTickerInput } from '../../src/source/inputs.js';
import { startLastResort } from '../../src/source/last-resort.js';
import { createSource, type Source, type SourceComponents } from '../../src/source/source.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { waitUntil } from '../helpers/wait.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));

/**
 * A ticker source of `tickCount` packets of 100 bytes from sequence 100 on `group`, that stays as
 * the retransmit server of last resort and announces itself to `announceTo` every 100 ms.
 */
function lastResortSource(
  group: string,
  announceTo: PeerEndpoint,
  tickCount: number,
  protection?: SourceComponents['protection'],
): Source {
  return createSource(
    {
      group: parseGroup(`${group}:${freshPort()}`, 'group'),
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 100,
      sessionName: 't',
      firstSequence: 100,
      startDelayMs: 0,
      lastResort: {
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [key],
        bufferBytesMax: 1 << 20,
        repairRateBitsPerSecond: 100_000_000,
        announceTo: [{ ...announceTo, family: 4 }],
        iface: loopbackIface,
        periodMs: 100,
        quietMs: 500,
        lingerMsMax: 30_000,
      },
    },
    {
      input: openTickerInput({ ticksPerSecond: 1000, tickCount }),
      ...(protection === undefined ? {} : { protection }),
    },
  );
}

/** Sends `server` a NACK for `count` packets of `source`'s run from sequence 100, answered to `at`. */
function nack(
  socket: Socket,
  channel: ControlChannel,
  source: Source,
  server: PeerEndpoint,
  at: PeerEndpoint,
  ask: { count: number; signatures?: true },
): void {
  socket.send(
    channel.seal(
      encodeNack(
        {
          sessionId: source.stats.sessionId,
          incarnation: source.stats.incarnation,
          sequence: 100,
          timestampUs: 0,
        },
        {
          replyTo: at,
          ranges: [{ start: 100, count: ask.count }],
          ...(ask.signatures ? { signatures: true } : {}),
        },
      ),
      server,
    ),
    server.port,
    server.address,
  );
}

/**
 * A requester of the END's repair on loopback: records where the source announced itself, the
 * sequences of REPAIRs carrying an END and those answered "not held"; `askEnd` sends one NACK for
 * `sequence` (the END's) to the announced server.
 */
async function endRequester() {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const at: PeerEndpoint = { address: '127.0.0.1', port: socket.address().port };
  const channel = new ControlChannel([key]);
  const seen = {
    announcedAt: undefined as PeerEndpoint | undefined,
    ends: [] as number[],
    notHeld: [] as number[],
  };
  socket.on('message', (message, remote) => {
    if (message[offsetType] === PacketType.announce) {
      const announce = channel.accept(message, remote, decodeAnnounce, 'announce', () => undefined);
      if (announce !== undefined && announce.sessions.length > 0) {
        seen.announcedAt = { address: announce.address, port: announce.port };
      }
      return;
    }
    const repair = channel.accept(message, remote, decodeRepair, 'repair', () => undefined);
    if (repair?.end !== undefined) {
      seen.ends.push(repair.sequence);
    } else if (repair !== undefined && repair.notHeldCount > 0) {
      seen.notHeld.push(repair.sequence);
    }
  });
  const askEnd = (stats: { sessionId: number; incarnation: number }, sequence: number) => {
    const server = seen.announcedAt as PeerEndpoint;
    socket.send(
      channel.seal(
        encodeNack(
          { sessionId: stats.sessionId, incarnation: stats.incarnation, sequence, timestampUs: 0 },
          { replyTo: at, ranges: [{ start: sequence, count: 1 }] },
        ),
        server,
      ),
      server.port,
      server.address,
    );
  };
  return { socket, at, seen, askEnd };
}

/** A last resort on loopback whose buffer holds ten DATA datagrams of 100 bytes. */
function startTenPacketLastResort(run: { sessionId: number; incarnation: number }) {
  return startLastResort(
    {
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 10 * 132, // ten DATA datagrams of 100 bytes
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [],
    },
    run,
    systemRuntime,
  );
}

describe('a source as the retransmit server of last resort', () => {
  it('keeps a manifest only for packets it holds: repeats sent after their packets left the buffer kept them for good', async () => {
    const run = { sessionId: 9, incarnation: 4 };
    const lastResort = await startTenPacketLastResort(run);
    try {
      const datagram = (sequence: number) =>
        encodeData({ ...run, sequence, timestampUs: 0 }, Buffer.alloc(100, sequence));
      const manifest = (first: number) =>
        encodeManifestUnsigned(
          { ...run, sequence: first, timestampUs: 0 },
          Array.from({ length: 32 }, () => Buffer.alloc(16)),
        );
      for (let block = 0; block < 20; block++) {
        const first = block * 32;
        for (let sequence = first; sequence < first + 31; sequence++) {
          lastResort.keep(sequence, datagram(sequence));
        }
        lastResort.keepManifest(manifest(first)); // sent before the last packet it covers
        lastResort.keep(first + 31, datagram(first + 31));
        if (block > 0) {
          // The repeats at the next control ticks, long after the block's packets left the buffer.
          lastResort.keepManifest(manifest(first - 32));
        }
      }
      const stats = lastResort.stats();
      assert.equal(stats.heldPackets, 10);
      assert.ok(
        stats.manifestSequences <= stats.heldPackets,
        `manifests kept for ${stats.manifestSequences} sequences, ${stats.heldPackets} held`,
      );
    } finally {
      await lastResort.close();
    }
  });

  it('keeps the newest packets that fit, evicting oldest first, across the 32-bit wrap; an older packet than the oldest kept is not taken', async () => {
    const run = { sessionId: 9, incarnation: 5 };
    const lastResort = await startTenPacketLastResort(run);
    try {
      const datagram = (sequence: number) =>
        encodeData({ ...run, sequence, timestampUs: 0 }, Buffer.alloc(100, sequence & 0xff));
      const start = 2 ** 32 - 2_000;
      for (let step = 0; step < 5_000; step++) {
        lastResort.keep((start + step) >>> 0, datagram((start + step) >>> 0));
      }
      let stats = lastResort.stats();
      assert.equal(stats.heldPackets, 10);
      assert.equal(stats.heldBytes, 10 * 132);
      assert.equal(stats.evicted, 4_990);
      lastResort.keep((start + 4_980) >>> 0, datagram((start + 4_980) >>> 0)); // behind the oldest kept
      lastResort.keep((start + 4_995) >>> 0, datagram((start + 4_995) >>> 0)); // held already
      stats = lastResort.stats();
      assert.equal(stats.heldPackets, 10);
      assert.equal(stats.evicted, 4_990);
      lastResort.keep((start + 5_000) >>> 0, datagram((start + 5_000) >>> 0));
      stats = lastResort.stats();
      assert.equal(stats.heldPackets, 10);
      assert.equal(stats.evicted, 4_991);
    } finally {
      await lastResort.close();
    }
  });

  it('announces itself as last resort, answers NACKs from what it sent, and stays after END while NACKs come', async () => {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    const at: PeerEndpoint = { address: '127.0.0.1', port: socket.address().port };
    const channel = new ControlChannel([key]);
    let announcedAt: PeerEndpoint | undefined;
    let announcedState: number | undefined;
    const held = new Map<number, Buffer>();
    socket.on('message', (message, remote) => {
      if (message[offsetType] === PacketType.announce) {
        const announce = channel.accept(message, remote, decodeAnnounce, 'announce', () => undefined);
        if (announce !== undefined && announce.sessions.length > 0) {
          announcedAt = { address: announce.address, port: announce.port };
          announcedState = announce.sessions[0]?.state;
        }
        return;
      }
      const repair = channel.accept(message, remote, decodeRepair, 'repair', () => undefined);
      if (repair?.data !== undefined) {
        held.set(repair.sequence, Buffer.from(repair.data.payload));
      }
    });
    const source = lastResortSource('239.255.82.1', at, 50);
    let finished = false;
    const running = source.run().then((stats) => {
      finished = true;
      return stats;
    });
    try {
      await waitUntil('the announcement', () => announcedAt !== undefined, 5_000);
      assert.equal(announcedState, ListenState.lastResort);
      await waitUntil('all 50 packets sent', () => source.stats.packetsSent === 50, 10_000);
      const server = announcedAt as PeerEndpoint;
      // Keep asking (every 200 ms, under the quiet time) until the answers come: the source stays.
      for (let round = 0; round < 100 && held.size < 50; round++) {
        nack(socket, channel, source, server, at, { count: 50 });
        await waitUntil('the answers', () => held.size === 50, 200).catch(() => undefined);
        assert.equal(finished, false, 'the source stays while NACKs come');
      }
      assert.equal(held.size, 50);
      const stats = await running; // ends once no NACK came for the quiet time
      assert.equal(stats.lastResort?.heldPackets, 50);
      assert.ok((stats.lastResort?.repairsSent ?? 0) >= 50);
      for (const [sequence, payload] of held) {
        assert.ok(payload.length > 0, `sequence ${sequence} carries its payload`);
      }
    } finally {
      await source.close();
      socket.close();
    }
  });

  it("keeps its END: a NACK for the END's sequence (every copy lost at the edge) is answered with a REPAIR carrying it", async () => {
    const { socket, at, seen, askEnd } = await endRequester();
    const source = lastResortSource('239.255.82.3', at, 20);
    const running = source.run();
    try {
      await waitUntil('the announcement', () => seen.announcedAt !== undefined, 5_000);
      await waitUntil('all 20 packets sent', () => source.stats.packetsSent === 20, 10_000);
      // The END's sequence is the one after the last DATA: 100 + 20. Asked until the END has gone
      // out (the source sends it after its last DATA) and is answered.
      for (let round = 0; round < 50 && seen.ends.length === 0; round++) {
        askEnd(source.stats, 120);
        await waitUntil('the END answered', () => seen.ends.length > 0, 200).catch(() => undefined);
      }
      assert.deepEqual(seen.ends.slice(0, 1), [120], `not held: ${seen.notHeld.join(',')}`);
      await running;
    } finally {
      await source.close();
      socket.close();
    }
  });

  it('a run whose key epochs ran out still answers repairs after its END, then throws KeyEpochsExhausted', async () => {
    const { socket, at, seen, askEnd } = await endRequester();
    const signing = generateSigningKey();
    // The protection's epochs run out at its 21st packet (a test cannot wait 18 hours): its seal
    // throws there what a restricted run's throws past epoch 65,535.
    const source = lastResortSource('239.255.82.5', at, 50, (identity) => {
      const real = createSignedSenderProtection(
        { sourcePrivateKey: signing.privateKey, sourcePublicKey: signing.publicKey, manifestPackets: 32 },
        identity,
      );
      let sealed = 0;
      return {
        ...real,
        seal(plain, nowMs, wallUs, into) {
          if (sealed++ >= 20) {
            throw new KeyEpochsExhausted('the run has used all 65535 key epochs');
          }
          return real.seal(plain, nowMs, wallUs, into);
        },
      };
    });
    let settled = false;
    const running = source.run().finally(() => {
      settled = true;
    });
    running.catch(() => undefined);
    try {
      await waitUntil('the announcement', () => seen.announcedAt !== undefined, 5_000);
      await waitUntil('20 packets sent', () => source.stats.packetsSent === 20, 10_000);
      // Asked every 200 ms (under the 500 ms quiet time): the END is answered once sent, and the
      // source stays well past its END repeats (4 x 50 ms) while the asking goes on.
      let roundsAfterEnd = 0;
      for (let round = 0; round < 50 && roundsAfterEnd < 4; round++) {
        askEnd(source.stats, 120);
        await waitUntil('the END answered', () => seen.ends.length > 0, 200).catch(() => undefined);
        roundsAfterEnd += seen.ends.length > 0 ? 1 : 0;
        if (seen.ends.length > 0) {
          await new Promise((resolve) => setTimeout(resolve, 200));
          assert.equal(settled, false, 'the source stays while NACKs come');
        }
      }
      assert.deepEqual(seen.ends.slice(0, 1), [120]);
      assert.equal(roundsAfterEnd, 4);
      await assert.rejects(running, KeyEpochsExhausted);
      assert.equal(source.stats.packetsSent, 20);
    } finally {
      await source.close();
      socket.close();
    }
  });

  it('a signed run: a NACK with the signatures flag gets each covering manifest, verified against the source key, ahead of the REPAIRs', async () => {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    const at: PeerEndpoint = { address: '127.0.0.1', port: socket.address().port };
    const channel = new ControlChannel([key]);
    const signing = generateSigningKey();
    const gate = createSignedSessionGate(signing.publicKey);
    let announcedAt: PeerEndpoint | undefined;
    const order: string[] = [];
    socket.on('message', (message, remote) => {
      if (message[offsetType] === PacketType.announce) {
        const announce = channel.accept(message, remote, decodeAnnounce, 'announce', () => undefined);
        if (announce !== undefined && announce.sessions.length > 0) {
          announcedAt = { address: announce.address, port: announce.port };
        }
        return;
      }
      const repair = channel.accept(message, remote, decodeRepair, 'repair', () => undefined);
      if (repair?.signature !== undefined) {
        gate.filter(repair.signature, () => undefined);
        order.push(`manifest ${repair.sequence}`);
      } else if (repair?.data !== undefined) {
        order.push(`data ${repair.sequence}`);
      }
    });
    const source = lastResortSource('239.255.82.2', at, 64, (identity) =>
      createSignedSenderProtection(
        { sourcePrivateKey: signing.privateKey, sourcePublicKey: signing.publicKey, manifestPackets: 32 },
        identity,
      ),
    );
    const running = source.run();
    try {
      await waitUntil('the announcement', () => announcedAt !== undefined, 5_000);
      await waitUntil('all 64 packets sent', () => source.stats.packetsSent === 64, 10_000);
      const server = announcedAt as PeerEndpoint;
      const ask = () => nack(socket, channel, source, server, at, { count: 64, signatures: true });
      // The first NACK may only introduce us (target 0); ask until the answers come, every 300 ms.
      for (let round = 0; round < 50 && order.filter((o) => o.startsWith('data')).length < 64; round++) {
        ask();
        await waitUntil('the answers', () => order.length >= 66, 300).catch(() => undefined);
      }
      // Each DATA comes after a manifest that covers it (the newest one at or below its sequence).
      // A manifest covers up to 32 packets; a sender slowed down flushes a shorter one, so how many
      // there are depends on the host's pace.
      const manifestAt = (entry: string) => Number(entry.slice('manifest '.length));
      const distinct = [...new Set(order.filter((o) => o.startsWith('manifest')).map(manifestAt))];
      assert.equal(distinct[0], 100, order.slice(0, 4).join(', '));
      for (const [index, entry] of order.entries()) {
        if (entry.startsWith('data')) {
          const sequence = Number(entry.slice('data '.length));
          const covering = Math.max(...distinct.filter((start) => start <= sequence));
          assert.ok(order.slice(0, index).includes(`manifest ${covering}`), `${entry} before its manifest`);
        }
      }
      // Once per manifest for each NACK answered, not once per packet.
      const manifests = order.filter((o) => o.startsWith('manifest')).length;
      const data = order.filter((o) => o.startsWith('data')).length;
      const rounds = order.filter((o) => o === 'data 100').length;
      assert.ok(data >= 64 && manifests <= distinct.length * rounds, order.join(', '));
      // Every manifest verified against the source key (once: repeats are not verified again), and
      // together they vouch for every packet asked for.
      assert.equal(gate.stats.signaturesVerified, distinct.length, JSON.stringify(gate.stats));
      for (let sequence = 100; sequence < 164; sequence++) {
        assert.ok(
          gate.vouches(source.stats.sessionId, source.stats.incarnation, sequence),
          `sequence ${sequence}`,
        );
      }
      await running;
    } finally {
      await source.close();
      socket.close();
    }
  });

  it("a signed run: a NACK for the END's sequence with the signatures flag gets the END's SIGNATURE too, so the END is authenticated", async () => {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    const at: PeerEndpoint = { address: '127.0.0.1', port: socket.address().port };
    const channel = new ControlChannel([key]);
    const signing = generateSigningKey();
    const gate = createSignedSessionGate(signing.publicKey);
    let announcedAt: PeerEndpoint | undefined;
    let endsRepaired = 0;
    const endsAuthenticated: number[] = [];
    socket.on('message', (message, remote) => {
      if (message[offsetType] === PacketType.announce) {
        const announce = channel.accept(message, remote, decodeAnnounce, 'announce', () => undefined);
        if (announce !== undefined && announce.sessions.length > 0) {
          announcedAt = { address: announce.address, port: announce.port };
        }
        return;
      }
      const repair = channel.accept(message, remote, decodeRepair, 'repair', () => undefined);
      if (repair?.signature !== undefined) {
        gate.filter(repair.signature, () => undefined);
      } else if (repair?.end !== undefined) {
        endsRepaired++;
        // As a repair server with the source key takes it: only once authenticated.
        const original = message.subarray(headerBytes + repairFixedBytes, message.length - authTrailerBytes);
        gate.filter(original, (end) => endsAuthenticated.push(end.readUInt32BE(offsetSequence)));
      }
    });
    const source = lastResortSource('239.255.82.4', at, 20, (identity) =>
      createSignedSenderProtection(
        { sourcePrivateKey: signing.privateKey, sourcePublicKey: signing.publicKey, manifestPackets: 32 },
        identity,
      ),
    );
    const running = source.run();
    try {
      await waitUntil('the announcement', () => announcedAt !== undefined, 5_000);
      await waitUntil('all 20 packets sent', () => source.stats.packetsSent === 20, 10_000);
      const server = announcedAt as PeerEndpoint;
      for (let round = 0; round < 50 && endsAuthenticated.length === 0; round++) {
        socket.send(
          channel.seal(
            encodeNack(
              {
                sessionId: source.stats.sessionId,
                incarnation: source.stats.incarnation,
                sequence: 120,
                timestampUs: 0,
              },
              { replyTo: at, ranges: [{ start: 120, count: 1 }], signatures: true },
            ),
            server,
          ),
          server.port,
          server.address,
        );
        await waitUntil('the END authenticated', () => endsAuthenticated.length > 0, 200).catch(
          () => undefined,
        );
      }
      assert.ok(endsRepaired > 0, 'the END is answered');
      assert.deepEqual(endsAuthenticated.slice(0, 1), [120], JSON.stringify(gate.stats));
      await running;
    } finally {
      await source.close();
      socket.close();
    }
  });
});
