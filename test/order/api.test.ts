import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import type { OrderRole } from '../../src/order/app.js';
import type { RouteWanted } from '../../src/order/book.js';
import type { RouterDriver } from '../../src/order/driver.js';
import { type OrderStageMessage, orderTraceChannelName } from '../../src/order/trace.js';
import { openStore, type Store } from '../../src/store/database.js';
import { onEveryStore } from '../helpers/postgres.js';

/** Polls an async check until it holds (bounded), naming what was awaited when it does not. */
async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const operatorToken = 'operator-token-for-order-tests-0123456789';

function apiSuite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`order API (app.inject, ${name})`, options, () => {
    let store: Store;
    let app: FastifyInstance;
    let role: OrderRole;
    /** What the (recording) router carries now, per link. */
    const routed = new Map<string, string[]>();
    const makeDriver = (): RouterDriver => {
      return {
        async reconcile(wanted: readonly RouteWanted[]) {
          routed.set(
            'sat',
            wanted.map((route) => `${route.source ?? '*'},${route.group}`),
          );
          return { added: [], removed: [], errors: [] };
        },
        async close() {},
      };
    };
    const call = async (method: string, path: string, token: string, payload?: unknown) => {
      const request: InjectOptions = {
        method: method as 'GET',
        url: path,
        headers: { authorization: `Bearer ${token}` },
        ...(payload === undefined ? {} : { payload: payload as object }),
      };
      const response = await app.inject(request);
      return { status: response.statusCode, body: response.json() as Record<string, unknown> & unknown[] };
    };
    const boxes: Record<string, { id: string; token: string }> = {};

    before(async () => {
      store = await openStore(url());
      app = await buildServerApp({
        store,
        operatorToken,
        roles: ['subscription', 'billing', 'order'],
        order: {
          makeDriver,
          leaseMs: 60_000,
          driverPollMs: 20,
          billingSweepMs: 60_000,
          onStarted: (started) => {
            role = started;
          },
        },
      });
      for (const box of ['box1', 'box2', 'nogrant']) {
        const created = await call('POST', '/v1/subscribers', operatorToken, { name: box });
        assert.equal(created.status, 201);
        boxes[box] = {
          id: created.body.id as unknown as string,
          token: created.body.token as unknown as string,
        };
        if (box !== 'nogrant') {
          const granted = await call('POST', '/v1/entitlements', operatorToken, {
            subscriber: boxes[box]?.id,
            service: 'channel',
          });
          assert.equal(granted.status, 201);
        }
      }
    });
    after(async () => {
      await app?.close();
      await store?.close();
      cleanup();
    });

    it('lets the operator define a link and services, and refuses bad ones naming the field', async () => {
      const link = await call('PUT', '/v1/order/links/sat', operatorToken, {
        capacity: 10_000_000,
        router: { kind: 'smcroute', socket: '/run/x.sock', inbound: 'eth0', outbound: 'eth1' },
      });
      assert.equal(link.status, 200, JSON.stringify(link.body));
      assert.equal(link.body.policy, 'reject');
      for (const [i, price] of ['per-order', 'per-hour', 'subscription'].entries()) {
        const service = await call('PUT', `/v1/order/services/ch${i}`, operatorToken, {
          link: 'sat',
          group: `239.5.0.${i + 1}:5000`,
          source: '10.0.0.1',
          bitRate: 4_000_000,
          priority: i,
          price,
        });
        assert.equal(service.status, 200, JSON.stringify(service.body));
      }
      const notGroup = await call('PUT', '/v1/order/services/bad', operatorToken, {
        link: 'sat',
        group: '10.1.1.1:5000',
        bitRate: 1,
      });
      assert.equal(notGroup.status, 400);
      assert.match(String(notGroup.body.message), /body\/group/);
      const noLink = await call('PUT', '/v1/order/services/bad', operatorToken, {
        link: 'nowhere',
        group: '239.1.1.1:5000',
        bitRate: 1,
      });
      assert.equal(noLink.status, 404);
      const byBox = await call('PUT', '/v1/order/links/x', boxes.box1?.token as string, {
        capacity: 1,
        router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
      });
      assert.equal(byBox.status, 403);
    });

    it('orders, idempotently, and the router is told at once; a full link is a coded refusal', async () => {
      const box1 = boxes.box1?.token as string;
      const first = await call('POST', '/v1/order/orders', box1, { service: 'ch0' });
      assert.equal(first.status, 201, JSON.stringify(first.body));
      const again = await call('POST', '/v1/order/orders', box1, { service: 'ch0' });
      assert.equal(again.status, 200);
      assert.equal(again.body.id, first.body.id);
      await until('the route of ch0', () => routed.get('sat')?.length === 1);
      assert.deepEqual(routed.get('sat'), ['10.0.0.1,239.5.0.1']);
      assert.equal((await call('POST', '/v1/order/orders', box1, { service: 'ch1' })).status, 201);
      const full = await call('POST', '/v1/order/orders', boxes.box2?.token as string, { service: 'ch2' });
      assert.equal(full.status, 409);
      assert.equal(full.body.error, 'capacity-full');
      assert.equal(full.body.used, 8_000_000);
      assert.equal(full.body.capacity, 10_000_000);
      assert.deepEqual(
        (full.body.inUse as unknown as Array<{ service: string }>).map((row) => row.service),
        ['ch0', 'ch1'],
      );
      const refused = await call('POST', '/v1/order/orders', boxes.nogrant?.token as string, {
        service: 'ch0',
      });
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error, 'not-entitled');
      const unknown = await call('POST', '/v1/order/orders', box1, { service: 'nothing' });
      assert.equal(unknown.status, 404);
      const byOperator = await call('POST', '/v1/order/orders', operatorToken, { service: 'ch0' });
      assert.equal(byOperator.status, 403);
    });

    it('renews, lists per box, reports per service, and cancels', async () => {
      const box1 = boxes.box1?.token as string;
      const box2 = boxes.box2?.token as string;
      assert.equal((await call('POST', '/v1/order/orders', box2, { service: 'ch0' })).status, 201);
      const mine = await call('GET', '/v1/order/orders', box1);
      assert.deepEqual(
        (mine.body as Array<{ service: string }>).map((order) => order.service),
        ['ch0', 'ch1'],
      );
      const other = await call('GET', `/v1/order/orders?box=${boxes.box2?.id}`, box1);
      assert.equal(other.status, 403);
      const id = (mine.body[0] as { id: string }).id;
      const renewed = await call('POST', `/v1/order/orders/${id}/renew`, box1);
      assert.equal(renewed.status, 200);
      const stolen = await call('POST', `/v1/order/orders/${id}/renew`, box2);
      assert.equal(stolen.status, 404);
      const report = await call('GET', '/v1/order/report', operatorToken);
      assert.deepEqual(
        (report.body.services as unknown as Array<{ service: string; boxes: number }>).map((row) => [
          row.service,
          row.boxes,
        ]),
        [
          ['ch0', 2],
          ['ch1', 1],
        ],
      );
      const services = await call('GET', '/v1/order/services', box2);
      assert.equal(
        (services.body as Array<{ name: string; boxes: number }>).find((s) => s.name === 'ch0')?.boxes,
        2,
      );
      const cancelled = await call('DELETE', `/v1/order/orders/${id}`, box1);
      assert.equal(cancelled.status, 200);
      assert.equal(cancelled.body.state, 'cancelled');
      await until(
        'ch0 still routed for box2',
        () =>
          JSON.stringify(routed.get('sat')) === JSON.stringify(['10.0.0.1,239.5.0.1', '10.0.0.1,239.5.0.2']),
      );
      const history = await call('GET', `/v1/order/orders?service=ch0&state=all`, operatorToken);
      assert.deepEqual((history.body as Array<{ state: string }>).map((order) => order.state).sort(), [
        'active',
        'cancelled',
      ]);
      const renewEnded = await call('POST', `/v1/order/orders/${id}/renew`, box1);
      assert.equal(renewEnded.status, 409);
    });

    it('charges orders by the rate card: per order at once, per hour when it ends, subscription never', async () => {
      await role.chargeOrders();
      const box1 = boxes.box1?.id as string;
      const events = await store.db
        .selectFrom('usage_events')
        .selectAll()
        .where('account', '=', box1)
        .execute();
      // box1: ch0 (per order: 50) and ch1 (per hour, still held: not yet).
      assert.deepEqual(
        events.map((event) => [event.kind, Number(event.quantity)]),
        [['channel-orders', 1]],
      );
      const balance = await call('GET', `/v1/accounts/${box1}/balance`, operatorToken);
      assert.equal(balance.body.balance, -50);
      const ch1 = await call(
        'GET',
        '/v1/order/orders?service=ch1',
        box1 === '' ? '' : (boxes.box1?.token as string),
      );
      await call(
        'DELETE',
        `/v1/order/orders/${(ch1.body[0] as { id: string }).id}`,
        boxes.box1?.token as string,
      );
      await role.chargeOrders();
      await role.chargeOrders();
      const after = await store.db
        .selectFrom('usage_events')
        .selectAll()
        .where('account', '=', box1)
        .execute();
      assert.deepEqual(after.map((event) => event.kind).sort(), ['channel-order-seconds', 'channel-orders']);
      assert.equal((await call('GET', `/v1/accounts/${box1}/balance`, operatorToken)).body.balance, -51);
    });

    it('documents every order route in the OpenAPI document', async () => {
      const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json() as {
        paths: Record<string, unknown>;
      };
      for (const path of [
        '/v1/order/orders',
        '/v1/order/orders/{id}',
        '/v1/order/orders/{id}/renew',
        '/v1/order/links/{name}',
        '/v1/order/links',
        '/v1/order/services/{name}',
        '/v1/order/services',
        '/v1/order/report',
      ]) {
        assert.ok(document.paths[path] !== undefined, path);
      }
    });

    it('publishes each stage of an order and of its cancel on the trace channel, in the order they happen', async () => {
      const link = await call('PUT', '/v1/order/links/traced', operatorToken, {
        capacity: 10_000_000,
        router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
      });
      assert.equal(link.status, 200, JSON.stringify(link.body));
      const service = await call('PUT', '/v1/order/services/traced-news', operatorToken, {
        link: 'traced',
        group: '239.5.9.1:5000',
        bitRate: 1_000_000,
      });
      assert.equal(service.status, 200, JSON.stringify(service.body));
      const seen: OrderStageMessage[] = [];
      const listener = (message: unknown) => seen.push(message as OrderStageMessage);
      subscribe(orderTraceChannelName, listener);
      try {
        /**
         * The first message of each stage of a request's path (a driver's on the traced link), each
         * after the one before it, from index from; undefined while the path is not complete.
         */
        const pathOf = (first: string, from: number): OrderStageMessage[] | undefined => {
          const linked = ['link-poked', 'reconcile-begun', 'routes-read', 'reconcile-done'];
          const found: OrderStageMessage[] = [];
          let at = from;
          for (const stage of [first, 'batch-queued', 'batch-begun', 'batch-committed', ...linked]) {
            const index = seen.findIndex(
              (message, i) =>
                i >= at && message.stage === stage && (!linked.includes(stage) || message.link === 'traced'),
            );
            if (index < 0) {
              return undefined;
            }
            found.push(seen[index] as OrderStageMessage);
            at = index + 1;
          }
          return found;
        };
        const inTimeOrder = (path: readonly OrderStageMessage[]) => {
          for (const [i, message] of path.entries()) {
            const before = path[i - 1];
            assert.ok(
              before === undefined || message.atNs >= before.atNs,
              `${message.stage} timed too early`,
            );
          }
        };
        const box = boxes.box2?.token as string;
        const ordered = await call('POST', '/v1/order/orders', box, { service: 'traced-news' });
        assert.equal(ordered.status, 201, JSON.stringify(ordered.body));
        await until('every stage of the order', () => pathOf('order-requested', 0) !== undefined);
        inTimeOrder(pathOf('order-requested', 0) as OrderStageMessage[]);
        const cancelledFrom = seen.length;
        const cancelled = await call('DELETE', `/v1/order/orders/${ordered.body.id}`, box);
        assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
        await until(
          'every stage of the cancel',
          () => pathOf('cancel-requested', cancelledFrom) !== undefined,
        );
        inTimeOrder(pathOf('cancel-requested', cancelledFrom) as OrderStageMessage[]);
      } finally {
        unsubscribe(orderTraceChannelName, listener);
      }
    });

    // New links' routers were checked against the others without a lock: on PostgreSQL, links
    // created at once could each find the table (or the two interfaces) free, and all be saved.
    it('of links created at once on one nftables table, or one pair of interfaces, one is saved', async () => {
      for (const [prefix, router] of [
        [
          'race-table',
          (i: number) => ({ kind: 'nftables', inbound: `rt${i}`, outbound: 'rto', table: 'gatecast_race' }),
        ],
        ['race-pair', () => ({ kind: 'nftables', inbound: 'rpi', outbound: 'rpo' })],
      ] as const) {
        const answers = await Promise.all(
          Array.from({ length: 8 }, (_, i) =>
            call('PUT', `/v1/order/links/${prefix}-${i}`, operatorToken, {
              capacity: 1_000_000,
              router: router(i),
            }),
          ),
        );
        const statuses = answers.map((answer) => answer.status).sort();
        assert.deepEqual(statuses, [200, 409, 409, 409, 409, 409, 409, 409], JSON.stringify(answers));
      }
    });
  });
}

onEveryStore(apiSuite);
