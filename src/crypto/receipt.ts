/**
 * Purse receipts (docs/protocol.md, "Purse receipt"): what a token writes for every debit of its
 * purse, signed with Ed25519 and chained by hash to the receipt before it, so billing can prove
 * every charge, charge each one once (the receipt hash is the ledger's idempotency key) and see a
 * gap or a fork in a token's chain. Pure functions over Buffers; no I/O.
 *
 * Layout (all integers big-endian):
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------------------------------------------------------+
 * |                       magic "GCRC"                            |
 * +---------------+---------------+---------------+---------------+
 * |  version = 1  |     unit      | token id len  |  service len  |
 * +---------------+---------------+---------------+---------------+
 * |                     counter (64 bits)                         |
 * +---------------------------------------------------------------+
 * |                amount, minor units (64 bits)                  |
 * +---------------------------------------------------------------+
 * |                     quantity (64 bits)                        |
 * +---------------------------------------------------------------+
 * |          time, ms since the Unix epoch (64 bits)              |
 * +-----------------------------------------------+---------------+
 * |               currency (3 ASCII)              | reserved = 0  |
 * +-----------------------------------------------+---------------+
 * |                 previous hash (32 bytes)                      |
 * +---------------------------------------------------------------+
 * |        token id (1-64 bytes), service (1-64 bytes)            |
 * +---------------------------------------------------------------+
 * |                  Ed25519 signature (64 bytes)                 |
 * +---------------------------------------------------------------+
 */
import { createHash, type KeyObject } from 'node:crypto';
import { type DecodeResult, invalid, ProtocolEncodeError, valid } from '../protocol/errors.js';
import { signEd25519, verifySignature } from './authority.js';

/** The four bytes every receipt starts with. */
export const receiptMagic = Buffer.from('GCRC', 'ascii');
export const receiptVersion = 1;
const offsetVersion = 4;
const offsetUnit = 5;
const offsetTokenIdBytes = 6;
const offsetServiceBytes = 7;
const offsetCounter = 8;
const offsetAmount = 16;
const offsetQuantity = 24;
const offsetTime = 32;
const offsetCurrency = 40;
const offsetReserved = 43;
const offsetPreviousHash = 44;
/** Bytes before the token id. */
export const receiptFixedBytes = 76;
export const receiptSignatureBytes = 64;
export const receiptHashBytes = 32;
/** Longest token id and service name, in bytes. */
export const receiptNameBytesMax = 64;
/** Longest encoded receipt. */
export const receiptBytesMax = receiptFixedBytes + 2 * receiptNameBytesMax + receiptSignatureBytes;
/** The previous hash of a token's first receipt (counter 1). */
export const receiptChainStart = Buffer.alloc(receiptHashBytes);

/** What a debit was counted in; the rate card prices each (docs/api.md, "Purses and receipts"). */
export const receiptUnits = { 'crypto-period': 1, bytes: 2, seconds: 3 } as const;
export type ReceiptUnit = keyof typeof receiptUnits;
const unitNames = new Map(Object.entries(receiptUnits).map(([name, code]) => [code, name as ReceiptUnit]));

const namePattern = /^[A-Za-z0-9._:@-]{1,64}$/;
const currencyPattern = /^[A-Z]{3}$/;

/** The signed content of a receipt. */
export interface ReceiptBody {
  readonly tokenId: string;
  readonly service: string;
  /** Minor units debited, ≥ 1. */
  readonly amount: number;
  readonly currency: string;
  readonly unit: ReceiptUnit;
  /** How many units were paid for (crypto-periods, bytes or seconds), ≥ 1. */
  readonly quantity: number;
  /** The purse's counter after this debit: 1 for the first receipt, one more for each next one. */
  readonly counter: number;
  /** The stream's authenticated time of the debit, ms since the Unix epoch. */
  readonly timeMs: number;
  /** The hash of the receipt before this one (receiptChainStart for counter 1). */
  readonly previousHash: Buffer;
}

