import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  buildKeyMessage,
  buildSessionOffer,
  ed25519FromRaw,
  ed25519Raw,
  generateSigningKey,
  issueGrant,
  ManifestBuilder,
  manifestHash,
  p256Point,
  unwrapKey,
  verifySignature,
  wrapKey,
} from '../../src/crypto/authority.js';
import { CipherError, SuiteRefused } from '../../src/crypto/errors.js';
import {
  aeadTagBytes,
  checkSignatureScheme,
  negotiateSuite,
  PacketOpener,
  PacketSealer,
  SuiteId,
  suiteByName,
  suites,
  writePacketNonce,
} from '../../src/crypto/suites.js';
import { decodeData, encodeData, headerBytes, offsetKeyEpoch } from '../../src/protocol/packet.js';
import {
  decodeGrant,
  decodeKey,
  decodeSignature,
  encodeManifestBlockUnsigned,
  encodeManifestUnsigned,
  OfferFlag,
  PriceModel,
  SignatureKind,
} from '../../src/protocol/restricted.js';
import { createRandom } from '../helpers/random.js';

function data(incarnation: number, sequence: number, keyEpoch: number, payload: Buffer): Buffer {
  return encodeData(
    { sessionId: 42, incarnation, sequence, keyEpoch, timestampUs: 1_764_000_000_000_000 },
    payload,
  );
}

/** An AES-256-GCM sealer of run 9 with key epoch 1: one traffic key, or every-n-th-packet mode's groups. */
function sealerOfRun9(packetsPerGroup: number | undefined): PacketSealer {
  const sealer = new PacketSealer(suiteByName('aes-256-gcm', 'test'), 9);
  if (packetsPerGroup === undefined) {
    sealer.setKey(1, randomBytes(32));
  } else {
    sealer.setGroupShares(1, [randomBytes(32)], packetsPerGroup);
  }
  return sealer;
}

describe('suites: what is refused at configuration load', () => {
  const refused: [string, RegExp][] = [
    ['md5', /MD5/],
    ['hmac-md5', /MD5/],
    ['sha1', /SHA-1/],
    ['HMAC-SHA1', /SHA-1/],
    ['ecdsa-with-SHA1', /SHA-1/],
    ['rc4', /RC4/],
    ['des-cbc', /DES/],
    ['des', /DES/],
    ['3des', /3DES/],
    ['des-ede3-cbc', /3DES/],
    ['aes-128-ecb', /ECB/],
    ['aes-256-cbc', /CBC/],
    ['aes-128-ctr', /CTR/],
    ['aes-128-gcm/64', /64-bit tag/],
    ['aes-256-gcm-96', /96-bit tag/],
  ];
  for (const [name, why] of refused) {
    it(`refuses ${name}, naming the field, the algorithm and why`, () => {
      assert.throws(
        () => suiteByName(name, '--suite'),
        (error) =>
          error instanceof SuiteRefused &&
          error.message.startsWith(`--suite: ${name} is refused: `) &&
          why.test(error.message),
      );
    });
  }
  it('refuses SHA-1 and RSA as signature schemes; takes Ed25519', () => {
    assert.throws(() => checkSignatureScheme('rsa-sha1', 'signature'), /SHA-1/);
    assert.throws(() => checkSignatureScheme('rsa-pss', 'signature'), /not a signature scheme/);
    checkSignatureScheme('Ed25519', 'signature');
  });
  it('takes the three AEADs, with a 128-bit tag written or not', () => {
    assert.equal(suiteByName('AES-128-GCM', '--suite').id, SuiteId.aes128Gcm);
    assert.equal(suiteByName('aes-256-gcm/128', '--suite').id, SuiteId.aes256Gcm);
    assert.equal(suiteByName('chacha20_poly1305', '--suite').id, SuiteId.chacha20Poly1305);
    assert.throws(() => suiteByName('aes-512-gcm', '--suite'), /not a suite gatecast speaks/);
  });
  it('negotiation: the receiver takes the first offered suite it supports', () => {
    const only = suites.filter((suite) => suite.id !== SuiteId.chacha20Poly1305);
    assert.equal(
      negotiateSuite([SuiteId.chacha20Poly1305, SuiteId.aes128Gcm, SuiteId.aes256Gcm], only)?.id,
      SuiteId.aes128Gcm,
    );
    assert.equal(negotiateSuite([SuiteId.chacha20Poly1305], only), undefined);
    assert.equal(negotiateSuite([9, SuiteId.chacha20Poly1305])?.id, SuiteId.chacha20Poly1305);
  });
});

