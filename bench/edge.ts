/**
 * The lossy-edge race, gatecast against uftp on the namespace test bed: a source in subnet A, one
 * or two retransmit servers in subnet B, and two edge hosts (rx1, rx2), each running a reliable
 * repair server and a receiver behind it. Every UDP datagram arriving at an edge host from another
 * host is lost at random (nftables: `fib saddr type != local numgen random mod 100 < N drop`), so
 * S1, NACK answers and (for uftp) its own traffic are lost alike; S2 stays on the host (loopback).
 * uftp runs uftpd on both edge hosts and uftp at the source, same rate cap, same loss.
 *
 * Measures per row: time until both receivers hold the whole file, goodput, how many copies are
 * intact (SHA-256 of the bytes written), and user+system CPU per role (from /proc/PID/stat for
 * servers, from bash's `times` for the commands that exit), with CPU per 1,000 packets.
 * Writes the "edge" section of docs/benchmarks.md. Needs root and uftp.
 *
 * Environment: BENCH_EDGE_MB (default 50; BENCH_EDGE_QUICK=1 makes it 10), BENCH_EDGE_CAPS
 * (Mbit/s, default "100,200"), BENCH_EDGE_LOSS (percent, default "0,10,20"), BENCH_EDGE_SERVERS
 * (retransmit servers, default "1,2"), BENCH_EDGE_SKIP_UFTP=1, BENCH_EDGE_LABEL (a name for the
 * CPU table, e.g. "before"), BENCH_EDGE_NO_WRITE=1 (print only), BENCH_EDGE_LAST_RESORT=1 (the source
 * also answers NACKs: `send --retransmit-listen`, announced to both repair servers).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';
import {
  createTestbed,
  gatecastBin,
  type HostProcess,
  hostAddress,
  retransmitAt,
  sha256,
  sleep,
  startRepair,
  startRetransmit,
  type Testbed,
  testbedUnavailable,
} from '../test/helpers/testbed.js';
import { cpuSeconds } from './cpu-profile.js';
import { writeSection } from './report.js';

const megabytes = Number(process.env.BENCH_EDGE_MB ?? (process.env.BENCH_EDGE_QUICK === '1' ? 10 : 50));
const fileBytes = Math.round(megabytes * 1_000_000);
const list = (text: string | undefined, fallback: number[]) =>
  text === undefined ? fallback : text.split(',').map(Number);
const caps = list(process.env.BENCH_EDGE_CAPS, [100, 200]);
const losses = list(process.env.BENCH_EDGE_LOSS, [0, 10, 20]);
const serverCounts = list(process.env.BENCH_EDGE_SERVERS, [1, 2]);
/** BENCH_EDGE_LAST_RESORT=1: the source keeps its session too (`send --retransmit-listen`). */
const lastResort = process.env.BENCH_EDGE_LAST_RESORT === '1';
/** BENCH_EDGE_VERBOSE=1: prints what send and receive said, and when each receiver was whole. */
const verbose = process.env.BENCH_EDGE_VERBOSE === '1';
const payloadBytes = 1400;
const packets = Math.ceil(fileBytes / payloadBytes);
const edgeHosts = ['rx1', 'rx2'] as const;
/** How long a process may take to say it is ready: start-up is slow on a loaded machine. */
const readyMs = 60_000;
/** Children's CPU from bash's `times` (its second line: children's user and system time). */
function childCpuSeconds(stderr: string): number | undefined {
  const match = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(stderr.trim());
  if (match === null) {
    return undefined;
  }
  return Number(match[1]) * 60 + Number(match[2]) + Number(match[3]) * 60 + Number(match[4]);
}

/** Runs a command on a host under bash, which prints the command's CPU (`times`) when it exits. */
function timed(bed: Testbed, host: string, command: string, args: string[]): HostProcess {
  return bed.spawn(host, 'bash', ['-c', '"$@"; code=$?; times >&2; exit $code', 'timed', command, ...args]);
}

/** Loses percent of the UDP datagrams that arrive at a host from other hosts. */
function edgeLoss(bed: Testbed, host: string, percent: number): void {
  const ns = bed.namespace(host);
  const nft = (...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, 'nft', ...args]);
  edgeClear(bed, host);
  nft('add', 'table', 'inet', 'gcedge');
  nft('add', 'chain', 'inet', 'gcedge', 'input', '{ type filter hook input priority 0; }');
  nft(
    'add',
    'rule',
    'inet',
    'gcedge',
    'input',
    ...'meta l4proto udp fib saddr type != local numgen random mod 100 <'.split(' '),
    String(percent),
    'counter',
    'drop',
  );
}

