/**
 * Every long-running command as an operator runs it, over loopback multicast (no root): a ticker
 * source, a retransmit server, a repair server, an agent, a receiver and the subscription server.
 * Each daemon answers GET /health and /ready, serves /metrics that parse as Prometheus text with
 * the named series, and on SIGTERM leaves its groups and exits 0 within 2 s.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { namedSeries, parseMetrics, seriesValue } from '../helpers/prometheus.js';
import { freePort } from '../helpers/serve.js';
import { gatecastBin } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

const stopWithinMs = 2000;

interface Running {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  stderr(): string;
}

const running = new Set<Running>();

function start(name: string, args: string[], env: Record<string, string> = {}): Running {
  const child = spawn(process.execPath, [gatecastBin(), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const entry = { name, child, exited, stderr: () => stderr };
  running.add(entry);
  void exited.then(() => running.delete(entry));
  return entry;
}

async function getJson(url: string): Promise<{ code: number; body: Record<string, unknown> }> {
  const response = await fetch(url);
  return { code: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** Waits until the daemon answers /ready with 200 (bounded). */
async function ready(entry: Running, base: string): Promise<void> {
  let answered = false;
  await waitUntil(
    `${entry.name} ready at ${base}/ready (stderr: ${entry.stderr()})`,
    () => {
      void fetch(`${base}/ready`)
        .then((response) => {
          answered ||= response.status === 200;
        })
        .catch(() => undefined);
      return answered;
    },
    20_000,
  );
}

/** SIGTERM, then the time until the process exited and its code. */
async function terminate(entry: Running): Promise<{ ms: number; code: number | null }> {
  const started = performance.now();
  entry.child.kill('SIGTERM');
  const code = await entry.exited;
  return { ms: performance.now() - started, code };
}

