/**
 * Start-up benchmark: wall time from starting a gatecast command until it is ready. `gatecast
 * --help` until it exits; `gatecast retransmit`, `gatecast repair` and `gatecast serve` on loopback
 * until they print that they listen. Each runs the way it ships (bin/gatecast: the JavaScript
 * built into dist/ at install) and, as the baseline measured in the same run, the way it ran
 * before (the TypeScript sources compiled by tsx at start, bench/startup-from-source.ts), the two
 * ways alternating, after one unmeasured start of each (which also fills tsx's cache). Needs no
 * root: multicast on loopback. Writes docs/benchmarks.md.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/helpers/serve.js';
import { gatecastBin, repoRoot } from '../test/helpers/testbed.js';
import { writeSection } from './report.js';

const runs = Number(process.env.BENCH_STARTUP_RUNS ?? 10);
const targetMs = 300;
const runTimeoutMs = 30_000;
const directory = mkdtempSync(join(tmpdir(), 'gatecast-startup-'));
const secretFile = join(directory, 'secret');
writeFileSync(secretFile, 'a-secret-for-the-startup-benchmark\n');
const operatorToken = 'operator-token-for-the-startup-benchmark';

/** How a command is started: its arguments to node, in front of the command's own. */
const ways = {
  built: [gatecastBin()],
  source: ['--import', 'tsx', join(repoRoot, 'bench', 'startup-from-source.ts')],
} as const;
type Way = keyof typeof ways;

interface Case {
  label: string;
  /** The command's arguments; made fresh for every start (ports). */
  args(): Promise<string[]>;
  /** Ready when this appears on standard error; undefined: ready when the command exits. */
  ready: RegExp | undefined;
  /** Counts towards the target (serve is shown, but its start is not this work's target). */
  targeted: boolean;
}

/** A UDP port free on 127.0.0.1 right now. */
async function freeUdpPort(): Promise<number> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const { port } = socket.address();
  await new Promise<void>((resolve) => socket.close(resolve));
  return port;
}

const cases: Case[] = [
  { label: '`gatecast --help`', args: async () => ['--help'], ready: undefined, targeted: true },
  {
    label: '`gatecast retransmit` listening',
    args: async () => [
      'retransmit',
      ...['--join', `239.255.62.1:${await freeUdpPort()}`, '--iface', '127.0.0.1'],
      ...['--listen', `127.0.0.1:${await freeUdpPort()}`, '--secret-file', secretFile],
    ],
    ready: /retransmit: listening on/,
    targeted: true,
  },
  {
    label: '`gatecast repair --reliable` listening',
    args: async () => [
      'repair',
      ...['--join', `239.255.62.2:${await freeUdpPort()}`, '--iface', '127.0.0.1'],
      ...['--emit', `239.255.62.3:${await freeUdpPort()}`, '--reliable'],
      ...['--listen', `127.0.0.1:${await freeUdpPort()}`, '--retransmit', `127.0.0.1:${await freeUdpPort()}`],
      ...['--secret-file', secretFile],
    ],
    ready: /repair: .* listening on/,
    targeted: true,
  },
  {
    label: '`gatecast serve` (SQLite) listening',
    args: async () => [
      'serve',
      ...['--db', `sqlite:${join(directory, 'serve.db')}`, '--listen', `127.0.0.1:${await freePort()}`],
    ],
    ready: /serve: .* on http:\/\//,
    targeted: false,
  },
];