function edgeDropped(bed: Testbed, host: string): number {
  try {
    const text = execFileSync(
      'ip',
      ['netns', 'exec', bed.namespace(host), 'nft', 'list', 'table', 'inet', 'gcedge'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
    );
    return Number(/counter packets (\d+)/.exec(text)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function edgeClear(bed: Testbed, host: string): void {
  try {
    execFileSync('ip', ['netns', 'exec', bed.namespace(host), 'nft', 'delete', 'table', 'inet', 'gcedge'], {
      stdio: 'ignore',
    });
  } catch {
    // no table yet
  }
}

/** One measured run. */
interface Row {
  tool: string;
  capMbit: number;
  lossPercent: number;
  servers: number;
  /** Copies whose SHA-256 matched, of edgeHosts.length. */
  intact: number;
  /** From starting the sender until both copies were whole (undefined: not both whole). */
  seconds: number | undefined;
  dropped: number;
  cpu: Record<string, number | undefined>;
  notes: string;
}

let port = 7400;

/**
 * What the source's summary says of its pacing: how long sending the file took, and with an
 * adaptive rate, the lowest rate and the cuts. Empty when the sender did not end within the bound.
 */
function sourcePacing(sent: { stdout: string; stderr: string } | string): string[] {
  if (typeof sent === 'string') {
    return [];
  }
  try {
    // The summary is the JSON line (on stderr, before bash's `times`).
    const line = `${sent.stdout}\n${sent.stderr}`.split('\n').find((text) => text.startsWith('{'));
    const summary = JSON.parse(line ?? '') as {
      elapsedMs?: number;
      adaptiveRate?: {
        lowestBitsPerSecond: number;
        decreases: number;
        decreaseReasons: Record<string, number>;
      };
    };
    const adaptive = summary.adaptiveRate;
    return [
      `source paced the file in ${((summary.elapsedMs ?? 0) / 1000).toFixed(1)} s`,
      ...(adaptive === undefined
        ? []
        : [
            `rate cut ${adaptive.decreases} times, lowest ${(adaptive.lowestBitsPerSecond / 1e6).toFixed(1)} Mbit/s${
              adaptive.decreases > 0 ? ` (${JSON.stringify(adaptive.decreaseReasons).replace(/"/g, '')})` : ''
            }`,
          ]),
    ];
  } catch {
    return [];
  }
}

/** Ends a server with SIGTERM, after reading its CPU; returns the CPU since `from`. */
async function stopServer(server: HostProcess, from: number | undefined): Promise<number | undefined> {
  const at = cpuSeconds(server.child.pid);
  server.child.kill('SIGTERM');
  await server.finished;
  return at === undefined || from === undefined ? undefined : at - from;
}

async function runGatecast(
  bed: Testbed,
  directory: string,
  file: string,
  secret: string,
  capMbit: number,
  lossPercent: number,
  servers: number,
): Promise<Row> {
  port += 10;
  const s1 = `239.70.0.1:${port}`;
  const retransmitHosts = ['rt1', 'rt2'].slice(0, servers);
  const retransmits = retransmitHosts.map((host) =>
    startRetransmit(bed, host, s1, secret, ['--status', '127.0.0.1:9101']),
  );
  const repairs = edgeHosts.map((host, i) =>
    startRepair(bed, host, {
      s1,
      emit: `239.70.1.${i + 1}:${port + 1}`,
      secret,
      retransmit: retransmitHosts.map(retransmitAt),
      mode: ['--reliable', '--emit-iface', '127.0.0.1', '--status', '127.0.0.1:9100'],
    }),
  );
  const outputs = edgeHosts.map((host) => join(directory, `gatecast-${host}-${port}.bin`));
  const receivers = edgeHosts.map((host, i) =>
    timed(bed, host, process.execPath, [
      gatecastBin(),
      'receive',
      '--group',
      `239.70.1.${i + 1}:${port + 1}`,
      '--iface',
      '127.0.0.1',
      '--out',
      outputs[i] ?? '',
      '--json',
      '--timeout',
      '20',
    ]),
  );
  await Promise.all([
    ...retransmits.map((r) => r.waitFor(/listening on/, readyMs)),
    ...repairs.map((r) => r.waitFor(/listening on/, readyMs)),
    ...receivers.map((r) => r.waitFor(/joined/, readyMs)),
  ]);
  const serverCpuAtStart = [...retransmits, ...repairs].map((server) => cpuSeconds(server.child.pid));
  for (const host of edgeHosts) {
    if (lossPercent > 0) {
      edgeLoss(bed, host, lossPercent);
    }
  }
  const startedAtMs = performance.now();
  const sender = timed(bed, 'src', process.execPath, [
    gatecastBin(),
    'send',
    '--group',
    s1,
    '--iface',
    'eth0',
    '--file',
    file,
    '--rate',
    `${capMbit}M`,
    '--json',
    ...(lastResort
      ? [
          '--retransmit-listen',
          `${hostAddress.src}:${port + 2}`,
          '--secret-file',
          secret,
          '--announce-to',
          edgeHosts.map((host) => `${hostAddress[host]}:7100`).join(','),
          '--linger',
          '30',
        ]
      : []),
  ]);
  const finishedAtMs: number[] = [];
  const bound = sleep(((fileBytes * 8) / (capMbit * 1e6)) * 1000 * 6 + 30_000).then(() => 'timeout');
  const results = await Promise.all(
    receivers.map((receiver) =>
      Promise.race([
        receiver.finished.then((finished) => {
          finishedAtMs.push(performance.now());
          return finished;
        }),
        bound,
      ]),
    ),
  );
  const sent = await Promise.race([sender.finished, bound]);
  if (verbose) {
    const at = (ms: number | undefined) => (ms === undefined ? '-' : ((ms - startedAtMs) / 1000).toFixed(2));
    process.stderr.write(`receivers ended at ${finishedAtMs.map(at).join(', ')} s\n`);
    process.stderr.write(`send: ${sender.output()}\n`);
    for (const [i, receiver] of receivers.entries()) {
      process.stderr.write(`receive ${edgeHosts[i]}: ${receiver.output()}\n`);
    }
  }
  const dropped = edgeHosts.reduce((sum, host) => sum + edgeDropped(bed, host), 0);
  const statuses = edgeHosts.map((host) => {
    try {
      return JSON.parse(bed.control('status', host, 'http://127.0.0.1:9100/status')) as Record<
        string,
        unknown
      >;
    } catch {
      return {};
    }
  });
  const retransmitStatuses = retransmitHosts.map((host) => {
    try {
      return JSON.parse(bed.control('status', host, 'http://127.0.0.1:9101/status')) as Record<
        string,
        unknown
      >;
    } catch {
      return {};
    }
  });
  if (verbose) {
    process.stderr.write(
      `repair status: ${JSON.stringify(statuses)}\nretransmit status: ${JSON.stringify(retransmitStatuses)}\n`,
    );
  }
  for (const host of edgeHosts) {
    edgeClear(bed, host);
  }
  const serverCpu: Array<number | undefined> = [];
  for (const [i, server] of [...retransmits, ...repairs].entries()) {
    serverCpu.push(await stopServer(server, serverCpuAtStart[i]));
  }
  await bed.stopAll();
  const intact = outputs.filter(
    (output) => existsSync(output) && sha256(readFileSync(output)) === sha256(readFileSync(file)),
  ).length;
  for (const output of outputs) {
    rmSync(output, { force: true });
  }
  const sum = (values: Array<number | undefined>) =>
    values.some((v) => v === undefined) ? undefined : values.reduce<number>((a, b) => a + (b ?? 0), 0);
  const receiveCpu = results.map((r) => (typeof r === 'string' ? undefined : childCpuSeconds(r.stderr)));
  const each = (list: Array<Record<string, unknown>>, field: string) =>
    list.map((s) => String(s[field] ?? '?')).join(' + ');
  const notes = [
    `unrecoverable ${each(statuses, 'unrecoverable')}`,
    `not-held answers ${each(statuses, 'notHeldReceived')}`,
    `repair servers' S1 in ${each(statuses, 'packetsIn')}`,
    `retransmit S1 in ${each(retransmitStatuses, 'packetsIn')} of ${packets}`,
    ...sourcePacing(sent),
  ].join('; ');
  return {
    tool: 'gatecast',
    capMbit,
    lossPercent,
    servers,
    intact,
    seconds:
      intact === edgeHosts.length && finishedAtMs.length === edgeHosts.length
        ? (Math.max(...finishedAtMs) - startedAtMs) / 1000
        : undefined,
    dropped,
    cpu: {
      send: typeof sent === 'string' ? undefined : childCpuSeconds(sent.stderr),
      retransmit: sum(serverCpu.slice(0, retransmits.length)),
      repair: sum(serverCpu.slice(retransmits.length)),
      receive: sum(receiveCpu),
    },
    notes,
  };
}

async function runUftp(
  bed: Testbed,
  directory: string,
  file: string,
  capMbit: number,
  lossPercent: number,
): Promise<Row> {
  port += 10;
  const destinations = edgeHosts.map((host) => join(directory, `uftp-${host}-${port}`));
  const daemons = edgeHosts.map((host, i) => {
    mkdirSync(destinations[i] ?? '', { recursive: true });
    return bed.spawn(host, 'uftpd', [
      '-d',
      '-D',
      destinations[i] ?? '',
      '-M',
      '239.71.0.1',
      '-p',
      String(port),
      '-I',
      'eth0',
      '-B',
      '4194304',
      '-x',
      '0',
    ]);
  });
  // uftpd prints nothing when it is ready; wait until its socket is bound (ss in its namespace).
  for (const host of edgeHosts) {
    for (let i = 0; i < 100; i++) {
      const sockets = execFileSync('ip', ['netns', 'exec', bed.namespace(host), 'ss', '-uln'], {
        encoding: 'utf8',
      });
      if (sockets.includes(`:${port} `)) {
        break;
      }
      await sleep(50);
    }
  }
  const daemonCpuAtStart = daemons.map((daemon) => cpuSeconds(daemon.child.pid));
  for (const host of edgeHosts) {
    if (lossPercent > 0) {
      edgeLoss(bed, host, lossPercent);
    }
  }
  const startedAtMs = performance.now();
  const sender = timed(bed, 'src', 'uftp', [
    '-R',
    String(capMbit * 1000),
    '-M',
    '239.71.0.1',
    '-P',
    '239.71.0.2',
    '-p',
    String(port),
    '-I',
    'eth0',
    '-t',
    '16',
    '-Y',
    'none',
    '-B',
    '4194304',
    '-x',
    '0',
    file,
  ]);
  const bound = sleep(((fileBytes * 8) / (capMbit * 1e6)) * 1000 * 6 + 30_000).then(() => 'timeout');
  const sent = await Promise.race([sender.finished, bound]);
  const seconds = (performance.now() - startedAtMs) / 1000;
  const dropped = edgeHosts.reduce((sum, host) => sum + edgeDropped(bed, host), 0);
  for (const host of edgeHosts) {
    edgeClear(bed, host);
  }
  const name = file.split('/').pop() ?? '';
  const targets = destinations.map((destination) => join(destination, name));
  // uftpd may move the file into place just after the sender exits: poll, bounded.
  for (let i = 0; i < 50 && !targets.every((target) => existsSync(target)); i++) {
    await sleep(100);
  }
  const daemonCpu: Array<number | undefined> = [];
  for (const [i, daemon] of daemons.entries()) {
    daemonCpu.push(await stopServer(daemon, daemonCpuAtStart[i]));
  }
  await bed.stopAll();
  const want = sha256(readFileSync(file));
  const intact = targets.filter(
    (target) => existsSync(target) && sha256(readFileSync(target)) === want,
  ).length;
  for (const destination of destinations) {
    rmSync(destination, { recursive: true, force: true });
  }
  const exitCode = typeof sent === 'string' ? 'timed out' : `exit ${sent.code}`;
  return {
    tool: 'uftp',
    capMbit,
    lossPercent,
    servers: 0,
    intact,
    seconds: intact === edgeHosts.length && typeof sent !== 'string' && sent.code === 0 ? seconds : undefined,
    dropped,
    cpu: {
      send: typeof sent === 'string' ? undefined : childCpuSeconds(sent.stderr),
      receive: daemonCpu.some((c) => c === undefined)
        ? undefined
        : daemonCpu.reduce<number>((a, b) => a + (b ?? 0), 0),
    },
    notes: `uftp ${exitCode}`,
  };
}

const goodput = (row: Row) => (row.seconds === undefined ? undefined : (fileBytes * 8) / row.seconds / 1e6);
const fixed = (value: number | undefined, digits = 1) => (value === undefined ? '-' : value.toFixed(digits));
const perThousand = (seconds: number | undefined, copies: number) =>
  seconds === undefined ? '-' : ((seconds * 1000) / copies / (packets / 1000)).toFixed(2);

function formatRow(row: Row): string {
  const cpu = (role: string) => fixed(row.cpu[role], 2);
  const tool =
    row.tool === 'gatecast'
      ? `gatecast, ${row.servers} retransmit${lastResort ? ' + source of last resort' : ''}`
      : 'uftp';
  return `| ${row.capMbit} | ${row.lossPercent} % | ${tool} | ${row.intact} of 2 | ${fixed(row.seconds, 2)} | ${fixed(goodput(row))} | ${row.dropped} | ${cpu('send')} | ${cpu('retransmit')} | ${cpu('repair')} | ${cpu('receive')} | ${row.notes} |`;
}

/** CPU per 1,000 packets per role (per process: servers and receivers are summed, then divided). */
function cpuRows(rows: Row[]): string[] {
  return rows
    .filter((row) => row.tool === 'gatecast' && row.capMbit === 100)
    .map(
      (row) =>
        `| ${row.lossPercent} % | ${row.servers} | ${perThousand(row.cpu.send, 1)} | ${perThousand(row.cpu.retransmit, row.servers)} | ${perThousand(row.cpu.repair, 2)} | ${perThousand(row.cpu.receive, 2)} |`,
    );
}

function verdicts(rows: Row[]): string[] {
  const lines: string[] = [];
  const gatecast = rows.filter((row) => row.tool === 'gatecast');
  const notIntact = rows.filter((row) => row.intact !== 2);
  lines.push(
    notIntact.length === 0
      ? '- Intact at every row: met (both copies hashed equal to the file in every run).'
      : `- Intact at every row: MISSED in ${notIntact.length} run(s): ${notIntact.map((r) => `${r.tool} ${r.capMbit} Mbit/s ${r.lossPercent} %${r.tool === 'gatecast' ? ` ${r.servers} retransmit` : ''} (${r.intact} of 2)`).join('; ')}.`,
  );
  for (const cap of caps) {
    const uftp10 = rows.find((r) => r.tool === 'uftp' && r.capMbit === cap && r.lossPercent === 10);
    for (const servers of serverCounts) {
      const at = (loss: number) =>
        gatecast.find((r) => r.capMbit === cap && r.lossPercent === loss && r.servers === servers);
      const free = at(0);
      const ten = at(10);
      const twenty = at(20);
      if (ten !== undefined && uftp10 !== undefined) {
        const g = goodput(ten);
        const u = goodput(uftp10);
        lines.push(
          `- ${cap} Mbit/s, ${servers} retransmit, 10 % loss: gatecast ${fixed(g)} Mbit/s against uftp ${fixed(u)}: ${g !== undefined && (u === undefined || g >= u) ? 'met' : 'MISSED'}.`,
        );
      }
      if (free !== undefined && twenty !== undefined) {
        const f = goodput(free);
        const t = goodput(twenty);
        const share = f === undefined || t === undefined ? undefined : (100 * t) / f;
        lines.push(
          `- ${cap} Mbit/s, ${servers} retransmit, 20 % loss: ${fixed(t)} Mbit/s, ${fixed(share, 0)} % of the loss-free ${fixed(f)}: ${share !== undefined && share >= 85 ? 'met' : 'MISSED'}.`,
        );
      }
    }
  }
  return lines;
}

/** Runs one row; a row that fails to run is reported as such (with why), and the run goes on. */
async function measured(
  bed: Testbed,
  row: Pick<Row, 'tool' | 'capMbit' | 'lossPercent' | 'servers'>,
  run: () => Promise<Row>,
): Promise<Row> {
  try {
    return await run();
  } catch (error) {
    await bed.stopAll();
    for (const host of edgeHosts) {
      edgeClear(bed, host);
    }
    return {
      ...row,
      intact: 0,
      seconds: undefined,
      dropped: 0,
      cpu: {},
      notes: `NOT RUN: ${(error as Error).message.split('\n')[0]?.slice(0, 120)}`,
    };
  }
}

async function main(): Promise<void> {
  const unavailable = testbedUnavailable(['uftp', 'uftpd', 'ss']);
  if (unavailable !== undefined) {
    console.error(`bench edge: cannot run: ${unavailable}`);
    process.exit(2);
  }
  const load = loadavg()[0] ?? 0;
  const startedAt = new Date().toISOString();
  const bed = createTestbed();
  const directory = mkdtempSync('/dev/shm/gatecast-bench-edge-');
  const rows: Row[] = [];
  try {
    const file = join(directory, 'payload.bin');
    writeFileSync(file, randomBytes(fileBytes));
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'benchmark operator secret, local only\n');
    for (const cap of caps) {
      for (const loss of losses) {
        for (const servers of serverCounts) {
          rows.push(
            await measured(bed, { tool: 'gatecast', capMbit: cap, lossPercent: loss, servers }, () =>
              runGatecast(bed, directory, file, secret, cap, loss, servers),
            ),
          );
          console.error(formatRow(rows.at(-1) as Row));
        }
        if (process.env.BENCH_EDGE_SKIP_UFTP !== '1') {
          rows.push(
            await measured(bed, { tool: 'uftp', capMbit: cap, lossPercent: loss, servers: 0 }, () =>
              runUftp(bed, directory, file, cap, loss),
            ),
          );
          console.error(formatRow(rows.at(-1) as Row));
        }
      }
    }
  } finally {
    bed.down();
    rmSync(directory, { recursive: true, force: true });
  }
  const loadAfter = loadavg()[0] ?? 0;
  const label = process.env.BENCH_EDGE_LABEL ?? 'this run';
  const text = `## The lossy edge: two receivers behind their own repair servers, against uftp

- Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}, Linux ${release()}, Node ${process.version}; ${startedAt.slice(0, 16)} UTC;
  load average ${load.toFixed(1)} when the run began, ${loadAfter.toFixed(1)} when it ended (a shared machine).
- Command: \`npm run bench:edge\` (bench/edge.ts; also part of \`npm run bench\`). Quick run:
  \`BENCH_EDGE_QUICK=1 npm run bench:edge\` (10 MB). Other knobs: BENCH_EDGE_CAPS, BENCH_EDGE_LOSS,
  BENCH_EDGE_SERVERS, BENCH_EDGE_SKIP_UFTP, BENCH_EDGE_LAST_RESORT, BENCH_EDGE_VERBOSE.${
    lastResort
      ? `
- This run: BENCH_EDGE_LAST_RESORT=1, the source is also the retransmit server of last resort
  (\`send … --retransmit-listen SRC:PORT --secret-file … --announce-to rx1:7100,rx2:7100 --linger 30\`),
  and with it a file's rate adapts to the repair servers' FEEDBACK (on by default).`
      : ''
  }
- Test bed: the source in subnet A, the router (smcrouted), one or two retransmit servers (rt1, rt2) in
  subnet B, and two edge hosts (rx1, rx2) each running \`gatecast repair --reliable\` and
  \`gatecast receive\` on the S2 it emits on the host's loopback. Every UDP datagram arriving at an edge
  host from another host is dropped at random (nftables on the input hook,
  \`fib saddr type != local numgen random mod 100 < N drop\`): S1, REPAIR answers and not-held
  answers alike. uftp: \`uftpd\` on both edge hosts, \`uftp -R <cap>\` at the source, the same
  loss rule, no encryption (\`-Y none\`), 4 MiB buffers.
- A ${megabytes} MB file (${packets} packets of ${payloadBytes} bytes); "time" runs from starting the sender
  command until both receivers hold the whole file (gatecast: both \`receive\` exited whole; uftp: the
  sender exited 0 after both receivers confirmed); goodput = file size / time. Intact: copies whose
  SHA-256 equals the file's. Dropped: datagrams the loss rules dropped at both edge hosts.
- CPU: user + system seconds. send and receive: the whole process (bash's \`times\`, including
  start-up and, for send, hashing the file); retransmit, repair and uftpd: from "listening" to the
  end of the run (/proc/PID/stat), summed over the servers of the role.

| cap (Mbit/s) | loss | tool | intact | time (s) | goodput (Mbit/s) | dropped | CPU send (s) | CPU retransmit (s) | CPU repair (s) | CPU receive (s) | notes |
|---|---|---|---|---|---|---|---|---|---|---|---|
${rows.map(formatRow).join('\n')}

CPU per 1,000 packets per process of the role at 100 Mbit/s (ms; ${label}):

| loss | retransmit servers | send | retransmit | repair | receive |
|---|---|---|---|---|---|
${cpuRows(rows).join('\n')}

**Against the targets:**
${verdicts(rows).join('\n')}
`;
  console.error(text);
  if (process.env.BENCH_EDGE_NO_WRITE !== '1') {
    writeSection('edge', text);
    console.error('wrote the edge section of docs/benchmarks.md');
  }
}

await main();
