/**
 * The repair controller's API contract (flow A, docs/api.md "Repair controller"): the request,
 * release and grant schemas the controller validates with and the agent's client checks answers
 * against. One definition for both sides.
 */
import { type Static, Type } from '@sinclair/typebox';

/** GROUP:PORT ([GROUP]:PORT for IPv6); parsed further by net/address. */
export const GroupText = Type.String({ minLength: 3, maxLength: 64 });

/** A unicast IP address (v4 or v6), e.g. S1's sender. */
export const IpAddress = Type.Union([Type.String({ format: 'ipv4' }), Type.String({ format: 'ipv6' })]);

/** An agent's request: repair S1 for me (the bearer token says who "me" is). */
export const RepairRequestBody = Type.Object(
  { group: GroupText, source: Type.Optional(IpAddress) },
  { additionalProperties: false },
);
export type RepairRequestBody = Static<typeof RepairRequestBody>;

/** An agent's release: the application left S1. */
export const RepairReleaseBody = Type.Object({ group: GroupText }, { additionalProperties: false });
export type RepairReleaseBody = Static<typeof RepairReleaseBody>;

/**
 * S2's key in a grant: the repaired group is sealed (docs/protocol.md, "SEALED") under this key
 * of this epoch; a later epoch's key comes in a later grant (renewal, or a re-ask when an
 * envelope of an epoch the agent lacks arrives).
 */
export const S2KeyBody = Type.Object(
  {
    suite: Type.Literal('aes-256-gcm'),
    epoch: Type.Integer({ minimum: 1, maximum: 65_535 }),
    secret: Type.String({ minLength: 43, maxLength: 43, pattern: '^[A-Za-z0-9_-]{43}$' }),
  },
  { additionalProperties: false },
);
export type S2KeyBody = Static<typeof S2KeyBody>;

/** The controller's grant (docs/protocol.md, "Repair grant"). */
export const RepairGrantBody = Type.Object(
  {
    session: GroupText,
    s2: GroupText,
    subscriber: Type.String({ minLength: 1, maxLength: 100 }),
    leaseSeconds: Type.Integer({ minimum: 1, maximum: 86_400 }),
    key: Type.Union([S2KeyBody, Type.Null()]),
    tag: Type.String({ minLength: 1, maxLength: 100 }),
  },
  { additionalProperties: false },
);
export type RepairGrantBody = Static<typeof RepairGrantBody>;
