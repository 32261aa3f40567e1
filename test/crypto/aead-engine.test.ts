/**
 * The packet AEAD engine (src/crypto/aead-engine.ts, native/aead.c): the addon seals exactly the
 * bytes node:crypto seals, for every suite and length; each opens the other's packets; a flipped
 * bit anywhere (ciphertext, associated data, tag, nonce) is refused with nothing readable left;
 * misuse throws instead of reading or writing past a buffer.
 *
 * The addon is built by `npm ci` (scripts/build-native.mjs). Where it is not built these tests
 * say so and skip; under GATECAST_REQUIRE_PACKAGES=1 (CI) they fail instead.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import {
  type AeadName,
  aeadEngine,
  createAeadContext,
  createNodeCryptoAeadContext,
  nativeAddonPath,
  sha256Equals,
  sha256Into,
} from '../../src/crypto/aead-engine.js';
import { CipherError } from '../../src/crypto/errors.js';
import { PacketOpener, PacketSealer, suites } from '../../src/crypto/suites.js';
import { encodeData, offsetKeyEpoch } from '../../src/protocol/packet.js';
import { addonMissing } from '../helpers/engines.js';
import { createRandom } from '../helpers/random.js';

const names: AeadName[] = ['aes-128-gcm', 'aes-256-gcm', 'chacha20-poly1305'];
const keyBytes = (name: AeadName) => (name === 'aes-128-gcm' ? 16 : 32);

function seal(
  context: ReturnType<typeof createAeadContext>,
  nonce: Buffer,
  aad: Buffer,
  plain: Buffer,
): { sealed: Buffer; tag: Buffer } {
  const sealed = Buffer.alloc(plain.length);
  const tag = Buffer.alloc(16);
  context.seal(nonce, aad, plain, sealed, tag);
  return { sealed, tag };
}

describe('packet AEAD engine', () => {
  it('uses the addon when it is built, and names the OpenSSL it runs on', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const engine = aeadEngine();
    assert.equal(engine.name, 'openssl-evp');
    // The OpenSSL node:crypto runs on (linked at load from the node binary), not another copy.
    assert.ok(
      engine.openssl?.startsWith(`OpenSSL ${process.versions.openssl.replace(/\+.*$/, '')} `),
      `${engine.openssl} is not node's OpenSSL ${process.versions.openssl}`,
    );
  });

  it('is node:crypto when GATECAST_AEAD_ENGINE=node:crypto, and says why', () => {
    const script = `import { aeadEngine } from ${JSON.stringify(new URL('../../src/crypto/aead-engine.ts', import.meta.url).href)};
process.stdout.write(JSON.stringify(aeadEngine()));`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, GATECAST_AEAD_ENGINE: 'node:crypto' },
      encoding: 'utf8',
    });
    assert.deepEqual(JSON.parse(out), { name: 'node:crypto', reason: 'GATECAST_AEAD_ENGINE=node:crypto' });
  });

  it('matches the RFC 8439 ChaCha20-Poly1305 test vector (section 2.8.2) in both engines', () => {
    const key = Buffer.from('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f', 'hex');
    const nonce = Buffer.from('070000004041424344454647', 'hex');
    const aad = Buffer.from('50515253c0c1c2c3c4c5c6c7', 'hex');
    const plain = Buffer.from(
      "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
    );
    const expected =
      'd31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116';
    const expectedTag = '1ae10b594f09e26a7e902ecbd0600691';
    for (const context of [
      createNodeCryptoAeadContext('chacha20-poly1305', key, true),
      createAeadContext('chacha20-poly1305', key, true),
    ]) {
      const { sealed, tag } = seal(context, nonce, aad, plain);
      assert.equal(sealed.toString('hex'), expected);
      assert.equal(tag.toString('hex'), expectedTag);
    }
  });

  it('matches a NIST GCM test vector (AES-128, 60-byte plaintext, 20-byte AAD) in both engines', () => {
    // The GCM specification's test case 4 (96-bit IV).
    const key = Buffer.from('feffe9928665731c6d6a8f9467308308', 'hex');
    const nonce = Buffer.from('cafebabefacedbaddecaf888', 'hex');
    const plain = Buffer.from(
      'd9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39',
      'hex',
    );
    const aad = Buffer.from('feedfacedeadbeeffeedfacedeadbeefabaddad2', 'hex');
    for (const context of [
      createNodeCryptoAeadContext('aes-128-gcm', key, true),
      createAeadContext('aes-128-gcm', key, true),
    ]) {
      const { sealed, tag } = seal(context, nonce, aad, plain);
      assert.equal(
        sealed.toString('hex'),
        '42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091',
      );
      assert.equal(tag.toString('hex'), '5bc94fbc3221a5db94fae95ae7121a47');
    }
  });

  it('seals the bytes node:crypto seals and opens what it seals, every suite and length', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const random = createRandom(0x0aead);
    for (const name of names) {
      for (const length of [0, 1, 15, 16, 17, 255, 1400, 1500, 9000, 65_403]) {
        const key = random.bytes(keyBytes(name));
        const nonce = random.bytes(12);
        const aad = random.bytes(length % 3 === 0 ? 32 : length % 61);
        const plain = random.bytes(length);
        const reference = seal(createNodeCryptoAeadContext(name, key, true), nonce, aad, plain);
        const candidate = seal(createAeadContext(name, key, true), nonce, aad, plain);
        assert.ok(candidate.sealed.equals(reference.sealed), `${name} ${length}: ciphertext`);
        assert.ok(candidate.tag.equals(reference.tag), `${name} ${length}: tag`);
        const opened = Buffer.alloc(length);
        assert.ok(
          createAeadContext(name, key, false).open(nonce, aad, reference.sealed, reference.tag, opened),
        );
        assert.ok(opened.equals(plain), `${name} ${length}: the addon opens node:crypto's packet`);
        const back = Buffer.alloc(length);
        assert.ok(
          createNodeCryptoAeadContext(name, key, false).open(
            nonce,
            aad,
            candidate.sealed,
            candidate.tag,
            back,
          ),
        );
        assert.ok(back.equals(plain), `${name} ${length}: node:crypto opens the addon's packet`);
      }
    }
  });

  it('keeps sealing and opening right packet after packet on one context, a refused packet between', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const random = createRandom(0x5e0);
    for (const name of names) {
      const key = random.bytes(keyBytes(name));
      const sealer = createAeadContext(name, key, true);
      const opener = createAeadContext(name, key, false);
      for (let packet = 0; packet < 60; packet++) {
        const nonce = random.bytes(12);
        const aad = random.bytes(packet % 5 === 0 ? 0 : 32);
        const plain = random.bytes(packet % 7 === 0 ? 0 : 1 + random.int(1500));
        const reference = seal(createNodeCryptoAeadContext(name, key, true), nonce, aad, plain);
        const candidate = seal(sealer, nonce, aad, plain);
        assert.ok(
          candidate.sealed.equals(reference.sealed) && candidate.tag.equals(reference.tag),
          `${name} #${packet}`,
        );
        const out = Buffer.alloc(plain.length);
        if (packet % 3 === 1) {
          const forged = Buffer.from(reference.tag);
          forged[packet % 16] = (forged[packet % 16] ?? 0) ^ 0x80;
          assert.equal(
            opener.open(nonce, aad, reference.sealed, forged, out),
            false,
            `${name} #${packet} forged`,
          );
        }
        assert.ok(opener.open(nonce, aad, reference.sealed, reference.tag, out), `${name} #${packet} opens`);
        assert.ok(out.equals(plain), `${name} #${packet} plaintext`);
      }
    }
  });

  it('refuses a flipped bit in the ciphertext, the associated data, the tag or the nonce, leaving zeros', () => {
    const random = createRandom(0xf11b);
    for (const factory of [createAeadContext, createNodeCryptoAeadContext]) {
      for (const name of names) {
        const key = random.bytes(keyBytes(name));
        const nonce = random.bytes(12);
        const aad = random.bytes(32);
        const plain = random.bytes(1400);
        const { sealed, tag } = seal(factory(name, key, true), nonce, aad, plain);
        const opener = factory(name, key, false);
        const flips: Array<[string, Buffer, number]> = [
          ['ciphertext', sealed, 1399],
          ['ciphertext', sealed, 0],
          ['associated data', aad, 5],
          ['tag', tag, 15],
          ['nonce', nonce, 11],
        ];
        for (const [what, buffer, at] of flips) {
          const bit = 1 << random.int(8);
          buffer[at] = (buffer[at] ?? 0) ^ bit;
          const out = Buffer.alloc(plain.length, 0xee);
          assert.equal(
            opener.open(nonce, aad, sealed, tag, out),
            false,
            `${name}: a flipped bit in the ${what}`,
          );
          assert.ok(
            out.every((byte) => byte === 0),
            `${name}: nothing of a refused packet is left (${what})`,
          );
          buffer[at] = (buffer[at] ?? 0) ^ bit;
        }
        const out = Buffer.alloc(plain.length);
        assert.ok(opener.open(nonce, aad, sealed, tag, out), `${name}: the untouched packet opens`);
        assert.ok(out.equals(plain));
        // A different key opens nothing either.
        assert.equal(
          factory(name, random.bytes(keyBytes(name)), false).open(nonce, aad, sealed, tag, out),
          false,
        );
      }
    }
  });

  it('throws on misuse instead of touching memory past a buffer', async (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const key = Buffer.alloc(32, 1);
    assert.throws(() => createAeadContext('aes-256-gcm', Buffer.alloc(16), true), CipherError);
    assert.throws(() => createAeadContext('aes-128-gcm', key, true), CipherError);
    const sealer = createAeadContext('aes-256-gcm', key, true);
    const nonce = Buffer.alloc(12);
    const plain = Buffer.alloc(100);
    // lengths: a short nonce, a short tag, an output shorter or longer than the input
    assert.throws(
      () => sealer.seal(Buffer.alloc(8), Buffer.alloc(0), plain, Buffer.alloc(100), Buffer.alloc(16)),
      CipherError,
    );
    assert.throws(
      () => sealer.seal(nonce, Buffer.alloc(0), plain, Buffer.alloc(100), Buffer.alloc(8)),
      CipherError,
    );
    assert.throws(
      () => sealer.seal(nonce, Buffer.alloc(0), plain, Buffer.alloc(99), Buffer.alloc(16)),
      CipherError,
    );
    assert.throws(
      () => sealer.seal(nonce, Buffer.alloc(0), plain, Buffer.alloc(101), Buffer.alloc(16)),
      CipherError,
    );
    // direction: a sealing context does not open
    assert.throws(
      () => sealer.open(nonce, Buffer.alloc(0), plain, Buffer.alloc(16), Buffer.alloc(100)),
      /cannot open/,
    );
    // the addon checks on its own too, whatever reaches it
    const addon = (await import('node:module')).createRequire(import.meta.url)(nativeAddonPath) as {
      create(...args: unknown[]): unknown;
      seal(...args: unknown[]): void;
      open(...args: unknown[]): boolean;
      dispose(handle: unknown): void;
    };
    assert.throws(() => addon.create('rc4', key, true), /unknown suite/);
    assert.throws(() => addon.create('aes-256-gcm', 'not a buffer', true), TypeError);
    assert.throws(() => addon.create('aes-256-gcm', key), /three arguments/);
    const handle = addon.create('aes-256-gcm', key, true);
    assert.throws(() => addon.seal({}, nonce, nonce, plain, plain, Buffer.alloc(16)), TypeError);
    assert.throws(
      () => addon.seal(handle, nonce, nonce, plain, Buffer.alloc(99), Buffer.alloc(16)),
      /output/,
    );
    assert.throws(
      () => addon.seal(handle, nonce, nonce, plain, Buffer.alloc(100), Buffer.alloc(15)),
      /tag 16/,
    );
    // Any typed array is taken by its bytes: 5 16-bit words are a 10-byte nonce, refused.
    assert.throws(
      () => addon.seal(handle, new Uint16Array(5), nonce, plain, Buffer.alloc(100), Buffer.alloc(16)),
      /nonce must be 12 bytes/,
    );
    addon.dispose(handle);
    assert.throws(
      () => addon.seal(handle, nonce, nonce, plain, Buffer.alloc(100), Buffer.alloc(16)),
      /disposed/,
    );
    // a disposed context refuses in both engines
    for (const factory of [createAeadContext, createNodeCryptoAeadContext]) {
      const context = factory('aes-256-gcm', key, true);
      context.dispose();
      assert.throws(() => context.seal(nonce, Buffer.alloc(0), plain, Buffer.alloc(100), Buffer.alloc(16)));
    }
    assert.ok(existsSync(nativeAddonPath));
  });

  it('seals restricted DATA into a buffer the caller owns, the same bytes as a new one', () => {
    const suite = suites[0];
    assert.ok(suite !== undefined);
    const key = createRandom(3).bytes(suite.keyBytes);
    const first = new PacketSealer(suite, 77);
    const second = new PacketSealer(suite, 77);
    first.setKey(1, key);
    second.setKey(1, key);
    const slot = Buffer.alloc(2000, 0xcc);
    const opener = new PacketOpener(suite);
    opener.setKey(1, key);
    for (let sequence = 10; sequence < 20; sequence++) {
      const plain = encodeData(
        { sessionId: 5, sequence, timestampUs: 0, incarnation: 77 },
        Buffer.alloc(1000 + sequence, sequence),
      );
      plain.writeUInt16BE(1, offsetKeyEpoch);
      const fresh = first.seal(plain);
      const inSlot = second.seal(plain, slot);
      assert.ok(inSlot.equals(fresh));
      assert.equal(inSlot.buffer, slot.buffer, 'written into the slot');
      const opened = opener.open(inSlot);
      assert.ok(Buffer.isBuffer(opened) && opened.equals(plain));
    }
    // Opened in place: the same plain datagram, a view of the sealed buffer; a tampered one is wiped.
    for (const suiteInUse of suites) {
      const suiteKey = createRandom(suiteInUse.id).bytes(suiteInUse.keyBytes);
      const sealer = new PacketSealer(suiteInUse, 78);
      sealer.setKey(1, suiteKey);
      const inPlaceOpener = new PacketOpener(suiteInUse);
      inPlaceOpener.setKey(1, suiteKey);
      const plain = encodeData(
        { sessionId: 6, sequence: 1, timestampUs: 0, incarnation: 78 },
        Buffer.alloc(1400, 0x61),
      );
      plain.writeUInt16BE(1, offsetKeyEpoch);
      const sealed = sealer.seal(plain);
      const copy = Buffer.from(sealed);
      const opened = inPlaceOpener.open(sealed, true);
      assert.ok(Buffer.isBuffer(opened) && opened.equals(plain), suiteInUse.name);
      assert.equal(opened.buffer, sealed.buffer, 'a view of the sealed datagram');
      assert.ok(Buffer.isBuffer(inPlaceOpener.open(Buffer.from(copy))), 'the copy opens as before');
      copy[100] = (copy[100] ?? 0) ^ 4;
      assert.equal(inPlaceOpener.open(copy, true), 'bad-tag');
      assert.ok(
        copy.subarray(32, copy.length - 16).every((byte) => byte === 0),
        'the refused body is wiped',
      );
    }
    const small = encodeData(
      { sessionId: 5, sequence: 30, timestampUs: 0, incarnation: 77 },
      Buffer.alloc(10),
    );
    small.writeUInt16BE(1, offsetKeyEpoch);
    assert.throws(() => second.seal(small, Buffer.alloc(small.length + 15)), /does not fit/);
  });

  it('hashes with SHA-256 into a given place: the bytes node:crypto gives, every length, cut and offset', () => {
    const random = createRandom(12);
    for (const length of [0, 1, 55, 56, 63, 64, 65, 1400, 1440, 9000]) {
      const input = random.bytes(length);
      const full = createHash('sha256').update(input).digest();
      for (const [offset, bytes] of [
        [0, 32],
        [0, 16],
        [48, 16],
        [7, 1],
      ] as const) {
        const out = Buffer.alloc(64, 0xee);
        sha256Into(input, out, offset, bytes);
        const expected = Buffer.alloc(64, 0xee);
        full.copy(expected, offset, 0, bytes);
        assert.deepEqual(out, expected, `${length} bytes, ${bytes} at ${offset}`);
      }
    }
    const inPlace = Buffer.alloc(1440, 5);
    const full = createHash('sha256').update(inPlace).digest();
    sha256Into(inPlace, inPlace, 0, 32);
    assert.deepEqual(inPlace.subarray(0, 32), full);
    for (const [offset, bytes] of [
      [49, 16],
      [0, 33],
      [0, 0],
      [-1, 16],
      [1.5, 16],
    ] as const) {
      const out = Buffer.alloc(64, 0xee);
      assert.throws(() => sha256Into(inPlace, out, offset, bytes), CipherError);
      assert.ok(out.every((byte) => byte === 0xee));
    }
  });

  it('compares a SHA-256 with the bytes at an offset: equal only where node:crypto says so, in both engines', () => {
    const random = createRandom(13);
    const script = `import { sha256Equals } from ${JSON.stringify(new URL('../../src/crypto/aead-engine.ts', import.meta.url).href)};
const cases = JSON.parse(process.argv[1]);
process.stdout.write(JSON.stringify(cases.map(([input, expected, offset, length]) => {
  try { return sha256Equals(Buffer.from(input, 'hex'), Buffer.from(expected, 'hex'), offset, length); }
  catch (error) { return error.code; }
})));`;
    const cases: Array<[string, string, number, number]> = [];
    const answers: Array<boolean | string> = [];
    for (const length of [0, 1, 64, 1400, 1440]) {
      const input = random.bytes(length);
      const full = createHash('sha256').update(input).digest();
      const manifest = Buffer.concat([random.bytes(20), full, random.bytes(4)]);
      for (const [offset, bytes, equal] of [
        [20, 32, true],
        [20, 16, true],
        [20, 1, true],
        [21, 16, false],
        [19, 16, false],
      ] as const) {
        cases.push([input.toString('hex'), manifest.toString('hex'), offset, bytes]);
        answers.push(equal);
        assert.equal(
          sha256Equals(input, manifest, offset, bytes),
          equal,
          `${length} bytes, ${bytes} at ${offset}`,
        );
      }
      const flipped = Buffer.from(manifest);
      flipped[35] = (flipped[35] ?? 0) ^ 1;
      cases.push([input.toString('hex'), flipped.toString('hex'), 20, 16]);
      answers.push(false);
      assert.equal(sha256Equals(input, flipped, 20, 16), false);
    }
    for (const [offset, bytes] of [
      [41, 16],
      [0, 33],
      [0, 0],
      [-1, 16],
      [1.5, 16],
    ] as const) {
      const manifest = Buffer.alloc(56);
      assert.throws(() => sha256Equals(Buffer.alloc(10), manifest, offset, bytes), CipherError);
      cases.push([Buffer.alloc(10).toString('hex'), manifest.toString('hex'), offset, bytes]);
      answers.push('GATECAST_ERR_CIPHER');
    }
    const nodeAnswers = execFileSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script, JSON.stringify(cases)],
      { env: { ...process.env, GATECAST_AEAD_ENGINE: 'node:crypto' }, encoding: 'utf8' },
    );
    assert.deepEqual(JSON.parse(nodeAnswers), answers);
  });

  it('hashes the same bytes with GATECAST_AEAD_ENGINE=node:crypto', () => {
    const script = `import { sha256Into } from ${JSON.stringify(new URL('../../src/crypto/aead-engine.ts', import.meta.url).href)};
const out = Buffer.alloc(40, 0xee);
sha256Into(Buffer.alloc(1440, 0x3c), out, 8, 32);
process.stdout.write(out.toString('hex'));`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, GATECAST_AEAD_ENGINE: 'node:crypto' },
      encoding: 'utf8',
    });
    const full = createHash('sha256').update(Buffer.alloc(1440, 0x3c)).digest();
    assert.equal(out, Buffer.concat([Buffer.alloc(8, 0xee), full]).toString('hex'));
  });

  it('seals and opens whole datagrams alike in both engines, hash included, and refuses the same misuse', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const random = createRandom(21);
    for (const name of names) {
      const key = random.bytes(keyBytes(name));
      const engines = [
        {
          label: 'addon',
          seal: createAeadContext(name, key, true),
          open: createAeadContext(name, key, false),
        },
        {
          label: 'node:crypto',
          seal: createNodeCryptoAeadContext(name, key, true),
          open: createNodeCryptoAeadContext(name, key, false),
        },
      ];
      for (const [aadBytes, bodyBytes] of [
        [32, 1400],
        [32, 0],
        [0, 17],
        [5, 1],
      ] as const) {
        const nonce = random.bytes(12);
        const datagram = random.bytes(aadBytes + bodyBytes);
        const results = engines.map(({ seal, open }) => {
          const out = Buffer.alloc(datagram.length + 16);
          datagram.copy(out, 0, 0, aadBytes);
          const hash = Buffer.alloc(16);
          seal.sealDatagram(nonce, datagram, out, aadBytes, hash, 0, 16);
          const inPlace = Buffer.from(out);
          assert.equal(open.openDatagram(nonce, inPlace, aadBytes, inPlace, aadBytes), true);
          assert.deepEqual(inPlace.subarray(0, datagram.length), datagram);
          return { out, hash };
        });
        const [addon, node] = results;
        assert.deepEqual(addon?.out, node?.out, `${name}: ${aadBytes}+${bodyBytes}`);
        assert.deepEqual(addon?.hash, node?.hash);
        assert.deepEqual(
          addon?.hash,
          createHash('sha256')
            .update(node?.out ?? Buffer.alloc(0))
            .digest()
            .subarray(0, 16),
        );
      }
      // The same misuse is a CipherError from either engine, with the output untouched.
      const datagram = random.bytes(100);
      for (const { label, seal, open } of engines) {
        const cases: Array<[string, () => unknown, Buffer]> = [];
        const short = Buffer.alloc(115);
        cases.push([
          'output too short',
          () => seal.sealDatagram(Buffer.alloc(12), datagram, short, 20),
          short,
        ]);
        const big = Buffer.alloc(116);
        cases.push([
          'aad past the datagram',
          () => seal.sealDatagram(Buffer.alloc(12), datagram, big, 101),
          big,
        ]);
        const shifted = Buffer.alloc(300);
        cases.push([
          'output overlapping the plaintext',
          () => seal.sealDatagram(Buffer.alloc(12), shifted.subarray(0, 100), shifted.subarray(50), 20),
          shifted.subarray(100),
        ]);
        const hashInside = Buffer.alloc(116);
        cases.push([
          'hash inside the sealed datagram',
          () => seal.sealDatagram(Buffer.alloc(12), datagram, hashInside, 20, hashInside, 50, 16),
          hashInside,
        ]);
        const hashRoom = Buffer.alloc(116);
        cases.push([
          'hash past its buffer',
          () => seal.sealDatagram(Buffer.alloc(12), datagram, hashRoom, 20, Buffer.alloc(10), 0, 16),
          hashRoom,
        ]);
        const sealedDatagram = Buffer.alloc(116, 1);
        cases.push([
          'plaintext over the header',
          () => open.openDatagram(Buffer.alloc(12), sealedDatagram, 20, sealedDatagram, 0),
          Buffer.alloc(0),
        ]);
        const small = Buffer.alloc(79);
        cases.push([
          'plaintext past its buffer',
          () => open.openDatagram(Buffer.alloc(12), sealedDatagram, 20, small, 0),
          small,
        ]);
        for (const [what, call, untouched] of cases) {
          assert.throws(call, CipherError, `${label}: ${what}`);
          assert.ok(
            untouched.every((byte) => byte === 0),
            `${label}: ${what} wrote`,
          );
        }
        assert.ok(
          sealedDatagram.every((byte) => byte === 1),
          `${label}: the refused open wrote`,
        );
      }
    }
  });

  it('a sealer that hashes as it seals gives the SHA-256 of the datagram it returns', () => {
    for (const suite of suites) {
      const key = createRandom(suite.id + 40).bytes(suite.keyBytes);
      const sealer = new PacketSealer(suite, 79);
      sealer.setKey(1, key);
      const hashes = Buffer.alloc(64, 0xee);
      for (let sequence = 1; sequence <= 3; sequence++) {
        const plain = encodeData(
          { sessionId: 7, sequence, timestampUs: 0, incarnation: 79 },
          Buffer.alloc(1400 - sequence, sequence),
        );
        plain.writeUInt16BE(1, offsetKeyEpoch);
        const sealed = sealer.seal(plain, undefined, hashes, sequence * 16, 16);
        assert.deepEqual(
          hashes.subarray(sequence * 16, sequence * 16 + 16),
          createHash('sha256').update(sealed).digest().subarray(0, 16),
          suite.name,
        );
      }
      assert.deepEqual(hashes.subarray(0, 16), Buffer.alloc(16, 0xee), 'nothing written outside its slot');
      // A refused hash range seals nothing and uses no nonce: the same sequence seals afterwards.
      const plain = encodeData(
        { sessionId: 7, sequence: 4, timestampUs: 0, incarnation: 79 },
        Buffer.alloc(10),
      );
      plain.writeUInt16BE(1, offsetKeyEpoch);
      assert.throws(() => sealer.seal(plain, undefined, Buffer.alloc(8), 0, 16), CipherError);
      assert.ok(Buffer.isBuffer(sealer.seal(plain)));
    }
  });

  it('the node:crypto engine takes the datagram calls and sha256Into arguments as the addon does', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    // Typed arrays of any width count in bytes, null is no hash, anything not a view (a string
    // nonce) is a CipherError: from either engine, the same bytes or the same refusal.
    const key = createRandom(61).bytes(16);
    const nonce = createRandom(62).bytes(12);
    const engines = [
      {
        label: 'addon',
        seal: createAeadContext('aes-128-gcm', key, true),
        open: createAeadContext('aes-128-gcm', key, false),
      },
      {
        label: 'node:crypto',
        seal: createNodeCryptoAeadContext('aes-128-gcm', key, true),
        open: createNodeCryptoAeadContext('aes-128-gcm', key, false),
      },
    ];
    const results = engines.map(({ label, seal, open }) => {
      const plain = new Float64Array([1.5, -2, 3e100, Number.NaN]); // 32 bytes: 8 of header, 24 of body
      const out = new Uint16Array(24); // 48 bytes: the 32 sealed and the 16-byte tag
      new Uint8Array(out.buffer).set(new Uint8Array(plain.buffer, 0, 8));
      const hash = new Float32Array(8); // 32 bytes; the hash goes at byte 8
      seal.sealDatagram(
        nonce,
        plain as unknown as Buffer,
        out as unknown as Buffer,
        8,
        hash as unknown as Buffer,
        8,
        16,
      );
      const noHash = Buffer.alloc(48);
      noHash.set(new Uint8Array(plain.buffer, 0, 8));
      seal.sealDatagram(nonce, Buffer.from(plain.buffer), noHash, 8, null as unknown as Buffer, 0, 16);
      const sealed = Buffer.from(out.buffer);
      assert.deepEqual(noHash, sealed, `${label}: null is no hash, the same datagram`);
      const opened = new Uint32Array(6); // 24 bytes
      assert.equal(
        open.openDatagram(nonce, out as unknown as Buffer, 8, opened as unknown as Buffer, 0),
        true,
        label,
      );
      assert.deepEqual(Buffer.from(opened.buffer), Buffer.from(plain.buffer, 8), `${label}: opened by bytes`);
      assert.throws(
        () => seal.sealDatagram('twelve bytes' as unknown as Buffer, Buffer.alloc(20), Buffer.alloc(36), 4),
        CipherError,
        `${label}: a string nonce`,
      );
      assert.throws(
        () => open.openDatagram(nonce, [1, 2, 3] as unknown as Buffer, 0, Buffer.alloc(3), 0),
        CipherError,
        `${label}: an array as the datagram`,
      );
      return { sealed, hash: Buffer.from(hash.buffer) };
    });
    const [addon, node] = results;
    assert.deepEqual(node?.sealed, addon?.sealed, 'the same sealed bytes');
    assert.deepEqual(node?.hash, addon?.hash, 'the same hash');
    assert.deepEqual(
      addon?.hash,
      Buffer.concat([
        Buffer.alloc(8),
        createHash('sha256')
          .update(addon?.sealed ?? Buffer.alloc(0))
          .digest()
          .subarray(0, 16),
        Buffer.alloc(8),
      ]),
    );
    // sha256Into under each engine: a Float32Array counts in bytes, a string is refused.
    const script = `import { sha256Into } from ${JSON.stringify(new URL('../../src/crypto/aead-engine.ts', import.meta.url).href)};
import { CipherError } from ${JSON.stringify(new URL('../../src/crypto/errors.ts', import.meta.url).href)};
const out = new Float32Array(10);
sha256Into(new Float64Array([1, 2]), out, 8, 32);
let refused = 'accepted';
try { sha256Into('abc', Buffer.alloc(32), 0, 32); } catch (error) { refused = error instanceof CipherError ? 'CipherError' : String(error); }
process.stdout.write(Buffer.from(out.buffer).toString('hex') + ' ' + refused);`;
    const expected = `${Buffer.concat([
      Buffer.alloc(8),
      createHash('sha256')
        .update(Buffer.from(new Float64Array([1, 2]).buffer))
        .digest(),
    ]).toString('hex')} CipherError`;
    for (const setting of ['openssl-evp', 'node:crypto']) {
      const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        env: { ...process.env, GATECAST_AEAD_ENGINE: setting },
        encoding: 'utf8',
      });
      assert.equal(out, expected, setting);
    }
  });
});
