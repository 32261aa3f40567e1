import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type {
  KyselyPlugin,
  PluginTransformQueryArgs,
  PluginTransformResultArgs,
  QueryResult,
  RootOperationNode,
  UnknownRow,
} from 'kysely';
import { sql } from 'kysely';
import { createOrderBook } from '../../src/order/book.js';
import { openStore, type Store } from '../../src/store/database.js';
import { postgresSkip, startPostgres } from '../helpers/postgres.js';

const boxesPerRound = 1;

/** A link with one service, and boxes entitled to every channel, straight in the store. */
async function makeRound(store: Store, n: number): Promise<void> {
  const iso = new Date().toISOString();
  await store.db
    .insertInto('order_links')
    .values({
      name: `r${n}-sat`,
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
  await store.db
    .insertInto('order_services')
    .values({
      name: `r${n}-news`,
      link: `r${n}-sat`,
      group_address: `239.76.${n}.1`,
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
  const boxes = Array.from({ length: boxesPerRound }, (_, i) => `r${n}-box${i}`);
  await store.db
    .insertInto('parties')
    .values(
      boxes.map((id) => ({ id, kind: 'subscriber', name: id, token_hash: `hash-${id}`, created_at: iso })),
    )
    .execute();
  await store.db
    .insertInto('entitlements')
    .values(
      boxes.map((id) => ({
        id: `ent-${id}`,
        subscriber: id,
        service: 'channel',
        session: null,
        valid_from: null,
        valid_to: null,
        monthly: null,
        created_at: iso,
      })),
    )
    .execute();
}

/**
 * Holds a batch's transaction right after it read what it decides on (the services' refcounts
 * come right after the orders' rows), until released: the moment a renewal could slip in.
 */
function holdAfterDecisiveRead() {
  const marked = new WeakSet<object>();
  let held: (() => void) | undefined;
  let reached: (() => void) | undefined;
  const reachedPromise = new Promise<void>((resolve) => {
    reached = resolve;
  });
  const plugin: KyselyPlugin = {
    transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
      if (args.node.kind === 'SelectQueryNode' && JSON.stringify(args.node.from).includes('"order_active"')) {
        marked.add(args.queryId);
      }
      return args.node;
    },
    async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
      if (marked.has(args.queryId) && reached !== undefined) {
        const release = new Promise<void>((resolve) => {
          held = resolve;
        });
        reached();
        reached = undefined;
        await release;
      }
      return args.result;
    },
  };
  return {
    wrap: (store: Store): Store => ({
      ...store,
      db: store.db,
      dialect: store.dialect,
      writeTransaction: (fn) => store.writeTransaction((trx) => fn(trx.withPlugin(plugin))),
      close: () => store.close(),
      [Symbol.asyncDispose]: () => store.close(),
    }),
    reached: reachedPromise,
    release: () => held?.(),
  };
}

/** Until the promise settles or a session of the store waits on a row lock (bounded). */
async function settledOrWaitingOnLock(store: Store, promise: Promise<unknown>): Promise<void> {
  let settled = false;
  void promise.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  for (let i = 0; i < 500 && !settled; i++) {
    const waiting = await sql<{
      count: string;
    }>`select count(*) as count from pg_stat_activity where wait_event_type = 'Lock'`.execute(store.db);
    if (Number(waiting.rows[0]?.count) > 0) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.ok(settled, 'the renewal neither finished nor waited on a lock within 5 s');
}

// On PostgreSQL a renewal's update and the sweep's decision did not share a lock: the sweep read an
// order as expired, the renewal then extended it and answered 200, and the sweep wrote it expired
// (and took its route away). Here the sweep (server B, its clock 1 ms past the lease) is held right
// after it read the order, and the renewal (server A, its clock at the lease's last instant) comes
// then.
describe('a renewal racing the expiry sweep on PostgreSQL', postgresSkip(), () => {
  it('is answered "renewed" only for an order the store keeps active with that lease', async () => {
    const postgres = startPostgres();
    const a = await openStore(postgres.url);
    const b = await openStore(postgres.url);
    try {
      await makeRound(a, 0);
      const start = Date.parse('2026-05-01T00:00:00Z');
      const leaseMs = 60_000;
      let clockA = start;
      const renewer = createOrderBook(a, { leaseMs, now: () => clockA });
      const ordered = await renewer.order('r0-box0', 'r0-news');
      assert.ok(ordered.kind === 'ordered');
      clockA = start + leaseMs; // the last instant of the lease
      const hold = holdAfterDecisiveRead();
      const sweeper = createOrderBook(hold.wrap(b), { leaseMs, now: () => start + leaseMs + 1 });
      const swept = sweeper.expire();
      await hold.reached;
      const renewal = renewer.renew('r0-box0', ordered.order.id);
      await settledOrWaitingOnLock(a, renewal);
      hold.release();
      const [expired, answer] = await Promise.all([swept, renewal]);
      const row = await a.db
        .selectFrom('orders')
        .selectAll()
        .where('id', '=', ordered.order.id)
        .executeTakeFirstOrThrow();
      if (typeof answer === 'object' && !('kind' in answer)) {
        assert.equal(
          row.state,
          'active',
          `answered renewed until ${answer.expiresAt}, but the store has it ${row.state}`,
        );
        assert.equal(Number(row.expires_at_ms), Date.parse(answer.expiresAt));
        assert.equal(expired, 0);
      } else {
        assert.equal(answer, 'ended');
        assert.equal(row.state, 'expired');
        assert.equal(expired, 1);
      }
      const refcount = await a.db
        .selectFrom('order_active')
        .select('refcount')
        .where('service', '=', 'r0-news')
        .executeTakeFirst();
      assert.equal(Number(refcount?.refcount ?? 0), row.state === 'active' ? 1 : 0);
    } finally {
      await a.close();
      await b.close();
      postgres.stop();
    }
  });
});
