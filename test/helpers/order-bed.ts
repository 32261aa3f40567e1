/**
 * A one-way broadcast link on namespaces, for the order server's end-to-end tests (flow D):
 *
 *   PREFIX-os (source) eth0 10.231.1.10 ── eth0 10.231.1.1  PREFIX-or (router: smcrouted, the order server)
 *                                              eth1 10.231.2.1 ── brL (the broadcast link, one way) ── eth0 of the boxes
 *                                              eth2 10.231.3.1 ── brR (the return network)          ── ret0 of the boxes
 *   PREFIX-b1: eth0 10.231.2.11, ret0 10.231.3.11; PREFIX-b2: eth0 10.231.2.12, ret0 10.231.3.12
 *
 * nftables in the switch drops every frame a box sends on the link, so the link carries traffic one
 * way only; the boxes reach the order server over the return network. The router's smcrouted has
 * no routes of its own: only the order server adds them. Each box counts, in its prerouting hook,
 * the datagrams of each group that arrive over the link. Needs root, iproute2, nftables, smcroute.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gatecastBin } from './testbed.js';

/** A built bed. */
export interface OrderBed {
  readonly prefix: string;
  readonly directory: string;
  readonly smcrouteSocket: string;
  ns(host: 'os' | 'or' | 'b1' | 'b2' | 'sw'): string;
  /** Runs a command in a namespace and returns its stdout (throws on a non-zero exit). */
  run(host: 'os' | 'or' | 'b1' | 'b2' | 'sw', command: string, args: string[]): string;
  /** Starts a long-running command in a namespace (ended at teardown). */
  start(
    host: 'os' | 'or' | 'b1' | 'b2',
    command: string,
    args: string[],
    env?: Record<string, string>,
  ): Started;
  startSmcrouted(): Started;
  /** Datagrams of group that arrived at the box over the link so far. */
  arrived(host: 'b1' | 'b2' | 'or', group: string): number;
  /** Frames the switch dropped because a box sent them on the one-way link. */
  droppedFromBoxes(): number;
  /** The routes smcrouted shows (its "(S,G) Rules" and templates, as smcroutectl prints them). */
  routes(): string;
  down(): void;
}

