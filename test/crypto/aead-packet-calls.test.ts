/**
 * The packet path's one engine call at each end (src/crypto/aead-engine.ts, native/aead.c):
 * `sealPacket` and `openPacket` take the packet nonce from the DATA header (incarnation ‖ key
 * epoch ‖ 0 ‖ sequence, docs/protocol.md), the header as associated data, and write the header's
 * body length themselves. Both engines must give the bytes the general calls give with the nonce
 * written by hand; a changed header field, body or tag opens nothing and leaves zeros; misuse is a
 * CipherError with nothing written.
 *
 * Where the addon is not built the addon's half says so and skips; under
 * GATECAST_REQUIRE_PACKAGES=1 (CI) it fails instead.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import {
  type AeadContext,
  type AeadName,
  aeadEngine,
  createAeadContext,
  createNodeCryptoAeadContext,
  keyBytesOf,
} from '../../src/crypto/aead-engine.js';
import { CipherError } from '../../src/crypto/errors.js';
import { PacketOpener, PacketSealer, suites, writePacketNonce } from '../../src/crypto/suites.js';
import {
  encodeData,
  headerBytes,
  offsetBodyLength,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  offsetTimestamp,
} from '../../src/protocol/packet.js';
import { addonMissing } from '../helpers/engines.js';
import { createRandom } from '../helpers/random.js';

/** Every suite's cipher, its key length as the engine knows it (keyBytesOf). */
const names = Object.keys(keyBytesOf) as AeadName[];

/** The two engines' contexts for one key, the addon's only where it is in use. */
function enginesFor(
  name: AeadName,
  key: Buffer,
): Array<{ label: string; seal: AeadContext; open: AeadContext }> {
  const engines = [
    {
      label: 'node:crypto',
      seal: createNodeCryptoAeadContext(name, key, true),
      open: createNodeCryptoAeadContext(name, key, false),
    },
  ];
  if (aeadEngine().name === 'openssl-evp') {
    engines.push({
      label: 'addon',
      seal: createAeadContext(name, key, true),
      open: createAeadContext(name, key, false),
    });
  }
  return engines;
}

/** A plain DATA datagram of a run, epoch and sequence. */
function plainData(random: ReturnType<typeof createRandom>, payloadBytes: number, sequence = 77): Buffer {
  const datagram = encodeData(
    { sessionId: 0x0a0b0c0d, incarnation: 0xfedc_ba98, sequence, timestampUs: 1_234_567 },
    random.bytes(payloadBytes),
  );
  datagram.writeUInt16BE(3, offsetKeyEpoch);
  return datagram;
}

/** The nonce a DATA header names, written from its fields by hand (what a sealer checks). */
function nonceOf(plain: Buffer): Buffer {
  return writePacketNonce(
    Buffer.alloc(12),
    plain.readUInt32BE(offsetIncarnation),
    plain.readUInt16BE(offsetKeyEpoch),
    plain.readUInt32BE(offsetSequence),
  );
}

/** What sealPacket must give: the general call with the nonce written from the header by hand. */
function sealedByHand(context: AeadContext, plain: Buffer): Buffer {
  const nonce = writePacketNonce(
    Buffer.alloc(12),
    plain.readUInt32BE(offsetIncarnation),
    plain.readUInt16BE(offsetKeyEpoch),
    plain.readUInt32BE(offsetSequence),
  );
  const out = Buffer.alloc(plain.length + 16);
  plain.copy(out, 0, 0, headerBytes);
  out.writeUInt16BE(plain.length - headerBytes + 16, offsetBodyLength);
  context.sealDatagram(nonce, plain, out, headerBytes);
  return out;
}

