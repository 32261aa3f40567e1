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

    it('charges near 2^53: balances stay exact, and a charge past an account total of 2^53 - 1 is refused when written', async () => {
      const big = await ledger.createAccount({
        id: `${name}-big`,
        name: 'big',
        kind: 'subscriber',
        currency: 'EUR',
      });
      const sink = await ledger.createAccount({
        id: `${name}-sink`,
        name: 'sink',
        kind: 'revenue',
        currency: 'EUR',
      });
      const amount = 3_000_000_000_000_001;
      for (let n = 0; n < 3; n++) {
        await ledger.transfer({
          idempotencyKey: `${name}-big-${n}`,
          debit: big.id,
          credit: sink.id,
          amount,
          currency: 'EUR',
        });
      }
      assert.equal(await ledger.balance(big.id), -9_000_000_000_000_003, 'exact after 3 charges');
      assert.equal(await ledger.balance(sink.id), 9_000_000_000_000_003);
      const before = await transferCount();
      await assert.rejects(
        ledger.transfer({
          idempotencyKey: `${name}-big-3`,
          debit: big.id,
          credit: sink.id,
          amount,
          currency: 'EUR',
        }),
        (error: LedgerError) =>
          error.code === 'GATECAST_ERR_LEDGER_LIMIT' && /ledgerAccountTotalMax/.test(error.message),
      );
      assert.equal(await transferCount(), before, 'the refused charge wrote nothing');
      const rest = Number.MAX_SAFE_INTEGER - 9_000_000_000_000_003;
      await ledger.transfer({
        idempotencyKey: `${name}-big-rest`,
        debit: big.id,
        credit: sink.id,
        amount: rest,
        currency: 'EUR',
      });
      assert.equal(await ledger.balance(big.id), -Number.MAX_SAFE_INTEGER, 'up to the bound exactly');
      await assert.rejects(
        ledger.transfer({
          idempotencyKey: `${name}-big-one`,
          debit: big.id,
          credit: sink.id,
          amount: 1,
          currency: 'EUR',
        }),
        (error: LedgerError) => error.code === 'GATECAST_ERR_LEDGER_LIMIT',
      );
      const back = await ledger.transfer({
        idempotencyKey: `${name}-big-back`,
        debit: sink.id,
        credit: big.id,
        amount: 5,
        currency: 'EUR',
      });
      assert.equal(back.replayed, false, 'the other direction is still open');
      assert.equal(await ledger.balance(big.id), -Number.MAX_SAFE_INTEGER + 5);
      assert.equal(await sumOfBalances(), 0, 'the ledger still reads and sums to zero');
    });

    it('concurrent charges near the bound: as many are written as fit, the rest refused, though each read the totals before the others wrote', async () => {
      const edge = await ledger.createAccount({ name: 'edge', kind: 'subscriber', currency: 'EUR' });
      const sink = await ledger.createAccount({ name: 'edge sink', kind: 'revenue', currency: 'EUR' });
      const base = { debit: edge.id, credit: sink.id, currency: 'EUR' };
      await ledger.transfer({
        ...base,
        idempotencyKey: `${name}-edge-0`,
        amount: Number.MAX_SAFE_INTEGER - 10,
      });
      const before = await transferCount();
      // On PostgreSQL these run on several connections at once, each reading the totals before the
      // others add to them; only the totals' UPDATE, under lock, tells which still fit.
      const outcomes = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          ledger.transferMany([{ ...base, idempotencyKey: `${name}-edge-${i + 1}`, amount: 1 }]),
        ),
      );
      const results = outcomes.map(([outcome]) => outcome);
      assert.equal(results.filter((outcome) => outcome?.ok === true).length, 10, 'the 10 that fit');
      assert.deepEqual(
        [...new Set(results.flatMap((outcome) => (outcome?.ok === false ? [outcome.error.code] : [])))],
        ['GATECAST_ERR_LEDGER_LIMIT'],
      );
      assert.equal(await transferCount(), before + 10, 'a refused charge wrote nothing');
      assert.equal(await ledger.balance(edge.id), -Number.MAX_SAFE_INTEGER, 'up to the bound exactly');
      assert.equal(await ledger.balance(sink.id), Number.MAX_SAFE_INTEGER);
      assert.equal(await sumOfBalances(), 0);
    });

    it('a batch writes each request once in one transaction; each keeps its own key and outcome', async () => {
      const before = await transferCount();
      const base = { debit: `${name}-alice`, credit: `${name}-cash`, currency: 'EUR' };
      const outcomes = await ledger.transferMany([
        { ...base, idempotencyKey: `${name}-batch-1`, amount: 7 },
        { ...base, idempotencyKey: `${name}-batch-2`, amount: 8 },
        { ...base, idempotencyKey: `${name}-batch-1`, amount: 7 },
        { ...base, idempotencyKey: `${name}-batch-2`, amount: 9 },
        { ...base, idempotencyKey: `${name}-batch-3`, amount: 1, credit: 'nobody' },
        { ...base, idempotencyKey: `${name}-k`, amount: 99 },
      ]);
      assert.deepEqual(
        outcomes.map((outcome) =>
          outcome.ok ? (outcome.transfer.replayed ? 'replayed' : 'new') : outcome.error.code,
        ),
        [
          'new',
          'new',
          'replayed',
          'GATECAST_ERR_IDEMPOTENCY_CONFLICT',
          'GATECAST_ERR_UNKNOWN_ACCOUNT',
          'replayed',
        ],
      );
      assert.equal(await transferCount(), before + 2);
      assert.equal(await sumOfBalances(), 0);
    });

    it('keys with quotes, braces, backslashes or non-ASCII letters are found again when retried; a lone surrogate is refused', async () => {
      for (const id of [`${name}-keys-from`, `${name}-keys-to`]) {
        await ledger.createAccount({ id, name: id, kind: 'subscriber', currency: 'EUR' });
      }
      const base = { debit: `${name}-keys-from`, credit: `${name}-keys-to`, currency: 'EUR', amount: 3 };
      // The store keeps a lone surrogate as U+FFFD, so the key read back would not be the key asked
      // for: such a key is refused before anything is looked up or written.
      const keys = [
        `${name}-"quoted", {braced}`,
        `${name}-back\\slash\\"`,
        `${name}-Ärger-ΟΔΥΣΣΕΥΣ-日本`,
        `${name}-lone-\ud800-surrogate`,
        `${name}-NULL`,
      ];
      const outcome = (result: Awaited<ReturnType<typeof ledger.transferMany>>[number]) =>
        result.ok ? (result.transfer.replayed ? 'replayed' : 'new') : result.error.code;
      const before = await transferCount();
      const first = await ledger.transferMany(keys.map((idempotencyKey) => ({ ...base, idempotencyKey })));
      assert.deepEqual(first.map(outcome), ['new', 'new', 'new', 'GATECAST_ERR_LEDGER_INVALID', 'new']);
      assert.match((first[3] as { error: Error }).error.message, /^idempotencyKey: /);
      const again = await ledger.transferMany(keys.map((idempotencyKey) => ({ ...base, idempotencyKey })));
      assert.deepEqual(
        again.map(outcome),
        ['replayed', 'replayed', 'replayed', 'GATECAST_ERR_LEDGER_INVALID', 'replayed'],
        'every key answered from the ledger, none written twice',
      );
      assert.equal(await transferCount(), before + 4);
      assert.equal(await sumOfBalances(), 0);
    });

    it('a NUL or a lone surrogate in a key, an account or a memo is refused alone, naming the field; the rest of its batch is written', async () => {
      for (const id of [`${name}-nul-from`, `${name}-nul-to`]) {
        await ledger.createAccount({ id, name: id, kind: 'subscriber', currency: 'EUR' });
      }
      const base = { debit: `${name}-nul-from`, credit: `${name}-nul-to`, currency: 'EUR', amount: 5 };
      const before = await transferCount();
      const results = await ledger.transferMany([
        { ...base, idempotencyKey: `${name}-nul-good-1` },
        { ...base, idempotencyKey: `${name}-nul-\u0000-key` },
        { ...base, idempotencyKey: `${name}-nul-debit`, debit: `${name}-nul-from\u0000` },
        { ...base, idempotencyKey: `${name}-nul-credit`, credit: `${name}-nul-to\udc00` },
        { ...base, idempotencyKey: `${name}-nul-memo`, memo: 'usage a\u0000b' },
        { ...base, idempotencyKey: `${name}-surrogate-memo`, memo: 'usage \ud800' },
        { ...base, idempotencyKey: `${name}-nul-good-2` },
      ]);
      const fields = results.map((result) =>
        result.ok ? 'new' : `${result.error.code} ${result.error.message.split(':')[0]}`,
      );
      assert.deepEqual(fields, [
        'new',
        'GATECAST_ERR_LEDGER_INVALID idempotencyKey',
        'GATECAST_ERR_LEDGER_INVALID debit',
        'GATECAST_ERR_LEDGER_INVALID credit',
        'GATECAST_ERR_LEDGER_INVALID memo',
        'GATECAST_ERR_LEDGER_INVALID memo',
        'new',
      ]);
      assert.equal(await transferCount(), before + 2);
      assert.equal(await ledger.balance(`${name}-nul-to`), 10);
      assert.equal(await sumOfBalances(), 0);
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
