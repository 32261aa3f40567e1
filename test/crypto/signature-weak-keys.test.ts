/**
 * Public keys no signer could hold (docs/security.md, "The signature engine"): a point of small
 * order, under which one signature (R the neutral point, S = 0) verifies for every message in
 * node:crypto, and second encodings of a point. Both engines refuse every signature under them,
 * `--source-public` refuses such a key naming why, and billing refuses it as a token's receipt key.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  verify,
} from 'node:crypto';
import { describe, it } from 'node:test';
import { ed25519PublicKeyProblem, ed25519Raw, smallOrderR } from '../../src/crypto/authority.js';

/** Small-order points (all eight), and second encodings of points. */
const weak: Record<string, string> = {
  'the neutral point': '0100000000000000000000000000000000000000000000000000000000000000',
  'order 2': 'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'order 4': '0000000000000000000000000000000000000000000000000000000000000000',
  'order 4, the other x': '0000000000000000000000000000000000000000000000000000000000000080',
  'order 8': '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'order 8, the other x': '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85',
  'order 8, the other y': 'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'order 8, the other y and x': 'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa',
  'y = p (0 again)': 'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'y = p + 1 (1 again)': 'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'x = 0 with its sign bit': '0100000000000000000000000000000000000000000000000000000000000080',
};

const authorityUrl = new URL('../../src/crypto/authority.ts', import.meta.url).href;

/** verifySignature's answers, under one GATECAST_SIGNATURE_ENGINE, for the "universal" signature under each key. */
function answersUnder(engine: string): Record<string, boolean | string> {
  const script = `import { createPublicKey } from 'node:crypto';
import { verifySignature } from ${JSON.stringify(authorityUrl)};
const keys = JSON.parse(process.argv[1]);
const universal = Buffer.concat([Buffer.from('01', 'hex'), Buffer.alloc(63)]);
const answers = {};
for (const [name, hex] of Object.entries(keys)) {
  let key;
  try { key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(hex, 'hex').toString('base64url') }, format: 'jwk' }); }
  catch { answers[name] = 'no key'; continue; }
  answers[name] = ['a', 'another message', ''].some((m) => verifySignature(Buffer.from(m), universal, key));
}
process.stdout.write(JSON.stringify(answers));`;
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', script, JSON.stringify(weak)],
    { env: { ...process.env, GATECAST_SIGNATURE_ENGINE: engine }, encoding: 'utf8' },
  );
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as Record<string, boolean | string>;
}

/** verifySignature's answer ('true' or 'false') under one GATECAST_SIGNATURE_ENGINE, in a process of its own. */
function verifiedUnder(engine: string, publicRaw: Buffer, message: Buffer, signature: Buffer): string {
  const script = `import { createPublicKey } from 'node:crypto';
import { verifySignature } from ${JSON.stringify(authorityUrl)};
const [x, m, s] = process.argv.slice(1);
const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(x, 'hex').toString('base64url') }, format: 'jwk' });
process.stdout.write(String(verifySignature(Buffer.from(m, 'hex'), Buffer.from(s, 'hex'), key)));`;
  // Hex arguments: a base64url one may start with '-' and be taken for an option.
  const result = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      '--input-type=module',
      '-e',
      script,
      publicRaw.toString('hex'),
      message.toString('hex'),
      signature.toString('hex'),
    ],
    { env: { ...process.env, GATECAST_SIGNATURE_ENGINE: engine }, encoding: 'utf8' },
  );
  assert.equal(result.status, 0, result.stderr);
  return result.stdout;
}

