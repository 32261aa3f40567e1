import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import {
  applyTopUp,
  authorize,
  createPurseState,
  type PurseGrant,
  type PurseState,
} from '../../src/crypto/purse.js';
import { ed25519Signer, type Receipt, signReceipt } from '../../src/crypto/receipt.js';
import type { ReceiptBatchResult, Reconciliation } from '../../src/protocol/api-receipts.js';
import { openStore, type Store } from '../../src/store/database.js';
import { createLedger } from '../../src/store/ledger.js';
import { onEveryStore } from '../helpers/postgres.js';
import { createRandom } from '../helpers/random.js';

const operatorToken = 'operator-token-for-receipt-tests-0123';
const grant: PurseGrant = {
  service: 'news',
  mode: 'pay-as-you-go',
  validFromMs: 0,
  validToMs: Date.UTC(2100, 0, 1),
  rates: { perCryptoPeriod: 7, perMegabyte: 3, perMinute: 2 },
};

/** A store whose write transactions fail on demand: before the commit (nothing written) or after it (the answer is lost). */
function faultyStore(store: Store, seed: number) {
  const random = createRandom(seed);
  const injected = { before: 0, after: 0, on: false };
  const wrapped: Store = {
    ...store,
    writeTransaction: async (fn) => {
      const roll = injected.on ? random.int(100) : 100;
      if (roll < 8) {
        injected.before++;
        throw new Error('injected: the commit failed');
      }
      const result = await store.writeTransaction(fn);
      if (roll < 16) {
        injected.after++;
        throw new Error('injected: the connection dropped after the commit');
      }
      return result;
    },
  };
  return { store: wrapped, injected };
}

