/**
 * The smcroute router driver (docs/ordering.md): keeps a real smcrouted's routes equal to what the
 * store says a link should carry. smcrouted is a cache to keep in sync, not fire-and-forget: one
 * command at a time, spoken over the daemon's control socket (src/protocol/smcroute-ipc.ts; no
 * `smcroutectl` process per command), every add checked with `show routes` (a route whose outbound
 * interface is not an enabled phyint is accepted and that interface silently dropped), and a full
 * comparison on every drift check, so routes lost to a restart or a reload, or removed behind our
 * back, are put back. A new control socket (the daemon started again) makes the next reconcile ask
 * the daemon at once. (S,G) routes are used whenever the service names its source.
 */
import { type FSWatcher, statSync, watch } from 'node:fs';
import { createConnection } from 'node:net';
import { dirname } from 'node:path';
import { smcrouteCommandTimeoutMs, smcrouteReplyBytesMax } from '../limits.js';
import {
  decodeSmcrouteReply,
  encodeSmcrouteRequest,
  type SmcrouteCommand,
} from '../protocol/smcroute-ipc.js';
import type { RouteWanted } from './book.js';
import type { ReconcileOptions, ReconcileReport, RouterDriver } from './driver.js';
import { traceOrderStage } from './trace.js';

/** Settings of one smcrouted. */
export interface SmcrouteSettings {
  readonly socket: string;
  readonly inbound: string;
  readonly outbound: string;
}

/** One route as smcrouted shows it. */
export interface ShownRoute {
  readonly source: string | null;
  readonly group: string;
  readonly inbound: string;
  readonly outbound: readonly string[];
}

/**
 * Parses `smcroutectl -p show routes`: the "(*,G) Template Rules" and "(S,G) Rules" sections
 * (what smcrouted was told); the kernel's table is not what we manage.
 */
export function parseShowRoutes(text: string): ShownRoute[] {
  const routes: ShownRoute[] = [];
  let section: 'template' | 'rules' | 'other' = 'other';
  for (const line of text.split('\n')) {
    if (/Template Rules/.test(line)) {
      section = 'template';
      continue;
    }
    if (/\(S,G\) Rules/.test(line)) {
      section = 'rules';
      continue;
    }
    if (/Kernel MFC Table/.test(line)) {
      section = 'other';
      continue;
    }
    if (section === 'other') {
      continue;
    }
    const match = /^\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)\s+(\S+)\s*(.*)$/.exec(line.trim());
    if (match === null) {
      continue;
    }
    const [, source, group, inbound, outbound] = match as unknown as [string, string, string, string, string];
    routes.push({
      source: source === '*' ? null : source,
      group,
      inbound,
      outbound: outbound.trim() === '' ? [] : outbound.trim().split(/\s+/),
    });
  }
  return routes;
}

/** The group address of a service's group:port (IPv6 in brackets). */
export function groupAddress(group: string): string {
  const bracketed = /^\[([^\]]+)\]:\d+$/.exec(group);
  if (bracketed !== null) {
    return bracketed[1] as string;
  }
  const index = group.lastIndexOf(':');
  return index < 0 ? group : group.slice(0, index);
}

const routeKey = (source: string | null, group: string) => `${source ?? '*'},${group}`;

/** The daemon's answer to one command: `ok` when it did it (add, remove) or answered (show). */
export interface SmcrouteAnswer {
  readonly ok: boolean;
  /** The table for show, the daemon's error message, or why there was no answer. */
  readonly output: string;
}

/**
 * Sends one command over smcrouted's control socket and reads its answer (the daemon answers once
 * and closes the connection). Never rejects: a refused connection, a timeout or a malformed answer
 * is an answer with `ok` false.
 */
export function smcrouteRequest(
  socketPath: string,
  command: SmcrouteCommand,
  args: readonly string[],
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<SmcrouteAnswer> {
  const request = encodeSmcrouteRequest(command, args);
  return new Promise<SmcrouteAnswer>((resolve) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    let settled = false;
    const connection = createConnection(socketPath);
    const finish = (answer: SmcrouteAnswer) => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', aborted);
      connection.destroy();
      resolve(answer);
    };
    const aborted = () => finish({ ok: false, output: 'aborted' });
    const timer = setTimeout(
      () =>
        finish({ ok: false, output: `no answer within ${options.timeoutMs ?? smcrouteCommandTimeoutMs} ms` }),
      options.timeoutMs ?? smcrouteCommandTimeoutMs,
    );
    timer.unref();
    if (options.signal?.aborted === true) {
      aborted();
      return;
    }
    options.signal?.addEventListener('abort', aborted, { once: true });
    connection.on('connect', () => connection.write(request));
    connection.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > smcrouteReplyBytesMax) {
        finish({ ok: false, output: `answer longer than ${smcrouteReplyBytesMax} bytes` });
        return;
      }
      chunks.push(chunk);
    });
    connection.on('end', () => {
      const reply = decodeSmcrouteReply(Buffer.concat(chunks));
      if (!reply.ok) {
        finish({ ok: false, output: reply.detail });
      } else if (command === 'show') {
        finish({ ok: true, output: reply.value });
      } else {
        finish({ ok: reply.value === '', output: reply.value.trim() });
      }
    });
    connection.on('error', (error: NodeJS.ErrnoException) =>
      finish({ ok: false, output: `${socketPath}: ${error.code ?? error.message}` }),
    );
  });
}

/** The control socket's identity: a restarted daemon binds a new one. */
const socketIdentity = (path: string): string | undefined => {
  try {
    const stat = statSync(path, { bigint: true });
    return `${stat.dev}:${stat.ino}:${stat.ctimeNs}`;
  } catch {
    return undefined;
  }
};