/** A started process. */
export interface Started {
  readonly child: ChildProcess;
  readonly finished: Promise<number | null>;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  /** SIGTERM (or the signal given) and wait. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const sh = (command: string, args: string[]) =>
  execFileSync(command, args, { encoding: 'utf8', stdio: 'pipe' });

/** Builds the bed; tears it down on process exit too. */
export function createOrderBed(groups: readonly string[]): OrderBed {
  const prefix = `go${randomBytes(2).toString('hex')}`;
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-order-bed-'));
  const ns = (host: string) => `${prefix}-${host}`;
  const children = new Set<ChildProcess>();
  let isDown = false;
  const down = () => {
    if (isDown) {
      return;
    }
    isDown = true;
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
      }
    }
    for (const host of ['os', 'or', 'b1', 'b2', 'sw']) {
      try {
        for (const pid of sh('ip', ['netns', 'pids', ns(host)])
          .split('\n')
          .filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // already gone
          }
        }
      } catch {
        // no such namespace
      }
      try {
        sh('ip', ['netns', 'delete', ns(host)]);
      } catch {
        // already gone
      }
    }
    rmSync(directory, { recursive: true, force: true });
    process.off('exit', down);
  };
  process.on('exit', down);
  const ip = (...args: string[]) => sh('ip', args);
  const inNs = (host: string, command: string, args: string[]) =>
    sh('ip', ['netns', 'exec', ns(host), command, ...args]);
  try {
    for (const host of ['os', 'or', 'b1', 'b2', 'sw']) {
      ip('netns', 'add', ns(host));
      ip('-n', ns(host), 'link', 'set', 'lo', 'up');
    }
    ip('-n', ns('os'), 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns('or'));
    for (const bridge of ['brL', 'brR']) {
      ip('-n', ns('sw'), 'link', 'add', bridge, 'type', 'bridge', 'mcast_snooping', '0');
      ip('-n', ns('sw'), 'link', 'set', bridge, 'up');
    }
    const attach = (host: string, ifname: string, port: string, bridge: string) => {
      ip('-n', ns('sw'), 'link', 'add', port, 'type', 'veth', 'peer', 'name', ifname, 'netns', ns(host));
      ip('-n', ns('sw'), 'link', 'set', port, 'master', bridge, 'up');
    };
    attach('or', 'eth1', 'rl', 'brL');
    attach('or', 'eth2', 'rr', 'brR');
    attach('b1', 'eth0', 'b1l', 'brL');
    attach('b1', 'ret0', 'b1r', 'brR');
    attach('b2', 'eth0', 'b2l', 'brL');
    attach('b2', 'ret0', 'b2r', 'brR');
    const address = (host: string, ifname: string, cidr: string) => {
      ip('-n', ns(host), 'addr', 'add', cidr, 'dev', ifname);
      ip('-n', ns(host), 'link', 'set', ifname, 'up');
    };
    address('os', 'eth0', '10.231.1.10/24');
    address('or', 'eth0', '10.231.1.1/24');
    address('or', 'eth1', '10.231.2.1/24');
    address('or', 'eth2', '10.231.3.1/24');
    address('b1', 'eth0', '10.231.2.11/24');
    address('b1', 'ret0', '10.231.3.11/24');
    address('b2', 'eth0', '10.231.2.12/24');
    address('b2', 'ret0', '10.231.3.12/24');
    ip('-n', ns('os'), 'route', 'add', 'default', 'via', '10.231.1.1');
    inNs('or', 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  } catch (error) {
    down();
    throw error;
  }
  const nftScript = (text: string, host: string) => {
    const file = join(directory, `${host}-${randomBytes(3).toString('hex')}.nft`);
    writeFileSync(file, text);
    inNs(host, 'nft', ['-f', file]);
  };
  try {
    // The link is one way: whatever a box sends on it is dropped in the switch.
    nftScript(
      `table bridge gconeway {
  counter fromboxes {}
  chain forward { type filter hook forward priority 0; iifname { "b1l", "b2l" } counter name fromboxes drop; }
  chain input { type filter hook input priority 0; iifname { "b1l", "b2l" } counter name fromboxes drop; }
}
`,
      'sw',
    );
    for (const host of ['b1', 'b2', 'or']) {
      const counters = groups.map((_, i) => `  counter g${i} {}`).join('\n');
      const rules = groups.map((group, i) => `ip daddr ${group} counter name g${i}`).join('; ');
      nftScript(
        `table inet gcorder {\n${counters}\n  chain pre { type filter hook prerouting priority -300; ${rules}; }\n}\n`,
        host,
      );
    }
  } catch (error) {
    down();
    throw error;
  }
  const conf = join(directory, 'smcroute.conf');
  writeFileSync(conf, 'phyint eth0 enable\nphyint eth1 enable\n');
  const smcrouteSocket = join(directory, 'smcroute.sock');

  const start = (
    host: string,
    command: string,
    args: string[],
    env: Record<string, string> = {},
  ): Started => {
    const child = spawn('ip', ['netns', 'exec', ns(host), command, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(child);
    let text = '';
    const listeners = new Set<() => void>();
    const collect = (chunk: Buffer) => {
      text += chunk.toString();
      for (const listener of listeners) {
        listener();
      }
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    const finished = new Promise<number | null>((resolve) =>
      child.on('close', (code) => {
        children.delete(child);
        resolve(code);
        for (const listener of listeners) {
          listener();
        }
      }),
    );
    const waitFor = (pattern: RegExp, timeoutMs = 60_000) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (pattern.test(text)) {
            done();
            resolve();
          } else if (child.exitCode !== null || child.signalCode !== null) {
            done();
            reject(new Error(`${command} ${args.join(' ')} exited before ${pattern}: ${text}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${command} ${args.join(' ')}: no ${pattern} within ${timeoutMs} ms: ${text}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    return {
      child,
      finished,
      output: () => text,
      waitFor,
      stop: (signal = 'SIGTERM') => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill(signal);
        }
        return finished;
      },
    };
  };

  return {
    prefix,
    directory,
    smcrouteSocket,
    ns,
    run: inNs,
    start,
    startSmcrouted: () =>
      start('or', 'smcrouted', [
        '-n',
        '-N',
        '-f',
        conf,
        '-i',
        `gc-${prefix}`,
        '-u',
        smcrouteSocket,
        '-P',
        join(directory, 'smcroute.pid'),
        '-l',
        'info',
      ]),
    arrived: (host, group) => {
      const index = groups.indexOf(group);
      const text = inNs(host, 'nft', ['list', 'counter', 'inet', 'gcorder', `g${index}`]);
      return Number(/packets (\d+)/.exec(text)?.[1] ?? 'NaN');
    },
    droppedFromBoxes: () =>
      Number(
        /packets (\d+)/.exec(
          inNs('sw', 'nft', ['list', 'counter', 'bridge', 'gconeway', 'fromboxes']),
        )?.[1] ?? 'NaN',
      ),
    routes: () => sh('smcroutectl', ['-u', smcrouteSocket, '-p', 'show', 'routes']),
    down,
  };
}

/** The order server's address on the return network (it runs in the router's namespace). */
export const orderServerListen = '10.231.3.1:8080';
/** The order server's URL, as the boxes and the operator reach it. */
export const orderServerUrl = `http://${orderServerListen}`;

/** How the order server of a bed is started. */
export interface OrderServerOptions {
  /** The operator token the server accepts; `gatecast admin` in the bed's namespaces uses it too. */
  readonly operatorToken: string;
  /** More arguments of `gatecast serve` (for instance --order-lease). */
  readonly serveArgs?: readonly string[];
  /** Arguments of node before the program (for instance --import of a preloaded module). */
  readonly nodeArgs?: readonly string[];
  readonly env?: Record<string, string>;
}

/**
 * Starts `gatecast serve` with the subscription, billing and order roles in the router's namespace,
 * on a SQLite store in the bed's directory, and waits (bounded) until it listens. Sets
 * GATECAST_TOKEN to the operator token for the `gatecast admin` commands run in the bed.
 */
export async function startOrderServer(bed: OrderBed, options: OrderServerOptions): Promise<Started> {
  const serve = bed.start(
    'or',
    process.execPath,
    [
      ...(options.nodeArgs ?? []),
      gatecastBin(),
      'serve',
      '--roles',
      'subscription,billing,order',
      '--db',
      `sqlite:${bed.directory}/gatecast.db`,
      '--listen',
      orderServerListen,
      ...(options.serveArgs ?? []),
    ],
    { GATECAST_OPERATOR_TOKEN: options.operatorToken, ...options.env },
  );
  await serve.waitFor(/serve: .* on http:/, 60_000); // a loaded machine starts it slowly
  process.env.GATECAST_TOKEN = options.operatorToken; // admin in the router's namespace inherits it
  return serve;
}

/** Runs `gatecast admin --server URL …` in the router's namespace and returns what it printed. */
export const orderAdmin =
  (bed: OrderBed) =>
  (...args: string[]): string =>
    bed.run('or', process.execPath, [gatecastBin(), 'admin', '--server', orderServerUrl, ...args]);

/** Starts a box ordering a service with `gatecast stb order` (it renews), and waits until it has ordered. */
export async function watchOrder(
  bed: OrderBed,
  box: 'b1' | 'b2',
  token: string,
  service: string,
): Promise<Started> {
  const started = bed.start(box, process.execPath, [
    gatecastBin(),
    'stb',
    'order',
    '--service',
    service,
    '--server',
    orderServerUrl,
    '--token',
    token,
  ]);
  await started.waitFor(/renewing every/);
  return started;
}
