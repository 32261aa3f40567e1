import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { controlKey } from '../../src/crypto/control-auth.js';
import { parseEndpoint, parseGroup } from '../../src/net/address.js';
import { type Runtime, systemRuntime } from '../../src/net/runtime.js';
import { openReceiverSocket } from '../../src/net/udp.js';
import { decodeHeader, PacketType } from '../../src/protocol/packet.js';
import { sequenceDistance } from '../../src/protocol/serial.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { lossyS1Socket, startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openFileInput } from '../../src/source/inputs.js';
import { startLastResort } from '../../src/source/last-resort.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';
import { createRandom } from '../helpers/random.js';
import { waitUntil } from '../helpers/wait.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-repair-'));
after(() => rmSync(directory, { recursive: true, force: true }));
const key = controlKey(Buffer.from('loopback test secret, not for use'));

async function repairRun(options: {
  lossPercent: number;
  firstSequence: number;
  failFirst?: boolean;
  latencyMs?: number;
  /** Lose, besides, every DATA from this many packets into the file on, and every END: the tail. */
  loseTailFrom?: number;
  /**
   * A source of last resort of another session announces itself to the repair server, and the
   * retransmit server loses one DATA in 50 and announces that loss (every 100 ms).
   */
  otherSource?: boolean;
}) {
  const bytes = randomBytes(1_500_000);
  const path = join(directory, `file-${options.firstSequence}.bin`);
  writeFileSync(path, bytes);
  const s1 = parseGroup(`239.255.70.1:${freshPort()}`, 's1');
  const s2 = parseGroup(`239.255.70.2:${freshPort()}`, 's2');
  const other = options.otherSource === true;
  const repairListen = { address: '127.0.0.1', port: other ? freshPort() : 0, family: 4 as const };
  const retransmit = await startRetransmitServer(
    {
      joins: [{ group: s1 }],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 as const },
      keys: [key],
      bufferBytesMax: 64 * 1024 * 1024,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 500_000_000,
      announceTo: other ? [repairListen] : [],
      peers: [],
      election: other ? { lossMax: 1, bestCount: 2, periodMs: 100 } : undefined,
    },
    other ? { runtime: lossyRetransmitRuntime(createRandom(7)) } : {},
  );
  // A retransmit server that never answers, listed first: it must cost one timeout, not packets.
  const dead = parseEndpoint(`127.0.0.1:${freshPort()}`, 'dead');
  const random = createRandom(options.firstSequence);
  const repair = await startRepairServer(
    {
      group: s1,
      iface: loopbackIface,
      listen: repairListen,
      keys: [key],
      retransmit: options.failFirst ? [dead, retransmit.local] : [retransmit.local],
      emit: s2,
      latencyMs: options.latencyMs,
    },
    {
      openS1Socket:
        options.loseTailFrom === undefined
          ? lossyS1Socket(() => random.int(100) < options.lossPercent)
          : tailLosingS1Socket(
              options.firstSequence,
              options.loseTailFrom,
              () => random.int(100) < options.lossPercent,
            ),
    },
  );
  const otherSource = other
    ? await startLastResort(
        {
          listen: { address: '127.0.0.1', port: 0, family: 4 },
          keys: [key],
          bufferBytesMax: 1 << 20,
          repairRateBitsPerSecond: 10_000_000,
          announceTo: [repair.local],
          periodMs: 50,
        },
        { sessionId: 0x0bad_5e55, incarnation: 9 },
        systemRuntime,
      )
    : undefined;
  if (otherSource !== undefined) {
    await waitUntil(
      'the repair server to hear the other source',
      () => repair.status().servers.length >= 2,
      5_000,
    );
  }
  const sink = memorySink();
  const receiver = createReceiver({ group: s2, iface: loopbackIface, timeoutMs: 10_000 }, { sink });
  const receiving = receiver.run();
  const source = createSource(
    {
      group: s1,
      iface: loopbackIface,
      rateBitsPerSecond: other ? 10_000_000 : 100_000_000,
      packetPayloadBytes: 1400,
      sessionName: 'repaired.bin',
      firstSequence: options.firstSequence,
    },
    { input: await openFileInput(path) },
  );
  await source.run();
  const summary = await receiving;
  const status = { repair: repair.status(), retransmit: retransmit.status(), other: otherSource?.stats() };
  await otherSource?.close();
  await repair.close();
  await retransmit.close();
  return { summary, status, sha: createHash('sha256').update(bytes).digest('hex'), got: sink.bytes() };
}

