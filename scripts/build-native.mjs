#!/usr/bin/env node
// Builds the packet AEAD addon (native/, docs/security.md "The packet engine") with node-gyp, the
// one npm ships, against the headers of the node that runs this script (no download). Run by
// `npm ci` and `npm run build`; skipped when the addon is newer than its sources.
//
// Without a compiler the build fails, says so, and exits 0: gatecast then seals and opens packets
// with node:crypto (slower, the same bytes), or with the addon an earlier build made, which a
// failed build leaves in place. GATECAST_REQUIRE_NATIVE=1 (set by .ci/run) makes a
// failed build exit 1 instead.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const native = join(root, 'native');
const addon = join(native, 'build', 'Release', 'gatecast_aead.node');
// The addon's SHA-256, written after a build that succeeded; src/crypto/aead-engine.ts loads the
// addon only when its bytes still hash to it (a truncated shared object kills dlopen with SIGBUS).
const digest = `${addon}.sha256`;
const sources = ['aead.c', 'binding.gyp'].map((name) => join(native, name));
const required = process.env.GATECAST_REQUIRE_NATIVE === '1';

const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');
const newest = Math.max(...sources.map((path) => statSync(path).mtimeMs));
if (
  existsSync(addon) &&
  existsSync(digest) &&
  statSync(addon).mtimeMs >= newest &&
  readFileSync(digest, 'utf8').trim() === sha256(addon) &&
  process.argv[2] !== '--force'
) {
  process.exit(0);
}

/** node-gyp: npm's own (npm names it while it runs a script), else the one beside this node. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(
      dirname(process.execPath),
      '..',
      'lib',
      'node_modules',
      'npm',
      'node_modules',
      'node-gyp',
      'bin',
      'node-gyp.js',
    ),
  ];
  return candidates.find((path) => path !== undefined && existsSync(path));
}

/** The headers of the running node (include/node beside its binary), so node-gyp downloads nothing. */
function nodeDir() {
  const prefix = resolve(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined;
}

/** True when an addon from an earlier build is there and still matches its digest. */
function earlierBuildUsable() {
  return existsSync(addon) && existsSync(digest) && readFileSync(digest, 'utf8').trim() === sha256(addon);
}

function fail(message) {
  const then = earlierBuildUsable()
    ? `the addon an earlier build made stays in use (${addon})`
    : 'gatecast will seal and open packets with node:crypto (about 8 times the CPU a packet)';
  process.stderr.write(`build-native: ${message}\nbuild-native: ${then}\n`);
  process.exit(required ? 1 : 0);
}

const gyp = nodeGyp();
if (gyp === undefined) {
  fail('node-gyp was not found (it comes with npm)');
}
const dir = process.env.npm_config_nodedir || nodeDir();
if (dir === undefined) {
  fail(
    `no node headers beside ${process.execPath} (include/node/node_api.h), and none configured (npm config nodedir)`,
  );
}
// Built in a directory of its own and moved in only when it succeeded: a failed rebuild (no
// compiler any more) leaves the addon an earlier build made, and a process that has the addon
// loaded keeps its file (a rename, never a write over it).
const staging = mkdtempSync(join(tmpdir(), 'gatecast-native-'));
for (const source of sources) {
  copyFileSync(source, join(staging, source.slice(native.length + 1)));
}
const result = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${dir}`, '--directory', staging], {
  stdio: ['ignore', 'pipe', 'pipe'],
  encoding: 'utf8',
});
const built = join(staging, 'build', 'Release', 'gatecast_aead.node');
if (result.status !== 0 || !existsSync(built)) {
  rmSync(staging, { recursive: true, force: true });
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n');
  fail(
    `node-gyp rebuild failed (${result.error?.message ?? `exit ${result.status}`}):\n${output}\nbuild-native: node-gyp needs a C compiler, make and python3 (Debian: apt-get install build-essential python3); then npm run build:native`,
  );
}
mkdirSync(dirname(addon), { recursive: true });
rmSync(digest, { force: true }); // no digest while the addon is being replaced: it is not loaded
copyFileSync(built, `${addon}.new`);
renameSync(`${addon}.new`, addon);
writeFileSync(digest, `${sha256(addon)}\n`);
rmSync(staging, { recursive: true, force: true });
process.stdout.write(`build-native: built ${addon}\n`);
