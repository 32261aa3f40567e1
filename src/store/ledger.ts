/**
 * The double-entry ledger: every transfer debits one account and credits another by the same
 * positive amount in integer minor units of one currency. Balances are derived from transfers, so
 * the sum over all accounts is zero by construction. Every transfer carries an idempotency key: the
 * same key with the same request returns the first result; with a different request it is refused
 * (a conflict), so a retried charge is never doubled and never lost.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Schema, Store } from './database.js';

/** A ledger request was refused; the code says why. */
export class LedgerError extends Error {
  readonly code:
    | 'GATECAST_ERR_LEDGER_INVALID'
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
}

/** A recorded transfer; replayed is true when the key had been used already with this request. */
export interface Transfer extends Required<TransferRequest> {
  readonly id: string;
  readonly createdAt: string;
  readonly replayed: boolean;
}

const currencyPattern = /^[A-Z]{3}$/;
const idempotencyKeyBytesMax = 200;

/** The hash that tells "the same request" from "a different request under the same key". */
function requestHash(request: TransferRequest): string {
  const canonical = JSON.stringify([
    request.debit,
    request.credit,
    request.amount,
    request.currency,
    request.memo ?? '',
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}

function validate(request: TransferRequest): void {
  const invalid = (message: string) => new LedgerError('GATECAST_ERR_LEDGER_INVALID', message);
  if (
    request.idempotencyKey.length === 0 ||
    Buffer.byteLength(request.idempotencyKey) > idempotencyKeyBytesMax
  ) {
    throw invalid(`idempotencyKey: must be 1-${idempotencyKeyBytesMax} bytes`);
  }
  if (!Number.isSafeInteger(request.amount) || request.amount <= 0) {
    throw invalid(`amount: ${request.amount} is not a positive integer of minor units`);
  }
  if (!currencyPattern.test(request.currency)) {
    throw invalid(`currency: "${request.currency}" is not an ISO 4217 code`);
  }
  if (request.debit === request.credit) {
    throw invalid('debit and credit name the same account');
  }
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
      .values({ ...row, created_at: new Date().toISOString() })
      .execute();
    return row;
  }

  async function existing(key: string, hash: string): Promise<Transfer | undefined> {
    const row = await db
      .selectFrom('transfers')
      .selectAll()
      .where('idempotency_key', '=', key)
      .executeTakeFirst();
    if (row === undefined) {
      return undefined;
    }
    if (row.request_hash !== hash) {
      throw new LedgerError(
        'GATECAST_ERR_IDEMPOTENCY_CONFLICT',
        `idempotency key "${key}" was used for a different request`,
      );
    }
    return {
      id: row.id,
      idempotencyKey: row.idempotency_key,
      debit: row.debit_account,
      credit: row.credit_account,
      amount: Number(row.amount),
      currency: row.currency,
      memo: row.memo,
      createdAt: row.created_at,
      replayed: true,
    };
  }

  /**
   * Records a transfer once per idempotency key, in one transaction; `within` writes what belongs
   * with the transfer (a usage event) in that same transaction, so both land or neither does.
   */
  async function transfer(
    request: TransferRequest,
    within?: (trx: Kysely<Schema>, transferId: string) => Promise<void>,
  ): Promise<Transfer> {
    validate(request);
    const hash = requestHash(request);
    const first = await existing(request.idempotencyKey, hash);
    if (first !== undefined) {
      return first;
    }
    const id = randomUUID();
    const createdAt = new Date().toISOString();
    try {
      await store.writeTransaction(async (trx) => {
        const accounts = await trx
          .selectFrom('accounts')
          .select(['id', 'currency'])
          .where('id', 'in', [request.debit, request.credit])
          .execute();
        for (const side of [request.debit, request.credit]) {
          const account = accounts.find((a) => a.id === side);
          if (account === undefined) {
            throw new LedgerError('GATECAST_ERR_UNKNOWN_ACCOUNT', `account ${side} does not exist`);
          }
          if (account.currency !== request.currency) {
            throw new LedgerError(
              'GATECAST_ERR_LEDGER_INVALID',
              `account ${side} is kept in ${account.currency}, not ${request.currency}`,
            );
          }
        }
        await trx
          .insertInto('transfers')
          .values({
            id,
            idempotency_key: request.idempotencyKey,
            request_hash: hash,
            debit_account: request.debit,
            credit_account: request.credit,
            amount: request.amount,
            currency: request.currency,
            memo: request.memo ?? '',
            created_at: createdAt,
          })
          .execute();
        await within?.(trx, id);
      });
    } catch (error) {
      if (error instanceof LedgerError) {
        throw error;
      }
      // Another writer won the race for this key: its transfer is the one (or a conflict).
      const winner = await existing(request.idempotencyKey, hash);
      if (winner !== undefined) {
        return winner;
      }
      throw error;
    }
    return { ...request, memo: request.memo ?? '', id, createdAt, replayed: false };
  }

  /** Credits minus debits, in minor units. */
  async function balance(accountId: string): Promise<number> {
    const sum = async (column: 'debit_account' | 'credit_account') => {
      const row = await db
        .selectFrom('transfers')
        .select((eb) => eb.fn.coalesce(eb.fn.sum<number | string>('amount'), eb.val(0)).as('total'))
        .where(column, '=', accountId)
        .executeTakeFirst();
      return Number(row?.total ?? 0);
    };
    return (await sum('credit_account')) - (await sum('debit_account'));
  }

  /** Every account's balance; they sum to zero. */
  async function balances(): Promise<Map<string, number>> {
    const accounts = await db.selectFrom('accounts').select('id').execute();
    const result = new Map<string, number>();
    for (const account of accounts) {
      result.set(account.id, await balance(account.id));
    }
    return result;
  }

  return { createAccount, transfer, balance, balances };
}
