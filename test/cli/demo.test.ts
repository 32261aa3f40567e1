import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { gatecastBin } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

describe('gatecast demo (what npm start runs)', () => {
  it('multicasts the file and the ticker whole, repairs the file for an entitled subscriber, hands it to her application through her agent and bills it, decodes a restricted channel paid from a purse, relays an ordered channel', async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [gatecastBin(), 'demo', '--port', '47300', '--file-size', '700000', '--ticks', '10'],
      { timeout: 120_000 },
    );
    assert.match(stdout, /console http:\/\/127\.0\.0\.1:\d+\/console\//);
    assert.match(stdout, /file {3}complete: .* SHA-256 ok/);
    assert.match(stdout, /ticker complete: 10 packets/);
    assert.match(stdout, /granted S2 239\.255\.77\.4:47303/);
    // The repaired copy reaches the application through alice's agent, whole, each lost packet fetched back.
    assert.match(
      stdout,
      /alice's agent saw the application join 239\.255\.77\.8:47307, asked the controller for 239\.255\.77\.3:47302: granted S2 239\.255\.77\.4:47303 \(sealed, key epoch \d+\)/,
    );
    assert.match(
      stdout,
      /app {4}complete: 500 datagrams, 700\.0 kB from the agent on 239\.255\.77\.8:47307, SHA-256 ok; (\d+) S1 packets lost on purpose, \1 fetched back; the agent delivered 500, 0 gaps/,
    );
    assert.match(stdout, /ledger alice charged [1-9]\d* EUR .* the ledger sums to 0/);
    // The restricted channel: decoded whole by the token, nothing by a stranger, every debit charged.
    assert.match(stdout, /news {3}complete: .* SHA-256 ok \(bob's token decoded it\)/);
    assert.match(stdout, /stranger without a token: 0 B decoded, [1-9]\d* encrypted packets not decoded/);
    const purse =
      /bob's purse debited (\d+) EUR cents for (\d+) crypto-periods; billing charged (\d+) receipts \((\d+) EUR cents, purse balance (\d+)\); the ledger sums to 0/.exec(
        stdout,
      );
    assert.ok(purse, stdout);
    const [, debited, periods, charged, billed, balance] = purse.map(Number);
    assert.ok((periods ?? 0) >= 1);
    assert.equal(debited, 5 * (periods ?? 0));
    assert.equal(charged, periods);
    assert.equal(billed, debited);
    assert.equal(balance, 200 - (debited ?? 0));
    // The ordered channel: routed on the order, arrived through the relay, unrouted on the cancel.
    assert.match(
      stdout,
      /carol's box ordered sports: the order server relays \*,239\.255\.77\.6>239\.255\.77\.7:47306/,
    );
    assert.match(stdout, /sports complete: 10 packets, .* 0 missing \(through the relay link\)/);
    assert.match(stdout, /carol cancelled: route \*,239\.255\.77\.6>239\.255\.77\.7:47306 removed/);
    // The summary table.
    assert.match(stdout, /summary\n +session +loss before repair +after +bytes decoded +charged/);
    assert.match(
      stdout,
      /file via repair\+agent +5\.00 % \(\d+\) +0 missing, 0 given up +700\.0 kB \(app\) +alice [1-9]/,
    );
    assert.match(stdout, /news \(restricted\) +- +0 missing +700\.0 kB \(stranger 0 B\)/);
    assert.match(stdout, /sports \(ordered\) +- +0 missing/);
    assert.match(stdout, /demo ok/);
  });

  it('keeps the console up for --duration and stops at Ctrl-C with exit 0 once the summary is out', async () => {
    const child = spawn(
      process.execPath,
      [
        gatecastBin(),
        'demo',
        '--port',
        '47320',
        '--file-size',
        '200000',
        '--ticks',
        '5',
        '--duration',
        '600',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await waitUntil(`the demo's summary (${stdout})`, () => /the console stays up/.test(stdout), 120_000);
      const url = /console (http:\/\/127\.0\.0\.1:\d+)\/console\//.exec(stdout)?.[1];
      assert.ok(url, stdout);
      assert.equal((await fetch(`${url}/health`)).status, 200, 'the console answers during --duration');
      child.kill('SIGINT');
      assert.equal(await exited, 0, stdout);
      assert.match(stdout, /demo ok[\s\S]*demo stopped\n$/);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
