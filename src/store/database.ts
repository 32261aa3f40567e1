/**
 * The store: Kysely over SQLite (better-sqlite3, the embedded default) or PostgreSQL (pg, when
 * several servers share state), with one set of migrations for both.
 */
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, type Migration, Migrator, PostgresDialect, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { sqliteBusyTimeoutMs, sqliteStatementsKept } from '../limits.js';
import { StoreUrlError } from './errors.js';
import { migrations } from './migrations.js';
import type { OrderTables } from './order-tables.js';

/** Tables as Kysely sees them. Money is integer minor units. */
export interface Schema extends OrderTables {
  accounts: {
    id: string;
    name: string;
    kind: string;
    currency: string;
    created_at: string;
    /** Total debits and total credits in minor units, each at most ledgerAccountTotalMax. */
    debits: number | string | bigint;
    credits: number | string | bigint;
  };
  parties: {
    id: string;
    kind: string;
    name: string;
    /**
     * The name folded as src/store/names.ts does (nameKey): unique per kind, operators excepted.
     * Written by every insert of the application; rows without one (null) escape the check.
     */
    name_key: string | null;
    token_hash: string;
    created_at: string;
    /** When the token was revoked; a revoked token no longer authenticates. */
    revoked_at: string | null;
  };
  entitlements: {
    id: string;
    subscriber: string;
    service: string;
    session: string | null;
    valid_from: string | null;
    valid_to: string | null;
    /** Minor units charged per started calendar month (UTC); null: none. */
    monthly: number | string | bigint | null;
    created_at: string;
  };
  sessions: {
    id: string;
    owner: string;
    name: string;
    group_address: string;
    port: number;
    source_address: string | null;
    price_model: string;
    /** 1 when the source bought repair (flow B). */
    repair: number;
    state: string;
    started_at: string;
    ended_at: string | null;
  };
  servers: {
    id: string;
    kind: string;
    name: string;
    address: string;
    created_at: string;
  };
  rates: {
    name: string;
    amount: number | string | bigint;
    updated_at: string;
  };
  usage_events: {
    id: string;
    transfer: string;
    account: string;
    kind: string;
    quantity: number | string | bigint;
    packets: number | string | bigint | null;
    session: string | null;
    created_at: string;
  };
  purse_tokens: {
    token_id: string;
    subscriber: string;
    /** The ledger account top-ups credit and receipts debit. */
    account: string;
    /** The token's Ed25519 public key, raw 32 bytes in base64url. */
    public_key: string;
    /** The last top-up sequence credited. */
    top_ups: number | string | bigint;
    refused_signature: number | string | bigint;
    refused_chain: number | string | bigint;
    created_at: string;
  };
  receipts: {
    /** SHA-256 of the signed bytes, hex: also the idempotency key of its transfer. */
    hash: string;
    token_id: string;
    counter: number | string | bigint;
    previous_hash: string;
    /** The Ed25519 signature, hex: the same bytes sent again need no second verification. */
    signature: string;
    service: string;
    unit: string;
    quantity: number | string | bigint;
    amount: number | string | bigint;
    time_ms: number | string | bigint;
    transfer: string;
    created_at: string;
  };
  member_trees: {
    product: string;
    service_epoch: number;
    tree_id: number | string | bigint;
    depth: number;
    epoch: number;
    created_at: string;
  };
  member_tree_keys: {
    product: string;
    service_epoch: number;
    node: number;
    /** The node's key wrapped (AES key wrap) under the tree's storage key, hex. */
    wrapped: string;
  };
  tree_members: {
    product: string;
    service_epoch: number;
    token_id: string;
    subscriber: string;
    slot: number;
    joined_at: string;
  };
  tree_rekeys: {
    product: string;
    service_epoch: number;
    epoch: number;
    /** The signed rekey message, base64. */
    message: string;
    /** The token whose leave it is. */
    token_id: string;
    created_at: string;
  };
  transfers: {
    id: string;
    idempotency_key: string;
    request_hash: string;
    debit_account: string;
    credit_account: string;
    amount: number | string | bigint;
    currency: string;
    memo: string;
    created_at: string;
  };
}

