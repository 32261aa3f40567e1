import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  decodeReceipt,
  ed25519Signer,
  type ReceiptBody,
  receiptBodyProblem,
  receiptChainStart,
  signReceipt,
  verifyReceipt,
} from '../../src/crypto/receipt.js';
import { createRandom } from '../helpers/random.js';

// A fixed key, so the golden bytes stay the same (RFC 8032 test 1's secret key).
const privateKey = createPrivateKey({
  key: Buffer.concat([
    Buffer.from('302e020100300506032b657004220420', 'hex'),
    Buffer.from('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60', 'hex'),
  ]),
  format: 'der',
  type: 'pkcs8',
});
const publicKey = createPublicKey(privateKey);
const body: ReceiptBody = {
  tokenId: 'tok-1',
  service: 'news',
  amount: 3,
  currency: 'EUR',
  unit: 'crypto-period',
  quantity: 1,
  counter: 1,
  timeMs: Date.UTC(2026, 0, 1),
  previousHash: receiptChainStart,
};

describe('receipt codec', () => {
  it("refuses a unit that is only a name on every object's prototype (toString, constructor, __proto__)", () => {
    for (const unit of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      const problem = receiptBodyProblem({ ...body, unit: unit as ReceiptBody['unit'] });
      assert.match(problem ?? '', /^unit: /, unit);
    }
    assert.equal(receiptBodyProblem(body), undefined);
  });

  it('golden: the layout of docs/protocol.md, signed, round trip', async () => {
    const receipt = await signReceipt(body, ed25519Signer(privateKey));
    const signed = receipt.bytes.subarray(0, receipt.bytes.length - 64).toString('hex');
    assert.equal(
      signed,
      [
        '47435243', // GCRC
        '01010504', // version 1, unit crypto-period, token id 5 bytes, service 4 bytes
        '0000000000000001', // counter
        '0000000000000003', // amount
        '0000000000000001', // quantity
        '0000019b76daa800', // time 2026-01-01 (1767225600000 ms)
        '45555200', // EUR, reserved
        '00'.repeat(32), // previous hash
        Buffer.from('tok-1news').toString('hex'),
      ].join(''),
    );
    const decoded = decodeReceipt(receipt.bytes);
    assert.ok(decoded.ok);
    assert.deepEqual({ ...decoded.value }, { ...receipt });
    assert.ok(verifyReceipt(decoded.value, publicKey));
  });

  it('refuses truncated, oversized, bad-version and non-zero reserved receipts', async () => {
    const { bytes } = await signReceipt(body, ed25519Signer(privateKey));
    for (let length = 0; length < bytes.length; length++) {
      assert.equal(decodeReceipt(bytes.subarray(0, length)).ok, false, `truncated to ${length}`);
    }
    assert.equal(decodeReceipt(Buffer.concat([bytes, Buffer.alloc(1)])).ok, false);
    assert.equal(decodeReceipt(Buffer.alloc(1000)).ok, false);
    const version = Buffer.from(bytes);
    version[4] = 2;
    assert.deepEqual((decodeReceipt(version) as { reason: string }).reason, 'bad-version');
    const reserved = Buffer.from(bytes);
    reserved[43] = 1;
    assert.deepEqual((decodeReceipt(reserved) as { reason: string }).reason, 'reserved-not-zero');
    const huge = Buffer.from(bytes);
    huge.writeBigUInt64BE(2n ** 60n, 16);
    assert.deepEqual((decodeReceipt(huge) as { reason: string }).reason, 'bad-field');
  });

  it('property: a flipped bit anywhere is refused by the decoder or the signature', async () => {
    const { bytes } = await signReceipt(body, ed25519Signer(privateKey));
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const flipped = Buffer.from(bytes);
      flipped[bit >> 3] = (flipped[bit >> 3] as number) ^ (1 << (bit & 7));
      const decoded = decodeReceipt(flipped);
      assert.ok(!decoded.ok || !verifyReceipt(decoded.value, publicKey), `bit ${bit}`);
    }
  });

  it('property: random and mutated input never throws', async () => {
    const random = createRandom(5);
    const { bytes } = await signReceipt(body, ed25519Signer(privateKey));
    const other = generateKeyPairSync('ed25519').publicKey;
    for (let i = 0; i < 5000; i++) {
      const input = i % 2 === 0 ? random.bytes(random.int(300)) : Buffer.from(bytes);
      if (i % 2 === 1) {
        input[random.int(input.length)] = random.int(256);
      }
      const decoded = decodeReceipt(input);
      if (decoded.ok) {
        assert.equal(verifyReceipt(decoded.value, other), false);
      }
    }
  });
});
