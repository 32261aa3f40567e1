import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { openStore } from '../../src/store/database.js';
import { createLedger } from '../../src/store/ledger.js';
import { postgresSkip, startPostgres } from '../helpers/postgres.js';
import { type ServeProcess, startServe } from '../helpers/serve.js';

const operatorToken = 'operator-token-for-the-crash-test-0123';
const env = { GATECAST_OPERATOR_TOKEN: operatorToken };
const keys = 300;
const clients = 6;
/** Attempts that found no server or lost their answer: the retries the crash caused. */
let failedAttempts = 0;
/** Answers of 500 and above: a store error (a lock, a lost race) the server did not absorb. */
let serverErrors = 0;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Pay-as-you-go at the default 1 per MB: key i is charged (i % 7) + 1. */
const usageOf = (account: string, i: number) => ({
  account,
  kind: 'pay-as-you-go-bytes',
  quantity: ((i % 7) + 1) * 1_000_000,
});

/**
 * One charge, retried until a server answers it (connection refused while a server is down,
 * reset mid-request when it is killed). Returns the transfer id. Bounded in time.
 */
async function charge(urls: () => string[], key: string, body: object, attempt: { n: number }) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const candidates = urls();
    const url = candidates[attempt.n++ % candidates.length];
    try {
      const response = await fetch(`${url}/v1/usage`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${operatorToken}`,
          'content-type': 'application/json',
          'idempotency-key': key,
        },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5_000),
      });
      const answer = (await response.json()) as { transfer?: string };
      if (response.status === 200 || response.status === 201) {
        return answer.transfer as string;
      }
      if (response.status < 500) {
        throw new Error(`${key}: ${response.status} ${JSON.stringify(answer)}`);
      }
      serverErrors++;
    } catch (error) {
      if ((error as Error).message.startsWith(key)) {
        throw error;
      }
      failedAttempts++;
    }
    if (Date.now() > deadline) {
      throw new Error(`${key}: no server answered within 60 s`);
    }
    await sleep(20);
  }
}

/** A batch of charges (POST /v1/usage/batch), retried until a server answers it; each key's transfer id. */
async function chargeBatch(
  urls: () => string[],
  events: Array<{ key: string; body: object }>,
  attempt: { n: number },
): Promise<string[]> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const candidates = urls();
    const url = candidates[attempt.n++ % candidates.length];
    try {
      const response = await fetch(`${url}/v1/usage/batch`, {
        method: 'POST',
        headers: { authorization: `Bearer ${operatorToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ events: events.map(({ key, body }) => ({ key, ...body })) }),
        signal: AbortSignal.timeout(5_000),
      });
      const answer = (await response.json()) as { results?: Array<{ status: number; transfer?: string }> };
      if (response.status === 200) {
        const results = answer.results ?? [];
        for (const result of results) {
          if (result.status >= 300) {
            throw new Error(`batch: an event was refused: ${JSON.stringify(result)}`);
          }
        }
        return results.map((result) => result.transfer as string);
      }
      if (response.status < 500) {
        throw new Error(`batch: ${response.status} ${JSON.stringify(answer)}`);
      }
      serverErrors++;
    } catch (error) {
      if ((error as Error).message.startsWith('batch:')) {
        throw error;
      }
      failedAttempts++;
    }
    if (Date.now() > deadline) {
      throw new Error('batch: no server answered within 60 s');
    }
    await sleep(20);
  }
}

/** Events per batch on the batch path. */
const batchEvents = 10;

/**
 * The storm: clients share the keys; every key is sent twice (a retry after success too); after
 * a third of the answers one server is killed with SIGKILL and restarted on the same port.
 */
async function storm(options: {
  servers: ServeProcess[];
  restart: (index: number) => Promise<ServeProcess>;
  accounts: string[];
  bothAtOnce: boolean;
  /** Send the keys in batches (POST /v1/usage/batch) instead of one request each. */
  batch?: boolean;
}) {
  const servers = [...options.servers];
  const live = () => servers.map((server) => server.url);
  const transfers = new Map<string, Set<string>>();
  let answered = 0;
  let killed = false;
  let crash: Promise<void> | undefined;
  let next = 0;
  const step = options.batch === true ? batchEvents : 1;
  const worker = async () => {
    for (;;) {
      const i = next;
      next += step;
      if (i >= keys) {
        return;
      }
      const group = Array.from({ length: Math.min(step, keys - i) }, (_, k) => ({
        key: `crash-${i + k}`,
        body: usageOf(options.accounts[(i + k) % options.accounts.length] as string, i + k),
      }));
      const send = (n: number): Promise<string[]> =>
        options.batch === true
          ? chargeBatch(live, group, { n })
          : charge(live, group[0]?.key ?? '', group[0]?.body ?? {}, { n }).then((id) => [id]);
      const attempts = options.bothAtOnce ? servers.map((_, s) => send(s + i)) : [send(i)];
      const answers = await Promise.all([...attempts, send(i + 1)]);
      for (const [k, { key }] of group.entries()) {
        transfers.set(key, new Set(answers.map((ids) => ids[k] as string)));
      }
      answered += group.length;
      if (!killed && answered >= keys / 3) {
        killed = true;
        crash = (async () => {
          await servers[0]?.kill();
          await sleep(300);
          servers[0] = await options.restart(0);
        })();
        crash.catch(() => undefined); // awaited (and so thrown) after the storm
      }
    }
  };
  failedAttempts = 0;
  serverErrors = 0;
  await Promise.all(Array.from({ length: clients }, worker));
  await crash;
  assert.ok(killed && failedAttempts > 0, 'the kill fell mid-storm: some requests failed and were retried');
  assert.equal(serverErrors, 0, 'no answer was a server error (no lock or race leaked out as a 500)');
  return { transfers, servers };
}

