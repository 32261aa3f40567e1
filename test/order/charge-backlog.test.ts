import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import type { OrderRole } from '../../src/order/app.js';
import type { RouterDriver } from '../../src/order/driver.js';
import { openStore, type Store } from '../../src/store/database.js';

const operatorToken = 'operator-token-for-order-charge-tests-01';

// The charger read 500 uncharged orders at a time and skipped the per-hour ones still held: with
// 500 boxes holding a per-hour channel, every sweep read the same 500 and charged nothing else, so
// no order was charged again (per order, or per hour when it ended) until some of them ended.
describe('order charging with many per-hour orders held', () => {
  let store: Store;
  let app: FastifyInstance;
  let role: OrderRole | undefined;
  before(async () => {
    store = await openStore('sqlite::memory:');
    const makeDriver = (): RouterDriver => ({
      reconcile: async () => ({ added: [], removed: [], errors: [] }),
      close: async () => undefined,
    });
    app = await buildServerApp({
      store,
      operatorToken,
      roles: ['subscription', 'billing', 'order'],
      order: {
        makeDriver,
        billingSweepMs: 3_600_000,
        expirySweepMs: 3_600_000,
        driverPollMs: 3_600_000,
        onStarted: (started) => {
          role = started;
        },
      },
    });
  });
  after(async () => {
    await app?.close();
    await store?.close();
  });

  it('charges a per-order order behind 600 per-hour orders still held', async () => {
    const iso = new Date().toISOString();
    const put = async (url: string, payload: object) => {
      const response = await app.inject({
        method: 'PUT',
        url,
        headers: { authorization: `Bearer ${operatorToken}` },
        payload,
      });
      assert.equal(response.statusCode, 200, response.body);
    };
    await put('/v1/order/links/sat', {
      capacity: 10_000_000,
      router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
    });
    await put('/v1/order/services/hourly', {
      link: 'sat',
      group: '239.80.0.1:5000',
      bitRate: 1,
      price: 'per-hour',
    });
    await put('/v1/order/services/news', {
      link: 'sat',
      group: '239.80.0.2:5000',
      bitRate: 1,
      price: 'per-order',
    });
    const created = await app.inject({
      method: 'POST',
      url: '/v1/subscribers',
      headers: { authorization: `Bearer ${operatorToken}` },
      payload: { name: 'late' },
    });
    assert.equal(created.statusCode, 201, created.body);
    const late = (created.json() as { id: string }).id;
    // The store as 600 boxes holding the per-hour channel leave it (written directly: the
    // charger reads the store, however the orders came in), then the order to charge.
    const fillers = Array.from({ length: 600 }, (_, i) => `holder-${i}`);
    await store.db
      .insertInto('parties')
      .values(
        fillers.map((id) => ({
          id,
          kind: 'subscriber',
          name: id,
          token_hash: `hash-${id}`,
          created_at: iso,
        })),
      )
      .execute();
    const order = (id: string, box: string, service: string) => ({
      id,
      box,
      service,
      link: 'sat',
      state: 'active',
      created_at: iso,
      renewed_at: iso,
      expires_at_ms: Date.now() + 3_600_000,
      ended_at: null,
      charged: 0,
    });
    await store.db
      .insertInto('orders')
      .values(fillers.map((box, i) => order(`hourly-${i}`, box, 'hourly')))
      .execute();
    await store.db
      .insertInto('orders')
      .values(order('late-order', late, 'news'))
      .execute();
    assert.ok(role !== undefined);
    assert.equal(await role.chargeOrders(), 1);
    const events = await store.db
      .selectFrom('usage_events')
      .selectAll()
      .where('account', '=', late)
      .execute();
    assert.deepEqual(
      events.map((event) => [event.kind, Number(event.quantity)]),
      [['channel-orders', 1]],
    );
  });
});
