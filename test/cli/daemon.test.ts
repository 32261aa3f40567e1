/**
 * `gatecast daemon --config gatecast.yaml` as an operator runs it, over loopback (no root): each
 * kind of mistake in the file is refused with exit 2 and one line naming the file, the line, the
 * role and the field, and nothing starts (no store is created); a file with several roles starts
 * them all, answers /ready for each, carries every role's series in /metrics, passes a ticker
 * through the repair server and the agent, and on SIGTERM exits 0 within 2 s.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runGatecast } from '../helpers/cli.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { namedSeries, parseMetrics, seriesValue } from '../helpers/prometheus.js';
import { freePort } from '../helpers/serve.js';
import { gatecastBin } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

const stopWithinMs = 2000;
const directory = mkdtempSync(join(tmpdir(), 'gatecast-daemon-'));
const secret = join(directory, 'secret');
writeFileSync(secret, 'a-control-secret-of-enough-bytes\n', { mode: 0o600 });
const servePort = await freePort();
const children = new Set<ChildProcess>();
after(() => {
  for (const child of children) {
    child.kill('SIGKILL');
  }
  rmSync(directory, { recursive: true, force: true });
});

/** Writes a config file and runs the daemon on it to its end. */
async function runConfig(name: string, yaml: string) {
  const path = join(directory, name);
  writeFileSync(path, yaml);
  return { path, result: await runGatecast(['daemon', '--config', path]) };
}

describe('gatecast daemon refuses a bad gatecast.yaml before starting anything', () => {
  const db = join(directory, 'never.db');
  const serve = `serve:\n  listen: 127.0.0.1:${servePort}\n  db: sqlite:${db}\n`;
  const control = `127.0.0.1:${freshPort()}`;
  const retransmit = (extra: string) =>
    `retransmit:\n  join: 239.255.71.1:5000\n  iface: 127.0.0.1\n  listen: ${control}\n  secret-file: ${secret}\n${extra}`;
  const cases: Array<[string, string, RegExp]> = [
    ['an unknown key', `${serve}  colour: blue\n`, /:4:3: serve: field "colour" is not an option/],
    [
      'a wrong type',
      `${serve}${retransmit('  buffer-age: [1, 2]\n')}`,
      /:9:3: retransmit: field "buffer-age" must be a string or a number/,
    ],
    [
      'a wrong type for a flag',
      `repair:\n  reliable: "yes"\n`,
      /:2:3: repair: field "reliable" must be true or false/,
    ],
    [
      'a bad address',
      `${serve}${retransmit('').replace(`listen: ${control}`, 'listen: 127.0.0.1:99999')}`,
      /:7:3: retransmit: --listen: port 99999 is out of range/,
    ],
    [
      'a group that is not multicast',
      `${serve}${retransmit('').replace('239.255.71.1', '10.0.0.1')}`,
      /:5:3: retransmit: --join: 10\.0\.0\.1 is not a multicast group/,
    ],
    [
      'a missing required setting',
      `${serve}${retransmit('').replace(/ {2}listen: .*\n/, '')}`,
      /:5:3: retransmit: --listen is required/,
    ],
    ['bad YAML syntax', `${serve}  listen: 127.0.0.1:1\n`, /:4:3: not valid YAML: Map keys must be unique/],
    ['an indentation error', 'serve:\n  listen: 127.0.0.1:0\n    db: x\n', /:2:11: not valid YAML/],
    [
      'an unknown role',
      `${serve}router:\n  listen: x\n`,
      /:4:1: "router" is not a role \(roles: serve, retransmit/,
    ],
    [
      'a bad daemon setting',
      `daemon:\n  log-format: xml\n${serve}`,
      /:2:3: daemon: field "log-format" must be one of text, json/,
    ],
    [
      'a socket buffer set per role',
      `${retransmit('  socket-buffer: 8M\n')}`,
      /:6:3: retransmit\[?0?\]?: field "socket-buffer": set it once under daemon:/,
    ],
    [
      'a bad entry in a list of roles',
      `${serve}retransmit:\n  - listen: ${control}\n    secret-file: ${secret}\n  - listen: nowhere\n    secret-file: ${secret}\n`,
      /:7:5: retransmit\[1\]: --listen: /,
    ],
    ['no role at all', 'daemon:\n  status: 127.0.0.1:9\n', /no role to run/],
    [
      'aliases that expand without bound',
      `${serve}x: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n${Array.from(
        { length: 8 },
        (_, i) =>
          `x${i}: &a${i} [${Array(10)
            .fill(i === 0 ? '*a' : `*a${i - 1}`)
            .join(', ')}]\n`,
      ).join('')}`,
      /: not valid YAML: Excessive alias count/,
    ],
    // Names that every JavaScript object carries are keys like any other: unknown, not a crash.
    ['a role named __proto__', `${serve}__proto__:\n  listen: x\n`, /:4:1: "__proto__" is not a role/],
    ['a role named constructor', `constructor:\n  x: 1\n${serve}`, /:1:1: "constructor" is not a role/],
    ['a role named toString', `${serve}toString: {}\n`, /:4:1: "toString" is not a role/],
    [
      'a setting named constructor',
      `${serve}  constructor: 1\n`,
      /:4:3: serve: field "constructor" is not an option/,
    ],
    [
      'a setting named __proto__',
      `${retransmit('  __proto__: {a: 1}\n')}`,
      /:6:3: retransmit: field "__proto__" is not an option/,
    ],
    [
      'a daemon setting named hasOwnProperty',
      `daemon:\n  hasOwnProperty: x\n${serve}`,
      /:2:3: daemon: field "hasOwnProperty" is not an option/,
    ],
  ];
  for (const [what, yaml, message] of cases) {
    it(`${what}: exit 2, one line naming the file, the line and the field`, async () => {
      const file = `${what.replaceAll(' ', '-')}.yaml`;
      const { path, result } = await runConfig(file, yaml);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, new RegExp(`^gatecast daemon: config ${path.replaceAll('.', '\\.')}`));
      assert.match(result.stderr, message);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
      assert.equal(existsSync(db), false, 'the store was created: the daemon started half-way');
    });
  }

  it('a role that cannot start stops the roles started before it and exits 2', async () => {
    const busy = createSocket('udp4');
    await new Promise<void>((resolve) => busy.bind(0, '127.0.0.1', resolve));
    try {
      const { result } = await runConfig(
        'busy.yaml',
        `${serve.replace('never.db', 'busy.db')}${retransmit('').replace(control, `127.0.0.1:${busy.address().port}`)}`,
      );
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /retransmit: .*EADDRINUSE.*the roles started before it are stopped/);
    } finally {
      busy.close();
    }
  });
});

