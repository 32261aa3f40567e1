/**
 * The order server's API contract (flow D, docs/api.md "Ordering", docs/ordering.md): the request
 * and answer schemas the order role validates with and its clients (`gatecast stb`, `gatecast admin
 * orders`) check answers against. One definition for both sides; pure data, no I/O.
 */
import { type Static, Type } from '@sinclair/typebox';
import { ErrorBody } from './api-errors.js';
import { Id } from './api-subscription.js';

/** A link, service or box name: letters, digits, '.', '_' and '-'; not "." or ".." (no path could name it). */
export const OrderName = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: '^(?!\\.\\.?$)[A-Za-z0-9._-]+$',
});
/**
 * An interface name as the kernel takes it: at most 15 characters, no "/", ":" or white space,
 * not ".", "..", "all" or "default" (the names of the sysctl trees every interface has).
 */
export const InterfaceName = Type.String({
  minLength: 1,
  maxLength: 15,
  pattern: '^(?!(\\.|\\.\\.|all|default)$)[A-Za-z0-9._@+-]+$',
});
/** Bit/s, integral. */
export const BitRate = Type.Integer({ minimum: 1, maximum: 1_000_000_000_000 });
const HostAddress = Type.String({ minLength: 2, maxLength: 45, pattern: '^[0-9A-Fa-f:.]+$' });

export const orderPrices = ['per-order', 'per-hour', 'subscription'] as const;
export type OrderPrice = (typeof orderPrices)[number];
export const linkPolicies = ['reject', 'preempt'] as const;
export type LinkPolicy = (typeof linkPolicies)[number];

/** A real smcrouted, driven over its control socket (docs/ordering.md). */
export const SmcrouteRouter = Type.Object(
  {
    kind: Type.Literal('smcroute'),
    /** smcrouted's control socket (its -u). */
    socket: Type.String({ minLength: 1, maxLength: 200 }),
    /** Inbound interface (towards the sources) and the transmission link's interface. */
    inbound: InterfaceName,
    outbound: InterfaceName,
  },
  { additionalProperties: false },
);
/** gatecast forwards each active channel itself, group to group. */
export const RelayRouter = Type.Object(
  {
    kind: Type.Literal('relay'),
    /** The interface addresses to join on (towards the sources) and to send on (the link). */
    inbound: HostAddress,
    outbound: HostAddress,
    ttl: Type.Optional(Type.Integer({ minimum: 1, maximum: 255 })),
  },
  { additionalProperties: false },
);
/**
 * The kernel forwards each active channel through nftables rules the order server writes (no
 * multicast routing daemon; for kernels without multicast routing too), in its own namespace.
 */
export const NftablesRouter = Type.Object(
  {
    kind: Type.Literal('nftables'),
    /** Inbound interface (towards the sources) and the transmission link's interface. */
    inbound: InterfaceName,
    outbound: InterfaceName,
    /**
     * The netdev table the link's rules live in (default gatecast_INBOUND_OUTBOUND). It starts
     * with "gatecast", so it is never one of nft's keywords (nft takes no quoted table name).
     */
    table: Type.Optional(Type.String({ maxLength: 64, pattern: '^gatecast[A-Za-z0-9_]*$' })),
  },
  { additionalProperties: false },
);
export const LinkRouter = Type.Union([SmcrouteRouter, RelayRouter, NftablesRouter]);
export type LinkRouter = Static<typeof LinkRouter>;

/** PUT /v1/order/links/{name}. */
export const LinkBody = Type.Object(
  {
    capacity: BitRate,
    router: LinkRouter,
    policy: Type.Optional(Type.Union(linkPolicies.map((policy) => Type.Literal(policy)))),
  },
  { additionalProperties: false },
);
export type LinkBody = Static<typeof LinkBody>;

/** A link as the server shows it. */
export const Link = Type.Object({
  name: Type.String(),
  capacity: Type.Integer(),
  used: Type.Integer(),
  router: LinkRouter,
  policy: Type.String(),
  /** Which order server drives the link's router now, and until when (null: none yet). */
  driver: Type.Union([Type.Object({ holder: Type.String(), until: Type.String() }), Type.Null()]),
});
export type Link = Static<typeof Link>;

