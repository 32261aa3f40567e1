/**
 * Ed25519 public keys read from files (docs/security.md, "The signature engine"): one no signer
 * could hold (small order, a second encoding) is refused where it is configured, naming the field
 * and why, instead of making every signature under it fail later: `--source-public`,
 * `token init --root-public`, `token grant --source-public` and a `--products` entry's
 * `sourcePublic`.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readEd25519PublicFile, readOperatorAuthority } from '../../src/cli/restricted.js';
import { ed25519Raw } from '../../src/crypto/authority.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-public-keys-'));
after(() => rmSync(directory, { recursive: true, force: true }));

const file = (name: string, text: string) => {
  const path = join(directory, name);
  writeFileSync(path, text);
  return path;
};

describe('Ed25519 public key files', () => {
  it('an honest key is read; small-order keys and second encodings are refused naming the field and why', () => {
    const honest = ed25519Raw(generateKeyPairSync('ed25519').publicKey);
    assert.deepEqual(readEd25519PublicFile(file('honest.pub', `${honest.toString('hex')}\n`), '--x'), honest);
    for (const [hex, why] of [
      [`01${'00'.repeat(31)}`, /point of small order/],
      [`00${'00'.repeat(31)}`, /point of small order/],
      [`ec${'ff'.repeat(30)}7f`, /point of small order/],
      [`ee${'ff'.repeat(30)}7f`, /second encoding/],
    ] as const) {
      const path = file(`weak-${hex.slice(0, 4)}.pub`, `${hex}\n`);
      assert.throws(
        () => readEd25519PublicFile(path, '--root-public'),
        (error: Error) =>
          /^--root-public: .* is not a usable Ed25519 public key: /.test(error.message) &&
          why.test(error.message),
      );
    }
    assert.throws(() => readEd25519PublicFile(file('short.pub', 'abcd\n'), '--x'), /must hold 64 hex digits/);
  });

  it("a --products entry's sourcePublic of small order is refused as [index].sourcePublic", () => {
    const root = generateKeyPairSync('ed25519')
      .privateKey.export({ format: 'pem', type: 'pkcs8' })
      .toString();
    const rootPath = file('root.pem', root);
    file('service.key', `${'11'.repeat(32)}\n`);
    file('good.pub', `${ed25519Raw(generateKeyPairSync('ed25519').publicKey).toString('hex')}\n`);
    file('bad.pub', `01${'00'.repeat(31)}\n`);
    const products = file(
      'products.json',
      JSON.stringify([
        { name: 'news', serviceKeyFile: 'service.key', sourcePublic: 'good.pub' },
        { name: 'sport', serviceKeyFile: 'service.key', sourcePublic: 'bad.pub' },
      ]),
    );
    assert.throws(
      () => readOperatorAuthority(rootPath, products),
      /--products: \[1\]\.sourcePublic: .* is not a usable Ed25519 public key: it is a point of small order/,
    );
    const fine = file(
      'products-fine.json',
      JSON.stringify([{ name: 'news', serviceKeyFile: 'service.key', sourcePublic: 'good.pub' }]),
    );
    assert.equal(readOperatorAuthority(rootPath, fine)?.products.length, 1);
  });
});
