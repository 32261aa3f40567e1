import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { gatecastBin } from '../helpers/testbed.js';

describe('gatecast demo (what npm start runs)', () => {
  it('multicasts the file and the ticker whole, then repairs the file for an entitled subscriber and bills it', async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [gatecastBin(), 'demo', '--port', '47300', '--file-size', '700000', '--ticks', '10'],
      { timeout: 60_000 },
    );
    assert.match(stdout, /file {3}complete: .* SHA-256 ok/);
    assert.match(stdout, /ticker complete: 10 packets/);
    assert.match(stdout, /granted S2 239\.255\.77\.4:47303/);
    assert.match(stdout, /S2 {5}complete: .* SHA-256 ok; (\d+) S1 packets lost on purpose, \1 fetched back/);
    assert.match(stdout, /ledger alice charged [1-9]\d* EUR .* the ledger sums to 0/);
    assert.match(stdout, /demo ok/);
  });
});
