import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createOrderBook, type OrderBook, type RouteWanted } from '../../src/order/book.js';
import { type LinkDrivers, type RouterDriver, startLinkDrivers } from '../../src/order/driver.js';
import type { LinkRouter } from '../../src/protocol/api-order.js';
import { openStore, type Store } from '../../src/store/database.js';

/** A router of its own per outbound interface: each on a daemon of its own (another place). */
const smcroute = (outbound: string): LinkRouter => ({
  kind: 'smcroute',
  socket: `/run/gatecast-test-${outbound}.sock`,
  inbound: 'eth0',
  outbound,
});

/** Link sat on router, its service news on group, and box b1 entitled to channels. */
async function seedLink(store: Store, router: LinkRouter, group: string): Promise<void> {
  const iso = new Date().toISOString();
  await store.db
    .insertInto('order_links')
    .values({
      name: 'sat',
      capacity_bits: 10_000_000,
      used_bits: 0,
      router: router.kind,
      router_config: JSON.stringify(router),
      policy: 'reject',
      version: 0,
      created_at: iso,
      updated_at: iso,
    })
    .execute();
  await store.db
    .insertInto('order_services')
    .values({
      name: 'news',
      link: 'sat',
      group_address: group,
      port: 5000,
      source_address: null,
      bit_rate: 1_000_000,
      priority: 0,
      price: 'per-order',
      relay_to: null,
      created_at: iso,
      updated_at: iso,
    })
    .execute();
  await store.db
    .insertInto('parties')
    .values({ id: 'b1', kind: 'subscriber', name: 'b1', token_hash: 'hash-b1', created_at: iso })
    .execute();
  await store.db
    .insertInto('entitlements')
    .values({
      id: 'ent-b1',
      subscriber: 'b1',
      service: 'channel',
      session: null,
      valid_from: null,
      valid_to: null,
      monthly: null,
      created_at: iso,
    })
    .execute();
}

// A link moved to another router (another smcrouted, inbound or outbound interface): the old
// router's driver was closed with its routes in place, so the old router went on forwarding the
// link's channels for ever, and a cancel no longer stopped them there.
describe('a link whose router changes', () => {
  let store: Store;
  let book: OrderBook;
  let drivers: LinkDrivers;
  /** What each router (by its outbound interface) carries. */
  const carried = new Map<string, string[]>();
  /** Routers (by outbound interface) that cannot be reached. */
  const failing = new Set<string>();
  const makeDriver = (router: LinkRouter): RouterDriver => {
    assert.equal(router.kind, 'smcroute');
    const name = router.outbound;
    return {
      async reconcile(wanted: readonly RouteWanted[]) {
        if (failing.has(name)) {
          return { added: [], removed: [], errors: [`${name}: unreachable`] };
        }
        const before = carried.get(name) ?? [];
        const now = wanted.map((route) => route.group);
        carried.set(name, now);
        return {
          added: now.filter((group) => !before.includes(group)),
          removed: before.filter((group) => !now.includes(group)),
          errors: [],
        };
      },
      async close() {},
    };
  };
  const setRouter = async (router: LinkRouter) => {
    await store.db
      .updateTable('order_links')
      .set((eb) => ({ router_config: JSON.stringify(router), version: eb('version', '+', 1) }))
      .where('name', '=', 'sat')
      .execute();
  };

  before(async () => {
    store = await openStore('sqlite::memory:');
    await seedLink(store, smcroute('eth1'), '239.79.0.1');
    book = createOrderBook(store, { leaseMs: 60_000 });
    // Passes only when the test asks for one.
    drivers = startLinkDrivers({ store, book, holder: 'server-a', makeDriver, pollMs: 3_600_000 });
  });
  after(async () => {
    await drivers?.close();
    await store?.close();
  });

  it('takes the routes off the old router and puts them on the new one', async () => {
    const ordered = await book.order('b1', 'news');
    assert.equal(ordered.kind, 'ordered');
    await drivers.pass();
    assert.deepEqual(carried.get('eth1'), ['239.79.0.1']);
    await setRouter(smcroute('eth2'));
    await drivers.pass();
    assert.deepEqual(carried.get('eth2'), ['239.79.0.1']);
    assert.deepEqual(carried.get('eth1'), [], 'the old router still forwards the channel');
  });

  // The same change made while no order server ran: the next start drove the new router only, and
  // the old one forwarded the channel for ever. The store remembers which routers a link's routes
  // were put on.
  it('takes the routes off a router the link left while the order server was down', async () => {
    await drivers.pass();
    assert.deepEqual(carried.get('eth2'), ['239.79.0.1']);
    await drivers.close(); // the server stops: eth2 keeps its routes
    await setRouter(smcroute('eth3'));
    drivers = startLinkDrivers({ store, book, holder: 'server-b', makeDriver, pollMs: 3_600_000 });
    await drivers.pass();
    assert.deepEqual(carried.get('eth3'), ['239.79.0.1']);
    assert.deepEqual(
      carried.get('eth2'),
      [],
      'the router the link left while down still forwards the channel',
    );
    const remembered = await store.db.selectFrom('order_link_routers').select('router_config').execute();
    assert.deepEqual(
      remembered.map((row) => JSON.parse(row.router_config).outbound),
      ['eth3'],
    );
  });

  it('keeps a router it could not empty and empties it on a later pass', async () => {
    failing.add('eth3');
    await drivers.close();
    await setRouter(smcroute('eth4'));
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'server-c',
      makeDriver,
      pollMs: 3_600_000,
      driftCheckMs: 0,
    });
    await drivers.pass();
    assert.deepEqual(
      carried.get('eth4'),
      ['239.79.0.1'],
      'the new router is routed while the old one cannot be reached',
    );
    assert.deepEqual(carried.get('eth3'), ['239.79.0.1']);
    failing.delete('eth3');
    await drivers.pass();
    assert.deepEqual(carried.get('eth3'), []);
    const remembered = await store.db.selectFrom('order_link_routers').select('router_config').execute();
    assert.deepEqual(
      remembered.map((row) => JSON.parse(row.router_config).outbound),
      ['eth4'],
    );
  });
});

