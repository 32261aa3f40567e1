/**
 * Forged signatures against what gatecast checks, under whichever signature engine this process
 * uses (run it again with GATECAST_SIGNATURE_ENGINE=node:crypto for the other): manifests, control
 * signatures, offers and KEY messages through a verifying gate, top-ups and receipts through their
 * checks. Each is tried with every bit of its signature flipped, bits of its signed bytes flipped,
 * cut short, lengthened, S + L in place of S, R replaced by each small-order point, an all-zero
 * signature, and signed by another key: none is accepted and nothing throws.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { signatureEngineInfo } from '../../src/crypto/aead-engine.js';
import { signEd25519 } from '../../src/crypto/authority.js';
import {
  decodeReceipt,
  ed25519Signer,
  receiptChainStart,
  signReceipt,
  verifyReceipt,
} from '../../src/crypto/receipt.js';
import { createSenderProtection } from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { suites } from '../../src/crypto/suites.js';
import { decodeTopUp, signTopUp, verifyTopUp } from '../../src/crypto/top-up.js';
import { headerBytes, offsetType, PacketType } from '../../src/protocol/packet.js';
import { SignatureKind } from '../../src/protocol/restricted.js';
import { data, end } from '../helpers/craft.js';

const L = 2n ** 252n + 27742317777372353535851937790883648493n;
/** The eight points of small order, canonically encoded (libsodium's list). */
const smallOrder = [
  '0100000000000000000000000000000000000000000000000000000000000000',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0000000000000000000000000000000000000000000000000000000000000080',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85',
].map((hex) => Buffer.from(hex, 'hex'));

const littleEndian = (bytes: Buffer) => BigInt(`0x${Buffer.from(bytes).reverse().toString('hex') || '0'}`);
const toLittleEndian = (value: bigint) => Buffer.from(value.toString(16).padStart(64, '0'), 'hex').reverse();

/**
 * Every forgery of a message whose last 64 bytes are an Ed25519 signature over what comes before
 * (`signedFrom`: where the signed bytes begin), and the same bytes signed by `other`.
 */
function forgeries(
  genuine: Buffer,
  other: (signed: Buffer) => Buffer,
  signedFrom = 0,
): Array<[string, Buffer]> {
  const at = genuine.length - 64;
  const out: Array<[string, Buffer]> = [];
  const withSignature = (signature: Buffer) => Buffer.concat([genuine.subarray(0, at), signature]);
  const signature = genuine.subarray(at);
  for (let bit = 0; bit < 512; bit++) {
    const forged = Buffer.from(genuine);
    forged[at + (bit >> 3)] = (forged[at + (bit >> 3)] ?? 0) ^ (1 << (bit & 7));
    out.push([`signature bit ${bit}`, forged]);
  }
  for (let bit = signedFrom * 8; bit < at * 8; bit += at * 8 > 4096 ? 7 : 1) {
    const forged = Buffer.from(genuine);
    forged[bit >> 3] = (forged[bit >> 3] ?? 0) ^ (1 << (bit & 7));
    out.push([`signed bit ${bit}`, forged]);
  }
  out.push(['cut by one byte', genuine.subarray(0, genuine.length - 1)]);
  out.push(['cut by 32 bytes', genuine.subarray(0, genuine.length - 32)]);
  out.push(['lengthened by one byte', Buffer.concat([genuine, Buffer.alloc(1)])]);
  out.push(['lengthened by 64 bytes', Buffer.concat([genuine, signature])]);
  const s = littleEndian(signature.subarray(32));
  for (const [name, value] of [
    ['S + L', s + L],
    ['S + 2L', s + 2n * L],
    ['S = 0', 0n],
    ['S = L', L],
  ] as const) {
    if (value < 2n ** 256n) {
      out.push([name, withSignature(Buffer.concat([signature.subarray(0, 32), toLittleEndian(value)]))]);
    }
  }
  for (const [index, point] of smallOrder.entries()) {
    out.push([
      `R = small-order point ${index}`,
      withSignature(Buffer.concat([point, signature.subarray(32)])),
    ]);
    out.push([
      `R = small-order point ${index}, S = 0`,
      withSignature(Buffer.concat([point, Buffer.alloc(32)])),
    ]);
  }
  out.push(['all-zero signature', withSignature(Buffer.alloc(64))]);
  out.push(['all-ones signature', withSignature(Buffer.alloc(64, 0xff))]);
  out.push(['signed by another key', withSignature(other(genuine.subarray(signedFrom, at)))]);
  return out;
}

const source = generateKeyPairSync('ed25519');
const forger = generateKeyPairSync('ed25519');
const run = { sessionId: 5, incarnation: 0x55 };

