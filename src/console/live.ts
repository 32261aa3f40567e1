/**
 * What the console knows of the running roles: it reads their status endpoints (GET /status, see
 * src/net/status-http.ts) every consolePollIntervalMs and keeps a bounded history per endpoint,
 * with the loss figures derived from each role's own counters. Nothing here trusts a figure it
 * cannot derive: an endpoint that does not answer is shown as unreachable, not as zero loss.
 */
import { consoleHistoryPointsMax, consoleStatusBytesMax, consoleStatusTimeoutMs } from '../limits.js';
import { readBodyBounded } from '../net/http.js';

/** One watched status endpoint, as the operator named it (`--watch NAME=URL`). */
export interface WatchedEndpoint {
  readonly name: string;
  readonly url: string;
}

/** One point of an endpoint's history. Loss figures are percentages over the interval since the last point. */
export interface LivePoint {
  /** Milliseconds since 1970. */
  readonly at: number;
  /** Repair servers: S1 packets lost before repair, percent of the packets due in the interval. */
  readonly lossBeforePercent?: number | undefined;
  /**
   * Repair servers: packets still missing after repair (given up), percent of the same. Agents:
   * the gaps they saw on S2, percent of the datagrams due to the application.
   */
  readonly lossAfterPercent?: number | undefined;
  /** Retransmit servers: their own measured loss per session group. */
  readonly sessionLossPercent?: Readonly<Record<string, number>> | undefined;
  /** Agents: datagrams delivered in the interval, per second. */
  readonly deliveredPerSecond?: number | undefined;
}

/** The live view of one endpoint. */
export interface LiveEndpoint {
  readonly name: string;
  readonly url: string;
  /** The role its status names (retransmit, repair, repair-controller, agent), once it answered. */
  role: string | undefined;
  reachable: boolean;
  /** Why it is not reachable. */
  error: string | undefined;
  /** Its last status, as it answered. */
  status: Record<string, unknown> | undefined;
  /** When the last status came. */
  updatedAt: number | undefined;
  readonly history: LivePoint[];
}

type Counters = Record<string, unknown>;

const numberOf = (status: Counters | undefined, key: string): number => {
  const value = status?.[key];
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
};

const percent = (part: number, whole: number) =>
  whole <= 0 ? 0 : Math.round((part / whole) * 100_000) / 1000;

/** The value as counters when it is a JSON object, otherwise undefined (it then counts nothing). */
function countersOf(value: unknown): Counters | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Counters)
    : undefined;
}

/**
 * The objects of a status's `sessions` list, or undefined when it has no list. A watched endpoint
 * is another process (another version, or not a gatecast role at all): an entry that is not an
 * object is skipped rather than stopping the console.
 */
function sessionsOf(status: Counters | undefined): Counters[] | undefined {
  const sessions = status?.sessions;
  if (!Array.isArray(sessions)) {
    return undefined;
  }
  return sessions.map(countersOf).filter((session) => session !== undefined);
}

/**
 * How much each counter grew between two readings of one status (or one delivery). When any of
 * them went down, the counters were reset (the role or the delivery restarted, from zero): all of
 * their current values are new. No earlier reading: all of them too.
 */
function growth<K extends string>(
  previous: Counters | undefined,
  current: Counters,
  keys: readonly K[],
): Record<K, number> {
  const reset =
    previous === undefined || keys.some((key) => numberOf(current, key) < numberOf(previous, key));
  return Object.fromEntries(
    keys.map((key) => [key, numberOf(current, key) - (reset ? 0 : numberOf(previous, key))]),
  ) as Record<K, number>;
}

/**
 * The deliveries of a watching agent's sessions, keyed by S1 and the S2 delivered from (a delivery
 * moved to another S2 is a new one; the same S1 listed twice keeps its order); sessions without a
 * delivery or an S1 count nothing.
 */
function deliveriesOf(sessions: Counters[]): Map<string, Counters> {
  const deliveries = new Map<string, Counters>();
  const seen = new Map<string, number>();
  for (const session of sessions) {
    const delivery = countersOf(session.delivery);
    if (typeof session.s1 !== 'string' || delivery === undefined) {
      continue;
    }
    const key = `${session.s1} ${typeof delivery.from === 'string' ? delivery.from : ''}`;
    const occurrence = seen.get(key) ?? 0;
    seen.set(key, occurrence + 1);
    deliveries.set(`${key} #${occurrence}`, delivery);
  }
  return deliveries;
}

const agentKeys = ['delivered', 'gapsSeen'] as const;

