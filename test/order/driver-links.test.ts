import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createOrderBook } from '../../src/order/book.js';
import { type LinkDrivers, type RouterDriver, startLinkDrivers } from '../../src/order/driver.js';
import type { LinkRouter } from '../../src/protocol/api-order.js';
import { openStore, type Store } from '../../src/store/database.js';
import { waitUntil as until } from '../helpers/wait.js';

/** A relay link (the fake drivers look only at its addresses). */
async function addRelayLink(store: Store, name: string, inbound: string, outbound = inbound): Promise<void> {
  const iso = new Date().toISOString();
  await store.db
    .insertInto('order_links')
    .values({
      name,
      capacity_bits: 10_000_000,
      used_bits: 0,
      router: 'relay',
      router_config: JSON.stringify({ kind: 'relay', inbound, outbound }),
      policy: 'reject',
      version: 0,
      created_at: iso,
      updated_at: iso,
    })
    .execute();
}

// Links were driven one after another, and a poke waited for the whole pass: a router that did
// not answer on one link (up to its command timeout, 5 s) held up every order and cancel on the
// others, so a cancelled channel kept flowing on a healthy link for that long.
describe('links are driven side by side', () => {
  let store: Store;
  let drivers: LinkDrivers | undefined;
  /** Reconciles each link's driver was asked for, by the link's inbound address. */
  const calls = new Map<string, number>();
  let hang = false;
  let release: (() => void) | undefined;
  let hanging = false;
  const makeDriver = (router: LinkRouter): RouterDriver => ({
    reconcile: async () => {
      const inbound = router.inbound;
      calls.set(inbound, (calls.get(inbound) ?? 0) + 1);
      if (inbound === '127.0.0.1' && hang) {
        hanging = true;
        await new Promise<void>((resolve) => {
          release = resolve;
        });
        hanging = false;
      }
      return { added: [], removed: [], errors: [] };
    },
    close: async () => undefined,
  });
  before(async () => {
    store = await openStore('sqlite::memory:');
    await addRelayLink(store, 'stuck', '127.0.0.1');
    await addRelayLink(store, 'fine', '127.0.0.2');
  });
  after(async () => {
    release?.();
    await drivers?.close();
    await store?.close();
  });

  it('a poke of one link is reconciled while another link waits for its router', async () => {
    const book = createOrderBook(store, { leaseMs: 60_000 });
    // A drift check every 50 ms, so a pass soon asks the stuck router again.
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'a',
      makeDriver,
      pollMs: 20,
      driftCheckMs: 50,
      leaseMs: 60_000,
    });
    await until('both links driven', () => drivers?.held().length === 2, 5_000);
    hang = true;
    await until('a pass waits for the stuck router', () => hanging, 5_000);
    const before = calls.get('127.0.0.2') ?? 0;
    drivers.poke('fine');
    await until('the poked link reconciled', () => (calls.get('127.0.0.2') ?? 0) > before, 2_000);
    assert.equal(hanging, true, 'the other link is still waiting for its router');
    hang = false;
    release?.();
    await until('the stuck link answered', () => !hanging, 2_000);
  });
});

// A link whose router failed was asked again on every poll (10 a second, an nft link spawning
// three commands each time) and reported the same error each time: a log line every 100 ms for
// as long as the router stayed away.
describe('a failing router is asked again after a growing wait and its errors are not repeated', () => {
  let store: Store;
  let drivers: LinkDrivers | undefined;
  let clock = 0;
  let asked = 0;
  let failing = true;
  const reports: string[][] = [];
  const makeDriver = (): RouterDriver => ({
    reconcile: async () => {
      asked += 1;
      return failing
        ? { added: [], removed: [], errors: ['router unreachable'] }
        : { added: [], removed: [], errors: [] };
    },
    close: async () => undefined,
  });
  before(async () => {
    store = await openStore('sqlite::memory:');
    await addRelayLink(store, 'down', '127.0.0.1', '127.0.0.2');
  });
  after(async () => {
    await drivers?.close();
    await store?.close();
  });

  it('backs off from a poll to a drift check, says the same errors once a while, and an order asks at once', async () => {
    const book = createOrderBook(store, { leaseMs: 60_000 });
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'a',
      makeDriver,
      onReport: (_link, report) => reports.push(report.errors),
      // Passes are run by hand, the clocks stepped by hand.
      pollMs: 100,
      driftCheckMs: 1_000,
      errorRepeatMs: 30_000,
      leaseMs: 3_600_000,
      now: () => clock,
      monotonic: () => clock,
    });
    // Ten seconds of passes a poll apart.
    for (let step = 0; step < 100; step += 1) {
      await drivers.pass();
      clock += 100;
    }
    // Asked at 0, then after 100, 200, 400, 800 ms, then each second: 1 + 4 + about 8.
    assert.ok(asked >= 10 && asked <= 15, `asked ${asked} times in 10 s (every poll: 100)`);
    assert.deepEqual(reports, [['router unreachable']], 'the same error said once');
    // An order (a poke) asks at once, however long the wait.
    const before = asked;
    drivers.poke('down');
    await drivers.pass();
    assert.equal(asked, before + 1);
    // After the repeat interval the error is said again, once.
    clock += 30_000;
    await drivers.pass();
    assert.deepEqual(reports, [['router unreachable'], ['router unreachable']]);
    // Back: asked on drift checks only; a later failure is said at once.
    failing = false;
    clock += 1_000;
    await drivers.pass();
    const healthy = asked;
    for (let step = 0; step < 10; step += 1) {
      clock += 100;
      await drivers.pass();
    }
    assert.equal(asked, healthy + 1, 'a healthy router is asked once a drift check');
    failing = true;
    clock += 1_000;
    await drivers.pass();
    assert.equal(reports.length, 3, 'a new failure is said at once');
  });
});