function restrictedSender() {
  const suite =
    suites.find((entry) => entry.name === 'aes-256-gcm') ?? (suites[0] as (typeof suites)[number]);
  return createSenderProtection(
    {
      suite,
      service: 'news',
      serviceEpoch: 1,
      serviceKey: Buffer.alloc(32, 9),
      sourcePrivateKey: source.privateKey,
      sourcePublicKey: source.publicKey,
      cryptoPeriodMs: 10_000,
      tier: 0,
      manifestPackets: 32,
    },
    run,
  );
}

describe(`forged signatures are refused (signature engine: ${signatureEngineInfo().name})`, () => {
  it('manifests, control signatures, offers and KEY messages, through a verifying gate', () => {
    const protection = restrictedSender();
    const wallUs = Date.now() * 1000;
    const wire: Buffer[] = [];
    for (let sequence = 100; sequence < 132; sequence++) {
      wire.push(...protection.seal(data(run, sequence, Buffer.from(`genuine ${sequence}`)), 0, wallUs));
    }
    const manifest = wire.pop() as Buffer;
    assert.equal(manifest[offsetType], PacketType.signature);
    assert.equal(manifest[headerBytes], SignatureKind.manifest);
    const control = protection.control({ ...run, sequence: 132 }, 0, wallUs);
    const offer = control.find(
      (d) => d[offsetType] === PacketType.signature && d[headerBytes] === SignatureKind.session,
    );
    const key = control.find((d) => d[offsetType] === PacketType.key);
    assert.ok(offer !== undefined && key !== undefined, 'the control tick carries an offer and a KEY');
    const controlSignature = protection.signControl(end(run, 132, 32));
    const other = (signed: Buffer) => signEd25519(signed, forger.privateKey);
    for (const [kind, genuine] of [
      ['manifest', manifest],
      ['control signature', controlSignature],
      ['offer', offer],
      ['KEY', key],
    ] as const) {
      let tried = 0;
      for (const [what, forged] of forgeries(genuine, other, headerBytes)) {
        const passed: Buffer[] = [];
        const authenticated: Buffer[] = [];
        const gate = createSignedSessionGate(source.publicKey, {
          onAuthenticated: (d) => authenticated.push(d),
        });
        gate.filter(forged, (d) => passed.push(d));
        for (const datagram of wire) {
          gate.filter(datagram, (d) => passed.push(d));
        }
        assert.deepEqual(authenticated, [], `${kind}, ${what}: authenticated`);
        assert.equal(gate.stats.signaturesVerified, 0, `${kind}, ${what}: verified`);
        assert.equal(gate.stats.dataAuthenticated, 0, `${kind}, ${what}: DATA passed`);
        assert.ok(
          passed.every((d) => d[offsetType] !== PacketType.key && d[offsetType] !== PacketType.data),
          `${kind}, ${what}: passed on`,
        );
        tried++;
      }
      // The genuine one still verifies through a gate.
      const authenticated: Buffer[] = [];
      const gate = createSignedSessionGate(source.publicKey, {
        onAuthenticated: (d) => authenticated.push(d),
      });
      gate.filter(genuine, () => {});
      assert.deepEqual(authenticated, [genuine], `${kind}: genuine refused`);
      assert.equal(gate.stats.signaturesVerified, 1, `${kind}: genuine not verified`);
      assert.ok(tried > 500);
    }
  });

  it('top-ups and receipts', async () => {
    const topUp = signTopUp(
      { tokenId: 'gc-0011', sequence: 1, amount: 15, currency: 'EUR' },
      source.privateKey,
    );
    const decodedTopUp = decodeTopUp(topUp);
    assert.ok(decodedTopUp.ok && verifyTopUp(decodedTopUp.value, source.publicKey));
    const other = (signed: Buffer) => signEd25519(signed, forger.privateKey);
    for (const [what, forged] of forgeries(topUp, other)) {
      const decoded = decodeTopUp(forged);
      assert.ok(!decoded.ok || !verifyTopUp(decoded.value, source.publicKey), `top-up, ${what}`);
    }
    const receipt = await signReceipt(
      {
        tokenId: 'gc-0011',
        service: 'news',
        amount: 5,
        currency: 'EUR',
        unit: 'crypto-period',
        quantity: 1,
        counter: 1,
        timeMs: Date.UTC(2026, 0, 1),
        previousHash: receiptChainStart,
      },
      ed25519Signer(source.privateKey),
    );
    const decodedReceipt = decodeReceipt(receipt.bytes);
    assert.ok(decodedReceipt.ok && verifyReceipt(decodedReceipt.value, source.publicKey));
    for (const [what, forged] of forgeries(receipt.bytes, other)) {
      const decoded = decodeReceipt(forged);
      assert.ok(!decoded.ok || !verifyReceipt(decoded.value, source.publicKey), `receipt, ${what}`);
    }
  });
});
