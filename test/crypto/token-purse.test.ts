import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import {
  buildKeyMessage,
  ed25519FromRaw,
  ed25519Raw,
  generateSigningKey,
  issueGrant,
} from '../../src/crypto/authority.js';
import { TokenRefused } from '../../src/crypto/errors.js';
import { initPkcs11Token, openPkcs11Token } from '../../src/crypto/pkcs11-token.js';
import { createMemoryPurse, tokenPurse } from '../../src/crypto/purse.js';
import { decodeReceipt, ed25519Signer, type Receipt, verifyReceipt } from '../../src/crypto/receipt.js';
import { initSoftwareToken, openSoftwareToken } from '../../src/crypto/software-token.js';
import { signTopUp } from '../../src/crypto/top-up.js';
import { decodeKey, PriceModel } from '../../src/protocol/restricted.js';
import { createSoftHsm, type SoftHsm, softhsmMissing, softhsmModulePath } from '../helpers/softhsm.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-token-purse-'));
after(() => rmSync(directory, { recursive: true, force: true }));
const root = generateSigningKey();
const source = generateSigningKey();
const receiptKey = generateSigningKey();
const serviceKey = randomBytes(32);
const start = Date.UTC(2026, 11, 1);

function memoryPurse() {
  return createMemoryPurse('token-1', 'EUR', ed25519Signer(receiptKey.privateKey));
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

/** Installs in `token` a pay-as-you-go grant of "news" at 7 cents per crypto-period, for an hour from `start`. */
function installNewsGrant(token: ReturnType<typeof openSoftwareToken>): void {
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
    installNewsGrant(token);
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

describe("a token's own purse (enrolled): top-ups credited once, receipts kept until billing takes them", () => {
  async function enrolledToken(token: ReturnType<typeof openSoftwareToken>) {
    const { tokenId, receiptPublicKey } = token.prepareEnrollment();
    token.ensurePurse('EUR');
    installNewsGrant(token);
    return { tokenId, receiptKey: ed25519FromRaw(receiptPublicKey) };
  }

  for (const kind of ['software', 'pkcs11'] as const) {
    it(`${kind}: an empty purse says "purse empty"; a top-up replayed credits once; receipts verify and chain`, async (t) => {
      let token: ReturnType<typeof openSoftwareToken>;
      let hsm: SoftHsm | undefined;
      const reopen = () =>
        kind === 'software'
          ? openSoftwareToken(join(directory, 'own.token'), '2468')
          : openPkcs11Token({ modulePath: softhsmModulePath, tokenLabel: 'own', pin: '24682468' });
      if (kind === 'software') {
        initSoftwareToken({
          path: join(directory, 'own.token'),
          pin: '2468',
          rootPublicKey: ed25519Raw(root.publicKey),
        });
      } else {
        const missing = softhsmMissing('the PKCS#11 purse test');
        if (missing !== undefined) {
          t.skip(missing);
          return;
        }
        hsm = createSoftHsm();
        hsm.initToken('own', '24682468');
        initPkcs11Token(
          { modulePath: softhsmModulePath, tokenLabel: 'own', pin: '24682468' },
          ed25519Raw(root.publicKey),
        );
      }
      token = reopen();
      try {
        const { tokenId, receiptKey: receiptPublic } = await enrolledToken(token);
        await assert.rejects(
          token.releaseTrafficKey(keyAt(start + 1000, 1)),
          (error) =>
            error instanceof TokenRefused &&
            error.reason === 'purse-empty' &&
            /^purse empty/.test(error.message),
        );
        const topUp = signTopUp({ tokenId, sequence: 1, amount: 15, currency: 'EUR' }, root.privateKey);
        assert.deepEqual(await token.creditTopUp(topUp), { credited: true, sequence: 1, amount: 15 });
        assert.deepEqual(await token.creditTopUp(topUp), { credited: false, sequence: 1, amount: 15 });
        const forged = signTopUp({ tokenId, sequence: 2, amount: 1000, currency: 'EUR' }, source.privateKey);
        await assert.rejects(
          token.creditTopUp(forged),
          (error) => error instanceof TokenRefused && error.reason === 'bad-signature',
        );
        await token.releaseTrafficKey(keyAt(start + 2000, 1));
        await token.releaseTrafficKey(keyAt(start + 12_000, 2));
        token.close();
        token = reopen(); // the balance and the receipts survive a restart
        assert.deepEqual(token.purseView(), {
          tokenId,
          currency: 'EUR',
          balance: 1,
          topUps: 1,
          receipts: 2,
          unreported: 2,
        });
        await assert.rejects(token.releaseTrafficKey(keyAt(start + 22_000, 3)), /purse empty/);
        const receipts = token.receiptsToReport().map((bytes) => {
          const decoded = decodeReceipt(bytes);
          assert.ok(decoded.ok);
          return decoded.value;
        });
        assert.equal(receipts.length, 2);
        assert.ok(
          receipts.every((receipt) => verifyReceipt(receipt, receiptPublic) && receipt.tokenId === tokenId),
        );
        assert.deepEqual(receipts[1]?.previousHash, receipts[0]?.hash);
        token.receiptsReported(token.receiptsToReport().slice(0, 1));
        assert.equal(token.receiptsToReport().length, 1);
        assert.equal(token.receiptsToReport(true).length, 2);
      } finally {
        token.close();
        hsm?.remove();
      }
    });
  }
});

describe('two commands on one software token', () => {
  it('a top-up written by one process while another holds the token open is kept by the next debit', async () => {
    const path = join(directory, 'shared.token');
    initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
    const receiving = openSoftwareToken(path, '2468');
    const topping = openSoftwareToken(path, '2468');
    try {
      const { tokenId } = receiving.prepareEnrollment();
      receiving.ensurePurse('EUR');
      installNewsGrant(receiving);
      await topping.creditTopUp(
        signTopUp({ tokenId, sequence: 1, amount: 30, currency: 'EUR' }, root.privateKey),
      );
      await receiving.releaseTrafficKey(keyAt(start + 1000, 1));
      assert.equal(topping.purseView()?.balance, 23, 'the top-up and the debit both hold');
      assert.equal(receiving.purseView()?.topUps, 1);
      const [receipt] = topping.receiptsToReport();
      const decoded = decodeReceipt(receipt ?? Buffer.alloc(0));
      assert.ok(decoded.ok);
      assert.ok(
        verifyReceipt(decoded.value, ed25519FromRaw(topping.prepareEnrollment().receiptPublicKey)),
        'the receipt key made by one process is the one the other signs with',
      );
    } finally {
      receiving.close();
      topping.close();
    }
  });
});