/** After the storm: one transfer per key, every answer named it, balances add up, the sum is zero. */
async function verify(url: string, accounts: string[], transfers: Map<string, Set<string>>) {
  assert.equal(transfers.size, keys);
  for (const [key, ids] of transfers) {
    assert.equal(ids.size, 1, `${key}: every answer names the same transfer`);
  }
  const store = await openStore(url);
  try {
    const rows = await store.db
      .selectFrom('transfers')
      .select(['idempotency_key', 'id'])
      .where('idempotency_key', 'like', 'crash-%')
      .execute();
    assert.equal(rows.length, keys, 'each idempotency key charged exactly once');
    for (const row of rows) {
      assert.ok(transfers.get(row.idempotency_key)?.has(row.id), `${row.idempotency_key} as answered`);
    }
    const events = await store.db.selectFrom('usage_events').select('transfer').execute();
    assert.equal(events.length, keys, 'one usage event beside each transfer, none lost, none doubled');
    const ledger = createLedger(store);
    let sum = 0;
    for (const balance of (await ledger.balances()).values()) {
      sum += balance;
    }
    assert.equal(sum, 0, 'the ledger sums to zero');
    for (const [a, account] of accounts.entries()) {
      let expected = 0;
      for (let i = a; i < keys; i += accounts.length) {
        expected -= (i % 7) + 1;
      }
      assert.equal(await ledger.balance(account), expected, `balance of account ${a}`);
    }
  } finally {
    await store.close();
  }
}

async function createAccounts(url: string): Promise<string[]> {
  const accounts: string[] = [];
  for (const name of ['a', 'b', 'c']) {
    const response = await fetch(`${url}/v1/subscribers`, {
      method: 'POST',
      headers: { authorization: `Bearer ${operatorToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name }),
    });
    accounts.push(((await response.json()) as { id: string }).id);
  }
  return accounts;
}

describe('crash: a storm of retried charges, the server killed with SIGKILL mid-storm and restarted', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-crash-'));
  after(() => rmSync(directory, { recursive: true, force: true }));

  for (const batch of [false, true]) {
    const path = batch ? ', the batch path' : '';
    it(`SQLite, one server${path}: each idempotency key charged exactly once, the ledger sums to zero`, async () => {
      const db = `sqlite:${join(directory, batch ? 'crash-batch.db' : 'crash.db')}`;
      let server = await startServe(['--db', db], env);
      const port = Number(new URL(server.url).port);
      try {
        const accounts = await createAccounts(server.url);
        const result = await storm({
          servers: [server],
          restart: async () => {
            server = await startServe(['--db', db], env, port);
            return server;
          },
          accounts,
          bothAtOnce: false,
          batch,
        });
        await server.stop();
        await verify(db, accounts, result.transfers);
      } finally {
        await server.kill();
      }
    });
  }

  for (const batch of [false, true]) {
    it(`SQLite, two servers on one file, both sent every ${batch ? 'batch' : 'key'}: each key charged exactly once, no request fails for a lock`, async () => {
      await twoServerStorm(`sqlite:${join(directory, batch ? 'shared-batch.db' : 'shared.db')}`, batch);
    });
  }

  for (const batch of [false, true]) {
    it(
      `PostgreSQL, two servers sharing the store, both sent every ${batch ? 'batch' : 'key'}: each key charged exactly once`,
      postgresSkip(),
      async () => {
        const postgres = startPostgres();
        try {
          await twoServerStorm(postgres.url, batch);
        } finally {
          postgres.stop();
        }
      },
    );
  }
});

/** Two servers on one store, both sent every key; the first is killed and restarted mid-storm. */
async function twoServerStorm(db: string, batch = false) {
  const servers = [await startServe(['--db', db], env), await startServe(['--db', db], env)];
  const port = Number(new URL((servers[0] as ServeProcess).url).port);
  try {
    const accounts = await createAccounts((servers[1] as ServeProcess).url);
    const result = await storm({
      servers,
      restart: async () => {
        servers[0] = await startServe(['--db', db], env, port);
        return servers[0];
      },
      accounts,
      bothAtOnce: true,
      batch,
    });
    for (const server of servers) {
      await server.stop();
    }
    await verify(db, accounts, result.transfers);
  } finally {
    for (const server of servers) {
      await server.kill();
    }
  }
}