// The old and the new router of a link in one place: the same smcrouted and inbound interface with
// another outbound, or the same nftables table on other interfaces. Emptying the old one beside
// driving the new one took the link's routes away from the place both are (the driver of one
// daemon and inbound keeps every route of that inbound): the daemon ended with no route.
describe('a link moved within one place (the same daemon and inbound)', () => {
  let store: Store;
  let drivers: LinkDrivers;
  let book: OrderBook;
  /** One daemon and inbound interface: its routes, group → outbound. */
  const daemon = new Map<string, string>();
  const reports: string[] = [];
  const makeDriver = (router: LinkRouter): RouterDriver => ({
    async reconcile(wanted: readonly RouteWanted[]) {
      // A command takes its time (the old configuration's, a slow answer, longer).
      await new Promise((resolve) => setTimeout(resolve, router.outbound === 'eth1' ? 30 : 1));
      // The smcroute driver keeps every route of its inbound equal to what its link wants.
      const removed = [...daemon.keys()].filter(
        (group) => !wanted.some((route) => route.group === group && daemon.get(group) === router.outbound),
      );
      for (const group of removed) {
        daemon.delete(group);
      }
      const added = wanted.filter((route) => !daemon.has(route.group)).map((route) => route.group);
      for (const group of added) {
        daemon.set(group, router.outbound);
      }
      return { added, removed, errors: [] };
    },
    async close() {},
  });
  const oneDaemon = (outbound: string): LinkRouter => ({
    kind: 'smcroute',
    socket: '/run/gatecast-one.sock',
    inbound: 'eth0',
    outbound,
  });

  before(async () => {
    store = await openStore('sqlite::memory:');
    await seedLink(store, oneDaemon('eth1'), '239.79.0.2');
    book = createOrderBook(store, { leaseMs: 60_000 });
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'server-a',
      makeDriver,
      onReport: (_link, report) => {
        reports.push(...report.removed.map((route) => `unrouted ${route}`));
        reports.push(...report.added.map((route) => `routed ${route}`));
      },
      pollMs: 3_600_000,
    });
  });
  after(async () => {
    await drivers?.close();
    await store?.close();
  });

  it('leaves the route on the new outbound, not emptied by the old router', async () => {
    assert.equal((await book.order('b1', 'news')).kind, 'ordered');
    await drivers.pass();
    assert.deepEqual([...daemon], [['239.79.0.2', 'eth1']]);
    await store.db
      .updateTable('order_links')
      .set((eb) => ({ router_config: JSON.stringify(oneDaemon('eth2')), version: eb('version', '+', 1) }))
      .where('name', '=', 'sat')
      .execute();
    await drivers.pass();
    await drivers.pass();
    assert.deepEqual([...daemon], [['239.79.0.2', 'eth2']]);
    assert.deepEqual(reports, ['routed 239.79.0.2', 'unrouted 239.79.0.2', 'routed 239.79.0.2']);
    const remembered = await store.db.selectFrom('order_link_routers').select('router_config').execute();
    assert.deepEqual(
      remembered.map((row) => JSON.parse(row.router_config).outbound),
      ['eth2'],
      'the old configuration is forgotten: its place is the new one',
    );
  });
});
