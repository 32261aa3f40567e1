/**
 * The order book (flow D, docs/ordering.md): admission of a box's order in one store transaction —
 * an idempotent order insert, a refcount upsert on the active service, and a capacity update on the
 * link only when the service becomes active — plus renewals, cancels, lease expiry and pre-emption.
 * Every change of what a link should carry happens with the link's row locked (PostgreSQL: SELECT …
 * FOR UPDATE; SQLite: BEGIN IMMEDIATE takes the one write lock), so two order servers sharing one
 * store can never overbook a link, and the refcount always equals the active orders.
 *
 * Admissions, cancels and expiries that arrive together share one transaction (group commit, as
 * usage does in billing): each runs in it one after another, exactly as it would alone, and gets
 * its own outcome; the link's lock is taken once and the commit flushes to disk once for all of
 * them. If that transaction fails, each of its steps is run again in a transaction of its own, so
 * one failing step (a deadlock between two servers' batches, a constraint) fails only itself.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import { orderGroupCommitMax } from '../limits.js';
import type { CapacityFull, LinkPolicy, Order, OrderPrice, OrderState } from '../protocol/api-order.js';
import type { Schema, Store } from '../store/database.js';

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
  | ({ readonly kind: 'capacity-full' } & Omit<CapacityFull, 'error'>)
  | { readonly kind: 'unknown-service'; readonly message: string }
  | { readonly kind: 'not-entitled'; readonly message: string };

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
}

/** The order book over a store. */
export interface OrderBook {
  /** Admits (or finds) the box's order for the service. */
  order(box: string, service: string): Promise<AdmitOutcome>;
  /** Extends the lease of an active order of this box; undefined when there is none to renew. */
  renew(box: string, id: string): Promise<Order | 'ended' | undefined>;
  /** Ends an order (a box's own, or any for the operator); ending an ended order returns it. */
  cancel(box: string | undefined, id: string): Promise<Order | undefined>;
  /** Ends the orders whose lease ran out; returns how many. */
  expire(): Promise<number>;
  /** The services a link should carry now. */
  desired(link: string): Promise<RouteWanted[]>;
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

/** One step of a group commit and its caller's settlement. */
interface Step {
  readonly run: (trx: Kysely<Schema>) => Promise<unknown>;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
}

/**
 * Group commit over store.writeTransaction: steps that arrive while a transaction is being written
 * wait for the next one, which runs them all, in arrival order, up to stepsMax.
 */
export function createStepCommitter(store: Store, stepsMax: number) {
  let queue: Step[] = [];
  let writing = false;
  const alone = async (step: Step) => {
    try {
      step.resolve(await store.writeTransaction(step.run));
    } catch (error) {
      step.reject(error as Error);
    }
  };
  const drain = async () => {
    while (queue.length > 0) {
      const group = queue.slice(0, stepsMax);
      queue = queue.slice(group.length);
      if (group.length === 1) {
        await alone(group[0] as Step);
        continue;
      }
      try {
        const results = await store.writeTransaction(async (trx) => {
          const out: unknown[] = [];
          for (const step of group) {
            out.push(await step.run(trx));
          }
          return out;
        });
        for (const [i, step] of group.entries()) {
          step.resolve(results[i]);
        }
      } catch {
        // Rolled back as a whole: nothing of it was written. Each step alone, so only a failing one fails.
        for (const step of group) {
          await alone(step);
        }
      }
    }
    writing = false;
  };
  return <T>(run: (trx: Kysely<Schema>) => Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      queue.push({ run, resolve: resolve as (value: unknown) => void, reject });
      if (!writing) {
        writing = true;
        setImmediate(() => void drain()); // gather what arrives in this turn of the event loop
      }
    });
}

