/**
 * The nftables router driver (docs/ordering.md): the kernel forwards each active channel itself,
 * without a multicast routing daemon, for kernels that cannot route multicast (built without
 * CONFIG_IP_MROUTE: smcrouted starts there but refuses every route) or where none is wanted. One
 * netdev-family table per link, hooked at ingress on the link's inbound interface, sends a copy of
 * every frame of a route's group (and source) out of the outbound interface, its TTL (hop limit)
 * lowered by one (the frame itself goes on with the TTL it came with); a datagram that arrives
 * with TTL 1 is not forwarded, as by a router. The source
 * address stays the sender's, so boxes may join source-specific. Routes are the elements of four
 * sets: (S,G) and (*,G), IPv4 and IPv6. Driven with the `nft` command: the table is written whole,
 * in one transaction (packets see the old table or the new one, never a half), every write is
 * checked by listing the table again, and a drift check that finds the table other than it should
 * be (flushed, deleted, a set changed, another ruleset loaded) writes it back.
 */
import { type ChildProcess, execFile } from 'node:child_process';
import { isIPv6 } from 'node:net';
import { nftCommandTimeoutMs, nftListBytesMax } from '../limits.js';
import { canonicalAddress } from '../net/address.js';
import type { RouteWanted } from './book.js';
import type { ReconcileOptions, ReconcileReport, RouterDriver } from './driver.js';
import { traceOrderStage } from './trace.js';

/** Settings of one link's forwarding. */
export interface NftablesSettings {
  readonly inbound: string;
  readonly outbound: string;
  /** The table's name (netdev family); default nftablesTableName(inbound, outbound). */
  readonly table?: string | undefined;
  /** The nft command (default: nft, found on PATH). */
  readonly command?: string | undefined;
  /** The ip command, which lists the interfaces (default: ip, found on PATH). */
  readonly ipCommand?: string | undefined;
}

/**
 * The table a link's forwarding lives in when its settings name none. A table's name starts with
 * "gatecast", so it is never one of nft's keywords (nft takes no quoted table name).
 */
export function nftablesTableName(inbound: string, outbound: string): string {
  return `gatecast_${inbound}_${outbound}`.replace(/[^A-Za-z0-9_]/g, '_');
}

/** The sets a route is an element of. */
const setNames = { sg4: 'sg4', g4: 'g4', sg6: 'sg6', g6: 'g6' } as const;
type SetName = keyof typeof setNames;
/** TTLs (hop limits) that are forwarded: 2-255, each sent on with one less. */
const hops = Array.from({ length: 254 }, (_, index) => index + 2);
/** Rules of the table as written: 5 in ingress, a vmap per family, one per TTL per family. */
const ruleCount = 5 + 2 + 2 * hops.length;

/** A route's key, its addresses in one text form (nft lists an IPv4-mapped source otherwise). */
const routeKey = (source: string | null, group: string) =>
  `${source === null ? '*' : canonicalAddress(source)},${canonicalAddress(group)}`;
const setOf = (source: string | null, group: string): SetName =>
  isIPv6(group) ? (source === null ? 'g6' : 'sg6') : source === null ? 'g4' : 'sg4';

/** A route as the table holds it. */
interface TableRoute {
  readonly source: string | null;
  readonly group: string;
}

