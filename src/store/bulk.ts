/**
 * Set-based statements for the ledger's hot path, whose SQL text does not depend on how many rows
 * they carry. Kysely builds (and on SQLite, prepares) a new statement for every row count, and a
 * batch of a thousand rows is a thousand-row tree to build and some ten thousand parameters to bind.
 * Here PostgreSQL gets one array parameter per column (INSERT … SELECT FROM unnest, `= any($1)`),
 * and SQLite one JSON parameter read by `json_each` (the rows as an array of arrays, or a list of
 * keys), so each statement is prepared once and kept (src/store/database.ts) and binds one value.
 */
import { CompiledQuery, type Kysely } from 'kysely';

/** A column of a bulk insert, with its PostgreSQL type (for the array it is sent as). */
export interface BulkColumn {
  readonly name: string;
  readonly type: 'text' | 'bigint';
}

/** The dialects a store speaks (Store['dialect']). */
export type Dialect = 'sqlite' | 'postgres';

/** Inserts rows (values in `columns` order; numbers, strings or null) into `table` in one statement. */
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
  // SQLite: one JSON array of rows, read by json_each: one prepared text whatever the count, and
  // one parameter to bind instead of one per value.
  const values = columns.map((_, at) => `value ->> ${at}`).join(', ');
  await trx.executeQuery(
    CompiledQuery.raw(`insert into ${table} (${names}) select ${values} from json_each(?)`, [
      JSON.stringify(rows),
    ]),
  );
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
