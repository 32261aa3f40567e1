import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Kysely, sql } from 'kysely';
import { createBatchCommitter, createOrderBook, type OrderBook } from '../../src/order/book.js';
import { openStore, type Schema, type Store } from '../../src/store/database.js';
import { activeOrders, makeBox, makeLink } from '../helpers/order-store.js';
import { onEveryStore, postgresSkip, startPostgres } from '../helpers/postgres.js';
import { waitUntil } from '../helpers/wait.js';

/** What the store says, to compare with what it should say. */
export async function linkState(store: Store, link: string) {
  const { row, active, counted } = await activeOrders(store, link);
  const services = await store.db.selectFrom('order_services').selectAll().where('link', '=', link).execute();
  const rate = new Map(services.map((service) => [service.name, Number(service.bit_rate)]));
  const expectedUsed = [...counted.keys()].reduce((sum, name) => sum + (rate.get(name) ?? 0), 0);
  return {
    used: Number(row.used_bits),
    capacity: Number(row.capacity_bits),
    expectedUsed,
    refcounts: Object.fromEntries(active.map((a) => [a.service, Number(a.refcount)]).sort()),
    counted: Object.fromEntries([...counted.entries()].sort()),
  };
}

function bookSuite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`order book on ${name}`, options, () => {
    let store: Store;
    let clock = Date.parse('2026-01-01T00:00:00Z');
    let book: OrderBook;
    const changed: string[] = [];
    before(async () => {
      store = await openStore(url());
      book = createOrderBook(store, {
        leaseMs: 60_000,
        now: () => clock,
        onLinkChanged: (l) => changed.push(l),
      });
      await makeLink(store, 'sat', 10_000_000, 'reject', [
        { name: 'news', rate: 4_000_000 },
        { name: 'sport', rate: 4_000_000 },
        { name: 'film', rate: 4_000_000 },
      ]);
      await makeLink(store, 'cable', 10_000_000, 'preempt', [
        { name: 'low', rate: 6_000_000, priority: 1 },
        { name: 'mid', rate: 4_000_000, priority: 5 },
        { name: 'high', rate: 6_000_000, priority: 9 },
      ]);
      for (const box of ['b1', 'b2', 'b3']) {
        await makeBox(store, box);
      }
      await makeBox(store, 'only-news', 'news');
    });
    after(async () => {
      await store?.close();
      cleanup();
    });

    it('admits an order, counts boxes per service, and takes capacity only once per service', async () => {
      const first = await book.order('b1', 'news');
      assert.equal(first.kind, 'ordered');
      const second = await book.order('b2', 'news');
      assert.equal(second.kind, 'ordered');
      const state = await linkState(store, 'sat');
      assert.equal(state.used, 4_000_000);
      assert.deepEqual(state.refcounts, { news: 2 });
      assert.deepEqual(changed, ['sat']);
    });

    it('ordering twice is one order (the second renews its lease)', async () => {
      const before = await book.order('b1', 'news');
      clock += 1000;
      const again = await book.order('b1', 'news');
      assert.ok(before.kind === 'ordered' && again.kind === 'ordered');
      assert.equal(again.order.id, before.order.id);
      assert.equal(again.created, false);
      assert.ok(Date.parse(again.order.expiresAt) > Date.parse(before.order.expiresAt));
      assert.deepEqual((await linkState(store, 'sat')).refcounts, { news: 2 });
    });

    it('refuses a full link with capacity-full and what is in use, writing nothing', async () => {
      assert.equal((await book.order('b1', 'sport')).kind, 'ordered');
      const refused = await book.order('b3', 'film');
      assert.equal(refused.kind, 'capacity-full');
      assert.ok(refused.kind === 'capacity-full');
      assert.equal(refused.used, 8_000_000);
      assert.equal(refused.capacity, 10_000_000);
      assert.deepEqual(
        refused.inUse.map((row) => [row.service, row.boxes]),
        [
          ['news', 2],
          ['sport', 1],
        ],
      );
      const state = await linkState(store, 'sat');
      assert.equal(state.used, 8_000_000);
      assert.deepEqual(state.counted, { news: 2, sport: 1 });
    });

    it('refuses a box without a channel entitlement for the service', async () => {
      const refused = await book.order('only-news', 'sport');
      assert.equal(refused.kind, 'not-entitled');
      assert.equal((await book.order('only-news', 'news')).kind, 'ordered');
      assert.equal((await book.order('b1', 'nothing')).kind, 'unknown-service');
    });

    it('cancelling one of two orders keeps the service; the last one frees the link', async () => {
      const orders = await store.db
        .selectFrom('orders')
        .select(['id', 'box'])
        .where('service', '=', 'news')
        .where('state', '=', 'active')
        .execute();
      assert.equal(orders.length, 3);
      changed.length = 0;
      for (const [i, order] of orders.entries()) {
        const cancelled = await book.cancel(order.box, order.id);
        assert.equal(cancelled?.state, 'cancelled');
        const state = await linkState(store, 'sat');
        assert.equal(state.used, i < 2 ? 8_000_000 : 4_000_000);
      }
      assert.deepEqual(changed, ['sat']);
      // Cancelling again returns the ended order and changes nothing; another box's order is not found.
      const again = await book.cancel(orders[0]?.box as string, orders[0]?.id as string);
      assert.equal(again?.state, 'cancelled');
      assert.equal(await book.cancel('b3', orders[1]?.id as string), undefined);
      assert.equal((await linkState(store, 'sat')).used, 4_000_000);
    });

    it('pre-empts the lowest priority service on a preempt link, never a higher one', async () => {
      assert.equal((await book.order('b1', 'low')).kind, 'ordered');
      assert.equal((await book.order('b2', 'mid')).kind, 'ordered');
      const high = await book.order('b3', 'high');
      assert.ok(high.kind === 'ordered');
      assert.deepEqual(high.preempted, ['low']);
      const state = await linkState(store, 'cable');
      assert.deepEqual(state.refcounts, { high: 1, mid: 1 });
      assert.equal(state.used, 10_000_000);
      const dropped = await store.db
        .selectFrom('orders')
        .select('state')
        .where('service', '=', 'low')
        .execute();
      assert.deepEqual(
        dropped.map((row) => row.state),
        ['preempted'],
      );
      // A lower priority cannot push a higher one out.
      assert.equal((await book.order('b1', 'low')).kind, 'capacity-full');
    });

    it('expires orders whose lease ran out, unless renewed, and frees the link', async () => {
      const sport = await store.db
        .selectFrom('orders')
        .select(['id', 'box'])
        .where('service', '=', 'sport')
        .where('state', '=', 'active')
        .executeTakeFirstOrThrow();
      clock += 50_000;
      const renewed = await book.renew(sport.box, sport.id);
      assert.ok(renewed !== undefined && renewed !== 'ended');
      clock += 30_000; // the others' leases (60 s) ran out; sport's runs until +110 s
      const expired = await book.expire();
      assert.ok(expired >= 2, `expired ${expired}`);
      assert.deepEqual((await linkState(store, 'cable')).refcounts, {});
      assert.equal((await linkState(store, 'cable')).used, 0);
      const sat = await linkState(store, 'sat');
      assert.deepEqual(sat.refcounts, { sport: 1 });
      clock += 60_000;
      assert.equal(await book.expire(), 1);
      assert.equal(await book.renew(sport.box, sport.id), 'ended');
      assert.equal((await linkState(store, 'sat')).used, 0);
    });

    it('group commit: 60 boxes ordering and cancelling at once are each admitted exactly once', async () => {
      const boxes = Array.from({ length: 60 }, (_, i) => `gc${i}`);
      for (const box of boxes) {
        await makeBox(store, box);
      }
      // Everyone orders news twice and sport once, all at once: one order per box and service.
      const outcomes = await Promise.all(
        boxes.flatMap((box) => [book.order(box, 'news'), book.order(box, 'news'), book.order(box, 'sport')]),
      );
      assert.ok(outcomes.every((outcome) => outcome.kind === 'ordered'));
      const created = outcomes.filter((outcome) => outcome.kind === 'ordered' && outcome.created);
      assert.equal(created.length, 120);
      let state = await linkState(store, 'sat');
      assert.deepEqual(state.refcounts, { news: 60, sport: 60 });
      assert.equal(state.used, 8_000_000);
      // Half the boxes cancel everything at once.
      await Promise.all(
        created
          .filter((_, i) => i % 2 === 0)
          .map((outcome) =>
            outcome.kind === 'ordered' ? book.cancel(outcome.order.box, outcome.order.id) : null,
          ),
      );
      state = await linkState(store, 'sat');
      assert.deepEqual(state.refcounts, state.counted);
      assert.equal(
        Object.values(state.counted).reduce((sum, n) => sum + n, 0),
        60,
      );
      assert.equal(state.used, state.expectedUsed);
      clock += 120_000;
      assert.equal(await book.expire(), 60);
      assert.deepEqual((await linkState(store, 'sat')).refcounts, {});
      assert.equal((await linkState(store, 'sat')).used, 0);
    });

    it('a batch of orders arriving at once gets each its own answer, as one after another would', async () => {
      await makeLink(store, 'batch-sat', 10_000_000, 'reject', [
        { name: 'bnews', rate: 4_000_000, group: '239.77.1.1' },
        { name: 'bsport', rate: 4_000_000, group: '239.77.1.2' },
        { name: 'bfilm', rate: 4_000_000, group: '239.77.1.3' },
      ]);
      const outcomes = await Promise.all([
        book.order('b1', 'bnews'),
        book.order('b1', 'bnews'), // the same box and service again: the same order
        book.order('b2', 'no-such-service'),
        book.order('only-news', 'bsport'), // entitled to news only
        book.order('b2', 'bsport'),
        book.order('b3', 'bfilm'), // the link is full by now
      ]);
      assert.deepEqual(
        outcomes.map((outcome) => outcome.kind),
        ['ordered', 'ordered', 'unknown-service', 'not-entitled', 'ordered', 'capacity-full'],
      );
      const [first, again, , , , full] = outcomes;
      assert.ok(first?.kind === 'ordered' && again?.kind === 'ordered');
      assert.equal(first.created, true);
      assert.equal(again.created, false);
      assert.equal(again.order.id, first.order.id);
      assert.ok(full?.kind === 'capacity-full');
      assert.equal(full.used, 8_000_000);
      assert.deepEqual(
        full.inUse.map((row) => [row.service, row.boxes]),
        [
          ['bnews', 1],
          ['bsport', 1],
        ],
      );
      const state = await linkState(store, 'batch-sat');
      assert.deepEqual(state.refcounts, { bnews: 1, bsport: 1 });
      assert.deepEqual(state.counted, state.refcounts);
      assert.equal(state.used, 8_000_000);
    });

    it('a batch that activates a low priority service and then needs its room pre-empts it', async () => {
      await makeLink(store, 'batch-cable', 10_000_000, 'preempt', [
        { name: 'blow', rate: 6_000_000, priority: 1, group: '239.77.2.1' },
        { name: 'bmid', rate: 4_000_000, priority: 5, group: '239.77.2.2' },
        { name: 'bhigh', rate: 6_000_000, priority: 9, group: '239.77.2.3' },
      ]);
      const [low, mid, high] = await Promise.all([
        book.order('b1', 'blow'),
        book.order('b2', 'bmid'),
        book.order('b3', 'bhigh'),
      ]);
      assert.ok(mid?.kind === 'ordered' && high?.kind === 'ordered');
      assert.deepEqual(high.preempted, ['blow']);
      // Answered as the batch left it: pre-empted, not active.
      assert.ok(low?.kind === 'preempted', `the pre-empted order was answered ${low?.kind}`);
      assert.equal(low.order.state, 'preempted');
      assert.match(low.message, /pre-empted by bhigh/);
      const stored = await store.db
        .selectFrom('orders')
        .select('state')
        .where('id', '=', low.order.id)
        .executeTakeFirstOrThrow();
      assert.equal(stored.state, 'preempted');
      const state = await linkState(store, 'batch-cable');
      assert.deepEqual(state.refcounts, { bhigh: 1, bmid: 1 });
      assert.deepEqual(state.counted, state.refcounts);
      assert.equal(state.used, 10_000_000);
    });

    it('an order held before, ordered again and pre-empted in the same batch, is answered pre-empted', async () => {
      await makeLink(store, 'again-cable', 10_000_000, 'preempt', [
        { name: 'alow', rate: 6_000_000, priority: 1, group: '239.77.4.1' },
        { name: 'ahigh', rate: 6_000_000, priority: 9, group: '239.77.4.2' },
      ]);
      const held = await book.order('b1', 'alow');
      assert.ok(held.kind === 'ordered');
      const [again, high] = await Promise.all([book.order('b1', 'alow'), book.order('b2', 'ahigh')]);
      assert.ok(high?.kind === 'ordered');
      assert.deepEqual(high.preempted, ['alow']);
      assert.ok(again?.kind === 'preempted', `the pre-empted order was answered ${again?.kind}`);
      assert.equal(again.order.id, held.order.id);
      assert.equal(again.order.state, 'preempted');
      const stored = await store.db
        .selectFrom('orders')
        .select('state')
        .where('id', '=', held.order.id)
        .executeTakeFirstOrThrow();
      assert.equal(stored.state, 'preempted');
    });

    it('orders and cancels arriving together share a batch: the cancels free their room first', async () => {
      await makeLink(store, 'mixed-sat', 8_000_000, 'reject', [
        { name: 'mone', rate: 4_000_000, group: '239.77.3.1' },
        { name: 'mtwo', rate: 4_000_000, group: '239.77.3.2' },
        { name: 'mthree', rate: 4_000_000, group: '239.77.3.3' },
      ]);
      const one = await book.order('b1', 'mone');
      const two = await book.order('b2', 'mtwo');
      const kept = await book.order('b3', 'mtwo');
      assert.ok(one.kind === 'ordered' && two.kind === 'ordered' && kept.kind === 'ordered');
      assert.equal((await linkState(store, 'mixed-sat')).used, 8_000_000);
      // The link is full; in one turn of the event loop: b1 cancels mone, b2 cancels mtwo (b3 still
      // holds it), b1 orders mthree.
      const [cancelledOne, cancelledTwo, three] = await Promise.all([
        book.cancel('b1', one.order.id),
        book.cancel('b2', two.order.id),
        book.order('b1', 'mthree'),
      ]);
      assert.equal(cancelledOne?.state, 'cancelled');
      assert.equal(cancelledTwo?.state, 'cancelled');
      assert.ok(three.kind === 'ordered' && three.activated);
      const state = await linkState(store, 'mixed-sat');
      assert.deepEqual(state.refcounts, { mthree: 1, mtwo: 1 });
      assert.deepEqual(state.counted, state.refcounts);
      assert.equal(state.used, 8_000_000);
      assert.equal(state.expectedUsed, 8_000_000);
    });

    it('group commit: a request that fails fails alone; the others in its batch are written', async () => {
      const commit = createBatchCommitter(
        store,
        16,
        async (trx: Kysely<Schema>, names: readonly string[]) => {
          if (names.includes('step-fail')) {
            throw new Error('a failing request');
          }
          await trx
            .insertInto('parties')
            .values(
              names.map((name) => ({
                id: name,
                kind: 'subscriber',
                name,
                token_hash: `hash-${name}`,
                created_at: 'now',
              })),
            )
            .execute();
          return names.map((name) => name);
        },
      );
      const results = await Promise.allSettled([
        commit('step-a'),
        commit('step-a'), // the same id again: a constraint fails this request only
        commit('step-b'),
        commit('step-fail'),
        commit('step-c'),
      ]);
      assert.deepEqual(
        results.map((result) => result.status),
        ['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled'],
      );
      const written = await store.db
        .selectFrom('parties')
        .select('id')
        .where('id', 'like', 'step-%')
        .orderBy('id')
        .execute();
      assert.deepEqual(
        written.map((row) => row.id),
        ['step-a', 'step-b', 'step-c'],
      );
    });
  });
}

