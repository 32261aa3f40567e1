import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  applyTopUp,
  authorize,
  createPurse,
  createPurseState,
  type MonotonicCounter,
  type PurseError,
  type PurseGrant,
  type PurseState,
  type PurseUse,
  parsePurseState,
  priceOf,
  serializePurseState,
  tokenPurse,
} from '../../src/crypto/purse.js';
import {
  decodeReceipt,
  ed25519Signer,
  type Receipt,
  receiptChainStart,
  verifyReceipt,
} from '../../src/crypto/receipt.js';
import { createRandom } from '../helpers/random.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const signer = ed25519Signer(privateKey);
const dayMs = 86_400_000;
const t0 = Date.UTC(2026, 0, 1);
const payAsYouGo: PurseGrant = {
  service: 'news',
  mode: 'pay-as-you-go',
  validFromMs: t0,
  validToMs: t0 + 30 * dayMs,
  rates: { perCryptoPeriod: 3, perMegabyte: 5, perMinute: 2 },
};
const units = ['crypto-period', 'bytes', 'seconds'] as const;

function toppedUp(amount: number): PurseState {
  const decision = applyTopUp(createPurseState('token-1', 'EUR'), 0, {
    sequence: 1,
    amount,
    currency: 'EUR',
  });
  assert.ok(decision.ok);
  return decision.state;
}

/** Checks a chain as billing does: counters 1..n, each previous hash the hash before, each signed. */
function assertChain(receipts: readonly Receipt[]) {
  let previous: Buffer = receiptChainStart;
  for (const [index, receipt] of receipts.entries()) {
    const decoded = decodeReceipt(receipt.bytes);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.counter, index + 1);
    assert.ok(decoded.value.previousHash.equals(previous));
    assert.ok(decoded.value.hash.equals(receipt.hash));
    assert.ok(verifyReceipt(decoded.value, publicKey));
    previous = receipt.hash;
  }
}

