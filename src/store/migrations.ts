/**
 * The schema, as migrations that run unchanged on SQLite and PostgreSQL. Append new ones; never
 * edit one that has shipped.
 */

import type { Migration } from 'kysely';
import { type Kysely, sql } from 'kysely';
import { nameKey } from './names.js';
import { orderMigrations } from './order-migrations.js';

export const migrations: Record<string, Migration> = {
  '0001-ledger': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('accounts')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('currency', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('transfers')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('idempotency_key', 'text', (c) => c.notNull().unique())
        .addColumn('request_hash', 'text', (c) => c.notNull())
        .addColumn('debit_account', 'text', (c) => c.notNull().references('accounts.id'))
        .addColumn('credit_account', 'text', (c) => c.notNull().references('accounts.id'))
        .addColumn('amount', 'bigint', (c) => c.notNull().check(sql`amount > 0`))
        .addColumn('currency', 'text', (c) => c.notNull())
        .addColumn('memo', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('transfers_debit').on('transfers').column('debit_account').execute();
      await db.schema.createIndex('transfers_credit').on('transfers').column('credit_account').execute();
    },
  },
  '0002-parties': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('parties')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('entitlements')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('subscriber', 'text', (c) => c.notNull().references('parties.id'))
        .addColumn('service', 'text', (c) => c.notNull())
        .addColumn('session', 'text')
        .addColumn('valid_from', 'text')
        .addColumn('valid_to', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('entitlements_subscriber')
        .on('entitlements')
        .column('subscriber')
        .execute();
    },
  },
  '0003-sessions-servers-rates': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('sessions')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull().references('parties.id'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('group_address', 'text', (c) => c.notNull())
        .addColumn('port', 'integer', (c) => c.notNull())
        .addColumn('source_address', 'text')
        .addColumn('price_model', 'text', (c) => c.notNull())
        .addColumn('repair', 'integer', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('started_at', 'text', (c) => c.notNull())
        .addColumn('ended_at', 'text')
        .execute();
      await db.schema.createIndex('sessions_owner').on('sessions').column('owner').execute();
      await db.schema
        .createTable('servers')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('address', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('servers_kind_address', ['kind', 'address'])
        .execute();
      await db.schema
        .createTable('rates')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('amount', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('usage_events')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('transfer', 'text', (c) => c.notNull().unique().references('transfers.id'))
        .addColumn('account', 'text', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('quantity', 'bigint', (c) => c.notNull())
        .addColumn('packets', 'bigint')
        .addColumn('session', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      await db.schema.alterTable('entitlements').addColumn('monthly', 'bigint').execute();
    },
  },
  '0004-account-totals': {
    async up(db: Kysely<unknown>) {
      // Each account keeps its total debits and credits, so a balance is exact and bounded and a
      // transfer past the bound is refused when it is written (not accepted, then unreadable).
      await db.schema
        .alterTable('accounts')
        .addColumn('debits', 'bigint', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .alterTable('accounts')
        .addColumn('credits', 'bigint', (c) => c.notNull().defaultTo(0))
        .execute();
      await sql`update accounts set
        debits = coalesce((select sum(amount) from transfers where debit_account = accounts.id), 0),
        credits = coalesce((select sum(amount) from transfers where credit_account = accounts.id), 0)`.execute(
        db,
      );
    },
  },
  '0005-party-names-revocation': {
    async up(db: Kysely<unknown>) {
      // A revoked token no longer authenticates; the party, its account and its history stay.
      await db.schema.alterTable('parties').addColumn('revoked_at', 'text').execute();
      // Names are unique per kind (operators excepted: one per token). Older duplicates get their id.
      await sql`update parties set name = name || ' (' || id || ')'
        where kind <> 'operator' and exists (select 1 from parties other
          where other.kind = parties.kind and other.name = parties.name and other.id < parties.id)`.execute(
        db,
      );
      await sql`create unique index parties_kind_name on parties (kind, name) where kind <> 'operator'`.execute(
        db,
      );
    },
  },
  '0006-purses-receipts': {
    async up(db: Kysely<unknown>) {
      // A token's purse as billing knows it: whose it is, the ledger account its top-ups are
      // credited to and its receipts are charged from, the key its receipts are signed with, and
      // how many of its receipts were refused (bad signature, broken chain).
      await db.schema
        .createTable('purse_tokens')
        .addColumn('token_id', 'text', (c) => c.primaryKey())
        .addColumn('subscriber', 'text', (c) => c.notNull().references('parties.id'))
        .addColumn('account', 'text', (c) => c.notNull().unique().references('accounts.id'))
        .addColumn('public_key', 'text', (c) => c.notNull())
        .addColumn('top_ups', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('refused_signature', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('refused_chain', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .execute();
      // One row per charged receipt, written with its transfer; (token, counter) is unique, so two
      // receipts claiming one place in a chain can never both be charged.
      await db.schema
        .createTable('receipts')
        .addColumn('hash', 'text', (c) => c.primaryKey())
        .addColumn('token_id', 'text', (c) => c.notNull().references('purse_tokens.token_id'))
        .addColumn('counter', 'bigint', (c) => c.notNull())
        .addColumn('previous_hash', 'text', (c) => c.notNull())
        .addColumn('signature', 'text', (c) => c.notNull())
        .addColumn('service', 'text', (c) => c.notNull())
        .addColumn('unit', 'text', (c) => c.notNull())
        .addColumn('quantity', 'bigint', (c) => c.notNull())
        .addColumn('amount', 'bigint', (c) => c.notNull())
        .addColumn('time_ms', 'bigint', (c) => c.notNull())
        .addColumn('transfer', 'text', (c) => c.notNull().unique().references('transfers.id'))
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addUniqueConstraint('receipts_token_counter', ['token_id', 'counter'])
        .execute();
    },
  },
  '0007-party-names-case': {
    async up(db: Kysely<unknown>) {
      // Names are unique per kind whatever their case: "alice" and "ALICE" are one subscriber to
      // whoever reads them. Older names that differ only in case (or in surrounding white space)
      // get their id, as in 0005, so the index can be built over existing data.
      await sql`update parties set name = trim(name) || ' (' || id || ')'
        where kind <> 'operator' and exists (select 1 from parties other
          where other.kind = parties.kind and lower(trim(other.name)) = lower(trim(parties.name))
            and other.id < parties.id)`.execute(db);
      await sql`create unique index parties_kind_name_folded on parties (kind, lower(name))
        where kind <> 'operator'`.execute(db);
    },
  },
  '0008-party-name-keys': {
    async up(db: Kysely<unknown>) {
      // Names are unique per kind by their key (src/store/names.ts: NFKC and case folded in every
      // script), computed by the application so that SQLite and PostgreSQL fold alike; 0007's index
      // folded ASCII only on SQLite. Older names whose keys collide keep the first (by id); the
      // later ones get their id, as in 0005 and 0007, so the index can be built over existing data.
      await db.schema.alterTable('parties').addColumn('name_key', 'text').execute();
      const rows = (
        await sql<{
          id: string;
          kind: string;
          name: string;
        }>`select id, kind, name from parties order by id`.execute(db)
      ).rows;
      const seen = new Set<string>();
      for (const row of rows) {
        let name = row.name;
        if (row.kind !== 'operator' && seen.has(`${row.kind}\n${nameKey(name)}`)) {
          name = `${name.trim()} (${row.id})`;
        }
        seen.add(`${row.kind}\n${nameKey(name)}`);
        await sql`update parties set name = ${name}, name_key = ${nameKey(name)} where id = ${row.id}`.execute(
          db,
        );
      }
      await sql`drop index parties_kind_name_folded`.execute(db);
      await sql`create unique index parties_kind_name_key on parties (kind, name_key)
        where kind <> 'operator'`.execute(db);
    },
  },
  '0009-ledger-checks-by-the-ledger': {
    async up(db: Kysely<unknown>) {
      // PostgreSQL: the ledger's inserts no longer run a foreign-key trigger per row (they were 40 %
      // of the transfers' INSERT). The ledger already guarantees what they checked: every transfer
      // it writes names accounts it read in the same transaction, and the same transaction's last
      // statement adds to both accounts' totals under their row locks and fails unless every one of
      // them is still there (src/store/ledger.ts); a usage event or receipt names the transfer
      // written beside it in that transaction; and nothing deletes an account or a transfer.
      // SQLite keeps its checks (dropping one means rebuilding the table): they cost it little.
      if (!(await isPostgres(db))) {
        return;
      }
      for (const [table, constraint] of [
        ['transfers', 'transfers_debit_account_fkey'],
        ['transfers', 'transfers_credit_account_fkey'],
        ['usage_events', 'usage_events_transfer_fkey'],
        ['receipts', 'receipts_transfer_fkey'],
      ]) {
        await sql`alter table ${sql.table(table as string)} drop constraint if exists ${sql.ref(constraint as string)}`.execute(
          db,
        );
      }
    },
  },
  '0010-member-trees': {
    async up(db: Kysely<unknown>) {
      // One member tree (LKH) per restricted product and service epoch (src/subscription/key-trees.ts).
      // The master secret is not stored: it derives from the product's service key, and the keys
      // changed by leaves are stored wrapped under a key derived from it too.
      await db.schema
        .createTable('member_trees')
        .addColumn('product', 'text', (c) => c.notNull())
        .addColumn('service_epoch', 'integer', (c) => c.notNull())
        .addColumn('tree_id', 'bigint', (c) => c.notNull())
        .addColumn('depth', 'integer', (c) => c.notNull())
        .addColumn('epoch', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('member_trees_pk', ['product', 'service_epoch'])
        .execute();
      await db.schema
        .createTable('member_tree_keys')
        .addColumn('product', 'text', (c) => c.notNull())
        .addColumn('service_epoch', 'integer', (c) => c.notNull())
        .addColumn('node', 'integer', (c) => c.notNull())
        .addColumn('wrapped', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('member_tree_keys_pk', ['product', 'service_epoch', 'node'])
        .execute();
      await db.schema
        .createTable('tree_members')
        .addColumn('product', 'text', (c) => c.notNull())
        .addColumn('service_epoch', 'integer', (c) => c.notNull())
        .addColumn('token_id', 'text', (c) => c.notNull())
        .addColumn('subscriber', 'text', (c) => c.notNull())
        .addColumn('slot', 'integer', (c) => c.notNull())
        .addColumn('joined_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('tree_members_pk', ['product', 'service_epoch', 'token_id'])
        .addUniqueConstraint('tree_members_slot', ['product', 'service_epoch', 'slot'])
        .execute();
      await db.schema
        .createTable('tree_rekeys')
        .addColumn('product', 'text', (c) => c.notNull())
        .addColumn('service_epoch', 'integer', (c) => c.notNull())
        .addColumn('epoch', 'integer', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('token_id', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('tree_rekeys_pk', ['product', 'service_epoch', 'epoch'])
        .execute();
    },
  },
  ...orderMigrations,
};

/**
 * True on PostgreSQL, false on SQLite: only PostgreSQL has pg_catalog. (The probe fails on SQLite,
 * where a failed statement leaves the migration's transaction as it was; on PostgreSQL, where a
 * failure would abort it, it succeeds.)
 */
async function isPostgres(db: Kysely<unknown>): Promise<boolean> {
  return sql`select 1 from pg_catalog.pg_class where false`.execute(db).then(
    () => true,
    () => false,
  );
}