/** A decoded receipt: its body, its hash (the idempotency key) and its signature. */
export interface Receipt extends ReceiptBody {
  /** SHA-256 of the signed bytes (everything before the signature). */
  readonly hash: Buffer;
  readonly signature: Buffer;
  /** The whole encoded receipt. */
  readonly bytes: Buffer;
}

/** Why a receipt body cannot be encoded, or undefined. */
export function receiptBodyProblem(body: ReceiptBody): string | undefined {
  for (const [field, value] of [
    ['tokenId', body.tokenId],
    ['service', body.service],
  ] as const) {
    if (!namePattern.test(value)) {
      return `${field}: "${value}" is not 1-${receiptNameBytesMax} of A-Z a-z 0-9 . _ : @ -`;
    }
  }
  for (const [field, value] of [
    ['amount', body.amount],
    ['quantity', body.quantity],
    ['counter', body.counter],
    ['timeMs', body.timeMs],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < (field === 'timeMs' ? 0 : 1)) {
      return `${field}: ${value} is not a safe integer ≥ ${field === 'timeMs' ? 0 : 1}`;
    }
  }
  if (!currencyPattern.test(body.currency)) {
    return `currency: "${body.currency}" is not an ISO 4217 code`;
  }
  if (!Object.hasOwn(receiptUnits, body.unit)) {
    return `unit: "${body.unit}" is not one of ${Object.keys(receiptUnits).join(', ')}`;
  }
  if (body.previousHash.length !== receiptHashBytes) {
    return `previousHash: ${body.previousHash.length} bytes, not ${receiptHashBytes}`;
  }
  return undefined;
}

/** The signed bytes of a receipt body. Throws ProtocolEncodeError on a body that cannot be encoded. */
export function encodeReceiptBody(body: ReceiptBody): Buffer {
  const problem = receiptBodyProblem(body);
  if (problem !== undefined) {
    throw new ProtocolEncodeError(`receipt: ${problem}`);
  }
  const tokenId = Buffer.from(body.tokenId, 'ascii');
  const service = Buffer.from(body.service, 'ascii');
  const out = Buffer.alloc(receiptFixedBytes + tokenId.length + service.length);
  receiptMagic.copy(out, 0);
  out[offsetVersion] = receiptVersion;
  out[offsetUnit] = receiptUnits[body.unit];
  out[offsetTokenIdBytes] = tokenId.length;
  out[offsetServiceBytes] = service.length;
  out.writeBigUInt64BE(BigInt(body.counter), offsetCounter);
  out.writeBigUInt64BE(BigInt(body.amount), offsetAmount);
  out.writeBigUInt64BE(BigInt(body.quantity), offsetQuantity);
  out.writeBigUInt64BE(BigInt(body.timeMs), offsetTime);
  out.write(body.currency, offsetCurrency, 'ascii');
  out[offsetReserved] = 0;
  body.previousHash.copy(out, offsetPreviousHash);
  tokenId.copy(out, receiptFixedBytes);
  service.copy(out, receiptFixedBytes + tokenId.length);
  return out;
}

/** The hash of a receipt: SHA-256 of its signed bytes. */
export function receiptHash(signedBytes: Buffer): Buffer {
  return createHash('sha256').update(signedBytes).digest();
}

/** Signs signed bytes: a node:crypto Ed25519 private key, or a token's signing operation. */
export type ReceiptSigner = (signedBytes: Buffer) => Buffer | Promise<Buffer>;

/** A signer over an Ed25519 private key held by node:crypto (the software token). */
export function ed25519Signer(privateKey: KeyObject): ReceiptSigner {
  return (signedBytes) => signEd25519(signedBytes, privateKey);
}

