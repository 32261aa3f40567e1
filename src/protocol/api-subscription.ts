/**
 * The subscription server's API contract (docs/api.md): the request and answer schemas the server
 * validates with and every client (the repair controller, the source's registration, `gatecast
 * admin`) checks answers against. One definition for both sides; pure data, no I/O.
 */
import { type Static, Type } from '@sinclair/typebox';

/**
 * A party, session or server name: no leading or trailing white space and no control characters,
 * so two names a person reads alike are stored alike (docs/api.md).
 */
export const Name = Type.String({
  minLength: 1,
  maxLength: 200,
  pattern: '^(?![\\s])(?!.*[\\s]$)[^\\u0000-\\u001f\\u007f-\\u009f]+$',
});
export const Id = Type.String({ minLength: 1, maxLength: 100 });
export const Timestamp = Type.String({ format: 'date-time', maxLength: 40 });
export const Period = Type.String({ pattern: '^[0-9]{4}-(0[1-9]|1[0-2])$', maxLength: 7 });
/** Integer minor units; every account total stays at or below 2^53 - 1 (docs/limits.md). */
export const Money = Type.Integer({ minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER });
export const PartyKindName = Type.Union([
  Type.Literal('operator'),
  Type.Literal('source'),
  Type.Literal('subscriber'),
]);

/** GET /v1/whoami. */
export const Whoami = Type.Object({ id: Id, name: Type.String(), kind: PartyKindName });
export type Whoami = Static<typeof Whoami>;

/** GET /v1/entitlements/check. */
export const CheckResult = Type.Object({ allowed: Type.Boolean(), reason: Type.String() });
export type CheckResult = Static<typeof CheckResult>;

/** A session as the server shows it. */
export const Session = Type.Object({
  id: Id,
  owner: Id,
  name: Type.String(),
  group: Type.String(),
  source: Type.Union([Type.String(), Type.Null()]),
  price: Type.String(),
  repair: Type.Boolean(),
  state: Type.Union([Type.Literal('open'), Type.Literal('ended')]),
  startedAt: Type.String(),
  endedAt: Type.Union([Type.String(), Type.Null()]),
  /** Retransmit servers sent SETUP by this call. */
  setup: Type.Array(Type.String()),
  /** The source's charge for repair, once the session ended. */
  charge: Type.Optional(Type.Object({ transfer: Id, amount: Money, replayed: Type.Boolean() })),
});
export type Session = Static<typeof Session>;
export const SessionList = Type.Array(Session);

/** The usage kinds rated into charges. */
export const usageKinds = [
  'repair-bytes',
  'pay-as-you-go-bytes',
  'pay-as-you-go-seconds',
  'source-repair-seconds',
  'channel-orders',
  'channel-order-seconds',
] as const;
export type UsageKind = (typeof usageKinds)[number];

/** One usage event as a client reports it (POST /v1/usage, or one item of a batch). */
export const UsageBody = Type.Object(
  {
    account: Id,
    kind: Type.Union(usageKinds.map((kind) => Type.Literal(kind))),
    quantity: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    /** Packets repaired, for repair-bytes (reported, not rated). */
    packets: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
    session: Type.Optional(Id),
  },
  { additionalProperties: false },
);
export type UsageBody = Static<typeof UsageBody>;

export const IdempotencyKey = Type.String({ minLength: 1, maxLength: 200 });

/** The answer to a usage event: its charge, or the first charge under its key. */
export const Charge = Type.Object({
  transfer: Id,
  amount: Money,
  currency: Type.String(),
  replayed: Type.Boolean(),
});
export type Charge = Static<typeof Charge>;

/** One event of a batch: a usage report with its own idempotency key. */
export const UsageBatchEvent = Type.Object(
  {
    key: IdempotencyKey,
    account: Id,
    kind: Type.Union(usageKinds.map((kind) => Type.Literal(kind))),
    quantity: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    packets: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
    session: Type.Optional(Id),
  },
  { additionalProperties: false },
);

/** POST /v1/usage/batch: usage events charged in one transaction, each under its own key. */
export const UsageBatchBody = Type.Object(
  { events: Type.Array(UsageBatchEvent, { minItems: 1, maxItems: 1000 }) },
  { additionalProperties: false },
);
export type UsageBatchBody = Static<typeof UsageBatchBody>;

