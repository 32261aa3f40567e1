/**
 * Set-based statements for the ledger's hot path, whose SQL text does not depend on how many rows
 * they carry. Kysely builds (and on SQLite, prepares) a new statement for every row count, and a
 * batch of a thousand rows is a thousand-row tree to build and some ten thousand parameters to bind.
 * Here PostgreSQL gets one array parameter per column (INSERT … SELECT FROM unnest, `= any($1)`),
 * and SQLite gets a few multi-row statements of fixed sizes, prepared once and kept
 * (src/store/database.ts), and `json_each` for a list of keys.
 */
import { CompiledQuery, type Kysely } from 'kysely';

/** A column of a bulk insert, with its PostgreSQL type (for the array it is sent as). */
export interface BulkColumn {
  readonly name: string;
  readonly type: 'text' | 'bigint';
}

/** The dialects a store speaks (Store['dialect']). */
export type Dialect = 'sqlite' | 'postgres';

/** Rows per multi-row INSERT on SQLite: 64, 32, …, 1, so every size is one of 7 prepared texts. */
const sqliteChunkRowsMax = 64;

/** Inserts rows (values in `columns` order) into `table`: one statement on PostgreSQL. */
export async function insertRows<DB>(
  trx: Kysely<DB>,
  dialect: Dialect,
  table: string,
  columns: readonly BulkColumn[],
  rows: ReadonlyArray<readonly unknown[]>,
): Promise<void> {
  if (rows.length === 0) {
    return;
  }
  const names = columns.map((column) => column.name).join(', ');
  if (dialect === 'postgres') {
    const arrays = columns.map((_, at) => rows.map((row) => row[at] ?? null));
    const unnest = columns.map((column, at) => `$${at + 1}::${column.type}[]`).join(', ');
    await trx.executeQuery(
      CompiledQuery.raw(`insert into ${table} (${names}) select * from unnest(${unnest})`, arrays),
    );
    return;
  }
  const placeholders = `(${columns.map(() => '?').join(', ')})`;
  let at = 0;
  while (at < rows.length) {
    let size = sqliteChunkRowsMax;
    while (size > rows.length - at) {
      size /= 2;
    }
    const chunk = rows.slice(at, at + size);
    await trx.executeQuery(
      CompiledQuery.raw(
        `insert into ${table} (${names}) values ${Array.from({ length: size }, () => placeholders).join(', ')}`,
        chunk.flat().map((value) => value ?? null),
      ),
    );
    at += size;
  }
}

/**
 * The SQL condition "`column` is one of the values of the first parameter", and that parameter:
 * an array on PostgreSQL, a JSON array read by json_each on SQLite. One text for any count.
 */
export function oneOf(dialect: Dialect, column: string, values: readonly string[]): [string, unknown] {
  return dialect === 'postgres'
    ? [`${column} = any($1::text[])`, values]
    : [`${column} in (select value from json_each(?))`, JSON.stringify(values)];
}