/** The whole table, as one transaction that replaces whatever the table was. */
export function nftablesRuleset(
  table: string,
  inbound: string,
  outbound: string,
  routes: readonly TableRoute[],
): string {
  const elements = (set: SetName) =>
    routes
      .filter((route) => setOf(route.source, route.group) === set)
      .map((route) => (route.source === null ? route.group : `${route.source} . ${route.group}`));
  const set = (name: SetName, type: string) => {
    const members = elements(name);
    return `  set ${name} { type ${type};${members.length > 0 ? ` elements = { ${members.join(', ')} };` : ''} }`;
  };
  const lines = [
    // Declaring first makes the delete valid when the table does not exist yet.
    `table netdev ${table}`,
    `delete table netdev ${table}`,
    `table netdev ${table} {`,
    set('sg4', 'ipv4_addr . ipv4_addr'),
    set('g4', 'ipv4_addr'),
    set('sg6', 'ipv6_addr . ipv6_addr'),
    set('g6', 'ipv6_addr'),
  ];
  for (const [family, field] of [
    [4, 'ip ttl'],
    [6, 'ip6 hoplimit'],
  ] as const) {
    lines.push(`  chain hop${family} {`);
    lines.push(`    ${field} vmap { ${hops.map((hop) => `${hop} : jump hop${family}_${hop}`).join(', ')} }`);
    lines.push('  }');
    for (const hop of hops) {
      // The copy goes out with one less; the frame itself goes on as it came (the host's own
      // sockets, and every other link's table on the same interface, see the sender's TTL).
      lines.push(
        `  chain hop${family}_${hop} { ${field} set ${hop - 1} dup to "${outbound}" ${field} set ${hop}; }`,
      );
    }
  }
  lines.push(
    '  chain ingress {',
    `    type filter hook ingress device "${inbound}" priority 0; policy accept;`,
    '    meta pkttype != multicast accept',
    '    ip saddr . ip daddr @sg4 goto hop4',
    '    ip daddr @g4 goto hop4',
    '    ip6 saddr . ip6 daddr @sg6 goto hop6',
    '    ip6 daddr @g6 goto hop6',
    '  }',
    '}',
  );
  return `${lines.join('\n')}\n`;
}