// A router a link left is emptied (its routes taken away) before it is forgotten. It was tried in
// the link's own turn, so one that did not answer held up the link's orders for its command
// timeout on every try, and one that failed logged the same error every drift check.
describe('a router a link left is emptied beside the link, its errors said once a while', () => {
  let store: Store;
  let drivers: LinkDrivers | undefined;
  let clock = 0;
  const asked = new Map<string, number>();
  let mode: 'hang' | 'fail' = 'hang';
  let release: (() => void) | undefined;
  let hanging = false;
  const reports: string[][] = [];
  const current = { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.2' };
  const former = { kind: 'relay', inbound: '127.0.0.9', outbound: '127.0.0.2' };
  const makeDriver = (router: LinkRouter): RouterDriver => ({
    reconcile: async () => {
      asked.set(router.inbound, (asked.get(router.inbound) ?? 0) + 1);
      if (router.inbound === former.inbound) {
        if (mode === 'hang') {
          hanging = true;
          await new Promise<void>((resolve) => {
            release = resolve;
          });
          hanging = false;
        }
        return { added: [], removed: [], errors: ['former router unreachable'] };
      }
      return { added: [], removed: [], errors: [] };
    },
    close: async () => undefined,
  });
  before(async () => {
    store = await openStore('sqlite::memory:');
    await addRelayLink(store, 'moved', current.inbound, current.outbound);
    // The link was on the former router when no server ran: its routes may still be there.
    await store.db
      .insertInto('order_link_routers')
      .values({ link: 'moved', router_config: JSON.stringify(former) })
      .execute();
  });
  after(async () => {
    release?.();
    await drivers?.close();
    await store?.close();
  });

  it('a former router that does not answer holds up no order on the link', async () => {
    const book = createOrderBook(store, { leaseMs: 60_000 });
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'a',
      makeDriver,
      onReport: (_link, report) => reports.push(report.errors),
      pollMs: 20,
      driftCheckMs: 50,
      leaseMs: 60_000,
    });
    await until('the former router is being emptied', () => hanging, 5_000);
    await until('the link is driven', () => (asked.get(current.inbound) ?? 0) > 0, 5_000);
    const before = asked.get(current.inbound) ?? 0;
    drivers.poke('moved');
    await until(
      'the order reconciled while the former router hangs',
      () => (asked.get(current.inbound) ?? 0) > before,
      5_000,
    );
    assert.ok(hanging, 'the former router still had not answered');
    mode = 'fail';
    release?.();
    await drivers.close();
    drivers = undefined;
  });

  it('says the same errors of a former router once a while', async () => {
    reports.length = 0;
    const book = createOrderBook(store, { leaseMs: 60_000 });
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'b',
      makeDriver,
      onReport: (_link, report) => reports.push(report.errors),
      pollMs: 100,
      driftCheckMs: 1_000,
      errorRepeatMs: 30_000,
      leaseMs: 3_600_000,
      now: () => clock,
      monotonic: () => clock,
    });
    const triedBefore = asked.get(former.inbound) ?? 0;
    for (let step = 0; step < 100; step += 1) {
      await drivers.pass();
      clock += 100;
    }
    // Tried at 0, 1, 3 and 7 s: the wait doubles from a drift check's.
    const tried = (asked.get(former.inbound) ?? 0) - triedBefore;
    assert.ok(tried >= 3 && tried <= 5, `tried ${tried} times in 10 s (waits of 1, 2, 4 s)`);
    assert.deepEqual(reports, [['former router unreachable']]);
    clock += 30_000;
    await drivers.pass();
    assert.deepEqual(reports, [['former router unreachable'], ['former router unreachable']]);
  });
});

