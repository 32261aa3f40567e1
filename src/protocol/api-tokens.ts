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
  /**
   * The token's membership of the product's member tree (docs/protocol.md, "Membership"), base64:
   * absent when the entitlement it is granted under has ended.
   */
  membership: Type.Optional(Type.String()),
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

/** The answer to GET /v1/products/{name}/tree: what a source of the product needs of its member tree. */
export const TreeForSource = Type.Object({
  product: Type.String(),
  serviceEpoch: Type.Integer(),
  treeId: Type.Integer({ minimum: 0, maximum: 0xffffffff }),
  depth: Type.Integer({ minimum: 1, maximum: 22 }),
  /** The tree's epoch: one more at every leave. */
  epoch: Type.Integer({ minimum: 0 }),
  members: Type.Integer({ minimum: 0 }),
  /** The server's ephemeral X25519 public key, hex (64 digits). */
  ephemeral: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  /** The group key wrapped (AES key wrap) under HKDF of the X25519 secret, hex (80 digits). */
  wrappedGroupKey: Type.String({ pattern: '^[0-9a-f]{80}$' }),
  /** The newest rekey messages, oldest first, base64. */
  rekeys: Type.Array(Type.String()),
});
export type TreeForSource = Static<typeof TreeForSource>;

/** The query of GET /v1/products/{name}/tree: the source's fresh X25519 public key. */
export const TreeQuery = Type.Object(
  {
    recipient: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    /** The tree epoch the source holds: the answer's rekeys then include every one after it. */
    since: Type.Optional(Type.String({ pattern: '^(0|[1-9][0-9]{0,9})$' })),
  },
  { additionalProperties: false },
);
export type TreeQuery = Static<typeof TreeQuery>;

/** The answer to DELETE /v1/entitlements/{id}: the entitlement, ended, and the leaves it made. */
export const RevokedEntitlement = Type.Object({
  id: Type.String(),
  endedAt: Type.String(),
  /** Tokens removed from member trees, with the tree epoch of each leave. */
  removed: Type.Array(Type.Object({ product: Type.String(), token: Type.String(), epoch: Type.Integer() })),
});
export type RevokedEntitlement = Static<typeof RevokedEntitlement>;
