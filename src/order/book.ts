/**
 * The order book (flow D, docs/ordering.md): admission of a box's order in one store transaction —
 * an idempotent order insert, a refcount upsert on the active service, and a capacity update on the
 * link only when the service becomes active — plus renewals, cancels, lease expiry and pre-emption.
 * Every change of what a link should carry happens with the link's row locked (PostgreSQL: SELECT …
 * FOR UPDATE; SQLite: BEGIN IMMEDIATE takes the one write lock), so two order servers sharing one
 * store can never overbook a link, and the refcount always equals the active orders.
 *
 * Admissions that arrive together are decided as one batch in one transaction (group commit, as
 * usage does in billing) with a few set-based statements, not a few per order: the entitlements of
 * all its boxes in one query, its links locked once, each order decided in memory in arrival order
 * exactly as it would be alone, then one refcount upsert, one capacity update per link and one
 * multi-row insert. Cancels and expiries are ended as a batch the same way, and orders and endings
 * that arrive together share one transaction (the endings first, then the orders): one commit, one
 * flush to disk and one hold of the link's lock for both. If a batch's transaction fails, each of
 * its requests is run again in a transaction of its own, so one failing request (a deadlock between
 * two servers, a constraint) fails only itself.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { type Kysely, type OperationNodeSource, sql } from 'kysely';
import { orderGroupCommitMax } from '../limits.js';
import type { CapacityFull, LinkPolicy, Order, OrderPrice, OrderState } from '../protocol/api-order.js';
import type { Schema, Store } from '../store/database.js';
import { traceOrderStage } from './trace.js';

/** A service as admission reads it. */
interface ServiceRow {
  name: string;
  link: string;
  bit_rate: number;
  priority: number;
  price: OrderPrice;
}

/** The outcome of an order. */
export type AdmitOutcome =
  | {
      readonly kind: 'ordered';
      readonly order: Order;
      readonly created: boolean;
      /** The service was not active before this order: the link's routes change. */
      readonly activated: boolean;
      readonly preempted: string[];
    }
  | {
      /**
       * Admitted and pre-empted in the same batch by a higher-priority order: the order has ended
       * (state preempted), as a renewal of it would say.
       */
      readonly kind: 'preempted';
      readonly order: Order;
      readonly message: string;
    }
  | ({ readonly kind: 'capacity-full' } & Omit<CapacityFull, 'error'>)
  | { readonly kind: 'unknown-service'; readonly message: string }
  | { readonly kind: 'not-entitled'; readonly message: string };

/** The rate card's prices of orders (minor units), kept with each order when it is admitted. */
export interface OrderPrices {
  readonly perOrder: number;
  readonly perHour: number;
}

/** Settings of the book. */
export interface OrderBookOptions {
  /** How long an order lasts without a renewal. */
  readonly leaseMs: number;
  /** Wall clock in ms (Date.now in production; a test can move it). */
  readonly now?: () => number;
  /** Told the link whose routed set changed (a driver reconciles it at once). */
  readonly onLinkChanged?: (link: string) => void;
  /** Steps in one group commit (default orderGroupCommitMax; 1 writes each in its own transaction). */
  readonly groupCommitMax?: number;
  /** The rate card's prices in force (read when an order is requested); none kept when absent. */
  readonly prices?: () => Promise<OrderPrices>;
}

/** The order book over a store. */
export interface OrderBook {
  /** Admits (or finds) the box's order for the service. */
  order(box: string, service: string): Promise<AdmitOutcome>;
  /**
   * Extends the lease of an active order of this box whose lease has not run out, while the box is
   * still entitled to the service; undefined when there is no such order of this box.
   */
  renew(box: string, id: string): Promise<Order | 'ended' | RenewRefused | undefined>;
  /** Ends an order (a box's own, or any for the operator); ending an ended order returns it. */
  cancel(box: string | undefined, id: string): Promise<Order | undefined>;
  /** Ends the orders whose lease ran out; returns how many. */
  expire(): Promise<number>;
  /** The services a link should carry now. */
  desired(link: string): Promise<RouteWanted[]>;
}

/** A renewal refused: the box's entitlement to the service has ended (the order runs out with its lease). */
export interface RenewRefused {
  readonly kind: 'not-entitled';
  readonly message: string;
}

