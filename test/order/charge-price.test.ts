import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import type { OrderRole } from '../../src/order/app.js';
import type { RouterDriver } from '../../src/order/driver.js';
import { openStore, type Store } from '../../src/store/database.js';

const operatorToken = 'operator-token-for-order-price-tests-0123';

// Orders were rated by the rate card in force when the charge was made: a per-hour order is
// charged when it ends, so a price raised while a box held the channel was charged for the hours
// held before the raise too. An order keeps the card's price of its admission.
describe('orders are charged at the rate card of their admission', () => {
  let store: Store;
  let app: FastifyInstance;
  let role: OrderRole | undefined;
  const call = async (
    method: 'GET' | 'PUT' | 'POST' | 'DELETE',
    url: string,
    token: string,
    payload?: object,
  ) => {
    const response = await app.inject({
      method,
      url,
      headers: { authorization: `Bearer ${token}` },
      ...(payload === undefined ? {} : { payload }),
    });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  };
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

  it('charges a per-hour and a per-order order at the prices of when they were admitted', async () => {
    const ok = (answer: { status: number; body: unknown }, status = 200) =>
      assert.equal(answer.status, status, JSON.stringify(answer.body));
    ok(
      await call('PUT', '/v1/order/links/sat', operatorToken, {
        capacity: 10_000_000,
        router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
      }),
    );
    for (const [name, price, group] of [
      ['hourly', 'per-hour', '239.75.0.1:5000'],
      ['once', 'per-order', '239.75.0.2:5000'],
    ] as const) {
      ok(
        await call('PUT', `/v1/order/services/${name}`, operatorToken, {
          link: 'sat',
          group,
          bitRate: 1_000_000,
          price,
        }),
      );
    }
    const box = await call('POST', '/v1/subscribers', operatorToken, { name: 'pricebox' });
    ok(box, 201);
    const [id, token] = [box.body.id as string, box.body.token as string];
    ok(await call('POST', '/v1/entitlements', operatorToken, { subscriber: id, service: 'channel' }), 201);
    ok(await call('PUT', '/v1/rates', operatorToken, { channelOrderPerHour: 3600, channelOrderPerOrder: 7 }));
    const hourly = await call('POST', '/v1/order/orders', token, { service: 'hourly' });
    const once = await call('POST', '/v1/order/orders', token, { service: 'once' });
    ok(hourly, 201);
    ok(once, 201);
    // The operator raises the prices a hundredfold while the box holds both.
    ok(
      await call('PUT', '/v1/rates', operatorToken, {
        channelOrderPerHour: 360_000,
        channelOrderPerOrder: 700,
      }),
    );
    ok(await call('DELETE', `/v1/order/orders/${hourly.body.id as string}`, token));
    // Held for exactly an hour (the times written in the store: a test does not wait an hour).
    await store.db
      .updateTable('orders')
      .set({ created_at: '2026-06-01T10:00:00.000Z', ended_at: '2026-06-01T11:00:00.000Z' })
      .where('id', '=', hourly.body.id as string)
      .execute();
    assert.ok(role !== undefined);
    assert.equal(await role.chargeOrders(), 2);
    const balance = await call('GET', `/v1/accounts/${id}/balance`, operatorToken);
    // 3600 s at 3600 per hour, and one order at 7: the prices when they were admitted.
    assert.equal(balance.body.balance, -(3600 + 7));
    // An order admitted now is charged at the raised price.
    const later = await call('POST', '/v1/order/orders', token, { service: 'once' });
    ok(later, 200); // the same order (still held): ordering twice is one order, charged once
    assert.equal(await role.chargeOrders(), 0);
    ok(await call('DELETE', `/v1/order/orders/${once.body.id as string}`, token));
    ok(await call('POST', '/v1/order/orders', token, { service: 'once' }), 201);
    assert.equal(await role.chargeOrders(), 1);
    assert.equal(
      (await call('GET', `/v1/accounts/${id}/balance`, operatorToken)).body.balance,
      -(3600 + 7 + 700),
    );
  });
  // An order admitted and pre-empted by a later order of the same batch is answered 409 (it was
  // never on the air for the box), yet its row was charged like any other: one channel-orders unit
  // per order, or a second of a per-hour service.
  it('charges nothing for an order pre-empted in the batch that admitted it', async () => {
    const ok = (answer: { status: number; body: unknown }, status = 200) =>
      assert.equal(answer.status, status, JSON.stringify(answer.body));
    ok(
      await call('PUT', '/v1/order/links/full', operatorToken, {
        capacity: 1_000_000,
        router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
        policy: 'preempt',
      }),
    );
    for (const [name, price, priority, group] of [
      ['low-once', 'per-order', 1, '239.75.1.1:5000'],
      ['low-hourly', 'per-hour', 2, '239.75.1.2:5000'],
      ['high', 'per-order', 9, '239.75.1.3:5000'],
    ] as const) {
      ok(
        await call('PUT', `/v1/order/services/${name}`, operatorToken, {
          link: 'full',
          group,
          bitRate: 1_000_000,
          price,
          priority,
        }),
      );
    }
    const boxes: Array<{ id: string }> = [];
    for (const name of ['lowbox1', 'lowbox2', 'highbox']) {
      const box = await call('POST', '/v1/subscribers', operatorToken, { name });
      ok(box, 201);
      const id = box.body.id as string;
      ok(await call('POST', '/v1/entitlements', operatorToken, { subscriber: id, service: 'channel' }), 201);
      boxes.push({ id });
    }
    ok(await call('PUT', '/v1/rates', operatorToken, { channelOrderPerHour: 3600, channelOrderPerOrder: 7 }));
    assert.ok(role !== undefined);
    assert.equal(await role.chargeOrders(), 0);
    const [lowOnce, lowHourly, high] = await Promise.all([
      role.book.order(boxes[0]?.id as string, 'low-once'),
      role.book.order(boxes[1]?.id as string, 'low-hourly'),
      role.book.order(boxes[2]?.id as string, 'high'),
    ]);
    assert.equal(lowOnce?.kind, 'preempted');
    assert.equal(lowHourly?.kind, 'preempted');
    assert.equal(high?.kind, 'ordered');
    assert.equal(await role.chargeOrders(), 1);
    const balances = [];
    for (const box of boxes) {
      balances.push((await call('GET', `/v1/accounts/${box.id}/balance`, operatorToken)).body.balance);
    }
    assert.deepEqual(balances, [0, 0, -7]);
  });
  // An order was charged by the price its service has when the charge is made: a per-hour order
  // that ended and was not charged yet (billing retried, or the sweep not run), then its service
  // changed to per-order, was charged one order at the per-hour price; changed to a subscription,
  // nothing at all.
  it('charges an order by the kind of price its service had when it was admitted', async () => {
    const ok = (answer: { status: number; body: unknown }, status = 200) =>
      assert.equal(answer.status, status, JSON.stringify(answer.body));
    ok(
      await call('PUT', '/v1/order/links/kinds', operatorToken, {
        capacity: 10_000_000,
        router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
      }),
    );
    const service = (price: string) => ({ link: 'kinds', group: '239.75.2.1:5000', bitRate: 1_000, price });
    ok(await call('PUT', '/v1/order/services/switch', operatorToken, service('per-hour')));
    const box = await call('POST', '/v1/subscribers', operatorToken, { name: 'kindbox' });
    ok(box, 201);
    const [id, token] = [box.body.id as string, box.body.token as string];
    ok(await call('POST', '/v1/entitlements', operatorToken, { subscriber: id, service: 'channel' }), 201);
    ok(
      await call('PUT', '/v1/rates', operatorToken, {
        channelOrderPerHour: 3600,
        channelOrderPerOrder: 100_000,
      }),
    );
    assert.ok(role !== undefined);
    assert.equal(await role.chargeOrders(), 0);
    const order = await call('POST', '/v1/order/orders', token, { service: 'switch' });
    ok(order, 201);
    ok(await call('DELETE', `/v1/order/orders/${order.body.id as string}`, token));
    await store.db
      .updateTable('orders')
      .set({ created_at: '2026-06-01T10:00:00.000Z', ended_at: '2026-06-01T10:10:00.000Z' })
      .where('id', '=', order.body.id as string)
      .execute();
    // Before the charge, the operator makes the (no longer ordered) service per-order.
    ok(await call('PUT', '/v1/order/services/switch', operatorToken, service('per-order')));
    assert.equal(await role.chargeOrders(), 1);
    // Ten minutes at 3600 per hour, as admitted; not one order at 3600, nor at 100,000.
    assert.equal((await call('GET', `/v1/accounts/${id}/balance`, operatorToken)).body.balance, -600);
  });
});
