/**
 * bin/gatecast runs the JavaScript built into dist/, not the TypeScript sources: an installed copy
 * holds bin/, dist/ and package.json only, and no compiler runs when a command starts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { CliResult } from '../helpers/cli.js';
import { gatecastBin, repoRoot } from '../helpers/testbed.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-build-'));
after(() => rmSync(directory, { recursive: true, force: true }));

/**
 * Module hooks that refuse to load any TypeScript file, so a .ts import fails loudly even though
 * tsx is reachable through node_modules (tsx hands the file on to the next hook to read it).
 */
const refuseTypeScript = join(directory, 'refuse-typescript.mjs');
writeFileSync(
  join(directory, 'refuse-typescript-hooks.mjs'),
  `export async function load(url, context, next) {
  if (/\\.[cm]?tsx?$/.test(new URL(url).pathname)) {
    throw new Error(\`loaded TypeScript: \${url}\`);
  }
  return next(url, context);
}
`,
);
writeFileSync(
  refuseTypeScript,
  "import { register } from 'node:module';\nregister('./refuse-typescript-hooks.mjs', import.meta.url);\n",
);

/** A copy of the package as npm installs it: bin/, package.json, dist/ when built, no src/. */
function installedCopy(name: string, withDist: boolean): string {
  const root = join(directory, name);
  mkdirSync(root);
  cpSync(join(repoRoot, 'bin'), join(root, 'bin'), { recursive: true });
  cpSync(join(repoRoot, 'package.json'), join(root, 'package.json'));
  if (withDist) {
    gatecastBin(); // throws unless dist/ is built from the current sources
    cpSync(join(repoRoot, 'dist'), join(root, 'dist'), { recursive: true });
  }
  symlinkSync(join(repoRoot, 'node_modules'), join(root, 'node_modules'), 'dir');
  return root;
}

/** This process's environment without NODE_OPTIONS, so no loader of the test runner is inherited. */
function withoutLoaders(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  return env;
}

/** Runs the copy's bin/gatecast with no loader from the test runner and no TypeScript allowed. */
async function runCopy(root: string, args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      ['--import', refuseTypeScript, join(root, 'bin', 'gatecast'), ...args],
      { cwd: root, env: withoutLoaders(), timeout: 30_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

describe('gatecast runs from its build, without the TypeScript sources', () => {
  it('the hooks of this test refuse TypeScript, with tsx registered too (so the checks below mean something)', async () => {
    await assert.rejects(
      promisify(execFile)(
        process.execPath,
        ['--import', refuseTypeScript, '--import', 'tsx', join(repoRoot, 'src', 'limits.ts')],
        { cwd: repoRoot, env: withoutLoaders(), timeout: 30_000 },
      ),
      /loaded TypeScript: file:.*limits\.ts/,
    );
  });

  it('bin/gatecast --help and version run with only bin/, dist/ and package.json', async () => {
    const root = installedCopy('installed', true);
    const help = await runCopy(root, ['--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^usage: gatecast <command>/);
    assert.equal(help.stderr, '');
    // Each command's module loads when it runs: serve's brings Fastify and the stores.
    const sendHelp = await runCopy(root, ['send', '--help']);
    assert.equal(sendHelp.code, 0, sendHelp.stderr);
    assert.match(sendHelp.stdout, /--relay ADDR:PORT/);
    const serveHelp = await runCopy(root, ['serve', '--help']);
    assert.equal(serveHelp.code, 0, serveHelp.stderr);
    assert.match(serveHelp.stdout, /--listen/);
    const version = await runCopy(root, ['version']);
    assert.equal(version.code, 0, version.stderr);
    assert.match(version.stdout, /^gatecast \d+\.\d+\.\d+/);
  });

  it('without a build, says so in one line and exits 2', async () => {
    const root = installedCopy('unbuilt', false);
    const result = await runCopy(root, ['--help']);
    assert.equal(result.code, 2);
    assert.equal(result.stdout, '');
    assert.equal(result.stderr, 'gatecast is not built: run npm run build\n');
  });
});
