/**
 * The double-entry ledger: every transfer debits one account and credits another by the same
 * positive amount in integer minor units of one currency. Balances are derived from transfers, so
 * the sum over all accounts is zero by construction. Every transfer carries an idempotency key: the
 * same key with the same request returns the first result; with a different request it is refused
 * (a conflict), so a retried charge is never doubled and never lost. "The same request" is the
 * client's request (its fingerprint), not the result: a retry after the rates changed gets the
 * stored result. Each account keeps its total debits and credits beside it, bounded by
 * ledgerAccountTotalMax, so every balance is exact and a transfer that would pass the bound is
 * refused when it is written. Transfers are written in batches, one transaction each (group commit).
 */
import { createHash, randomUUID } from 'node:crypto';
import { CompiledQuery, type Kysely } from 'kysely';
import { ledgerAccountTotalMax, ledgerBatchAttemptsMax } from '../limits.js';
import { type Dialect, insertRows, oneOf } from './bulk.js';
import type { Schema, Store } from './database.js';
import { timeOrderedId } from './ids.js';

/** A ledger request was refused; the code says why. */
export class LedgerError extends Error {
  readonly code:
    | 'GATECAST_ERR_LEDGER_INVALID'
    | 'GATECAST_ERR_LEDGER_LIMIT'
    | 'GATECAST_ERR_IDEMPOTENCY_CONFLICT'
    | 'GATECAST_ERR_UNKNOWN_ACCOUNT';
  constructor(code: LedgerError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/** An account. */
export interface Account {
  readonly id: string;
  readonly name: string;
  readonly kind: string;
  readonly currency: string;
}

/** A transfer request. */
export interface TransferRequest {
  readonly idempotencyKey: string;
  readonly debit: string;
  readonly credit: string;
  /** Integer minor units, > 0. */
  readonly amount: number;
  readonly currency: string;
  readonly memo?: string | undefined;
  /**
   * The client's request this transfer answers (JSON-serializable). The idempotency check compares
   * it, not the transfer, so a retry is recognized even when the rated amount would differ now.
   * Default: the transfer itself.
   */
  readonly fingerprint?: unknown;
  /** When set, a new key is refused with this (a replay of a known key is still answered). */
  readonly refusal?: LedgerError | undefined;
}

/** A recorded transfer; replayed is true when the key had been used already with this request. */
export interface Transfer extends Required<Omit<TransferRequest, 'fingerprint' | 'refusal'>> {
  readonly id: string;
  readonly createdAt: string;
  readonly replayed: boolean;
}

/** The outcome of one request of a batch: its transfer, or why it was refused (nothing written). */
export type TransferOutcome =
  | { readonly ok: true; readonly transfer: Transfer }
  | { readonly ok: false; readonly error: LedgerError };

/** Writes what belongs with the new transfers of a batch (usage events) in the same transaction. */
export type WithinBatch = (
  trx: Kysely<Schema>,
  written: ReadonlyArray<{ index: number; id: string }>,
) => Promise<void>;

const currencyPattern = /^[A-Z]{3}$/;
const idempotencyKeyBytesMax = 200;
/** A UTF-16 surrogate without its other half: text no store can hold as it is. */
const loneSurrogate = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** The hash that tells "the same request" from "a different request under the same key". */
function requestHash(request: TransferRequest): string {
  return request.fingerprint !== undefined
    ? sha256(JSON.stringify(['client-request-v1', request.fingerprint]))
    : transferHash(request.debit, request.credit, request.amount, request.currency, request.memo ?? '');
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** The hash of a transfer itself: what every key covered before keys covered the client's request. */
function transferHash(debit: string, credit: string, amount: number, currency: string, memo: string) {
  return sha256(JSON.stringify([debit, credit, amount, currency, memo]));
}

/**
 * True when a stored transfer answers this request. Rows written before keys covered the client's
 * request hold the hash of the rated transfer; such a row (its hash is the hash of its own fields)
 * answers a request for the same accounts, currency and memo (the memo names the usage kind,
 * quantity, packets and session), whatever amount the rates in force now give.
 */
function answers(row: TransferRow, request: TransferRequest, hash: string): boolean {
  if (row.request_hash === hash) {
    return true;
  }
  const legacy =
    row.request_hash ===
    transferHash(row.debit_account, row.credit_account, Number(row.amount), row.currency, row.memo);
  return (
    legacy &&
    request.fingerprint !== undefined &&
    row.debit_account === request.debit &&
    row.credit_account === request.credit &&
    row.currency === request.currency &&
    row.memo === (request.memo ?? '')
  );
}

function validate(request: TransferRequest): LedgerError | undefined {
  const invalid = (message: string) => new LedgerError('GATECAST_ERR_LEDGER_INVALID', message);
  if (
    request.idempotencyKey.length === 0 ||
    Buffer.byteLength(request.idempotencyKey) > idempotencyKeyBytesMax
  ) {
    return invalid(`idempotencyKey: must be 1-${idempotencyKeyBytesMax} bytes`);
  }
  // A store keeps a lone surrogate as U+FFFD (a retry's look-up would not find the key it wrote),
  // and PostgreSQL text holds no NUL and its JSON no lone surrogate: such a value would fail the
  // whole batch's statement (every other request of the group commit with it), so it is refused alone.
  for (const [field, text] of [
    ['idempotencyKey', request.idempotencyKey],
    ['debit', request.debit],
    ['credit', request.credit],
    ['memo', request.memo ?? ''],
  ] as const) {
    if (text.includes('\u0000')) {
      return invalid(`${field}: holds a NUL character, which no store can keep`);
    }
    if (loneSurrogate.test(text)) {
      return invalid(`${field}: is not well-formed Unicode (it holds a lone surrogate)`);
    }
  }
  if (!Number.isSafeInteger(request.amount) || request.amount <= 0) {
    return invalid(`amount: ${request.amount} is not a positive integer of minor units`);
  }
  if (!currencyPattern.test(request.currency)) {
    return invalid(`currency: "${request.currency}" is not an ISO 4217 code`);
  }
  if (request.debit === request.credit) {
    return invalid('debit and credit name the same account');
  }
  return undefined;
}

type TransferRow = Schema['transfers'];

function fromRow(row: TransferRow, replayed: boolean): Transfer {
  return {
    id: row.id,
    idempotencyKey: row.idempotency_key,
    debit: row.debit_account,
    credit: row.credit_account,
    amount: Number(row.amount),
    currency: row.currency,
    memo: row.memo,
    createdAt: row.created_at,
    replayed,
  };
}

const conflict = (key: string) =>
  new LedgerError(
    'GATECAST_ERR_IDEMPOTENCY_CONFLICT',
    `idempotency key "${key}" was used for a different request`,
  );

/** A batch's totals passed the bound only because another transaction wrote after they were read. */
class TotalsMoved extends Error {}

/**
 * True when the batch is worth trying again: a unique-constraint violation on either dialect
 * (another writer took the key first), a deadlock PostgreSQL broke by aborting this transaction,
 * or totals that moved after they were read.
 */
function isRetryable(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return (
    error instanceof TotalsMoved ||
    code === '23505' ||
    code === '40P01' ||
    code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
  );
}

/**
 * Adds each account's debits and credits of a batch to its totals in one statement whose text
 * does not depend on the batch's size, and returns the new totals. On PostgreSQL the rows are
 * locked in the order of their ids (FOR NO KEY UPDATE, which the foreign-key checks of other
 * transactions' inserts do not wait for), so two batches never deadlock on them; each total is
 * added to, not overwritten, so batches that read the same totals both count.
 */
async function addToTotals(
  trx: Kysely<Schema>,
  dialect: Dialect,
  deltas: ReadonlyArray<readonly [id: string, debited: bigint, credited: bigint]>,
): Promise<Array<{ debits: bigint; credits: bigint }>> {
  if (deltas.length === 0) {
    return [];
  }
  const query =
    dialect === 'postgres'
      ? CompiledQuery.raw(
          `update accounts as a set debits = a.debits + d.debited, credits = a.credits + d.credited
           from (select u.id, u.debited, u.credited
                 from accounts as x join unnest($1::text[], $2::bigint[], $3::bigint[]) as u(id, debited, credited)
                   on x.id = u.id
                 order by x.id for no key update of x) as d
           where a.id = d.id returning a.debits, a.credits`,
          [deltas.map((d) => d[0]), deltas.map((d) => d[1].toString()), deltas.map((d) => d[2].toString())],
        )
      : CompiledQuery.raw(
          `update accounts set debits = debits + d.debited, credits = credits + d.credited
           from (select value ->> 0 as id, cast(value ->> 1 as integer) as debited,
                   cast(value ->> 2 as integer) as credited from json_each(?)) as d
           where accounts.id = d.id returning debits, credits`,
          [JSON.stringify(deltas.map((d) => [d[0], d[1].toString(), d[2].toString()]))],
        );
  const rows = (await trx.executeQuery<{ debits: unknown; credits: unknown }>(query)).rows;
  if (rows.length !== deltas.length) {
    throw new Error(`the totals of ${deltas.length} accounts were to change, ${rows.length} did`);
  }
  return rows.map((row) => ({ debits: BigInt(String(row.debits)), credits: BigInt(String(row.credits)) }));
}

/** The ledger over a store. */
export function createLedger(store: Store) {
  const { db } = store;

  async function createAccount(account: Omit<Account, 'id'> & { id?: string }): Promise<Account> {
    if (!currencyPattern.test(account.currency)) {
      throw new LedgerError(
        'GATECAST_ERR_LEDGER_INVALID',
        `currency: "${account.currency}" is not an ISO 4217 code`,
      );
    }
    const row = {
      id: account.id ?? randomUUID(),
      name: account.name,
      kind: account.kind,
      currency: account.currency,
    };
    await db
      .insertInto('accounts')
      .values({ ...row, created_at: new Date().toISOString(), debits: 0, credits: 0 })
      .execute();
    return row;
  }

  /** One batch in one transaction: replays and refusals answered, the rest written together. */
  async function writeBatch(
    requests: readonly TransferRequest[],
    hashes: readonly string[],
    outcomes: Array<TransferOutcome | undefined>,
    within: WithinBatch | undefined,
  ): Promise<void> {
    await store.writeTransaction(async (trx) => {
      const pending = requests.map((_, index) => index).filter((index) => outcomes[index] === undefined);
      const accountIds = [
        ...new Set(pending.flatMap((i) => [requests[i]?.debit ?? '', requests[i]?.credit ?? ''])),
      ].sort();
      // Read the accounts without locking them: their rows are locked only by the totals' UPDATE,
      // the last statement before COMMIT, so a transaction holds them for that statement and the
      // commit, not while it inserts its transfers. Both statements have one text whatever the
      // batch's size (src/store/bulk.ts).
      const [accountsWhere, accountsParameter] = oneOf(store.dialect, 'id', accountIds);
      const accountRows = (
        await trx.executeQuery<{ id: string; currency: string; debits: unknown; credits: unknown }>(
          CompiledQuery.raw(`select id, currency, debits, credits from accounts where ${accountsWhere}`, [
            accountsParameter,
          ]),
        )
      ).rows;
      const accounts = new Map(
        accountRows.map((row) => [
          row.id,
          {
            currency: row.currency,
            debits: BigInt(row.debits as string),
            credits: BigInt(row.credits as string),
            debited: 0n,
            credited: 0n,
          },
        ]),
      );
      const keys = [...new Set(pending.map((i) => requests[i]?.idempotencyKey ?? ''))];
      const [keysWhere, keysParameter] = oneOf(store.dialect, 'idempotency_key', keys);
      const existing = new Map(
        keys.length === 0
          ? []
          : (
              await trx.executeQuery<TransferRow>(
                CompiledQuery.raw(`select * from transfers where ${keysWhere}`, [keysParameter]),
              )
            ).rows.map((row) => [row.idempotency_key, row]),
      );
      const createdAt = new Date().toISOString();
      const rows: TransferRow[] = [];
      const written: Array<{ index: number; id: string }> = [];
      const limit = BigInt(ledgerAccountTotalMax);
      for (const index of pending) {
        const request = requests[index] as TransferRequest;
        const hash = hashes[index] as string;
        const first = existing.get(request.idempotencyKey);
        if (first !== undefined) {
          outcomes[index] = answers(first, request, hash)
            ? { ok: true, transfer: fromRow(first, true) }
            : { ok: false, error: conflict(request.idempotencyKey) };
          continue;
        }
        const debit = accounts.get(request.debit);
        const credit = accounts.get(request.credit);
        const refusal = request.refusal ?? refuse(request, debit, credit, limit);
        if (refusal !== undefined) {
          outcomes[index] = { ok: false, error: refusal };
          continue;
        }
        const amount = BigInt(request.amount);
        (debit as { debited: bigint }).debited += amount;
        (credit as { credited: bigint }).credited += amount;
        const row: TransferRow = {
          id: timeOrderedId(),
          idempotency_key: request.idempotencyKey,
          request_hash: hash,
          debit_account: request.debit,
          credit_account: request.credit,
          amount: request.amount,
          currency: request.currency,
          memo: request.memo ?? '',
          created_at: createdAt,
        };
        existing.set(request.idempotencyKey, row); // the same key twice in one batch: a replay
        rows.push(row);
        written.push({ index, id: row.id });
        outcomes[index] = { ok: true, transfer: fromRow(row, false) };
      }
      if (rows.length === 0) {
        return;
      }
      await insertRows(trx, store.dialect, 'transfers', rows);
      await within?.(trx, written);
      const touched = [...accounts].filter(([, account]) => account.debited > 0n || account.credited > 0n);
      const totals = await addToTotals(
        trx,
        store.dialect,
        touched.map(([id, account]) => [id, account.debited, account.credited]),
      );
      if (totals.some((total) => total.debits > limit || total.credits > limit)) {
        // Another transaction moved an account's totals since they were read: decide again.
        throw new TotalsMoved();
      }
    });
  }

  /**
   * Records a batch of transfers, each once per idempotency key, in one transaction (group commit);
   * `within` writes what belongs with the new ones (usage events) in that same transaction. Each
   * request gets its own outcome: the transfer (replayed or new), or the reason it was refused.
   */
  async function transferMany(
    requests: readonly TransferRequest[],
    within?: WithinBatch,
  ): Promise<TransferOutcome[]> {
    const hashes = requests.map(requestHash);
    for (let attempt = 1; ; attempt++) {
      const outcomes: Array<TransferOutcome | undefined> = requests.map((request) => {
        const invalid = validate(request);
        return invalid === undefined ? undefined : { ok: false, error: invalid };
      });
      try {
        await writeBatch(requests, hashes, outcomes, within);
        return outcomes as TransferOutcome[];
      } catch (error) {
        // Rolled back, and tried again: another writer took a key between our look-up and our
        // insert (now found: a replay or a conflict), or moved an account's totals after we read
        // them (now read again), or the two met in a deadlock (PostgreSQL chose this one).
        if (!isRetryable(error) || attempt >= ledgerBatchAttemptsMax) {
          throw error;
        }
      }
    }
  }

  /**
   * Records a transfer once per idempotency key, in one transaction; `within` writes what belongs
   * with the transfer (a usage event) in that same transaction, so both land or neither does.
   */
  async function transfer(
    request: TransferRequest,
    within?: (trx: Kysely<Schema>, transferId: string) => Promise<void>,
  ): Promise<Transfer> {
    const [outcome] = await transferMany(
      [request],
      within === undefined ? undefined : async (trx, written) => within(trx, written[0]?.id ?? ''),
    );
    if (outcome === undefined) {
      throw new Error('a batch of one has one outcome');
    }
    if (!outcome.ok) {
      throw outcome.error;
    }
    return outcome.transfer;
  }

  /** Credits minus debits, in minor units (exact: both totals are bounded). */
  async function balance(accountId: string): Promise<number> {
    const row = await db
      .selectFrom('accounts')
      .select(['debits', 'credits'])
      .where('id', '=', accountId)
      .executeTakeFirst();
    return row === undefined ? 0 : Number(BigInt(row.credits) - BigInt(row.debits));
  }

  /** Every account's balance; they sum to zero. */
  async function balances(): Promise<Map<string, number>> {
    const rows = await db.selectFrom('accounts').select(['id', 'debits', 'credits']).execute();
    return new Map(rows.map((row) => [row.id, Number(BigInt(row.credits) - BigInt(row.debits))]));
  }

  return { createAccount, transfer, transferMany, balance, balances };
}

/** Why a transfer between these accounts cannot be written, or undefined. */
function refuse(
  request: TransferRequest,
  debit: { currency: string; debits: bigint; debited: bigint } | undefined,
  credit: { currency: string; credits: bigint; credited: bigint } | undefined,
  limit: bigint,
): LedgerError | undefined {
  for (const [side, account] of [
    [request.debit, debit],
    [request.credit, credit],
  ] as const) {
    if (account === undefined) {
      return new LedgerError('GATECAST_ERR_UNKNOWN_ACCOUNT', `account ${side} does not exist`);
    }
    if (account.currency !== request.currency) {
      return new LedgerError(
        'GATECAST_ERR_LEDGER_INVALID',
        `account ${side} is kept in ${account.currency}, not ${request.currency}`,
      );
    }
  }
  const amount = BigInt(request.amount);
  const debits = (debit?.debits ?? 0n) + (debit?.debited ?? 0n);
  const credits = (credit?.credits ?? 0n) + (credit?.credited ?? 0n);
  if (debits + amount > limit || credits + amount > limit) {
    return new LedgerError(
      'GATECAST_ERR_LEDGER_LIMIT',
      `amount: ${request.amount} would take an account's total past ${limit} minor units (ledgerAccountTotalMax)`,
    );
  }
  return undefined;
}