/** A service a link carries. */
export interface RouteWanted {
  readonly service: string;
  /** The group address (no port). */
  readonly group: string;
  readonly port: number;
  readonly source: string | null;
  readonly relayTo: string | null;
}

type OrderRow = Schema['orders'];

/** An order row as the API shows it. */
export function presentOrder(row: OrderRow, created?: boolean): Order {
  return {
    id: row.id,
    box: row.box,
    service: row.service,
    link: row.link,
    state: row.state as OrderState,
    createdAt: row.created_at,
    renewedAt: row.renewed_at,
    expiresAt: new Date(Number(row.expires_at_ms)).toISOString(),
    endedAt: row.ended_at,
    ...(created === undefined ? {} : { created }),
  };
}

/**
 * Group commit of one kind of request, decided together: requests that arrive while a batch is being
 * written wait for the next one, which runs them all (up to itemsMax, in arrival order) through
 * runBatch in one transaction. If that transaction fails, each request runs again as a batch of its
 * own, so one failing request fails only itself.
 */
export function createBatchCommitter<In, Out>(
  store: Store,
  itemsMax: number,
  runBatch: (trx: Kysely<Schema>, items: readonly In[]) => Promise<Out[]>,
) {
  let queue: Array<{ item: In; resolve: (value: Out) => void; reject: (error: Error) => void }> = [];
  let writing = false;
  const write = async (group: typeof queue) => {
    traceOrderStage('batch-queued', undefined, () => String(group.length));
    const results = await store.writeTransaction((trx) => {
      traceOrderStage('batch-begun');
      return runBatch(
        trx,
        group.map((one) => one.item),
      );
    });
    traceOrderStage('batch-committed');
    assert.equal(results.length, group.length);
    for (const [i, one] of group.entries()) {
      one.resolve(results[i] as Out);
    }
  };
  const drain = async () => {
    while (queue.length > 0) {
      const group = queue.slice(0, itemsMax);
      queue = queue.slice(group.length);
      try {
        await write(group);
      } catch (error) {
        if (group.length === 1) {
          group[0]?.reject(error as Error);
          continue;
        }
        // Rolled back as a whole: nothing of it was written. Each alone, so only a failing one fails.
        for (const one of group) {
          await write([one]).catch((alone: unknown) => one.reject(alone as Error));
        }
      }
    }
    writing = false;
  };
  return (item: In): Promise<Out> =>
    new Promise<Out>((resolve, reject) => {
      queue.push({ item, resolve, reject });
      if (!writing) {
        writing = true;
        setImmediate(() => void drain()); // gather what arrives in this turn of the event loop
      }
    });
}

/** An order as a batch takes it. */
interface Wanted {
  readonly box: string;
  readonly service: string;
  /** The rate card's prices when it was requested. */
  readonly prices?: OrderPrices | undefined;
}

/** An order to end: a box's cancel (box set, its own orders only), an operator's cancel or an expiry. */
interface Ending {
  readonly id: string;
  readonly box: string | undefined;
  readonly state: OrderState;
  readonly endedAtMs?: number;
}

/** An ended order (or the row as it is), and the link whose routed set changed, if it did. */
interface Ended {
  readonly row: Schema['orders'] | undefined;
  readonly changedLink: string | undefined;
}

/** One request of a group commit: an order, or the end of one. */
type Step =
  | { readonly kind: 'order'; readonly wanted: Wanted }
  | { readonly kind: 'end'; readonly ending: Ending };
/** What a step came to. */
type StepResult =
  | { readonly kind: 'order'; readonly outcome: AdmitOutcome }
  | { readonly kind: 'end'; readonly ended: Ended };

/** A service a link carries, as a capacity-full refusal lists it. */
type InUse = CapacityFull['inUse'][number];

/** A write statement of a batch. */
type Statement = OperationNodeSource & { execute(): Promise<unknown> };

/**
 * Runs a batch's write statements, which must each touch rows none of the others touch: on
 * PostgreSQL as one statement (data-modifying WITH clauses, one round trip instead of one each); on
 * SQLite, in process, one after another.
 */
async function writeTogether(
  trx: Kysely<Schema>,
  dialect: Store['dialect'],
  statements: readonly Statement[],
): Promise<void> {
  if (statements.length === 0) {
    return;
  }
  if (statements.length === 1 || dialect !== 'postgres') {
    for (const statement of statements) {
      await statement.execute();
    }
    return;
  }
  const clauses = statements.map((statement, i) => sql`${sql.raw(`w${i}`)} as (${statement})`);
  await sql`with ${sql.join(clauses)} select 1 as written`.execute(trx);
}

