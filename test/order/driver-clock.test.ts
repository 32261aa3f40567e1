import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createOrderBook } from '../../src/order/book.js';
import { type LinkDrivers, type RouterDriver, startLinkDrivers } from '../../src/order/driver.js';
import { openStore, type Store } from '../../src/store/database.js';
import { waitUntil as until } from '../helpers/wait.js';

// A server judged its driver lease still fresh by its wall clock: stepped back an hour, it stopped
// refreshing the lease for that hour while driving on, so another server took the link over once
// the stored lease ran out and both drove one router (a relay link: every packet twice).
describe('a driver whose clock steps back', () => {
  let store: Store;
  const started: LinkDrivers[] = [];
  const idle = (): RouterDriver => ({
    reconcile: async () => ({ added: [], removed: [], errors: [] }),
    close: async () => undefined,
  });
  before(async () => {
    store = await openStore('sqlite::memory:');
    const iso = new Date().toISOString();
    await store.db
      .insertInto('order_links')
      .values({
        name: 'sat',
        capacity_bits: 10_000_000,
        used_bits: 0,
        router: 'relay',
        router_config: JSON.stringify({ kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' }),
        policy: 'reject',
        version: 0,
        created_at: iso,
        updated_at: iso,
      })
      .execute();
  });
  after(async () => {
    for (const drivers of started) {
      await drivers.close();
    }
    await store?.close();
  });

  it('is never driven by two servers for longer than a lease', async () => {
    const book = createOrderBook(store, { leaseMs: 60_000 });
    const leaseMs = 300;
    let stepMs = 0;
    const start = (holder: string, now: () => number) => {
      const drivers = startLinkDrivers({ store, book, holder, makeDriver: idle, now, leaseMs, pollMs: 20 });
      started.push(drivers);
      return drivers;
    };
    const a = start('a', () => Date.now() - stepMs);
    await until('a drives the link', () => a.held().includes('sat'), 5_000);
    stepMs = 3_600_000;
    const b = start('b', Date.now);
    await until('b takes the link over', () => b.held().includes('sat'), 10_000);
    // a must notice within its next refresh that it lost the link, not an hour later.
    await until('a stops driving it', () => !a.held().includes('sat'), 10_000);
    assert.deepEqual([a.held(), b.held()], [[], ['sat']]);
  });
});
