/**
 * The operator's web console, served by `gatecast serve` under /console/: plain HTML, CSS and
 * JavaScript files (the package's console/ folder, no build step) and two operator-only routes the
 * page reads: GET /console/api/snapshot (one snapshot as JSON), GET /console/api/events (a
 * snapshot every consolePollIntervalMs as server-sent events) and GET /console/api/settings (the
 * roles' settings schemas). A snapshot holds the store's sessions, server registry, parties,
 * entitlements, balances and latest transfers, the order role's links, services and active
 * orders, and the live view of the watched status endpoints (src/console/live.ts). Operator
 * actions (grant, revoke, cancel an order) go through the server's own API (docs/api.md) with the
 * same operator token.
 *
 * Plus the operations routes of the process: GET /metrics, /health and /ready.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, preHandlerAsyncHookHandler } from 'fastify';
import { presentEntitlement } from '../api/context.js';
import {
  consolePollIntervalMs,
  consoleStreamQueuedBytesMax,
  consoleStreamsMax,
  consoleTableRowsMax,
} from '../limits.js';
import { sendError } from '../net/http-server.js';
import type { Metrics } from '../net/metrics.js';
import type { Store } from '../store/database.js';
import { orderServiceColumns } from '../store/order-tables.js';
import { LiveView, type WatchedEndpoint } from './live.js';

/** What the console is built from. */
export interface ConsoleSettings {
  readonly store: Store;
  /** The subscription server's operator check, as a preHandler. */
  readonly operatorOnly: preHandlerAsyncHookHandler;
  /** Status endpoints of the roles to show live. */
  readonly watch: readonly WatchedEndpoint[];
  /** The folder of the page's files (default: the package's console/). */
  readonly assetsDirectory?: URL | undefined;
  /** The process's metrics, served on GET /metrics. */
  readonly metrics: Metrics;
  /**
   * The roles' settings schemas (JSON Schema, by role: type, default and help of each setting),
   * shown on the console's Settings page; the same schemas the command line and gatecast.yaml use.
   */
  readonly settingsSchemas?: Readonly<Record<string, unknown>> | undefined;
}

const contentTypes: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  css: 'text/css; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  svg: 'image/svg+xml',
  png: 'image/png',
};

/** The page's files, read once at start: only these names are ever served. */
function readAssets(directory: URL): Map<string, { type: string; body: Buffer }> {
  const assets = new Map<string, { type: string; body: Buffer }>();
  for (const name of readdirSync(directory)) {
    const type = contentTypes[name.split('.').pop() ?? ''];
    if (type !== undefined && /^[a-z0-9-]+\.[a-z]+$/.test(name)) {
      assets.set(name, { type, body: readFileSync(new URL(name, directory)) });
    }
  }
  return assets;
}

/**
 * The order server's state (flow D): each link with its capacity in use, each service with the
 * boxes holding it (its refcount), the active orders (oldest first, bounded) and how many orders
 * are in each state. Read from the store, so it shows whichever process runs the order role.
 */
async function orderSnapshot(store: Store) {
  const { db } = store;
  const [links, services, active, counts] = await Promise.all([
    db.selectFrom('order_links').selectAll().orderBy('name').limit(consoleTableRowsMax).execute(),
    db
      .selectFrom('order_services')
      .leftJoin('order_active', 'order_active.service', 'order_services.name')
      .select(orderServiceColumns)
      .orderBy('order_services.name')
      .limit(consoleTableRowsMax)
      .execute(),
    db
      .selectFrom('orders')
      .selectAll()
      .where('state', '=', 'active')
      .orderBy('created_at')
      .orderBy('id')
      .limit(consoleTableRowsMax)
      .execute(),
    db
      .selectFrom('orders')
      .select(['state', (eb) => eb.fn.countAll<number | string>().as('count')])
      .groupBy('state')
      .execute(),
  ]);
  return {
    links: links.map((row) => ({
      id: row.name,
      name: row.name,
      router: row.router,
      policy: row.policy,
      capacity: Number(row.capacity_bits),
      used: Number(row.used_bits),
    })),
    services: services.map((row) => ({
      id: row.name,
      name: row.name,
      link: row.link,
      group: `${row.group_address.includes(':') ? `[${row.group_address}]` : row.group_address}:${row.port}`,
      bitRate: Number(row.bit_rate),
      priority: row.priority,
      price: row.price,
      relayTo: row.relay_to,
      boxes: row.refcount === null ? 0 : Number(row.refcount),
      activeSince: row.activated_at,
    })),
    active: active.map((row) => ({
      id: row.id,
      box: row.box,
      service: row.service,
      link: row.link,
      createdAt: row.created_at,
      renewedAt: row.renewed_at,
      expiresAt: new Date(Number(row.expires_at_ms)).toISOString(),
    })),
    counts: Object.fromEntries(counts.map((row) => [row.state, Number(row.count)])),
  };
}

