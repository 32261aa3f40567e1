import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import SQLite from 'better-sqlite3';
import type { FastifyInstance } from 'fastify';
import { Kysely, Migrator, PostgresDialect, SqliteDialect } from 'kysely';
import pg from 'pg';
import { buildServerApp as buildSubscriptionApp } from '../../src/cli/server-app.js';
import { openStore, type Schema, type Store } from '../../src/store/database.js';
import { migrations } from '../../src/store/migrations.js';
import { nameKey } from '../../src/store/names.js';
import { onEveryStore } from '../helpers/postgres.js';

const operatorToken = 'operator-token-for-names-tests-0123456789';

/**
 * Hostile input against names, usage sessions and billing periods (issue 10): names that read alike
 * are one name, usage for a session nobody registered is not charged, and a billing run for a month
 * before the ledger could hold anything is refused.
 */
function suite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`names, usage sessions and billing periods (${name})`, options, () => {
    let store: Store;
    let app: FastifyInstance;
    const call = (method: 'GET' | 'POST', path: string, payload?: unknown, headers = {}) =>
      app.inject({
        method,
        url: path,
        headers: { authorization: `Bearer ${operatorToken}`, ...headers },
        ...(payload === undefined ? {} : { payload: payload as object }),
      });
    const partyCount = async () =>
      (await store.db.selectFrom('parties').select('id').where('kind', '<>', 'operator').execute()).length;
    const transferCount = async () => (await store.db.selectFrom('transfers').select('id').execute()).length;
    const balance = async (account: string) =>
      ((await call('GET', `/v1/accounts/${account}/balance`)).json() as { balance: number }).balance;

    before(async () => {
      store = await openStore(url());
      app = await buildSubscriptionApp({ store, operatorToken });
    });
    after(async () => {
      await app?.close();
      await store?.close();
      cleanup();
    });

    it('names differing only in case are one name per kind: 409 conflict, nothing written', async () => {
      const first = await call('POST', '/v1/subscribers', { name: 'alice' });
      assert.equal(first.statusCode, 201, first.body);
      const before = await partyCount();
      for (const again of ['ALICE', 'Alice', 'aLiCe']) {
        const reply = await call('POST', '/v1/subscribers', { name: again });
        assert.equal(reply.statusCode, 409, `${again}: ${reply.body}`);
        assert.equal((reply.json() as { error: string }).error, 'conflict');
        assert.match((reply.json() as { message: string }).message, /^body\/name: /);
      }
      assert.equal(await partyCount(), before, 'no second alice');
      const source = await call('POST', '/v1/sources', { name: 'ALICE' });
      assert.equal(source.statusCode, 201, 'names are unique per kind: a source may be called ALICE');
      const sourceAgain = await call('POST', '/v1/sources', { name: 'alice' });
      assert.equal(sourceAgain.statusCode, 409, sourceAgain.body);
    });

    it('the store itself refuses a name differing only in case (the unique index on the folded name)', async () => {
      await call('POST', '/v1/subscribers', { name: 'bob' });
      await assert.rejects(
        store.db
          .insertInto('parties')
          .values({
            id: 'direct-bob',
            kind: 'subscriber',
            name: 'BOB',
            name_key: nameKey('BOB'),
            token_hash: 'direct-bob-hash',
            created_at: new Date().toISOString(),
          })
          .execute(),
      );
    });

    it('names differing in case beyond ASCII, or in compatibility forms, are one name: "Ärger" and "äRGER"', async () => {
      const first = await call('POST', '/v1/subscribers', { name: 'Ärger' });
      assert.equal(first.statusCode, 201, first.body);
      const before = await partyCount();
      // Upper and lower case outside ASCII; the decomposed "A" + combining diaeresis; full-width
      // letters.
      for (const again of ['äRGER', 'ÄRGER', 'A\u0308rger', 'Ａ\u0308ＲＧＥＲ']) {
        const reply = await call('POST', '/v1/subscribers', { name: again });
        assert.equal(reply.statusCode, 409, `${again}: ${reply.body}`);
        assert.equal((reply.json() as { error: string }).error, 'conflict');
        assert.match((reply.json() as { message: string }).message, /^body\/name: /);
      }
      assert.equal(await partyCount(), before, 'no second Ärger');
      const other = await call('POST', '/v1/subscribers', { name: 'Arger' });
      assert.equal(other.statusCode, 201, `a name without the umlaut is another name: ${other.body}`);
      // The store refuses it too, whoever writes the row (the unique index on the name key).
      await assert.rejects(
        store.db
          .insertInto('parties')
          .values({
            id: 'direct-aerger',
            kind: 'subscriber',
            name: 'ÄRGER',
            name_key: nameKey('ÄRGER'),
            token_hash: 'direct-aerger-hash',
            created_at: new Date().toISOString(),
          })
          .execute(),
      );
    });

    it('names with surrounding white space or control characters are refused: 400 naming body/name', async () => {
      const before = await partyCount();
      const refused = [
        'carol ',
        ' carol',
        '\tcarol',
        'carol\n',
        'ca\u0001rol',
        'ca\u007frol',
        'ca\u0085rol',
        ' ',
      ];
      for (const bad of refused) {
        for (const kind of ['subscribers', 'sources']) {
          const reply = await call('POST', `/v1/${kind}`, { name: bad });
          assert.equal(reply.statusCode, 400, `${JSON.stringify(bad)}: ${reply.body}`);
          const body = reply.json() as { error: string; message: string };
          assert.equal(body.error, 'invalid-request');
          assert.match(body.message, /^body\/name /);
        }
      }
      assert.equal(await partyCount(), before, 'nothing written');
      const inner = await call('POST', '/v1/subscribers', { name: 'carol smith' });
      assert.equal(inner.statusCode, 201, 'white space inside a name is fine');
    });

    it('usage naming a session that does not exist is 404 naming body/session, nothing charged', async () => {
      const dave = (await call('POST', '/v1/subscribers', { name: 'dave' })).json() as { id: string };
      const transfers = await transferCount();
      const single = await call(
        'POST',
        '/v1/usage',
        { account: dave.id, kind: 'repair-bytes', quantity: 1000, session: 'no-such-session' },
        { 'idempotency-key': 'usage-unknown-session-1' },
      );
      assert.equal(single.statusCode, 404, single.body);
      const body = single.json() as { error: string; message: string };
      assert.equal(body.error, 'not-found');
      assert.match(body.message, /^body\/session: /);
      assert.equal(await balance(dave.id), 0);
      assert.equal(await transferCount(), transfers, 'no transfer written');

      const batch = await call('POST', '/v1/usage/batch', {
        events: [
          { key: 'batch-known-1', account: dave.id, kind: 'repair-bytes', quantity: 1000 },
          {
            key: 'batch-unknown-1',
            account: dave.id,
            kind: 'repair-bytes',
            quantity: 1000,
            session: 'no-such-session',
          },
        ],
      });
      assert.equal(batch.statusCode, 200, batch.body);
      const results = (
        batch.json() as {
          results: Array<{ key: string; status: number; error?: string; message?: string; amount?: number }>;
        }
      ).results;
      assert.equal(results[0]?.status, 201, 'the event without a session is charged');
      assert.equal(results[1]?.status, 404);
      assert.equal(results[1]?.error, 'not-found');
      assert.match(results[1]?.message ?? '', /^body\/session: /);
      assert.equal(
        await balance(dave.id),
        -(results[0]?.amount ?? Number.NaN),
        'only the first event charged',
      );
      assert.equal(await transferCount(), transfers + 1);
    });

    it('usage naming a registered session is charged', async () => {
      const source = (await call('POST', '/v1/sources', { name: 'erin' })).json() as {
        id: string;
        token: string;
      };
      const session = await app.inject({
        method: 'POST',
        url: '/v1/sessions',
        headers: { authorization: `Bearer ${source.token}` },
        payload: { name: 'erin-1', group: '239.1.99.1:5000' },
      });
      assert.equal(session.statusCode, 201, session.body);
      const sessionId = (session.json() as { id: string }).id;
      const frank = (await call('POST', '/v1/subscribers', { name: 'frank' })).json() as { id: string };
      const charged = await call(
        'POST',
        '/v1/usage',
        { account: frank.id, kind: 'repair-bytes', quantity: 1000, session: sessionId },
        { 'idempotency-key': 'usage-known-session-1' },
      );
      assert.equal(charged.statusCode, 201, charged.body);
      assert.equal(await balance(frank.id), -(charged.json() as { amount: number }).amount);
    });

    it('a billing run for a month before 2000-01 is 400 naming body/period, nothing charged', async () => {
      const transfers = await transferCount();
      for (const period of ['0000-01', '1970-01', '1999-12']) {
        const reply = await call('POST', '/v1/billing/run', { period });
        assert.equal(reply.statusCode, 400, `${period}: ${reply.body}`);
        const body = reply.json() as { error: string; message: string };
        assert.equal(body.error, 'invalid-request');
        assert.match(body.message, /^body\/period: /);
      }
      assert.equal(await transferCount(), transfers);
      const first = await call('POST', '/v1/billing/run', { period: '2000-01' });
      assert.equal(first.statusCode, 200, `the first month may be billed: ${first.body}`);
    });
  });
}

