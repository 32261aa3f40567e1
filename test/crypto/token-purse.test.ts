import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { buildKeyMessage, ed25519Raw, generateSigningKey, issueGrant } from '../../src/crypto/authority.js';
import { TokenRefused } from '../../src/crypto/errors.js';
import { createPurse, createPurseState, type PurseState, tokenPurse } from '../../src/crypto/purse.js';
import { ed25519Signer, type Receipt, verifyReceipt } from '../../src/crypto/receipt.js';
import { initSoftwareToken, openSoftwareToken } from '../../src/crypto/software-token.js';
import { decodeKey, PriceModel } from '../../src/protocol/restricted.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-token-purse-'));
after(() => rmSync(directory, { recursive: true, force: true }));
const root = generateSigningKey();
const source = generateSigningKey();
const receiptKey = generateSigningKey();
const serviceKey = randomBytes(32);
const start = Date.UTC(2026, 11, 1);

function memoryPurse() {
  let state: PurseState = createPurseState('token-1', 'EUR');
  let counter = 0;
  const purse = createPurse({
    storage: {
      load: async () => state,
      save: async (next) => {
        state = next;
      },
    },
    counter: {
      read: async () => counter,
      advance: async (to) => {
        counter = Math.max(counter, to);
      },
    },
    signer: ed25519Signer(receiptKey.privateKey),
  });
  return { purse, balance: () => state.balance };
}

function keyAt(timeMs: number, keyEpoch: number) {
  const decoded = decodeKey(
    buildKeyMessage(
      { sessionId: 1, incarnation: 2, sequence: 0, timestampUs: timeMs * 1000, keyEpoch },
      { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 10_000, service: 'news' },
      serviceKey,
      randomBytes(32),
      source.privateKey,
    ),
  );
  assert.ok(decoded.ok);
  return decoded.value;
}

describe('a pay-as-you-go token over the purse module', () => {
  it('an empty purse releases nothing; a topped-up one debits once per crypto-period and writes chained receipts', async () => {
    const { purse, balance } = memoryPurse();
    const receipts: Receipt[] = [];
    const path = join(directory, 'token.json');
    initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
    const token = openSoftwareToken(
      path,
      '2468',
      tokenPurse(purse, (receipt) => receipts.push(receipt)),
    );
    token.installGrant(
      issueGrant(
        {
          devicePoint: token.devicePoint(),
          serviceKey,
          tier: 0,
          service: 'news',
          serviceEpoch: 1,
          notBeforeMs: start,
          notAfterMs: start + 3_600_000,
          priceModel: PriceModel.perCryptoPeriod,
          currency: 'EUR',
          priceMinor: 7,
          sourcePublicKey: ed25519Raw(source.publicKey),
        },
        root.privateKey,
      ),
    );
    await assert.rejects(
      token.releaseTrafficKey(keyAt(start + 1000, 1)),
      (error) =>
        error instanceof TokenRefused && error.reason === 'purse-empty' && /purse empty/.test(error.message),
    );
    await purse.topUp({ sequence: 1, amount: 20, currency: 'EUR' });
    await token.releaseTrafficKey(keyAt(start + 2000, 1));
    await token.releaseTrafficKey(keyAt(start + 2250, 1)); // the KEY repeats: no second debit
    await token.releaseTrafficKey(keyAt(start + 12_000, 2));
    assert.equal(balance(), 6);
    assert.equal(receipts.length, 2);
    assert.deepEqual(receipts[1]?.previousHash, receipts[0]?.hash);
    assert.ok(receipts.every((receipt) => verifyReceipt(receipt, receiptKey.publicKey)));
    await assert.rejects(
      token.releaseTrafficKey(keyAt(start + 22_000, 3)),
      (error) => error instanceof TokenRefused && error.reason === 'purse-empty',
    );
    token.close();
  });
});
