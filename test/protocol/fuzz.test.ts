import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeAnnounce,
  decodeFeedback,
  decodeNack,
  decodeQuality,
  decodeRepair,
  decodeSetup,
  encodeAnnounce,
  encodeFeedback,
  encodeNack,
  encodeQuality,
  encodeRepair,
  encodeSetup,
  ListenState,
  SetupAction,
} from '../../src/protocol/control.js';
import type { DecodeResult } from '../../src/protocol/errors.js';
import {
  decodeData,
  decodeDescriptor,
  decodeEnd,
  decodeHeader,
  decodeHeartbeat,
  decodePacket,
  encodeData,
  encodeDescriptor,
  encodeProgress,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import { createRandom } from '../helpers/random.js';

const iterations = Number(process.env.GATECAST_FUZZ_ITERATIONS ?? 1_000_000);

/** Valid packets of every type, the seeds that mutations start from. */
function seeds(): Buffer[] {
  const fields = { sessionId: 1, incarnation: 3, sequence: 0xffffffff, timestampUs: 1_700_000_000_000_000 };
  return [
    encodeData(fields, Buffer.from('0123456789abcdef0123456789')),
    encodeData(fields, Buffer.alloc(0)),
    encodeProgress(PacketType.heartbeat, fields, { packetCount: 10, byteCount: 14000 }),
    encodeProgress(PacketType.end, fields, { packetCount: 10, byteCount: 14000 }),
    encodeDescriptor(fields, {
      firstSequence: 1,
      packetPayloadBytes: 1400,
      kind: SessionKind.file,
      totalBytes: 1,
      rateBitsPerSecond: 1,
      sha256: Buffer.alloc(32, 1),
      name: 'fuzz',
    }),
    encodeNack(fields, {
      replyTo: { address: '10.0.0.2', port: 7100 },
      ranges: [
        { start: 1, count: 3 },
        { start: 9, count: 1 },
      ],
    }),
    encodeRepair(fields, encodeData(fields, Buffer.from('repaired'))),
    encodeAnnounce(fields, {
      address: 'fd00::1',
      port: 7000,
      sessions: [
        {
          sessionId: 1,
          incarnation: 7,
          firstHeld: 1,
          lastHeld: 2,
          heldCount: 2,
          lossPpm: 3,
          state: ListenState.listening,
        },
      ],
    }),
    encodeQuality(fields, {
      sessions: [
        {
          sessionId: 1,
          incarnation: 7,
          received: 1,
          missing: 0,
          lossPpm: 0,
          jitterUs: 5,
          state: ListenState.withdrawn,
        },
      ],
    }),
    encodeSetup(fields, {
      action: SetupAction.join,
      group: '239.1.1.1',
      port: 5,
      source: undefined,
      bufferBytes: 1,
      bufferAgeMs: 1,
      target: { address: 'fd00::21', port: 7000 },
    }),
    encodeFeedback(fields, {
      missing: 3,
      holding: 40,
      unrecoverable: 0,
      socketDrops: 7,
      received: 1000,
      nacked: 12,
    }),
  ];
}

const decoders: Array<[string, (b: Buffer) => DecodeResult<unknown>]> = [
  ['header', decodeHeader],
  ['packet', decodePacket],
  ['data', decodeData],
  ['heartbeat', decodeHeartbeat],
  ['end', decodeEnd],
  ['descriptor', decodeDescriptor],
  ['nack', decodeNack],
  ['repair', decodeRepair],
  ['announce', decodeAnnounce],
  ['quality', decodeQuality],
  ['setup', decodeSetup],
  ['feedback', decodeFeedback],
];

describe(`every decoder on ${iterations} random and mutated datagrams`, () => {
  for (const [name, decode] of decoders) {
    it(`${name} returns a result and never throws`, () => {
      const random = createRandom(0x6a7e + name.length);
      const base = seeds();
      const reasons = new Map<string, number>();
      let accepted = 0;
      for (let i = 0; i < iterations; i++) {
        const datagram = mutate(random, base);
        const result = decode(datagram);
        if (result.ok) {
          accepted++;
        } else {
          reasons.set(result.reason, (reasons.get(result.reason) ?? 0) + 1);
        }
      }
      // Both outcomes must occur: mutated seeds stay valid sometimes, and random bytes never do.
      assert.ok(accepted > 0, `${name} accepted nothing`);
      assert.ok(reasons.size >= 3, `${name} saw only ${[...reasons.keys()].join(', ')}`);
    });
  }
});

/** One test datagram: pure noise, a seed with flipped bits, a truncated or extended seed. */
function mutate(random: ReturnType<typeof createRandom>, base: Buffer[]): Buffer {
  const choice = random.int(8);
  if (choice === 0) {
    return random.bytes(random.int(120));
  }
  const seed = base[random.int(base.length)] ?? Buffer.alloc(0);
  const copy = Buffer.from(seed);
  if (choice <= 3) {
    const flips = 1 + random.int(3);
    for (let i = 0; i < flips; i++) {
      const at = random.int(copy.length);
      copy[at] = (copy[at] ?? 0) ^ (1 << random.int(8));
    }
    return copy;
  }
  if (choice === 4) {
    return copy.subarray(0, random.int(copy.length + 1));
  }
  if (choice === 5) {
    return Buffer.concat([copy, random.bytes(1 + random.int(8))]);
  }
  return copy;
}
