/**
 * The repair controller (flow A, docs/architecture.md "Repair controller"): agents on subscribers'
 * hosts ask it, over HTTP with their bearer token, to repair a session S1. It asks the subscription
 * server who the token belongs to and whether that subscriber has the `repair` service; if so it
 * creates (or reuses) a repair module for S1, gives it a fresh S2 from its pool, and answers with a
 * grant tagged under the subscriber's token. S2 is sealed: the controller makes every module's S2
 * key, hands it (and its epoch) to entitled agents in the grant, and rotates it whenever a grant
 * ends — lease expiry, release, a lapsed entitlement — so a departed agent reads nothing sealed
 * after that. Without the entitlement the agent gets a clear refusal. Grants are leases the agent renews; repaired bytes are reported per subscriber and
 * session to the subscription server as usage, each report under its own idempotency key, retried
 * until it is taken.
 */
import { randomUUID } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { answerTag } from '../crypto/answer-auth.js';
import { formatS2Secret, newS2Key, nextS2Epoch, type S2Key, s2SuiteName } from '../crypto/s2-seal.js';
import { controllerBodyBytesMax, controllerGrantsPerSubscriberMax, usageBatchEventsMax } from '../limits.js';
import { canonicalAddress, type Endpoint, formatEndpoint, isMulticast, parseGroup } from '../net/address.js';
import { type ApiAnswer, requestApi } from '../net/api-client.js';
import { InvalidArgumentError, SocketError } from '../net/errors.js';
import { bearerToken } from '../net/http.js';
import { boundPort, createHttpApp, type HttpServerLimits, sendError } from '../net/http-server.js';
import type { TlsFiles } from '../net/tls.js';
import { addToAddress } from '../protocol/address.js';
import { ErrorBody } from '../protocol/api-errors.js';
import { RepairGrantBody, RepairReleaseBody, RepairRequestBody } from '../protocol/api-repair.js';
import { CheckResult, SessionList, UsageBatchResult, Whoami } from '../protocol/api-subscription.js';
import { answerFields } from '../protocol/controller.js';
import type { RepairServer, RepairSettings } from './repair.js';
import { startRepairServer } from './repair.js';
import { openUsageJournal, type UsageReport } from './usage-journal.js';

/** No S2 group is left in the pool. */
class PoolExhausted extends Error {}

/** Settings of a controller. */
export interface ControllerSettings {
  /** Where agents reach the controller (HTTP). */
  readonly listen: Endpoint;
  /** The subscription server's base URL, e.g. http://10.0.0.5:8080. */
  readonly subscription: string;
  /** The operator's token for the subscription server. */
  readonly token: string;
  /** S2 pool: the first group and the port; `poolSize` groups from it. */
  readonly pool: Endpoint;
  readonly poolSize: number;
  /** How every repair module is set up; group, emit, S2 key and the control port are filled in per S1. */
  readonly module: Omit<RepairSettings, 'group' | 'source' | 'emit' | 'listen' | 's2Key'> & {
    /** Module i (the i-th S2 of the pool) takes its control socket at this port + i (0: any). */
    readonly listen: Endpoint;
  };
  readonly leaseMs: number;
  /** How often repaired bytes are reported as usage. */
  readonly reportIntervalMs: number;
  /** How long a module with no subscriber left stays up (a quick re-join reuses it). */
  readonly idleMs: number;
  /** Serve agents over HTTPS with this certificate and key (their bearer tokens travel here). */
  readonly tls?: TlsFiles | undefined;
  /**
   * Keep usage reports in this file until the subscription server has taken them, so a report
   * survives a crash or a stop while the server is away (sent again, same key, on the next start).
   */
  readonly journal?: string | undefined;
  /** Starts a repair module (tests may pass a fake). */
  readonly startModule?: (settings: RepairSettings) => Promise<RepairServer>;
  /** Bounds of the HTTP server (defaults from src/limits.ts). */
  readonly httpLimits?: Partial<HttpServerLimits> | undefined;
  /** S1 sessions one subscriber may hold grants for at once. */
  readonly grantsPerSubscriberMax?: number | undefined;
}

interface Attachment {
  readonly subscriber: string;
  readonly sessionId: string | undefined;
  expiresAt: number;
  reportedBytes: number;
  reportedPackets: number;
}