describe('gatecast daemon runs several roles in one process', () => {
  it('serve, retransmit, repair and agent: /ready for each, /metrics, a ticker through, SIGTERM exits 0 within 2 s', async () => {
    const octet = 1 + (process.pid % 250);
    const s1 = `239.79.${octet}.1:${freshPort()}`;
    const s2 = `239.79.${octet}.2:${freshPort()}`;
    const delivered = `239.79.${octet}.3:${freshPort()}`;
    const retransmitControl = `127.0.0.1:${freshPort()}`;
    const status = `127.0.0.1:${await freePort()}`;
    const serveAddress = `127.0.0.1:${await freePort()}`;
    const path = join(directory, 'gatecast.yaml');
    writeFileSync(
      path,
      `# several roles on one host
daemon:
  status: ${status}
  log-format: json
serve:
  listen: ${serveAddress}
  db: sqlite:${join(directory, 'gatecast.db')}
  roles: subscription,billing,order
retransmit:
  - join: ${s1}
    iface: ${loopbackIface}
    listen: ${retransmitControl}
    secret-file: ${secret}
repair:
  join: ${s1}
  iface: ${loopbackIface}
  listen: 127.0.0.1:${freshPort()}
  emit: ${s2}
  latency: 300
  retransmit: ${retransmitControl}
  secret-file: ${secret}
agent:
  from: ${s2}
  from-iface: ${loopbackIface}
  deliver: ${delivered}
  deliver-iface: ${loopbackIface}
`,
    );
    const child = spawn(process.execPath, [gatecastBin(), 'daemon', '--config', path], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, GATECAST_OPERATOR_TOKEN: 'operator-token-of-the-daemon-test' },
    });
    children.add(child);
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let ready: { code: number; body: { checks?: Record<string, { ok: boolean }> } } | undefined;
    await waitUntil(
      `the daemon ready at ${status} (stderr: ${stderr})`,
      () => {
        void fetch(`http://${status}/ready`)
          .then(async (response) => {
            ready = { code: response.status, body: (await response.json()) as never };
          })
          .catch(() => undefined);
        return ready?.code === 200;
      },
      20_000,
    );
    assert.deepEqual(Object.keys(ready?.body.checks ?? {}).sort(), [
      'agent',
      'repair',
      'retransmit[0]',
      'serve',
    ]);
    assert.equal((await fetch(`http://${status}/health`)).status, 200);
    assert.equal(
      (await fetch(`http://${serveAddress}/ready`)).status,
      200,
      'the subscription server answers',
    );

    const send = spawn(
      process.execPath,
      [
        gatecastBin(),
        'send',
        '--group',
        s1,
        '--iface',
        loopbackIface,
        '--ticker',
        '--ticks-per-second',
        '100',
      ],
      { stdio: 'ignore' },
    );
    children.add(send);
    let roles: Record<string, Record<string, unknown>> = {};
    await waitUntil(
      'the ticker through the repair server and the agent',
      () => {
        void fetch(`http://${status}/status`)
          .then(async (response) => {
            roles = ((await response.json()) as { roles: typeof roles }).roles;
          })
          .catch(() => undefined);
        return Number(roles.repair?.packetsIn) > 20 && Number(roles.agent?.delivered) > 20;
      },
      20_000,
    );
    send.kill('SIGTERM');
    const metrics = parseMetrics(await (await fetch(`http://${status}/metrics`)).text());
    for (const name of namedSeries) {
      assert.ok(metrics.has(name), `${name} is missing from the daemon's /metrics`);
    }
    assert.ok((seriesValue(metrics, 'gatecast_packets_received_total', { role: 'repair' }) ?? 0) > 20);
    assert.equal(seriesValue(metrics, 'gatecast_sessions', { role: 'retransmit', state: 'listening' }), 1);

    const started = performance.now();
    child.kill('SIGTERM');
    const code = await exited;
    const ms = performance.now() - started;
    assert.equal(code, 0, stderr);
    assert.ok(ms < stopWithinMs, `SIGTERM to exit took ${Math.round(ms)} ms`);
    assert.match(stderr, /daemon: running serve, retransmit\[0\], repair, agent/);
    assert.match(stderr, /daemon: stopped \(SIGTERM\)/);
    const events = stderr
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.ok(
      events.some((event) => event.event === 'stop' && event.command === 'repair'),
      'the repair server logged its stop',
    );
  });
});