describe('purse', () => {
  it('property: no debit over the balance; every debit is one receipt of an unbroken chain', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const random = createRandom(seed);
      const start = 1 + random.int(200);
      let state = toppedUp(start);
      const receipts: Receipt[] = [];
      let refusedEmpty = 0;
      for (let step = 0; step < 60; step++) {
        const unit = units[random.int(3)] as PurseUse['unit'];
        const quantity = 1 + random.int(unit === 'bytes' ? 3_000_000 : 200);
        const use = { unit, quantity, timeMs: t0 + random.int(dayMs) };
        const price = priceOf(payAsYouGo.rates ?? {}, use) as number;
        const decision = await authorize(state, state.revision, payAsYouGo, use, signer);
        if (price > state.balance) {
          assert.equal(decision.ok, false, `seed ${seed}: debited ${price} over ${state.balance}`);
          assert.equal((decision as { error: PurseError }).error.code, 'GATECAST_ERR_PURSE_EMPTY');
          assert.match((decision as { error: PurseError }).error.message, /^purse empty/);
          refusedEmpty++;
          continue;
        }
        assert.ok(decision.ok, `seed ${seed}`);
        assert.ok(decision.receipt !== undefined);
        assert.equal(decision.receipt.amount, price);
        assert.equal(decision.state.balance, state.balance - price);
        assert.ok(decision.state.balance >= 0);
        receipts.push(decision.receipt);
        state = decision.state;
      }
      assert.equal(
        receipts.reduce((sum, r) => sum + r.amount, 0),
        start - state.balance,
      );
      assert.ok(refusedEmpty > 0, `seed ${seed}: the purse ran dry at least once`);
      assertChain(receipts);
    }
  });

  it('property: nothing is allowed outside the window, for subscriptions and pay-as-you-go alike', async () => {
    const random = createRandom(7);
    const subscription: PurseGrant = {
      service: 'sports',
      mode: 'subscription',
      validFromMs: t0,
      validToMs: t0 + dayMs,
    };
    const state = toppedUp(1_000_000);
    for (let i = 0; i < 400; i++) {
      const timeMs = t0 - 2 * dayMs + random.int(5 * dayMs);
      for (const grant of [subscription, { ...payAsYouGo, validToMs: t0 + dayMs }]) {
        const decision = await authorize(
          state,
          state.revision,
          grant,
          { unit: 'crypto-period', quantity: 1, timeMs },
          signer,
        );
        const inside = timeMs >= t0 && timeMs < t0 + dayMs;
        assert.equal(decision.ok, inside, `${grant.mode} at ${new Date(timeMs).toISOString()}`);
        if (!decision.ok) {
          assert.equal(decision.error.code, 'GATECAST_ERR_PURSE_NOT_ENTITLED');
          assert.match(
            decision.error.message,
            timeMs < t0 ? /^not entitled to \w+ until 2026-01-01T00:00:00.000Z$/ : /ended at 2026-01-02/,
          );
        } else if (grant.mode === 'subscription') {
          assert.equal(decision.state, state, 'a subscription debits nothing');
          assert.equal(decision.receipt, undefined);
        }
      }
    }
  });

  it('property: a rolled-back state is refused, whatever it holds', async () => {
    const random = createRandom(99);
    let state = toppedUp(10_000);
    const history: PurseState[] = [state];
    for (let i = 0; i < 30; i++) {
      const decision = await authorize(
        state,
        state.revision,
        payAsYouGo,
        { unit: 'crypto-period', quantity: 1 + random.int(5), timeMs: t0 + i },
        signer,
      );
      assert.ok(decision.ok);
      state = decision.state;
      history.push(state);
    }
    const counterValue = state.revision;
    for (const old of history.slice(0, -1)) {
      const debit = await authorize(
        old,
        counterValue,
        payAsYouGo,
        { unit: 'crypto-period', quantity: 1, timeMs: t0 },
        signer,
      );
      assert.equal(debit.ok, false);
      assert.equal((debit as { error: PurseError }).error.code, 'GATECAST_ERR_PURSE_ROLLBACK');
      const topUp = applyTopUp(old, counterValue, { sequence: old.topUps + 1, amount: 5, currency: 'EUR' });
      assert.equal(topUp.ok, false);
      const subscription = await authorize(
        old,
        counterValue,
        { ...payAsYouGo, mode: 'subscription' },
        { unit: 'crypto-period', quantity: 1, timeMs: t0 },
        signer,
      );
      assert.equal(subscription.ok, false, 'no unwrap after a rollback, even on a subscription');
    }
  });

  it('applies a top-up once and in sequence', () => {
    const state = toppedUp(100);
    const again = applyTopUp(state, state.revision, { sequence: 1, amount: 100, currency: 'EUR' });
    assert.equal(again.ok, false);
    const skipped = applyTopUp(state, state.revision, { sequence: 3, amount: 100, currency: 'EUR' });
    assert.equal(skipped.ok, false);
    const otherCurrency = applyTopUp(state, state.revision, { sequence: 2, amount: 100, currency: 'USD' });
    assert.equal(otherCurrency.ok, false);
    const next = applyTopUp(state, state.revision, { sequence: 2, amount: 50, currency: 'EUR' });
    assert.ok(next.ok);
    assert.equal(next.state.balance, 150);
  });

  it('createPurse keeps state and counter together; a restored copy of the state is refused', async () => {
    let saved = serializePurseState(createPurseState('token-2', 'EUR'));
    let counterValue = 0;
    const storage = {
      load: async () => parsePurseState(saved),
      save: async (state: PurseState) => {
        saved = serializePurseState(state);
      },
    };
    const counter: MonotonicCounter = {
      read: async () => counterValue,
      advance: async (to) => {
        assert.ok(to >= counterValue);
        counterValue = to;
      },
    };
    const purse = createPurse({ storage, counter, signer });
    await assert.rejects(
      purse.authorize(payAsYouGo, { unit: 'crypto-period', quantity: 1, timeMs: t0 }),
      (error: PurseError) => error.code === 'GATECAST_ERR_PURSE_EMPTY',
    );
    await purse.topUp({ sequence: 1, amount: 10, currency: 'EUR' });
    const copy = saved;
    const results = await Promise.all(
      [1, 2, 3].map(() => purse.authorize(payAsYouGo, { unit: 'crypto-period', quantity: 1, timeMs: t0 })),
    );
    assertChain(results.map((r) => r.receipt as Receipt));
    assert.deepEqual(await purse.status(), { balance: 1, counter: 3, topUps: 1, currency: 'EUR' });
    saved = copy; // the holder restores the file from before the debits
    await assert.rejects(
      purse.authorize(payAsYouGo, { unit: 'crypto-period', quantity: 1, timeMs: t0 }),
      (error: PurseError) => error.code === 'GATECAST_ERR_PURSE_ROLLBACK',
    );
  });

  it('as a token calls it: a repeated KEY message is paid once, an empty purse is refused in words', async () => {
    let saved = createPurseState('token-3', 'EUR');
    let counterValue = 0;
    const purse = createPurse({
      storage: {
        load: async () => saved,
        save: async (state) => {
          saved = parsePurseState(serializePurseState(state));
        },
      },
      counter: {
        read: async () => counterValue,
        advance: async (to) => {
          counterValue = to;
        },
      },
      signer,
    });
    const receipts: Receipt[] = [];
    const token = tokenPurse(purse, (receipt) => receipts.push(receipt));
    const debit = {
      service: 'news',
      sessionId: 5,
      incarnation: 1,
      keyEpoch: 1,
      streamTimeUs: t0 * 1000,
      amountMinor: 4,
      currency: 'EUR',
    };
    assert.deepEqual(await token.debit(debit), {
      ok: false,
      reason: 'purse-empty',
      message: 'purse empty: news costs 4 EUR minor units, the balance is 0',
    });
    await purse.topUp({ sequence: 1, amount: 10, currency: 'EUR' });
    for (let repeat = 0; repeat < 5; repeat++) {
      assert.deepEqual(await token.debit(debit), { ok: true });
    }
    assert.deepEqual(await token.debit({ ...debit, keyEpoch: 2 }), { ok: true });
    assert.equal((await token.debit({ ...debit, keyEpoch: 3 })).ok, false);
    assert.equal((await purse.status()).balance, 2);
    assert.equal(receipts.length, 2, 'one receipt per crypto-period paid');
    assertChain(receipts);
    const other = await token.debit({ ...debit, keyEpoch: 4, currency: 'USD' });
    assert.equal(other.ok, false);
  });

  it('refuses a persisted state that is not one', () => {
    for (const bad of ['', '{}', '{"v":1}', 'null', '[]']) {
      assert.throws(
        () => parsePurseState(Buffer.from(bad)),
        (error: PurseError) => error.code === 'GATECAST_ERR_PURSE_INVALID',
      );
    }
  });
});