onEveryStore(bookSuite);

describe('two order servers on one PostgreSQL', postgresSkip(), () => {
  it('never overbook and keep refcounts exact under 200 concurrent orders and cancels', async () => {
    const postgres = startPostgres();
    const a = await openStore(postgres.url);
    const b = await openStore(postgres.url);
    try {
      await concurrentOrders(a, b);
    } finally {
      await a.close();
      await b.close();
      postgres.stop();
    }
  });
});

/** 200 orders and cancels from 40 boxes over two servers; then the store agrees with itself. */
export async function concurrentOrders(a: Store, b: Store): Promise<void> {
  const services = Array.from({ length: 8 }, (_, i) => ({ name: `ch${i}`, rate: 3_000_000 }));
  await makeLink(a, 'busy', 10_000_000, 'reject', services);
  const boxes = await Promise.all(Array.from({ length: 40 }, (_, i) => makeBox(a, `box${i}`)));
  const books = [a, b].map((store) => createOrderBook(store, { leaseMs: 60_000 }));
  let ordered = 0;
  let refused = 0;
  await Promise.all(
    boxes.map(async (box, i) => {
      const book = books[i % 2] as OrderBook;
      for (let k = 0; k < 5; k++) {
        const outcome = await book.order(box, `ch${(i + k) % 8}`);
        if (outcome.kind === 'ordered') {
          ordered += 1;
          if ((i + k) % 3 === 0) {
            await book.cancel(box, outcome.order.id);
          }
        } else {
          assert.equal(outcome.kind, 'capacity-full');
          refused += 1;
        }
      }
    }),
  );
  assert.equal(ordered + refused, 200);
  assert.ok(ordered > 0 && refused > 0, `ordered ${ordered}, refused ${refused}`);
  const state = await linkState(a, 'busy');
  assert.deepEqual(state.refcounts, state.counted);
  assert.equal(state.used, state.expectedUsed);
  assert.ok(state.used <= state.capacity);
}

