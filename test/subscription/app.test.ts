import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { buildServerApp as buildSubscriptionApp } from '../../src/cli/server-app.js';
import { apiErrorStatus } from '../../src/protocol/api-errors.js';
import { openStore, type Store } from '../../src/store/database.js';
import { onEveryStore } from '../helpers/postgres.js';

/** The error codes docs/api.md lists in its Errors paragraph. */
function documentedErrorCodes(): Set<string> {
  const text = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');
  const line = text.split('\n').find((candidate) => candidate.startsWith('- Errors:')) ?? '';
  return new Set([...line.matchAll(/`([a-z-]+)`/g)].map((match) => match[1] as string));
}

const operatorToken = 'operator-token-for-tests-0123456789';

/** The same API suite on every dialect: SQLite always, PostgreSQL where a cluster can start. */
function apiSuite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`subscription server API (app.inject, ${name})`, options, () => {
    let store: Store;
    let app: FastifyInstance;
    const as = (token: string | undefined) =>
      token === undefined ? {} : { authorization: `Bearer ${token}` };
    const post = (url: string, token: string | undefined, payload: unknown) =>
      app.inject({ method: 'POST', url, headers: as(token), payload: payload as object });
    const get = (url: string, token: string | undefined) =>
      app.inject({ method: 'GET', url, headers: as(token) });
    const count = async (table: 'parties' | 'entitlements') =>
      (await store.db.selectFrom(table).select('id').execute()).length;

    before(async () => {
      store = await openStore(url());
      app = await buildSubscriptionApp({ store, operatorToken });
    });
    after(async () => {
      await app?.close();
      await store?.close();
      cleanup();
    });

    it('the operator creates a subscriber and a source; each token is shown once', async () => {
      const subscriber = await post('/v1/subscribers', operatorToken, { name: 'alice' });
      assert.equal(subscriber.statusCode, 201, subscriber.body);
      const body = subscriber.json() as { id: string; token: string; kind: string };
      assert.equal(body.kind, 'subscriber');
      assert.match(body.token, /^gct_/);
      const source = await post('/v1/sources', operatorToken, { name: 'news channel' });
      assert.equal(source.statusCode, 201);
      const stored = await store.db
        .selectFrom('parties')
        .select('token_hash')
        .where('id', '=', body.id)
        .executeTakeFirstOrThrow();
      assert.notEqual(stored.token_hash, body.token, 'tokens are stored hashed');
    });

    it('grants repair and checks it: within its window yes, outside no, other services no', async () => {
      const alice = (await post('/v1/subscribers', operatorToken, { name: 'alice2' })).json() as {
        id: string;
        token: string;
      };
      const grant = await post('/v1/entitlements', operatorToken, {
        subscriber: alice.id,
        service: 'repair',
      });
      assert.equal(grant.statusCode, 201, grant.body);
      const check = async (service: string, token = operatorToken) =>
        get(`/v1/entitlements/check?subscriber=${alice.id}&service=${service}`, token);
      assert.deepEqual((await check('repair')).json(), { allowed: true, reason: 'entitled to repair' });
      assert.equal(((await check('pay-as-you-go')).json() as { allowed: boolean }).allowed, false);
      const later = await post('/v1/entitlements', operatorToken, {
        subscriber: alice.id,
        service: 'channel',
        from: '2099-01-01T00:00:00Z',
        to: '2099-02-01T00:00:00Z',
      });
      assert.equal(later.statusCode, 201);
      assert.match((await check('channel')).body, /outside its validity window/);
      assert.equal((await check('repair', alice.token)).statusCode, 200, 'a subscriber reads its own');
    });

    it('enforces who may do what (role x resource x own/other), and refuses missing or bad tokens', async () => {
      const alice = (await post('/v1/subscribers', operatorToken, { name: 'a' })).json() as {
        id: string;
        token: string;
      };
      const bob = (await post('/v1/subscribers', operatorToken, { name: 'b' })).json() as {
        id: string;
        token: string;
      };
      const source = (await post('/v1/sources', operatorToken, { name: 's' })).json() as {
        id: string;
        token: string;
      };
      const matrix: Array<[string, () => Promise<{ statusCode: number }>, number]> = [
        ['subscriber creates a subscriber', () => post('/v1/subscribers', alice.token, { name: 'x' }), 403],
        ['source creates a subscriber', () => post('/v1/subscribers', source.token, { name: 'x' }), 403],
        [
          'subscriber grants itself',
          () => post('/v1/entitlements', alice.token, { subscriber: alice.id, service: 'repair' }),
          403,
        ],
        [
          'subscriber checks another',
          () => get(`/v1/entitlements/check?subscriber=${bob.id}&service=repair`, alice.token),
          403,
        ],
        [
          'source checks entitlements',
          () => get(`/v1/entitlements/check?subscriber=${bob.id}&service=repair`, source.token),
          403,
        ],
        ['subscriber reads own balance', () => get(`/v1/accounts/${alice.id}/balance`, alice.token), 200],
        ['subscriber reads another balance', () => get(`/v1/accounts/${bob.id}/balance`, alice.token), 403],
        ['operator reads any balance', () => get(`/v1/accounts/${bob.id}/balance`, operatorToken), 200],
        ['no token', () => post('/v1/subscribers', undefined, { name: 'x' }), 401],
        ['unknown token', () => post('/v1/subscribers', 'not-a-real-token-at-all', { name: 'x' }), 401],
        [
          'malformed header',
          () =>
            app.inject({
              method: 'POST',
              url: '/v1/subscribers',
              headers: { authorization: 'Basic abc' },
              payload: { name: 'x' },
            }),
          401,
        ],
      ];
      const parties = await count('parties');
      for (const [name, call, status] of matrix) {
        assert.equal((await call()).statusCode, status, name);
      }
      assert.equal(await count('parties'), parties, 'nothing was written by refused requests');
    });

    it('bad input: missing, extra, wrong-typed and oversized fields are a 400 naming the field, with no write', async () => {
      const alice = (await post('/v1/subscribers', operatorToken, { name: 'c' })).json() as { id: string };
      const entitlements = await count('entitlements');
      const cases: Array<[unknown, RegExp]> = [
        [{ service: 'repair' }, /subscriber/],
        [{ subscriber: alice.id, service: 'repair', colour: 'blue' }, /additional properties|colour/],
        [{ subscriber: 42, service: 'repair' }, /subscriber/],
        [{ subscriber: alice.id, service: 'x'.repeat(65) }, /service/],
        [{ subscriber: alice.id, service: 'repair', from: 'yesterday' }, /from/],
        [
          {
            subscriber: alice.id,
            service: 'repair',
            from: '2030-01-02T00:00:00Z',
            to: '2030-01-01T00:00:00Z',
          },
          /to must be after/,
        ],
      ];
      for (const [payload, message] of cases) {
        const response = await post('/v1/entitlements', operatorToken, payload);
        assert.equal(response.statusCode, 400, JSON.stringify(payload));
        assert.match((response.json() as { message: string }).message, message);
      }
      const unknown = await post('/v1/entitlements', operatorToken, {
        subscriber: 'nobody',
        service: 'repair',
      });
      assert.equal(unknown.statusCode, 404);
      assert.equal(await count('entitlements'), entitlements);
      const big = await post('/v1/subscribers', operatorToken, { name: 'n'.repeat(20_000) });
      assert.ok(big.statusCode === 413 || big.statusCode === 400, String(big.statusCode));
    });

    it('rates usage into the ledger once per Idempotency-Key; a changed body is a 409; the ledger sums to zero', async () => {
      const alice = (await post('/v1/subscribers', operatorToken, { name: 'payer' })).json() as {
        id: string;
      };
      const usage = (key: string | undefined, body: unknown) =>
        app.inject({
          method: 'POST',
          url: '/v1/usage',
          headers: { ...as(operatorToken), ...(key === undefined ? {} : { 'idempotency-key': key }) },
          payload: body as object,
        });
      const event = { account: alice.id, kind: 'repair-bytes', quantity: 2_500_000_001 };
      const first = await usage('usage-1', event);
      assert.equal(first.statusCode, 201, first.body);
      assert.equal(
        (first.json() as { amount: number }).amount,
        126,
        '2.5 GB at 50 per GB, a started unit charged',
      );
      const retry = await usage('usage-1', event);
      assert.equal(retry.statusCode, 200);
      assert.equal(
        (retry.json() as { transfer: string }).transfer,
        (first.json() as { transfer: string }).transfer,
      );
      assert.equal((await usage('usage-1', { ...event, quantity: 5 })).statusCode, 409);
      assert.equal((await usage(undefined, event)).statusCode, 400, 'the key is required');
      assert.equal((await usage('usage-2', { ...event, kind: 'free-lunch' })).statusCode, 400);
      assert.equal((await usage('usage-3', { ...event, account: 'nobody' })).statusCode, 404);
      const balance = (await get(`/v1/accounts/${alice.id}/balance`, operatorToken)).json() as {
        balance: number;
      };
      assert.equal(balance.balance, -126);
      const revenue = (await get('/v1/accounts/operator-revenue/balance', operatorToken)).json() as {
        balance: number;
      };
      assert.equal(revenue.balance, 126);
      const csv = await get('/v1/ledger.csv', operatorToken);
      assert.equal(csv.statusCode, 200);
      assert.match(String(csv.headers['content-type']), /text\/csv/);
      const lines = csv.body.trim().split('\n');
      assert.equal(lines[0], 'id,created_at,idempotency_key,debit,credit,amount,currency,memo');
      assert.equal(lines.filter((line) => line.includes(',usage-1,')).length, 1);
      assert.equal((await get('/v1/ledger.csv', undefined)).statusCode, 401);
    });

    it('serves an OpenAPI document listing the paths', async () => {
      const response = await get('/openapi.json', undefined);
      assert.equal(response.statusCode, 200);
      const document = response.json() as { openapi: string; paths: Record<string, unknown> };
      assert.match(document.openapi, /^3\./);
      for (const path of [
        '/v1/subscribers',
        '/v1/sources',
        '/v1/entitlements',
        '/v1/entitlements/check',
        '/v1/accounts/{id}/balance',
        '/v1/usage',
        '/v1/rates',
        '/v1/billing/run',
        '/v1/invoices',
        '/v1/ledger.csv',
        '/v1/sessions',
        '/v1/sessions/{id}',
        '/v1/sessions/{id}/end',
        '/v1/servers',
        '/v1/servers/{id}',
        '/v1/whoami',
      ]) {
        assert.ok(path in document.paths, path);
      }
    });

    it('--roles: subscription alone serves no billing route, billing alone no session route', async () => {
      for (const [roles, served, absent] of [
        [['subscription'], '/v1/sessions', '/v1/ledger.csv'],
        [['billing'], '/v1/ledger.csv', '/v1/sessions'],
      ] as const) {
        const partial = await buildSubscriptionApp({ store, operatorToken, roles });
        const auth = { authorization: `Bearer ${operatorToken}` };
        assert.equal((await partial.inject({ method: 'GET', url: served, headers: auth })).statusCode, 200);
        assert.equal((await partial.inject({ method: 'GET', url: absent, headers: auth })).statusCode, 404);
        await partial.close();
      }
    });

    it('makes an operator token once on a fresh store when none is given', async () => {
      const fresh = await openStore('sqlite::memory:');
      const shown: string[] = [];
      const first = await buildSubscriptionApp({
        store: fresh,
        onOperatorTokenCreated: (token) => shown.push(token),
      });
      await first.close();
      const second = await buildSubscriptionApp({
        store: fresh,
        onOperatorTokenCreated: (token) => shown.push(token),
      });
      assert.equal(shown.length, 1);
      const response = await second.inject({
        method: 'POST',
        url: '/v1/subscribers',
        headers: { authorization: `Bearer ${shown[0]}` },
        payload: { name: 'z' },
      });
      assert.equal(response.statusCode, 201);
      await second.close();
      await fresh.close();
    });

    it('rotating the operator token revokes the old one; the operator lists and revokes tokens', async () => {
      const rotated = 'operator-token-rotated-0123456789abc';
      const second = await buildSubscriptionApp({ store, operatorToken: rotated });
      try {
        const whoami = (token: string) =>
          second.inject({ method: 'GET', url: '/v1/whoami', headers: as(token) });
        assert.equal((await whoami(operatorToken)).statusCode, 401, 'the old operator token is revoked');
        assert.equal((await whoami(rotated)).statusCode, 200);
        const sub = (
          await second.inject({
            method: 'POST',
            url: '/v1/subscribers',
            headers: as(rotated),
            payload: { name: 'revokable' },
          })
        ).json() as { id: string; token: string };
        assert.equal((await whoami(sub.token)).statusCode, 200);
        const listed = (
          await second.inject({ method: 'GET', url: '/v1/tokens', headers: as(rotated) })
        ).json() as Array<{
          party: string;
          kind: string;
          revokedAt: string | null;
        }>;
        const operators = listed.filter((token) => token.kind === 'operator');
        assert.equal(
          operators.filter((token) => token.revokedAt === null).length,
          1,
          'one live operator token',
        );
        assert.ok(
          operators.some((token) => token.revokedAt !== null),
          'the old one is listed as revoked',
        );
        const revoke = await second.inject({
          method: 'DELETE',
          url: `/v1/tokens/${sub.id}`,
          headers: as(rotated),
        });
        assert.equal(revoke.statusCode, 204, revoke.body);
        assert.equal((await whoami(sub.token)).statusCode, 401, 'a revoked token no longer authenticates');
        const live = operators.find((token) => token.revokedAt === null);
        const last = await second.inject({
          method: 'DELETE',
          url: `/v1/tokens/${live?.party}`,
          headers: as(rotated),
        });
        assert.equal(last.statusCode, 409, 'the last operator token is not revoked');
        assert.equal(
          (await second.inject({ method: 'DELETE', url: '/v1/tokens/nobody', headers: as(rotated) }))
            .statusCode,
          404,
        );
        assert.equal(
          (await second.inject({ method: 'GET', url: '/v1/tokens', headers: as(sub.token) })).statusCode,
          401,
        );
      } finally {
        await second.close();
      }
      const back = await buildSubscriptionApp({ store, operatorToken });
      await back.close(); // the suite's token is the operator's again, the rotated one revoked
      assert.equal((await get('/v1/whoami', operatorToken)).statusCode, 200);
      assert.equal((await get('/v1/whoami', rotated)).statusCode, 401);
    });

    it('names are unique per kind: a second subscriber with an existing name is a 409, nothing written', async () => {
      assert.equal((await post('/v1/subscribers', operatorToken, { name: 'twin' })).statusCode, 201);
      const before = await count('parties');
      const again = await post('/v1/subscribers', operatorToken, { name: 'twin' });
      assert.equal(again.statusCode, 409);
      assert.equal((again.json() as { error: string }).error, 'conflict');
      assert.match(
        (again.json() as { message: string }).message,
        /^body\/name: a subscriber named "twin" exists/,
      );
      assert.equal(await count('parties'), before);
      assert.equal(
        (await post('/v1/sources', operatorToken, { name: 'twin' })).statusCode,
        201,
        'another kind may',
      );
    });

    it('docs/api.md lists exactly the error codes the servers answer with', () => {
      assert.deepEqual([...documentedErrorCodes()].sort(), Object.keys(apiErrorStatus).sort());
    });

    it('every error body carries a code docs/api.md lists: empty JSON DELETE, malformed JSON, unknown route, wrong media type, too large', async () => {
      const documented = documentedErrorCodes();
      const cases: Array<[InjectOptions, number, string]> = [
        [
          {
            method: 'DELETE',
            url: '/v1/servers/x',
            headers: { ...as(operatorToken), 'content-type': 'application/json' },
          },
          400,
          'invalid-request',
        ],
        [
          {
            method: 'POST',
            url: '/v1/subscribers',
            headers: { ...as(operatorToken), 'content-type': 'application/json' },
            payload: '{"name":',
          },
          400,
          'invalid-request',
        ],
        [{ method: 'GET', url: '/v1/nothing-here', headers: as(operatorToken) }, 404, 'not-found'],
        [
          {
            method: 'POST',
            url: '/v1/subscribers',
            headers: { ...as(operatorToken), 'content-type': 'application/xml' },
            payload: '<a/>',
          },
          415,
          'unsupported-media-type',
        ],
        [
          {
            method: 'POST',
            url: '/v1/subscribers',
            headers: { ...as(operatorToken), 'content-type': 'application/json' },
            payload: JSON.stringify({ name: 'x'.repeat(20_000) }),
          },
          413,
          'payload-too-large',
        ],
        [{ method: 'GET', url: '/v1/whoami' }, 401, 'unauthorized'],
      ];
      for (const [request, status, error] of cases) {
        const response = await app.inject(request);
        assert.equal(response.statusCode, status, `${request.method} ${request.url}: ${response.body}`);
        const body = response.json() as { error: string; message: string };
        assert.equal(body.error, error);
        assert.ok(documented.has(body.error), `${body.error} is listed in docs/api.md`);
        assert.equal(typeof body.message, 'string');
      }
    });

    it('a NUL character (U+0000) in a path, query or body field is a 400 naming it, nothing written (it was a 500 on PostgreSQL)', async () => {
      const parties = await count('parties');
      const cases: Array<
        [string, () => Promise<{ statusCode: number; json(): unknown; body: string }>, string]
      > = [
        ['body/name', () => post('/v1/subscribers', operatorToken, { name: 'a\u0000b' }), 'body/name'],
        ['a key', () => post('/v1/sources', operatorToken, { 'n\u0000': 'x' }), 'body/n\\u0000'],
        [
          'a nested value',
          () => post('/v1/usage/batch', operatorToken, { events: [{ key: 'k', account: '\u0000' }] }),
          'body/events/0/account',
        ],
        [
          'a query value',
          () => get('/v1/entitlements?subscriber=%00', operatorToken),
          'querystring/subscriber',
        ],
        ['a path parameter', () => get('/v1/sessions/%00', operatorToken), 'params/id'],
        ['a path parameter', () => get('/v1/accounts/a%00/balance', operatorToken), 'params/id'],
        [
          'a DELETE path parameter',
          () => app.inject({ method: 'DELETE', url: '/v1/tokens/%00', headers: as(operatorToken) }),
          'params/id',
        ],
      ];
      for (const [what, send, field] of cases) {
        const response = await send();
        assert.equal(response.statusCode, 400, `${what}: ${response.body}`);
        assert.deepEqual(response.json(), {
          error: 'invalid-request',
          message: `${field}: a NUL character (U+0000) is not accepted`,
        });
      }
      assert.equal(await count('parties'), parties, 'nothing written');
    });

    it('a billing run for a month that has not begun is a 400; nothing is charged', async () => {
      const future = new Date();
      future.setUTCMonth(future.getUTCMonth() + 1, 1);
      const next = future.toISOString().slice(0, 7);
      for (const period of ['2030-01', next]) {
        const response = await post('/v1/billing/run', operatorToken, { period });
        assert.equal(response.statusCode, 400, period);
        assert.match(response.body, /body\/period: .* has not begun/);
      }
      assert.equal(
        (
          await store.db
            .selectFrom('transfers')
            .select('id')
            .where('memo', 'like', 'subscription %')
            .execute()
        ).length,
        0,
      );
      assert.equal(
        (await post('/v1/billing/run', operatorToken, { period: new Date().toISOString().slice(0, 7) }))
          .statusCode,
        200,
        'this month may be billed',
      );
    });
  });
}

onEveryStore(apiSuite);
