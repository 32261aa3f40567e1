/**
 * Set-based statements for the ledger's hot path, whose SQL text does not depend on how many rows
 * they carry. Kysely builds (and on SQLite, prepares) a new statement for every row count, and a
 * batch of a thousand rows is a thousand-row tree to build and some ten thousand parameters to bind.
 * Here rows travel as one JSON parameter (PostgreSQL: json_populate_recordset; SQLite: json_each)
 * and a list of keys as one array (PostgreSQL: `= any($1)`; SQLite: json_each), so each statement
 * is prepared once (SQLite keeps it: src/store/database.ts) and binds one value.
 */
import { CompiledQuery, type Kysely } from 'kysely';

/** The dialects a store speaks (Store['dialect']). */
export type Dialect = 'sqlite' | 'postgres';

/**
 * Inserts rows into `table` in one statement, from one JSON parameter: PostgreSQL reads it with
 * json_populate_recordset, which takes each column's type from the table itself, and SQLite with
 * json_each. The columns are the keys of the first row (every row has the same; values are
 * numbers, strings or null).
 */
export async function insertRows<DB, Row extends object>(
  trx: Kysely<DB>,
  dialect: Dialect,
  table: string,
  rows: readonly Row[],
): Promise<void> {
  const first = rows[0];
  if (first === undefined) {
    return;
  }
  const columns = Object.keys(first).map((name) => `"${name}"`);
  const names = columns.join(', ');
  const text =
    dialect === 'postgres'
      ? `insert into ${table} (${names}) select ${names} from json_populate_recordset(null::${table}, $1::json)`
      : `insert into ${table} (${names}) select ${columns.map((name) => `value ->> '$.${name.slice(1, -1)}'`).join(', ')} from json_each(?)`;
  await trx.executeQuery(CompiledQuery.raw(text, [JSON.stringify(rows)]));
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
