/**
 * The purse and receipt part of the subscription server's API contract (docs/api.md, "Purses and
 * receipts"): registering a token's purse, top-ups, reporting receipts in batches and the
 * reconciliation. One definition for the server and its clients; pure data, no I/O.
 */
import { type Static, Type } from '@sinclair/typebox';
import { receiptBatchMax } from '../limits.js';
import { Id, Money } from './api-subscription.js';

/** A token id as receipts carry it. */
export const TokenId = Type.String({ pattern: '^[A-Za-z0-9._:@-]{1,64}$', maxLength: 64 });

/** PUT /v1/purses/{token}: the token's owner and its receipt-signing key. */
export const PurseRegistration = Type.Object(
  {
    subscriber: Id,
    /** Ed25519 public key, the raw 32 bytes in base64url (43 characters). */
    publicKey: Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }),
  },
  { additionalProperties: false },
);
export type PurseRegistration = Static<typeof PurseRegistration>;

/** POST /v1/purses/{token}/top-ups: the next top-up of the purse (its sequence makes it idempotent). */
export const TopUpBody = Type.Object(
  {
    sequence: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    amount: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
  },
  { additionalProperties: false },
);
export type TopUpBody = Static<typeof TopUpBody>;

/** The answer to a top-up: the ledger transfer from the subscriber to the purse. */
export const TopUpResult = Type.Object({
  token: TokenId,
  sequence: Type.Integer(),
  transfer: Id,
  amount: Money,
  currency: Type.String(),
  replayed: Type.Boolean(),
  /**
   * The top-up signed with the operator root key (docs/protocol.md, "Purse top-up"), base64url,
   * for the token to credit; absent when the server holds no root key (`serve --root-key`).
   */
  topUp: Type.Optional(Type.String()),
});
export type TopUpResult = Static<typeof TopUpResult>;

/** POST /v1/receipts/batch: receipts as the token wrote them, each in base64url. */
export const ReceiptBatchBody = Type.Object(
  {
    receipts: Type.Array(Type.String({ minLength: 1, maxLength: 400, pattern: '^[A-Za-z0-9_-]+$' }), {
      minItems: 1,
      maxItems: receiptBatchMax,
    }),
  },
  { additionalProperties: false },
);
export type ReceiptBatchBody = Static<typeof ReceiptBatchBody>;

/** Why a receipt was refused (nothing charged for it). */
export const receiptRefusals = [
  'malformed',
  'unknown-token',
  'forbidden',
  'bad-signature',
  'broken-chain',
  'currency',
] as const;
export type ReceiptRefusal = (typeof receiptRefusals)[number];

/** The answer for one receipt of a batch, in order. */
export const ReceiptResult = Type.Object({
  /** SHA-256 of the receipt's signed bytes, hex (absent when it could not be decoded). */
  hash: Type.Optional(Type.String()),
  /** 201 charged now, 200 charged before, 400/403/404/409/422 refused. */
  status: Type.Integer(),
  transfer: Type.Optional(Id),
  amount: Type.Optional(Money),
  replayed: Type.Optional(Type.Boolean()),
  refused: Type.Optional(Type.Union(receiptRefusals.map((reason) => Type.Literal(reason)))),
  message: Type.Optional(Type.String()),
});
export type ReceiptResult = Static<typeof ReceiptResult>;

export const ReceiptBatchResult = Type.Object({
  results: Type.Array(ReceiptResult),
  charged: Type.Integer(),
  replayed: Type.Integer(),
  refused: Type.Integer(),
});
export type ReceiptBatchResult = Static<typeof ReceiptBatchResult>;

/** GET /v1/purses/{token}. */
export const PurseStatus = Type.Object({
  token: TokenId,
  subscriber: Id,
  account: Id,
  currency: Type.String(),
  /** Top-ups credited minus receipts charged, from the ledger. */
  balance: Money,
  topUps: Type.Integer(),
  receipts: Type.Integer(),
  charged: Money,
  refusedSignature: Type.Integer(),
  refusedChain: Type.Integer(),
});
export type PurseStatus = Static<typeof PurseStatus>;

/** GET /v1/purses/{token}/reconciliation: what billing can prove and what it cannot. */
export const Reconciliation = Type.Object({
  token: TokenId,
  /** Receipts charged, and the highest counter among them. */
  receipts: Type.Integer(),
  highestCounter: Type.Integer(),
  /** Counters missing below the highest: receipts the token wrote that never arrived. */
  missing: Type.Integer(),
  /** The first gaps, as inclusive counter ranges. */
  gaps: Type.Array(Type.Object({ from: Type.Integer(), to: Type.Integer() })),
  /** Pay-as-you-go usage reported for the owner beyond what its receipts paid for. */
  unreceipted: Type.Object({ bytes: Type.Integer(), seconds: Type.Integer() }),
  /** The purse's ledger balance is below zero: more charged than topped up. */
  overdrawn: Type.Boolean(),
  refusedSignature: Type.Integer(),
  refusedChain: Type.Integer(),
  /** True when nothing above needs a look. */
  clean: Type.Boolean(),
});
export type Reconciliation = Static<typeof Reconciliation>;