/** A retransmit server's runtime whose S1 sockets lose one DATA in 50 (it measures and announces loss). */
function lossyRetransmitRuntime(random: ReturnType<typeof createRandom>): Runtime {
  return {
    ...systemRuntime,
    transport: {
      ...systemRuntime.transport,
      openReceiver: (receiverOptions, onDatagram) =>
        systemRuntime.transport.openReceiver(receiverOptions, (datagram, remote) => {
          const header = decodeHeader(datagram);
          if (header.ok && header.value.type === PacketType.data && random.int(100) < 2) {
            return;
          }
          onDatagram(datagram, remote);
        }),
    },
  };
}

/** An S1 socket that loses DATA at random, every DATA from `from` packets into the run on, and every END. */
function tailLosingS1Socket(
  firstSequence: number,
  from: number,
  lose: () => boolean,
): typeof openReceiverSocket {
  return (options, onDatagram) =>
    openReceiverSocket(options, (datagram, remote) => {
      const header = decodeHeader(datagram);
      if (header.ok && header.value.type === PacketType.end) {
        return;
      }
      if (
        header.ok &&
        header.value.type === PacketType.data &&
        (sequenceDistance(firstSequence, header.value.sequence) >= from || lose())
      ) {
        return;
      }
      onDatagram(datagram, remote);
    });
}

