import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { buildServerApp as buildSubscriptionApp } from '../../src/cli/server-app.js';
import { openStore, type Store } from '../../src/store/database.js';
import { createLedger } from '../../src/store/ledger.js';
import type { SetupSender } from '../../src/subscription/context.js';
import { onEveryStore } from '../helpers/postgres.js';

const operatorToken = 'operator-token-for-tests-0123456789';
type Created = { id: string; token: string };

/** Sessions, the server registry, rates, billing runs and invoices, on every dialect. */
function suite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`sessions, servers and billing (app.inject, ${name})`, options, () => {
    let store: Store;
    let app: FastifyInstance;
    const setups: Array<{ action: string; group: string; servers: readonly string[] }> = [];
    const setup: SetupSender = {
      async send(action, session, servers) {
        setups.push({ action, group: `${session.group}:${session.port}`, servers });
      },
    };
    const as = (token: string | undefined) =>
      token === undefined ? {} : { authorization: `Bearer ${token}` };
    const call = (
      method: 'GET' | 'POST' | 'PUT' | 'DELETE',
      url: string,
      token?: string,
      payload?: object,
    ): Promise<LightMyRequestResponse> =>
      payload === undefined
        ? app.inject({ method, url, headers: as(token) })
        : app.inject({ method, url, headers: as(token), payload });
    const party = async (kind: 'subscribers' | 'sources', name: string) =>
      (await call('POST', `/v1/${kind}`, operatorToken, { name })).json() as Created;
    const ledgerSum = async () => {
      let sum = 0n; // exact: balances near 2^53 would round in a sum of numbers
      for (const balance of (await createLedger(store).balances()).values()) {
        sum += BigInt(balance);
      }
      return Number(sum);
    };

    before(async () => {
      store = await openStore(url());
      app = await buildSubscriptionApp({ store, operatorToken, setup });
    });
    after(async () => {
      await app?.close();
      await store?.close();
      cleanup();
    });

    it('flow B: a source registers S1 with repair; SETUP joins every registered retransmit server; the end leaves them and charges the source once', async () => {
      const source = await party('sources', 'news');
      const noServer = await call('POST', '/v1/sessions', source.token, {
        name: 'news',
        group: '239.1.2.3:5000',
        repair: true,
      });
      assert.equal(noServer.statusCode, 409, 'repair needs a registered retransmit server');
      assert.match(noServer.body, /no retransmit server/);
      assert.equal((await store.db.selectFrom('sessions').select('id').execute()).length, 0);
      for (const address of ['10.0.0.21:7000', '10.0.0.22:7000']) {
        const server = await call('POST', '/v1/servers', operatorToken, {
          kind: 'retransmit',
          name: address,
          address,
        });
        assert.equal(server.statusCode, 201, server.body);
      }
      const again = await call('POST', '/v1/servers', operatorToken, {
        kind: 'retransmit',
        name: 'x',
        address: '10.0.0.21:7000',
      });
      assert.equal(again.statusCode, 200, 'registering the same server twice returns the first');
      const created = await call('POST', '/v1/sessions', source.token, {
        name: 'news',
        group: '239.1.2.3:5000',
        source: '10.0.0.1',
        repair: true,
      });
      assert.equal(created.statusCode, 201, created.body);
      const session = created.json() as { id: string; owner: string; setup: string[]; state: string };
      assert.equal(session.owner, source.id);
      assert.deepEqual(session.setup.sort(), ['10.0.0.21:7000', '10.0.0.22:7000']);
      assert.deepEqual(setups.at(-1), {
        action: 'join',
        group: '239.1.2.3:5000',
        servers: session.setup,
      });
      const ended = await call('POST', `/v1/sessions/${session.id}/end`, source.token);
      assert.equal(ended.statusCode, 200, ended.body);
      const charge = (ended.json() as { state: string; charge: { amount: number; transfer: string } }).charge;
      assert.equal((ended.json() as { state: string }).state, 'ended');
      assert.equal(setups.at(-1)?.action, 'leave');
      assert.equal(charge.amount, 1, 'a second or so at 100 per hour, rounded up to one minor unit');
      const endedAgain = (await call('POST', `/v1/sessions/${session.id}/end`, source.token)).json() as {
        charge: { transfer: string; replayed: boolean };
      };
      assert.equal(endedAgain.charge.transfer, charge.transfer, 'ending twice charges once');
      assert.equal(endedAgain.charge.replayed, true);
      const balance = (await call('GET', `/v1/accounts/${source.id}/balance`, source.token)).json() as {
        balance: number;
      };
      assert.equal(balance.balance, -1);
      assert.equal(await ledgerSum(), 0);
    });

    it('S1 belongs to one open session: another source registering it is a 409, cannot end it, and the retransmit servers stay', async () => {
      const owner = await party('sources', 'paid-owner');
      const intruder = await party('sources', 'intruder');
      const paid = await call('POST', '/v1/sessions', owner.token, {
        name: 'paid',
        group: '239.1.9.9:5000',
        repair: true,
      });
      assert.equal(paid.statusCode, 201, paid.body);
      const paidId = (paid.json() as { id: string }).id;
      const before = setups.length;
      const same = await call('POST', '/v1/sessions', intruder.token, {
        name: 'mine now',
        group: '239.1.9.9:5000',
        repair: true,
      });
      assert.equal(same.statusCode, 409, same.body);
      assert.deepEqual(same.json(), {
        error: 'conflict',
        message:
          'body/group: 239.1.9.9:5000 is already the S1 of open session of another source; end it first',
      });
      const sameByOperator = await call('POST', '/v1/sessions', operatorToken, {
        name: 'again',
        group: '239.1.9.9:5000',
        owner: owner.id,
      });
      assert.equal(sameByOperator.statusCode, 409, 'the operator cannot register it twice either');
      const rows = await store.db
        .selectFrom('sessions')
        .select('id')
        .where('group_address', '=', '239.1.9.9')
        .execute();
      assert.equal(rows.length, 1, 'nothing written');
      const endByIntruder = await call('POST', `/v1/sessions/${paidId}/end`, intruder.token);
      assert.equal(endByIntruder.statusCode, 403);
      assert.equal(setups.length, before, 'no SETUP leave was sent for the paid session');
      const state = (await call('GET', `/v1/sessions/${paidId}`, owner.token)).json() as { state: string };
      assert.equal(state.state, 'open');
      assert.equal((await call('POST', `/v1/sessions/${paidId}/end`, owner.token)).statusCode, 200);
      assert.equal(setups.at(-1)?.action, 'leave');
      const later = await call('POST', '/v1/sessions', intruder.token, {
        name: 'later',
        group: '239.1.9.9:5000',
      });
      assert.equal(later.statusCode, 201, 'once ended, S1 can be registered again');
      assert.equal(
        (await call('POST', `/v1/sessions/${(later.json() as { id: string }).id}/end`, intruder.token))
          .statusCode,
        200,
      );
    });

    it('an IPv6 S1 spelled another way (upper case, zeros written out) is the same S1: a 409, nothing written, and the answer names it in one form', async () => {
      const owner = await party('sources', 'v6-owner');
      const intruder = await party('sources', 'v6-intruder');
      const paid = await call('POST', '/v1/sessions', owner.token, {
        name: 'paid6',
        group: '[ff3e::4242]:5000',
        repair: true,
      });
      assert.equal(paid.statusCode, 201, paid.body);
      const before = setups.length;
      for (const spelling of ['[FF3E::4242]:5000', '[ff3e:0::4242]:5000', '[ff3e:0:0:0:0:0:0:4242]:5000']) {
        const same = await call('POST', '/v1/sessions', intruder.token, {
          name: 'mine now',
          group: spelling,
          repair: true,
        });
        assert.equal(same.statusCode, 409, `${spelling}: ${same.body}`);
      }
      assert.equal(setups.length, before, 'no SETUP was sent for another spelling');
      const listed = (
        await call('GET', '/v1/sessions?group=%5BFF3E%3A0%3A%3A4242%5D%3A5000', owner.token)
      ).json() as Array<{
        group: string;
      }>;
      assert.deepEqual(
        listed.map((session) => session.group),
        ['[ff3e::4242]:5000'],
        'the filter finds it under any spelling',
      );
      const paidId = (paid.json() as { id: string }).id;
      assert.equal((await call('POST', `/v1/sessions/${paidId}/end`, owner.token)).statusCode, 200);
      const upper = await call('POST', '/v1/sessions', owner.token, {
        name: 'up',
        group: '[FF3E::4243]:5000',
      });
      assert.equal(upper.statusCode, 201, upper.body);
      assert.equal(
        (upper.json() as { group: string }).group,
        '[ff3e::4243]:5000',
        'stored in its canonical form',
      );
      const upperId = (upper.json() as { id: string }).id;
      assert.equal((await call('POST', `/v1/sessions/${upperId}/end`, owner.token)).statusCode, 200);
    });

    it('a repair grant naming a session that does not exist is a 404 naming body/session, nothing written (it was a 201 that never matched)', async () => {
      const subscriber = await party('subscribers', 'typo-grant');
      const missing = await call('POST', '/v1/entitlements', operatorToken, {
        subscriber: subscriber.id,
        service: 'repair',
        session: 'no-such-session',
      });
      assert.equal(missing.statusCode, 404, missing.body);
      assert.deepEqual(missing.json(), {
        error: 'not-found',
        message: 'body/session: no session no-such-session',
      });
      const rows = await store.db
        .selectFrom('entitlements')
        .select('id')
        .where('subscriber', '=', subscriber.id)
        .execute();
      assert.equal(rows.length, 0, 'nothing written');
      const source = await party('sources', 'typo-grant-source');
      const session = await call('POST', '/v1/sessions', source.token, {
        name: 'g',
        group: '239.1.77.1:5000',
      });
      const sessionId = (session.json() as { id: string }).id;
      const granted = await call('POST', '/v1/entitlements', operatorToken, {
        subscriber: subscriber.id,
        service: 'repair',
        session: sessionId,
      });
      assert.equal(granted.statusCode, 201, granted.body);
      assert.equal((await call('POST', `/v1/sessions/${sessionId}/end`, source.token)).statusCode, 200);
    });

    it("a usage report under one of the server's own keys (session-end/ID, ...) is a 400 naming the key; the session's end is still charged to its source", async () => {
      const source = await party('sources', 'reserved-keys');
      const other = await party('subscribers', 'reserved-keys-other');
      await call('POST', '/v1/servers', operatorToken, {
        kind: 'retransmit',
        name: 'rk',
        address: '10.0.0.21:7000',
      });
      const created = await call('POST', '/v1/sessions', source.token, {
        name: 'k',
        group: '239.1.78.1:5000',
        repair: true,
      });
      assert.equal(created.statusCode, 201, created.body);
      const sessionId = (created.json() as { id: string }).id;
      const squat = await app.inject({
        method: 'POST',
        url: '/v1/usage',
        headers: { ...as(operatorToken), 'idempotency-key': `session-end/${sessionId}` },
        payload: { account: other.id, kind: 'source-repair-seconds', quantity: 1 },
      });
      assert.equal(squat.statusCode, 400, squat.body);
      assert.match(
        (squat.json() as { message: string }).message,
        /^headers\/idempotency-key: keys starting with "session-end\/"/,
      );
      for (const key of [`subscription/x/2026-01`, 'receipt/ab', 'top-up/t/1', 'order/1', 'order-end/1']) {
        const batch = await call('POST', '/v1/usage/batch', operatorToken, {
          events: [
            { key: 'free-key-1', account: other.id, kind: 'channel-orders', quantity: 1 },
            { key, account: other.id, kind: 'channel-orders', quantity: 1 },
          ],
        });
        assert.equal(batch.statusCode, 400, `${key}: ${batch.body}`);
        assert.match((batch.json() as { message: string }).message, /^body\/events\/1\/key: /);
      }
      const otherBalance = (await call('GET', `/v1/accounts/${other.id}/balance`, operatorToken)).json() as {
        balance: number;
      };
      assert.equal(otherBalance.balance, 0, "nothing charged, not even the batch's free key");
      const ended = await call('POST', `/v1/sessions/${sessionId}/end`, source.token);
      assert.equal(ended.statusCode, 200, ended.body);
      const charge = (ended.json() as { charge: { amount: number; replayed: boolean } }).charge;
      assert.equal(charge.replayed, false, 'the end is charged now, to the source');
      const sourceBalance = (await call('GET', `/v1/accounts/${source.id}/balance`, source.token)).json() as {
        balance: number;
      };
      assert.equal(sourceBalance.balance, -charge.amount);
    });

    it('a retransmit server registered later, or restarted, is sent SETUP for the sessions already buying repair', async () => {
      const source = await party('sources', 'late');
      const created = await call('POST', '/v1/sessions', source.token, {
        name: 'late',
        group: '239.1.2.9:5000',
        repair: true,
      });
      assert.equal(created.statusCode, 201, created.body);
      const late = await call('POST', '/v1/servers', operatorToken, {
        kind: 'retransmit',
        name: 'rt9',
        address: '10.0.0.29:7000',
      });
      assert.equal(late.statusCode, 201);
      assert.deepEqual(setups.at(-1), {
        action: 'join',
        group: '239.1.2.9:5000',
        servers: ['10.0.0.29:7000'],
      });
      const refreshed: typeof setups = [];
      const refreshing = await buildSubscriptionApp({
        store,
        operatorToken,
        setupRefreshMs: 50,
        setup: {
          async send(action, session, servers) {
            refreshed.push({ action, group: `${session.group}:${session.port}`, servers });
          },
        },
      });
      await new Promise((resolve) => setTimeout(resolve, 130));
      await refreshing.close();
      const joins = refreshed.filter((x) => x.group === '239.1.2.9:5000');
      assert.ok(joins.length >= 1, 'the open session is sent again');
      assert.deepEqual([...(joins[0]?.servers ?? [])].sort(), [
        '10.0.0.21:7000',
        '10.0.0.22:7000',
        '10.0.0.29:7000',
      ]);
      assert.ok(
        refreshed.every((x) => x.action === 'join' && x.group !== '239.1.2.3:5000'),
        'an ended session is not sent again',
      );
      await call('POST', `/v1/sessions/${(created.json() as { id: string }).id}/end`, source.token);
    });

    it('who may touch sessions and servers: a source only its own, a subscriber none, the operator all', async () => {
      const mine = await party('sources', 'mine');
      const theirs = await party('sources', 'theirs');
      const subscriber = await party('subscribers', 'viewer');
      const session = (
        await call('POST', '/v1/sessions', theirs.token, { name: 't', group: '239.1.2.4:5000' })
      ).json() as { id: string };
      const matrix: Array<[string, () => Promise<{ statusCode: number }>, number]> = [
        ['source reads own', () => call('GET', `/v1/sessions/${session.id}`, theirs.token), 200],
        ['source reads another', () => call('GET', `/v1/sessions/${session.id}`, mine.token), 403],
        ['source ends another', () => call('POST', `/v1/sessions/${session.id}/end`, mine.token), 403],
        ['subscriber reads', () => call('GET', `/v1/sessions/${session.id}`, subscriber.token), 403],
        ['subscriber lists', () => call('GET', '/v1/sessions', subscriber.token), 403],
        [
          'subscriber registers',
          () => call('POST', '/v1/sessions', subscriber.token, { name: 'x', group: '239.1.2.5:1' }),
          403,
        ],
        [
          'source registers for another',
          () =>
            call('POST', '/v1/sessions', mine.token, { name: 'x', group: '239.1.2.5:1', owner: theirs.id }),
          403,
        ],
        ['operator reads', () => call('GET', `/v1/sessions/${session.id}`, operatorToken), 200],
        ['unknown session', () => call('GET', '/v1/sessions/nope', operatorToken), 404],
        [
          'source registers a server',
          () => call('POST', '/v1/servers', mine.token, { kind: 'repair', name: 'r', address: '10.0.0.9:1' }),
          403,
        ],
        ['subscriber lists servers', () => call('GET', '/v1/servers', subscriber.token), 403],
        [
          'source reads invoices of another',
          () => call('GET', `/v1/invoices?account=${theirs.id}&period=2026-01`, mine.token),
          403,
        ],
        [
          'subscriber sets rates',
          () => call('PUT', '/v1/rates', subscriber.token, { repairPerGigabyte: 1 }),
          403,
        ],
        [
          'subscriber runs billing',
          () => call('POST', '/v1/billing/run', subscriber.token, { period: '2026-01' }),
          403,
        ],
        ['no token on sessions', () => call('GET', '/v1/sessions'), 401],
        [
          'subscriber reads own usage',
          () => call('GET', `/v1/usage?account=${subscriber.id}&period=2026-01`, subscriber.token),
          200,
        ],
        [
          'subscriber reads usage of a source',
          () => call('GET', `/v1/usage?account=${theirs.id}&period=2026-01`, subscriber.token),
          403,
        ],
        [
          'source reads its own usage',
          () => call('GET', `/v1/usage?account=${theirs.id}&period=2026-01`, theirs.token),
          200,
        ],
        ['anyone reads the services', () => call('GET', '/v1/services', subscriber.token), 200],
        ['no token on services', () => call('GET', '/v1/services'), 401],
        ['no token on rates', () => call('GET', '/v1/rates'), 401],
      ];
      const sessions = (await store.db.selectFrom('sessions').select('id').execute()).length;
      for (const [label, request, status] of matrix) {
        assert.equal((await request()).statusCode, status, label);
      }
      assert.equal((await store.db.selectFrom('sessions').select('id').execute()).length, sessions);
      const listed = (await call('GET', '/v1/sessions', mine.token)).json() as Array<{ owner: string }>;
      assert.ok(
        listed.every((row) => row.owner === mine.id),
        'a source lists only its own sessions',
      );
      const who = (await call('GET', '/v1/whoami', subscriber.token)).json() as { id: string; kind: string };
      assert.deepEqual(who, { id: subscriber.id, kind: 'subscriber', name: 'viewer' });
    });

    it('bad input on sessions, servers, usage, rates, billing runs and invoices: 400 naming the field, no write', async () => {
      const source = await party('sources', 'bad');
      const before = {
        sessions: (await store.db.selectFrom('sessions').select('id').execute()).length,
        servers: (await store.db.selectFrom('servers').select('id').execute()).length,
        transfers: (await store.db.selectFrom('transfers').select('id').execute()).length,
      };
      const cases: Array<[string, string, string, unknown, RegExp]> = [
        ['POST', '/v1/sessions', source.token, { group: '239.1.1.1:1' }, /name/],
        ['POST', '/v1/sessions', source.token, { name: 'x', group: '239.1.1.1:1', colour: 1 }, /additional/],
        [
          'POST',
          '/v1/sessions',
          source.token,
          { name: 'x', group: '10.1.1.1:5000' },
          /body\/group.*multicast/,
        ],
        ['POST', '/v1/sessions', source.token, { name: 'x', group: '239.1.1.1:99999' }, /body\/group/],
        ['POST', '/v1/sessions', source.token, { name: 'x', group: '239.1.1.1:1', repair: 'yes' }, /repair/],
        ['POST', '/v1/sessions', source.token, { name: 'n'.repeat(201), group: '239.1.1.1:1' }, /name/],
        [
          'POST',
          '/v1/sessions',
          source.token,
          { name: 'x', group: '239.1.1.1:1', source: '239.9.9.9' },
          /source/,
        ],
        ['POST', '/v1/sessions', source.token, { name: 'x', group: '239.1.1.1:1', price: 'gratis' }, /price/],
        ['POST', '/v1/sessions', operatorToken, { name: 'x', group: '239.1.1.1:1' }, /body\/owner/],
        ['POST', '/v1/servers', operatorToken, { kind: 'relay', name: 'r', address: '10.0.0.1:1' }, /kind/],
        [
          'POST',
          '/v1/servers',
          operatorToken,
          { kind: 'repair', name: 'r', address: 'here' },
          /body\/address/,
        ],
        [
          'POST',
          '/v1/servers',
          operatorToken,
          { kind: 'repair', name: 'r', address: '239.0.0.1:7' },
          /body\/address/,
        ],
        ['POST', '/v1/servers', operatorToken, { kind: 'repair', address: '10.0.0.1:1' }, /name/],
        ['PUT', '/v1/rates', operatorToken, {}, /fewer than 1|minProperties/],
        ['PUT', '/v1/rates', operatorToken, { repairPerGigabyte: 0 }, /repairPerGigabyte/],
        ['PUT', '/v1/rates', operatorToken, { repairPerGigabyte: 1.5 }, /repairPerGigabyte/],
        ['PUT', '/v1/rates', operatorToken, { tip: 5 }, /additional/],
        ['POST', '/v1/billing/run', operatorToken, { period: '2026-13' }, /period/],
        ['POST', '/v1/billing/run', operatorToken, {}, /period/],
        ['GET', `/v1/invoices?account=${source.id}&period=26-01`, operatorToken, undefined, /period/],
        ['GET', '/v1/invoices?period=2026-01', operatorToken, undefined, /account/],
        ['GET', `/v1/usage?account=${source.id}&period=2026-1`, operatorToken, undefined, /period/],
        ['GET', `/v1/usage?account=${source.id}&period=2026-01&x=1`, operatorToken, undefined, /additional/],
        ['POST', '/v1/entitlements', operatorToken, { subscriber: source.id, service: 'repiar' }, /service/],
        [
          'POST',
          '/v1/entitlements',
          operatorToken,
          { subscriber: source.id, service: 'repair', monthly: -5 },
          /monthly/,
        ],
        ['GET', '/v1/sessions?group=10.0.0.1:5', operatorToken, undefined, /querystring\/group.*multicast/],
      ];
      for (const [method, url, token, payload, message] of cases) {
        const response = await call(method as 'GET', url, token, payload as object | undefined);
        assert.equal(
          response.statusCode,
          400,
          `${method} ${url} ${JSON.stringify(payload)}: ${response.body}`,
        );
        assert.match(
          (response.json() as { message: string }).message,
          message,
          `${url} ${JSON.stringify(payload)}`,
        );
      }
      const usage = await app.inject({
        method: 'POST',
        url: '/v1/usage',
        headers: { ...as(operatorToken), 'idempotency-key': 'bad-1' },
        payload: { account: source.id, kind: 'repair-bytes', quantity: 10, packets: -1 },
      });
      assert.equal(usage.statusCode, 400);
      assert.match(usage.body, /packets/);
      assert.deepEqual(
        {
          sessions: (await store.db.selectFrom('sessions').select('id').execute()).length,
          servers: (await store.db.selectFrom('servers').select('id').execute()).length,
          transfers: (await store.db.selectFrom('transfers').select('id').execute()).length,
        },
        before,
      );
    });

    it('rates are the defaults until the operator sets them; usage is rated by the card in force', async () => {
      const subscriber = await party('subscribers', 'rated');
      const read = (await call('GET', '/v1/rates', subscriber.token)).json() as Record<string, number>;
      assert.equal(read.repairPerGigabyte, 50);
      const set = await call('PUT', '/v1/rates', operatorToken, { payAsYouGoPerMinute: 7 });
      assert.equal(set.statusCode, 200, set.body);
      assert.equal((set.json() as Record<string, number>).payAsYouGoPerMinute, 7);
      const usage = await app.inject({
        method: 'POST',
        url: '/v1/usage',
        headers: { ...as(operatorToken), 'idempotency-key': 'minutes-1' },
        payload: { account: subscriber.id, kind: 'pay-as-you-go-seconds', quantity: 61 },
      });
      assert.equal(usage.statusCode, 201, usage.body);
      assert.equal(
        (usage.json() as { amount: number }).amount,
        8,
        '61 s at 7 per minute is 7.12, rounded up',
      );
      const event = await store.db
        .selectFrom('usage_events')
        .selectAll()
        .where('transfer', '=', (usage.json() as { transfer: string }).transfer)
        .executeTakeFirstOrThrow();
      assert.equal(Number(event.quantity), 61, 'the usage event is kept beside its transfer');
      const now = new Date();
      const period = `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, '0')}`;
      const listed = (
        await call('GET', `/v1/usage?account=${subscriber.id}&period=${period}`, subscriber.token)
      ).json() as Array<{ kind: string; quantity: number }>;
      assert.deepEqual(
        listed.map((e) => [e.kind, e.quantity]),
        [['pay-as-you-go-seconds', 61]],
        'a subscriber reads its own usage',
      );
    });

    it('a billing run charges each monthly subscription once per period; invoices list what the account was charged', async () => {
      const subscriber = await party('subscribers', 'monthly');
      const other = await party('subscribers', 'other');
      const now = new Date();
      const period = `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, '0')}`;
      const grant = await call('POST', '/v1/entitlements', operatorToken, {
        subscriber: subscriber.id,
        service: 'channel',
        monthly: 500,
        from: '2026-01-01T00:00:00Z',
      });
      assert.equal(grant.statusCode, 201, grant.body);
      assert.equal((grant.json() as { monthly: number }).monthly, 500);
      const run = (await call('POST', '/v1/billing/run', operatorToken, { period })).json() as {
        charged: number;
        replayed: number;
      };
      assert.ok(run.charged >= 1, JSON.stringify(run));
      const rerun = (await call('POST', '/v1/billing/run', operatorToken, { period })).json() as {
        charged: number;
        replayed: number;
      };
      assert.equal(rerun.charged, 0, 'a second run for the same period charges nothing new');
      assert.equal(rerun.replayed, run.charged + run.replayed);
      const before2026 = (
        await call('POST', '/v1/billing/run', operatorToken, { period: '2025-12' })
      ).json() as {
        charged: number;
      };
      assert.equal(before2026.charged, 0, 'no charge for a month before the entitlement starts');
      const invoice = await call(
        'GET',
        `/v1/invoices?account=${subscriber.id}&period=${period}`,
        subscriber.token,
      );
      assert.equal(invoice.statusCode, 200, invoice.body);
      const body = invoice.json() as { lines: Array<{ memo: string; amount: number }>; total: number };
      assert.deepEqual(
        body.lines.map((line) => [line.memo, line.amount]),
        [[`subscription channel ${period}`, 500]],
      );
      assert.equal(body.total, 500);
      const balance = (
        await call('GET', `/v1/accounts/${subscriber.id}/balance`, subscriber.token)
      ).json() as {
        balance: number;
      };
      assert.equal(balance.balance, -body.total, 'the invoice total is what the balance moved by');
      assert.equal(
        (await call('GET', `/v1/invoices?account=${subscriber.id}&period=${period}`, other.token)).statusCode,
        403,
      );
      const listed = await call('GET', `/v1/entitlements?subscriber=${subscriber.id}`, subscriber.token);
      assert.equal((listed.json() as unknown[]).length, 1);
      assert.equal(
        (await call('GET', `/v1/entitlements?subscriber=${subscriber.id}`, other.token)).statusCode,
        403,
      );
      assert.equal(await ledgerSum(), 0);
    });

    it('a billing run goes on past an entitlement the ledger refuses: the others are charged, the refused one is named', async () => {
      const full = await party('subscribers', 'billing-full');
      const next = await party('subscribers', 'billing-next');
      const ledger = createLedger(store);
      // The first subscriber's debits are taken next to the bound, so its monthly charge would pass it.
      await ledger.createAccount({
        id: 'billing-sink',
        name: 'billing-sink',
        kind: 'external',
        currency: 'EUR',
      });
      await ledger.transfer({
        idempotencyKey: 'billing-fill',
        debit: full.id,
        credit: 'billing-sink',
        amount: Number.MAX_SAFE_INTEGER - 50,
        currency: 'EUR',
      });
      const grants = [];
      for (const subscriber of [full, next]) {
        const grant = await call('POST', '/v1/entitlements', operatorToken, {
          subscriber: subscriber.id,
          service: 'channel',
          monthly: 100,
          from: '2024-01-01T00:00:00Z',
          to: '2024-02-01T00:00:00Z',
        });
        assert.equal(grant.statusCode, 201, grant.body);
        grants.push((grant.json() as { id: string }).id);
      }
      const run = await call('POST', '/v1/billing/run', operatorToken, { period: '2024-01' });
      assert.equal(run.statusCode, 200, run.body);
      const body = run.json() as {
        charged: number;
        amount: number;
        refused: Array<{ entitlement: string; error: string; message: string }>;
      };
      assert.equal(body.charged, 1, run.body);
      assert.equal(body.amount, 100);
      assert.deepEqual(
        body.refused.map((refusal) => [refusal.entitlement, refusal.error]),
        [[grants[0], 'limit-exceeded']],
      );
      assert.equal(await ledger.balance(next.id), -100, 'the next subscriber is charged');
      assert.equal(await ledger.balance(full.id), -(Number.MAX_SAFE_INTEGER - 50), 'the refused one is not');
      assert.equal(await ledgerSum(), 0);
    });

    it('an idempotency key covers the client request: after a rate change the same usage or session end returns the stored charge', async () => {
      const subscriber = await party('subscribers', 'rerated');
      const usage = (key: string, quantity: number) =>
        app.inject({
          method: 'POST',
          url: '/v1/usage',
          headers: { ...as(operatorToken), 'idempotency-key': key },
          payload: { account: subscriber.id, kind: 'pay-as-you-go-bytes', quantity },
        });
      const first = await usage('rerate-1', 5_000_000);
      assert.equal(first.statusCode, 201, first.body);
      const owner = await party('sources', 'rerated-source');
      const session = (
        await call('POST', '/v1/sessions', owner.token, {
          name: 'rerated',
          group: '239.1.8.8:5000',
          repair: true,
        })
      ).json() as { id: string };
      const ended = (await call('POST', `/v1/sessions/${session.id}/end`, owner.token)).json() as {
        charge: { transfer: string; amount: number };
      };
      const old = (await call('GET', '/v1/rates', operatorToken)).json() as Record<string, number>;
      assert.equal(
        (
          await call('PUT', '/v1/rates', operatorToken, {
            payAsYouGoPerMegabyte: 3,
            sourceRepairPerHour: 900,
          })
        ).statusCode,
        200,
      );
      const again = await usage('rerate-1', 5_000_000);
      assert.equal(again.statusCode, 200, again.body);
      assert.deepEqual(
        again.json(),
        { ...(first.json() as object), replayed: true },
        'the stored charge, not a re-rated one',
      );
      assert.equal((again.json() as { amount: number }).amount, 5);
      const other = await usage('rerate-1', 6_000_000);
      assert.equal(other.statusCode, 409, 'another request under the key is still a conflict');
      const endedAgain = await call('POST', `/v1/sessions/${session.id}/end`, owner.token);
      assert.equal(endedAgain.statusCode, 200, endedAgain.body);
      const charge = (
        endedAgain.json() as { charge: { transfer: string; amount: number; replayed: boolean } }
      ).charge;
      assert.deepEqual(charge, { ...ended.charge, replayed: true });
      assert.equal(
        (await call('GET', `/v1/accounts/${subscriber.id}/balance`, subscriber.token)).json().balance,
        -5,
        'charged once',
      );
      await call('PUT', '/v1/rates', operatorToken, old);
      assert.equal(await ledgerSum(), 0);
    });

    it('an idempotency key stored before keys covered the client request (its hash is the rated transfer) replays its stored charge after a rate change', async () => {
      const subscriber = await party('subscribers', 'legacy-keyed');
      const usage = (key: string, quantity: number) =>
        app.inject({
          method: 'POST',
          url: '/v1/usage',
          headers: { ...as(operatorToken), 'idempotency-key': key },
          payload: { account: subscriber.id, kind: 'pay-as-you-go-bytes', quantity },
        });
      const owner = await party('sources', 'legacy-keyed-source');
      const session = (
        await call('POST', '/v1/sessions', owner.token, {
          name: 'legacy',
          group: '239.1.8.9:5000',
          repair: true,
        })
      ).json() as { id: string };
      const first = await usage('legacy-1', 5_000_000);
      assert.equal(first.statusCode, 201, first.body);
      const ended = (await call('POST', `/v1/sessions/${session.id}/end`, owner.token)).json() as {
        charge: { transfer: string; amount: number };
      };
      // Write both rows back the way the ledger stored them before: the hash of the rated transfer
      // itself, JSON [debit, credit, amount, currency, memo].
      const legacyHash = (row: {
        debit_account: string;
        credit_account: string;
        amount: number | string | bigint;
        currency: string;
        memo: string;
      }) =>
        createHash('sha256')
          .update(
            JSON.stringify([
              row.debit_account,
              row.credit_account,
              Number(row.amount),
              row.currency,
              row.memo,
            ]),
          )
          .digest('hex');
      for (const key of ['legacy-1', `session-end/${session.id}`]) {
        const row = await store.db
          .selectFrom('transfers')
          .selectAll()
          .where('idempotency_key', '=', key)
          .executeTakeFirstOrThrow();
        await store.db
          .updateTable('transfers')
          .set({ request_hash: legacyHash(row) })
          .where('id', '=', row.id)
          .execute();
      }
      const old = (await call('GET', '/v1/rates', operatorToken)).json() as Record<string, number>;
      await call('PUT', '/v1/rates', operatorToken, { payAsYouGoPerMegabyte: 4, sourceRepairPerHour: 700 });
      try {
        const again = await usage('legacy-1', 5_000_000);
        assert.equal(again.statusCode, 200, again.body);
        assert.deepEqual(again.json(), { ...(first.json() as object), replayed: true }, 'the stored charge');
        const other = await usage('legacy-1', 6_000_000);
        assert.equal(other.statusCode, 409, 'another request under an old key is still a conflict');
        assert.equal((other.json() as { error: string }).error, 'conflict');
        const endedAgain = await call('POST', `/v1/sessions/${session.id}/end`, owner.token);
        assert.equal(endedAgain.statusCode, 200, endedAgain.body);
        assert.deepEqual((endedAgain.json() as { charge: object }).charge, {
          ...ended.charge,
          replayed: true,
        });
        assert.equal(
          (await call('GET', `/v1/accounts/${subscriber.id}/balance`, subscriber.token)).json().balance,
          -(first.json() as { amount: number }).amount,
          'charged once',
        );
      } finally {
        await call('PUT', '/v1/rates', operatorToken, old);
      }
      assert.equal(await ledgerSum(), 0);
    });

    it('a usage batch charges each event once under its own key, with its own result; concurrent single charges are group-committed exactly once', async () => {
      const a = await party('subscribers', 'batch-a');
      const b = await party('subscribers', 'batch-b');
      const event = (key: string, account: string, megabytes: number) => ({
        key,
        account,
        kind: 'pay-as-you-go-bytes',
        quantity: megabytes * 1_000_000,
      });
      const batch = (events: object[]) =>
        app.inject({
          method: 'POST',
          url: '/v1/usage/batch',
          headers: as(operatorToken),
          payload: { events },
        });
      const first = await batch([
        event('batch/1', a.id, 3),
        event('batch/2', b.id, 4),
        event('batch/1', a.id, 3),
        event('batch/3', 'nobody', 1),
        event('batch/4', a.id, 5),
      ]);
      assert.equal(first.statusCode, 200, first.body);
      const results = (
        first.json() as { results: Array<{ key: string; status: number; amount?: number; error?: string }> }
      ).results;
      assert.deepEqual(
        results.map((r) => [r.key, r.status, r.amount ?? r.error]),
        [
          ['batch/1', 201, 3],
          ['batch/2', 201, 4],
          ['batch/1', 200, 3],
          ['batch/3', 404, 'not-found'],
          ['batch/4', 201, 5],
        ],
      );
      const again = (await batch([event('batch/2', b.id, 4), event('batch/4', a.id, 6)])).json() as {
        results: Array<{ status: number; error?: string }>;
      };
      assert.deepEqual(
        again.results.map((r) => r.status),
        [200, 409],
        'a replay and a conflict, nothing written',
      );
      const balance = async (id: string, token: string) =>
        ((await call('GET', `/v1/accounts/${id}/balance`, token)).json() as { balance: number }).balance;
      assert.equal(await balance(a.id, a.token), -8);
      assert.equal(await balance(b.id, b.token), -4);
      const events = await store.db
        .selectFrom('usage_events')
        .select('id')
        .where('account', 'in', [a.id, b.id])
        .execute();
      assert.equal(events.length, 3, 'one usage event per charge');
      const tooMany = await batch(Array.from({ length: 1001 }, (_, i) => event(`batch/x${i}`, a.id, 1)));
      assert.equal(tooMany.statusCode, 400, 'more than usageBatchEventsMax events');

      // 40 keys, each sent 3 times at once through POST /v1/usage: charged exactly once each.
      const single = (key: string, megabytes: number) =>
        app.inject({
          method: 'POST',
          url: '/v1/usage',
          headers: { ...as(operatorToken), 'idempotency-key': key },
          payload: { account: b.id, kind: 'pay-as-you-go-bytes', quantity: megabytes * 1_000_000 },
        });
      const answers = await Promise.all(
        Array.from({ length: 120 }, (_, i) => single(`group/${i % 40}`, (i % 40) + 1)),
      );
      assert.ok(answers.every((answer) => answer.statusCode === 200 || answer.statusCode === 201));
      assert.equal(answers.filter((answer) => answer.statusCode === 201).length, 40);
      assert.equal(await balance(b.id, b.token), -4 - (40 * 41) / 2);
      assert.equal(await ledgerSum(), 0);
    });

    it('charges near 2^53 stay exact; one past an account total of 2^53 - 1 is a 422 limit-exceeded, written never', async () => {
      const subscriber = await party('subscribers', 'huge');
      const old = (await call('GET', '/v1/rates', operatorToken)).json() as Record<string, number>;
      await call('PUT', '/v1/rates', operatorToken, { payAsYouGoPerMegabyte: 1_000_000 }); // 1 per byte
      const charge = (key: string, quantity: number) =>
        app.inject({
          method: 'POST',
          url: '/v1/usage',
          headers: { ...as(operatorToken), 'idempotency-key': key },
          payload: { account: subscriber.id, kind: 'pay-as-you-go-bytes', quantity },
        });
      try {
        for (let n = 0; n < 3; n++) {
          const answer = await charge(`huge-${n}`, 3_000_000_000_000_001);
          assert.equal(answer.statusCode, 201, answer.body);
        }
        const balance = () => call('GET', `/v1/accounts/${subscriber.id}/balance`, subscriber.token);
        assert.equal((await balance()).json().balance, -9_000_000_000_000_003);
        const before = (await store.db.selectFrom('transfers').select('id').execute()).length;
        const over = await charge('huge-3', 3_000_000_000_000_001);
        assert.equal(over.statusCode, 422, over.body);
        assert.equal((over.json() as { error: string }).error, 'limit-exceeded');
        const rated = await charge('huge-4', Number.MAX_SAFE_INTEGER);
        assert.equal(rated.statusCode, 422, 'past the bound already when rated');
        assert.equal((await store.db.selectFrom('transfers').select('id').execute()).length, before);
        assert.equal((await balance()).statusCode, 200, 'the account still reads');
        assert.equal((await balance()).json().balance, -9_000_000_000_000_003);
        const invoice = await call(
          'GET',
          `/v1/invoices?account=${subscriber.id}&period=${new Date().toISOString().slice(0, 7)}`,
          subscriber.token,
        );
        assert.equal(invoice.json().total, 9_000_000_000_000_003);
      } finally {
        await call('PUT', '/v1/rates', operatorToken, old);
      }
      assert.equal(await ledgerSum(), 0);
    });
  });
}

onEveryStore(suite);
