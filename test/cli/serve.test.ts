import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runGatecast } from '../helpers/cli.js';
import { freePort, startServe } from '../helpers/serve.js';
import { waitUntil } from '../helpers/wait.js';

describe('gatecast serve starts whole or not at all, and keeps its files to its owner', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-serve-'));
  after(() => rmSync(directory, { recursive: true, force: true }));

  it('on a port in use: one line, exit 2, no store file and no operator token made', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const address = holder.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const db = join(directory, 'busy', 'gatecast.db');
    try {
      const result = await runGatecast(['serve', '--listen', `127.0.0.1:${port}`, '--db', `sqlite:${db}`]);
      assert.equal(result.code, 2, result.stderr);
      assert.equal(
        result.stderr,
        `gatecast serve: --listen: cannot listen on 127.0.0.1:${port}: EADDRINUSE\n`,
      );
      assert.equal(existsSync(db), false, 'nothing was created');
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
    }
  });

  it('the SQLite store and its WAL are 0600; a stop ends the process', async () => {
    const db = join(directory, 'own', 'gatecast.db');
    const server = await startServe(['--db', `sqlite:${db}`], {}, await freePort());
    try {
      assert.match(server.stderr(), /operator token \(shown once/);
      assert.equal(statSync(db).mode & 0o777, 0o600);
      assert.equal(statSync(`${db}-wal`).mode & 0o777, 0o600);
    } finally {
      await server.stop();
    }
    assert.equal(server.child.exitCode, 0, `${server.child.signalCode} ${server.stderr()}`);
    assert.match(server.stderr(), /stopped\n$/);
  });
});

describe('gatecast serve says when its stop did not finish', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-serve-stop-'));
  after(() => rmSync(directory, { recursive: true, force: true }));

  it('a request still arriving holds the HTTP server past the grace period: not "stopped", exit 1', async () => {
    const serve = await startServe(['--db', `sqlite:${join(directory, 'stop.db')}`]);
    const { port } = new URL(serve.url);
    // A client that sends its headers and never its body: the server has a request in flight.
    const client = connect(Number(port), '127.0.0.1');
    client.on('error', () => undefined);
    let answered = '';
    client.on('data', (chunk: Buffer) => {
      answered += chunk.toString();
    });
    try {
      client.write(
        'POST /v1/subscribers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n' +
          'content-length: 100\r\nexpect: 100-continue\r\n\r\n{',
      );
      await waitUntil('the server to read the request', () => answered.includes('100 Continue'), 10_000);
      await serve.stop();
      assert.equal(serve.child.exitCode, 1, serve.stderr());
      assert.match(serve.stderr(), /serve: did not stop cleanly: .*HTTP server: still closing after \d+ ms/);
      assert.doesNotMatch(serve.stderr(), /^stopped$/m);
    } finally {
      client.destroy();
      await serve.kill();
    }
  });
});
