/**
 * The source's send rings (the plain one and the sealed one of a restricted run) reuse a slot
 * every sendRingPacketsMax packets. A slot may be written again only once the socket has said its
 * datagram left: a socket completes sends in its own order (SenderSocket.send promises no order),
 * so one slow datagram must hold its slot even while hundreds of later ones complete. The fake
 * socket here snapshots each datagram when it is handed over and checks, when it completes it,
 * that the bytes are still those: a slot overwritten in flight would go on the wire altered.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sendBatchPacketsMax, sendRingPacketsMax } from '../../src/limits.js';
import { parseGroup } from '../../src/net/address.js';
import type { SenderSocket } from '../../src/net/udp.js';
import { decodePacket, PacketType, SessionKind } from '../../src/protocol/packet.js';
import { inputEnded, type PayloadInput } from '../../src/source/inputs.js';
import { createSource, type SourceComponents, type SourceSettings } from '../../src/source/source.js';
import { newsProtection, restrictedKeys } from '../helpers/restricted-bed.js';

const settings: SourceSettings = {
  group: parseGroup('239.255.64.1:5000', 'g'),
  rateBitsPerSecond: 0,
  packetPayloadBytes: 200,
  sessionName: 'ring',
  startDelayMs: 0,
};

/** `count` payloads, each filled with bytes of its own index. */
function countingInput(count: number): PayloadInput {
  let next = 0;
  return {
    kind: SessionKind.stream,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    read(out) {
      if (next >= count) {
        return inputEnded;
      }
      const length = 50 + (next % 150);
      for (let index = 0; index < length; index++) {
        out[index] = (next * 31 + index) & 0xff;
      }
      next++;
      return length;
    },
    waitReadable: () => Promise.resolve(),
    async close() {},
  };
}

interface Held {
  readonly buffer: Buffer;
  readonly length: number;
  readonly snapshot: Buffer;
  readonly done: ((error: Error | null) => void) | undefined;
  readonly releaseAfterSends: number;
}

/**
 * A socket that completes most sends at once (on the next turn) but holds every `slowEvery`th
 * until `holdSends` more datagrams were handed to it, or until no send came for `idleMs` (so a
 * source that waits for the held one is let go; every wait is bounded).
 */
function slowSocket(slowEvery: number, holdSends: number, idleMs = 30) {
  const held: Held[] = [];
  let sends = 0;
  let idle: NodeJS.Timeout | undefined;
  const report = { sends: 0, checked: 0, altered: [] as string[], datagrams: [] as Buffer[], closed: false };
  const complete = (entry: Held) => {
    report.checked++;
    if (!entry.buffer.subarray(0, entry.length).equals(entry.snapshot)) {
      // The common header's sequence (docs/protocol.md, "Header"), as it was sent.
      report.altered.push(`type ${entry.snapshot[3]} sequence ${entry.snapshot.readUInt32BE(12)}`);
    }
    entry.done?.(null);
  };
  const releaseDue = (force: boolean) => {
    for (let index = held.length - 1; index >= 0; index--) {
      const entry = held[index] as Held;
      if (force || sends >= entry.releaseAfterSends) {
        held.splice(index, 1);
        complete(entry);
      }
    }
  };
  const socket: SenderSocket = {
    iface: undefined,
    send(buffer, length, done) {
      const entry: Held = {
        buffer,
        length,
        snapshot: Buffer.from(buffer.subarray(0, length)),
        done,
        releaseAfterSends: sends + holdSends,
      };
      report.datagrams.push(entry.snapshot);
      sends++;
      report.sends = sends;
      if (sends % slowEvery === 0) {
        held.push(entry);
      } else {
        setImmediate(() => complete(entry));
      }
      setImmediate(() => releaseDue(false));
      clearTimeout(idle);
      idle = setTimeout(() => releaseDue(true), idleMs);
    },
    async close() {
      clearTimeout(idle);
      releaseDue(true);
      report.closed = true;
    },
    async [Symbol.asyncDispose]() {
      await socket.close();
    },
  };
  return { socket, report };
}

async function runWith(protection: SourceComponents['protection'], packets: number) {
  const { socket, report } = slowSocket(97, sendRingPacketsMax + 64);
  const source = createSource(settings, {
    input: countingInput(packets),
    openSocket: async () => socket,
    ...(protection === undefined ? {} : { protection }),
  });
  const stats = await source.run();
  await source.close();
  return { stats, report };
}

