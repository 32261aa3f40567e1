/**
 * The order server's tables (flow D) as Kysely sees them; the store's Schema includes them. The
 * store holds the desired state: links with their capacity and the bandwidth in use, services,
 * the active services with their refcount, every order (a lease a box renews) and the lease of the
 * router driver of each link. Rates are bit/s; times are ISO-8601 (UTC) and, where compared at
 * scale, milliseconds since the epoch.
 */
export interface OrderTables {
  order_links: {
    name: string;
    capacity_bits: number | string | bigint;
    /** Sum of the bit rates of the services active on the link; never above capacity_bits. */
    used_bits: number | string | bigint;
    /** 'smcroute', 'nftables' or 'relay'. */
    router: string;
    /** The driver's settings as JSON (docs/ordering.md). */
    router_config: string;
    /** 'reject' (the default) or 'preempt'. */
    policy: string;
    /** Bumped on every change of what should be routed, so a driver sees it cheaply. */
    version: number | string | bigint;
    created_at: string;
    updated_at: string;
  };
  order_services: {
    name: string;
    link: string;
    group_address: string;
    port: number;
    source_address: string | null;
    bit_rate: number | string | bigint;
    priority: number;
    /** 'per-order', 'per-hour' or 'subscription'. */
    price: string;
    /** Relay links: the group:port the channel is sent on over the link (null: the same group). */
    relay_to: string | null;
    created_at: string;
    updated_at: string;
  };
  order_active: {
    service: string;
    link: string;
    refcount: number | string | bigint;
    bit_rate: number | string | bigint;
    priority: number;
    activated_at: string;
  };
  orders: {
    id: string;
    box: string;
    service: string;
    link: string;
    /** 'active', 'cancelled', 'expired' or 'preempted'. */
    state: string;
    created_at: string;
    renewed_at: string;
    expires_at_ms: number | string | bigint;
    ended_at: string | null;
    /** Billing: 1 once the order's charge (if its price has one) is in the ledger. */
    charged: number;
    /**
     * The rate card's price when the order was admitted, in minor units (per order, or per hour of
     * a per-hour service); null for a subscription. The order is charged at it.
     */
    unit_price: number | string | bigint | null;
    /**
     * The service's kind of price when the order was admitted (`per-order`, `per-hour`,
     * `subscription`); null for orders from before it was kept. The order is charged by it.
     */
    price: string | null;
  };
  /**
   * The routers (router_config as in order_links) each link's routes may be on: recorded before a
   * driver first routes on one, deleted once the driver emptied a router the link no longer uses.
   */
  order_link_routers: {
    link: string;
    router_config: string;
  };
  order_driver_leases: {
    link: string;
    holder: string;
    expires_at_ms: number | string | bigint;
  };
}

/**
 * What the order API (GET /v1/order/services) and the operator console read of each service,
 * from order_services left-joined with order_active (its refcount and since when it is active):
 * one list, so the two show the same columns.
 */
export const orderServiceColumns = [
  'order_services.name',
  'order_services.link',
  'order_services.group_address',
  'order_services.port',
  'order_services.source_address',
  'order_services.bit_rate',
  'order_services.priority',
  'order_services.price',
  'order_services.relay_to',
  'order_active.refcount',
  'order_active.activated_at',
] as const;