/**
 * A store made before names were folded may hold "dora" and "DORA": the migration keeps the first,
 * gives the later one its id (as 0005 did for exact duplicates), and then builds the index.
 */
function migrationSuite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`migrations 0007 and 0008 over names differing only in case (${name})`, options, () => {
    let db: Kysely<Schema>;
    before(() => {
      const address = url();
      db = new Kysely<Schema>({
        dialect: address.startsWith('sqlite:')
          ? new SqliteDialect({ database: new SQLite(':memory:') })
          : new PostgresDialect({ pool: new pg.Pool({ connectionString: address, max: 2 }) }),
      });
    });
    after(async () => {
      await db?.destroy();
      cleanup();
    });

    it('renames the later of two names differing in case (ASCII or not), then refuses a third', async () => {
      const migrator = new Migrator({ db, provider: { getMigrations: async () => migrations } });
      const partial = await migrator.migrateTo('0006-purses-receipts');
      assert.equal(partial.error, undefined);
      const party = (id: string, partyName: string, kind = 'subscriber') => ({
        id,
        kind,
        name: partyName,
        token_hash: `hash-${id}`,
        created_at: '2026-01-01T00:00:00Z',
      });
      await db
        .insertInto('parties')
        .values([
          party('a1', 'dora'),
          party('a2', 'DORA'),
          party('a3', 'dora', 'source'),
          party('a4', 'eve'),
          party('a5', 'ärger'),
          party('a6', 'ÄRGER'),
          party('a7', 'ÄRGER', 'source'),
        ])
        .execute();
      const latest = await migrator.migrateToLatest();
      assert.equal(latest.error, undefined, String(latest.error));
      const rows = await db.selectFrom('parties').select(['id', 'name']).orderBy('id').execute();
      assert.deepEqual(rows, [
        { id: 'a1', name: 'dora' },
        { id: 'a2', name: 'DORA (a2)' },
        { id: 'a3', name: 'dora' },
        { id: 'a4', name: 'eve' },
        { id: 'a5', name: 'ärger' },
        { id: 'a6', name: 'ÄRGER (a6)' },
        { id: 'a7', name: 'ÄRGER' },
      ]);
      const keys = await db.selectFrom('parties').select(['id', 'name_key']).orderBy('id').execute();
      assert.deepEqual(
        keys.map((row) => row.name_key),
        ['dora', 'dora (a2)', 'dora', 'eve', 'ärger', 'ärger (a6)', 'ärger'],
        'every row has its key',
      );
      await assert.rejects(
        db
          .insertInto('parties')
          .values({ ...party('a8', 'Eve'), name_key: nameKey('Eve') })
          .execute(),
      );
      await assert.rejects(
        db
          .insertInto('parties')
          .values({ ...party('a9', 'ÄrGeR'), name_key: nameKey('ÄrGeR') })
          .execute(),
      );
    });
  });
}

onEveryStore(suite);
onEveryStore(migrationSuite);
