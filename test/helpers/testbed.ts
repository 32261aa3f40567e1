/**
 * The namespace test bed from the tests' side: builds it with scripts/testbed.sh, runs gatecast and
 * outside programs on its hosts, and always tears it down (also when a test fails or the process
 * exits). Tests that need it skip with the reason when they cannot run, and fail instead when
 * GATECAST_REQUIRE_NETNS=1 (set by .ci/run).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const script = join(repoRoot, 'scripts', 'testbed.sh');
const gatecastPath = join(repoRoot, 'bin', 'gatecast');
let buildChecked = false;

/**
 * bin/gatecast, once dist/ (what it runs) is known to be built from the sources as they are now.
 * scripts/test.sh builds before the tests; a test file run on its own must not quietly test an
 * older build, so this throws, naming a source newer than its output, until `npm run build` runs.
 */
export function gatecastBin(): string {
  if (!buildChecked) {
    const stale = staleSource();
    if (stale !== undefined) {
      throw new Error(`dist/ is not built from src/${stale} as it is now: run npm run build`);
    }
    buildChecked = true;
  }
  return gatecastPath;
}

/** A source (relative to src/) whose compiled file in dist/ is missing or older, if any. */
function staleSource(): string | undefined {
  const sources = readdirSync(join(repoRoot, 'src'), { recursive: true, encoding: 'utf8' });
  for (const source of sources.filter((name) => name.endsWith('.ts')).sort()) {
    const output = join(repoRoot, 'dist', source.replace(/\.ts$/, '.js'));
    if (!existsSync(output) || statSync(output).mtimeMs < statSync(join(repoRoot, 'src', source)).mtimeMs) {
      return source;
    }
  }
  return undefined;
}

/**
 * Why this kernel cannot route multicast, or undefined when it can: smcrouted needs the kernel's
 * multicast routing (CONFIG_IP_MROUTE, CONFIG_IPV6_MROUTE), whose tables show in /proc/net of every
 * namespace. Without it smcrouted starts but refuses every route. The test bed's router then
 * forwards with nftables instead (scripts/testbed.sh), so only tests of smcrouted itself need it.
 */
export function multicastRoutingUnavailable(): string | undefined {
  for (const [file, option] of [
    ['/proc/net/ip_mr_vif', 'CONFIG_IP_MROUTE'],
    ['/proc/net/ip6_mr_vif', 'CONFIG_IPV6_MROUTE'],
  ] as const) {
    if (!existsSync(file)) {
      return `smcrouted cannot route here: the kernel cannot route multicast (${file} is missing: built without ${option})`;
    }
  }
  return undefined;
}

/** What a use of the bed needs beyond namespaces and nftables. */
export interface TestbedNeeds {
  /**
   * A real smcrouted that routes (its tests, and the order server's smcroute links): needs the
   * kernel's multicast routing. The bed's own router forwards either way.
   */
  readonly smcroute?: boolean;
}

/** Why the test bed cannot run here, or undefined when it can. */
export function testbedUnavailable(
  extraCommands: string[] = [],
  needs: TestbedNeeds = {},
): string | undefined {
  if (process.getuid?.() !== 0) {
    return 'needs root to create network namespaces (run as root, or in CI)';
  }
  const commands = [
    'ip',
    'nft',
    'tc',
    ...(needs.smcroute === true ? ['smcrouted', 'smcroutectl'] : []),
    ...extraCommands,
  ];
  for (const command of commands) {
    const found = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].some((dir) => existsSync(join(dir, command)));
    if (!found) {
      return `needs the command ${command} (Debian packages: iproute2 nftables smcroute socat ffmpeg)`;
    }
  }
  return needs.smcroute === true ? multicastRoutingUnavailable() : undefined;
}

/**
 * Skip options for node:test: `{ skip: reason }` where the bed cannot run, unless the run requires
 * it (GATECAST_REQUIRE_NETNS=1), in which case this throws and the file fails loudly. A kernel
 * without multicast routing is not a missing install: tests that need smcrouted to route skip
 * there with the reason, and fail only under GATECAST_REQUIRE_MROUTE=1.
 */
export function testbedSkip(extraCommands: string[] = [], needs: TestbedNeeds = {}): { skip?: string } {
  const reason = testbedUnavailable(extraCommands, needs);
  if (reason === undefined) {
    return {};
  }
  const kernel = needs.smcroute === true && reason === multicastRoutingUnavailable();
  if (kernel ? process.env.GATECAST_REQUIRE_MROUTE === '1' : process.env.GATECAST_REQUIRE_NETNS === '1') {
    const flag = kernel ? 'GATECAST_REQUIRE_MROUTE' : 'GATECAST_REQUIRE_NETNS';
    throw new Error(`${flag}=1 but the namespace test bed cannot run: ${reason}`);
  }
  return { skip: reason };
}

