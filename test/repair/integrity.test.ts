/**
 * The repair server never writes another run's bytes and never wedges (docs/protocol.md, "Session
 * identity" and "Windows"): regressions of a repaired S2 that said "whole" while it held the
 * wrong bytes, or that stayed stuck until restarted.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import { parseGroup } from '../../src/net/address.js';
import {
  decodeNack,
  encodeAnnounce,
  encodeRepair,
  encodeRepairNotHeld,
  ListenState,
} from '../../src/protocol/control.js';
import { SessionKind } from '../../src/protocol/packet.js';
import { lossyS1Socket, type RepairServer, startRepairServer } from '../../src/repair/repair.js';
import { type RetransmitServer, startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openFileInput, openStreamInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { crafter, data, descriptor, end, heartbeat } from '../helpers/craft.js';
import { freshPort, loopbackIface, loopbackReceiver } from '../helpers/loopback.js';
import { loopbackTicker } from '../helpers/signed-bed.js';
import { waitUntil as waitFor } from '../helpers/wait.js';

const key = controlKey(Buffer.from('integrity test secret, not for use'));
const listen = { address: '127.0.0.1', port: 0, family: 4 as const };

const waitUntil = (what: string, check: () => boolean, timeoutMs = 20_000) => waitFor(what, check, timeoutMs);

async function bed(options: {
  lose?: (sequence: number) => boolean;
  latencyMs?: number;
  retransmit?: boolean;
}) {
  const s1 = parseGroup(`239.255.72.1:${freshPort()}`, 's1');
  const s2 = parseGroup(`239.255.72.2:${freshPort()}`, 's2');
  const retransmit: RetransmitServer | undefined =
    options.retransmit === false
      ? undefined
      : await startRetransmitServer({
          joins: [{ group: s1 }],
          iface: loopbackIface,
          listen,
          keys: [key],
          bufferBytesMax: 64 * 1024 * 1024,
          bufferAgeMs: 60_000,
          repairRateBitsPerSecond: 500_000_000,
          announceTo: [],
          peers: [],
        });
  const repair: RepairServer = await startRepairServer(
    {
      group: s1,
      iface: loopbackIface,
      listen,
      keys: [key],
      retransmit: retransmit === undefined ? [] : [retransmit.local],
      emit: s2,
      latencyMs: options.latencyMs,
    },
    options.lose === undefined ? {} : { openS1Socket: lossyS1Socket(options.lose) },
  );
  const close = async () => {
    await repair.close();
    await retransmit?.close();
  };
  return { s1, s2, retransmit, repair, close };
}

function receiverOf(group: ReturnType<typeof parseGroup>, timeoutMs = 10_000) {
  return loopbackReceiver(group, { timeoutMs });
}

const directory = mkdtempSync(join(tmpdir(), 'gatecast-integrity-'));
after(() => rmSync(directory, { recursive: true, force: true }));
let fileCount = 0;

async function source(
  group: ReturnType<typeof parseGroup>,
  sessionId: number,
  bytes: Buffer,
  kind: 'file' | 'stream',
) {
  const path = join(directory, `input-${fileCount++}`);
  writeFileSync(path, bytes);
  const input = kind === 'file' ? await openFileInput(path) : openStreamInput(Readable.from([bytes]));
  return createSource(
    {
      group,
      iface: loopbackIface,
      rateBitsPerSecond: 20_000_000,
      packetPayloadBytes: 1000,
      sessionName: kind,
      sessionId,
      firstSequence: 0,
      startDelayMs: 50,
    },
    { input },
  );
}

describe('repair keeps runs apart', () => {
  it('a source restarted under the same session id: the S2 copy of the second run holds its own packet 5', async () => {
    const t = await bed({ lose: (sequence) => sequence === 5 });
    try {
      const a = randomBytes(40_000);
      const b = randomBytes(40_000);
      await (await source(t.s1, 42, a, 'file')).run();
      await waitUntil('the first run re-emitted', () => t.repair.status().sessionsCompleted === 1);
      const rx = receiverOf(t.s2);
      await rx.ready;
      await (await source(t.s1, 42, b, 'stream')).run();
      const summary = await rx.done;
      assert.equal(summary.outcome, 'complete', JSON.stringify(t.repair.status()));
      assert.deepEqual(rx.sink.bytes(), b);
      const status = t.repair.status();
      assert.equal(status.recovered, 2, JSON.stringify(status)); // packet 5 of each run, each from its own run
      assert.equal(status.unrecoverable, 0);
    } finally {
      await t.close();
    }
  });

  it('a source killed without END: the next session on the group is served once the dead run falls silent', async () => {
    const t = await bed({});
    try {
      const out = await crafter(t.s1);
      const dead = { sessionId: 9, incarnation: 9 };
      out.send(descriptor(dead, { firstSequence: 0, next: 0, kind: SessionKind.stream }));
      out.send(...[0, 1, 2].map((s) => data(dead, s, Buffer.alloc(100, s))), heartbeat(dead, 5));
      await waitUntil('the dead run taken up', () => t.repair.status().sessionId === 9);
      await out.close();
      const rx = receiverOf(t.s2, 20_000);
      await rx.ready;
      const bytes = randomBytes(30_000);
      // The new session starts while the dead one still looks alive; its DATA waits, bounded.
      await (await source(t.s1, 10, bytes, 'file')).run();
      const summary = await rx.done;
      assert.equal(summary.outcome, 'complete', JSON.stringify(t.repair.status()));
      assert.deepEqual(rx.sink.bytes(), bytes);
      const status = t.repair.status();
      assert.equal(status.sessionsIncomplete, 1, JSON.stringify(status));
      assert.equal(status.unrecoverable, 2, "the dead run's tail (3 and 4) is counted, not hidden");
      assert.equal(status.sessionsCompleted, 1);
    } finally {
      await t.close();
    }
  });

  it('a repair server that joins a long file late repairs from there on and says what it cannot reach back for', async () => {
    const t = await bed({ retransmit: false });
    try {
      const out = await crafter(t.s1);
      const run = { sessionId: 12, incarnation: 12 };
      out.send(descriptor(run, { firstSequence: 0, next: 100_000 }));
      await waitUntil('the run taken up', () => t.repair.status().sessionId === 12);
      for (let s = 100_000; s < 100_200; s += 20) {
        out.send(...Array.from({ length: 20 }, (_, i) => data(run, s + i, Buffer.alloc(200, i))));
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      out.send(end(run, 100_200, 100_200));
      await waitUntil(
        'the run re-emitted to its END',
        () => t.repair.status().sessionsCompleted === 1,
        30_000,
      );
      await out.close();
      const status = t.repair.status();
      assert.equal(status.notReached, 100_000 - 16_384);
      assert.equal(status.unrecoverable, 16_384); // reached back for, and nobody held them
      assert.ok(status.emitted >= 200, JSON.stringify(status));
    } finally {
      await t.close();
    }
  });
});

describe('one forged packet cannot stop a live repaired stream', () => {
  it('forged HEARTBEATs (next + 65,000 and next + 5,000) into S1 of a --latency 100 repair: S2 stays whole, nothing counted as recovered', async () => {
    const t = await bed({ latencyMs: 100 });
    try {
      const rx = receiverOf(t.s2);
      const direct = receiverOf(t.s1);
      await Promise.all([rx.ready, direct.ready]);
      const run = { sessionId: 77, incarnation: 0x77 };
      const ticker = loopbackTicker(t.s1, run);
      const sending = ticker.run();
      await waitUntil('the run under way', () => (t.repair.status().emitted ?? 0) > 50);
      const out = await crafter(t.s1);
      out.send(heartbeat(run, 1000 + 65_000), heartbeat(run, 1000 + 5_000));
      await sending;
      await out.close();
      const [repaired, original] = await Promise.all([rx.done, direct.done]);
      assert.equal(original.outcome, 'complete');
      assert.equal(repaired.outcome, 'complete', JSON.stringify(t.repair.status()));
      assert.deepEqual(rx.sink.bytes(), direct.sink.bytes());
      const status = t.repair.status();
      assert.equal(status.recovered, 0, JSON.stringify(status));
      assert.equal(status.unrecoverable, 0, JSON.stringify(status));
      assert.ok(status.claimsTooFar >= 1);
    } finally {
      await t.close();
    }
  });
});

/**
 * A retransmit server on a loopback socket that this test drives by hand: it says it held a
 * session's *earlier* run up to sequence 50 (a true ANNOUNCE entry, of another incarnation), then
 * answers "not held" for the new run's packet 5 a dozen times, as a slow server that has not read
 * it yet would, and only then serves it.
 */
