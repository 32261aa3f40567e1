/**
 * The signature engine (docs/security.md, "The signature engine"): libsodium's Ed25519 check,
 * through the addon, must accept exactly what node:crypto accepts for keys and signatures a
 * signer makes: RFC 8032's vectors, random keys and messages, and each of them with a bit flipped
 * anywhere, truncated or lengthened. Without libsodium or the addon these cases skip and say why;
 * under GATECAST_REQUIRE_PACKAGES=1 (CI) that is a failure.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  verify,
} from 'node:crypto';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import {
  nativeAddonPath,
  signatureEngineInfo,
  sodiumEd25519Signer,
  sodiumEd25519Verify,
} from '../../src/crypto/aead-engine.js';
import {
  ed25519Raw,
  signEd25519,
  signEd25519Into,
  signInPlace,
  verifySignature,
} from '../../src/crypto/authority.js';
import { sodiumMissing } from '../helpers/engines.js';

const jwkKey = (raw: Buffer) =>
  createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });

/** RFC 8032, section 7.1: TEST 1 (empty message), TEST 2 (one byte), TEST 3 (two bytes). */
const rfc8032 = [
  {
    seed: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    publicKey: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    message: '',
    signature:
      'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    seed: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    publicKey: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    message: '72',
    signature:
      '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
  {
    seed: 'c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7',
    publicKey: 'fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025',
    message: 'af82',
    signature:
      '6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a',
  },
].map((vector) => ({
  seed: Buffer.from(vector.seed, 'hex'),
  publicKey: Buffer.from(vector.publicKey, 'hex'),
  message: Buffer.from(vector.message, 'hex'),
  signature: Buffer.from(vector.signature, 'hex'),
}));

/** node:crypto's answer, false where it throws (a key that is not a point). */
function nodeAnswer(signature: Buffer, message: Buffer, raw: Buffer): boolean {
  try {
    return verify(null, message, jwkKey(raw), signature);
  } catch {
    return false;
  }
}

describe('signature engine', () => {
  it('libsodium is the engine here, and verifySignature uses it', (t) => {
    const missing = sodiumMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    assert.equal(signatureEngineInfo().name, 'libsodium');
    assert.match(signatureEngineInfo().sodium ?? '', /^\d+\.\d+\.\d+/);
    assert.equal(typeof sodiumEd25519Verify(), 'function');
  });

  it("accepts RFC 8032's vectors, and refuses each with any one bit flipped", (t) => {
    const missing = sodiumMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const sodium = sodiumEd25519Verify() as NonNullable<ReturnType<typeof sodiumEd25519Verify>>;
    for (const { publicKey, message, signature } of rfc8032) {
      assert.equal(sodium(signature, message, publicKey), true);
      assert.equal(verifySignature(message, signature, jwkKey(publicKey)), true);
      for (let bit = 0; bit < signature.length * 8; bit++) {
        const flipped = Buffer.from(signature);
        flipped[bit >> 3] = (flipped[bit >> 3] ?? 0) ^ (1 << (bit & 7));
        assert.equal(sodium(flipped, message, publicKey), false, `signature bit ${bit}`);
      }
      for (let bit = 0; bit < message.length * 8; bit++) {
        const flipped = Buffer.from(message);
        flipped[bit >> 3] = (flipped[bit >> 3] ?? 0) ^ (1 << (bit & 7));
        assert.equal(sodium(signature, flipped, publicKey), false, `message bit ${bit}`);
      }
      for (let bit = 0; bit < publicKey.length * 8; bit++) {
        const flipped = Buffer.from(publicKey);
        flipped[bit >> 3] = (flipped[bit >> 3] ?? 0) ^ (1 << (bit & 7));
        assert.equal(sodium(signature, message, flipped), false, `key bit ${bit}`);
        assert.equal(nodeAnswer(signature, message, flipped), false, `node:crypto, key bit ${bit}`);
      }
    }
  });

  it('answers as node:crypto does for random keys and messages, intact and tampered', (t) => {
    const missing = sodiumMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const sodium = sodiumEd25519Verify() as NonNullable<ReturnType<typeof sodiumEd25519Verify>>;
    for (let round = 0; round < 200; round++) {
      const { privateKey, publicKey } = generateKeyPairSync('ed25519');
      const raw = ed25519Raw(publicKey);
      const message = randomBytes(round % 7 === 0 ? 0 : 1 + ((round * 37) % 2200));
      const signature = sign(null, message, privateKey);
      const cases: Array<[string, Buffer, Buffer, Buffer]> = [['intact', signature, message, raw]];
      const at = (round * 13) % 64;
      const flippedSignature = Buffer.from(signature);
      flippedSignature[at] = (flippedSignature[at] ?? 0) ^ 0x80;
      cases.push(['signature byte flipped', flippedSignature, message, raw]);
      if (message.length > 0) {
        const flippedMessage = Buffer.from(message);
        flippedMessage[round % message.length] = (flippedMessage[round % message.length] ?? 0) ^ 1;
        cases.push(['message byte flipped', signature, flippedMessage, raw]);
        cases.push(['message cut short', signature, message.subarray(0, -1), raw]);
      }
      cases.push(['message lengthened', signature, Buffer.concat([message, Buffer.alloc(1)]), raw]);
      const other = ed25519Raw(generateKeyPairSync('ed25519').publicKey);
      cases.push(['another key', signature, message, other]);
      // S + L: the same point, a scalar past the group order (malleability): both refuse it.
      const order = 2n ** 252n + 27742317777372353535851937790883648493n;
      const s = BigInt(`0x${Buffer.from(signature.subarray(32)).reverse().toString('hex')}`) + order;
      if (s < 2n ** 256n) {
        const sBytes = Buffer.from(s.toString(16).padStart(64, '0'), 'hex').reverse();
        cases.push(['S + L', Buffer.concat([signature.subarray(0, 32), sBytes]), message, raw]);
      }
      for (const [what, sig, msg, key] of cases) {
        const expected = nodeAnswer(sig, msg, key);
        assert.equal(sodium(sig, msg, key), expected, `round ${round}: ${what}`);
        assert.equal(
          verifySignature(msg, sig, jwkKey(key)),
          expected,
          `round ${round}: ${what} (verifySignature)`,
        );
        assert.equal(expected, what === 'intact', `round ${round}: ${what} (node:crypto)`);
      }
    }
  });

  it('verifySignature refuses a signature of the wrong length, and any other key type, without throwing', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const message = randomBytes(100);
    const signature = sign(null, message, privateKey);
    for (const length of [0, 1, 63, 65, 128]) {
      const wrong = Buffer.alloc(length);
      signature.copy(wrong, 0, 0, Math.min(length, 64));
      assert.equal(verifySignature(message, wrong, publicKey), false, `${length} bytes`);
    }
    const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
    assert.equal(verifySignature(message, signature, p256), false);
    assert.equal(verifySignature(message, signature, publicKey), true);
    // The private key object checks as its public half (node:crypto derives it), with either engine.
    assert.equal(verifySignature(message, signature, privateKey), true);
  });

  it("the addon's ed25519Verify checks its arguments and says what is wrong", (t) => {
    const missing = sodiumMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const addon = createRequire(import.meta.url)(nativeAddonPath) as {
      ed25519Verify: (...args: unknown[]) => boolean;
    };
    const { publicKey, message, signature } = rfc8032[1] as (typeof rfc8032)[number];
    assert.equal(addon.ed25519Verify(signature, message, publicKey), true);
    assert.throws(() => addon.ed25519Verify(signature, message), /takes three arguments/);
    assert.throws(() => addon.ed25519Verify(signature.subarray(1), message, publicKey), /64-byte signature/);
    assert.throws(() => addon.ed25519Verify(signature, message, publicKey.subarray(1)), /32-byte public key/);
    assert.throws(
      () => addon.ed25519Verify('x'.repeat(64), message, publicKey),
      /signature must be a Buffer/,
    );
    assert.throws(() => addon.ed25519Verify(signature, null, publicKey), /message must be a Buffer/);
    assert.throws(() => addon.ed25519Verify(signature, message, [1, 2]), /public key must be a Buffer/);
  });

  it("signs RFC 8032's vectors and random messages with exactly node:crypto's bytes", (t) => {
    const missing = sodiumMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    assert.notEqual(sodiumEd25519Signer(), undefined);
    const pkcs8 = (seed: Buffer) =>
      createPrivateKey({
        key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]),
        format: 'der',
        type: 'pkcs8',
      });
    for (const { seed, publicKey, message, signature } of rfc8032) {
      const privateKey = pkcs8(seed);
      assert.deepEqual(ed25519Raw(createPublicKey(privateKey)), publicKey);
      assert.deepEqual(signEd25519(message, privateKey), signature);
      const out = Buffer.alloc(80, 0xee);
      signEd25519Into(message, privateKey, out, 9);
      assert.deepEqual(out, Buffer.concat([Buffer.alloc(9, 0xee), signature, Buffer.alloc(7, 0xee)]));
      const slot = Buffer.concat([message, Buffer.alloc(64)]);
      assert.deepEqual(signInPlace(slot, privateKey), Buffer.concat([message, signature]));
    }
    for (let round = 0; round < 100; round++) {
      const { privateKey, publicKey } = generateKeyPairSync('ed25519');
      const message = randomBytes(round === 0 ? 0 : (round * 53) % 2300);
      const signature = signEd25519(message, privateKey);
      assert.deepEqual(signature, sign(null, message, privateKey), `round ${round}`);
      assert.equal(verify(null, message, publicKey, signature), true);
      // The same key again: its libsodium key is made once and kept, with the same answers.
      assert.deepEqual(signEd25519(message, privateKey), signature);
    }
  });

  it("the addon's signing calls check their arguments and write nothing outside their place", (t) => {
    const missing = sodiumMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const addon = createRequire(import.meta.url)(nativeAddonPath) as {
      ed25519SigningKey: (...args: unknown[]) => object;
      ed25519Sign: (...args: unknown[]) => undefined;
      create: (...args: unknown[]) => object;
    };
    const { seed, publicKey, message, signature } = rfc8032[2] as (typeof rfc8032)[number];
    const publicOut = Buffer.alloc(32);
    const key = addon.ed25519SigningKey(seed, publicOut);
    assert.deepEqual(publicOut, publicKey);
    assert.ok(Object.isFrozen(key));
    const out = Buffer.alloc(64);
    addon.ed25519Sign(key, message, out, 0);
    assert.deepEqual(out, signature);
    assert.throws(() => addon.ed25519SigningKey(seed), /takes two arguments/);
    assert.throws(() => addon.ed25519SigningKey(seed.subarray(1), publicOut), /32-byte seed/);
    assert.throws(() => addon.ed25519SigningKey(seed, Buffer.alloc(31)), /32-byte public key output/);
    assert.throws(() => addon.ed25519SigningKey('seed', publicOut), /seed must be a Buffer/);
    const aeadHandle = addon.create('aes-128-gcm', Buffer.alloc(16), true);
    for (const notKey of [{}, aeadHandle, structuredClone({}), null, Buffer.alloc(64)]) {
      assert.throws(
        () => addon.ed25519Sign(notKey, message, Buffer.alloc(64), 0),
        /not an Ed25519 signing key/,
      );
    }
    const untouched = Buffer.alloc(70, 0xee);
    for (const [offset, pattern] of [
      [7, /64 bytes, within the output/],
      [70, /64 bytes, within the output/],
      [-1, /offset must be a non-negative integer/],
      [1.5, /offset must be a non-negative integer/],
    ] as const) {
      const target = Buffer.alloc(70, 0xee);
      assert.throws(() => addon.ed25519Sign(key, message, target, offset), pattern);
      assert.deepEqual(target, untouched);
    }
    const shared = Buffer.alloc(100, 1);
    assert.throws(() => addon.ed25519Sign(key, shared.subarray(0, 50), shared, 30), /overlap the message/);
    assert.throws(() => addon.ed25519Sign(key, message, out), /four arguments/);
  });

  it('GATECAST_SIGNATURE_ENGINE: node:crypto is taken, an unknown value is refused naming the variable', () => {
    const script = `import { signatureEngineInfo } from ${JSON.stringify(new URL('../../src/crypto/aead-engine.ts', import.meta.url).href)};
try { process.stdout.write(JSON.stringify(signatureEngineInfo())); }
catch (error) { process.stdout.write(JSON.stringify({ error: error.message, code: error.code })); }`;
    const run = (setting: string) => {
      const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        env: { ...process.env, GATECAST_SIGNATURE_ENGINE: setting },
        encoding: 'utf8',
      });
      assert.equal(result.status, 0, result.stderr);
      return JSON.parse(result.stdout) as { name?: string; reason?: string; error?: string; code?: string };
    };
    assert.deepEqual(run('node:crypto'), {
      name: 'node:crypto',
      reason: 'GATECAST_SIGNATURE_ENGINE=node:crypto',
    });
    const refused = run('openssl');
    assert.equal(refused.code, 'GATECAST_ERR_AEAD_ENGINE');
    assert.match(
      refused.error ?? '',
      /GATECAST_SIGNATURE_ENGINE: "openssl" is not an engine \(libsodium or node:crypto/,
    );
  });
});
