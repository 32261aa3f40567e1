import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runGatecast } from '../helpers/cli.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-s2-key-file-'));
after(() => rmSync(directory, { recursive: true, force: true }));

describe('--s2-key-file: a sealed S2 by hand, and where it does not belong', () => {
  const secret = join(directory, 'secret');
  writeFileSync(secret, 'cli test secret for control messages\n');
  const repair = (extra: string[]) =>
    runGatecast([
      'repair',
      '--join',
      '239.255.96.1:5000',
      '--iface',
      '127.0.0.1',
      '--listen',
      '127.0.0.1:0',
      '--secret-file',
      secret,
      '--emit',
      '239.255.96.2:5001',
      '--reliable',
      ...extra,
    ]);

  it('a key file that is missing or not EPOCH:KEY is a usage error naming the option; nothing starts', async () => {
    const bad = join(directory, 'bad.key');
    writeFileSync(bad, '1:not-hex\n');
    for (const [file, message] of [
      [join(directory, 'missing.key'), /--s2-key-file: cannot read .*missing\.key: ENOENT/],
      [bad, /--s2-key-file: .*bad\.key does not hold EPOCH:KEY with KEY 64 hex digits/],
    ] as const) {
      const result = await repair(['--s2-key-file', file]);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, message);
      assert.doesNotMatch(result.stderr, /listening on/);
    }
  });

  it('the controller makes its own keys, and a controller’s agent gets them in the grant: both refuse a key file', async () => {
    const key = join(directory, 'good.key');
    writeFileSync(key, `2:${'ab'.repeat(32)}\n`);
    const controller = await runGatecast([
      'repair',
      '--controller',
      '127.0.0.1:0',
      '--subscription',
      'http://127.0.0.1:1',
      '--s2-pool',
      '239.255.96.8:5008',
      '--listen',
      '127.0.0.1:0',
      '--secret-file',
      secret,
      '--reliable',
      '--s2-key-file',
      key,
    ]);
    assert.equal(controller.code, 2, controller.stderr);
    assert.match(controller.stderr, /--s2-key-file: not with --controller/);
    const agent = await runGatecast([
      'agent',
      '--watch',
      '--controller',
      'http://127.0.0.1:1',
      '--sessions',
      '239.255.96.1:5000',
      '--s2-key-file',
      key,
    ]);
    assert.equal(agent.code, 2, agent.stderr);
    assert.match(agent.stderr, /--s2-key-file: with --map only/);
  });
});
