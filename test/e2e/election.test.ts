import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  createTestbed,
  type HostProcess,
  retransmitAt,
  sendFrom,
  sleep,
  startRetransmit,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';

interface SessionStatus {
  state: string;
  lossPercent: number;
}

describe('election of retransmit servers on the namespace test bed', testbedSkip(), () => {
  let bed: Testbed;
  let directory: string;

  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-election-'));
    writeFileSync(join(directory, 'secret'), 'e2e operator secret for the election\n');
  });

  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  const sessionOf = (host: string): SessionStatus | undefined => {
    try {
      const status = JSON.parse(bed.control('status', host, 'http://127.0.0.1:9101/status')) as {
        sessions: SessionStatus[];
      };
      return status.sessions[0];
    } catch {
      return undefined;
    }
  };

  /** Polls a host's status until check() holds (bounded in time). */
  async function until(
    host: string,
    check: (s: SessionStatus) => boolean,
    timeoutMs: number,
  ): Promise<SessionStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: SessionStatus | undefined;
    while (Date.now() < deadline) {
      last = sessionOf(host);
      if (last !== undefined && check(last)) {
        return last;
      }
      await sleep(250);
    }
    throw new Error(`${host}: condition not reached in ${timeoutMs} ms; last status ${JSON.stringify(last)}`);
  }

  it('a server whose link loses 20 % withdraws (visible in its status) and comes back when the others stop', async () => {
    const s1 = '239.40.0.1:5300';
    const hosts = ['rt1', 'rt2', 'rt3'];
    bed.control('loss', 'rt3', '20', '5300');
    const servers: HostProcess[] = hosts.map((host) =>
      startRetransmit(bed, host, s1, join(directory, 'secret'), [
        '--peer',
        hosts
          .filter((other) => other !== host)
          .map(retransmitAt)
          .join(','),
        '--election-loss',
        '5',
        '--election-best',
        '2',
        '--period',
        '0.5',
        '--status',
        '127.0.0.1:9101',
      ]),
    );
    await Promise.all(servers.map((server) => server.waitFor(/listening on/)));
    const source = sendFrom(bed, s1, ['--ticker', '--ticks-per-second', '400', '--duration', '30']);
    const withdrawn = await until('rt3', (s) => s.state === 'withdrawn', 10_000);
    assert.ok(withdrawn.lossPercent > 5, `withdrew at ${withdrawn.lossPercent} % loss`);
    assert.equal(sessionOf('rt1')?.state, 'listening');
    assert.equal(sessionOf('rt2')?.state, 'listening');
    // It stays out while the others report.
    await sleep(2000);
    assert.equal(sessionOf('rt3')?.state, 'withdrawn');
    (servers[0] as HostProcess).child.kill('SIGKILL');
    (servers[1] as HostProcess).child.kill('SIGKILL');
    await until('rt3', (s) => s.state === 'listening', 10_000);
    source.child.kill('SIGTERM');
    await source.finished;
    (servers[2] as HostProcess).child.kill('SIGTERM');
    await (servers[2] as HostProcess).finished;
  });
});