/** Rows of the store the console shows, newest first, each table bounded. */
async function storeSnapshot(store: Store) {
  const { db } = store;
  const limit = consoleTableRowsMax;
  const [sessions, servers, parties, entitlements, accounts, transfers, totals, orders] = await Promise.all([
    db.selectFrom('sessions').selectAll().orderBy('started_at', 'desc').limit(limit).execute(),
    db.selectFrom('servers').selectAll().orderBy('created_at', 'desc').limit(limit).execute(),
    db
      .selectFrom('parties')
      .select(['id', 'kind', 'name', 'created_at', 'revoked_at'])
      .orderBy('created_at', 'desc')
      .limit(limit)
      .execute(),
    db.selectFrom('entitlements').selectAll().orderBy('created_at', 'desc').limit(limit).execute(),
    db.selectFrom('accounts').selectAll().orderBy('created_at', 'desc').limit(limit).execute(),
    db.selectFrom('transfers').selectAll().orderBy('created_at', 'desc').limit(limit).execute(),
    db
      .selectFrom('transfers')
      .select((eb) => [
        'currency',
        eb.fn.countAll<number | string>().as('count'),
        eb.fn.sum<number | string>('amount').as('amount'),
      ])
      .groupBy('currency')
      .execute(),
    orderSnapshot(store),
  ]);
  return {
    sessions: sessions.map((row) => ({
      id: row.id,
      name: row.name,
      owner: row.owner,
      group: `${row.group_address.includes(':') ? `[${row.group_address}]` : row.group_address}:${row.port}`,
      source: row.source_address,
      price: row.price_model,
      repair: row.repair === 1,
      state: row.state,
      startedAt: row.started_at,
      endedAt: row.ended_at,
    })),
    servers: servers.map((row) => ({ id: row.id, kind: row.kind, name: row.name, address: row.address })),
    parties: parties.map((row) => ({
      id: row.id,
      kind: row.kind,
      name: row.name,
      createdAt: row.created_at,
      revokedAt: row.revoked_at,
    })),
    entitlements: entitlements.map((row) => ({ ...presentEntitlement(row), createdAt: row.created_at })),
    accounts: accounts.map((row) => ({
      id: row.id,
      name: row.name,
      kind: row.kind,
      currency: row.currency,
      balance: Number(row.credits) - Number(row.debits),
    })),
    transfers: transfers.map((row) => ({
      id: row.id,
      key: row.idempotency_key,
      debit: row.debit_account,
      credit: row.credit_account,
      amount: Number(row.amount),
      currency: row.currency,
      memo: row.memo,
      createdAt: row.created_at,
    })),
    charges: Object.fromEntries(
      totals.map((row) => [row.currency, { count: Number(row.count), amountMinor: Number(row.amount ?? 0) }]),
    ),
    orders,
  };
}