/** An open store. */
export interface Store extends AsyncDisposable {
  readonly db: Kysely<Schema>;
  readonly dialect: 'sqlite' | 'postgres';
  /**
   * Runs fn in a transaction that writes. On SQLite it begins IMMEDIATE, taking the write lock
   * first (waiting for it up to the busy timeout), so a transaction that reads and then writes
   * never fails because another process wrote in between (SQLITE_BUSY_SNAPSHOT under WAL).
   */
  writeTransaction<T>(fn: (trx: Kysely<Schema>) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/**
 * better-sqlite3 with its prepared statements kept, by SQL text, the least recently used dropped
 * past `kept`: Kysely prepares every query anew, and on a busy server preparing the same few
 * statements (the bearer-token look-up, the ledger's inserts) costs as much as running them. A
 * statement still being iterated is never handed out twice.
 */
function keepingStatements(database: SQLite.Database, kept: number) {
  const statements = new Map<string, SQLite.Statement>();
  return {
    close: () => database.close(),
    prepare(text: string): SQLite.Statement {
      const statement = statements.get(text);
      if (statement !== undefined && !statement.busy) {
        statements.delete(text);
        statements.set(text, statement);
        return statement;
      }
      const fresh = database.prepare(text);
      statements.set(text, fresh);
      if (statements.size > kept) {
        const oldest = statements.keys().next().value;
        if (oldest !== undefined) {
          statements.delete(oldest);
        }
      }
      return fresh;
    },
  };
}

/** Opens "sqlite:PATH", "sqlite::memory:" or "postgres://…" and brings the schema up to date. */
export async function openStore(url: string): Promise<Store> {
  let db: Kysely<Schema>;
  let dialect: Store['dialect'];
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === '') {
      throw new StoreUrlError(`--db: "${url}" names no file (sqlite:PATH or sqlite::memory:)`);
    }
    if (path !== ':memory:') {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      // The file holds tokens' hashes and money: only its owner reads it. SQLite gives the -wal and
      // -shm files the database file's mode.
      closeSync(openSync(path, 'a', 0o600));
      try {
        chmodSync(path, 0o600); // an older, wider file is narrowed
      } catch {
        // not ours to change: SQLite still opens it
      }
    }
    const database = new SQLite(path, { timeout: sqliteBusyTimeoutMs });
    database.pragma('journal_mode = WAL');
    database.pragma('foreign_keys = ON');
    db = new Kysely<Schema>({
      dialect: new SqliteDialect({ database: keepingStatements(database, sqliteStatementsKept) }),
    });
    dialect = 'sqlite';
  } else if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    db = new Kysely<Schema>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 8 }) }),
    });
    dialect = 'postgres';
  } else {
    throw new StoreUrlError(`--db: "${url}" is neither sqlite:PATH nor postgres://…`);
  }
  const migrator = new Migrator({
    db,
    provider: { getMigrations: async (): Promise<Record<string, Migration>> => migrations },
    // The ordering role's migrations are numbered from 0100; a store that has run them still takes
    // a later subscription migration (0007, …) numbered below them.
    allowUnorderedMigrations: true,
  });
  const { error } = await migrator.migrateToLatest();
  if (error) {
    await db.destroy();
    throw error;
  }
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= db.destroy();
    return closed;
  };
  const writeTransaction = <T>(fn: (trx: Kysely<Schema>) => Promise<T>): Promise<T> =>
    dialect === 'postgres'
      ? db.transaction().execute(fn)
      : db.connection().execute(async (connection) => {
          await sql`begin immediate`.execute(connection);
          try {
            const result = await fn(connection);
            await sql`commit`.execute(connection);
            return result;
          } catch (error) {
            await sql`rollback`.execute(connection).catch(() => undefined);
            throw error;
          }
        });
  return { db, dialect, writeTransaction, close, [Symbol.asyncDispose]: close };
}