/** What `nft -j list table` says of the table: its routes, and whether it is the one we write. */
export interface ListedTable {
  readonly routes: Map<string, TableRoute>;
  /** Why the table is not as written (then it is written again), or undefined. */
  readonly differs?: string | undefined;
  /**
   * The table without its sets' elements, as `nft -t list table` prints it (chains, rules, hooks
   * with their devices, policies): compared whole with what it printed right after this driver
   * wrote the table, so any change of a rule, a chain or a hook is a difference.
   */
  readonly shape?: string | undefined;
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** One set element as nft's JSON shows it: an address, a concatenation, or either wrapped in elem. */
function elementRoute(element: unknown): TableRoute | undefined {
  const value = isRecord(element) && isRecord(element.elem) ? element.elem.val : element;
  if (typeof value === 'string') {
    return { source: null, group: value };
  }
  if (isRecord(value) && Array.isArray(value.concat) && value.concat.length === 2) {
    const [source, group] = value.concat as unknown[];
    if (typeof source === 'string' && typeof group === 'string') {
      return { source, group };
    }
  }
  return undefined;
}

/** The type each set is written with, as nft's JSON shows it. */
const setTypes: Record<string, string> = {
  sg4: '["ipv4_addr","ipv4_addr"]',
  g4: '"ipv4_addr"',
  sg6: '["ipv6_addr","ipv6_addr"]',
  g6: '"ipv6_addr"',
};

/**
 * Reads one set of the listing into routes; returns what is strange about it, or undefined.
 * Only the four sets as written are read.
 */
function readSet(
  set: Record<string, unknown>,
  sets: Set<string>,
  routes: Map<string, TableRoute>,
): string | undefined {
  const name = set.name;
  const type = JSON.stringify(set.type);
  if (typeof name !== 'string' || setTypes[name] !== type) {
    return `set ${String(name)} of type ${type}`;
  }
  sets.add(name);
  let strange: string | undefined;
  for (const element of Array.isArray(set.elem) ? (set.elem as unknown[]) : []) {
    const route = elementRoute(element);
    const concatenated = name.startsWith('sg');
    if (route === undefined || (route.source !== null) !== concatenated) {
      strange = `an element of set ${name}: ${JSON.stringify(element)}`;
      continue;
    }
    routes.set(routeKey(route.source, route.group), route);
  }
  return strange;
}

/** The items of nft's JSON listing, or undefined when it printed no JSON. */
function listedItems(text: string): unknown[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  return isRecord(parsed) && Array.isArray(parsed.nftables) ? (parsed.nftables as unknown[]) : [];
}

/**
 * Reads the sets of table from `nft -j list sets netdev` (every netdev table's sets, with their
 * elements): the routes, after a write that changed only elements (the rest of the table is
 * checked on the drift check).
 */
export function parseNftablesSets(text: string, table: string): ListedTable {
  const routes = new Map<string, TableRoute>();
  const items = listedItems(text);
  if (items === undefined) {
    return { routes, differs: 'nft listed no JSON' };
  }
  const sets = new Set<string>();
  let strange: string | undefined;
  for (const item of items) {
    if (isRecord(item) && isRecord(item.set) && item.set.table === table) {
      strange = readSet(item.set, sets, routes) ?? strange;
    }
  }
  return {
    routes,
    differs: strange ?? (sets.size !== 4 ? `sets ${[...sets].sort().join(', ') || 'none'} of 4` : undefined),
  };
}

/**
 * Reads `nft -j list table netdev TABLE` (undefined text: the table does not exist). Anything
 * but the table as written (a set missing or of another type, a rule more or less, the hook on
 * another device, a copy sent out of another interface) is a difference.
 */
export function parseNftablesTable(text: string | undefined, inbound: string, outbound: string): ListedTable {
  const routes = new Map<string, TableRoute>();
  if (text === undefined) {
    return { routes, differs: 'no table' };
  }
  const items = listedItems(text);
  if (items === undefined) {
    return { routes, differs: 'nft listed no JSON' };
  }
  const sets = new Set<string>();
  let rules = 0;
  let copies = 0;
  let hooked = false;
  let strange: string | undefined;
  for (const item of items) {
    if (!isRecord(item)) {
      continue;
    }
    if (isRecord(item.set)) {
      strange = readSet(item.set, sets, routes) ?? strange;
    } else if (isRecord(item.chain)) {
      if (item.chain.name === 'ingress') {
        // nft 1.0.6 leaves the device out of its JSON; where it is shown, it must be ours.
        const device = item.chain.dev;
        hooked =
          item.chain.hook === 'ingress' &&
          (device === undefined ||
            device === inbound ||
            (Array.isArray(device) && device.length === 1 && device[0] === inbound));
      }
    } else if (isRecord(item.rule)) {
      rules += 1;
      const expressions = JSON.stringify(item.rule.expr ?? []);
      if (expressions.includes('"dup"')) {
        // The device a copy goes out of: "dev", or "addr" as nft 1.0.6 writes it.
        const device = JSON.stringify(outbound);
        if (
          expressions.includes(`"dup":{"dev":${device}}`) ||
          expressions.includes(`"dup":{"addr":${device}}`)
        ) {
          copies += 1;
        } else {
          strange = `a copy sent elsewhere than ${outbound}`;
        }
      }
    }
  }
  const differs =
    strange ??
    (sets.size !== 4
      ? `sets ${[...sets].sort().join(', ') || 'none'} of 4`
      : !hooked
        ? `no ingress hook on ${inbound}`
        : rules !== ruleCount || copies !== 2 * hops.length
          ? `${rules} rules (${copies} copies to ${outbound}) where ${ruleCount} (${2 * hops.length}) were written`
          : undefined);
  return { routes, differs };
}

/** Runs a command; resolves with its exit status and output, never rejects. */
function runCommand(
  command: string,
  args: readonly string[],
  input: string | undefined,
  running: Set<ChildProcess>,
): Promise<{ ok: boolean; stdout: string; detail: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      { timeout: nftCommandTimeoutMs, maxBuffer: nftListBytesMax, encoding: 'utf8' },
      (error, stdout, stderr) => {
        running.delete(child);
        if (error === null) {
          resolve({ ok: true, stdout, detail: '' });
          return;
        }
        const code = (error as NodeJS.ErrnoException).code;
        const detail =
          code === 'ENOENT'
            ? `${command} not found (Debian package ${command.endsWith('ip') ? 'iproute2' : 'nftables'})`
            : error.killed
              ? `no answer within ${nftCommandTimeoutMs} ms`
              : stderr.trim().split('\n')[0] || error.message;
        resolve({ ok: false, stdout, detail });
      },
    );
    running.add(child);
    if (input !== undefined) {
      child.stdin?.on('error', () => undefined); // nft that exits early closes its input
      child.stdin?.end(input);
    }
  });
}