interface Token {
  readonly id: string;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

function newToken(id: string): Token {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { id, privateKey, publicKey };
}

const rawPublicKey = (key: KeyObject) => key.export({ format: 'jwk' }).x as string;

/** Writes n receipts from a purse, as the token would. */
async function spend(token: Token, n: number, seed: number): Promise<Receipt[]> {
  const random = createRandom(seed);
  const topped = applyTopUp(createPurseState(token.id, 'EUR'), 0, {
    sequence: 1,
    amount: 1_000_000_000,
    currency: 'EUR',
  });
  assert.ok(topped.ok);
  let state: PurseState = topped.state;
  const signer = ed25519Signer(token.privateKey);
  const receipts: Receipt[] = [];
  const units = ['crypto-period', 'bytes', 'seconds'] as const;
  for (let i = 0; i < n; i++) {
    const unit = units[random.int(3)] as (typeof units)[number];
    const quantity = 1 + random.int(unit === 'bytes' ? 2_000_000 : 120);
    const decision = await authorize(
      state,
      state.revision,
      grant,
      { unit, quantity, timeMs: 1_700_000_000_000 + i },
      signer,
    );
    assert.ok(decision.ok && decision.receipt !== undefined);
    receipts.push(decision.receipt);
    state = decision.state;
  }
  return receipts;
}

/** 100,000 receipts of four tokens, written once for every dialect's suite. */
let bulkReceipts: Promise<{ tokens: Token[]; receipts: Receipt[] }> | undefined;
function bulk() {
  bulkReceipts ??= (async () => {
    const tokens = [0, 1, 2, 3].map((i) => newToken(`tok-bulk-${i}`));
    const receipts = (await Promise.all(tokens.map((token, i) => spend(token, 25_000, 100 + i)))).flat();
    return { tokens, receipts };
  })();
  return bulkReceipts;
}

function suite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`purses and receipts (app.inject, ${name})`, options, () => {
    let real: Store;
    let faulty: ReturnType<typeof faultyStore>;
    let app: FastifyInstance;
    let subscriber: string;
    let subscriberToken: string;

    const call = async (
      method: 'GET' | 'POST' | 'PUT',
      path: string,
      payload?: object,
      token = operatorToken,
    ) =>
      app.inject({
        method,
        url: path,
        headers: { authorization: `Bearer ${token}` },
        ...(payload === undefined ? {} : { payload }),
      });

    /** The client's retry loop: the same request until it is answered (bounded). */
    const retried = async (method: 'POST' | 'PUT', path: string, payload: object) => {
      for (let attempt = 1; attempt <= 60; attempt++) {
        const response = await call(method, path, payload);
        if (response.statusCode < 500) {
          return response;
        }
      }
      throw new Error(`${method} ${path}: 60 attempts failed`);
    };

    const register = async (token: Token) => {
      const response = await retried('PUT', `/v1/purses/${token.id}`, {
        subscriber,
        publicKey: rawPublicKey(token.publicKey),
      });
      assert.ok([200, 201].includes(response.statusCode), response.body);
    };

    before(async () => {
      real = await openStore(url());
      faulty = faultyStore(real, 17);
      app = await buildServerApp({ store: faulty.store, operatorToken, onInternalError: () => undefined });
      const created = (await call('POST', '/v1/subscribers', { name: 'alice' })).json() as {
        id: string;
        token: string;
      };
      subscriber = created.id;
      subscriberToken = created.token;
    });
    after(async () => {
      await app?.close();
      await real?.close();
      cleanup();
    });

    it('100,000 receipts with 30 % duplicates and failing commits: each charged exactly once, the ledger sums to zero', async () => {
      const { tokens, receipts } = await bulk();
      assert.equal(receipts.length, 100_000);
      faulty.injected.on = true;
      for (const token of tokens) {
        await register(token);
        const topUp = await retried('POST', `/v1/purses/${token.id}/top-ups`, {
          sequence: 1,
          amount: 1_000_000_000,
        });
        assert.ok([200, 201].includes(topUp.statusCode), topUp.body);
      }
      // Every receipt once, 30 % of them twice, in a shuffled order (chains arrive out of order).
      const random = createRandom(4242);
      const posts = receipts.map((r) => r.bytes.toString('base64url'));
      for (let i = 0; i < 30_000; i++) {
        posts.push(posts[random.int(100_000)] as string);
      }
      for (let i = posts.length - 1; i > 0; i--) {
        const j = random.int(i + 1);
        [posts[i], posts[j]] = [posts[j] as string, posts[i] as string];
      }
      let batches = 0;
      for (let start = 0; start < posts.length; start += 1000) {
        const response = await retried('POST', '/v1/receipts/batch', {
          receipts: posts.slice(start, start + 1000),
        });
        assert.equal(response.statusCode, 200, response.body);
        const body = response.json() as ReceiptBatchResult;
        assert.equal(body.refused, 0, JSON.stringify(body.results.find((r) => r.status >= 300)));
        batches++;
      }
      faulty.injected.on = false;
      assert.ok(faulty.injected.before > 3 && faulty.injected.after > 3, JSON.stringify(faulty.injected));
      assert.equal(batches, 130);

      const charged = await real.db
        .selectFrom('transfers')
        .select([
          (eb) => eb.fn.countAll<string | number>().as('count'),
          (eb) => eb.fn.sum<string | number>('amount').as('sum'),
        ])
        .where('idempotency_key', 'like', 'receipt/%')
        .executeTakeFirstOrThrow();
      const expected = receipts.reduce((sum, r) => sum + r.amount, 0);
      assert.equal(Number(charged.count), 100_000, 'one transfer per receipt');
      assert.equal(Number(charged.sum), expected, 'the receipts’ amounts, each once');
      const receiptRows = await real.db
        .selectFrom('receipts')
        .select((eb) => eb.fn.countAll<string | number>().as('count'))
        .executeTakeFirstOrThrow();
      assert.equal(Number(receiptRows.count), 100_000);
      const balances = await createLedger(real).balances();
      assert.equal(
        [...balances.values()].reduce((a, b) => a + b, 0),
        0,
        'the ledger sums to zero',
      );
      assert.equal(balances.get('operator-revenue'), expected);
      assert.equal(balances.get(subscriber), -4 * 1_000_000_000, 'each top-up once');
      for (const token of tokens) {
        const own = receipts.filter((r) => r.tokenId === token.id).reduce((sum, r) => sum + r.amount, 0);
        assert.equal(balances.get(`purse:${token.id}`), 1_000_000_000 - own);
        const reconciliation = (
          await call('GET', `/v1/purses/${token.id}/reconciliation`)
        ).json() as Reconciliation;
        assert.deepEqual(
          {
            missing: reconciliation.missing,
            highest: reconciliation.highestCounter,
            clean: reconciliation.clean,
          },
          { missing: 0, highest: 25_000, clean: true },
        );
      }
    });

    it('refuses and counts a bad signature and a broken chain; reconciliation shows the gap', async () => {
      const token = newToken(`tok-${name.toLowerCase()}-chain`);
      await register(token);
      const [first, second, third, fourth] = await spend(token, 4, 9);
      assert.ok(first && second && third && fourth);
      // A receipt signed by another key, and one at counter 3 that does not follow receipt 2.
      const forged = await signReceipt({ ...third }, ed25519Signer(newToken('x').privateKey));
      const fork = await signReceipt(
        { ...third, amount: third.amount + 1, previousHash: first.hash },
        ed25519Signer(token.privateKey),
      );
      const post = async (list: Receipt[], as = operatorToken) =>
        (
          await call(
            'POST',
            '/v1/receipts/batch',
            { receipts: list.map((r) => r.bytes.toString('base64url')) },
            as,
          )
        ).json() as ReceiptBatchResult;
      const answer = await post([first, fourth], subscriberToken);
      assert.deepEqual(
        answer.results.map((r) => r.status),
        [201, 201],
      );
      const refused = await post([forged, fork], subscriberToken);
      assert.deepEqual(
        refused.results.map((r) => [r.status, r.refused ?? null]),
        [
          [409, 'bad-signature'],
          [409, 'broken-chain'],
        ],
      );
      assert.equal(refused.charged, 0);
      const gap = (await call('GET', `/v1/purses/${token.id}/reconciliation`)).json() as Reconciliation;
      assert.deepEqual(gap.gaps, [{ from: 2, to: 3 }]);
      assert.equal(gap.missing, 2);
      assert.equal(gap.refusedSignature, 1);
      assert.equal(gap.refusedChain, 1);
      assert.equal(gap.clean, false);
      const filled = await post([third, second, first]);
      assert.deepEqual(
        filled.results.map((r) => r.status),
        [201, 201, 200],
      );
      const after = (await call('GET', `/v1/purses/${token.id}/reconciliation`)).json() as Reconciliation;
      assert.equal(after.missing, 0);
      assert.equal(after.overdrawn, true, 'receipts charged with no top-up: flagged');
    });

    it('a subscriber reports only its own tokens; malformed receipts are refused, nothing charged', async () => {
      const other = (await call('POST', '/v1/subscribers', { name: 'bob' })).json() as {
        id: string;
        token: string;
      };
      const token = newToken(`tok-${name.toLowerCase()}-own`);
      await register(token);
      const [receipt] = await spend(token, 1, 3);
      assert.ok(receipt);
      const response = await call(
        'POST',
        '/v1/receipts/batch',
        { receipts: [receipt.bytes.toString('base64url'), 'AAAA'] },
        other.token,
      );
      const body = response.json() as ReceiptBatchResult;
      assert.deepEqual(
        body.results.map((r) => r.refused),
        ['forbidden', 'malformed'],
      );
      assert.equal(body.charged, 0);
      const unknown = newToken('tok-nobody');
      const [stranger] = await spend(unknown, 1, 4);
      const refused = (
        await call('POST', '/v1/receipts/batch', { receipts: [stranger?.bytes.toString('base64url')] })
      ).json() as ReceiptBatchResult;
      assert.equal(refused.results[0]?.refused, 'unknown-token');
    });

    it('a receipt key no signer could hold (small order, a second encoding) is refused at registration, naming why', async () => {
      const owner = (await call('POST', '/v1/subscribers', { name: 'weak-key' })).json() as { id: string };
      for (const [hex, why] of [
        [`01${'00'.repeat(31)}`, /small order/],
        [`ec${'ff'.repeat(30)}7f`, /small order/],
        [`ee${'ff'.repeat(30)}7f`, /second encoding/],
      ] as const) {
        const response = await call('PUT', '/v1/purses/tok-weak-key', {
          subscriber: owner.id,
          publicKey: Buffer.from(hex, 'hex').toString('base64url'),
        });
        assert.equal(response.statusCode, 400, response.body);
        assert.match(response.body, /body\/publicKey: not a usable Ed25519 public key/);
        assert.match(response.body, why);
      }
      // Nothing was registered: the token is unknown to billing.
      assert.equal((await call('GET', '/v1/purses/tok-weak-key/reconciliation')).statusCode, 404);
    });

    it("reconciliation of 2,000 accepted charges of 2^53 - 1 bytes each is a 200 (SQLite's sum overflowed: a 500), the usage beyond receipts shown up to 2^53 - 1", async () => {
      const owner = (await call('POST', '/v1/subscribers', { name: 'huge-usage' })).json() as { id: string };
      const token = newToken('tok-huge-usage');
      const registered = await retried('PUT', `/v1/purses/${token.id}`, {
        subscriber: owner.id,
        publicKey: rawPublicKey(token.publicKey),
      });
      assert.ok([200, 201].includes(registered.statusCode), registered.body);
      for (let batch = 0; batch < 2; batch++) {
        const events = Array.from({ length: 1000 }, (_, i) => ({
          key: `huge-usage-${batch}-${i}`,
          account: owner.id,
          kind: 'pay-as-you-go-bytes',
          quantity: Number.MAX_SAFE_INTEGER,
        }));
        const response = await retried('POST', '/v1/usage/batch', { events });
        assert.equal(response.statusCode, 200, response.body);
        const results = (response.json() as { results: Array<{ status: number }> }).results;
        assert.ok(
          results.every((result) => result.status === 200 || result.status === 201),
          'every charge accepted',
        );
      }
      const reconciliation = await call('GET', `/v1/purses/${token.id}/reconciliation`);
      assert.equal(reconciliation.statusCode, 200, reconciliation.body);
      const body = reconciliation.json() as {
        unreceipted: { bytes: number; seconds: number };
        clean: boolean;
      };
      assert.deepEqual(body.unreceipted, { bytes: Number.MAX_SAFE_INTEGER, seconds: 0 });
      assert.equal(body.clean, false);
    });

    it('a top-up is credited once per sequence; a skipped sequence is refused', async () => {
      const token = newToken(`tok-${name.toLowerCase()}-top`);
      await register(token);
      const path = `/v1/purses/${token.id}/top-ups`;
      assert.equal((await call('POST', path, { sequence: 2, amount: 5 })).statusCode, 409);
      assert.equal((await call('POST', path, { sequence: 1, amount: 5 })).statusCode, 201);
      assert.equal((await call('POST', path, { sequence: 1, amount: 5 })).statusCode, 200);
      assert.equal((await call('POST', path, { sequence: 1, amount: 6 })).statusCode, 409);
      const status = (await call('GET', `/v1/purses/${token.id}`, undefined, subscriberToken)).json() as {
        balance: number;
        topUps: number;
      };
      assert.deepEqual({ balance: status.balance, topUps: status.topUps }, { balance: 5, topUps: 1 });
    });
  });
}

onEveryStore(suite);