// An order read its service before it locked the service's link: a service changed in between
// (another bit rate, by an operator on another order server) was admitted at what it had been, so
// the link's capacity counted 1 Mbit/s for a channel of 9 on a link of 5.
describe('a service changed while an order of it waits for its link (PostgreSQL)', postgresSkip(), () => {
  it('is admitted by the service as it is under the lock', async () => {
    const postgres = startPostgres();
    const store = await openStore(postgres.url);
    const other = await openStore(postgres.url);
    let release: () => void = () => undefined;
    let holding: Promise<void> = Promise.resolve();
    try {
      await makeLink(store, 'race', 5_000_000, 'reject', [{ name: 'swap', rate: 1_000_000 }]);
      const box = await makeBox(store, 'racebox');
      const book = createOrderBook(store, { leaseMs: 60_000 });
      const released = new Promise<void>((resolve) => {
        release = resolve;
      });
      // The order starts only once the other transaction holds the link's row: started together,
      // a loaded machine could let the order take the row first, and then nothing ever waits.
      let locked: () => void = () => undefined;
      const lockHeld = new Promise<void>((resolve) => {
        locked = resolve;
      });
      holding = other.db.transaction().execute(async (trx) => {
        await trx.selectFrom('order_links').select('name').where('name', '=', 'race').forUpdate().execute();
        locked();
        await released;
      });
      await Promise.race([lockHeld, holding]);
      const order = book.order(box, 'swap');
      const waiting = async () =>
        Number(
          (
            await sql<{
              count: string;
            }>`select count(*) as count from pg_stat_activity where wait_event_type = 'Lock'`.execute(
              other.db,
            )
          ).rows[0]?.count ?? 0,
        );
      let blocked = 0;
      let asking = false;
      await waitUntil(
        'the order waiting for the link',
        () => {
          // One question at a time: on a loaded machine, a query started at every poll piled up.
          if (!asking) {
            asking = true;
            void waiting()
              .then((count) => {
                blocked = count;
              })
              .finally(() => {
                asking = false;
              });
          }
          return blocked > 0;
        },
        30_000,
      );
      await other.db
        .updateTable('order_services')
        .set({ bit_rate: 9_000_000 })
        .where('name', '=', 'swap')
        .execute();
      release();
      await holding;
      const outcome = await order;
      assert.equal(outcome.kind, 'capacity-full');
      const link = await store.db
        .selectFrom('order_links')
        .select('used_bits')
        .where('name', '=', 'race')
        .executeTakeFirstOrThrow();
      assert.equal(Number(link.used_bits), 0);
    } finally {
      // A failure before the release left the holding transaction open for ever, and closing its
      // pool waited on it: the file hung instead of failing.
      release();
      await holding.catch(() => undefined);
      await store.close();
      await other.close();
      postgres.stop();
    }
  });
});
