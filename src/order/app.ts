/**
 * The order role (flow D, docs/api.md "Ordering", docs/ordering.md) on the subscription server's
 * HTTP app: boxes (subscribers, authenticated by their own tokens) order, renew, cancel and list
 * channels; the operator defines links and services and reads who ordered what. The role keeps the
 * order book, the router drivers of the links it is elected for, the lease-expiry sweep and the
 * billing of orders by the rate card (through the billing role's interface).
 */
import { randomUUID } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { hostname } from 'node:os';
import { isAbsolute, posix } from 'node:path';
import { type Static, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { type Kysely, sql } from 'kysely';
import type { BillingService } from '../api/billing.js';
import {
  type ApiContext,
  allow,
  callerOf,
  ErrorBody,
  errorReplies,
  forbid,
  notFound,
  operatorOnly,
} from '../api/context.js';
import {
  orderBillingSweepMs,
  orderExpirySweepMs,
  orderLeaseMsDefault,
  orderListRowsDefault,
  orderListRowsMax,
} from '../limits.js';
import { canonicalAddress, formatEndpoint, isMulticast, parseGroup } from '../net/address.js';
import { sendError } from '../net/http-server.js';
import {
  CapacityFull,
  Link,
  LinkBody,
  LinkList,
  LinkRouter,
  NftablesRouter,
  Order,
  OrderBody,
  OrderList,
  OrderName,
  OrderQuery,
  OrderReport,
  OrderServiceList,
  OrderServiceSaved,
  RelayRouter,
  ServiceBody,
  SmcrouteRouter,
} from '../protocol/api-order.js';
import type { Schema } from '../store/database.js';
import { orderServiceColumns } from '../store/order-tables.js';
import { createOrderBook, type OrderBook, presentOrder } from './book.js';
import { type LinkDrivers, type ReconcileReport, type RouterDriver, startLinkDrivers } from './driver.js';
import { createNftablesDriver, nftablesTableName } from './nftables.js';
import { routerPlace } from './place.js';
import { createRelayDriver } from './relay.js';
import { createSmcrouteDriver } from './smcroute.js';
import { traceOrderStage } from './trace.js';

/** What the order role needs from the server it is part of. */
export interface OrderContext extends ApiContext {
  readonly billing: BillingService;
}

/** Settings of the order role. */
export interface OrderRoleOptions {
  /** How long an order lasts without a renewal. */
  readonly leaseMs?: number | undefined;
  /** This server's name in the driver election (default: host, pid and a random suffix). */
  readonly holder?: string | undefined;
  /** Builds a link's router driver (default: smcroute or relay, from the link's settings). */
  readonly makeDriver?: ((router: LinkRouter) => RouterDriver) | undefined;
  /** Told what each reconcile did (routes added or removed, errors). */
  readonly onRouterReport?: ((link: string, report: ReconcileReport) => void) | undefined;
  readonly onInternalError?: ((error: Error) => void) | undefined;
  /**
   * Drive routers, end expired leases and charge orders in the background (default true);
   * `gatecast admin --db` serves the routes only.
   */
  readonly background?: boolean | undefined;
  /** Overrides of the background periods (tests). */
  readonly driverPollMs?: number | undefined;
  readonly driftCheckMs?: number | undefined;
  readonly expirySweepMs?: number | undefined;
  readonly billingSweepMs?: number | undefined;
}

/** The running role, for tests and the CLI. */
export interface OrderRole {
  readonly book: OrderBook;
  readonly drivers: LinkDrivers;
  /** Charges the orders not charged yet; resolves to how many were charged. */
  chargeOrders(): Promise<number>;
}

const defaultDriver = (router: LinkRouter): RouterDriver =>
  router.kind === 'smcroute'
    ? createSmcrouteDriver(router)
    : router.kind === 'nftables'
      ? createNftablesDriver(router)
      : createRelayDriver(router);

/** Registers the order role's routes and starts its background work (stopped when the app closes). */
export function registerOrderRole(
  app: FastifyInstance,
  context: OrderContext,
  options: OrderRoleOptions = {},
): OrderRole {
  const { store } = context;
  let drivers: LinkDrivers | undefined;
  const book = createOrderBook(store, {
    leaseMs: options.leaseMs ?? orderLeaseMsDefault,
    onLinkChanged: (link) => drivers?.poke(link),
    prices: async () => {
      const card = await context.billing.currentRates();
      return { perOrder: card.channelOrderPerOrder, perHour: card.channelOrderPerHour };
    },
  });
  if (options.background === false) {
    const idle: LinkDrivers = {
      poke: () => undefined,
      pass: async () => undefined,
      held: () => [],
      close: async () => undefined,
      [Symbol.asyncDispose]: async () => undefined,
    };
    const chargeNothing = async () => 0;
    registerBoxRoutes(app, context, book);
    registerOperatorRoutes(app, context, idle);
    return { book, drivers: idle, chargeOrders: chargeNothing };
  }
  drivers = startLinkDrivers({
    store,
    book,
    holder: options.holder ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`,
    makeDriver: options.makeDriver ?? defaultDriver,
    onReport: options.onRouterReport,
    pollMs: options.driverPollMs,
    driftCheckMs: options.driftCheckMs,
  });
  const chargeOrders = createOrderCharger(context, options.onInternalError);
  const timers = [
    setInterval(() => {
      traceOrderStage('background-begun', undefined, () => 'expiry sweep');
      book
        .expire()
        .catch((error: Error) => options.onInternalError?.(error))
        .finally(() => traceOrderStage('background-done', undefined, () => 'expiry sweep'));
    }, options.expirySweepMs ?? orderExpirySweepMs),
    setInterval(() => {
      traceOrderStage('background-begun', undefined, () => 'billing of orders');
      chargeOrders()
        .catch((error: Error) => options.onInternalError?.(error))
        .finally(() => traceOrderStage('background-done', undefined, () => 'billing of orders'));
    }, options.billingSweepMs ?? orderBillingSweepMs),
  ];
  for (const timer of timers) {
    timer.unref();
  }
  app.addHook('onClose', async () => {
    for (const timer of timers) {
      clearInterval(timer);
    }
    await drivers?.close();
  });
  registerBoxRoutes(app, context, book);
  registerOperatorRoutes(app, context, drivers);
  return { book, drivers, chargeOrders };
}

const boxOnly = (context: OrderContext) => allow(context, ['subscriber'], 'only a box (a subscriber) orders');
const boxOrOperator = (context: OrderContext) =>
  allow(context, ['subscriber', 'operator'], 'only a box or the operator handles orders');
const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 100 }) });
const NameParams = Type.Object({ name: OrderName });

function registerBoxRoutes(app: FastifyInstance, context: OrderContext, book: OrderBook): void {
  app.post<{ Body: Static<typeof OrderBody> }>(
    '/v1/order/orders',
    {
      preHandler: boxOnly(context),
      schema: {
        body: OrderBody,
        response: { 200: Order, 201: Order, ...errorReplies, 409: Type.Union([CapacityFull, ErrorBody]) },
      },
    },
    async (request, reply) => {
      const box = callerOf(request).id;
      const outcome = await book.order(box, request.body.service);
      switch (outcome.kind) {
        case 'ordered':
          return reply.code(outcome.created ? 201 : 200).send(outcome.order);
        case 'unknown-service':
          return notFound(reply, outcome.message);
        case 'not-entitled':
          return sendError(reply, 'not-entitled', outcome.message);
        case 'preempted':
          // As a renewal of a pre-empted order is answered: it has ended.
          return sendError(reply, 'conflict', outcome.message);
        case 'capacity-full': {
          const { kind: _kind, ...body } = outcome;
          return reply.code(409).send({ error: 'capacity-full', ...body });
        }
      }
    },
  );
  app.post<{ Params: Static<typeof IdParams> }>(
    '/v1/order/orders/:id/renew',
    { preHandler: boxOnly(context), schema: { params: IdParams, response: { 200: Order, ...errorReplies } } },
    async (request, reply) => {
      const renewed = await book.renew(callerOf(request).id, request.params.id);
      if (renewed === undefined) {
        return notFound(reply, `no order ${request.params.id} of this box`);
      }
      if (renewed === 'ended') {
        return sendError(reply, 'conflict', `order ${request.params.id} has ended; order the service again`);
      }
      if ('kind' in renewed) {
        return sendError(reply, 'not-entitled', renewed.message);
      }
      return renewed;
    },
  );
  app.delete<{ Params: Static<typeof IdParams> }>(
    '/v1/order/orders/:id',
    {
      preHandler: boxOrOperator(context),
      schema: { params: IdParams, response: { 200: Order, ...errorReplies } },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const ended = await book.cancel(caller.kind === 'operator' ? undefined : caller.id, request.params.id);
      return ended === undefined ? notFound(reply, `no order ${request.params.id} of this box`) : ended;
    },
  );
  app.get<{ Querystring: Static<typeof OrderQuery> }>(
    '/v1/order/orders',
    {
      preHandler: boxOrOperator(context),
      schema: { querystring: OrderQuery, response: { 200: OrderList, ...errorReplies } },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const { box, service, state = 'active', limit } = request.query;
      if (caller.kind === 'subscriber' && box !== undefined && box !== caller.id) {
        return forbid(reply, 'a box reads only its own orders');
      }
      const rowsMax = Number(limit ?? orderListRowsDefault);
      if (rowsMax < 1 || rowsMax > orderListRowsMax) {
        return sendError(
          reply,
          'invalid-request',
          `querystring/limit: ${limit} is not between 1 and ${orderListRowsMax}`,
        );
      }
      const rows = await context.db
        .selectFrom('orders')
        .selectAll()
        .$if(caller.kind === 'subscriber' || box !== undefined, (query) =>
          query.where('box', '=', caller.kind === 'subscriber' ? caller.id : (box as string)),
        )
        .$if(service !== undefined, (query) => query.where('service', '=', service as string))
        .$if(state !== 'all', (query) => query.where('state', '=', state))
        .orderBy('created_at')
        .orderBy('id')
        .limit(rowsMax)
        .execute();
      return rows.map((row) => presentOrder(row));
    },
  );
  app.get(
    '/v1/order/services',
    { preHandler: boxOrOperator(context), schema: { response: { 200: OrderServiceList, ...errorReplies } } },
    async () => {
      const rows = await context.db
        .selectFrom('order_services')
        .leftJoin('order_active', 'order_active.service', 'order_services.name')
        .select(orderServiceColumns)
        .orderBy('order_services.name')
        .execute();
      return rows.map((row) => ({
        name: row.name,
        link: row.link,
        group: formatGroup(row.group_address, row.port),
        source: row.source_address,
        bitRate: Number(row.bit_rate),
        priority: row.priority,
        price: row.price,
        relayTo: row.relay_to,
        boxes: row.refcount === null ? 0 : Number(row.refcount),
        activeSince: row.activated_at,
      }));
    },
  );
}

const formatGroup = (address: string, port: number) =>
  formatEndpoint({ address, port, family: address.includes(':') ? 6 : 4 });

/** Parses a group field, answering 400 naming it. */
function groupField(reply: FastifyReply, text: string, field: string) {
  try {
    return parseGroup(text, field);
  } catch (error) {
    void sendError(reply, 'invalid-request', (error as Error).message);
    return undefined;
  }
}

/**
 * Why a link may not have this router: the smcroute driver keeps every route of its inbound
 * interface equal to its link's services, so another link on that daemon and inbound interface
 * would have its routes removed on every check. Undefined when the router is free.
 */
async function routerShared(trx: Kysely<Schema>, name: string, router: LinkRouter) {
  if (router.kind !== 'nftables' && router.kind !== 'smcroute') {
    return undefined;
  }
  const current = await trx
    .selectFrom('order_links')
    .select(['name', 'router_config'])
    .where('router', '=', router.kind)
    .where('name', '<>', name)
    .execute();
  // Routers other links left and that are not emptied yet (their server could not reach them):
  // the emptying would take this link's routes there away.
  const former = await trx
    .selectFrom('order_link_routers')
    .select(['link', 'router_config'])
    .where('link', '<>', name)
    .execute();
  const rows = [
    ...current.map((row) => ({ name: row.name, config: row.router_config, leaving: false })),
    ...former
      .filter(
        (row) => !current.some((link) => link.name === row.link && link.router_config === row.router_config),
      )
      .map((row) => ({ name: row.link, config: row.router_config, leaving: true })),
  ];
  for (const row of rows) {
    let other: unknown;
    try {
      other = JSON.parse(row.config);
    } catch {
      continue;
    }
    if (!Value.Check(LinkRouter, other)) {
      continue;
    }
    const clash = routerClash(router, other);
    if (clash !== undefined) {
      return row.leaving
        ? `body/router: link ${row.name} left that router (it ${clash.split(';')[0]}) and its routes there are not removed yet; try again once its order server has emptied it`
        : `body/router: link ${row.name} ${clash}`;
    }
  }
  return undefined;
}

/** What two links' routers share that one link's driving would undo for the other, or undefined. */
function routerClash(router: LinkRouter, other: LinkRouter): string | undefined {
  // One table, or one daemon and inbound interface however its socket's path is written.
  const samePlace = routerPlace(router) !== undefined && routerPlace(router) === routerPlace(other);
  if (router.kind === 'nftables' && other.kind === 'nftables') {
    if (samePlace) {
      const table = router.table ?? nftablesTableName(router.inbound, router.outbound);
      return `has the nftables table ${table}; a link needs its own (another table, or other interfaces)`;
    }
    // Two tables forwarding from one interface to the same other one are one link counted twice:
    // a group on both would go out twice, and each link's capacity would be half the truth.
    if (other.inbound === router.inbound && other.outbound === router.outbound) {
      return `already forwards from ${router.inbound} to ${router.outbound} with nftables; put the channels on that link`;
    }
    return undefined;
  }
  if (router.kind === 'smcroute' && samePlace) {
    return `has smcrouted ${router.socket} with inbound ${router.inbound}; a link needs its own (another daemon or inbound interface)`;
  }
  return undefined;
}

/** Why a service's source cannot be one (no unicast address of the group's family, or one no packet comes from). */
function sourceRefusal(source: string, family: 4 | 6): string | undefined {
  const unsourced = unsourcedAddress(source);
  return (
    unicastRefusal(source, 'body/source', family) ??
    (unsourced === undefined
      ? undefined
      : `body/source: "${source}" is ${unsourced}, which no packet comes from`)
  );
}

/** The advisory lock a change of a link's router takes on PostgreSQL (any constant of our own). */
const linkRouterLockKey = 0x6763_6f72; // "gcor"

/**
 * What kind of address a source is that no packet comes from, or undefined: unspecified, "this
 * network" (0.0.0.0/8), reserved (240.0.0.0/4) or the broadcast address.
 */
function unsourcedAddress(text: string): string | undefined {
  const canonical = canonicalAddress(text);
  if (canonical === '0.0.0.0' || canonical === '::') {
    return 'the unspecified address';
  }
  if (!isIPv4(canonical)) {
    return undefined;
  }
  const first = Number(canonical.split('.')[0]);
  return first === 0
    ? 'an address of "this network" (0.0.0.0/8)'
    : canonical === '255.255.255.255'
      ? 'the broadcast address'
      : first >= 240
        ? 'a reserved address (240.0.0.0/4)'
        : undefined;
}

/** A unicast address (of the family given, when given); its message names the field, else undefined. */
function unicastRefusal(text: string, field: string, family?: 4 | 6): string | undefined {
  const of = isIPv4(text) ? 4 : isIPv6(text) ? 6 : undefined;
  if (of === undefined || isMulticast(text)) {
    return `${field}: "${text}" is not a unicast IP address`;
  }
  // ::ffff:a.b.c.d and ::a.b.c.d name IPv4 hosts: no IPv6 packet comes from them, and a router
  // shows them in another form than stored.
  // So do ::ffff:0:a.b.c.d (IPv4-translated, RFC 2765).
  if (of === 6 && /^::(ffff:(0:)?)?[0-9a-f]{1,4}:[0-9a-f]{1,4}$/.test(canonicalAddress(text))) {
    return `${field}: "${text}" is an IPv4 address written as IPv6; write it as IPv4 (of an IPv4 group)`;
  }
  return family === undefined || of === family
    ? undefined
    : `${field}: "${text}" is not an address of the group's family (IPv${family})`;
}

/**
 * Why a service's group (address, no port) and relay group (GROUP:PORT or null) do not fit a link's
 * router: a multicast router forwards a channel on its own group, and a relay joins and sends in
 * the family of its interface addresses. Undefined when they fit.
 */
function routerMisfit(
  router: LinkRouter,
  group: string,
  relayTo: string | null,
  source: string | null,
): { field: 'group' | 'relayTo' | 'source'; reason: string } | undefined {
  if (router.kind !== 'relay' && linkLocal(group)) {
    return {
      field: 'group',
      reason: `${group} is a link-local (or narrower, or reserved-scope) group, which a router never forwards`,
    };
  }
  const local = source === null || router.kind === 'relay' ? undefined : hostLocalSource(source);
  if (local !== undefined) {
    return { field: 'source', reason: `${source} is ${local}, which a router never forwards from` };
  }
  if (router.kind !== 'relay') {
    return relayTo === null
      ? undefined
      : {
          field: 'relayTo',
          reason:
            'a multicast router forwards a channel on its own group; only a relay link sends it on another',
        };
  }
  const family = isIPv6(router.inbound) ? 6 : 4;
  if ((isIPv6(group) ? 6 : 4) !== family) {
    return {
      field: 'group',
      reason: `the link relays IPv${family} (its addresses ${router.inbound}, ${router.outbound})`,
    };
  }
  if (relayTo !== null && parseGroup(relayTo, 'relayTo').family !== family) {
    return {
      field: 'relayTo',
      reason: `the link relays IPv${family} (its addresses ${router.inbound}, ${router.outbound})`,
    };
  }
  return undefined;
}

const routerKinds = { smcroute: SmcrouteRouter, nftables: NftablesRouter, relay: RelayRouter } as const;

/**
 * A link body's router of a known kind, checked against that kind's schema alone, naming the
 * field: checked against the union of kinds, an nftables link with a bad table was answered
 * "must have required property 'socket'", a field of another kind.
 */
function routerBodyError(body: unknown): string | undefined {
  const router =
    typeof body === 'object' && body !== null ? (body as Record<string, unknown>).router : undefined;
  const kind =
    typeof router === 'object' && router !== null ? (router as Record<string, unknown>).kind : undefined;
  if (router === undefined) {
    return undefined; // the schema says it is required
  }
  if (typeof router !== 'object' || router === null || Array.isArray(router)) {
    return `body/router: must be an object with a kind (${Object.keys(routerKinds).join(', ')})`;
  }
  if (typeof kind !== 'string' || !Object.hasOwn(routerKinds, kind)) {
    return `body/router/kind: must be one of ${Object.keys(routerKinds).join(', ')}`;
  }
  const error = Value.Errors(routerKinds[kind as keyof typeof routerKinds], router).First();
  return error === undefined ? undefined : `body/router${error.path}: ${error.message}`;
}

/** Whether a stored router_config is the router of config (routerConfig's form). */
function sameRouter(stored: string, config: string): boolean {
  try {
    const router = JSON.parse(stored) as unknown;
    return Value.Check(LinkRouter, router) && routerConfig(router) === config;
  } catch {
    return false;
  }
}

/**
 * What kind of address a source is that no router forwards a packet from (a loopback address
 * never arrives on an interface; a link-local one stays on its link), or undefined.
 */
function hostLocalSource(source: string): string | undefined {
  if (isIPv6(source)) {
    const canonical = canonicalAddress(source);
    if (canonical === '::1') {
      return 'a loopback address';
    }
    return (Number.parseInt(canonical.split(':')[0] || '0', 16) & 0xffc0) === 0xfe80
      ? 'a link-local address (fe80::/10)'
      : undefined;
  }
  return source.startsWith('127.')
    ? 'a loopback address'
    : source.startsWith('169.254.')
      ? 'a link-local address (169.254.0.0/16)'
      : undefined;
}

/**
 * A group no router forwards: IPv4 224.0.0.0/24 (the local network control block, RFC 5771) and
 * IPv6 groups of scope 0, 1, 2 or F (reserved, interface-local, link-local, reserved; RFC 4291).
 */
function linkLocal(group: string): boolean {
  if (isIPv6(group)) {
    const scope = Number.parseInt(canonicalAddress(group).slice(3, 4), 16);
    return scope <= 2 || scope === 0xf;
  }
  return group.startsWith('224.0.0.');
}

/**
 * A link's router as stored: its fields in one order (an nftables table named as the default is
 * left out), so the same router sent again with its keys in another order is not a change, which
 * would take every route down and put it back.
 */
export function routerConfig(router: LinkRouter): string {
  switch (router.kind) {
    case 'smcroute':
      return JSON.stringify({
        kind: router.kind,
        socket: posix.normalize(router.socket),
        inbound: router.inbound,
        outbound: router.outbound,
      });
    case 'nftables':
      return JSON.stringify({
        kind: router.kind,
        inbound: router.inbound,
        outbound: router.outbound,
        ...(router.table === undefined || router.table === nftablesTableName(router.inbound, router.outbound)
          ? {}
          : { table: router.table }),
      });
    case 'relay':
      return JSON.stringify({
        kind: router.kind,
        inbound: router.inbound,
        outbound: router.outbound,
        ...(router.ttl === undefined ? {} : { ttl: router.ttl }),
      });
  }
}

/** Where a relay sends a service, in one text form: its relay group, or its own group and port. */
function relayOutput(group: string, port: number, relayTo: string | null): string {
  const endpoint =
    relayTo === null
      ? { address: group, port, family: isIPv6(group) ? (6 as const) : (4 as const) }
      : parseGroup(relayTo, 'relayTo');
  return formatEndpoint({ ...endpoint, address: canonicalAddress(endpoint.address) });
}

/**
 * The service of the link (other than name) a relay would send on the same group and port as this
 * one: it sends every channel from its one outbound address, so boxes could not tell them apart.
 */
function relayOutputShared(
  services: ReadonlyArray<{ name: string; group_address: string; port: number; relay_to: string | null }>,
  name: string,
  output: string,
) {
  return services.find(
    (other) => other.name !== name && relayOutput(other.group_address, other.port, other.relay_to) === output,
  );
}

/**
 * Why the services a link has now do not fit a router it is changed to (docs/ordering.md "Links"),
 * naming the service; undefined when they all fit.
 */
async function servicesMisfit(trx: Kysely<Schema>, name: string, router: LinkRouter) {
  const services = await trx
    .selectFrom('order_services')
    .select(['name', 'group_address', 'port', 'source_address', 'relay_to'])
    .where('link', '=', name)
    .orderBy('name')
    .execute();
  for (const service of services) {
    const misfit = routerMisfit(router, service.group_address, service.relay_to, service.source_address);
    if (misfit !== undefined) {
      return `body/router: service ${service.name} of link ${name} does not fit it (${misfit.field}): ${misfit.reason}`;
    }
    const output = relayOutput(service.group_address, service.port, service.relay_to);
    const sameOutput =
      router.kind === 'relay' ? relayOutputShared(services, service.name, output) : undefined;
    if (sameOutput !== undefined) {
      return `body/router: services ${service.name} and ${sameOutput.name} of link ${name} would both go out on ${output}`;
    }
    // A router carries a group as one, whatever the port: (S,G) of two sources are two channels.
    const sharing =
      router.kind !== 'relay' &&
      services.find(
        (other) =>
          other.name !== service.name &&
          other.group_address === service.group_address &&
          (other.source_address === null ||
            service.source_address === null ||
            other.source_address === service.source_address),
      );
    if (sharing) {
      return `body/router: services ${service.name} and ${sharing.name} of link ${name} are on one group, which a router carries as one`;
    }
  }
  return undefined;
}

function registerOperatorRoutes(app: FastifyInstance, context: OrderContext, drivers: LinkDrivers): void {
  const { db, store } = context;
  const operator = operatorOnly(context, 'only the operator defines links and services and reads reports');
  const presentLinks = async () => {
    const rows = await db.selectFrom('order_links').selectAll().orderBy('name').execute();
    const leases = await db.selectFrom('order_driver_leases').selectAll().execute();
    const now = Date.now();
    return rows.map((row) => {
      const lease = leases.find(
        (candidate) => candidate.link === row.name && Number(candidate.expires_at_ms) > now,
      );
      return {
        name: row.name,
        capacity: Number(row.capacity_bits),
        used: Number(row.used_bits),
        router: JSON.parse(row.router_config) as LinkRouter,
        policy: row.policy,
        driver:
          lease === undefined
            ? null
            : { holder: lease.holder, until: new Date(Number(lease.expires_at_ms)).toISOString() },
      };
    });
  };
  app.put<{ Params: Static<typeof NameParams>; Body: Static<typeof LinkBody> }>(
    '/v1/order/links/:name',
    {
      preValidation: async (request, reply) => {
        const error = routerBodyError(request.body);
        if (error !== undefined) {
          return sendError(reply, 'invalid-request', error);
        }
      },
      preHandler: operator,
      schema: { params: NameParams, body: LinkBody, response: { 200: Link, ...errorReplies } },
    },
    async (request, reply) => {
      const { name } = request.params;
      const body = request.body;
      if (body.router.kind === 'relay') {
        const { inbound, outbound } = body.router;
        const notAnInterface = (address: string, field: string) => {
          const kind = unsourcedAddress(address);
          return kind === undefined
            ? undefined
            : `${field}: "${address}" is ${kind}, not the address of an interface`;
        };
        const refusal =
          unicastRefusal(inbound, 'body/router/inbound') ??
          unicastRefusal(outbound, 'body/router/outbound') ??
          notAnInterface(inbound, 'body/router/inbound') ??
          notAnInterface(outbound, 'body/router/outbound') ??
          (isIPv6(inbound) === isIPv6(outbound)
            ? undefined
            : `body/router/outbound: "${outbound}" is not of the family of the inbound address ${inbound}; a relay sends in the family it receives`);
        if (refusal !== undefined) {
          return sendError(reply, 'invalid-request', refusal);
        }
      }
      if (body.router.kind === 'smcroute' && !isAbsolute(body.router.socket)) {
        return sendError(
          reply,
          'invalid-request',
          `body/router/socket: "${body.router.socket}" is not an absolute path; every order server must find the same daemon`,
        );
      }
      if (body.router.kind !== 'relay' && body.router.inbound === body.router.outbound) {
        return sendError(
          reply,
          'invalid-request',
          `body/router/outbound: "${body.router.outbound}" is the inbound interface; a router forwards a channel out of another`,
        );
      }
      const iso = new Date().toISOString();
      const canonical = routerConfig(body.router);
      const outcome = await store.writeTransaction(async (trx) => {
        // Links' routers change one at a time across servers: two new links on PostgreSQL could
        // each find the other's router free (rows that do not exist yet cannot be locked).
        if (store.dialect === 'postgres') {
          await sql`select pg_advisory_xact_lock(${linkRouterLockKey})`.execute(trx);
        }
        const existing = await trx
          .selectFrom('order_links')
          .select(['used_bits', 'router_config'])
          .where('name', '=', name)
          .$if(store.dialect === 'postgres', (query) => query.forUpdate())
          .executeTakeFirst();
        const shared = await routerShared(trx, name, body.router);
        if (shared !== undefined) {
          return shared;
        }
        // The router as stored already (in whatever form an older server stored it) when it is
        // the same router: no change, so nothing is taken down and put back.
        const config =
          existing !== undefined && sameRouter(existing.router_config, canonical)
            ? existing.router_config
            : canonical;
        if (existing === undefined) {
          await trx
            .insertInto('order_links')
            .values({
              name,
              capacity_bits: body.capacity,
              used_bits: 0,
              router: body.router.kind,
              router_config: config,
              policy: body.policy ?? 'reject',
              version: 0,
              created_at: iso,
              updated_at: iso,
            })
            .execute();
          return 'ok';
        }
        const misfit = await servicesMisfit(trx, name, body.router);
        if (misfit !== undefined) {
          return misfit;
        }
        if (Number(existing.used_bits) > body.capacity) {
          return `body/capacity: ${body.capacity} bit/s is below the ${existing.used_bits} bit/s in use on ${name}; cancel orders first`;
        }
        await trx
          .updateTable('order_links')
          .set((eb) => ({
            capacity_bits: body.capacity,
            router: body.router.kind,
            router_config: config,
            policy: body.policy ?? 'reject',
            updated_at: iso,
            version: eb('version', '+', 1),
          }))
          .where('name', '=', name)
          .execute();
        return 'ok';
      });
      if (outcome !== 'ok') {
        return sendError(reply, 'conflict', outcome);
      }
      drivers.poke(name);
      return (await presentLinks()).find((link) => link.name === name);
    },
  );
  app.get(
    '/v1/order/links',
    { preHandler: operator, schema: { response: { 200: LinkList, ...errorReplies } } },
    presentLinks,
  );
  app.put<{ Params: Static<typeof NameParams>; Body: Static<typeof ServiceBody> }>(
    '/v1/order/services/:name',
    {
      preHandler: operator,
      schema: {
        params: NameParams,
        body: ServiceBody,
        response: { 200: OrderServiceSaved, ...errorReplies },
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      const body = request.body;
      const group = groupField(reply, body.group, 'body/group');
      if (group === undefined) {
        return reply;
      }
      if (body.relayTo !== undefined && groupField(reply, body.relayTo, 'body/relayTo') === undefined) {
        return reply;
      }
      // The router is asked for (S,G) as stored: an address it cannot route, or written otherwise
      // than it shows routes, would be tried again (or removed and added again) on every check.
      const refusal = body.source === undefined ? undefined : sourceRefusal(body.source, group.family);
      if (refusal !== undefined) {
        return sendError(reply, 'invalid-request', refusal);
      }
      const iso = new Date().toISOString();
      const outcome = await store.writeTransaction(async (trx) => {
        // A service changes with its links locked, the one it leaves too (in name order, as orders
        // lock them): an order waiting for its link then reads the service as it is.
        const previous = await trx
          .selectFrom('order_services')
          .select('link')
          .where('name', '=', name)
          .executeTakeFirst();
        if (store.dialect === 'postgres') {
          await trx
            .selectFrom('order_links')
            .select('name')
            .where('name', 'in', [...new Set([body.link, previous?.link ?? body.link])].sort())
            .orderBy('name')
            .forUpdate()
            .execute();
        }
        const link = await trx
          .selectFrom('order_links')
          .select(['name', 'router', 'router_config'])
          .where('name', '=', body.link)
          .$if(store.dialect === 'postgres', (query) => query.forUpdate())
          .executeTakeFirst();
        if (link === undefined) {
          return { status: 'not-found' as const, message: `body/link: no link ${body.link}` };
        }
        const misfit = routerMisfit(
          JSON.parse(link.router_config) as LinkRouter,
          group.address,
          body.relayTo ?? null,
          body.source ?? null,
        );
        if (misfit !== undefined) {
          return {
            status: 'invalid-request' as const,
            message: `body/${misfit.field}: does not fit link ${body.link}: ${misfit.reason}`,
          };
        }
        // A router forwards a group whatever its port (a relay joins each group on its port): a
        // second service there, from the same source or any, would be carried with the first,
        // unordered and uncounted.
        const sharing = await trx
          .selectFrom('order_services')
          .select(['name', 'port'])
          .where('link', '=', body.link)
          .where('group_address', '=', group.address)
          .where('name', '<>', name)
          .$if(link.router === 'relay', (query) => query.where('port', '=', group.port))
          // (S,G) routes of two sources are two channels; a (*,G) route carries every source.
          .$if(body.source !== undefined, (query) =>
            query.where((eb) =>
              eb.or([
                eb('source_address', 'is', null),
                eb('source_address', '=', canonicalAddress(body.source as string)),
              ]),
            ),
          )
          .executeTakeFirst();
        if (sharing !== undefined) {
          return {
            status: 'conflict' as const,
            message: `body/group: ${body.group} is on the group of service ${sharing.name} (port ${sharing.port}) on link ${body.link}, which carries a group as one`,
          };
        }
        if (link.router === 'relay') {
          const output = relayOutput(group.address, group.port, body.relayTo ?? null);
          const others = await trx
            .selectFrom('order_services')
            .select(['name', 'group_address', 'port', 'relay_to'])
            .where('link', '=', body.link)
            .execute();
          const sameOutput = relayOutputShared(others, name, output);
          if (sameOutput !== undefined) {
            return {
              status: 'conflict' as const,
              message: `body/relayTo: service ${sameOutput.name} of link ${body.link} goes out on ${output} already; a relay sends every channel from one address`,
            };
          }
        }
        const active = await trx
          .selectFrom('order_active')
          .select('link')
          .where('service', '=', name)
          .executeTakeFirst();
        if (active !== undefined) {
          return {
            status: 'conflict' as const,
            message: `service ${name} is on the air (ordered now); its orders must end before it changes`,
          };
        }
        const values = {
          link: body.link,
          group_address: group.address,
          port: group.port,
          source_address: body.source === undefined ? null : canonicalAddress(body.source),
          bit_rate: body.bitRate,
          priority: body.priority ?? 0,
          price: body.price ?? 'per-order',
          relay_to: body.relayTo ?? null,
          updated_at: iso,
        };
        const known = await trx
          .selectFrom('order_services')
          .select('name')
          .where('name', '=', name)
          .executeTakeFirst();
        if (known === undefined) {
          await trx
            .insertInto('order_services')
            .values({ name, ...values, created_at: iso })
            .execute();
        } else {
          await trx.updateTable('order_services').set(values).where('name', '=', name).execute();
        }
        return { status: 'ok' as const, message: '' };
      });
      if (outcome.status !== 'ok') {
        return sendError(reply, outcome.status, outcome.message);
      }
      return { name };
    },
  );
  app.get(
    '/v1/order/report',
    { preHandler: operator, schema: { response: { 200: OrderReport, ...errorReplies } } },
    async () => {
      const active = await db.selectFrom('order_active').selectAll().orderBy('service').execute();
      const links = await db
        .selectFrom('order_links')
        .select(['name', 'capacity_bits', 'used_bits'])
        .orderBy('name')
        .execute();
      const counts = await db
        .selectFrom('orders')
        .select(['state', (eb) => eb.fn.countAll<number | string>().as('count')])
        .groupBy('state')
        .execute();
      const count = (state: string) => Number(counts.find((row) => row.state === state)?.count ?? 0);
      return {
        at: new Date().toISOString(),
        services: active.map((row) => ({
          service: row.service,
          link: row.link,
          boxes: Number(row.refcount),
          activeSince: row.activated_at,
          bitRate: Number(row.bit_rate),
          priority: row.priority,
        })),
        links: links.map((row) => ({
          link: row.name,
          capacity: Number(row.capacity_bits),
          used: Number(row.used_bits),
        })),
        orders: {
          active: count('active'),
          cancelled: count('cancelled'),
          expired: count('expired'),
          preempted: count('preempted'),
        },
      };
    },
  );
}

/**
 * Charges orders by the rate card, at the prices it had when each order was admitted (kept with
 * the order): a service priced per order is charged once per order
 * (`channel-orders`, key `order/{id}`), one priced per hour when the order ends, for how long it was
 * held (`channel-order-seconds`, key `order-end/{id}`); a subscription is the monthly billing run's.
 * An order is marked charged only after the ledger took the charge, so a failure is retried and the
 * idempotency key keeps a retry from charging twice.
 */
function createOrderCharger(context: OrderContext, onError?: (error: Error) => void) {
  let running: Promise<number> | undefined;
  const charge = async (): Promise<number> => {
    const rows = await context.db
      .selectFrom('orders')
      .innerJoin('order_services', 'order_services.name', 'orders.service')
      .select([
        'orders.id',
        'orders.box',
        'orders.state',
        'orders.created_at',
        'orders.ended_at',
        'orders.unit_price',
        // By the kind of price of the order's admission (orders from before it was kept: the
        // service's of now).
        (eb) => eb.fn.coalesce('orders.price', 'order_services.price').as('price'),
      ])
      .where('orders.charged', '=', 0)
      // A per-hour order is charged when it ends: those still held would fill every batch.
      .where((eb) =>
        eb.or([
          eb(eb.fn.coalesce('orders.price', 'order_services.price'), '<>', 'per-hour'),
          eb('orders.state', '<>', 'active'),
        ]),
      )
      .limit(500)
      .execute();
    let charged = 0;
    for (const row of rows) {
      let usage:
        | { kind: 'channel-orders' | 'channel-order-seconds'; quantity: number; key: string }
        | undefined;
      if (row.price === 'per-order') {
        usage = { kind: 'channel-orders', quantity: 1, key: `order/${row.id}` };
      } else if (row.price === 'per-hour' && row.state !== 'active' && row.ended_at !== null) {
        const seconds = Math.max(
          1,
          Math.ceil((Date.parse(row.ended_at) - Date.parse(row.created_at)) / 1000),
        );
        usage = { kind: 'channel-order-seconds', quantity: seconds, key: `order-end/${row.id}` };
      } else if (row.price !== 'per-hour') {
        usage = undefined; // nothing to charge per order
      } else {
        continue; // per hour, still held
      }
      try {
        if (usage !== undefined) {
          // At the price of the rate card when the order was admitted (orders from before prices
          // were kept: the card's of now).
          await context.billing.chargeUsage(
            usage.key,
            { account: row.box, kind: usage.kind, quantity: usage.quantity },
            undefined,
            { price: row.unit_price === null ? undefined : Number(row.unit_price) },
          );
          charged += 1;
        }
        await context.db.updateTable('orders').set({ charged: 1 }).where('id', '=', row.id).execute();
      } catch (error) {
        onError?.(error as Error);
      }
    }
    return charged;
  };
  return () => {
    running ??= charge().finally(() => {
      running = undefined;
    });
    return running;
  };
}
