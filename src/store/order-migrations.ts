/**
 * The order server's tables (flow D), as migrations that run unchanged on SQLite and PostgreSQL.
 * Append new ones; never edit one that has shipped.
 */
import { type Kysely, type Migration, sql } from 'kysely';

export const orderMigrations: Record<string, Migration> = {
  '0100-orders': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('order_links')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('capacity_bits', 'bigint', (c) => c.notNull().check(sql`capacity_bits >= 0`))
        .addColumn('used_bits', 'bigint', (c) =>
          c.notNull().defaultTo(0).check(sql`used_bits >= 0 and used_bits <= capacity_bits`),
        )
        .addColumn('router', 'text', (c) => c.notNull())
        .addColumn('router_config', 'text', (c) => c.notNull())
        .addColumn('policy', 'text', (c) => c.notNull())
        .addColumn('version', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('order_services')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('link', 'text', (c) => c.notNull().references('order_links.name'))
        .addColumn('group_address', 'text', (c) => c.notNull())
        .addColumn('port', 'integer', (c) => c.notNull())
        .addColumn('source_address', 'text')
        .addColumn('bit_rate', 'bigint', (c) => c.notNull().check(sql`bit_rate > 0`))
        .addColumn('priority', 'integer', (c) => c.notNull())
        .addColumn('price', 'text', (c) => c.notNull())
        .addColumn('relay_to', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('order_active')
        .addColumn('service', 'text', (c) => c.primaryKey().references('order_services.name'))
        .addColumn('link', 'text', (c) => c.notNull().references('order_links.name'))
        .addColumn('refcount', 'bigint', (c) => c.notNull().check(sql`refcount > 0`))
        .addColumn('bit_rate', 'bigint', (c) => c.notNull())
        .addColumn('priority', 'integer', (c) => c.notNull())
        .addColumn('activated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('order_active_link').on('order_active').column('link').execute();
      await db.schema
        .createTable('orders')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('box', 'text', (c) => c.notNull().references('parties.id'))
        .addColumn('service', 'text', (c) => c.notNull().references('order_services.name'))
        .addColumn('link', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('renewed_at', 'text', (c) => c.notNull())
        .addColumn('expires_at_ms', 'bigint', (c) => c.notNull())
        .addColumn('ended_at', 'text')
        .addColumn('charged', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      // Ordering twice is one order: at most one active order per box and service.
      await sql`create unique index orders_active_box_service on orders (box, service) where state = 'active'`.execute(
        db,
      );
      await sql`create index orders_active_expiry on orders (expires_at_ms) where state = 'active'`.execute(
        db,
      );
      await db.schema.createIndex('orders_service').on('orders').columns(['service', 'created_at']).execute();
      await db.schema.createIndex('orders_box').on('orders').columns(['box', 'created_at']).execute();
      await sql`create index orders_uncharged on orders (charged) where charged = 0`.execute(db);
      await db.schema
        .createTable('order_driver_leases')
        .addColumn('link', 'text', (c) => c.primaryKey())
        .addColumn('holder', 'text', (c) => c.notNull())
        .addColumn('expires_at_ms', 'bigint', (c) => c.notNull())
        .execute();
    },
  },
  '0101-order-link-routers': {
    async up(db: Kysely<unknown>) {
      // The routers a link's routes were put on: a router the link left while no server drove it
      // (changed while the order servers were down) is emptied on the next start.
      await db.schema
        .createTable('order_link_routers')
        .addColumn('link', 'text', (c) => c.notNull().references('order_links.name'))
        .addColumn('router_config', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('order_link_routers_pkey', ['link', 'router_config'])
        .execute();
      // The routes in place when this ships are on each link's router of now.
      await sql`insert into order_link_routers (link, router_config) select name, router_config from order_links`.execute(
        db,
      );
    },
  },
  '0102-order-prices': {
    async up(db: Kysely<unknown>) {
      // The rate card's price (minor units per order, or per hour) when the order was admitted:
      // the order is charged at it, whatever the card says when the charge is made. Null for a
      // subscription, and for orders admitted before this shipped (charged at the card then).
      await db.schema.alterTable('orders').addColumn('unit_price', 'bigint').execute();
    },
  },
  '0103-order-price-kinds': {
    async up(db: Kysely<unknown>) {
      // The service's kind of price (per-order, per-hour, subscription) when the order was
      // admitted: a service changed once its orders ended must not change how they are charged.
      // Null for orders admitted before this shipped (charged by the service's kind then).
      await db.schema.alterTable('orders').addColumn('price', 'text').execute();
    },
  },
};