/** A finished process. */
export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A process running on a host of the bed. */
export interface HostProcess {
  readonly child: ChildProcess;
  readonly finished: Promise<Finished>;
  /** Resolves when the process has printed a line matching pattern on stderr or stdout. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  /** What it has printed so far (stdout, then stderr). */
  output(): string;
}

/** A built test bed. */
export interface Testbed {
  readonly prefix: string;
  namespace(host: string): string;
  /** Starts a command in a host's namespace; it is killed at teardown if still running. */
  spawn(host: string, command: string, args: string[]): HostProcess;
  /** Starts gatecast in a host's namespace. */
  gatecast(host: string, args: string[]): HostProcess;
  /** Runs a test-bed subcommand (loss, drop, clear, rate, route, routes). */
  control(...args: string[]): string;
  /**
   * Ends every process still running (SIGTERM, then SIGKILL after a grace) and waits for them: a
   * failed test must not leave a server holding its port for the next one.
   */
  stopAll(keep?: readonly HostProcess[]): Promise<void>;
  down(): void;
}

/** Builds a test bed with a fresh per-run prefix. */
export function createTestbed(): Testbed {
  const prefix = `gc${randomBytes(3).toString('hex')}`;
  const children = new Set<ChildProcess>();
  let isDown = false;
  const down = () => {
    if (isDown) {
      return;
    }
    isDown = true;
    for (const child of children) {
      if (child.exitCode === null && child.pid !== undefined) {
        child.kill('SIGKILL');
      }
    }
    execFileSync('bash', [script, 'down', prefix], { stdio: 'ignore' });
    process.off('exit', down);
  };
  process.on('exit', down);
  try {
    execFileSync('bash', [script, 'up', prefix], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    down();
    throw error;
  }

  const run = (host: string, command: string, args: string[]): HostProcess => {
    const child = spawn('ip', ['netns', 'exec', `${prefix}-${host}`, command, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: repoRoot,
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    const listeners = new Set<() => void>();
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      for (const listener of listeners) {
        listener();
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      for (const listener of listeners) {
        listener();
      }
    });
    const finished = new Promise<Finished>((resolve) => {
      child.on('close', (code, signal) => {
        children.delete(child);
        resolve({ code, signal, stdout, stderr });
      });
    });
    // Readiness, not a sleep: resolves at the line. A daemon's start (node loading dist/) took over
    // 10 s at load 25 on 2 cores, so the bound is a minute.
    const waitFor = (pattern: RegExp, timeoutMs = 60_000) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (pattern.test(stderr) || pattern.test(stdout)) {
            cleanup();
            resolve();
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`${command} on ${host}: no ${pattern} within ${timeoutMs} ms; stderr: ${stderr}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        void finished.then(() => {
          if (listeners.has(check)) {
            cleanup();
            reject(new Error(`${command} on ${host} exited before ${pattern}; stderr: ${stderr}`));
          }
        });
        check();
      });
    return { child, finished, waitFor, output: () => `${stdout}${stderr}` };
  };

  return {
    prefix,
    namespace: (host) => `${prefix}-${host}`,
    spawn: run,
    gatecast: (host, args) => run(host, process.execPath, [gatecastBin(), ...args]),
    control: (...args) => {
      const [command, ...rest] = args;
      return execFileSync('bash', [script, command ?? '', prefix, ...rest], { encoding: 'utf8' });
    },
    stopAll: async (keep = []) => {
      const kept = new Set(keep.map((p) => p.child));
      const alive = [...children].filter(
        (child) => !kept.has(child) && child.exitCode === null && child.signalCode === null,
      );
      await Promise.all(
        alive.map(
          (child) =>
            new Promise<void>((resolve) => {
              const force = setTimeout(() => child.kill('SIGKILL'), 3_000);
              child.once('exit', () => {
                clearTimeout(force);
                resolve();
              });
              child.kill('SIGTERM');
            }),
        ),
      );
    },
    down,
  };
}

/**
 * Burst loss: switches a drop rule at a host on for onMs and off for offMs, count times (bounded,
 * stops by itself). Resolves when the last burst is over.
 */
export async function burstLoss(
  bed: Testbed,
  host: string,
  port: string,
  schedule: { onMs: number; offMs: number; count: number },
): Promise<void> {
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  for (let i = 0; i < schedule.count; i++) {
    bed.control('drop', host, 'on', port);
    await sleep(schedule.onMs);
    bed.control('drop', host, 'off', port);
    await sleep(schedule.offMs);
  }
}

/** Small helpers the end-to-end tests and benchmarks share. */
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Ends a host process with SIGTERM and waits for it. */
export function stop(process: HostProcess): Promise<Finished> {
  process.child.kill('SIGTERM');
  return process.finished;
}

/** Starts `gatecast receive` on a host, joined to group on eth0, with more arguments. */
export function receiveOn(bed: Testbed, host: string, group: string, args: string[] = []): HostProcess {
  return bed.gatecast(host, ['receive', '--group', group, '--iface', 'eth0', ...args]);
}

/** Starts `gatecast send` on the source host, to group on eth0, with more arguments. */
export function sendFrom(bed: Testbed, group: string, args: string[]): HostProcess {
  return bed.gatecast('src', ['send', '--group', group, '--iface', 'eth0', ...args]);
}

/** Each host's address on its subnet (scripts/testbed.sh). */
export const hostAddress: Record<string, string> = {
  src: '10.200.1.10',
  rta: '10.200.1.21',
  rx1: '10.200.2.11',
  rx2: '10.200.2.12',
  rt1: '10.200.2.21',
  rt2: '10.200.2.22',
  rt3: '10.200.2.23',
  rep: '10.200.2.31',
};

/** Where a retransmit server on a host takes NACKs. */
export const retransmitAt = (host: string) => `${hostAddress[host]}:7000`;

/**
 * Starts `gatecast retransmit` on a host, listening on retransmitAt(host), joined to s1 on eth0
 * (or to nothing until a SETUP comes, when s1 is undefined).
 */
export function startRetransmit(
  bed: Testbed,
  host: string,
  s1: string | undefined,
  secret: string,
  extra: string[] = [],
): HostProcess {
  return bed.gatecast(host, [
    'retransmit',
    ...(s1 === undefined ? [] : ['--join', s1]),
    '--iface',
    'eth0',
    '--listen',
    retransmitAt(host),
    '--secret-file',
    secret,
    ...extra,
  ]);
}

/**
 * The repair service at its usual places: a retransmit server on rt1 buffering s1, and a repair
 * server on rep that fetches from it and re-emits s1 on s2, with `mode` (e.g. its --latency).
 */
export function startRepairPair(
  bed: Testbed,
  options: { s1: string; s2: string; secret: string; mode: string[] },
): { retransmit: HostProcess; repair: HostProcess } {
  const retransmit = startRetransmit(bed, 'rt1', options.s1, options.secret);
  const repair = startRepair(bed, 'rep', {
    s1: options.s1,
    emit: options.s2,
    secret: options.secret,
    retransmit: [retransmitAt('rt1')],
    mode: options.mode,
  });
  return { retransmit, repair };
}

/** Starts `gatecast repair` on a host: s1 on eth0 -> emit, listening on port 7100. */
export function startRepair(
  bed: Testbed,
  host: string,
  options: {
    s1: string;
    emit: string;
    secret: string;
    retransmit: string[];
    mode: string[];
    extra?: string[];
  },
): HostProcess {
  return bed.gatecast(host, [
    'repair',
    '--join',
    options.s1,
    '--iface',
    'eth0',
    '--listen',
    `${hostAddress[host]}:7100`,
    '--secret-file',
    options.secret,
    '--retransmit',
    options.retransmit.join(','),
    '--emit',
    options.emit,
    ...options.mode,
    ...(options.extra ?? []),
  ]);
}

/** SHA-256 of bytes, hex. */
export const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** The hosts of the edge subnet that run the four repair servers behind one lossy link. */
export const fourRepairHosts = ['rep', 'rx1', 'rx2', 'rt3'];

/**
 * Starts one retransmit server upstream (rta) answering on a repair group, and a reliable repair
 * server on each of fourRepairHosts joined to it; S2 stays on each host (emitted on loopback), since
 * four S2 streams flooding the edge bridge are not what is measured. Resolves once all listen.
 */
export async function startFourRepairServers(
  bed: Testbed,
  options: { s1: string; repairGroup: string; emitGroupPrefix: string; emitPort: number; secret: string },
): Promise<{ retransmit: HostProcess; repairs: HostProcess[] }> {
  const retransmit = startRetransmit(bed, 'rta', options.s1, options.secret, [
    '--repair-group',
    options.repairGroup,
    '--status',
    '127.0.0.1:9101',
  ]);
  const repairs = fourRepairHosts.map((host, i) =>
    startRepair(bed, host, {
      s1: options.s1,
      emit: `${options.emitGroupPrefix}${i + 1}:${options.emitPort}`,
      secret: options.secret,
      retransmit: [retransmitAt('rta')],
      mode: [
        '--reliable',
        '--repair-group',
        options.repairGroup,
        '--emit-iface',
        '127.0.0.1',
        '--status',
        '127.0.0.1:9100',
      ],
    }),
  );
  await Promise.all([retransmit.waitFor(/listening on/), ...repairs.map((r) => r.waitFor(/listening on/))]);
  return { retransmit, repairs };
}