async function slowServer(run: { sessionId: number; incarnation: number }, held: Map<number, Buffer>) {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const at = { address: '127.0.0.1', port: socket.address().port };
  const channel = new ControlChannel([key], { self: () => [at] });
  const slowAnswers = 12;
  let notHeldSent = 0;
  let announced = false;
  const send = (datagram: Buffer, to: { address: string; port: number }) =>
    socket.send(datagram, to.port, to.address);
  socket.on('message', (message, rinfo) => {
    const remote = { address: rinfo.address, port: rinfo.port };
    const nack = channel.accept(message, remote, decodeNack, 'nack', () => undefined);
    if (nack === undefined) {
      return;
    }
    if (nack.auth.targetId === 0) {
      send(channel.introduction(nack), remote);
      return;
    }
    const fields = (sequence: number) => ({ ...run, sequence, timestampUs: Date.now() * 1000 });
    for (const range of nack.ranges) {
      for (let i = 0; i < range.count; i++) {
        const sequence = range.start + i;
        const original = held.get(sequence);
        if (sequence === 5 && notHeldSent < slowAnswers) {
          if (!announced) {
            // The earlier run of session 42 went past 50: true of that run, nothing of this one.
            const earlier = {
              sessionId: run.sessionId,
              incarnation: run.incarnation ^ 0xffff,
              firstHeld: 0,
              lastHeld: 50,
              heldCount: 51,
              lossPpm: 0,
              state: ListenState.listening,
            };
            const body = { ...at, sessions: [earlier] };
            send(channel.seal(encodeAnnounce(fields(0), body), remote), remote);
            announced = true;
          }
          notHeldSent++;
          send(channel.sealReply(encodeRepairNotHeld(fields(5), 1), nack), remote);
        } else if (original !== undefined) {
          send(channel.sealReply(encodeRepair(fields(sequence), original), nack), remote);
        } else {
          send(channel.sealReply(encodeRepairNotHeld(fields(sequence), 1), nack), remote);
        }
      }
    }
  });
  return {
    at: { ...at, family: 4 as const },
    notHeldSent: () => notHeldSent,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

describe('an ANNOUNCE speaks of one run', () => {
  it('a stale ANNOUNCE of the earlier run under the same session id does not make a slow server\'s "not held" final: packet 5 of the new run arrives whole', async () => {
    const run = { sessionId: 42, incarnation: 0x4242 };
    const payload = randomBytes(20 * 100);
    const packets = new Map<number, Buffer>();
    for (let s = 0; s < 20; s++) {
      packets.set(s, data(run, s, payload.subarray(s * 100, (s + 1) * 100)));
    }
    const server = await slowServer(run, packets);
    const s1 = parseGroup(`239.255.72.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.72.2:${freshPort()}`, 's2');
    let repair: RepairServer | undefined;
    let out: Awaited<ReturnType<typeof crafter>> | undefined;
    try {
      repair = await startRepairServer(
        {
          group: s1,
          iface: loopbackIface,
          listen,
          keys: [key],
          retransmit: [server.at],
          emit: s2,
          latencyMs: undefined, // reliable: a packet is given up only when no live server can serve it
        },
        { openS1Socket: lossyS1Socket((sequence) => sequence === 5) },
      );
      out = await crafter(s1);
      const rx = receiverOf(s2, 30_000);
      await rx.ready;
      out.send(descriptor(run, { firstSequence: 0, next: 0, payload }));
      out.send(...packets.values(), end(run, 20, 20, payload.length));
      const summary = await rx.done;
      const status = repair.status();
      assert.equal(server.notHeldSent(), 12, 'the server said "not held" a dozen times first');
      assert.equal(summary.outcome, 'complete', JSON.stringify(status));
      assert.deepEqual(rx.sink.bytes(), payload);
      assert.equal(status.unrecoverable, 0, JSON.stringify(status));
      assert.equal(status.recovered, 1);
    } finally {
      await out?.close();
      await repair?.close();
      await server.close();
    }
  });
});

/**
 * Sends a four-packet file run into S1 of `t`: its DESCRIPTOR, its DATA, then `forged` (made for
 * the run), and once S2 has the file, after `settleMs`, its END. Returns S2's summary and the file.
 */
async function fileRunWithForgery(
  t: Awaited<ReturnType<typeof bed>>,
  run: { sessionId: number; incarnation: number },
  forged: Buffer,
  settleMs = 0,
) {
  const rx = receiverOf(t.s2);
  await rx.ready;
  const payloadOf = (sequence: number) => Buffer.from(`file-${sequence}`.padEnd(100, '.'));
  const bytes = Buffer.concat([0, 1, 2, 3].map(payloadOf));
  const out = await crafter(t.s1);
  try {
    out.send(descriptor(run, { firstSequence: 0, next: 0, payload: bytes }));
    await waitUntil('the run taken up', () => t.repair.status().sessionId === run.sessionId);
    out.send(...[0, 1, 2, 3].map((sequence) => data(run, sequence, payloadOf(sequence))));
    out.send(forged);
    await waitUntil('the file re-emitted', () => (t.repair.status().emitted ?? 0) >= 4);
    if (settleMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, settleMs));
    }
    out.send(end(run, 4, 4, bytes.length));
    await waitUntil('the run completed', () => t.repair.status().sessionsCompleted === 1, 5_000);
  } finally {
    await out.close();
  }
  const summary = await rx.done;
  return { summary, bytes, written: rx.sink.bytes() };
}