describe('one engine call a DATA packet', () => {
  it('seals the bytes the general call seals with the header nonce, in both engines, hash included', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0x5eed);
    for (const name of names) {
      const key = random.bytes(keyBytesOf[name]);
      const reference = createNodeCryptoAeadContext(name, key, true);
      for (const payloadBytes of [0, 1, 15, 16, 17, 1400]) {
        const plain = plainData(random, payloadBytes);
        const expected = sealedByHand(reference, plain);
        const kept = Buffer.from(plain);
        for (const { label, seal } of enginesFor(name, key)) {
          const out = Buffer.alloc(plain.length + 20, 0xee);
          const hash = Buffer.alloc(24, 0xee);
          seal.sealPacket(nonceOf(plain), plain, out, hash, 4, 16);
          assert.deepEqual(out.subarray(0, expected.length), expected, `${label} ${name} ${payloadBytes}`);
          assert.ok(
            out.subarray(expected.length).every((byte) => byte === 0xee),
            `${label}: wrote past the datagram`,
          );
          assert.deepEqual(
            hash.subarray(4, 20),
            createHash('sha256').update(expected).digest().subarray(0, 16),
          );
          assert.ok(
            hash.subarray(0, 4).every((byte) => byte === 0xee) &&
              hash.subarray(20).every((byte) => byte === 0xee),
          );
          assert.deepEqual(plain, kept, `${label}: the plaintext changed`);
          // In place: the plaintext at the start of the output's own buffer.
          const room = Buffer.alloc(plain.length + 16);
          plain.copy(room);
          seal.sealPacket(nonceOf(room.subarray(0, plain.length)), room.subarray(0, plain.length), room);
          assert.deepEqual(room, expected, `${label} ${name} ${payloadBytes} in place`);
        }
      }
    }
  });

  it('opens in place to the plain datagram with its body length, and each engine opens the other', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0x0be7);
    for (const name of names) {
      const key = random.bytes(keyBytesOf[name]);
      const engines = enginesFor(name, key);
      for (const payloadBytes of [0, 1, 1400]) {
        const plain = plainData(random, payloadBytes);
        for (const sealer of engines) {
          const sealed = Buffer.alloc(plain.length + 16);
          sealer.seal.sealPacket(nonceOf(plain), plain, sealed);
          for (const opener of engines) {
            const datagram = Buffer.from(sealed);
            assert.equal(opener.open.openPacket(datagram), plain.length, `${sealer.label} → ${opener.label}`);
            assert.deepEqual(datagram.subarray(0, plain.length), plain);
          }
        }
      }
    }
  });

  it('opens nothing when a header field, the body or the tag changed: -1, the body zeroed, the header as it came', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0xf1a9);
    const changes: Array<[string, (datagram: Buffer) => void]> = [
      [
        'incarnation',
        (d) => d.writeUInt32BE((d.readUInt32BE(offsetIncarnation) ^ 1) >>> 0, offsetIncarnation),
      ],
      ['key epoch', (d) => d.writeUInt16BE(d.readUInt16BE(offsetKeyEpoch) ^ 0x100, offsetKeyEpoch)],
      ['sequence', (d) => d.writeUInt32BE((d.readUInt32BE(offsetSequence) + 1) >>> 0, offsetSequence)],
      [
        'session id',
        (d) => d.writeUInt32BE((d.readUInt32BE(offsetSessionId) ^ 0x8000_0000) >>> 0, offsetSessionId),
      ],
      ['timestamp', (d) => (d[offsetTimestamp + 7] = (d[offsetTimestamp + 7] ?? 0) ^ 1)],
      ['body length', (d) => d.writeUInt16BE(d.readUInt16BE(offsetBodyLength) - 16, offsetBodyLength)],
      ['first body byte', (d) => (d[headerBytes] = (d[headerBytes] ?? 0) ^ 0x80)],
      ['last tag byte', (d) => (d[d.length - 1] = (d[d.length - 1] ?? 0) ^ 1)],
    ];
    for (const name of names) {
      const key = random.bytes(keyBytesOf[name]);
      for (const { label, seal, open } of enginesFor(name, key)) {
        const plain = plainData(random, 600);
        const sealed = Buffer.alloc(plain.length + 16);
        seal.sealPacket(nonceOf(plain), plain, sealed);
        for (const [what, change] of changes) {
          const datagram = Buffer.from(sealed);
          change(datagram);
          const header = Buffer.from(datagram.subarray(0, headerBytes));
          assert.equal(open.openPacket(datagram), -1, `${label} ${name}: ${what}`);
          assert.ok(
            datagram.subarray(headerBytes, datagram.length - 16).every((byte) => byte === 0),
            `${label} ${name}: ${what} left plaintext`,
          );
          assert.deepEqual(datagram.subarray(0, headerBytes), header, `${label}: ${what} rewrote the header`);
        }
      }
    }
  });

  it('refuses misuse with a CipherError and writes nothing, in both engines', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0xbad);
    const key = random.bytes(32);
    for (const { label, seal, open } of enginesFor('aes-256-gcm', key)) {
      const plain = plainData(random, 100);
      const cases: Array<[string, () => unknown, Buffer]> = [];
      const short = Buffer.alloc(plain.length + 15);
      cases.push(['output too short', () => seal.sealPacket(nonceOf(plain), plain, short), short]);
      const shifted = Buffer.alloc(600);
      plain.copy(shifted);
      const afterPlain = shifted.subarray(plain.length);
      cases.push([
        'output overlapping the plaintext',
        () =>
          seal.sealPacket(
            nonceOf(shifted.subarray(0, plain.length)),
            shifted.subarray(0, plain.length),
            shifted.subarray(40),
          ),
        afterPlain,
      ]);
      const hashInside = Buffer.alloc(plain.length + 16);
      cases.push([
        'hash inside the sealed datagram',
        () => seal.sealPacket(nonceOf(plain), plain, hashInside, hashInside, 40, 16),
        hashInside,
      ]);
      const hashRoom = Buffer.alloc(plain.length + 16);
      cases.push([
        'hash past its buffer',
        () => seal.sealPacket(nonceOf(plain), plain, hashRoom, Buffer.alloc(10), 0, 16),
        hashRoom,
      ]);
      const zeroHash = Buffer.alloc(plain.length + 16);
      cases.push([
        'a hash of no bytes',
        () => seal.sealPacket(nonceOf(plain), plain, zeroHash, Buffer.alloc(32), 0, 0),
        zeroHash,
      ]);
      const noHeader = Buffer.alloc(64);
      cases.push([
        'a plaintext shorter than a header',
        () => seal.sealPacket(Buffer.alloc(12), Buffer.alloc(31), noHeader),
        noHeader,
      ]);
      const huge = Buffer.alloc(headerBytes + 0xffff);
      const hugeOut = Buffer.alloc(huge.length + 16);
      cases.push([
        'a body past the 16-bit length',
        () => seal.sealPacket(nonceOf(huge), huge, hugeOut),
        hugeOut,
      ]);
      const wrongWay = Buffer.alloc(plain.length + 16);
      cases.push([
        'an opening key asked to seal',
        () => open.sealPacket(nonceOf(plain), plain, wrongWay),
        wrongWay,
      ]);
      for (const [what, call, untouched] of cases) {
        assert.throws(call, CipherError, `${label}: ${what}`);
        assert.ok(
          untouched.every((byte) => byte === 0),
          `${label}: ${what} wrote`,
        );
      }
      // Opening: too short for a header and a tag, or not bytes at all.
      const tooShort = Buffer.alloc(headerBytes + 15, 1);
      assert.throws(() => open.openPacket(tooShort), CipherError, `${label}: 47 bytes`);
      assert.ok(
        tooShort.every((byte) => byte === 1),
        `${label}: the short datagram was written`,
      );
      // A body past 65,535 bytes, which no header can name, is refused before it is opened, even
      // under a tag that verifies (sealed by the general call with the header's nonce); the
      // second's plaintext is past 65,535 bytes too.
      for (const bodyBytes of [0x1_0000, 0x1_0000 + 20]) {
        const long = Buffer.alloc(headerBytes + bodyBytes - 16);
        plain.copy(long, 0, 0, headerBytes);
        const longSealed = Buffer.alloc(long.length + 16);
        long.copy(longSealed, 0, 0, headerBytes);
        longSealed.writeUInt16BE(bodyBytes & 0xffff, offsetBodyLength);
        const longNonce = writePacketNonce(
          Buffer.alloc(12),
          long.readUInt32BE(offsetIncarnation),
          long.readUInt16BE(offsetKeyEpoch),
          long.readUInt32BE(offsetSequence),
        );
        seal.sealDatagram(longNonce, long, longSealed, headerBytes);
        const longKept = Buffer.from(longSealed);
        assert.throws(
          () => open.openPacket(longSealed),
          CipherError,
          `${label}: a body of ${bodyBytes} bytes`,
        );
        assert.ok(
          longSealed.equals(longKept),
          `${label}: the datagram of a ${bodyBytes}-byte body was written`,
        );
      }
      for (const notBytes of ['a string of more than forty-eight characters, not a datagram', 12345, null]) {
        assert.throws(
          () => open.openPacket(notBytes as unknown as Buffer),
          CipherError,
          `${label}: ${String(notBytes)}`,
        );
      }
      const sealed = Buffer.alloc(plain.length + 16);
      seal.sealPacket(nonceOf(plain), plain, sealed);
      assert.throws(
        () => seal.openPacket(Buffer.from(sealed)),
        CipherError,
        `${label}: a sealing key asked to open`,
      );
      open.dispose();
      assert.throws(() => open.openPacket(Buffer.from(sealed)), CipherError, `${label}: a disposed key`);
    }
    // A disposed sealing key writes nothing either: not the output, nor (in place) the plaintext's header.
    for (const { label, seal } of enginesFor('aes-256-gcm', key)) {
      seal.dispose();
      const plain = plainData(random, 100);
      const kept = Buffer.from(plain);
      const out = Buffer.alloc(plain.length + 16);
      assert.throws(
        () => seal.sealPacket(nonceOf(plain), plain, out),
        CipherError,
        `${label}: a disposed key`,
      );
      assert.ok(
        out.every((byte) => byte === 0),
        `${label}: a disposed key wrote into the output`,
      );
      const room = Buffer.alloc(plain.length + 16);
      plain.copy(room);
      assert.throws(
        () => seal.sealPacket(nonceOf(room.subarray(0, plain.length)), room.subarray(0, plain.length), room),
        CipherError,
      );
      assert.deepEqual(
        room.subarray(0, plain.length),
        kept,
        `${label}: a disposed key changed the plaintext`,
      );
    }
  });

  it('seals only under the nonce the sealer checked: a header naming another is refused, nothing written', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0x4ead);
    for (const name of names) {
      const key = random.bytes(keyBytesOf[name]);
      for (const { label, seal } of enginesFor(name, key)) {
        const plain = plainData(random, 200);
        for (const field of [0, 4, 6, 11]) {
          const other = nonceOf(plain);
          other[field] = (other[field] ?? 0) ^ 1;
          const out = Buffer.alloc(plain.length + 16);
          assert.throws(
            () => seal.sealPacket(other, plain, out),
            CipherError,
            `${label} ${name}: byte ${field}`,
          );
          assert.ok(
            out.every((byte) => byte === 0),
            `${label}: wrote before refusing`,
          );
          const room = Buffer.alloc(plain.length + 16);
          plain.copy(room);
          assert.throws(() => seal.sealPacket(other, room.subarray(0, plain.length), room), CipherError);
          assert.deepEqual(
            room.subarray(0, plain.length),
            plain,
            `${label}: in place, the plaintext changed`,
          );
        }
        assert.throws(
          () => seal.sealPacket(Buffer.alloc(11), plain, Buffer.alloc(plain.length + 16)),
          CipherError,
        );
      }
    }
  });

  it('a plaintext whose length reads one number to the checks and another after is sealed whole or refused with nothing written, in both engines', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0x1e9);
    for (const name of names) {
      for (const { label, seal } of enginesFor(name, random.bytes(keyBytesOf[name]))) {
        for (const honestReads of [1, 2, 3, 4, 5, 6, 8, 12]) {
          const plain = plainData(random, 16);
          const expected = sealedByHand(seal, plain);
          const length = plain.length;
          let reads = 0;
          Object.defineProperty(plain, 'length', {
            get: () => (++reads > honestReads ? 100_000 : length),
          });
          const out = Buffer.alloc(length + 16);
          try {
            seal.sealPacket(nonceOf(plain), plain, out);
          } catch (error) {
            assert.ok(error instanceof CipherError, String(error));
            assert.ok(
              out.every((byte) => byte === 0),
              `${label} ${name}: wrote before refusing (length honest ${honestReads} times)`,
            );
            continue;
          }
          assert.deepEqual(out, expected, `${label} ${name}: sealed other bytes`);
        }
      }
    }
  });

  it('a key disposed by a getter of the plaintext while sealPacket reads it is refused with nothing written, in both engines', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.diagnostic(`addon half skipped: ${missing}`);
    }
    const random = createRandom(0xd15);
    for (const name of names) {
      for (const { label, seal } of enginesFor(name, random.bytes(keyBytesOf[name]))) {
        const plain = plainData(random, 16);
        const nonce = nonceOf(plain);
        const expected = sealedByHand(seal, plain);
        const memory = plain.buffer;
        Object.defineProperty(plain, 'buffer', {
          get: () => {
            seal.dispose();
            return memory;
          },
        });
        const out = Buffer.alloc(plain.length + 16);
        // The addon reads no getter (it seals whole); node:crypto's reads one and must refuse clean.
        try {
          seal.sealPacket(nonce, plain, out);
        } catch (error) {
          assert.ok(error instanceof CipherError, String(error));
          assert.ok(
            out.every((byte) => byte === 0),
            `${label} ${name}: wrote before refusing a disposed key`,
          );
          continue;
        }
        assert.deepEqual(out, expected, `${label} ${name}: sealed other bytes`);
      }
    }
  });

  it('a view that reads one sequence to the sealer and holds another is refused, not sealed under an unchecked nonce', () => {
    const suite =
      suites.find((candidate) => candidate.name === 'aes-256-gcm') ?? (suites[0] as (typeof suites)[number]);
    const sealer = new PacketSealer(suite, 0xfedc_ba98);
    sealer.setKey(3, Buffer.alloc(suite.keyBytes, 7));
    const random = createRandom(0x11e);
    sealer.seal(plainData(random, 16, 100)); // sequence 100 used
    const lying = plainData(random, 16, 100);
    const honest = lying.readUInt32BE.bind(lying);
    // Reads sequence 101 (a fresh one) to the sealer's checks while its bytes still say 100.
    lying.readUInt32BE = (offset = 0) => (offset === offsetSequence ? 101 : honest(offset));
    assert.throws(() => sealer.seal(lying), CipherError);
    // The refused call used no nonce: 101 itself still seals.
    const next = sealer.seal(plainData(random, 16, 101));
    assert.equal(next.readUInt32BE(offsetSequence), 101);
  });

  it('a view that reads a sequence with a fraction (-0.5, then 0.5) is never sealed twice under the nonce of sequence 0', () => {
    const suite =
      suites.find((candidate) => candidate.name === 'aes-256-gcm') ?? (suites[0] as (typeof suites)[number]);
    for (const packetsPerGroup of [undefined, 4]) {
      const sealer = new PacketSealer(suite, 0xfedc_ba98);
      if (packetsPerGroup === undefined) {
        sealer.setKey(3, Buffer.alloc(suite.keyBytes, 7));
      } else {
        sealer.setGroupShares(3, [Buffer.alloc(suite.keyBytes, 7)], packetsPerGroup);
      }
      const random = createRandom(0xf4a);
      let sealed = 0;
      for (const read of [-0.5, 0.5]) {
        // Its bytes say sequence 0 (the nonce of sequence 0); the sealer's checks read `read`.
        const lying = plainData(random, 16, 0);
        const honest = lying.readUInt32BE.bind(lying);
        lying.readUInt32BE = (offset = 0) => (offset === offsetSequence ? read : honest(offset));
        try {
          sealer.seal(lying);
          sealed++;
        } catch (error) {
          assert.ok(error instanceof CipherError, String(error));
        }
      }
      assert.ok(sealed <= 1, `${packetsPerGroup}: sequence 0's nonce sealed ${sealed} packets`);
    }
  });

  it('a plaintext another thread rewrites is never sealed twice under one nonce', async () => {
    const suite =
      suites.find((candidate) => candidate.name === 'aes-256-gcm') ?? (suites[0] as (typeof suites)[number]);
    const key = Buffer.alloc(suite.keyBytes, 3);
    const sealer = new PacketSealer(suite, 7);
    sealer.setKey(1, key);
    const shared = new SharedArrayBuffer(64);
    const plain = Buffer.from(shared, 0, 48);
    encodeData({ sessionId: 1, incarnation: 7, sequence: 100, timestampUs: 1 }, Buffer.alloc(16)).copy(plain);
    plain.writeUInt16BE(1, offsetKeyEpoch);
    const stop = new Int32Array(shared, 60, 1);
    // The other thread moves the sequence on and back, as fast as it can, until told to stop.
    const worker = new Worker(
      `const { workerData } = require('node:worker_threads');
const view = Buffer.from(workerData.shared, 0, 48);
const stop = new Int32Array(workerData.shared, 60, 1);
for (let i = 0, s = 100; i < 2e9 && Atomics.load(stop, 0) === 0; i++) { view.writeUInt32BE(++s, 12); view.writeUInt32BE(100, 12); }`,
      { eval: true, workerData: { shared } },
    );
    try {
      await new Promise((resolve) => setTimeout(resolve, 20));
      const opener = createNodeCryptoAeadContext(suite.name as AeadName, key, false);
      // The payload is 16 zero bytes: its ciphertext is the nonce's keystream, so two packets sealed
      // under one nonce have the same ciphertext.
      const seen = new Set<string>();
      let sealed = 0;
      const deadline = Date.now() + 3000;
      for (let i = 0; i < 20_000 && Date.now() < deadline; i++) {
        let out: Buffer;
        try {
          out = sealer.seal(plain, Buffer.alloc(64));
        } catch (error) {
          assert.ok(error instanceof CipherError, String(error));
          continue;
        }
        sealed++;
        const body = out.subarray(headerBytes, headerBytes + 16).toString('hex');
        assert.ok(!seen.has(body), `two packets sealed under one nonce (after ${sealed})`);
        seen.add(body);
        // Each opens under the nonce its own header names.
        assert.equal(opener.openPacket(Buffer.from(out.subarray(0, 64))), 48);
      }
      assert.ok(sealed > 0, 'nothing was sealed');
    } finally {
      Atomics.store(stop, 0, 1);
      await worker.terminate();
    }
  });

  it('PacketOpener opens in place the bytes it opens apart, and PacketSealer seals with the header nonce', () => {
    const random = createRandom(0x9a7);
    for (const suite of suites) {
      const key = random.bytes(suite.keyBytes);
      const sealer = new PacketSealer(suite, 0xfedc_ba98);
      sealer.setKey(3, key);
      const opener = new PacketOpener(suite);
      opener.setKey(3, key);
      const reference = createNodeCryptoAeadContext(suite.name as AeadName, key, true);
      for (const sequence of [1, 2, 0x7fff_ffff]) {
        const plain = plainData(random, 333, sequence);
        const sealed = sealer.seal(plain);
        assert.deepEqual(sealed, sealedByHand(reference, plain), `${suite.name} ${sequence}`);
        const apart = opener.open(sealed);
        assert.ok(Buffer.isBuffer(apart));
        assert.deepEqual(apart, plain);
        const inPlace = opener.open(Buffer.from(sealed), true);
        assert.ok(Buffer.isBuffer(inPlace));
        assert.deepEqual(inPlace, plain);
        const forged = Buffer.from(sealed);
        forged[headerBytes + 5] = (forged[headerBytes + 5] ?? 0) ^ 4;
        assert.equal(opener.open(forged, true), 'bad-tag');
      }
    }
  });
});
