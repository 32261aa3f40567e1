/**
 * Purse top-ups (docs/protocol.md, "Purse top-up"): what billing hands a token after the ledger
 * transfer from the subscriber's account to the token's purse account, signed with the operator
 * root key the token was initialized with. The token credits a verified top-up only when its
 * sequence is the next one it expects, so the same top-up presented twice credits once.
 * Pure functions over Buffers; no I/O.
 *
 * Layout (all integers big-endian):
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------------------------------------------------------+
 * |                       magic "GCTU"                            |
 * +---------------+---------------+-------------------------------+
 * |  version = 1  | token id len  |         reserved = 0          |
 * +---------------+---------------+-------------------------------+
 * |                     sequence (64 bits)                        |
 * +---------------------------------------------------------------+
 * |                amount, minor units (64 bits)                  |
 * +-----------------------------------------------+---------------+
 * |               currency (3 ASCII)              | reserved = 0  |
 * +-----------------------------------------------+---------------+
 * |                    token id (1-64 bytes)                      |
 * +---------------------------------------------------------------+
 * |                  Ed25519 signature (64 bytes)                 |
 * +---------------------------------------------------------------+
 */
import type { KeyObject } from 'node:crypto';
import { type DecodeResult, invalid, ProtocolEncodeError, valid } from '../protocol/errors.js';
import { signEd25519, verifySignature } from './authority.js';

const magic = Buffer.from('GCTU', 'ascii');
const version = 1;
const offsetVersion = 4;
const offsetTokenIdBytes = 5;
const offsetReserved = 6;
const offsetSequence = 8;
const offsetAmount = 16;
const offsetCurrency = 24;
const offsetReservedByte = 27;
/** Bytes before the token id. */
const fixedBytes = 28;
const signatureBytes = 64;
const tokenIdPattern = /^[A-Za-z0-9._:@-]{1,64}$/;

/** The signed content of a top-up. */
export interface TopUpBody {
  readonly tokenId: string;
  /** 1 for the purse's first top-up, one more for each next one. */
  readonly sequence: number;
  /** Minor units credited, ≥ 1. */
  readonly amount: number;
  readonly currency: string;
}

/** A decoded top-up with the bytes its signature covers. */
export interface SignedTopUp extends TopUpBody {
  readonly signed: Buffer;
  readonly signature: Buffer;
}

function bodyProblem(body: TopUpBody): string | undefined {
  if (!tokenIdPattern.test(body.tokenId)) {
    return `tokenId: "${body.tokenId}" is not 1-64 of A-Z a-z 0-9 . _ : @ -`;
  }
  for (const [field, value] of [
    ['sequence', body.sequence],
    ['amount', body.amount],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      return `${field}: ${value} is not a safe integer ≥ 1`;
    }
  }
  if (!/^[A-Z]{3}$/.test(body.currency)) {
    return `currency: "${body.currency}" is not an ISO 4217 code`;
  }
  return undefined;
}

/** Encodes and signs a top-up with the operator root key. Throws ProtocolEncodeError on a bad body. */
export function signTopUp(body: TopUpBody, rootPrivateKey: KeyObject): Buffer {
  const problem = bodyProblem(body);
  if (problem !== undefined) {
    throw new ProtocolEncodeError(`top-up: ${problem}`);
  }
  const tokenId = Buffer.from(body.tokenId, 'ascii');
  const signed = Buffer.alloc(fixedBytes + tokenId.length);
  magic.copy(signed, 0);
  signed[offsetVersion] = version;
  signed[offsetTokenIdBytes] = tokenId.length;
  signed.writeBigUInt64BE(BigInt(body.sequence), offsetSequence);
  signed.writeBigUInt64BE(BigInt(body.amount), offsetAmount);
  signed.write(body.currency, offsetCurrency, 'ascii');
  tokenId.copy(signed, fixedBytes);
  return Buffer.concat([signed, signEd25519(signed, rootPrivateKey)]);
}

/** Decodes a top-up, checking every length and field; the signature is checked by verifyTopUp. */
export function decodeTopUp(bytes: Buffer): DecodeResult<SignedTopUp> {
  if (bytes.length < fixedBytes + 1 + signatureBytes) {
    return invalid('truncated', `top-up: ${bytes.length} bytes`);
  }
  if (!bytes.subarray(0, 4).equals(magic)) {
    return invalid('bad-magic', 'top-up: not "GCTU"');
  }
  if (bytes[offsetVersion] !== version) {
    return invalid('bad-version', `top-up: version ${bytes[offsetVersion]}`);
  }
  if (bytes.readUInt16BE(offsetReserved) !== 0 || bytes[offsetReservedByte] !== 0) {
    return invalid('reserved-not-zero', 'top-up: reserved bytes');
  }
  const tokenIdBytes = bytes[offsetTokenIdBytes] as number;
  const signedBytes = fixedBytes + tokenIdBytes;
  if (signedBytes + signatureBytes !== bytes.length) {
    return invalid('length-mismatch', `top-up: token id of ${tokenIdBytes} bytes`);
  }
  const sequence = bytes.readBigUInt64BE(offsetSequence);
  const amount = bytes.readBigUInt64BE(offsetAmount);
  if (sequence > BigInt(Number.MAX_SAFE_INTEGER) || amount > BigInt(Number.MAX_SAFE_INTEGER)) {
    return invalid('bad-field', 'top-up: a number past 2^53 - 1');
  }
  const body: TopUpBody = {
    tokenId: bytes.toString('latin1', fixedBytes, signedBytes),
    sequence: Number(sequence),
    amount: Number(amount),
    currency: bytes.toString('latin1', offsetCurrency, offsetCurrency + 3),
  };
  const problem = bodyProblem(body);
  if (problem !== undefined) {
    return invalid('bad-field', `top-up: ${problem}`);
  }
  return valid({
    ...body,
    signed: Buffer.from(bytes.subarray(0, signedBytes)),
    signature: Buffer.from(bytes.subarray(signedBytes)),
  });
}

/** True when the top-up's signature verifies under the operator root key. */
export function verifyTopUp(topUp: SignedTopUp, rootPublicKey: KeyObject): boolean {
  return verifySignature(topUp.signed, topUp.signature, rootPublicKey);
}