describe('repair over loopback: source -> lossy S1 -> repair server (+ retransmit server) -> S2 -> receive', () => {
  it('the tail of the file and every END lost on S1: the retransmit server holds them, S2 is whole', async () => {
    const { summary, status, sha, got } = await repairRun({
      lossPercent: 5,
      firstSequence: 0xffff_ff00,
      loseTailFrom: 700,
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(status));
    assert.equal(createHash('sha256').update(got).digest('hex'), sha);
    assert.ok(status.repair.gaps >= 1072 - 700, `only ${status.repair.gaps} gaps`);
    assert.equal(status.repair.recovered, status.repair.gaps);
    assert.equal(status.repair.unrecoverable, 0);
    assert.ok(status.repair.tailProbes >= 1);
    assert.ok(status.repair.endsRepaired >= 1, 'the END came in a REPAIR');
    assert.equal(status.repair.sessionsCompleted, 1);
  });

  it('10 % loss across the sequence wrap: S2 is whole, every gap recovered', async () => {
    const { summary, status, sha, got } = await repairRun({ lossPercent: 10, firstSequence: 0xffff_fe00 });
    assert.equal(summary.outcome, 'complete', JSON.stringify(status));
    assert.equal(createHash('sha256').update(got).digest('hex'), sha);
    assert.ok(status.repair.gaps > 50, `only ${status.repair.gaps} gaps`);
    assert.equal(status.repair.recovered, status.repair.gaps);
    assert.equal(status.repair.unrecoverable, 0);
    assert.equal(status.retransmit.repairsSent, status.repair.repairsReceived);
    assert.ok(status.repair.nacksSent <= status.repair.gaps * 1.1 + 5, JSON.stringify(status.repair));
  });

  it('a source of last resort of another session is not asked for this one (it ranked as a listening server with no loss)', async () => {
    const { summary, status } = await repairRun({ lossPercent: 10, firstSequence: 5, otherSource: true });
    assert.equal(summary.outcome, 'complete', JSON.stringify(status));
    assert.equal(status.repair.unrecoverable, 0);
    assert.ok(status.retransmit.repairsSent > 0);
    // Asked at most for what the retransmit server said it does not hold (it lost it too).
    assert.ok(
      (status.other?.nacksReceived ?? 0) <= status.retransmit.notHeldSent,
      JSON.stringify({ other: status.other, retransmitNotHeld: status.retransmit.notHeldSent }),
    );
  });

  it('a dead retransmit server listed first costs a timeout, not the packet', async () => {
    const { summary, status } = await repairRun({ lossPercent: 5, firstSequence: 1, failFirst: true });
    assert.equal(summary.outcome, 'complete', JSON.stringify(status));
    assert.equal(status.repair.unrecoverable, 0);
    assert.ok(status.repair.timeouts >= 1);
    // After the first timeouts the dead server is ranked last: most gaps cost no timeout at all.
    assert.ok(status.repair.timeouts < status.repair.gaps / 2, JSON.stringify(status.repair));
  });
});

describe('four repair servers behind one lossy link', () => {
  it('a repair group answers each lost packet about once, not once per repair server', async () => {
    const bytes = randomBytes(700_000);
    const path = join(directory, 'four.bin');
    writeFileSync(path, bytes);
    const s1 = parseGroup(`239.255.71.1:${freshPort()}`, 's1');
    const repairGroup = parseGroup(`239.255.71.3:${freshPort()}`, 'rg');
    const retransmit = await startRetransmitServer({
      joins: [{ group: s1 }],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 64 * 1024 * 1024,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 1_000_000_000,
      announceTo: [],
      peers: [],
      repairGroup,
    });
    // The same packets are lost for every repair server: the loss is on the link they share.
    const random = createRandom(7);
    const lost = new Set<number>();
    for (let sequence = 0; sequence < 500; sequence++) {
      if (random.int(100) < 10) {
        lost.add(sequence);
      }
    }
    const repairs = [];
    const receivers = [];
    for (let i = 0; i < 4; i++) {
      const s2 = parseGroup(`239.255.71.${10 + i}:${freshPort()}`, 's2');
      repairs.push(
        await startRepairServer(
          {
            group: s1,
            iface: loopbackIface,
            listen: { address: '127.0.0.1', port: 0, family: 4 },
            keys: [key],
            retransmit: [retransmit.local],
            repairGroup,
            emit: s2,
            latencyMs: undefined,
            nackDelayMsMax: 10,
          },
          { openS1Socket: lossyS1Socket((sequence) => lost.has(sequence)) },
        ),
      );
      receivers.push(
        createReceiver({ group: s2, iface: loopbackIface, timeoutMs: 10_000 }, { sink: memorySink() }).run(),
      );
    }
    const source = createSource(
      {
        group: s1,
        iface: loopbackIface,
        rateBitsPerSecond: 20_000_000,
        packetPayloadBytes: 1400,
        sessionName: 'four',
        firstSequence: 0,
      },
      { input: await openFileInput(path) },
    );
    await source.run();
    const summaries = await Promise.all(receivers);
    const status = retransmit.status();
    for (const repair of repairs) {
      await repair.close();
    }
    await retransmit.close();
    for (const summary of summaries) {
      assert.equal(summary.outcome, 'complete');
      assert.equal(summary.sha256, createHash('sha256').update(bytes).digest('hex'));
    }
    const perLost = status.repairsSent / lost.size;
    assert.ok(
      perLost <= 1.5,
      `${status.repairsSent} repairs for ${lost.size} lost packets (${perLost.toFixed(2)} each); suppressed ${status.suppressed}`,
    );
    assert.ok(status.suppressed > 0 || status.nacksReceived < 4 * lost.size);
  });
});

describe('announcements', () => {
  it('a repair server with no configured retransmit server learns one from the announcement group and repairs', async () => {
    const bytes = randomBytes(400_000);
    const path = join(directory, 'announced.bin');
    writeFileSync(path, bytes);
    const s1 = parseGroup(`239.255.72.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.72.2:${freshPort()}`, 's2');
    const announceGroup = parseGroup(`239.255.72.3:${freshPort()}`, 'announce');
    const retransmit = await startRetransmitServer({
      joins: [{ group: s1 }],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 8 * 1024 * 1024,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 500_000_000,
      announceTo: [],
      announceGroup,
      peers: [],
      election: { lossMax: 0.05, bestCount: 2, periodMs: 100 },
    });
    const repair = await startRepairServer(
      {
        group: s1,
        iface: loopbackIface,
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [key],
        retransmit: [],
        announceGroup,
        emit: s2,
        latencyMs: undefined,
      },
      { openS1Socket: lossyS1Socket((sequence) => sequence % 10 === 3) },
    );
    const receiving = createReceiver(
      { group: s2, iface: loopbackIface, timeoutMs: 10_000 },
      { sink: memorySink() },
    ).run();
    const source = createSource(
      {
        group: s1,
        iface: loopbackIface,
        rateBitsPerSecond: 10_000_000,
        packetPayloadBytes: 1400,
        sessionName: 'a',
        firstSequence: 0,
      },
      { input: await openFileInput(path) },
    );
    await source.run();
    const summary = await receiving;
    const status = repair.status();
    await repair.close();
    await retransmit.close();
    assert.equal(summary.outcome, 'complete', JSON.stringify(status));
    assert.equal(status.servers.length, 1);
    assert.equal(status.servers[0]?.address, `127.0.0.1:${retransmit.local.port}`);
    assert.ok(status.recovered >= 28);
  });
});