/** Builds the book. */
export function createOrderBook(store: Store, options: OrderBookOptions): OrderBook {
  const now = options.now ?? Date.now;
  const groupCommitMax = options.groupCommitMax ?? orderGroupCommitMax;
  const changed = (links: Iterable<string>) => {
    for (const link of links) {
      options.onLinkChanged?.(link);
    }
  };

  /** Why each box may not order its service (undefined: entitled), for a batch in one query. */
  const entitlementRefusals = async (
    trx: Kysely<Schema>,
    wanted: ReadonlyArray<{ box: string; service: string }>,
  ): Promise<Array<string | undefined>> => {
    const boxes = [...new Set(wanted.map((one) => one.box))];
    const rows =
      boxes.length === 0
        ? []
        : await trx
            .selectFrom('entitlements')
            .select(['subscriber', 'session', 'valid_from', 'valid_to'])
            .where('subscriber', 'in', boxes)
            .where('service', '=', 'channel')
            .execute();
    const at = now();
    return wanted.map(({ box, service }) => {
      const matching = rows.filter(
        (row) => row.subscriber === box && (row.session === null || row.session === service),
      );
      if (matching.length === 0) {
        return `no channel entitlement for ${service}`;
      }
      const current = matching.some(
        (row) =>
          (row.valid_from === null || Date.parse(row.valid_from) <= at) &&
          (row.valid_to === null || at < Date.parse(row.valid_to)),
      );
      return current ? undefined : `the channel entitlement for ${service} is outside its validity window`;
    });
  };

  /** Makes room for a service on a full link; the services to drop, or undefined if none suffice. */
  const chooseVictims = (
    active: readonly InUse[],
    service: ServiceRow,
    free: number,
  ): InUse[] | undefined => {
    // Lowest priority first (active is ordered by priority, then name, so the choice is stable).
    const lower = active.filter((row) => row.priority < service.priority);
    const victims: InUse[] = [];
    let room = free;
    for (const row of lower) {
      if (room >= service.bit_rate) {
        break;
      }
      victims.push(row);
      room += row.bitRate;
    }
    return room >= service.bit_rate ? victims : undefined;
  };

  /** The services of these names, as admission decides by them. */
  const readServices = async (trx: Kysely<Schema>, names: readonly string[]) =>
    new Map(
      (
        await trx
          .selectFrom('order_services')
          .select(['name', 'link', 'bit_rate', 'priority', 'price'])
          .where('name', 'in', names)
          .execute()
      ).map((row) => [
        row.name,
        { ...row, bit_rate: Number(row.bit_rate), price: row.price as OrderPrice } satisfies ServiceRow,
      ]),
    );

  /**
   * Admits a batch of orders in one transaction with a few set-based statements, whatever its size:
   * read the services, the entitlements of all its boxes, lock its links (in name order, so two
   * servers' batches never wait on each other in a cycle), read the boxes' active orders and the
   * links' active services; decide every order in memory, in arrival order, exactly as one after
   * another would; then write: renewals, pre-emptions, one refcount upsert for all services, one
   * capacity update per link whose use changed, one multi-row insert of the new orders.
   */
  const admitBatch = async (trx: Kysely<Schema>, wanted: readonly Wanted[]): Promise<AdmitOutcome[]> => {
    const names = [...new Set(wanted.map((one) => one.service))];
    const services = await readServices(trx, names);
    const outcomes: Array<AdmitOutcome | undefined> = wanted.map((one) =>
      services.has(one.service)
        ? undefined
        : { kind: 'unknown-service', message: `body/service: no service ${one.service}` },
    );
    const known = wanted.flatMap((one, index) => (outcomes[index] === undefined ? [{ ...one, index }] : []));
    const refusals = await entitlementRefusals(trx, known);
    for (const [i, one] of known.entries()) {
      const refusal = refusals[i];
      if (refusal !== undefined) {
        outcomes[one.index] = { kind: 'not-entitled', message: refusal };
      }
    }
    const admissible = known.filter((one) => outcomes[one.index] === undefined);
    if (admissible.length > 0) {
      await decideAndWrite(trx, admissible, services, outcomes);
    }
    return outcomes.map((outcome) => {
      assert(outcome !== undefined);
      return outcome;
    });
  };

  const decideAndWrite = async (
    trx: Kysely<Schema>,
    admissible: ReadonlyArray<Wanted & { index: number }>,
    servicesRead: ReadonlyMap<string, ServiceRow>,
    outcomes: Array<AdmitOutcome | undefined>,
  ) => {
    const linkNames = [
      ...new Set(admissible.map((one) => (servicesRead.get(one.service) as ServiceRow).link)),
    ].sort();
    const linkRows = await trx
      .selectFrom('order_links')
      .select(['name', 'capacity_bits', 'used_bits', 'policy'])
      .where('name', 'in', linkNames)
      .orderBy('name')
      .$if(store.dialect === 'postgres', (query) => query.forUpdate())
      .execute();
    const links = new Map(
      linkRows.map((row) => [
        row.name,
        {
          capacity: Number(row.capacity_bits),
          used: Number(row.used_bits),
          usedBefore: Number(row.used_bits),
          policy: row.policy as LinkPolicy,
        },
      ]),
    );
    for (const name of linkNames) {
      assert(links.has(name), `order link ${name} of a service is missing`);
    }
    // The services again, under the links' locks (a service changes only with its links locked):
    // one changed since they were read is decided as it is now; one moved to a link this batch
    // did not lock fails the batch, and each order runs again on its own.
    const services = await readServices(trx, [...servicesRead.keys()]);
    for (const name of servicesRead.keys()) {
      const service = services.get(name);
      if (service === undefined || !links.has(service.link)) {
        throw new Error(`service ${name} changed links while its order waited; ordering it again`);
      }
    }
    const serviceOf = (name: string) => services.get(name) as ServiceRow;
    // Read under the locks: every change to these links' orders holds the same locks.
    const boxes = [...new Set(admissible.map((one) => one.box))];
    const existingRows = await trx
      .selectFrom('orders')
      .selectAll()
      .where('state', '=', 'active')
      .where('box', 'in', boxes)
      .where('service', 'in', [...new Set(admissible.map((one) => one.service))])
      .execute();
    const held = new Map(existingRows.map((row) => [`${row.box}\n${row.service}`, row]));
    const active = new Map(
      (
        await trx
          .selectFrom('order_active')
          .select(['service', 'link', 'bit_rate', 'priority', 'refcount'])
          .where('link', 'in', linkNames)
          .execute()
      ).map((row) => [
        row.service,
        {
          service: row.service,
          link: row.link,
          bitRate: Number(row.bit_rate),
          priority: row.priority,
          boxes: Number(row.refcount),
          added: 0,
          activatedHere: false,
        },
      ]),
    );
    const at = now();
    const iso = new Date(at).toISOString();
    const renewals = new Set<string>();
    const inserts: OrderRow[] = [];
    const dropped = new Set<string>();
    /** The services dropped in this batch, and by which service. */
    const droppedBy = new Map<string, string>();
    /** The orders' answers, made once the batch is decided: a later order may pre-empt an earlier one. */
    const answers: Array<{
      index: number;
      row: OrderRow;
      created: boolean;
      activated: boolean;
      preempted: string[];
    }> = [];
    const inUseOf = (link: string): InUse[] =>
      [...active.values()]
        .filter((row) => row.link === link)
        .sort(
          (a, b) => a.priority - b.priority || (a.service < b.service ? -1 : a.service > b.service ? 1 : 0),
        )
        .map(({ service, bitRate, priority, boxes: count }) => ({
          service,
          bitRate,
          priority,
          boxes: count,
        }));

    for (const { box, service: name, index, prices } of admissible) {
      const service = serviceOf(name);
      const pair = `${box}\n${name}`;
      const existing = held.get(pair);
      if (existing !== undefined) {
        // Ordering twice is one order; the second order renews its lease.
        existing.renewed_at = iso;
        existing.expires_at_ms = at + options.leaseMs;
        if (!inserts.includes(existing)) {
          renewals.add(existing.id);
        }
        answers.push({ index, row: existing, created: false, activated: false, preempted: [] });
        continue;
      }
      const link = links.get(service.link);
      assert(link !== undefined);
      const current = active.get(name);
      const preempted: string[] = [];
      if (current !== undefined) {
        current.boxes += 1;
        current.added += 1;
      } else {
        if (link.used + service.bit_rate > link.capacity) {
          const inUse = inUseOf(service.link);
          const victims =
            link.policy === 'preempt' ? chooseVictims(inUse, service, link.capacity - link.used) : undefined;
          if (victims === undefined) {
            outcomes[index] = {
              kind: 'capacity-full',
              message: `link ${service.link} cannot carry ${name} (${service.bit_rate} bit/s): ${link.used} of ${link.capacity} bit/s in use`,
              link: service.link,
              capacity: link.capacity,
              used: link.used,
              requested: service.bit_rate,
              inUse,
            };
            continue;
          }
          for (const victim of victims) {
            dropService(victim.service, iso, { active, held, inserts, dropped });
            droppedBy.set(victim.service, name);
            link.used -= victim.bitRate;
            preempted.push(victim.service);
          }
        }
        active.set(name, {
          service: name,
          link: service.link,
          bitRate: service.bit_rate,
          priority: service.priority,
          boxes: 1,
          added: 1,
          activatedHere: true,
        });
        link.used += service.bit_rate;
      }
      const row: OrderRow = {
        id: randomUUID(),
        box,
        service: name,
        link: service.link,
        state: 'active',
        created_at: iso,
        renewed_at: iso,
        expires_at_ms: at + options.leaseMs,
        ended_at: null,
        // A subscription is charged per month by the billing run, not per order.
        charged: service.price === 'subscription' ? 1 : 0,
        // Charged at the card's price of now, whenever the charge is made (per hour: when it ends).
        unit_price:
          prices === undefined || service.price === 'subscription'
            ? null
            : service.price === 'per-hour'
              ? prices.perHour
              : prices.perOrder,
        // And by the kind of price of now: a service may change once its orders have ended.
        price: service.price,
      };
      inserts.push(row);
      held.set(pair, row);
      answers.push({ index, row, created: true, activated: current === undefined, preempted });
    }
    // Each order is answered as the batch leaves it.
    for (const { index, row, created, activated, preempted } of answers) {
      outcomes[index] =
        row.state === 'active'
          ? { kind: 'ordered', order: presentOrder(row, created), created, activated, preempted }
          : {
              kind: 'preempted',
              order: presentOrder(row, created),
              message: `order ${row.id} of ${row.service} was pre-empted by ${droppedBy.get(row.service) ?? 'a higher priority'} on link ${row.link} as it was admitted; order again`,
            };
    }
    await writeDecisions(trx, { at, iso, renewals, dropped, active, links, inserts });
  };

  /** Takes a pre-empted service off the in-memory state: its orders (held or new) end as preempted. */
  const dropService = (
    service: string,
    iso: string,
    state: {
      active: Map<string, { activatedHere: boolean }>;
      held: Map<string, OrderRow>;
      inserts: OrderRow[];
      dropped: Set<string>;
    },
  ) => {
    const was = state.active.get(service);
    state.active.delete(service);
    if (was !== undefined && !was.activatedHere) {
      state.dropped.add(service); // active before this batch: its stored orders and refcount go
    }
    for (const [pair, row] of state.held) {
      if (row.service === service) {
        state.held.delete(pair);
        // Its answer (if this batch renewed it) says it ended; the stored row is ended by `dropped`.
        row.state = 'preempted';
        row.ended_at = iso;
      }
    }
    for (const row of state.inserts) {
      if (row.service === service) {
        // (Held too: the loop above ended it already.)
        row.state = 'preempted';
        row.ended_at ??= iso;
        // Admitted and pre-empted in this batch: answered 409, never on the air for the box, so
        // there is nothing to charge (per order or per hour).
        row.charged = 1;
      }
    }
  };

  /** Writes what a batch decided: a handful of statements, whatever the batch's size. */
  const writeDecisions = async (
    trx: Kysely<Schema>,
    decided: {
      at: number;
      iso: string;
      renewals: Set<string>;
      dropped: Set<string>;
      active: Map<
        string,
        {
          service: string;
          link: string;
          bitRate: number;
          priority: number;
          added: number;
          activatedHere: boolean;
        }
      >;
      links: Map<string, { used: number; usedBefore: number }>;
      inserts: OrderRow[];
    },
  ) => {
    const { at, iso } = decided;
    if (decided.renewals.size > 0) {
      await trx
        .updateTable('orders')
        .set({ renewed_at: iso, expires_at_ms: at + options.leaseMs })
        .where('id', 'in', [...decided.renewals])
        .execute();
    }
    if (decided.dropped.size > 0) {
      const services = [...decided.dropped];
      await trx
        .updateTable('orders')
        .set({ state: 'preempted', ended_at: iso })
        .where('service', 'in', services)
        .where('state', '=', 'active')
        .execute();
      await trx.deleteFrom('order_active').where('service', 'in', services).execute();
    }
    const statements: Statement[] = [];
    const refcounts = [...decided.active.values()].filter((row) => row.added > 0);
    if (refcounts.length > 0) {
      // New services are inserted with their count; active ones gain theirs (the conflict).
      statements.push(
        trx
          .insertInto('order_active')
          .values(
            refcounts.map((row) => ({
              service: row.service,
              link: row.link,
              refcount: row.added,
              bit_rate: row.bitRate,
              priority: row.priority,
              activated_at: iso,
            })),
          )
          .onConflict((conflict) =>
            conflict.column('service').doUpdateSet((eb) => ({
              refcount: eb('order_active.refcount', '+', eb.ref('excluded.refcount')),
            })),
          ),
      );
    }
    for (const [name, link] of decided.links) {
      if (link.used !== link.usedBefore) {
        statements.push(
          trx
            .updateTable('order_links')
            .set((eb) => ({
              used_bits: eb('used_bits', '+', link.used - link.usedBefore),
              version: eb('version', '+', 1),
            }))
            .where('name', '=', name),
        );
      }
    }
    if (decided.inserts.length > 0) {
      statements.push(trx.insertInto('orders').values(decided.inserts));
    }
    // Different rows each (the renewals and pre-emptions above may share rows with these).
    await writeTogether(trx, store.dialect, statements);
  };

  /**
   * Ends a batch of active orders (cancels, expiries) in one transaction with a few set-based
   * statements: read the orders, lock their links (in name order), read them again under the locks,
   * decide each in arrival order, then write the ended orders, the refcounts that fall, the services
   * that end and one capacity update per link. Each result is the ended row, or the row as it is.
   */
  const endBatch = async (
    trx: Kysely<Schema>,
    items: readonly Ending[],
    linksLocked = false,
  ): Promise<Ended[]> => {
    const ids = [...new Set(items.map((item) => item.id))];
    // SQLite: BEGIN IMMEDIATE holds the one write lock already.
    if (!linksLocked && store.dialect === 'postgres') {
      const first = await trx.selectFrom('orders').select(['id', 'link']).where('id', 'in', ids).execute();
      const linkNames = [...new Set(first.map((row) => row.link))].sort();
      if (linkNames.length === 0) {
        return items.map(() => ({ row: undefined, changedLink: undefined }));
      }
      await trx
        .selectFrom('order_links')
        .select(['name'])
        .where('name', 'in', linkNames)
        .orderBy('name')
        .forUpdate()
        .execute();
    }
    // Read again under the locks: another server may have ended some meanwhile. On PostgreSQL the
    // orders' rows are locked too (FOR UPDATE): a renewal is one conditional UPDATE of its row, so it
    // either comes first (and this reads the lease it extended) or waits for this transaction and
    // finds the order ended; it can never extend an order this batch is ending.
    const rows = new Map(
      (
        await trx
          .selectFrom('orders')
          .selectAll()
          .where('id', 'in', ids)
          .$if(store.dialect === 'postgres', (query) => query.forUpdate())
          .execute()
      ).map((row) => [row.id, row]),
    );
    // An order's link never changes: these are the links locked above (or by the caller).
    const links = new Map([...rows.values()].map((row) => [row.link, { freed: 0 }]));
    const services = [...new Set([...rows.values()].map((row) => row.service))];
    const active = new Map(
      (
        await trx
          .selectFrom('order_active')
          .select(['service', 'refcount', 'bit_rate'])
          .where('service', 'in', services)
          .execute()
      ).map((row) => [
        row.service,
        { boxes: Number(row.refcount), removed: 0, bitRate: Number(row.bit_rate) },
      ]),
    );
    const ended = new Map<string, OrderRow[]>(); // by state and end time: one update each
    const results = items.map(({ id, box, state, endedAtMs }): Ended => {
      const row = rows.get(id);
      if (row === undefined || (box !== undefined && row.box !== box)) {
        return { row: undefined, changedLink: undefined };
      }
      if (row.state !== 'active' || (state === 'expired' && Number(row.expires_at_ms) >= now())) {
        return { row: { ...row }, changedLink: undefined };
      }
      row.state = state;
      row.ended_at = new Date(endedAtMs ?? now()).toISOString();
      const key = `${state}\n${row.ended_at}`;
      ended.set(key, [...(ended.get(key) ?? []), row]);
      const service = active.get(row.service);
      assert(service !== undefined, `active order ${row.id} without its active service`);
      service.boxes -= 1;
      service.removed += 1;
      if (service.boxes > 0) {
        return { row: { ...row }, changedLink: undefined };
      }
      const link = links.get(row.link);
      assert(link !== undefined);
      link.freed += service.bitRate;
      return { row: { ...row }, changedLink: row.link };
    });
    await writeEndings(trx, ended, active, links);
    return results;
  };

  /** Writes what endBatch decided. */
  const writeEndings = async (
    trx: Kysely<Schema>,
    ended: Map<string, OrderRow[]>,
    active: Map<string, { boxes: number; removed: number }>,
    links: Map<string, { freed: number }>,
  ) => {
    const statements: Statement[] = [];
    for (const group of ended.values()) {
      const { state, ended_at } = group[0] as OrderRow;
      statements.push(
        trx
          .updateTable('orders')
          .set({ state, ended_at })
          .where(
            'id',
            'in',
            group.map((row) => row.id),
          ),
      );
    }
    const gone = [...active].filter(([, service]) => service.removed > 0 && service.boxes === 0);
    const fewer = [...active].filter(([, service]) => service.removed > 0 && service.boxes > 0);
    if (gone.length > 0) {
      statements.push(
        trx.deleteFrom('order_active').where(
          'service',
          'in',
          gone.map(([name]) => name),
        ),
      );
    }
    if (fewer.length > 0) {
      statements.push(
        trx
          .updateTable('order_active')
          // Each service loses the boxes that left it: one statement with a CASE over the services.
          .set((eb) => ({
            refcount: eb(
              'refcount',
              '-',
              sql<number>`case ${sql.join(
                fewer.map(([name, service]) => sql`when service = ${name} then ${sql.lit(service.removed)}`),
                sql` `,
              )} else 0 end`,
            ),
          }))
          .where(
            'service',
            'in',
            fewer.map(([name]) => name),
          ),
      );
    }
    for (const [name, link] of links) {
      if (link.freed > 0) {
        statements.push(
          trx
            .updateTable('order_links')
            .set((eb) => ({ used_bits: eb('used_bits', '-', link.freed), version: eb('version', '+', 1) }))
            .where('name', '=', name),
        );
      }
    }
    // Each touches rows none of the others do (the ended orders, the services gone or fewer, the links).
    await writeTogether(trx, store.dialect, statements);
  };

  /**
   * Locks, in name order, every link a mixed batch touches (PostgreSQL), before its endings lock
   * theirs and its orders theirs: each part alone locks in name order, but the two parts one after
   * another would not, and two servers could then wait on each other in a cycle.
   */
  const lockLinksOf = async (trx: Kysely<Schema>, ids: readonly string[], services: readonly string[]) => {
    await trx
      .selectFrom('order_links')
      .select('name')
      .where((eb) =>
        eb.or([
          eb(
            'name',
            'in',
            eb
              .selectFrom('orders')
              .select('link')
              .where('id', 'in', [...ids]),
          ),
          eb(
            'name',
            'in',
            eb
              .selectFrom('order_services')
              .select('link')
              .where('name', 'in', [...services]),
          ),
        ]),
      )
      .orderBy('name')
      .forUpdate()
      .execute();
  };

  /**
   * Orders and endings that arrive together share one transaction (one commit, one flush to disk,
   * one hold of each link's lock): the endings first, so the capacity they free is there for the
   * orders, then the orders, each part decided as a batch.
   */
  const mixedBatch = async (trx: Kysely<Schema>, steps: readonly Step[]): Promise<StepResult[]> => {
    const endings = steps.flatMap((step) => (step.kind === 'end' ? [step.ending] : []));
    const orders = steps.flatMap((step) => (step.kind === 'order' ? [step.wanted] : []));
    if (store.dialect === 'postgres' && endings.length > 0 && orders.length > 0) {
      await lockLinksOf(
        trx,
        endings.map((ending) => ending.id),
        orders.map((one) => one.service),
      );
    }
    const locked = store.dialect === 'postgres' && endings.length > 0 && orders.length > 0;
    const ended = endings.length === 0 ? [] : await endBatch(trx, endings, locked);
    const admitted = orders.length === 0 ? [] : await admitBatch(trx, orders);
    let nextEnded = 0;
    let nextAdmitted = 0;
    return steps.map((step): StepResult => {
      if (step.kind === 'end') {
        const result = ended[nextEnded++];
        assert(result !== undefined);
        return { kind: 'end', ended: result };
      }
      const result = admitted[nextAdmitted++];
      assert(result !== undefined);
      return { kind: 'order', outcome: result };
    });
  };

  const commit = createBatchCommitter(store, groupCommitMax, mixedBatch);
  const admit = async (wanted: Wanted): Promise<AdmitOutcome> => {
    const result = await commit({ kind: 'order', wanted });
    assert(result.kind === 'order');
    return result.outcome;
  };
  const end = async (id: string, box: string | undefined, state: OrderState, endedAtMs?: number) => {
    const result = await commit({
      kind: 'end',
      ending: { id, box, state, ...(endedAtMs === undefined ? {} : { endedAtMs }) },
    });
    assert(result.kind === 'end');
    return result.ended;
  };

  return {
    async order(box, service) {
      traceOrderStage('order-requested');
      const prices = await options.prices?.();
      const outcome = await admit({ box, service, prices });
      if (outcome.kind === 'ordered' && outcome.activated) {
        changed([outcome.order.link]);
      }
      return outcome;
    },

    async renew(box, id) {
      const at = now();
      const iso = new Date(at).toISOString();
      const held = await store.db
        .selectFrom('orders')
        .select('service')
        .where('id', '=', id)
        .where('box', '=', box)
        .executeTakeFirst();
      if (held === undefined) {
        return undefined;
      }
      // A renewal is an order again: a box whose entitlement ended keeps the channel no longer
      // than the lease it holds.
      const [refusal] = await entitlementRefusals(store.db, [{ box, service: held.service }]);
      if (refusal !== undefined) {
        return { kind: 'not-entitled', message: refusal };
      }
      // One statement decides and answers: its condition is checked on the row as it is when the
      // row is written (PostgreSQL re-checks it after waiting for a batch that holds the row; on
      // SQLite the write lock orders the two), and the answer is the row it wrote.
      const renewed = await store.db
        .updateTable('orders')
        .set({ renewed_at: iso, expires_at_ms: at + options.leaseMs })
        .where('id', '=', id)
        .where('box', '=', box)
        .where('state', '=', 'active')
        // A lease that ran out has ended, whether or not the sweep has marked it yet.
        .where('expires_at_ms', '>=', at)
        .returningAll()
        .executeTakeFirst();
      return renewed === undefined ? 'ended' : presentOrder(renewed);
    },

    async cancel(box, id) {
      traceOrderStage('cancel-requested');
      const { row, changedLink } = await end(id, box, 'cancelled');
      if (changedLink !== undefined) {
        changed([changedLink]);
      }
      return row === undefined ? undefined : presentOrder(row);
    },

    async expire() {
      const due = await store.db
        .selectFrom('orders')
        .select(['id', 'expires_at_ms'])
        .where('state', '=', 'active')
        .where('expires_at_ms', '<', now())
        .orderBy('expires_at_ms')
        .limit(1000)
        .execute();
      const links = new Set<string>();
      let count = 0;
      // All at once: they share group commits. A renewal may have come in meanwhile: end checks
      // the lease again under the lock.
      const ended = await Promise.all(
        due.map((order) => end(order.id, undefined, 'expired', Number(order.expires_at_ms))),
      );
      for (const { row, changedLink } of ended) {
        if (row?.state === 'expired') {
          count += 1;
        }
        if (changedLink !== undefined) {
          links.add(changedLink);
        }
      }
      changed(links);
      return count;
    },

    async desired(link) {
      const rows = await store.db
        .selectFrom('order_active')
        .innerJoin('order_services', 'order_services.name', 'order_active.service')
        .select([
          'order_services.name',
          'order_services.group_address',
          'order_services.port',
          'order_services.source_address',
          'order_services.relay_to',
        ])
        .where('order_active.link', '=', link)
        .orderBy('order_services.name')
        .execute();
      return rows.map((row) => ({
        service: row.name,
        group: row.group_address,
        port: row.port,
        source: row.source_address,
        relayTo: row.relay_to,
      }));
    },
  };
}
