import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createOrderBook } from '../../src/order/book.js';
import { type LinkDrivers, type RouterDriver, startLinkDrivers } from '../../src/order/driver.js';
import type { LinkRouter } from '../../src/protocol/api-order.js';
import { openStore, type Store } from '../../src/store/database.js';
import { waitUntil as until } from '../helpers/wait.js';

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
    const iso = new Date().toISOString();
    for (const [name, inbound] of [
      ['stuck', '127.0.0.1'],
      ['fine', '127.0.0.2'],
    ] as const) {
      await store.db
        .insertInto('order_links')
        .values({
          name,
          capacity_bits: 10_000_000,
          used_bits: 0,
          router: 'relay',
          router_config: JSON.stringify({ kind: 'relay', inbound, outbound: inbound }),
          policy: 'reject',
          version: 0,
          created_at: iso,
          updated_at: iso,
        })
        .execute();
    }
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