describe("repair and a file's end", () => {
  it("one forged DATA past a file's end (by its DESCRIPTOR's size) into S1: the run completes and S2 holds the file whole", async () => {
    const t = await bed({ retransmit: false });
    try {
      const run = { sessionId: 91, incarnation: 0x91 };
      // The file has 4 packets: sequence 4 cannot exist.
      const { summary, bytes, written } = await fileRunWithForgery(
        t,
        run,
        data(run, 4, Buffer.from('forged')),
      );
      assert.equal(summary.outcome, 'complete', JSON.stringify(t.repair.status()));
      assert.deepEqual(written, bytes);
    } finally {
      await t.close();
    }
  });

  it("a forged HEARTBEAT past a file's end into S1: nothing past the end is asked for or counted unrecoverable", async () => {
    const t = await bed({});
    try {
      const run = { sessionId: 92, incarnation: 0x92 };
      // The file has 4 packets: 4 to 23 cannot exist. The second wait gives time for NACKs of what
      // the HEARTBEAT claimed, and the retransmit server's not-held answers.
      const { summary, bytes, written } = await fileRunWithForgery(t, run, heartbeat(run, 4 + 20), 1_000);
      assert.equal(summary.outcome, 'complete', JSON.stringify(t.repair.status()));
      assert.deepEqual(written, bytes);
      const status = t.repair.status();
      assert.equal(status.unrecoverable, 0, JSON.stringify(status));
      assert.equal(status.nacksSent, 0, JSON.stringify(status));
    } finally {
      await t.close();
    }
  });
});