// The emptying of a router a link left ran inside every pass (and inline when the link moved while
// this server drove it): one that did not answer held up the drift checks and lease refreshes of
// every link, and the link's own new router, for its command timeout on every try.
describe('a former router that does not answer holds up no pass and no new router', () => {
  let store: Store;
  let drivers: LinkDrivers | undefined;
  const asked = new Map<string, number>();
  const releases: Array<() => void> = [];
  /** Routers (by inbound address) whose emptying hangs. */
  const hangs = new Set<string>();
  const makeDriver = (router: LinkRouter): RouterDriver => ({
    reconcile: async (_wanted, options) => {
      asked.set(router.inbound, (asked.get(router.inbound) ?? 0) + 1);
      if (options?.final === true && hangs.has(router.inbound)) {
        await new Promise<void>((resolve) => releases.push(resolve));
      }
      return { added: [], removed: [], errors: [] };
    },
    close: async () => undefined,
  });
  const relay = (inbound: string) => ({ kind: 'relay', inbound, outbound: '127.0.0.2' });
  const addLink = (name: string, inbound: string) => addRelayLink(store, name, inbound, '127.0.0.2');
  before(async () => {
    store = await openStore('sqlite::memory:');
    await addLink('left', '127.0.1.1');
    await addLink('other', '127.0.2.1');
    // 'left' was on 127.0.1.9 when no server ran: its emptying hangs.
    await store.db
      .insertInto('order_link_routers')
      .values({ link: 'left', router_config: JSON.stringify(relay('127.0.1.9')) })
      .execute();
    hangs.add('127.0.1.9');
  });
  after(async () => {
    for (const release of releases) {
      release();
    }
    await drivers?.close();
    await store?.close();
  });

  it('drift checks go on on every link while a former router hangs, and a move drives the new router at once', async () => {
    const book = createOrderBook(store, { leaseMs: 60_000 });
    drivers = startLinkDrivers({ store, book, holder: 'a', makeDriver, pollMs: 20, driftCheckMs: 50 });
    await until('the former router being emptied', () => (asked.get('127.0.1.9') ?? 0) > 0, 5_000);
    const other = asked.get('127.0.2.1') ?? 0;
    const left = asked.get('127.0.1.1') ?? 0;
    await until(
      'three more drift checks of each link',
      () => (asked.get('127.0.2.1') ?? 0) >= other + 3 && (asked.get('127.0.1.1') ?? 0) >= left + 3,
      5_000,
    );
    // The link moves off a router whose emptying hangs too: the new one is driven at once.
    hangs.add('127.0.1.1');
    await store.db
      .updateTable('order_links')
      .set((eb) => ({ router_config: JSON.stringify(relay('127.0.1.2')), version: eb('version', '+', 1) }))
      .where('name', '=', 'left')
      .execute();
    drivers.poke('left');
    await until('the new router driven', () => (asked.get('127.0.1.2') ?? 0) > 0, 2_000);
    await until('the old one being emptied', () => releases.length >= 2, 2_000);
    // Back onto the router still being emptied (A, B, A): not driven until that is done, while
    // every other link goes on; then driven at once.
    const backAt = asked.get('127.0.1.1') ?? 0;
    await store.db
      .updateTable('order_links')
      .set((eb) => ({ router_config: JSON.stringify(relay('127.0.1.1')), version: eb('version', '+', 1) }))
      .where('name', '=', 'left')
      .execute();
    drivers.poke('left');
    const otherBefore = asked.get('127.0.2.1') ?? 0;
    await until(
      'three drift checks of the other link',
      () => (asked.get('127.0.2.1') ?? 0) >= otherBefore + 3,
      5_000,
    );
    assert.equal(asked.get('127.0.1.1'), backAt, 'driven while it was still being emptied');
    for (const release of releases.splice(0)) {
      release();
    }
    await until('driven once emptied', () => (asked.get('127.0.1.1') ?? 0) > backAt, 2_000);
  });
});
