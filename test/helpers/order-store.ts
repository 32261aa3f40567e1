/**
 * Order-book fixtures written straight into the store (boxes with their entitlements, relay links
 * and their services), and what the store says of a link's active orders; for the order tests and
 * the store half of the ordering benchmark.
 */
import type { Store } from '../../src/store/database.js';

/** Rows a multi-row insert carries at most, well under every dialect's limit on parameters. */
const insertRowsMax = 200;

/**
 * Makes a subscriber party with a channel entitlement per name (for all channels unless `service`
 * is given), `insertRowsMax` at a time.
 */
export async function makeBoxes(
  store: Store,
  names: readonly string[],
  service: string | null = null,
): Promise<void> {
  const now = new Date().toISOString();
  for (let from = 0; from < names.length; from += insertRowsMax) {
    const chunk = names.slice(from, from + insertRowsMax);
    await store.db
      .insertInto('parties')
      .values(
        chunk.map((name) => ({
          id: name,
          kind: 'subscriber',
          name,
          token_hash: `hash-${name}`,
          created_at: now,
        })),
      )
      .execute();
    await store.db
      .insertInto('entitlements')
      .values(
        chunk.map((name) => ({
          id: `ent-${name}`,
          subscriber: name,
          service: 'channel',
          session: service,
          valid_from: null,
          valid_to: null,
          monthly: null,
          created_at: now,
        })),
      )
      .execute();
  }
}

/** Makes one subscriber party with a channel entitlement (for all channels unless `service` is given). */
export async function makeBox(store: Store, name: string, service: string | null = null): Promise<string> {
  await makeBoxes(store, [name], service);
  return name;
}

/** A service of a link: its rate in bit/s, its priority (0 unless given) and its group (239.77.0.N+1 unless given). */
export interface LinkService {
  name: string;
  rate: number;
  priority?: number;
  group?: string;
}

/** Makes a relay link and its services straight in the store (no driver is started). */
export async function makeLink(
  store: Store,
  link: string,
  capacity: number,
  policy: 'reject' | 'preempt',
  services: readonly LinkService[],
): Promise<void> {
  const now = new Date().toISOString();
  await store.db
    .insertInto('order_links')
    .values({
      name: link,
      capacity_bits: capacity,
      used_bits: 0,
      router: 'relay',
      router_config: JSON.stringify({ kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' }),
      policy,
      version: 0,
      created_at: now,
      updated_at: now,
    })
    .execute();
  for (let from = 0; from < services.length; from += insertRowsMax) {
    await store.db
      .insertInto('order_services')
      .values(
        services.slice(from, from + insertRowsMax).map((service, i) => ({
          name: service.name,
          link,
          group_address: service.group ?? `239.77.0.${from + i + 1}`,
          port: 5000,
          source_address: null,
          bit_rate: service.rate,
          priority: service.priority ?? 0,
          price: 'per-order',
          relay_to: null,
          created_at: now,
          updated_at: now,
        })),
      )
      .execute();
  }
}

/** A link's row, its active services, and how many active orders each service has by the orders table. */
export async function activeOrders(store: Store, link: string) {
  const row = await store.db
    .selectFrom('order_links')
    .selectAll()
    .where('name', '=', link)
    .executeTakeFirstOrThrow();
  const active = await store.db.selectFrom('order_active').selectAll().where('link', '=', link).execute();
  const orders = await store.db
    .selectFrom('orders')
    .select(['service'])
    .where('link', '=', link)
    .where('state', '=', 'active')
    .execute();
  const counted = new Map<string, number>();
  for (const order of orders) {
    counted.set(order.service, (counted.get(order.service) ?? 0) + 1);
  }
  return { row, active, orderCount: orders.length, counted };
}
