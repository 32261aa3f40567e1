import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readToken } from '../../src/cli/token.js';
import { readSecretFile } from '../../src/crypto/control-auth.js';
import { FileRefused, readBoundedFile } from '../../src/net/files.js';
import { openUsageJournal } from '../../src/repair/usage-journal.js';

describe('files the program reads are regular files of bounded size, checked before reading', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-files-'));
  after(() => rmSync(directory, { recursive: true, force: true }));
  const fifo = join(directory, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const large = join(directory, 'large');
  writeFileSync(large, Buffer.alloc(70 * 1024, 97));

  it('a FIFO, /dev/zero, /dev/stdin, /proc/kmsg and a directory are refused at once; a large file by its size', () => {
    const started = Date.now();
    for (const path of [fifo, '/dev/zero', '/dev/stdin', '/proc/kmsg', directory]) {
      assert.throws(
        () => readBoundedFile(path, 1024),
        (error: Error) =>
          error instanceof FileRefused && /not a regular file|cannot read/.test(error.message),
        path,
      );
    }
    assert.throws(() => readBoundedFile(large, 1024), /holds 71680 bytes, more than the 1024 allowed/);
    assert.ok(Date.now() - started < 1_000, 'nothing blocked');
    assert.equal(readBoundedFile(large, 80 * 1024).length, 70 * 1024);
  });

  it('--journal on a FIFO or /dev/zero, a secret or a token file that is a device: a coded error, no hang', () => {
    for (const path of [fifo, '/dev/zero']) {
      assert.throws(() => openUsageJournal(path), /not a regular file/);
      assert.throws(
        () => readSecretFile(path),
        (error: Error & { code?: string }) =>
          error.code === 'GATECAST_ERR_SECRET' && /not a regular file/.test(error.message),
      );
      assert.throws(
        () => readToken(path),
        (error: Error & { code?: string }) =>
          error.code === 'GATECAST_ERR_USAGE' && /--token-file: .* not a regular file/.test(error.message),
      );
    }
    assert.throws(() => readSecretFile(large), /more than the 65536 allowed/);
  });

  it('the journal, which holds what subscribers owe, is created 0600', () => {
    const path = join(directory, 'usage.journal');
    openUsageJournal(path).close();
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });
});
