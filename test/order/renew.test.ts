import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createOrderBook, type OrderBook } from '../../src/order/book.js';
import { openStore, type Store } from '../../src/store/database.js';
import { makeBox, makeLink } from '../helpers/order-store.js';
import { onEveryStore } from '../helpers/postgres.js';

/** The services the link carries, with their refcounts. */
async function refcounts(store: Store): Promise<Record<string, number>> {
  const rows = await store.db.selectFrom('order_active').selectAll().where('link', '=', 'sat').execute();
  return Object.fromEntries(rows.map((row) => [row.service, Number(row.refcount)]));
}

function renewSuite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`order renewals on ${name}`, options, () => {
    let store: Store;
    let clock = Date.parse('2026-03-01T00:00:00Z');
    let book: OrderBook;
    before(async () => {
      store = await openStore(url());
      book = createOrderBook(store, { leaseMs: 60_000, now: () => clock });
      // A relay link carrying two services of 4 Mbit/s.
      await makeLink(store, 'sat', 10_000_000, 'reject', [
        { name: 'news', rate: 4_000_000, group: '239.78.0.1' },
        { name: 'sport', rate: 4_000_000, group: '239.78.0.2' },
      ]);
      await makeBox(store, 'b1');
      await makeBox(store, 'b2');
    });
    after(async () => {
      await store?.close();
      cleanup();
    });

    it('a renewal after the entitlement ended is refused: the box loses the channel with its lease', async () => {
      const ordered = await book.order('b1', 'news');
      assert.ok(ordered.kind === 'ordered');
      // The operator's grant ends (its validity window closes) while the box holds the order.
      await store.db
        .updateTable('entitlements')
        .set({ valid_to: new Date(clock + 1000).toISOString() })
        .where('subscriber', '=', 'b1')
        .execute();
      clock += 2000;
      const renewed = await book.renew('b1', ordered.order.id);
      assert.ok(typeof renewed === 'object' && 'kind' in renewed, JSON.stringify(renewed));
      assert.equal(renewed.kind, 'not-entitled');
      clock += 60_000;
      assert.equal(await book.expire(), 1);
      assert.deepEqual(await refcounts(store), {});
    });

    it('a renewal after the lease ran out (before the sweep ended it) does not bring the order back', async () => {
      const ordered = await book.order('b2', 'sport');
      assert.ok(ordered.kind === 'ordered');
      clock += 60_001;
      assert.equal(await book.renew('b2', ordered.order.id), 'ended');
      assert.equal(await book.expire(), 1);
      assert.deepEqual(await refcounts(store), {});
    });
  });
}

onEveryStore(renewSuite);
