import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runGatecast } from '../helpers/cli.js';
import { freePort, startServe } from '../helpers/serve.js';

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
