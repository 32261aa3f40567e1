/**
 * Both signature engines (docs/security.md, "The signature engine") refuse alike where a signature
 * would go outside its output or over its message, and a libsodium signing key is made without a
 * copy of the seed that cannot be wiped (a JWK's `d` string).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { describe, it } from 'node:test';
import { signatureEngineInfo } from '../../src/crypto/aead-engine.js';
import { signEd25519, verifySignature } from '../../src/crypto/authority.js';

const authorityUrl = new URL('../../src/crypto/authority.ts', import.meta.url).href;

/** What signEd25519Into does with each awkward place, under one GATECAST_SIGNATURE_ENGINE. */
function placesUnder(engine: string): Record<string, string> {
  const script = `import { generateKeyPairSync } from 'node:crypto';
import { signEd25519Into } from ${JSON.stringify(authorityUrl)};
const { privateKey } = generateKeyPairSync('ed25519');
const answers = {};
const place = (name, run) => {
  try { answers[name] = 'wrote ' + run(); } catch (error) { answers[name] = 'refused'; }
};
place('output too short', () => { const out = Buffer.alloc(40); signEd25519Into(Buffer.from('m'), privateKey, out, 0); return out.toString('hex'); });
place('offset past the end', () => { const out = Buffer.alloc(64); signEd25519Into(Buffer.from('m'), privateKey, out, 10); return out.toString('hex'); });
place('over the message', () => { const shared = Buffer.alloc(100, 7); signEd25519Into(shared.subarray(0, 50), privateKey, shared, 10); return shared.toString('hex'); });
place('negative offset', () => { const out = Buffer.alloc(100); signEd25519Into(Buffer.from('m'), privateKey, out, -1); return out.toString('hex'); });
place('NaN offset', () => { const out = Buffer.alloc(100); signEd25519Into(Buffer.from('m'), privateKey, out, NaN); return out.toString('hex'); });
place('fractional offset', () => { const out = Buffer.alloc(100); signEd25519Into(Buffer.from('m'), privateKey, out, 1.5); return out.toString('hex'); });
place('right after the message', () => { const shared = Buffer.alloc(114); signEd25519Into(shared.subarray(0, 50), privateKey, shared, 50); return 'ok'; });
process.stdout.write(JSON.stringify(answers));`;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, GATECAST_SIGNATURE_ENGINE: engine },
    encoding: 'utf8',
  });
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as Record<string, string>;
}

describe('signature engines agree on where a signature may go', () => {
  it('node:crypto refuses a place outside the output or over the message, as the addon does', (t) => {
    const expected = {
      'output too short': 'refused',
      'offset past the end': 'refused',
      'over the message': 'refused',
      'negative offset': 'refused',
      'NaN offset': 'refused',
      'fractional offset': 'refused',
      'right after the message': 'wrote ok',
    };
    assert.deepEqual(placesUnder('node:crypto'), expected);
    if (signatureEngineInfo().name !== 'libsodium') {
      t.skip(`libsodium is not the signature engine here: ${signatureEngineInfo().reason}`);
      return;
    }
    assert.deepEqual(placesUnder('libsodium'), expected);
  });

  it('a libsodium signing key is made without exporting the seed as a JWK string', (t) => {
    if (signatureEngineInfo().name !== 'libsodium') {
      t.skip(`libsodium is not the signature engine here: ${signatureEngineInfo().reason}`);
      return;
    }
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    // PrivateKeyObject has its own export, so the spy goes on the key's own prototype.
    const prototype = Object.getPrototypeOf(privateKey) as KeyObject;
    const exportOf = prototype.export;
    const privateJwks: unknown[] = [];
    prototype.export = function (this: KeyObject, options?: unknown) {
      const exported = exportOf.call(this, options as never);
      if (this.type === 'private' && (options as { format?: string } | undefined)?.format === 'jwk') {
        privateJwks.push(options);
      }
      return exported;
    } as typeof exportOf;
    let signature: Buffer;
    try {
      signature = signEd25519(Buffer.from('a receipt'), privateKey);
    } finally {
      prototype.export = exportOf;
    }
    assert.deepEqual(privateJwks, [], 'the seed went through a JWK string');
    assert.equal(verifySignature(Buffer.from('a receipt'), signature, publicKey), true);
  });
});
