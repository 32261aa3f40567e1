/**
 * scripts/build-native.mjs as a user meets it (docs/security.md, "The packet engine"): a build
 * writes the addon and its digest; a rebuild that fails (the compiler is gone: CC=/bin/false)
 * leaves the addon an earlier build made, with its digest, and says so instead of claiming
 * node:crypto; GATECAST_REQUIRE_NATIVE=1 makes that failure exit 1. Runs in a copy of the tree.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { aeadEngine } from '../../src/crypto/aead-engine.js';

const repository = new URL('../../', import.meta.url).pathname;
const root = mkdtempSync(join(tmpdir(), 'gatecast-build-native-'));
after(() => rmSync(root, { recursive: true, force: true }));

function build(env: Record<string, string>, ...args: string[]) {
  const result = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs'), ...args], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 240_000,
  });
  assert.equal(result.signal, null, result.stderr);
  return result;
}

describe('build-native', () => {
  it('a failed rebuild keeps the addon an earlier build made, and says so', (t) => {
    const engine = aeadEngine();
    if (engine.name !== 'openssl-evp') {
      if (process.env.GATECAST_REQUIRE_PACKAGES === '1') {
        throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but the addon cannot be built here: ${engine.reason}`);
      }
      t.skip(`no compiler to build the addon with: ${engine.reason}`);
      return;
    }
    mkdirSync(join(root, 'scripts'));
    mkdirSync(join(root, 'native'));
    copyFileSync(join(repository, 'scripts', 'build-native.mjs'), join(root, 'scripts', 'build-native.mjs'));
    for (const name of ['aead.c', 'binding.gyp']) {
      copyFileSync(join(repository, 'native', name), join(root, 'native', name));
    }
    const addon = join(root, 'native', 'build', 'Release', 'gatecast_aead.node');
    const first = build({ GATECAST_REQUIRE_NATIVE: '1' });
    assert.equal(first.status, 0, first.stderr);
    const bytes = readFileSync(addon);
    const digest = createHash('sha256').update(bytes).digest('hex');
    assert.equal(readFileSync(`${addon}.sha256`, 'utf8'), `${digest}\n`);

    const failed = build({ CC: '/bin/false' }, '--force');
    assert.equal(failed.status, 0);
    assert.match(failed.stderr, /node-gyp rebuild failed/);
    assert.match(failed.stderr, /node-gyp needs a C compiler, make and python3/);
    assert.match(failed.stderr, /the addon an earlier build made stays in use/);
    assert.doesNotMatch(failed.stderr, /with node:crypto/);
    assert.deepEqual(readFileSync(addon), bytes);
    assert.equal(readFileSync(`${addon}.sha256`, 'utf8'), `${digest}\n`);

    const required = build({ CC: '/bin/false', GATECAST_REQUIRE_NATIVE: '1' }, '--force');
    assert.equal(required.status, 1);

    rmSync(join(root, 'native', 'build'), { recursive: true });
    const none = build({ CC: '/bin/false' });
    assert.equal(none.status, 0);
    assert.match(none.stderr, /gatecast will seal and open packets with node:crypto/);
    assert.equal(existsSync(addon), false);
  });
});
