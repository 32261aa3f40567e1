import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freePort, startServe } from '../helpers/serve.js';
import { gatecastBin } from '../helpers/testbed.js';

const operator = 'operator-token-for-the-controller-cli-00';

describe('gatecast repair --controller under hostile input', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-controller-cli-'));
  after(() => rmSync(directory, { recursive: true, force: true }));

  it('a source that is not an address is a 400; grants keep working; SIGTERM ends the process', async () => {
    const server = await startServe(['--db', `sqlite:${join(directory, 'serve.db')}`], {
      GATECAST_OPERATOR_TOKEN: operator,
    });
    const headers = { authorization: `Bearer ${operator}`, 'content-type': 'application/json' };
    const post = async (path: string, body: object) =>
      (await (
        await fetch(`${server.url}${path}`, { method: 'POST', headers, body: JSON.stringify(body) })
      ).json()) as {
        id: string;
        token: string;
      };
    const alice = await post('/v1/subscribers', { name: 'alice' });
    await post('/v1/entitlements', { subscriber: alice.id, service: 'repair' });
    const source = await post('/v1/sources', { name: 'tv' });
    await post('/v1/sessions', { name: 'tv', group: '239.70.0.1:5000', owner: source.id });
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'a-control-secret-of-enough-bytes\n', { mode: 0o600 });
    const tokenFile = join(directory, 'operator.token');
    writeFileSync(tokenFile, operator, { mode: 0o600 });
    const journal = join(directory, 'usage.journal');
    const port = await freePort();
    const modulePort = await freePort();
    const child = spawn(
      process.execPath,
      [
        gatecastBin(),
        'repair',
        '--controller',
        `127.0.0.1:${port}`,
        '--subscription',
        server.url,
        '--token-file',
        tokenFile,
        '--s2-pool',
        '239.71.0.1:6000/4',
        '--listen',
        `127.0.0.1:${modulePort}`,
        '--iface',
        '127.0.0.1',
        '--secret-file',
        secret,
        '--reliable',
        '--journal',
        journal,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 20_000;
      while (!/controller on http/.test(stderr)) {
        assert.ok(
          Date.now() < deadline && child.exitCode === null,
          `the controller did not start: ${stderr}`,
        );
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const ask = (body: object) =>
        fetch(`http://127.0.0.1:${port}/v1/repair`, {
          method: 'POST',
          headers: { authorization: `Bearer ${alice.token}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
      const bad = await ask({ group: '239.70.0.1:5000', source: 'example.com' });
      assert.equal(bad.status, 400);
      assert.equal(((await bad.json()) as { error: string }).error, 'invalid-request');
      const good = await ask({ group: '239.70.0.1:5000' });
      assert.equal(good.status, 200, await good.clone().text());
      const again = await ask({ group: '239.70.0.1:5000' });
      assert.equal(again.status, 200, 'a later grant is not a 500 EADDRINUSE');
      const nobody = await ask({ group: '239.70.0.99:5000' });
      assert.equal(nobody.status, 404, 'a group nobody registered takes no S2');
      assert.equal(statSync(journal).mode & 0o777, 0o600, 'the journal is 0600');
      child.kill('SIGTERM');
      const started = Date.now();
      const code = await exited;
      assert.equal(code, 0, stderr);
      assert.ok(Date.now() - started < 15_000, 'the process ended after the stop');
      assert.match(stderr, /stopped\n$/);
    } finally {
      child.kill('SIGKILL');
      await server.stop();
    }
  });
});