interface Module {
  readonly s1: Endpoint;
  readonly s2: Endpoint;
  /** The sender of a source-specific join, or undefined for any source. */
  readonly source: string | undefined;
  readonly poolIndex: number;
  readonly server: RepairServer;
  readonly attachments: Map<string, Attachment>;
  idleSince: number | undefined;
  /** The key S2 is sealed under now; replaced (new epoch, new key) when a grant ends. */
  s2Key: S2Key;
}

type PendingReport = UsageReport;

/** What the controller's status shows. */
export interface ControllerStatus {
  role: 'repair-controller';
  listen: string;
  grants: number;
  refusals: number;
  modules: Array<{
    s1: string;
    s2: string;
    subscribers: number;
    recovered: number;
    recoveredBytes: number;
    s2KeyEpoch: number;
  }>;
  /** S2 keys replaced because a grant ended. */
  s2Rotations: number;
  reportsPending: number;
  reportsSent: number;
  /** Reports the subscription server answered with a refusal (a 4xx for that event): not charged. */
  reportsRefused: number;
  usageBytesReported: number;
}

/** A running controller. */
export interface RepairController extends AsyncDisposable {
  readonly url: string;
  status(): ControllerStatus;
  /** Reports what is due now (also done every reportIntervalMs). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Starts a controller. */
export async function startRepairController(settings: ControllerSettings): Promise<RepairController> {
  const instance = randomUUID();
  const startModule = settings.startModule ?? startRepairServer;
  const modules = new Map<string, Module>();
  let journal: ReturnType<typeof openUsageJournal> | undefined;
  try {
    journal = settings.journal === undefined ? undefined : openUsageJournal(settings.journal);
  } catch (error) {
    throw new InvalidArgumentError(
      '--journal',
      `cannot use ${settings.journal}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  const pending: PendingReport[] = [...(journal?.unsent ?? [])];
  const counters = {
    grants: 0,
    refusals: 0,
    reportsSent: 0,
    reportsRefused: 0,
    usageBytesReported: 0,
    s2Rotations: 0,
  };
  let reportSequence = 0;
  const base = settings.subscription.replace(/\/+$/, '');

  /** A call to the subscription server, its answer checked by the contract; undefined when none came. */
  const ask = <T extends TSchema>(
    path: string,
    schema: T,
    token: string,
    request: { method?: string; body?: unknown; headers?: Record<string, string> } = {},
  ): Promise<ApiAnswer<Static<T>> | undefined> =>
    requestApi(`${base}${path}`, schema, { ...request, token, timeoutMs: 5_000 }).catch(() => undefined);

  /** Pool indexes of modules being started (not yet in `modules`). */
  const reservedIndexes = new Set<number>();
  const freeIndex = () => {
    const used = new Set([...modules.values()].map((module) => module.poolIndex));
    for (const index of reservedIndexes) {
      used.add(index);
    }
    for (let i = 0; i < settings.poolSize; i++) {
      if (!used.has(i)) {
        return i;
      }
    }
    return undefined;
  };

  /** Queues the repaired bytes an attachment has not been charged for yet. */
  const account = (module: Module, attachment: Attachment) => {
    const status = module.server.status();
    const bytes = status.recoveredBytes - attachment.reportedBytes;
    const packets = status.recovered - attachment.reportedPackets;
    attachment.reportedBytes = status.recoveredBytes;
    attachment.reportedPackets = status.recovered;
    if (bytes > 0) {
      const report: PendingReport = {
        key: `repair/${instance}/${reportSequence++}`,
        body: {
          account: attachment.subscriber,
          kind: 'repair-bytes',
          quantity: bytes,
          packets: Math.max(0, packets),
          ...(attachment.sessionId === undefined ? {} : { session: attachment.sessionId }),
        },
      };
      journal?.append(report);
      pending.push(report);
    }
  };

  /** One flush at a time; a caller that finds one running waits for it, then sends what is left. */
  let flushing: Promise<void> | undefined;
  const flush = async () => {
    while (flushing !== undefined) {
      await flushing;
    }
    flushing = flushPending().finally(() => {
      flushing = undefined;
    });
    await flushing;
  };
  /** Sends what is pending in batches, each report under its own key, until none is left or the server is away. */
  const flushPending = async () => {
    while (pending.length > 0) {
      const batch = pending.slice(0, usageBatchEventsMax);
      const answer = await ask('/v1/usage/batch', UsageBatchResult, settings.token, {
        method: 'POST',
        body: { events: batch.map((report) => ({ key: report.key, ...report.body })) },
      });
      if (answer === undefined || !answer.ok || answer.body.results.length !== batch.length) {
        return; // the server is away, busy or answered nonsense: the same reports, same keys, next time
      }
      pending.splice(0, batch.length);
      for (const [index, report] of batch.entries()) {
        journal?.done(report.key);
        const result = answer.body.results[index];
        if (result !== undefined && result.status < 300) {
          counters.reportsSent++;
          counters.usageBytesReported += report.body.quantity;
        } else {
          counters.reportsRefused++; // answered, so not sent again; counted, never taken for charged
        }
      }
    }
  };

  /**
   * A new S2 key for the module: what it seals from now on. The departed agent's key opens
   * nothing sealed after this; the others learn the new key from their next grant.
   */
  const rotate = (module: Module) => {
    const key = newS2Key(nextS2Epoch(module.s2Key.epoch));
    module.server.rotateS2Key?.(key);
    module.s2Key.key.fill(0);
    module.s2Key = key;
    counters.s2Rotations++;
  };

  const detach = (module: Module, subscriber: string) => {
    const attachment = module.attachments.get(subscriber);
    if (attachment !== undefined) {
      account(module, attachment);
      module.attachments.delete(subscriber);
      rotate(module);
    }
    if (module.attachments.size === 0) {
      module.idleSince ??= Date.now();
    }
  };

  const tick = async () => {
    const now = Date.now();
    for (const [key, module] of modules) {
      for (const [subscriber, attachment] of module.attachments) {
        if (attachment.expiresAt <= now) {
          detach(module, subscriber);
        } else {
          account(module, attachment);
        }
      }
      if (module.idleSince !== undefined && Date.now() - module.idleSince >= settings.idleMs) {
        modules.delete(key);
        await module.server.close();
      }
    }
    await flush();
  };

  const app = createHttpApp({
    tls: settings.tls,
    bodyBytesMax: controllerBodyBytesMax,
    limits: settings.httpLimits,
  });

  /**
   * The repair module for S1: the running one, or one started now with the next free S2. Requests
   * for the same S1 that arrive together share one start (one module, one S2).
   */
  const starting = new Map<string, Promise<Module>>();
  const moduleFor = (s1: Endpoint, source: string | undefined): Promise<Module> => {
    const key = formatEndpoint(s1);
    const running = modules.get(key);
    if (running !== undefined) {
      return Promise.resolve(running);
    }
    let start = starting.get(key);
    if (start === undefined) {
      start = (async () => {
        const poolIndex = freeIndex();
        const address = poolIndex === undefined ? undefined : addToAddress(settings.pool.address, poolIndex);
        if (poolIndex === undefined || address === undefined) {
          throw new PoolExhausted('the S2 pool is exhausted');
        }
        const s2: Endpoint = { ...settings.pool, address };
        reservedIndexes.add(poolIndex);
        // Every module starts with a fresh key: a restarted module never seals under an old one.
        const s2Key = newS2Key(1);
        try {
          const server = await startModule({
            ...settings.module,
            group: s1,
            source,
            emit: s2,
            s2Key,
            listen: {
              ...settings.module.listen,
              port: settings.module.listen.port === 0 ? 0 : settings.module.listen.port + poolIndex,
            },
          });
          const module: Module = {
            s1,
            s2,
            source,
            poolIndex,
            server,
            attachments: new Map(),
            idleSince: undefined,
            s2Key,
          };
          modules.set(key, module);
          return module;
        } finally {
          reservedIndexes.delete(poolIndex);
        }
      })().finally(() => starting.delete(key));
      starting.set(key, start);
    }
    return start;
  };

  /** Who is asking: the subscriber behind the bearer token, or the refusal to answer with. */
  const identify = async (authorization: string | undefined) => {
    const token = bearerToken(authorization);
    if (token === undefined) {
      return { refusal: ['unauthorized', 'a bearer token is required'] as const };
    }
    const who = await ask('/v1/whoami', Whoami, token);
    if (who === undefined || who.status >= 500) {
      return { refusal: ['unavailable', 'the subscription server cannot be reached'] as const };
    }
    if (!who.ok || who.body.kind !== 'subscriber') {
      return { refusal: ['unauthorized', 'the token is not a subscriber’s'] as const };
    }
    return { token, subscriber: who.body.id };
  };

  /** The open session registered for S1, or the refusal to answer with. */
  const openSession = async (s1Text: string) => {
    const sessions = await ask(
      `/v1/sessions?group=${encodeURIComponent(s1Text)}`,
      SessionList,
      settings.token,
    );
    if (sessions === undefined || !sessions.ok) {
      return { refusal: ['unavailable', 'the subscription server cannot be reached'] as const };
    }
    const session = sessions.body.find((candidate) => candidate.state === 'open');
    if (session === undefined) {
      return { refusal: ['not-found', `no open session is registered for ${s1Text}`] as const };
    }
    return { session };
  };

  /** S1 sessions the subscriber holds a grant for now. */
  const grantsOf = (subscriber: string) =>
    [...modules.values()].filter((module) => module.attachments.has(subscriber)).length;
  const grantsMax = settings.grantsPerSubscriberMax ?? controllerGrantsPerSubscriberMax;

  app.post<{ Body: RepairRequestBody }>(
    '/v1/repair',
    {
      schema: {
        body: RepairRequestBody,
        response: {
          200: RepairGrantBody,
          400: ErrorBody,
          401: ErrorBody,
          403: ErrorBody,
          404: ErrorBody,
          409: ErrorBody,
          429: ErrorBody,
          503: ErrorBody,
        },
      },
    },
    async (request, reply) => {
      let s1: Endpoint;
      try {
        s1 = parseGroup(request.body.group, 'body/group');
      } catch (error) {
        return sendError(reply, 'invalid-request', (error as Error).message);
      }
      const source = request.body.source;
      if (source !== undefined && (isMulticast(source) || isIPv4(source) !== (s1.family === 4))) {
        return sendError(
          reply,
          'invalid-request',
          `body/source: "${source}" is not a unicast address of the group's family`,
        );
      }
      const who = await identify(request.headers.authorization);
      if ('refusal' in who) {
        return sendError(reply, who.refusal[0], who.refusal[1]);
      }
      const s1Text = formatEndpoint(s1);
      const registered = await openSession(s1Text);
      if ('refusal' in registered) {
        counters.refusals++;
        return sendError(reply, registered.refusal[0], registered.refusal[1]);
      }
      const sessionId = registered.session.id;
      // S1's sender is the registered session's, not the asker's: a module is shared by every
      // subscriber of S1, so one subscriber naming another source would starve all the others.
      const registeredSource =
        registered.session.source === null ? undefined : canonicalAddress(registered.session.source);
      const asked = source === undefined ? undefined : canonicalAddress(source);
      const moduleSource = registeredSource ?? asked ?? modules.get(s1Text)?.source;
      const runningSource = modules.get(s1Text)?.source;
      if (asked !== undefined && asked !== moduleSource) {
        counters.refusals++;
        return sendError(
          reply,
          'conflict',
          `body/source: ${s1Text} is registered with source ${moduleSource ?? 'any'}, not ${asked}`,
        );
      }
      if (modules.has(s1Text) && runningSource !== moduleSource) {
        counters.refusals++;
        return sendError(
          reply,
          'conflict',
          `body/source: the repair module for ${s1Text} joins source ${runningSource ?? 'any'}, not ${moduleSource ?? 'any'}`,
        );
      }
      const check = await ask(
        `/v1/entitlements/check?subscriber=${encodeURIComponent(who.subscriber)}&service=repair&session=${encodeURIComponent(sessionId)}`,
        CheckResult,
        settings.token,
      );
      if (check === undefined || check.status >= 500 || (!check.ok && check.error === 'invalid-answer')) {
        return sendError(reply, 'unavailable', 'the subscription server cannot be reached');
      }
      if (!check.ok || !check.body.allowed) {
        counters.refusals++;
        const moduleNow = modules.get(s1Text);
        if (moduleNow !== undefined) {
          detach(moduleNow, who.subscriber); // a lapsed entitlement ends a running grant
        }
        return sendError(reply, 'not-entitled', check.ok ? check.body.reason : check.message);
      }
      const held = modules.get(s1Text)?.attachments.has(who.subscriber) === true;
      if (!held && grantsOf(who.subscriber) >= grantsMax) {
        counters.refusals++;
        return sendError(
          reply,
          'too-many-requests',
          `a subscriber holds at most ${grantsMax} grants at once; release one first`,
        );
      }
      let module: Module;
      try {
        module = await moduleFor(s1, moduleSource);
      } catch (error) {
        return sendError(
          reply,
          'unavailable',
          error instanceof PoolExhausted
            ? error.message
            : `the repair module for ${s1Text} could not start: ${(error as Error).message}`,
        );
      }
      module.idleSince = undefined;
      const status = module.server.status();
      const attachment = module.attachments.get(who.subscriber) ?? {
        subscriber: who.subscriber,
        sessionId,
        expiresAt: 0,
        reportedBytes: status.recoveredBytes,
        reportedPackets: status.recovered,
      };
      attachment.expiresAt = Date.now() + settings.leaseMs;
      module.attachments.set(who.subscriber, attachment);
      counters.grants++;
      const grant = {
        session: s1Text,
        s2: formatEndpoint(module.s2),
        subscriber: who.subscriber,
        leaseSeconds: Math.max(1, Math.round(settings.leaseMs / 1000)),
        key: { suite: s2SuiteName, epoch: module.s2Key.epoch, secret: formatS2Secret(module.s2Key) },
      };
      return { ...grant, tag: answerTag(who.token, answerFields(grant)) } satisfies RepairGrantBody;
    },
  );

  app.delete<{ Body: RepairReleaseBody }>(
    '/v1/repair',
    {
      schema: {
        body: RepairReleaseBody,
        response: { 204: Type.Null(), 400: ErrorBody, 401: ErrorBody, 503: ErrorBody },
      },
    },
    async (request, reply) => {
      const who = await identify(request.headers.authorization);
      if ('refusal' in who) {
        return sendError(reply, who.refusal[0], who.refusal[1]);
      }
      let s1: Endpoint;
      try {
        s1 = parseGroup(request.body.group, 'body/group');
      } catch (error) {
        return sendError(reply, 'invalid-request', (error as Error).message);
      }
      const module = modules.get(formatEndpoint(s1));
      if (module !== undefined) {
        detach(module, who.subscriber);
        void flush();
      }
      return reply.code(204).send(null);
    },
  );

  const status = (): ControllerStatus => ({
    role: 'repair-controller',
    listen: formatEndpoint(settings.listen),
    grants: counters.grants,
    refusals: counters.refusals,
    modules: [...modules.values()].map((module) => {
      const s = module.server.status();
      return {
        s1: formatEndpoint(module.s1),
        s2: formatEndpoint(module.s2),
        subscribers: module.attachments.size,
        recovered: s.recovered,
        recoveredBytes: s.recoveredBytes,
        s2KeyEpoch: module.s2Key.epoch,
      };
    }),
    s2Rotations: counters.s2Rotations,
    reportsPending: pending.length,
    reportsSent: counters.reportsSent,
    reportsRefused: counters.reportsRefused,
    usageBytesReported: counters.usageBytesReported,
  });
  app.get('/status', async () => status());

  try {
    await app.listen({ host: settings.listen.address, port: settings.listen.port });
  } catch (error) {
    // A failed start closes what it opened: the app's socket and the journal.
    await app.close().catch(() => undefined);
    journal?.close();
    throw new SocketError(
      `--controller: cannot listen on ${formatEndpoint(settings.listen)}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  const port = boundPort(app, settings.listen.port);
  const timer = setInterval(() => void tick(), settings.reportIntervalMs);
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      clearInterval(timer);
      await app.close();
      for (const module of modules.values()) {
        for (const subscriber of [...module.attachments.keys()]) {
          detach(module, subscriber);
        }
      }
      await flush();
      for (const module of modules.values()) {
        await module.server.close();
      }
      modules.clear();
      journal?.close();
    })();
    return closed;
  };
  return {
    url: `${settings.tls === undefined ? 'http' : 'https'}://${formatEndpoint({ ...settings.listen, port })}`,
    status,
    flush: tick,
    close,
    [Symbol.asyncDispose]: close,
  };
}
