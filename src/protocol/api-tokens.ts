/**
 * Token enrollment in the subscription server's API contract (docs/api.md, "Tokens"): a
 * subscriber registers its token's device key and receipt key, and gets back one signed grant per
 * restricted product it is entitled to. One definition for the server and `gatecast token
 * enroll`; pure data, no I/O.
 */
import { type Static, Type } from '@sinclair/typebox';
import { TokenId } from './api-receipts.js';
import { Id, Money } from './api-subscription.js';

/** POST /v1/enrollments. */
export const EnrollBody = Type.Object(
  {
    /** The token's device public key: the uncompressed P-256 point, 130 hex digits. */
    device: Type.String({ pattern: '^04[0-9a-f]{128}$' }),
    /** The token's receipt key: Ed25519, the raw 32 bytes in base64url (43 characters). */
    receiptKey: Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }),
    /** The subscriber, when the operator enrolls a token for one (a subscriber enrolls for itself). */
    subscriber: Type.Optional(Id),
  },
  { additionalProperties: false },
);
export type EnrollBody = Static<typeof EnrollBody>;

/** One grant of an enrollment, as the token installs it. */
export const EnrolledGrant = Type.Object({
  service: Type.String(),
  serviceEpoch: Type.Integer(),
  tier: Type.Integer(),
  from: Type.String(),
  until: Type.String(),
  priceModel: Type.Union([Type.Literal('subscription'), Type.Literal('per-crypto-period')]),
  /** Minor units per crypto-period for a pay-as-you-go grant, 0 for a subscription. */
  price: Money,
  currency: Type.String(),
  /** The signed grant (docs/protocol.md, "Grant"), base64. */
  grant: Type.String(),
});
export type EnrolledGrant = Static<typeof EnrolledGrant>;

/** The answer to POST /v1/enrollments. */
export const EnrollResult = Type.Object({
  token: TokenId,
  subscriber: Id,
  /** The token's purse account in the ledger. */
  account: Id,
  currency: Type.String(),
  /** False when the token was enrolled before (the same device, subscriber and receipt key). */
  created: Type.Boolean(),
  grants: Type.Array(EnrolledGrant),
});
export type EnrollResult = Static<typeof EnrollResult>;
