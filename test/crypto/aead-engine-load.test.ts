/**
 * How the packet engine is chosen when the addon or the setting is wrong (docs/security.md, "The
 * packet engine"): a damaged addon must never be handed to dlopen (a truncated shared object kills
 * the process with SIGBUS there), and GATECAST_AEAD_ENGINE with a value it does not know is an
 * error naming the variable, not a silent default. Each case runs a copy of src/ in a
 * temporary tree whose native/build/Release holds the file under test.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { nativeAddonDigestPath, nativeAddonPath } from '../../src/crypto/aead-engine.js';
import { addonMissing } from '../helpers/engines.js';

const repository = new URL('../../', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'gatecast-aead-load-'));
after(() => rmSync(work, { recursive: true, force: true }));

let trees = 0;
/** A tree with a copy of src/ and, when given, the addon bytes and digest. */
function tree(addon?: Buffer, digest?: string): string {
  const root = join(work, `tree-${trees++}`);
  mkdirSync(join(root, 'native', 'build', 'Release'), { recursive: true });
  writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');
  // All of src/: aead-engine.ts imports the protocol's header layout, and may import more.
  cpSync(join(repository, 'src'), join(root, 'src'), { recursive: true });
  if (addon !== undefined) {
    writeFileSync(join(root, 'native', 'build', 'Release', 'gatecast_aead.node'), addon);
  }
  if (digest !== undefined) {
    writeFileSync(join(root, 'native', 'build', 'Release', 'gatecast_aead.node.sha256'), `${digest}\n`);
  }
  return root;
}

/** Runs aeadEngine() in the tree: its answer or its error, and how the process ended. */
function engineIn(root: string, setting?: string) {
  const script = `import { aeadEngine } from ${JSON.stringify(`file://${join(root, 'src', 'crypto', 'aead-engine.ts')}`)};
try { process.stdout.write(JSON.stringify(aeadEngine())); }
catch (error) { process.stdout.write(JSON.stringify({ error: error.message, code: error.code })); }`;
  const env = { ...process.env };
  delete env.GATECAST_AEAD_ENGINE;
  if (setting !== undefined) {
    env.GATECAST_AEAD_ENGINE = setting;
  }
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: repository,
    env,
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(result.signal, null, `the process died of ${result.signal}: ${result.stderr}`);
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as { name?: string; reason?: string; error?: string; code?: string };
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('packet engine: loading the addon', () => {
  it('a truncated addon is not loaded (no SIGBUS): node:crypto, and the reason names the digest', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const good = readFileSync(nativeAddonPath);
    assert.equal(readFileSync(nativeAddonDigestPath, 'utf8').trim(), sha256(good));
    // Cut where the loaded segments still reach past the end: dlopen maps them and faults.
    const engine = engineIn(tree(good.subarray(0, 5000), sha256(good)));
    assert.equal(engine.name, 'node:crypto');
    assert.match(engine.reason ?? '', /not the file its build made .*SHA-256.*npm run build:native/);
  });

  it('an addon with no digest from its build is not loaded', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const engine = engineIn(tree(readFileSync(nativeAddonPath)));
    assert.equal(engine.name, 'node:crypto');
    assert.match(engine.reason ?? '', /no digest from its build/);
  });

  it('the real addon with its digest is loaded and checked', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    const good = readFileSync(nativeAddonPath);
    assert.equal(engineIn(tree(good, sha256(good))).name, 'openssl-evp');
  });

  it('an addon that holds only the sequence of the header to the nonce it is given is not loaded', (t) => {
    const missing = addonMissing();
    if (missing !== undefined) {
      t.skip(missing);
      return;
    }
    // native/aead.c built with its nonce check cut to the sequence's 4 bytes (the incarnation, the
    // epoch and the zeros unchecked): the load check must refuse it, not only one with none.
    const root = join(work, `weak-${trees++}`);
    mkdirSync(join(root, 'scripts'), { recursive: true });
    mkdirSync(join(root, 'native'));
    copyFileSync(join(repository, 'scripts', 'build-native.mjs'), join(root, 'scripts', 'build-native.mjs'));
    copyFileSync(join(repository, 'native', 'binding.gyp'), join(root, 'native', 'binding.gyp'));
    const source = readFileSync(join(repository, 'native', 'aead.c'), 'utf8');
    const check = 'memcmp(named, nonce, NONCE_BYTES) != 0';
    assert.ok(source.includes(check), 'the nonce check is where this test cuts it');
    writeFileSync(
      join(root, 'native', 'aead.c'),
      source.replace(check, 'memcmp(named + 8, nonce + 8, 4) != 0'),
    );
    const built = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs'), '--force'], {
      env: { ...process.env, GATECAST_REQUIRE_NATIVE: '1' },
      encoding: 'utf8',
      timeout: 240_000,
    });
    assert.equal(built.status, 0, built.stderr);
    const weak = readFileSync(join(root, 'native', 'build', 'Release', 'gatecast_aead.node'));
    const engine = engineIn(tree(weak, sha256(weak)));
    assert.equal(engine.name, 'node:crypto');
    assert.match(engine.reason ?? '', /failed its check: .*sealed under a nonce its header does not name/);
  });

  it('another shared object in its place is named as not the packet engine', () => {
    const other = join(
      repository,
      'node_modules',
      'better-sqlite3',
      'build',
      'Release',
      'better_sqlite3.node',
    );
    const bytes = readFileSync(other);
    const engine = engineIn(tree(bytes, sha256(bytes)));
    assert.equal(engine.name, 'node:crypto');
    assert.match(
      engine.reason ?? '',
      /not the packet engine \(no create, seal, open, dispose, digest, digestEquals, sealDatagram, openDatagram, sealPacket, openPacket\)/,
    );
  });

  it('no addon: node:crypto says to build it; GATECAST_AEAD_ENGINE=openssl-evp is then an error', () => {
    const root = tree();
    const engine = engineIn(root);
    assert.equal(engine.name, 'node:crypto');
    assert.match(engine.reason ?? '', /the addon is not built .*npm run build:native/);
    const required = engineIn(root, 'openssl-evp');
    assert.equal(required.code, 'GATECAST_ERR_AEAD_ENGINE');
    assert.match(required.error ?? '', /^GATECAST_AEAD_ENGINE=openssl-evp, but the addon is not built/);
  });

  it('GATECAST_AEAD_ENGINE with an unknown value is an error naming the variable', () => {
    for (const value of ['openssl', 'node-crypto', 'NODE:CRYPTO', ' node:crypto']) {
      const engine = engineIn(tree(), value);
      assert.equal(engine.code, 'GATECAST_ERR_AEAD_ENGINE', value);
      assert.equal(
        engine.error,
        `GATECAST_AEAD_ENGINE: ${JSON.stringify(value)} is not an engine (openssl-evp or node:crypto, or unset)`,
      );
    }
    assert.equal(engineIn(tree(), '').name, 'node:crypto'); // empty is unset
  });

  it('the command refuses an unknown GATECAST_AEAD_ENGINE before it starts (exit 2, the variable named)', () => {
    const script = `import { main } from ${JSON.stringify(new URL('../../src/cli/main.ts', import.meta.url).href)};
process.exitCode = await main(['send', '--help']);`;
    const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: repository,
      env: { ...process.env, GATECAST_AEAD_ENGINE: 'opensssl-evp' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(result.status, 2, result.stderr);
    assert.equal(
      result.stderr,
      'gatecast send: GATECAST_AEAD_ENGINE: "opensssl-evp" is not an engine (openssl-evp or node:crypto, or unset)\n',
    );
    assert.equal(result.stdout, '');
  });
});