/** Starts the command once; resolves to the milliseconds until it was ready. */
async function startOnce(way: Way, args: string[], ready: RegExp | undefined): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, [...ways[way], ...args], {
    cwd: repoRoot, // where --import tsx finds tsx
    env: { ...process.env, GATECAST_OPERATOR_TOKEN: operatorToken },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  const closed = new Promise<number | null>((resolve) => child.once('close', resolve));
  const readyMs = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${args[0]} (${way}) not ready: ${stderr}`)),
      runTimeoutMs,
    );
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (ready?.test(stderr)) {
        clearTimeout(timer);
        resolve(performance.now() - started);
      }
    });
    void closed.then((code) => {
      clearTimeout(timer);
      if (ready === undefined && code === 0) {
        resolve(performance.now() - started);
      } else {
        reject(new Error(`${args[0]} (${way}) exited with ${code} before ready: ${stderr}`));
      }
    });
  });
  await stop(child, closed);
  return readyMs;
}

async function stop(child: ChildProcess, closed: Promise<unknown>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
  }
  await closed;
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] ?? 0)
    : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
};

/** Node itself starting and exiting, measured between the commands: the floor under each row. */
async function nodeAloneOnce(): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
  await new Promise((resolve) => child.once('close', resolve));
  return performance.now() - started;
}

interface Row {
  label: string;
  targeted: boolean;
  built: number[];
  source: number[];
  node: number[];
}

async function measure(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const entry of cases) {
    const row: Row = { label: entry.label, targeted: entry.targeted, built: [], source: [], node: [] };
    for (const way of ['built', 'source'] as const) {
      await startOnce(way, await entry.args(), entry.ready); // unmeasured: files cached, tsx's cache filled
    }
    for (let run = 0; run < runs; run += 1) {
      const order = run % 2 === 0 ? (['built', 'source'] as const) : (['source', 'built'] as const);
      for (const way of order) {
        row[way].push(await startOnce(way, await entry.args(), entry.ready));
      }
      row.node.push(await nodeAloneOnce());
    }
    console.log(
      `${entry.label}: built ${median(row.built).toFixed(0)} ms, tsx ${median(row.source).toFixed(0)} ms, node alone ${median(row.node).toFixed(0)} ms`,
    );
    rows.push(row);
  }
  return rows;
}

function report(rows: Row[], load: number): void {
  const ms = (value: number) => `${value.toFixed(0)} ms`;
  const spread = (values: number[]) => `${ms(Math.min(...values))} – ${ms(Math.max(...values))}`;
  const lines = rows.map(
    (r) =>
      `| ${r.label} | ${ms(median(r.built))} | ${spread(r.built)} | ${ms(median(r.source))} | ${spread(r.source)} | ${(median(r.source) / median(r.built)).toFixed(1)} × | ${ms(median(r.node))} | ${r.targeted ? (median(r.built) <= targetMs ? 'met' : 'not met') : '—'} |`,
  );
  const [help, ...servers] = rows;
  const roles = servers.filter((r) => r.targeted);
  const met = rows.filter((r) => r.targeted).every((r) => median(r.built) <= targetMs);
  const serve = rows.find((r) => !r.targeted);
  const nodeAll = rows.flatMap((r) => r.node);
  writeSection(
    'startup',
    `## Start-up: built at install against compiled at start

- Command: \`npm run bench\` (this part: \`node --import tsx bench/startup.ts\`, no root needed).
  ${runs} starts of each command each way, the two ways alternating, after one unmeasured start
  each (which also fills tsx's cache, so the baseline is tsx at its fastest).
- Time: from spawning the process until \`--help\` has exited, or until the server printed its
  listening line (retransmit and repair on loopback multicast, serve on an existing SQLite file).
- Built: \`bin/gatecast\`, which runs the JavaScript that \`npm run build\` (\`prepare\`, so
  \`npm ci\`) put in dist/. Baseline: the same code from the TypeScript sources through tsx
  (bench/startup-from-source.ts), the way bin/gatecast ran it before. Both load a command's
  modules only when it runs, so the ratio is what compiling at start costs; before that change
  bin/gatecast also loaded every command's modules (Fastify, the stores) for \`--help\`.
- Node alone: \`node -e 0\` from start to exit, once after each pair of starts in the row: what
  any command pays before it runs a line of gatecast on this machine at that moment.
- Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}, Linux ${release()}, Node ${process.version}; ${new Date().toISOString().slice(0, 10)};
  load average ${load.toFixed(1)} when it started (other work shares the cores: compare within the table).

| command | built: median | built: range | tsx: median | tsx: range | tsx ÷ built | Node alone: median | target ≤ ${targetMs} ms |
|---|---|---|---|---|---|---|---|
${lines.join('\n')}

**Result:** built, \`gatecast --help\` takes ${ms(median(help?.built ?? []))} and a repair-service role reaches "listening" in ${roles
      .map((r) => ms(median(r.built)))
      .join(
        ' / ',
      )} (retransmit / repair), with Node alone at ${ms(median(nodeAll))}: target ≤ ${targetMs} ms ${met ? 'met' : 'not met'}.${
      serve === undefined
        ? ''
        : ` \`gatecast serve\` takes ${ms(median(serve.built))}: loading Fastify, Kysely and the database drivers and building the HTTP app, not compiling, is what it waits for.`
    }`,
  );
}

try {
  const load = loadavg()[0] ?? 0;
  report(await measure(), load);
} finally {
  rmSync(directory, { recursive: true, force: true });
}
