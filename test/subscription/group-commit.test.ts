import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createGroupCommitter, type UsageResult } from '../../src/billing/billing.js';

type Item = Parameters<ReturnType<typeof createGroupCommitter>>[0][number];

const item = (key: string): Item => ({
  key,
  usage: { account: 'a', kind: 'pay-as-you-go-bytes', quantity: 1 },
});
const batch = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => item(`${prefix}-${i}`));

/** A writer that records each transaction's keys and answers each event with its own key. */
function recordingWriter(fail?: (keys: string[]) => boolean) {
  const transactions: string[][] = [];
  const write = async (items: readonly Item[]): Promise<UsageResult[]> => {
    const keys = items.map((entry) => entry.key);
    transactions.push(keys);
    if (fail?.(keys)) {
      throw new Error('disk full');
    }
    return keys.map((key) => ({
      status: 201,
      body: { transfer: key, amount: 1, currency: 'EUR', replayed: false },
    }));
  };
  return { transactions, write };
}

describe('group commit of usage', () => {
  it('puts concurrent requests in one transaction and gives each caller its own results, in order', async () => {
    const { transactions, write } = recordingWriter();
    const commit = createGroupCommitter(write, 1000);
    const [a, b, c] = await Promise.all([
      commit(batch('a', 100)),
      commit([item('single')]),
      commit(batch('c', 300)),
    ]);
    assert.equal(transactions.length, 1);
    assert.equal(transactions[0]?.length, 401);
    assert.deepEqual(
      a?.map((result) => (result.body as { transfer: string }).transfer),
      batch('a', 100).map((entry) => entry.key),
    );
    assert.deepEqual(
      b?.map((result) => (result.body as { transfer: string }).transfer),
      ['single'],
    );
    assert.deepEqual(
      c?.map((result) => (result.body as { transfer: string }).transfer),
      batch('c', 300).map((entry) => entry.key),
    );
  });

  it('never splits one request over two transactions, and never goes past the cap by joining', async () => {
    const { transactions, write } = recordingWriter();
    const commit = createGroupCommitter(write, 1000);
    await Promise.all([commit(batch('a', 600)), commit(batch('b', 600)), commit(batch('c', 400))]);
    assert.deepEqual(
      transactions.map((keys) => keys.length),
      [600, 1000],
    );
    for (const keys of transactions) {
      const prefixes = new Set(keys.map((key) => key.split('-')[0]));
      for (const prefix of prefixes) {
        const whole = transactions.filter((other) => other.some((key) => key.startsWith(`${prefix}-`)));
        assert.equal(whole.length, 1, `request ${prefix} was split over ${whole.length} transactions`);
      }
    }
  });

  it('writes a request larger than the cap alone, whole', async () => {
    const { transactions, write } = recordingWriter();
    const commit = createGroupCommitter(write, 100);
    const [big, small] = await Promise.all([commit(batch('big', 250)), commit(batch('small', 5))]);
    assert.deepEqual(
      transactions.map((keys) => keys.length),
      [250, 5],
    );
    assert.equal(big?.length, 250);
    assert.equal(small?.length, 5);
  });

  it('fails only the requests of the transaction that failed; the next one is written', async () => {
    const { transactions, write } = recordingWriter((keys) => keys.includes('bad-0'));
    const commit = createGroupCommitter(write, 10);
    const outcomes = await Promise.allSettled([
      commit(batch('bad', 8)),
      commit(batch('also', 2)),
      commit(batch('later', 5)),
    ]);
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status),
      ['rejected', 'rejected', 'fulfilled'],
    );
    assert.equal(transactions.length, 2);
    const again = await commit(batch('after', 3));
    assert.equal(again.length, 3);
  });
});