/**
 * How much an agent's counters grew: its own, or the sum over a watching agent's sessions of each
 * session's own growth, so a delivery that stopped (gone from the list) or restarted (from zero)
 * takes nothing away from the others.
 */
function agentGrowth(previous: Counters | undefined, current: Counters) {
  const sessions = sessionsOf(current);
  if (sessions === undefined) {
    return growth(previous, current, agentKeys);
  }
  const before = deliveriesOf(sessionsOf(previous) ?? []);
  const sum = { delivered: 0, gapsSeen: 0 };
  for (const [s1, delivery] of deliveriesOf(sessions)) {
    const grown = growth(before.get(s1), delivery, agentKeys);
    sum.delivered += grown.delivered;
    sum.gapsSeen += grown.gapsSeen;
  }
  return sum;
}

/** The point between two statuses of one role (previous undefined: cumulative since start). */
export function livePoint(
  role: string | undefined,
  previous: Counters | undefined,
  current: Counters,
  at: number,
  intervalMs: number,
): LivePoint {
  if (role === 'repair') {
    // Every packet due on S2 in the interval was either emitted or given up; of those, S1 lost
    // the recovered and the given-up ones.
    const { emitted, recovered, unrecoverable } = growth(previous, current, [
      'emitted',
      'recovered',
      'unrecoverable',
    ]);
    const due = emitted + unrecoverable;
    return {
      at,
      lossBeforePercent: percent(recovered + unrecoverable, due),
      lossAfterPercent: percent(unrecoverable, due),
    };
  }
  if (role === 'retransmit') {
    const sessions = sessionsOf(current) ?? [];
    return {
      at,
      sessionLossPercent: Object.fromEntries(
        sessions
          .filter((session) => typeof session.group === 'string')
          .map((session) => [String(session.group), numberOf(session, 'lossPercent')]),
      ),
    };
  }
  if (role === 'agent') {
    // A watching agent reports per session; a single agent at the top. Gaps it saw on S2 are
    // what the repair did not fill: the loss after repair at this receiver.
    const { delivered, gapsSeen: gaps } = agentGrowth(previous, current);
    return {
      at,
      deliveredPerSecond: (delivered * 1000) / Math.max(1, intervalMs),
      lossAfterPercent: percent(gaps, delivered + gaps),
    };
  }
  return { at };
}

/** Reads the endpoints, one poll at a time; each poll updates every endpoint's view. */
export class LiveView {
  readonly endpoints: LiveEndpoint[];

  constructor(watched: readonly WatchedEndpoint[]) {
    this.endpoints = watched.map((endpoint) => ({
      name: endpoint.name,
      url: endpoint.url,
      role: undefined,
      reachable: false,
      error: 'not read yet',
      status: undefined,
      updatedAt: undefined,
      history: [],
    }));
  }

  /** Reads every endpoint once (in parallel, each bounded by consoleStatusTimeoutMs). */
  async poll(signal?: AbortSignal): Promise<void> {
    await Promise.all(this.endpoints.map((endpoint) => this.#read(endpoint, signal)));
  }

  async #read(endpoint: LiveEndpoint, signal?: AbortSignal): Promise<void> {
    const timeout = AbortSignal.timeout(consoleStatusTimeoutMs);
    const at = Date.now();
    let status: Counters;
    try {
      const response = await fetch(endpoint.url, {
        signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
      });
      if (!response.ok) {
        throw new Error(`HTTP ${response.status}`);
      }
      const text = await readBodyBounded(response, consoleStatusBytesMax);
      if (text === undefined) {
        throw new Error(`the answer is longer than ${consoleStatusBytesMax} bytes`);
      }
      const body = JSON.parse(text) as unknown;
      if (typeof body !== 'object' || body === null || Array.isArray(body)) {
        throw new Error('the answer is not a status object');
      }
      status = body as Counters;
    } catch (error) {
      endpoint.reachable = false;
      endpoint.error =
        (error as Error).name === 'TimeoutError' ? 'no answer in time' : (error as Error).message;
      return;
    }
    const role = typeof status.role === 'string' ? status.role : undefined;
    const previous = endpoint.role === role ? endpoint.status : undefined;
    const intervalMs = endpoint.updatedAt === undefined ? 1000 : at - endpoint.updatedAt;
    endpoint.history.push(livePoint(role, previous, status, at, intervalMs));
    if (endpoint.history.length > consoleHistoryPointsMax) {
      endpoint.history.splice(0, endpoint.history.length - consoleHistoryPointsMax);
    }
    endpoint.role = role;
    endpoint.reachable = true;
    endpoint.error = undefined;
    endpoint.status = status;
    endpoint.updatedAt = at;
  }
}