describe('suites: sealing DATA', () => {
  for (const suite of suites) {
    it(`${suite.name}: a sealed packet opens to the same DATA; no payload byte travels in clear`, () => {
      const key = randomBytes(suite.keyBytes);
      const sealer = new PacketSealer(suite, 0x0badcafe);
      sealer.setKey(3, key);
      const opener = new PacketOpener(suite);
      opener.setKey(3, key);
      const payload = Buffer.alloc(1400, 'plaintext!');
      const plain = data(0x0badcafe, 10, 3, payload);
      const sealed = sealer.seal(plain);
      assert.equal(sealed.length, plain.length + aeadTagBytes);
      assert.ok(decodeData(sealed).ok, 'a sealed DATA is still a well-formed DATA');
      assert.equal(sealed.indexOf('plaintext'), -1);
      const opened = opener.open(sealed);
      assert.ok(Buffer.isBuffer(opened));
      assert.deepEqual(opened, plain);
    });
  }

  it('every flipped bit — header, ciphertext or tag — fails the tag and yields nothing', () => {
    const suite = suiteByName('aes-128-gcm', 'test');
    const key = randomBytes(16);
    const sealer = new PacketSealer(suite, 5);
    sealer.setKey(1, key);
    const opener = new PacketOpener(suite);
    opener.setKey(1, key);
    const sealed = sealer.seal(data(5, 1, 1, Buffer.from('forty-two bytes of a secret payload, here.')));
    for (let bit = 0; bit < sealed.length * 8; bit += 1) {
      if (bit >= offsetKeyEpoch * 8 && bit < (offsetKeyEpoch + 2) * 8) {
        continue; // another epoch: no key, counted as such
      }
      const forged = Buffer.from(sealed);
      forged[bit >> 3] = (forged[bit >> 3] ?? 0) ^ (1 << (bit & 7));
      const result = opener.open(forged);
      assert.ok(result === 'bad-tag' || result === 'truncated', `bit ${bit}: ${String(result)}`);
    }
    const otherEpoch = Buffer.from(sealed);
    otherEpoch.writeUInt16BE(2, offsetKeyEpoch);
    assert.equal(opener.open(otherEpoch), 'no-key');
  });

  it('a sealer never seals a sequence twice under one key epoch (no nonce reuse)', () => {
    const suite = suiteByName('aes-256-gcm', 'test');
    const sealer = new PacketSealer(suite, 9);
    sealer.setKey(1, randomBytes(32));
    sealer.seal(data(9, 100, 1, Buffer.from('a')));
    assert.throws(() => sealer.seal(data(9, 100, 1, Buffer.from('b'))), CipherError);
    assert.throws(() => sealer.seal(data(9, 99, 1, Buffer.from('b'))), CipherError);
    assert.throws(() => sealer.setKey(1, randomBytes(32)), /already has a key/);
    assert.throws(() => sealer.seal(data(10, 101, 1, Buffer.from('b'))), /incarnation/);
    assert.throws(() => new PacketSealer(suite, 0), CipherError);
    // An incarnation the nonce's 32 bits cannot hold is refused, not written as 0 or as another run's.
    for (const incarnation of [2 ** 32, 2 ** 32 + 9, -1, 9.5]) {
      assert.throws(() => new PacketSealer(suite, incarnation), CipherError, String(incarnation));
    }
  });

  it('a sealer never comes round the 32-bit sequence space to a sequence it sealed under one key epoch (no nonce reuse)', () => {
    // Each step is ahead of the last (less than 2^31 on), yet three of them come back to 0.
    const payload = Buffer.from('p');
    for (const packetsPerGroup of [undefined, 4]) {
      const sealer = sealerOfRun9(packetsPerGroup);
      sealer.seal(data(9, 0, 1, payload));
      sealer.seal(data(9, 0x7fff_ffff, 1, payload));
      sealer.seal(data(9, 0xffff_fffe, 1, payload));
      assert.throws(
        () => sealer.seal(data(9, 0, 1, payload)),
        /nonce was used/,
        `${packetsPerGroup} a group`,
      );
      assert.throws(() => sealer.seal(data(9, 0x7fff_fffe, 1, payload)), /nonce was used/);
      // Short of the first sequence it still seals, and another epoch starts its own count.
      sealer.seal(data(9, 0xffff_ffff, 1, payload));
      assert.throws(() => sealer.seal(data(9, 0, 1, payload)), /nonce was used/);
      if (packetsPerGroup === undefined) {
        sealer.setKey(2, randomBytes(32));
        sealer.seal(data(9, 0, 2, payload));
      }
    }
  });

  it('a seal called again from inside a seal (by a getter of its plaintext) never seals the checked sequence twice', () => {
    // 16 zero bytes of payload: the ciphertext is the nonce's keystream, so one nonce twice shows.
    for (const packetsPerGroup of [undefined, 4]) {
      const sealer = sealerOfRun9(packetsPerGroup);
      const bodyAt = headerBytes + (packetsPerGroup === undefined ? 0 : 16);
      const bodies: string[] = [];
      const outer = data(9, 100, 1, Buffer.alloc(16));
      const length = outer.length;
      let reads = 0;
      // The plaintext's length, read after the sealer's checks, seals sequence 100 from inside.
      Object.defineProperty(outer, 'length', {
        get() {
          reads++;
          if (reads === 2) {
            try {
              const inner = sealer.seal(data(9, 100, 1, Buffer.alloc(16)));
              bodies.push(inner.subarray(bodyAt, bodyAt + 16).toString('hex'));
            } catch (error) {
              assert.ok(error instanceof CipherError, String(error));
            }
          }
          return length;
        },
      });
      try {
        const sealed = sealer.seal(outer);
        bodies.push(sealed.subarray(bodyAt, bodyAt + 16).toString('hex'));
      } catch (error) {
        assert.ok(error instanceof CipherError, String(error));
      }
      assert.ok(reads >= 2, 'the length was read after the checks');
      assert.equal(new Set(bodies).size, bodies.length, `${packetsPerGroup}: one nonce sealed two packets`);
      assert.throws(() => sealer.seal(data(9, 100, 1, Buffer.alloc(16))), /nonce was used/);
    }
  });

  it('a refused seal leaves its slot and its plaintext as they were, and its sequence seals afterwards', () => {
    const suite = suiteByName('aes-128-gcm', 'test');
    const sealer = new PacketSealer(suite, 9);
    sealer.setKey(1, randomBytes(16));
    const original = data(9, 7, 1, Buffer.alloc(100, 0x5a));
    const sealedLength = original.length + aeadTagBytes;
    // A hash range that does not fit, sealing into a slot of a ring.
    const slot = Buffer.alloc(sealedLength + 8, 0xaa);
    assert.throws(() => sealer.seal(original, slot, Buffer.alloc(8), 0, 16), CipherError);
    assert.ok(
      slot.every((byte) => byte === 0xaa),
      'the refused packet wrote into its slot',
    );
    // The same, in place: the plaintext's header (its body length) must not change.
    const ring = Buffer.alloc(sealedLength);
    original.copy(ring);
    assert.throws(
      () => sealer.seal(ring.subarray(0, original.length), ring, ring, sealedLength - 4, 16),
      CipherError,
    );
    assert.deepEqual(ring.subarray(0, original.length), original, 'the refused packet changed its plaintext');
    // A slot that partly overlaps the plaintext.
    const shared = Buffer.alloc(sealedLength + 8);
    original.copy(shared);
    assert.throws(() => sealer.seal(shared.subarray(0, original.length), shared.subarray(8)), CipherError);
    assert.deepEqual(
      shared.subarray(0, original.length),
      original,
      'the refused packet changed its plaintext',
    );
    // No nonce was used: the same sequence seals now, to what a fresh buffer gets.
    const hash = Buffer.alloc(16);
    const sealed = sealer.seal(original, slot, hash, 0, 16);
    assert.equal(sealed.length, sealedLength);
    assert.deepEqual(hash, createHash('sha256').update(sealed).digest().subarray(0, 16));
  });

  it('a restart (a new incarnation) uses a new nonce space even under the same session id, sequences and epochs', () => {
    const suite = suiteByName('aes-256-gcm', 'test');
    const nonces = (incarnation: number) => {
      const seen = new Set<string>();
      for (let epoch = 1; epoch <= 3; epoch += 1) {
        for (let sequence = 0; sequence < 500; sequence += 1) {
          seen.add(writePacketNonce(Buffer.alloc(12), incarnation, epoch, sequence).toString('hex'));
        }
      }
      return seen;
    };
    const first = nonces(0x11111111);
    const second = nonces(0x22222222);
    assert.equal(first.size, 1500, 'no nonce repeats within a run');
    for (const nonce of second) {
      assert.ok(!first.has(nonce), `nonce ${nonce} reused across a restart`);
    }
    // And what a restarted source actually emits: the same header fields but the new incarnation
    // give different ciphertexts of the same plaintext.
    const key = randomBytes(32);
    const before = new PacketSealer(suite, 0x11111111);
    const afterRestart = new PacketSealer(suite, 0x22222222);
    before.setKey(1, key);
    afterRestart.setKey(1, key);
    const payload = Buffer.alloc(64, 7);
    const a = before.seal(data(0x11111111, 0, 1, payload)).subarray(headerBytes);
    const b = afterRestart.seal(data(0x22222222, 0, 1, payload)).subarray(headerBytes);
    assert.notDeepEqual(a, b);
  });
});