/** Builds the book. */
export function createOrderBook(store: Store, options: OrderBookOptions): OrderBook {
  const now = options.now ?? Date.now;
  const inTransaction = createStepCommitter(store, options.groupCommitMax ?? orderGroupCommitMax);
  const changed = (links: Iterable<string>) => {
    for (const link of links) {
      options.onLinkChanged?.(link);
    }
  };

  /** Locks the link's row until the transaction ends (PostgreSQL; SQLite holds the write lock). */
  const lockLink = (trx: Kysely<Schema>, link: string) =>
    trx
      .selectFrom('order_links')
      .select(['name', 'capacity_bits', 'used_bits', 'policy'])
      .where('name', '=', link)
      .$if(store.dialect === 'postgres', (query) => query.forUpdate())
      .executeTakeFirstOrThrow();

  const entitled = async (box: string, service: string): Promise<string | undefined> => {
    const rows = await store.db
      .selectFrom('entitlements')
      .select(['session', 'valid_from', 'valid_to'])
      .where('subscriber', '=', box)
      .where('service', '=', 'channel')
      .execute();
    const matching = rows.filter((row) => row.session === null || row.session === service);
    if (matching.length === 0) {
      return `no channel entitlement for ${service}`;
    }
    const at = now();
    const current = matching.some(
      (row) =>
        (row.valid_from === null || Date.parse(row.valid_from) <= at) &&
        (row.valid_to === null || at < Date.parse(row.valid_to)),
    );
    return current ? undefined : `the channel entitlement for ${service} is outside its validity window`;
  };

  /** Ends every active order of a service and takes it off its link (pre-emption). */
  const dropService = async (trx: Kysely<Schema>, service: string, link: string, rate: number) => {
    const ended = new Date(now()).toISOString();
    await trx
      .updateTable('orders')
      .set({ state: 'preempted', ended_at: ended })
      .where('service', '=', service)
      .where('state', '=', 'active')
      .execute();
    await trx.deleteFrom('order_active').where('service', '=', service).execute();
    await trx
      .updateTable('order_links')
      .set((eb) => ({ used_bits: eb('used_bits', '-', rate), version: eb('version', '+', 1) }))
      .where('name', '=', link)
      .execute();
  };

  const inUse = async (trx: Kysely<Schema>, link: string) =>
    (
      await trx
        .selectFrom('order_active')
        .select(['service', 'bit_rate', 'priority', 'refcount'])
        .where('link', '=', link)
        .orderBy('priority')
        .orderBy('service')
        .execute()
    ).map((row) => ({
      service: row.service,
      bitRate: Number(row.bit_rate),
      priority: row.priority,
      boxes: Number(row.refcount),
    }));

  /** Makes room for a service on a full link; the services to drop, or undefined if none suffice. */
  const chooseVictims = (
    active: Awaited<ReturnType<typeof inUse>>,
    service: ServiceRow,
    free: number,
  ): typeof active | undefined => {
    // Lowest priority first (inUse is ordered by priority, then name, so the choice is stable).
    const lower = active.filter((row) => row.priority < service.priority);
    const victims: typeof active = [];
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

  const admit = (box: string, service: ServiceRow): Promise<AdmitOutcome> =>
    inTransaction(async (trx): Promise<AdmitOutcome> => {
      const link = await lockLink(trx, service.link);
      const at = now();
      const iso = new Date(at).toISOString();
      const existing = await trx
        .selectFrom('orders')
        .selectAll()
        .where('box', '=', box)
        .where('service', '=', service.name)
        .where('state', '=', 'active')
        .executeTakeFirst();
      if (existing !== undefined) {
        // Ordering twice is one order; the second order renews its lease.
        const renewed = { ...existing, renewed_at: iso, expires_at_ms: at + options.leaseMs };
        await trx
          .updateTable('orders')
          .set({ renewed_at: iso, expires_at_ms: at + options.leaseMs })
          .where('id', '=', existing.id)
          .execute();
        return {
          kind: 'ordered',
          order: presentOrder(renewed, false),
          created: false,
          activated: false,
          preempted: [],
        };
      }
      const active = await trx
        .selectFrom('order_active')
        .select('refcount')
        .where('service', '=', service.name)
        .executeTakeFirst();
      const preempted: string[] = [];
      if (active !== undefined) {
        await trx
          .updateTable('order_active')
          .set((eb) => ({ refcount: eb('refcount', '+', 1) }))
          .where('service', '=', service.name)
          .execute();
      } else {
        const capacity = Number(link.capacity_bits);
        const used = Number(link.used_bits);
        if (used + service.bit_rate > capacity) {
          const current = await inUse(trx, service.link);
          const victims =
            (link.policy as LinkPolicy) === 'preempt'
              ? chooseVictims(current, service, capacity - used)
              : undefined;
          if (victims === undefined) {
            return {
              kind: 'capacity-full',
              message: `link ${service.link} cannot carry ${service.name} (${service.bit_rate} bit/s): ${used} of ${capacity} bit/s in use`,
              link: service.link,
              capacity,
              used,
              requested: service.bit_rate,
              inUse: current,
            };
          }
          for (const victim of victims) {
            await dropService(trx, victim.service, service.link, victim.bitRate);
            preempted.push(victim.service);
          }
        }
        await trx
          .insertInto('order_active')
          .values({
            service: service.name,
            link: service.link,
            refcount: 1,
            bit_rate: service.bit_rate,
            priority: service.priority,
            activated_at: iso,
          })
          .execute();
        await trx
          .updateTable('order_links')
          .set((eb) => ({
            used_bits: eb('used_bits', '+', service.bit_rate),
            version: eb('version', '+', 1),
          }))
          .where('name', '=', service.link)
          .execute();
      }
      const row: OrderRow = {
        id: randomUUID(),
        box,
        service: service.name,
        link: service.link,
        state: 'active',
        created_at: iso,
        renewed_at: iso,
        expires_at_ms: at + options.leaseMs,
        ended_at: null,
        // A subscription is charged per month by the billing run, not per order.
        charged: service.price === 'subscription' ? 1 : 0,
      };
      await trx.insertInto('orders').values(row).execute();
      return {
        kind: 'ordered',
        order: presentOrder(row, true),
        created: true,
        activated: active === undefined,
        preempted,
      };
    });

  /** Ends one active order (cancel or expiry) with its link locked; the ended row, or the row as it is. */
  const end = (id: string, box: string | undefined, state: OrderState, endedAtMs?: number) =>
    inTransaction(async (trx) => {
      const first = await trx.selectFrom('orders').selectAll().where('id', '=', id).executeTakeFirst();
      if (first === undefined || (box !== undefined && first.box !== box)) {
        return { row: undefined, changedLink: undefined };
      }
      await lockLink(trx, first.link);
      // Read again under the lock: another server may have ended it meanwhile.
      const row = await trx.selectFrom('orders').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
      if (row.state !== 'active' || (state === 'expired' && Number(row.expires_at_ms) >= now())) {
        return { row, changedLink: undefined };
      }
      const endedAt = new Date(endedAtMs ?? now()).toISOString();
      await trx.updateTable('orders').set({ state, ended_at: endedAt }).where('id', '=', id).execute();
      const active = await trx
        .selectFrom('order_active')
        .select(['refcount', 'bit_rate'])
        .where('service', '=', row.service)
        .executeTakeFirstOrThrow();
      let changedLink: string | undefined;
      if (Number(active.refcount) > 1) {
        await trx
          .updateTable('order_active')
          .set((eb) => ({ refcount: eb('refcount', '-', 1) }))
          .where('service', '=', row.service)
          .execute();
      } else {
        await trx.deleteFrom('order_active').where('service', '=', row.service).execute();
        await trx
          .updateTable('order_links')
          .set((eb) => ({
            used_bits: eb('used_bits', '-', Number(active.bit_rate)),
            version: eb('version', '+', 1),
          }))
          .where('name', '=', row.link)
          .execute();
        changedLink = row.link;
      }
      return { row: { ...row, state, ended_at: endedAt }, changedLink };
    });

  return {
    async order(box, serviceName) {
      const service = await store.db
        .selectFrom('order_services')
        .select(['name', 'link', 'bit_rate', 'priority', 'price'])
        .where('name', '=', serviceName)
        .executeTakeFirst();
      if (service === undefined) {
        return { kind: 'unknown-service', message: `body/service: no service ${serviceName}` };
      }
      const refusal = await entitled(box, serviceName);
      if (refusal !== undefined) {
        return { kind: 'not-entitled', message: refusal };
      }
      const outcome = await admit(box, {
        ...service,
        bit_rate: Number(service.bit_rate),
        price: service.price as OrderPrice,
      });
      if (outcome.kind === 'ordered' && outcome.activated) {
        changed([service.link]);
      }
      return outcome;
    },

    async renew(box, id) {
      const at = now();
      const iso = new Date(at).toISOString();
      const result = await store.db
        .updateTable('orders')
        .set({ renewed_at: iso, expires_at_ms: at + options.leaseMs })
        .where('id', '=', id)
        .where('box', '=', box)
        .where('state', '=', 'active')
        .executeTakeFirst();
      const row = await store.db
        .selectFrom('orders')
        .selectAll()
        .where('id', '=', id)
        .where('box', '=', box)
        .executeTakeFirst();
      if (row === undefined) {
        return undefined;
      }
      return Number(result.numUpdatedRows) === 1 && row.state === 'active' ? presentOrder(row) : 'ended';
    },

    async cancel(box, id) {
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