describe('send rings: a slot is not written again while its datagram is in flight', () => {
  it('plain: a datagram held past a whole ring of later ones completes with the bytes it was sent with', async () => {
    const packets = sendRingPacketsMax * 3;
    const { stats, report } = await runWith(undefined, packets);
    assert.equal(stats.packetsSent, packets);
    assert.equal(stats.sendErrors, 0);
    assert.equal(report.checked, report.sends);
    assert.deepEqual(report.altered, []);
    // Every DATA on the wire carries its own payload.
    const data = report.datagrams
      .map((datagram) => decodePacket(datagram))
      .filter((packet) => packet.ok && packet.value.type === PacketType.data);
    assert.equal(data.length, packets);
  });

  it('restricted: the sealed ring keeps a held DATA intact', async () => {
    const packets = sendRingPacketsMax * 3;
    const { stats, report } = await runWith(
      newsProtection(restrictedKeys.serviceKey, restrictedKeys.source),
      packets,
    );
    assert.equal(stats.packetsSent, packets);
    assert.equal(stats.sendErrors, 0);
    assert.equal(report.checked, report.sends);
    assert.deepEqual(report.altered, []);
  });
});

describe('bursts: the packets a turn may send are made ready, then sent back to back', () => {
  /** Runs `packets` through a source whose input and socket write one shared log of what happened. */
  async function logged(
    protection: SourceComponents['protection'],
    packets: number,
    rateBitsPerSecond: number,
  ) {
    const log: string[] = [];
    const input = countingInput(packets);
    const read = input.read.bind(input);
    input.read = (out) => {
      const length = read(out);
      if (length !== inputEnded) {
        log.push('ready');
      }
      return length;
    };
    const socket: SenderSocket = {
      iface: undefined,
      send(buffer, length, done) {
        const packet = decodePacket(buffer.subarray(0, length));
        if (packet.ok && packet.value.type === PacketType.data) {
          log.push('sent');
        }
        setImmediate(() => done?.(null));
      },
      async close() {},
      async [Symbol.asyncDispose]() {},
    };
    const source = createSource(
      { ...settings, rateBitsPerSecond },
      { input, openSocket: async () => socket, ...(protection === undefined ? {} : { protection }) },
    );
    const stats = await source.run();
    await source.close();
    return { stats, log };
  }

  /** The log as runs of one kind: "ready 64, sent 64, ready 64, …". */
  function runs(log: readonly string[]): Array<[string, number]> {
    const out: Array<[string, number]> = [];
    for (const entry of log) {
      const last = out.at(-1);
      if (last !== undefined && last[0] === entry) {
        last[1]++;
      } else {
        out.push([entry, 1]);
      }
    }
    return out;
  }

  for (const [label, protection] of [
    ['plain', undefined],
    ['restricted', newsProtection(restrictedKeys.serviceKey, restrictedKeys.source)],
  ] as const) {
    it(`${label}: unpaced, each batch of ${sendBatchPacketsMax} is read${label === 'restricted' ? ' and sealed' : ''} before its first packet is sent`, async () => {
      const packets = sendBatchPacketsMax * 3 + 5;
      const { stats, log } = await logged(protection, packets, 0);
      assert.equal(stats.packetsSent, packets);
      assert.deepEqual(runs(log), [
        ['ready', sendBatchPacketsMax],
        ['sent', sendBatchPacketsMax],
        ['ready', sendBatchPacketsMax],
        ['sent', sendBatchPacketsMax],
        ['ready', sendBatchPacketsMax],
        ['sent', sendBatchPacketsMax],
        ['ready', 5],
        ['sent', 5],
      ]);
    });
  }

  it('paced: a burst holds what the credit allows, more than one packet, never more than a batch', async () => {
    // 1,400 bytes a millisecond: a turn that slept a few milliseconds has credit for several packets.
    const packets = 120;
    const { stats, log } = await logged(undefined, packets, 11_200_000);
    assert.equal(stats.packetsSent, packets);
    const bursts = runs(log)
      .filter(([kind]) => kind === 'sent')
      .map(([, count]) => count);
    assert.equal(
      bursts.reduce((sum, count) => sum + count, 0),
      packets,
    );
    assert.ok(
      bursts.every((count) => count <= sendBatchPacketsMax),
      `bursts ${bursts.join(' ')}`,
    );
    assert.ok(
      bursts.some((count) => count > 1),
      `bursts ${bursts.join(' ')}`,
    );
    // Each burst was made ready whole before it went: the log alternates ready and sent runs of one size.
    const pairs = runs(log);
    for (let index = 0; index < pairs.length; index += 2) {
      assert.deepEqual([pairs[index]?.[0], pairs[index + 1]?.[0]], ['ready', 'sent']);
      assert.equal(pairs[index]?.[1], pairs[index + 1]?.[1]);
    }
  });
});