/** Encodes and signs a receipt. */
export async function signReceipt(body: ReceiptBody, signer: ReceiptSigner): Promise<Receipt> {
  const signed = encodeReceiptBody(body);
  const signature = await signer(signed);
  if (signature.length !== receiptSignatureBytes) {
    throw new ProtocolEncodeError(`receipt: the signer gave ${signature.length} bytes, not 64`);
  }
  const bytes = Buffer.concat([signed, signature]);
  return {
    ...body,
    previousHash: Buffer.from(body.previousHash),
    hash: receiptHash(signed),
    signature,
    bytes,
  };
}

function readSafe(buffer: Buffer, offset: number): number | undefined {
  const value = buffer.readBigUInt64BE(offset);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(value);
}

/**
 * Decodes a receipt, checking every length and field (the signature is checked by verifyReceipt).
 * Never throws; never reads past the buffer.
 */
export function decodeReceipt(bytes: Buffer): DecodeResult<Receipt> {
  if (bytes.length < receiptFixedBytes + 2 + receiptSignatureBytes) {
    return invalid('truncated', `receipt: ${bytes.length} bytes`);
  }
  if (bytes.length > receiptBytesMax) {
    return invalid('length-mismatch', `receipt: ${bytes.length} bytes, more than ${receiptBytesMax}`);
  }
  if (!bytes.subarray(0, 4).equals(receiptMagic)) {
    return invalid('bad-magic', 'receipt: not "GCRC"');
  }
  if (bytes[offsetVersion] !== receiptVersion) {
    return invalid('bad-version', `receipt: version ${bytes[offsetVersion]}`);
  }
  if (bytes[offsetReserved] !== 0) {
    return invalid('reserved-not-zero', 'receipt: reserved byte');
  }
  const unit = unitNames.get(bytes[offsetUnit] as 1 | 2 | 3);
  if (unit === undefined) {
    return invalid('bad-field', `receipt: unit ${bytes[offsetUnit]}`);
  }
  const tokenIdBytes = bytes[offsetTokenIdBytes] as number;
  const serviceBytes = bytes[offsetServiceBytes] as number;
  const signedBytes = receiptFixedBytes + tokenIdBytes + serviceBytes;
  if (signedBytes + receiptSignatureBytes !== bytes.length) {
    return invalid('length-mismatch', `receipt: names of ${tokenIdBytes} + ${serviceBytes} bytes`);
  }
  const counter = readSafe(bytes, offsetCounter);
  const amount = readSafe(bytes, offsetAmount);
  const quantity = readSafe(bytes, offsetQuantity);
  const timeMs = readSafe(bytes, offsetTime);
  if (counter === undefined || amount === undefined || quantity === undefined || timeMs === undefined) {
    return invalid('bad-field', 'receipt: a number past 2^53 - 1');
  }
  const signed = bytes.subarray(0, signedBytes);
  const body: ReceiptBody = {
    tokenId: bytes.toString('latin1', receiptFixedBytes, receiptFixedBytes + tokenIdBytes),
    service: bytes.toString('latin1', receiptFixedBytes + tokenIdBytes, signedBytes),
    amount,
    currency: bytes.toString('latin1', offsetCurrency, offsetCurrency + 3),
    unit,
    quantity,
    counter,
    timeMs,
    previousHash: Buffer.from(bytes.subarray(offsetPreviousHash, offsetPreviousHash + receiptHashBytes)),
  };
  const problem = receiptBodyProblem(body);
  if (problem !== undefined) {
    return invalid('bad-field', `receipt: ${problem}`);
  }
  return valid({
    ...body,
    hash: receiptHash(signed),
    signature: Buffer.from(bytes.subarray(signedBytes)),
    bytes: Buffer.from(bytes),
  });
}

/** True when the receipt's signature verifies under the token's Ed25519 public key. */
export function verifyReceipt(receipt: Receipt, publicKey: KeyObject): boolean {
  const signed = receipt.bytes.subarray(0, receipt.bytes.length - receiptSignatureBytes);
  return verifySignature(signed, receipt.signature, publicKey);
}