/** PUT /v1/order/services/{name}. */
export const ServiceBody = Type.Object(
  {
    link: OrderName,
    /** The channel's group and port as the source sends it. */
    group: Type.String({ minLength: 3, maxLength: 60 }),
    /** The source's address: the router installs an (S,G) route (preferred); absent: (*,G). */
    source: Type.Optional(HostAddress),
    bitRate: BitRate,
    /** Higher wins when a full link pre-empts. */
    priority: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000 })),
    price: Type.Optional(Type.Union(orderPrices.map((price) => Type.Literal(price)))),
    /** Relay links: the group:port the channel goes out on over the link (default: the same). */
    relayTo: Type.Optional(Type.String({ minLength: 3, maxLength: 60 })),
  },
  { additionalProperties: false },
);
export type ServiceBody = Static<typeof ServiceBody>;

/** A service as the server shows it. */
export const OrderService = Type.Object({
  name: Type.String(),
  link: Type.String(),
  group: Type.String(),
  source: Type.Union([Type.String(), Type.Null()]),
  bitRate: Type.Integer(),
  priority: Type.Integer(),
  price: Type.String(),
  relayTo: Type.Union([Type.String(), Type.Null()]),
  /** Boxes holding an active order now. */
  boxes: Type.Integer(),
  /** When it became active (null: not routed now). */
  activeSince: Type.Union([Type.String(), Type.Null()]),
});
export type OrderService = Static<typeof OrderService>;
export const OrderServiceList = Type.Array(OrderService);
/** PUT /v1/order/services/{name}: the service saved. */
export const OrderServiceSaved = Type.Object({ name: Type.String() });
export const LinkList = Type.Array(Link);

/** POST /v1/order/orders. */
export const OrderBody = Type.Object({ service: OrderName }, { additionalProperties: false });
export type OrderBody = Static<typeof OrderBody>;

export const orderStates = ['active', 'cancelled', 'expired', 'preempted'] as const;
export type OrderState = (typeof orderStates)[number];

/** An order as the server shows it. */
export const Order = Type.Object({
  id: Id,
  box: Id,
  service: Type.String(),
  link: Type.String(),
  state: Type.Union(orderStates.map((state) => Type.Literal(state))),
  createdAt: Type.String(),
  renewedAt: Type.String(),
  /** The lease: without a renewal before this, the order expires. */
  expiresAt: Type.String(),
  endedAt: Type.Union([Type.String(), Type.Null()]),
  /** POST /v1/order/orders: false when the box already held this order (ordering twice is one order). */
  created: Type.Optional(Type.Boolean()),
});
export type Order = Static<typeof Order>;
export const OrderList = Type.Array(Order);

/** GET /v1/order/orders query (operator: any box; a box: its own). */
export const OrderQuery = Type.Object(
  {
    box: Type.Optional(Id),
    service: Type.Optional(OrderName),
    state: Type.Optional(
      Type.Union([...orderStates.map((state) => Type.Literal(state)), Type.Literal('all')]),
    ),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$' })),
  },
  { additionalProperties: false },
);
export type OrderQuery = Static<typeof OrderQuery>;

/** One active service on a link, as a refusal shows what is in use. */
export const InUse = Type.Object({
  service: Type.String(),
  bitRate: Type.Integer(),
  priority: Type.Integer(),
  boxes: Type.Integer(),
});

/** 409 capacity-full: the link cannot carry the service; what is in use. */
export const CapacityFull = Type.Object({
  error: Type.Literal('capacity-full'),
  message: Type.String(),
  link: Type.String(),
  capacity: Type.Integer(),
  used: Type.Integer(),
  requested: Type.Integer(),
  inUse: Type.Array(InUse),
});
export type CapacityFull = Static<typeof CapacityFull>;

/** The answers of POST /v1/order/orders besides the order. */
export const OrderRefusal = Type.Union([CapacityFull, ErrorBody]);

/** GET /v1/order/report: per service, how many boxes, since when; per link, what is used. */
export const OrderReport = Type.Object({
  at: Type.String(),
  services: Type.Array(
    Type.Object({
      service: Type.String(),
      link: Type.String(),
      boxes: Type.Integer(),
      activeSince: Type.String(),
      bitRate: Type.Integer(),
      priority: Type.Integer(),
    }),
  ),
  links: Type.Array(Type.Object({ link: Type.String(), capacity: Type.Integer(), used: Type.Integer() })),
  orders: Type.Object({
    active: Type.Integer(),
    cancelled: Type.Integer(),
    expired: Type.Integer(),
    preempted: Type.Integer(),
  }),
});
export type OrderReport = Static<typeof OrderReport>;
