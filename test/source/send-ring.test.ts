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
import { manifestHash } from '../../src/crypto/authority.js';
import { createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { sendBatchPacketsMax, sendRingPacketsMax } from '../../src/limits.js';
import { parseGroup } from '../../src/net/address.js';
import type { SenderSocket } from '../../src/net/udp.js';
import {
  decodePacket,
  headerBytes,
  offsetBodyLength,
  offsetSequence,
  offsetType,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import { decodeSignature, SignatureKind } from '../../src/protocol/restricted.js';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { inputEnded, type PayloadInput } from '../../src/source/inputs.js';
import { createSource, type SourceComponents, type SourceSettings } from '../../src/source/source.js';
import { recordingSocket } from '../helpers/recording-socket.js';
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

describe('a failure in the middle of a burst: what was made ready before it is still sent (the burst was dropped)', () => {
  /** How many DATA went out; each plain one is checked to carry the payload countingInput gave it. */
  function dataOnWire(wire: readonly Buffer[], sealed: boolean): number {
    let count = 0;
    for (const datagram of wire) {
      const packet = decodePacket(datagram);
      if (!packet.ok || packet.value.type !== PacketType.data) {
        continue;
      }
      if (!sealed) {
        const expected = Buffer.alloc(50 + (count % 150));
        for (let index = 0; index < expected.length; index++) {
          expected[index] = (count * 31 + index) & 0xff;
        }
        assert.deepEqual(packet.value.payload, expected, `payload of DATA ${count}`);
      }
      count++;
    }
    return count;
  }

  // Not a multiple of the batch: the failure falls inside the second burst.
  const readyBeforeFailure = sendBatchPacketsMax + 36;

  it('plain: an input that fails to read sends the packets read before it, counted, and the run fails with its error', async () => {
    const { socket, wire } = recordingSocket();
    const input = countingInput(readyBeforeFailure * 2);
    const read = input.read.bind(input);
    let reads = 0;
    input.read = (out) => {
      if (reads++ === readyBeforeFailure) {
        throw new Error('EIO: i/o error, read');
      }
      return read(out);
    };
    const source = createSource(settings, { input, openSocket: async () => socket });
    await assert.rejects(source.run(), /EIO/);
    await source.close();
    assert.equal(dataOnWire(wire, false), readyBeforeFailure);
    assert.equal(source.stats.packetsSent, readyBeforeFailure);
  });

  it('restricted: a seal that fails (not for key epochs) sends the packets sealed before it and their manifests', async () => {
    const { socket, wire } = recordingSocket();
    const real = newsProtection(restrictedKeys.serviceKey, restrictedKeys.source);
    const source = createSource(settings, {
      input: countingInput(readyBeforeFailure * 2),
      openSocket: async () => socket,
      protection: (run) => {
        const protection = real(run);
        let seals = 0;
        return {
          ...protection,
          seal(plain, nowMs, wallUs, into) {
            if (seals++ === readyBeforeFailure) {
              throw new Error('the engine refused to seal');
            }
            return protection.seal(plain, nowMs, wallUs, into);
          },
        };
      },
    });
    await assert.rejects(source.run(), /refused to seal/);
    await source.close();
    assert.equal(dataOnWire(wire, true), readyBeforeFailure);
    assert.equal(source.stats.packetsSent, readyBeforeFailure);
    // Each manifest on the wire follows the DATA it vouches for, as they went out, and together
    // they cover the run from its first packet up to fewer than a manifest's 32 (newsProtection):
    // no manifest made ready with its DATA was left behind.
    const sent = new Map<number, Buffer>();
    const covered = new Set<number>();
    for (const datagram of wire) {
      if (datagram[offsetType] === PacketType.data) {
        sent.set(datagram.readUInt32BE(offsetSequence), datagram);
        continue;
      }
      const manifest = decodeSignature(datagram);
      if (!manifest.ok || manifest.value.kind !== SignatureKind.manifest) {
        continue;
      }
      manifest.value.hashes.forEach((hash, index) => {
        const sequence = sequenceAdd(manifest.value.sequence, index);
        const data = sent.get(sequence);
        assert.ok(data !== undefined, `a manifest names DATA ${sequence} before it went out`);
        assert.deepEqual(manifestHash(data), hash);
        covered.add(sequence);
      });
    }
    for (let index = 0; index < covered.size; index++) {
      assert.ok(covered.has(sequenceAdd(source.stats.firstSequence, index)), `DATA ${index} has a manifest`);
    }
    assert.ok(readyBeforeFailure - covered.size < 32, `${covered.size} of ${readyBeforeFailure} covered`);
  });
});

describe('a stop that falls while a burst is being sent: END counts every DATA that went out', () => {
  const signed: NonNullable<SourceComponents['protection']> = (run) =>
    createSignedSenderProtection(
      {
        sourcePrivateKey: restrictedKeys.source.privateKey,
        sourcePublicKey: restrictedKeys.source.publicKey,
        manifestPackets: 32,
      },
      run,
    );
  for (const [label, protection] of [
    ['plain', undefined],
    ['signed', signed],
    ['restricted', newsProtection(restrictedKeys.serviceKey, restrictedKeys.source)],
  ] as const) {
    it(`${label}: the burst made ready goes out whole, numbered without a gap, and END's count and sequence match the wire`, async () => {
      const controller = new AbortController();
      // The stop comes as the socket is handed the 100th DATA, inside the second burst of 64.
      const stopAtData = sendBatchPacketsMax + 36;
      let data = 0;
      const { socket, wire } = recordingSocket((datagram) => {
        if (datagram[offsetType] === PacketType.data && ++data === stopAtData) {
          controller.abort();
        }
      });
      const source = createSource(settings, {
        input: countingInput(sendBatchPacketsMax * 8),
        openSocket: async () => socket,
        ...(protection === undefined ? {} : { protection }),
      });
      const stats = await source.run({ signal: controller.signal });
      await source.close();
      const sequences = wire
        .filter((datagram) => datagram[offsetType] === PacketType.data)
        .map((datagram) => datagram.readUInt32BE(offsetSequence));
      // The stop is seen between bursts: the one it fell in was made ready before it, and is sent.
      assert.equal(sequences.length, sendBatchPacketsMax * 2);
      assert.deepEqual(
        sequences,
        sequences.map((_, index) => sequenceAdd(stats.firstSequence, index)),
      );
      assert.equal(stats.packetsSent, sequences.length);
      const end = wire
        .map((datagram) => decodePacket(datagram))
        .find((packet) => packet.ok && packet.value.type === PacketType.end);
      assert.ok(end?.ok === true && end.value.type === PacketType.end, 'END went out');
      assert.equal(end.value.packetCount, sequences.length);
      assert.equal(end.value.sequence, sequenceAdd(stats.firstSequence, sequences.length));
    });
  }
});

describe('the rate is counted on what goes on the wire', () => {
  for (const [label, protection] of [
    ['plain', undefined],
    [
      'restricted (tags, and a manifest per 32)',
      newsProtection(restrictedKeys.serviceKey, restrictedKeys.source),
    ],
  ] as const) {
    it(`${label}: datagramBytesSent is the DATA as sent and every manifest sent, repeats included`, async () => {
      const { socket, wire } = recordingSocket();
      const packets = 300;
      const source = createSource(
        { ...settings, rateBitsPerSecond: 0 },
        {
          input: countingInput(packets),
          openSocket: async () => socket,
          ...(protection === undefined ? {} : { protection }),
        },
      );
      const stats = await source.run();
      await source.close();
      const data = wire.filter((datagram) => datagram[offsetType] === PacketType.data);
      assert.equal(data.length, packets);
      const dataBytes = data.reduce((sum, datagram) => sum + datagram.length, 0);
      // Every manifest on the wire: after the DATA that completes it, over what was sent since the
      // last one, each repeat at the control ticks, the last ones with END.
      const manifests = new Set<string>();
      let manifestBytes = 0;
      for (const datagram of wire) {
        const decoded = datagram[offsetType] === PacketType.signature ? decodeSignature(datagram) : undefined;
        if (decoded?.ok === true && decoded.value.kind === SignatureKind.manifest) {
          manifestBytes += datagram.length;
          if (decoded.value.hashes.length === 32) {
            manifests.add(datagram.toString('hex'));
          }
        }
      }
      if (protection === undefined) {
        assert.equal(manifestBytes, 0);
        assert.equal(stats.datagramBytesSent, dataBytes);
      } else {
        assert.equal(manifests.size, Math.floor(packets / 32));
        assert.ok(
          data.every((datagram) => datagram.length === datagram.readUInt16BE(offsetBodyLength) + headerBytes),
        );
        assert.equal(stats.datagramBytesSent, dataBytes + manifestBytes);
        // The tag is counted: more than header and payload.
        assert.equal(dataBytes - stats.payloadBytesSent - packets * headerBytes, packets * 16);
      }
    });
  }

  it('a signed run of small packets paced to a rate puts no more than it on the wire, manifest repeats included', async () => {
    // 16-byte payloads and a manifest per 64: the manifests (each sent three times) are more than
    // half of what a run puts on the wire, so they must be paced with the DATA they cover.
    const rateBitsPerSecond = 400_000;
    const wire: Array<{ atMs: number; datagram: Buffer }> = [];
    const { socket } = recordingSocket((datagram) => wire.push({ atMs: performance.now(), datagram }));
    const packets = 640;
    let next = 0;
    const input: PayloadInput = {
      kind: SessionKind.stream,
      totalBytes: undefined,
      sha256: undefined,
      droppedCount: 0,
      read(out) {
        if (next >= packets) {
          return inputEnded;
        }
        out.fill(next++ & 0xff, 0, 16);
        return 16;
      },
      waitReadable: () => Promise.resolve(),
      async close() {},
    };
    const source = createSource(
      { ...settings, rateBitsPerSecond, packetPayloadBytes: 16 },
      {
        input,
        openSocket: async () => socket,
        protection: (run) =>
          createSignedSenderProtection(
            {
              sourcePrivateKey: restrictedKeys.source.privateKey,
              sourcePublicKey: restrictedKeys.source.publicKey,
              manifestPackets: 64,
            },
            run,
          ),
      },
    );
    const stats = await source.run();
    await source.close();
    const isData = (datagram: Buffer) => datagram[offsetType] === PacketType.data;
    const isManifest = (datagram: Buffer) =>
      datagram[offsetType] === PacketType.signature && datagram[headerBytes] === SignatureKind.manifest;
    const data = wire.filter((sent) => isData(sent.datagram));
    assert.equal(data.length, packets);
    const paced = wire.filter((sent) => isData(sent.datagram) || isManifest(sent.datagram));
    // From the first DATA to the last: what went on the wire in DATA and manifests, against the rate.
    const firstMs = (data[0] as (typeof data)[number]).atMs;
    const lastMs = (data.at(-1) as (typeof data)[number]).atMs;
    const windowBytes = paced
      .filter((sent) => sent.atMs >= firstMs && sent.atMs < lastMs)
      .reduce((sum, sent) => sum + sent.datagram.length, 0);
    const bitsPerSecond = (windowBytes * 8 * 1000) / (lastMs - firstMs);
    assert.ok(
      bitsPerSecond <= rateBitsPerSecond * 1.05,
      `${Math.round(bitsPerSecond)} bit/s on the wire in DATA and manifests, paced to ${rateBitsPerSecond}`,
    );
    // The summary's bytes are the same ones.
    assert.equal(
      stats.datagramBytesSent,
      paced.reduce((sum, sent) => sum + sent.datagram.length, 0),
    );
  });
});
