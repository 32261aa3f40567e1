/**
 * The smcroute router driver (docs/ordering.md): keeps a real smcrouted's routes equal to what the
 * store says a link should carry. smcrouted is a cache to keep in sync, not fire-and-forget: one
 * command at a time, every add checked with `show routes` (a route whose outbound interface is not
 * an enabled phyint is accepted with exit 0 and that interface silently dropped), and a full
 * comparison on every reconcile, so routes lost to a restart or a reload, or removed behind our
 * back, are put back. (S,G) routes are used whenever the service names its source.
 */
import { execFile } from 'node:child_process';
import { smcroutectlTimeoutMs } from '../limits.js';
import type { RouteWanted } from './book.js';
import type { ReconcileOptions, ReconcileReport, RouterDriver } from './driver.js';

/** Settings of one smcrouted. */
export interface SmcrouteSettings {
  readonly socket: string;
  readonly inbound: string;
  readonly outbound: string;
  /** The smcroutectl program (default: smcroutectl from PATH). */
  readonly command?: string;
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

/** Builds the driver of one smcrouted. */
export function createSmcrouteDriver(settings: SmcrouteSettings): RouterDriver {
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;
  /** What the router carries, as far as this driver knows: its last `show routes` and its own changes since. */
  let seen: Map<string, ShownRoute> | undefined;
  /** Runs smcroutectl; one command at a time. */
  const control = (args: string[]): Promise<{ ok: boolean; output: string }> => {
    const run = () =>
      new Promise<{ ok: boolean; output: string }>((resolve) => {
        execFile(
          settings.command ?? 'smcroutectl',
          ['-u', settings.socket, ...args],
          { timeout: smcroutectlTimeoutMs, encoding: 'utf8' },
          (error, stdout, stderr) => resolve({ ok: error === null, output: `${stdout}${stderr}`.trim() }),
        );
      });
    const next = queue.then(run, run);
    queue = next;
    return next;
  };

  const show = async (): Promise<ShownRoute[] | string> => {
    const answer = await control(['-p', 'show', 'routes']);
    return answer.ok ? parseShowRoutes(answer.output) : `show routes: ${answer.output || 'failed'}`;
  };
  /** Ours: a route on the link's inbound interface (the daemon serves this link alone). */
  const carried = (routes: readonly ShownRoute[]) =>
    new Map(
      routes
        .filter((route) => route.inbound === settings.inbound)
        .map((route) => [routeKey(route.source, route.group), route]),
    );

  return {
    async reconcile(wanted: readonly RouteWanted[], options?: ReconcileOptions): Promise<ReconcileReport> {
      const report: { added: string[]; removed: string[]; errors: string[] } = {
        added: [],
        removed: [],
        errors: [],
      };
      if (closed) {
        return report;
      }
      // Between drift checks, start from what the last `show routes` said and this driver did since:
      // one smcroutectl round trip less between an order and its route.
      let actual = options?.fresh === false ? seen : undefined;
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
        const removed = await control([
          'remove',
          settings.inbound,
          ...(route.source === null ? [] : [route.source]),
          route.group,
        ]);
        if (removed.ok) {
          seen.delete(key);
          report.removed.push(key);
        } else {
          report.errors.push(`remove ${key}: ${removed.output}`);
        }
      }
      for (const [key, route] of desired) {
        const present = actual.get(key);
        if (present?.outbound.includes(settings.outbound) === true) {
          continue;
        }
        const added = await control([
          'add',
          settings.inbound,
          ...(route.source === null ? [] : [route.source]),
          route.group,
          settings.outbound,
        ]);
        if (!added.ok) {
          report.errors.push(`add ${key}: ${added.output}`);
          continue;
        }
        // Exit 0 is not proof: check that the route is there with the link's interface.
        const check = await show();
        seen = typeof check === 'string' ? undefined : carried(check);
        const installed = seen?.get(key);
        if (installed?.outbound.includes(settings.outbound) === true) {
          report.added.push(key);
        } else {
          report.errors.push(
            `add ${key}: smcrouted accepted it but shows ${installed === undefined ? 'no route' : `outbound ${installed.outbound.join(' ') || 'none'}`} (is ${settings.outbound} an enabled phyint?)`,
          );
        }
      }
      return report;
    },
    async close() {
      closed = true;
      await queue.catch(() => undefined);
    },
  };
}