describe('Ed25519 public keys no signer could hold', () => {
  it('each is named, and no honest key is', () => {
    for (const [name, hex] of Object.entries(weak)) {
      assert.notEqual(ed25519PublicKeyProblem(Buffer.from(hex, 'hex')), undefined, name);
    }
    for (let round = 0; round < 40; round++) {
      const raw = ed25519Raw(generateKeyPairSync('ed25519').publicKey);
      assert.equal(ed25519PublicKeyProblem(raw), undefined);
    }
    assert.match(ed25519PublicKeyProblem(Buffer.alloc(31)) ?? '', /31 bytes, not 32/);
    // A y that is no point of the curve (2 is not: (y^2 - 1) / (d y^2 + 1) has no square root).
    assert.match(
      ed25519PublicKeyProblem(Buffer.from(`02${'00'.repeat(31)}`, 'hex')) ?? '',
      /no point of the curve/,
    );
  });

  it('no signature verifies under them, with either engine (node:crypto alone accepted the neutral point)', () => {
    for (const engine of ['node:crypto', '']) {
      const answers = answersUnder(engine);
      for (const name of Object.keys(weak)) {
        assert.ok(
          answers[name] === false || answers[name] === 'no key',
          `${engine || 'default'}: ${name}: ${answers[name]}`,
        );
      }
    }
    // An honest key still verifies through the same path.
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const message = randomBytes(100);
    for (const engine of ['node:crypto', '']) {
      assert.equal(
        verifiedUnder(engine, ed25519Raw(publicKey), message, sign(null, message, privateKey)),
        'true',
        engine,
      );
    }
  });

  it("a signature whose R is of small order, made by the key's own holder, verifies in neither engine", () => {
    // r = 0: R is the neutral point and S = h·a mod L, which OpenSSL accepts and libsodium refuses.
    const order = 2n ** 252n + 27742317777372353535851937790883648493n;
    const seed = randomBytes(32);
    const privateKey = (() => {
      const prefix = Buffer.from('302e020100300506032b657004220420', 'hex');
      return createPrivateKeyFrom(Buffer.concat([prefix, seed]));
    })();
    const publicRaw = ed25519Raw(createPublicKey(privateKey));
    const digest = createHash('sha512').update(seed).digest();
    const scalarBytes = Buffer.from(digest.subarray(0, 32));
    scalarBytes[0] = (scalarBytes[0] ?? 0) & 248;
    scalarBytes[31] = ((scalarBytes[31] ?? 0) & 127) | 64;
    const littleEndian = (bytes: Buffer) => BigInt(`0x${Buffer.from(bytes).reverse().toString('hex')}`);
    const a = littleEndian(scalarBytes);
    const neutral = Buffer.from(`01${'00'.repeat(31)}`, 'hex');
    const message = Buffer.from('a receipt its holder made');
    const h =
      littleEndian(
        createHash('sha512')
          .update(Buffer.concat([neutral, publicRaw, message]))
          .digest(),
      ) % order;
    const sBytes = Buffer.from(((h * a) % order).toString(16).padStart(64, '0'), 'hex').reverse();
    const forged = Buffer.concat([neutral, sBytes]);
    // node:crypto on its own takes it (the reason for the check), libsodium does not.
    assert.equal(verify(null, message, createPublicKey(privateKey), forged), true);
    assert.equal(smallOrderR(forged), true);
    for (const engine of ['node:crypto', '']) {
      assert.equal(verifiedUnder(engine, publicRaw, message, forged), 'false', engine || 'default');
    }
  });

  it('smallOrderR knows every small-order encoding, either sign bit, and nothing an honest signer makes', () => {
    for (const [name, hex] of Object.entries(weak)) {
      const r = Buffer.from(hex, 'hex');
      for (const signBit of [0, 0x80]) {
        const withSign = Buffer.from(r);
        withSign[31] = ((withSign[31] ?? 0) & 0x7f) | signBit;
        assert.equal(
          smallOrderR(Buffer.concat([withSign, Buffer.alloc(32)])),
          true,
          `${name}, sign ${signBit}`,
        );
      }
    }
    for (let round = 0; round < 200; round++) {
      const { privateKey } = generateKeyPairSync('ed25519');
      assert.equal(smallOrderR(sign(null, randomBytes(round), privateKey)), false);
    }
    assert.equal(smallOrderR(Buffer.alloc(31)), false);
  });
});

function createPrivateKeyFrom(der: Buffer) {
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}