/** The answer to a batch: one result per event, in order, as POST /v1/usage would have answered it. */
export const UsageBatchResult = Type.Object({
  results: Type.Array(
    Type.Object({
      key: IdempotencyKey,
      status: Type.Integer(),
      transfer: Type.Optional(Id),
      amount: Type.Optional(Money),
      currency: Type.Optional(Type.String()),
      replayed: Type.Optional(Type.Boolean()),
      error: Type.Optional(Type.String()),
      message: Type.Optional(Type.String()),
    }),
  ),
});
export type UsageBatchResult = Static<typeof UsageBatchResult>;

/** POST /v1/subscribers and POST /v1/sources: the new party and its token (shown once). */
export const PartyCreated = Type.Object({ id: Id, name: Name, kind: Type.String(), token: Type.String() });

/** GET /v1/tokens: every party's token, live or revoked (never the token itself). */
export const TokenInfo = Type.Object({
  party: Id,
  kind: Type.String(),
  name: Type.String(),
  createdAt: Type.String(),
  revokedAt: Type.Union([Type.String(), Type.Null()]),
});
export const TokenList = Type.Array(TokenInfo);

/** GET /v1/services: what a subscriber can be granted. */
export const Service = Type.Object({ name: Type.String(), description: Type.String() });
export const ServiceList = Type.Array(Service);

/** POST /v1/entitlements and GET /v1/entitlements. */
export const Entitlement = Type.Object({
  id: Id,
  subscriber: Id,
  service: Type.String(),
  session: Type.Union([Id, Type.Null()]),
  from: Type.Union([Type.String(), Type.Null()]),
  to: Type.Union([Type.String(), Type.Null()]),
  monthly: Type.Union([Type.Integer(), Type.Null()]),
});
export const EntitlementList = Type.Array(Entitlement);

/** GET /v1/accounts/{id}/balance. */
export const Balance = Type.Object({ account: Id, balance: Type.Integer(), currency: Type.String() });

/** POST /v1/servers and GET /v1/servers. */
export const Server = Type.Object({
  id: Id,
  kind: Type.String(),
  name: Type.String(),
  address: Type.String(),
});
export const ServerList = Type.Array(Server);

/** GET /v1/rates and PUT /v1/rates: the rate card in force, minor units per unit of each rate. */
export const rateNames = [
  'repairPerGigabyte',
  'payAsYouGoPerMegabyte',
  'payAsYouGoPerMinute',
  'sourceRepairPerHour',
  'channelOrderPerOrder',
  'channelOrderPerHour',
] as const;
export const RatePrice = Type.Integer({ minimum: 1, maximum: 1_000_000_000_000 });
export const Rates = Type.Object(
  Object.fromEntries(rateNames.map((name) => [name, RatePrice])) as Record<
    (typeof rateNames)[number],
    typeof RatePrice
  >,
  { additionalProperties: false },
);

/** GET /v1/invoices: one account's charges and credits in one period. */
export const Invoice = Type.Object({
  account: Id,
  period: Type.String(),
  currency: Type.String(),
  from: Type.String(),
  to: Type.String(),
  lines: Type.Array(
    Type.Object({
      transfer: Id,
      at: Type.String(),
      memo: Type.String(),
      /** Positive: charged to the account; negative: credited to it. */
      amount: Type.Integer(),
    }),
  ),
  charges: Type.Integer(),
  credits: Type.Integer(),
  total: Type.Integer(),
});

/** GET /v1/usage: one account's usage events in one period. */
export const UsageEvent = Type.Object({
  id: Id,
  transfer: Id,
  account: Id,
  kind: Type.String(),
  quantity: Type.Integer(),
  packets: Type.Union([Type.Integer(), Type.Null()]),
  session: Type.Union([Id, Type.Null()]),
  at: Type.String(),
});
export const UsageEventList = Type.Array(UsageEvent);

/** POST /v1/billing/run: what the run charged. */
export const BillingRunResult = Type.Object({
  period: Type.String(),
  charged: Type.Integer(),
  replayed: Type.Integer(),
  amount: Type.Integer(),
  /** The entitlements the ledger refused to charge (nothing written for them); the run went on. */
  refused: Type.Array(Type.Object({ entitlement: Id, error: Type.String(), message: Type.String() })),
});

/** GET /v1/ledger.csv: the ledger as CSV text. */
export const LedgerCsv = Type.String();
