import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { openStore, type Store } from '../../src/store/database.js';
import { createLedger, type LedgerError } from '../../src/store/ledger.js';
import { onEveryStore } from '../helpers/postgres.js';

/** The same suite on every dialect (house style: one store suite, SQLite always, PostgreSQL in CI). */
function ledgerSuite(name: string, options: { skip?: string }, url: () => string, cleanup: () => void) {
  describe(`ledger on ${name}`, options, () => {
    let store: Store;
    let ledger: ReturnType<typeof createLedger>;
    before(async () => {
      store = await openStore(url());
      ledger = createLedger(store);
    });
    after(async () => {
      await store?.close();
      cleanup();
    });

    const sumOfBalances = async () => [...(await ledger.balances()).values()].reduce((a, b) => a + b, 0);
    const transferCount = async () => (await store.db.selectFrom('transfers').select('id').execute()).length;

    it('moves money between two accounts; balances are derived and sum to zero', async () => {
      const cash = await ledger.createAccount({
        id: `${name}-cash`,
        name: 'cash',
        kind: 'asset',
        currency: 'EUR',
      });
      const alice = await ledger.createAccount({
        id: `${name}-alice`,
        name: 'alice',
        kind: 'subscriber',
        currency: 'EUR',
      });
      await ledger.transfer({
        idempotencyKey: `${name}-1`,
        debit: alice.id,
        credit: cash.id,
        amount: 1250,
        currency: 'EUR',
      });
      await ledger.transfer({
        idempotencyKey: `${name}-2`,
        debit: cash.id,
        credit: alice.id,
        amount: 250,
        currency: 'EUR',
      });
      assert.equal(await ledger.balance(cash.id), 1000);
      assert.equal(await ledger.balance(alice.id), -1000);
      assert.equal(await sumOfBalances(), 0);
    });

    it('charges an idempotency key once: the same request returns the first result, another is refused', async () => {
      const request = {
        idempotencyKey: `${name}-k`,
        debit: `${name}-alice`,
        credit: `${name}-cash`,
        amount: 99,
        currency: 'EUR',
      };
      const first = await ledger.transfer(request);
      const again = await ledger.transfer(request);
      assert.equal(first.replayed, false);
      assert.equal(again.replayed, true);
      assert.equal(again.id, first.id);
      const before = await transferCount();
      await assert.rejects(
        ledger.transfer({ ...request, amount: 100 }),
        (error: LedgerError) => error.code === 'GATECAST_ERR_IDEMPOTENCY_CONFLICT',
      );
      assert.equal(await transferCount(), before);
    });

    it('refuses bad requests with the field named, and writes nothing', async () => {
      const before = await transferCount();
      const base = {
        idempotencyKey: `${name}-bad`,
        debit: `${name}-alice`,
        credit: `${name}-cash`,
        amount: 5,
        currency: 'EUR',
      };
      const cases: Array<[Partial<typeof base>, RegExp]> = [
        [{ amount: -5 }, /amount: -5 is not a positive integer/],
        [{ amount: 1.5 }, /amount: 1.5/],
        [{ amount: 2 ** 60 }, /amount/],
        [{ currency: 'eur' }, /currency: "eur"/],
        [{ currency: 'USD' }, /kept in EUR, not USD/],
        [{ credit: `${name}-alice` }, /same account/],
        [{ credit: 'nobody' }, /account nobody does not exist/],
        [{ idempotencyKey: '' }, /idempotencyKey/],
      ];
      for (const [change, message] of cases) {
        await assert.rejects(ledger.transfer({ ...base, ...change }), message);
      }
      assert.equal(await transferCount(), before);
    });

    it('a storm of concurrent retries charges each key exactly once and the ledger still sums to zero', async () => {
      const before = await transferCount();
      const requests = [];
      for (let retry = 0; retry < 5; retry++) {
        for (let key = 0; key < 20; key++) {
          requests.push(
            ledger.transfer({
              idempotencyKey: `${name}-storm-${key}`,
              debit: `${name}-alice`,
              credit: `${name}-cash`,
              amount: 10 + key,
              currency: 'EUR',
            }),
          );
        }
      }
      const results = await Promise.all(requests);
      assert.equal(await transferCount(), before + 20);
      assert.equal(results.filter((r) => !r.replayed).length, 20);
      assert.equal(await sumOfBalances(), 0);
    });
  });
}

onEveryStore(ledgerSuite);