/** Builds the driver of one smcrouted. */
export function createSmcrouteDriver(settings: SmcrouteSettings): RouterDriver {
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;
  const abort = new AbortController();
  /** What the router carries, as far as this driver knows: its last `show routes` and its own changes since. */
  let seen: Map<string, ShownRoute> | undefined;
  /** The control socket as it was when the daemon was last asked what it carries. */
  let seenSocket: string | undefined;
  let watcher: FSWatcher | undefined;
  /** Sends one command; one at a time. */
  const control = (command: SmcrouteCommand, args: string[]): Promise<SmcrouteAnswer> => {
    const run = async () => {
      traceOrderStage('router-sent', undefined, () => `${command} ${args.join(' ')}`);
      const answer = await smcrouteRequest(settings.socket, command, args, { signal: abort.signal });
      traceOrderStage('router-answered', undefined, () => `${command} ${answer.ok ? 'ok' : 'failed'}`);
      return answer;
    };
    const next = queue.then(run, run);
    queue = next;
    return next;
  };

  const show = async (): Promise<ShownRoute[] | string> => {
    const identity = socketIdentity(settings.socket);
    const answer = await control('show', ['routes']);
    if (!answer.ok) {
      return `show routes: ${answer.output || 'failed'}`;
    }
    seenSocket = identity;
    return parseShowRoutes(answer.output);
  };
  /** Ours: a route on the link's inbound interface (the daemon serves this link alone). */
  const carried = (routes: readonly ShownRoute[]) =>
    new Map(
      routes
        .filter((route) => route.inbound === settings.inbound)
        .map((route) => [routeKey(route.source, route.group), route]),
    );
  const argsOf = (route: { source: string | null; group: string }) => [
    settings.inbound,
    ...(route.source === null ? [] : [route.source]),
    route.group,
  ];

  return {
    stale: () => seen === undefined || socketIdentity(settings.socket) !== seenSocket,
    watch(onStale) {
      if (closed || watcher !== undefined) {
        return;
      }
      // A restarted smcrouted binds a new control socket, then writes its pid file (by default in
      // the same directory) once it is ready: any change in the directory that leaves the socket
      // other than the one last asked is told at once, and again at the next change until the
      // daemon answered. A poll would notice it only at the next poll (orderDriverPollMs).
      try {
        watcher = watch(dirname(settings.socket), { persistent: false }, () => {
          if (!closed && seenSocket !== undefined && socketIdentity(settings.socket) !== seenSocket) {
            onStale();
          }
        });
        watcher.on('error', () => {
          watcher?.close(); // the directory went: the poll remains
        });
      } catch {
        watcher = undefined; // no directory to watch (yet): the poll remains
      }
    },
    async reconcile(wanted: readonly RouteWanted[], options?: ReconcileOptions): Promise<ReconcileReport> {
      const report: { added: string[]; removed: string[]; errors: string[] } = {
        added: [],
        removed: [],
        errors: [],
      };
      if (closed) {
        return report;
      }
      // Between drift checks, start from what the last `show routes` said and this driver did since,
      // unless the daemon was started again meanwhile: one round trip less between an order and its route.
      let actual =
        options?.fresh === false && socketIdentity(settings.socket) === seenSocket ? seen : undefined;
      if (actual === undefined) {
        const shown = await show();
        if (typeof shown === 'string') {
          seen = undefined;
          report.errors.push(shown);
          return report;
        }
        actual = carried(shown);
      }
      seen = new Map(actual);
      const desired = new Map(
        wanted.map((route) => [
          routeKey(route.source, route.group),
          { source: route.source, group: route.group },
        ]),
      );
      for (const [key, route] of actual) {
        const wantedRoute = desired.get(key);
        if (wantedRoute !== undefined && route.outbound.includes(settings.outbound)) {
          continue;
        }
        // Not wanted, or wanted without the link's interface: remove it (and add it again below).
        const removed = await control('remove', argsOf(route));
        if (removed.ok) {
          seen.delete(key);
          report.removed.push(key);
        } else {
          report.errors.push(`remove ${key}: ${removed.output}`);
        }
      }
      const sent: string[] = [];
      for (const [key, route] of desired) {
        const present = actual.get(key);
        if (present?.outbound.includes(settings.outbound) === true) {
          continue;
        }
        const added = await control('add', [...argsOf(route), settings.outbound]);
        if (added.ok) {
          sent.push(key);
        } else {
          report.errors.push(`add ${key}: ${added.output}`);
        }
      }
      if (sent.length > 0) {
        // Done is not proof: check, once for all the adds (each is in the kernel already), that every
        // route is there with the link's interface.
        const check = await show();
        seen = typeof check === 'string' ? undefined : carried(check);
        for (const key of sent) {
          const installed = seen?.get(key);
          if (installed?.outbound.includes(settings.outbound) === true) {
            report.added.push(key);
          } else {
            report.errors.push(
              typeof check === 'string'
                ? `add ${key}: ${check}`
                : `add ${key}: smcrouted accepted it but shows ${installed === undefined ? 'no route' : `outbound ${installed.outbound.join(' ') || 'none'}`} (is ${settings.outbound} an enabled phyint?)`,
            );
          }
        }
      }
      return report;
    },
    async close() {
      closed = true;
      watcher?.close();
      // Abort first: a daemon that took the connection and never answers would otherwise hold
      // close() for the whole command timeout (the next start reconciles from the store anyway).
      abort.abort();
      await queue.catch(() => undefined);
    },
  };
}