describe('daemons: health, readiness, metrics and SIGTERM', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-lifecycle-'));
  after(async () => {
    for (const entry of running) {
      entry.child.kill('SIGKILL');
      await entry.exited;
    }
    rmSync(directory, { recursive: true, force: true });
  });

  it('send --ticker, retransmit, repair, agent, receive and serve', async () => {
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'a-control-secret-of-enough-bytes\n', { mode: 0o600 });
    const octet = 1 + (process.pid % 250);
    const s1 = `239.78.${octet}.1:${freshPort()}`;
    const s2 = `239.78.${octet}.2:${freshPort()}`;
    const delivered = `239.78.${octet}.3:${freshPort()}`;
    const retransmitControl = `127.0.0.1:${freshPort()}`;
    const status = {
      retransmit: `127.0.0.1:${await freePort()}`,
      repair: `127.0.0.1:${await freePort()}`,
      agent: `127.0.0.1:${await freePort()}`,
      serve: `127.0.0.1:${await freePort()}`,
    };
    const iface = ['--iface', loopbackIface];
    const daemonArgs = ['--secret-file', secret];
    const retransmit = start('retransmit', [
      'retransmit',
      '--join',
      s1,
      ...iface,
      '--listen',
      retransmitControl,
      ...daemonArgs,
      '--status',
      status.retransmit,
    ]);
    const repair = start('repair', [
      'repair',
      '--join',
      s1,
      ...iface,
      '--listen',
      `127.0.0.1:${freshPort()}`,
      '--emit',
      s2,
      '--latency',
      '300',
      '--log-format',
      'json',
      '--retransmit',
      retransmitControl,
      ...daemonArgs,
      '--status',
      status.repair,
    ]);
    const agent = start('agent', [
      'agent',
      '--from',
      s2,
      '--from-iface',
      loopbackIface,
      '--deliver',
      delivered,
      '--deliver-iface',
      loopbackIface,
      '--status',
      status.agent,
    ]);
    const serve = start(
      'serve',
      ['serve', '--listen', status.serve, '--db', `sqlite:${join(directory, 'db')}`, '--log-format', 'json'],
      {
        GATECAST_OPERATOR_TOKEN: 'operator-token-of-the-lifecycle-test',
      },
    );
    for (const [entry, address] of [
      [retransmit, status.retransmit],
      [repair, status.repair],
      [agent, status.agent],
      [serve, status.serve],
    ] as const) {
      await ready(entry, `http://${address}`);
      const health = await getJson(`http://${address}/health`);
      assert.equal(health.code, 200, `${entry.name} /health`);
      assert.equal(health.body.status, 'ok');
      const metrics = parseMetrics(await (await fetch(`http://${address}/metrics`)).text());
      for (const name of namedSeries) {
        assert.ok(metrics.has(name), `${entry.name}: ${name} is missing from /metrics`);
      }
    }
    const receive = start('receive', ['receive', '--group', s2, ...iface, '--out', join(directory, 'out')]);
    const send = start('send', ['send', '--group', s1, ...iface, '--ticker', '--ticks-per-second', '100']);

    // The session flows through the repair server and the agent before anything stops.
    let repairIn = 0;
    let agentDelivered = 0;
    await waitUntil(
      'the ticker through repair and agent',
      () => {
        void getJson(`http://${status.repair}/status`).then((r) => {
          repairIn = Number(r.body.packetsIn);
        });
        void getJson(`http://${status.agent}/status`).then((r) => {
          agentDelivered = Number(r.body.delivered);
        });
        return repairIn > 20 && agentDelivered > 20;
      },
      20_000,
    );
    const repairMetrics = parseMetrics(await (await fetch(`http://${status.repair}/metrics`)).text());
    assert.ok((seriesValue(repairMetrics, 'gatecast_packets_received_total', { role: 'repair' }) ?? 0) > 20);
    const retransmitMetrics = parseMetrics(await (await fetch(`http://${status.retransmit}/metrics`)).text());
    assert.equal(
      seriesValue(retransmitMetrics, 'gatecast_sessions', { role: 'retransmit', state: 'listening' }),
      1,
    );

    // Structured logs: the repair server's session start, the subscription server's charge.
    const events = (entry: Running) =>
      entry
        .stderr()
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>);
    await waitUntil(
      'the repair server logs the session start',
      () => events(repair).some((e) => e.event === 'session-start'),
      10_000,
    );
    const operatorHeaders = {
      authorization: 'Bearer operator-token-of-the-lifecycle-test',
      'content-type': 'application/json',
    };
    const subscriber = (await (
      await fetch(`http://${status.serve}/v1/subscribers`, {
        method: 'POST',
        headers: operatorHeaders,
        body: JSON.stringify({ name: 'carol' }),
      })
    ).json()) as { id: string };
    const usage = await fetch(`http://${status.serve}/v1/usage`, {
      method: 'POST',
      headers: { ...operatorHeaders, 'idempotency-key': 'lifecycle-charge-1' },
      body: JSON.stringify({ account: subscriber.id, kind: 'repair-bytes', quantity: 2_000_000_000 }),
    });
    const charge = (await usage.json()) as { amount: number; transfer: string };
    assert.equal(usage.status, 201);
    await waitUntil(
      'the subscription server logs the charge',
      () => events(serve).some((e) => e.event === 'charge'),
      10_000,
    );
    const logged = events(serve).find((e) => e.event === 'charge');
    assert.equal(logged?.amount, charge.amount);
    assert.equal(logged?.transfer, charge.transfer);
    assert.equal(logged?.debit, subscriber.id);

    // receive is stopped mid-session: it stops within the bound and, the session not being
    // whole, says so and exits 1 (never 0 for a cut session). On a loaded host it may not have
    // locked the session yet: wait until it wrote some of it.
    const out = join(directory, 'out');
    await waitUntil('receive writes the session', () => existsSync(out) && statSync(out).size > 0, 20_000);
    const received = await terminate(receive);
    assert.ok(received.ms < stopWithinMs, `receive took ${received.ms.toFixed(0)} ms to stop`);
    assert.equal(received.code, 1, receive.stderr());
    assert.match(receive.stderr(), /stopped session/);

    for (const entry of [send, agent, repair, retransmit, serve]) {
      const stopped = await terminate(entry);
      assert.ok(stopped.ms < stopWithinMs, `${entry.name} took ${stopped.ms.toFixed(0)} ms to stop`);
      assert.equal(stopped.code, 0, `${entry.name} exit code: ${entry.stderr()}`);
    }
    for (const entry of [agent, repair, retransmit, serve]) {
      assert.match(entry.stderr(), /stopped\n$/, `${entry.name} did not close cleanly: ${entry.stderr()}`);
    }
    assert.match(send.stderr(), /sent/, send.stderr());
  });
});