/**
 * Why an interface of the link is missing from this network namespace, or undefined. The kernel
 * takes an ingress hook on a device that does not exist, and nothing is ever forwarded: a typo
 * would be reported routed.
 */
export function missingInterface(listing: string, inbound: string, outbound: string): string | undefined {
  let names: Set<string>;
  try {
    const links = JSON.parse(listing) as unknown;
    names = new Set(
      (Array.isArray(links) ? links : []).flatMap((link: unknown) =>
        isRecord(link) && typeof link.ifname === 'string' ? [link.ifname] : [],
      ),
    );
  } catch {
    return 'ip -j link show printed no JSON';
  }
  for (const [field, name] of [
    ['inbound', inbound],
    ['outbound', outbound],
  ] as const) {
    if (!names.has(name)) {
      return `the ${field} interface ${name} does not exist in the order server's network namespace`;
    }
  }
  return undefined;
}

const notWrittenYet = 'not written by this server yet';

/** A route as an element of its set, as nft reads it. */
const elementText = (route: TableRoute) =>
  route.source === null ? route.group : `${route.source} . ${route.group}`;

/** The elements removed and added, one transaction: every set of the table as written is there. */
export function elementChanges(
  table: string,
  removals: readonly string[],
  additions: readonly string[],
  had: ReadonlyMap<string, TableRoute>,
  wanted: ReadonlyMap<string, TableRoute>,
): string {
  const lines: string[] = [];
  for (const [verb, keys, routes] of [
    ['delete', removals, had],
    ['add', additions, wanted],
  ] as const) {
    for (const key of keys) {
      const route = routes.get(key);
      if (route !== undefined) {
        lines.push(
          `${verb} element netdev ${table} ${setOf(route.source, route.group)} { ${elementText(route)} }`,
        );
      }
    }
  }
  return `${lines.join('\n')}\n`;
}