describe('manifests, offers, KEY messages and grants', () => {
  const source = generateSigningKey();

  it('a manifest signs the hashes of 32 consecutive datagrams; a receiver checks each against it', () => {
    const builder = new ManifestBuilder({ sessionId: 42, incarnation: 7 }, source.privateKey, 32);
    const datagrams: Buffer[] = [];
    let manifest: Buffer | undefined;
    for (let sequence = 0xfffffff0; datagrams.length < 32; sequence = (sequence + 1) >>> 0) {
      const datagram = data(7, sequence, 0, randomBytes(100));
      datagrams.push(datagram);
      manifest = builder.add(datagram, sequence, 1);
    }
    assert.ok(manifest !== undefined);
    const decoded = decodeSignature(manifest);
    assert.ok(decoded.ok && decoded.value.kind === SignatureKind.manifest);
    assert.equal(decoded.value.sequence, 0xfffffff0);
    assert.ok(verifySignature(decoded.value.signed, decoded.value.signature, source.publicKey));
    datagrams.forEach((datagram, index) => {
      assert.deepEqual(
        decoded.value.kind === SignatureKind.manifest && decoded.value.hashes[index],
        createHash('sha256').update(datagram).digest().subarray(0, 16),
      );
      assert.deepEqual(
        manifestHash(datagram),
        createHash('sha256').update(datagram).digest().subarray(0, 16),
      );
    });
    assert.ok((manifest.length - headerBytes) / 32 < 19, 'about 17 bytes a packet');
    const forged = Buffer.from(manifest);
    forged[headerBytes + 10] = (forged[headerBytes + 10] ?? 0) ^ 1;
    const forgedDecoded = decodeSignature(forged);
    assert.ok(forgedDecoded.ok);
    assert.ok(!verifySignature(forgedDecoded.value.signed, forgedDecoded.value.signature, source.publicKey));
  });

  it('a manifest flushed early covers just its packets; the next starts clean at the next sequence', () => {
    const builder = new ManifestBuilder({ sessionId: 42, incarnation: 7 }, source.privateKey, 64);
    const first = [1, 2, 3, 4, 5].map((sequence) => data(7, sequence, 0, randomBytes(1400)));
    first.forEach((datagram, index) => {
      assert.equal(builder.add(datagram, index + 1, 1), undefined);
    });
    const early = builder.flush(2);
    assert.ok(early !== undefined);
    assert.equal(builder.flush(3), undefined, 'nothing left to sign');
    const later = Array.from({ length: 64 }, (_, index) => data(7, 6 + index, 0, randomBytes(index)));
    let full: Buffer | undefined;
    later.forEach((datagram, index) => {
      full = builder.add(datagram, 6 + index, 4);
    });
    for (const [manifest, covered, sequence] of [
      [early, first, 1],
      [full, later, 6],
    ] as const) {
      assert.ok(manifest !== undefined);
      const decoded = decodeSignature(manifest);
      assert.ok(decoded.ok && decoded.value.kind === SignatureKind.manifest);
      assert.equal(decoded.value.sequence, sequence);
      assert.ok(verifySignature(decoded.value.signed, decoded.value.signature, source.publicKey));
      assert.deepEqual(
        decoded.value.hashes,
        covered.map((datagram) => createHash('sha256').update(datagram).digest().subarray(0, 16)),
      );
    }
    assert.equal(builder.add(first[0] as Buffer, 200, 5), undefined);
    assert.throws(() => builder.add(first[1] as Buffer, 202, 5), /must be consecutive/);
    assert.throws(
      () => new ManifestBuilder({ sessionId: 1, incarnation: 1 }, source.privateKey, 65),
      CipherError,
    );
    assert.throws(
      () => new ManifestBuilder({ sessionId: 1, incarnation: 1 }, source.privateKey, 1.5),
      CipherError,
    );
  });

  it('a manifest from a block of hashes is the one from the same hashes listed; a ragged block is refused', () => {
    const fields = { sessionId: 3, incarnation: 4, sequence: 5, timestampUs: 6 };
    const hashes = Array.from({ length: 64 }, () => randomBytes(16));
    assert.deepEqual(
      encodeManifestBlockUnsigned(fields, Buffer.concat(hashes)),
      encodeManifestUnsigned(fields, hashes),
    );
    for (const bytes of [0, 15, 17, 65 * 16]) {
      assert.throws(() => encodeManifestBlockUnsigned(fields, Buffer.alloc(bytes)), /a manifest covers 1-64/);
    }
  });

  it('a session offer round-trips and is signed by the source', () => {
    const offer = buildSessionOffer(
      { sessionId: 42, incarnation: 7, sequence: 0, timestampUs: 5 },
      {
        flags: OfferFlag.signed | OfferFlag.encrypted,
        tier: 2,
        suites: [SuiteId.aes256Gcm, SuiteId.chacha20Poly1305],
        cryptoPeriodMs: 10_000,
        service: 'news',
        sourcePublicKey: ed25519Raw(source.publicKey),
        descriptorSha256: createHash('sha256').update('descriptor').digest(),
      },
      source.privateKey,
    );
    const decoded = decodeSignature(offer);
    assert.ok(decoded.ok && decoded.value.kind === SignatureKind.session);
    assert.deepEqual(decoded.value.suites, [SuiteId.aes256Gcm, SuiteId.chacha20Poly1305]);
    assert.equal(decoded.value.service, 'news');
    assert.ok(
      verifySignature(
        decoded.value.signed,
        decoded.value.signature,
        ed25519FromRaw(decoded.value.sourcePublicKey),
      ),
    );
  });

  it('AES key wrap round-trips; a wrong KEK or a flipped bit unwraps nothing', () => {
    const kek = randomBytes(32);
    const key = randomBytes(16);
    const wrapped = wrapKey(kek, key);
    assert.equal(wrapped.length, 24);
    assert.deepEqual(unwrapKey(kek, wrapped), key);
    assert.equal(unwrapKey(randomBytes(32), wrapped), undefined);
    wrapped[3] = (wrapped[3] ?? 0) ^ 1;
    assert.equal(unwrapKey(kek, wrapped), undefined);
  });

  it('property: KEY, SIGNATURE and grant decoders never throw on random or mutated input, and reject truncation', () => {
    const random = createRandom(1212);
    const key = buildKeyMessage(
      { sessionId: 1, incarnation: 2, sequence: 3, timestampUs: 4, keyEpoch: 5 },
      { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 1000, service: 'news' },
      randomBytes(32),
      randomBytes(32),
      source.privateKey,
    );
    const grant = issueGrant(
      {
        devicePoint: p256Point(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey),
        serviceKey: randomBytes(32),
        tier: 0,
        service: 'news',
        serviceEpoch: 1,
        notBeforeMs: 0,
        notAfterMs: 1,
        priceModel: PriceModel.subscription,
        currency: 'EUR',
        priceMinor: 0,
        sourcePublicKey: ed25519Raw(source.publicKey),
      },
      source.privateKey,
    );
    assert.ok(decodeKey(key).ok);
    assert.ok(decodeGrant(grant).ok);
    for (let cut = 0; cut < key.length; cut += 1) {
      assert.equal(decodeKey(key.subarray(0, cut)).ok, false);
    }
    for (let cut = 0; cut < grant.length; cut += 1) {
      assert.equal(decodeGrant(grant.subarray(0, cut)).ok, false);
    }
    for (let round = 0; round < 3000; round += 1) {
      for (const original of [key, grant]) {
        const mutated = Buffer.from(original);
        for (let flips = 1 + random.int(4); flips > 0; flips -= 1) {
          const at = random.int(mutated.length);
          mutated[at] = random.int(256);
        }
        decodeKey(mutated);
        decodeGrant(mutated);
        decodeSignature(mutated);
      }
      const noise = random.bytes(random.int(400));
      decodeKey(noise);
      decodeGrant(noise);
      decodeSignature(noise);
    }
  });
});