/** Registers the console, /metrics, /health and /ready on the subscription server's app (before ready). */
export function registerConsole(app: FastifyInstance, settings: ConsoleSettings): void {
  const assets = readAssets(settings.assetsDirectory ?? new URL('../../console/', import.meta.url));
  const live = new LiveView(settings.watch);
  const streams = new Set<FastifyReply>();
  let timer: NodeJS.Timeout | undefined;
  let polling = false;
  let latestStore: Awaited<ReturnType<typeof storeSnapshot>> | undefined;
  let closing = false;

  settings.metrics.addSampler(async () => ({
    role: 'serve',
    charges: (latestStore ?? (await storeSnapshot(settings.store))).charges,
  }));

  const snapshot = async () => {
    latestStore = await storeSnapshot(settings.store);
    return { at: new Date().toISOString(), live: live.endpoints, ...latestStore };
  };
  const tick = async () => {
    if (polling) {
      return;
    }
    polling = true;
    try {
      await live.poll();
      if (streams.size > 0) {
        const text = `event: snapshot\ndata: ${JSON.stringify(await snapshot())}\n\n`;
        for (const stream of streams) {
          if (stream.raw.writableLength > consoleStreamQueuedBytesMax) {
            // A client that stopped reading: its queue would grow without end. Closing it frees the
            // memory; a browser's EventSource reconnects and starts from a fresh snapshot.
            streams.delete(stream);
            stream.raw.destroy();
            continue;
          }
          stream.raw.write(text);
        }
      }
    } catch {
      // A store that does not answer this time: the next tick tries again, /ready says so.
    } finally {
      polling = false;
    }
  };
  if (settings.watch.length > 0) {
    timer = setInterval(() => void tick(), consolePollIntervalMs);
    timer.unref();
    void tick();
  }

  const hidden = { schema: { hide: true } };
  app.get<{ Params: { name?: string } }>('/console/:name?', hidden, async (request, reply) => {
    const asset = assets.get(request.params.name || 'index.html');
    if (asset === undefined) {
      return sendError(reply, 'not-found', `no console file ${request.params.name}`);
    }
    return reply.type(asset.type).header('cache-control', 'no-cache').send(asset.body);
  });
  const operator = { ...hidden, preHandler: settings.operatorOnly };
  app.get('/console/api/snapshot', operator, async () => {
    if (settings.watch.length === 0 || live.endpoints.every((endpoint) => endpoint.updatedAt === undefined)) {
      await live.poll();
    }
    return snapshot();
  });
  app.get('/console/api/settings', operator, async () => ({ roles: settings.settingsSchemas ?? {} }));
  app.get('/console/api/events', operator, async (request, reply) => {
    if (streams.size >= consoleStreamsMax) {
      return sendError(reply, 'unavailable', `${consoleStreamsMax} live streams are open; try again later`);
    }
    reply.hijack();
    reply.raw.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    try {
      reply.raw.write(`event: snapshot\ndata: ${JSON.stringify(await snapshot())}\n\n`);
    } catch (error) {
      reply.raw.end(`event: failure\ndata: ${JSON.stringify({ message: (error as Error).message })}\n\n`);
      return;
    }
    streams.add(reply);
    request.raw.once('close', () => streams.delete(reply));
    if (timer === undefined) {
      timer = setInterval(() => void tick(), consolePollIntervalMs);
      timer.unref();
    }
  });

  app.get('/metrics', hidden, async (_request, reply) =>
    reply.type(settings.metrics.contentType).send(await settings.metrics.text()),
  );
  app.get('/health', hidden, async () => ({ status: 'ok' }));
  app.get('/ready', hidden, async (_request, reply) => {
    let store: { ok: boolean; detail?: string };
    try {
      await settings.store.db.selectFrom('rates').select('name').limit(1).execute();
      store = { ok: true };
    } catch (error) {
      store = { ok: false, detail: `the store does not answer: ${(error as Error).message}` };
    }
    const ready = store.ok && !closing;
    return reply.code(ready ? 200 : 503).send({
      ready,
      checks: { store, listening: closing ? { ok: false, detail: 'stopping' } : { ok: true } },
    });
  });

  app.addHook('preClose', async () => {
    closing = true;
    clearInterval(timer);
    for (const stream of streams) {
      stream.raw.end();
    }
    streams.clear();
  });
}