/** Builds the driver of one link's forwarding. */
export function createNftablesDriver(settings: NftablesSettings): RouterDriver {
  const table = settings.table ?? nftablesTableName(settings.inbound, settings.outbound);
  const command = settings.command ?? 'nft';
  const ipCommand = settings.ipCommand ?? 'ip';
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;
  const running = new Set<ChildProcess>();
  /** The table as last listed or written by this driver (undefined: ask). */
  let seen: ListedTable | undefined;
  /**
   * The table's shape (`nft -t list table`: no set elements) as printed right after this driver
   * wrote it; until it has written the table once, whatever is there is written again.
   */
  let written: string | undefined;
  /** One command at a time. */
  const run = (program: string, args: readonly string[], input?: string) => {
    const start = async () => {
      traceOrderStage('router-sent', undefined, () => `${program} ${args.join(' ')}`);
      const result = await runCommand(program, args, input, running);
      traceOrderStage('router-answered', undefined, () => `${program} ${result.ok ? 'ok' : 'failed'}`);
      return result;
    };
    const next = queue.then(start, start);
    queue = next;
    return next;
  };
  const nft = (args: readonly string[], input?: string) => run(command, args, input);
  /** Why the link's interfaces cannot carry routes (one is missing), or undefined. */
  const interfacesMissing = async (): Promise<string | undefined> => {
    const links = await run(ipCommand, ['-j', 'link', 'show']);
    if (!links.ok) {
      return `${ipCommand} -j link show: ${links.detail}`;
    }
    return missingInterface(links.stdout, settings.inbound, settings.outbound);
  };
  /**
   * Whether the last listing found both interfaces (a listing with nothing to carry does not look):
   * until one does, routes are written only after looking.
   */
  let interfacesFound = false;
  /** Lists the table; with routes to carry, first checks that both interfaces exist. */
  const list = async (carrying: boolean): Promise<ListedTable | string> => {
    interfacesFound = false;
    if (carrying) {
      const missing = await interfacesMissing();
      if (missing !== undefined) {
        return missing;
      }
      interfacesFound = true;
    }
    // The table's shape first (its sets without their elements): compared with what nft printed
    // right after this driver wrote it, it tells any change of a chain, a rule, a hook or its
    // device (nft 1.0.6's JSON leaves the device out).
    const terse = await nft(['-t', 'list', 'table', 'netdev', table]);
    if (!terse.ok) {
      // The one failure that is an answer: there is no such table (yet, or deleted behind our back).
      return /No such file or directory/.test(terse.detail)
        ? parseNftablesTable(undefined, settings.inbound, settings.outbound)
        : `list table netdev ${table}: ${terse.detail}`;
    }
    if (written === undefined) {
      // Not written by this driver yet: the whole table read, to say what is wrong with it.
      const listed = await nft(['-j', 'list', 'table', 'netdev', table]);
      if (!listed.ok) {
        return `list table netdev ${table}: ${listed.detail}`;
      }
      const parsed = parseNftablesTable(listed.stdout, settings.inbound, settings.outbound);
      return { routes: parsed.routes, differs: parsed.differs ?? notWrittenYet, shape: terse.stdout };
    }
    // Then the routes, from the sets alone (a tenth of the whole table's listing).
    const sets = await nft(['-j', 'list', 'sets', 'netdev']);
    if (!sets.ok) {
      return `list sets netdev: ${sets.detail}`;
    }
    const parsed = parseNftablesSets(sets.stdout, table);
    const differs =
      parsed.differs ??
      (terse.stdout !== written ? 'its chains, rules or hooks are other than written' : undefined);
    return { routes: parsed.routes, differs, shape: terse.stdout };
  };

  return {
    stale: () => seen === undefined,
    async reconcile(wanted: readonly RouteWanted[], options?: ReconcileOptions): Promise<ReconcileReport> {
      const report: { added: string[]; removed: string[]; errors: string[] } = {
        added: [],
        removed: [],
        errors: [],
      };
      if (closed) {
        return report;
      }
      const desired = new Map(
        wanted.map((route) => [
          routeKey(route.source, route.group),
          { source: route.source, group: route.group },
        ]),
      );
      let actual = options?.fresh === false ? seen : undefined;
      if (actual === undefined) {
        const listed = await list(desired.size > 0);
        if (typeof listed === 'string') {
          seen = undefined;
          report.errors.push(listed);
          return report;
        }
        actual = listed;
      }
      seen = actual;
      const absent = actual.differs === 'no table';
      const unchanged =
        desired.size === actual.routes.size && [...desired.keys()].every((key) => actual.routes.has(key));
      // With nothing to carry the table stays, its sets empty, so the next order adds an element
      // instead of writing some 500 chains; it goes when the link leaves this router (final), or
      // when it is not as written.
      const deleting =
        desired.size === 0 && !absent && (options?.final === true || actual.differs !== undefined);
      if (desired.size === 0 && absent) {
        return report;
      }
      if (!deleting && unchanged && actual.differs === undefined) {
        return report;
      }
      const removals = [...actual.routes.keys()].filter((key) => !desired.has(key));
      // A table other than written (flushed, a rule or hook changed) may have forwarded none of
      // them: all are put back. A table from before this server started is written again as well,
      // but what it held is not reported as added.
      const damaged = actual.differs !== undefined && actual.differs !== notWrittenYet;
      const additions = [...desired.keys()].filter((key) => damaged || !actual.routes.has(key));
      // Routes are written only onto interfaces that exist (not a typo's hook that carries nothing).
      if (desired.size > 0 && !interfacesFound) {
        const missing = await interfacesMissing();
        if (missing !== undefined) {
          seen = undefined;
          report.errors.push(missing);
          return report;
        }
        interfacesFound = true;
      }
      let check: ListedTable | string;
      if (deleting) {
        // The table goes: no hook left on the inbound interface.
        const writing = await nft(['-f', '-'], `table netdev ${table}\ndelete table netdev ${table}\n`);
        if (!writing.ok) {
          seen = undefined;
          report.errors.push(`delete table netdev ${table}: ${writing.detail}`);
          return report;
        }
        written = undefined;
        check = await list(false);
      } else {
        // The table as written: only its sets' elements change, in one transaction. Else, or when
        // that fails (an element gone behind our back), the whole table is written.
        let elementsWritten = false;
        if (actual.differs === undefined) {
          const writing = await nft(
            ['-f', '-'],
            elementChanges(table, removals, additions, actual.routes, desired),
          );
          elementsWritten = writing.ok;
        }
        if (elementsWritten) {
          const sets = await nft(['-j', 'list', 'sets', 'netdev']);
          check = sets.ok ? parseNftablesSets(sets.stdout, table) : `list sets netdev: ${sets.detail}`;
        } else {
          const writing = await nft(
            ['-f', '-'],
            nftablesRuleset(table, settings.inbound, settings.outbound, [...desired.values()]),
          );
          if (!writing.ok) {
            seen = undefined;
            report.errors.push(`write table netdev ${table}: ${writing.detail}`);
            return report;
          }
          // What the table looks like as written: later listings are compared with it.
          const terse = await nft(['-t', 'list', 'table', 'netdev', table]);
          written = terse.ok ? terse.stdout : undefined;
          // Done is not proof: list the table again and report what it holds.
          const listed = await nft(['-j', 'list', 'table', 'netdev', table]);
          check = !listed.ok
            ? `list table netdev ${table}: ${listed.detail}`
            : {
                ...parseNftablesTable(listed.stdout, settings.inbound, settings.outbound),
                ...(written === undefined ? {} : { shape: written }),
              };
          if (typeof check !== 'string' && check.differs === undefined && written === undefined) {
            check = { ...check, differs: notWrittenYet };
          }
        }
      }
      if (typeof check === 'string') {
        seen = undefined;
        report.errors.push(check);
        return report;
      }
      seen = check;
      // A route is carried only while both interfaces are there: one may have gone since they
      // were last looked at (a drift check ago), and then nothing is reported added.
      if (!deleting && additions.length > 0) {
        const missing = await interfacesMissing();
        if (missing !== undefined) {
          interfacesFound = false;
          seen = undefined;
          report.errors.push(missing);
          additions.length = 0;
        }
      }
      if (!deleting && check.differs !== undefined) {
        seen = undefined;
        report.errors.push(`table netdev ${table} written but listed otherwise: ${check.differs}`);
      }
      for (const key of removals) {
        if (check.routes.has(key)) {
          report.errors.push(`remove ${key}: still in table netdev ${table}`);
        } else {
          report.removed.push(key);
        }
      }
      for (const key of additions) {
        if (check.routes.has(key)) {
          report.added.push(key);
        } else {
          report.errors.push(`add ${key}: not in table netdev ${table} after writing it`);
        }
      }
      return report;
    },
    async close() {
      // The table stays: channels keep flowing while the order server restarts, and the next
      // start reconciles it with the store. A command still running is ended, not waited for.
      closed = true;
      for (const child of running) {
        child.kill('SIGKILL');
      }
      await queue.catch(() => undefined);
    },
  };
}
