/**
 * The purse inside a token (docs/protocol.md, "Purse receipt"): subscription grants (a time window) and
 * pay-as-you-go grants (per crypto-period, per MB or per minute, from the grant's rate card). The
 * token asks the purse before it unwraps a key; a pay-as-you-go debit lowers the balance and
 * writes a signed, hash-chained receipt (receipt.ts) that billing charges once.
 *
 * The rules are pure functions over an explicit state (authorize, applyTopUp): the token persists
 * the state where it keeps secrets (encrypted in the software token, as PKCS#11 data objects) and
 * keeps a monotonic counter beside it. Every state change raises `revision`; the token's counter
 * follows it. A state whose revision is behind the counter is a restored copy (rolled back) and is
 * refused. createPurse ties the rules to a storage, a counter and a signer, one operation at a time.
 */
import { purseDebitIdsKept, purseRevisionAheadMax } from '../limits.js';
import {
  type Receipt,
  type ReceiptSigner,
  type ReceiptUnit,
  receiptBodyProblem,
  receiptChainStart,
  receiptHashBytes,
  signReceipt,
} from './receipt.js';
import type { PurseAnswer, PurseDebit } from './token.js';

/** A purse refused an operation; the code says why and the message says it to a person. */
export class PurseError extends Error {
  readonly code:
    | 'GATECAST_ERR_PURSE_EMPTY'
    | 'GATECAST_ERR_PURSE_NOT_ENTITLED'
    | 'GATECAST_ERR_PURSE_ROLLBACK'
    | 'GATECAST_ERR_PURSE_INVALID';
  constructor(code: PurseError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

/** Prices in minor units, from the grant's rate card; a missing price is a unit not sold. */
export interface PurseRates {
  /** Per crypto-period. */
  readonly perCryptoPeriod?: number | undefined;
  /** Per 10^6 bytes (started megabytes are rounded up with the quantity, see priceOf). */
  readonly perMegabyte?: number | undefined;
  /** Per 60 seconds. */
  readonly perMinute?: number | undefined;
}

/** What the token was granted for one service (checked and signed by the token's issuer). */
export interface PurseGrant {
  readonly service: string;
  readonly mode: 'subscription' | 'pay-as-you-go';
  /** The window [validFromMs, validToMs) against the stream's authenticated time. */
  readonly validFromMs: number;
  readonly validToMs: number;
  /** For pay-as-you-go. */
  readonly rates?: PurseRates | undefined;
}

/** What is being paid for: quantity units of this service at the stream's authenticated time. */
export interface PurseUse {
  readonly unit: ReceiptUnit;
  readonly quantity: number;
  readonly timeMs: number;
  /** Names the use (e.g. session, incarnation and key epoch): the same id is paid for once. */
  readonly id?: string | undefined;
}

/** The purse's whole state; the token persists it (serializePurseState) and never shows it. */
export interface PurseState {
  readonly tokenId: string;
  readonly currency: string;
  /** Minor units, never below zero. */
  readonly balance: number;
  /** Receipts written; the next receipt has counter + 1. */
  readonly counter: number;
  /** The hash of the last receipt (receiptChainStart before the first). */
  readonly head: Buffer;
  /** The last top-up applied; the next one must carry topUps + 1. */
  readonly topUps: number;
  /** Raised by every change; the token's monotonic counter follows it. */
  readonly revision: number;
  /**
   * The ids of the last debits (at most purseDebitIdsKept): a use paid for once is not paid again
   * (KEY messages repeat in-band). Empty when the caller gives no ids.
   */
  readonly paid: readonly string[];
}

/** A top-up the token verified (issued by the operator after the ledger transfer). */
export interface PurseTopUp {
  readonly sequence: number;
  readonly amount: number;
  readonly currency: string;
}

/** The answer to authorize: allowed, and for a pay-as-you-go debit the new state and its receipt. */
export type PurseDecision =
  | { readonly ok: true; readonly state: PurseState; readonly receipt?: Receipt | undefined }
  | { readonly ok: false; readonly error: PurseError };

/** A new, empty purse. */
export function createPurseState(tokenId: string, currency: string): PurseState {
  return {
    tokenId,
    currency,
    balance: 0,
    counter: 0,
    head: receiptChainStart,
    topUps: 0,
    revision: 0,
    paid: [],
  };
}

const unitSize: Record<ReceiptUnit, bigint> = { 'crypto-period': 1n, bytes: 1_000_000n, seconds: 60n };
const rateOf = (rates: PurseRates, unit: ReceiptUnit) =>
  unit === 'crypto-period' ? rates.perCryptoPeriod : unit === 'bytes' ? rates.perMegabyte : rates.perMinute;

/** Minor units for a use: quantity × price ÷ unit size, rounded up; undefined when not sold. */
export function priceOf(rates: PurseRates, use: Pick<PurseUse, 'unit' | 'quantity'>): number | undefined {
  const price = rateOf(rates, use.unit);
  if (price === undefined) {
    return undefined;
  }
  const size = unitSize[use.unit];
  const amount = (BigInt(use.quantity) * BigInt(price) + size - 1n) / size;
  return amount > BigInt(Number.MAX_SAFE_INTEGER) ? Number.POSITIVE_INFINITY : Number(amount);
}

const iso = (ms: number) => new Date(ms).toISOString();

/** Why the grant does not cover this time, or undefined. */
export function windowRefusal(grant: PurseGrant, timeMs: number): PurseError | undefined {
  if (timeMs < grant.validFromMs) {
    return new PurseError(
      'GATECAST_ERR_PURSE_NOT_ENTITLED',
      `not entitled to ${grant.service} until ${iso(grant.validFromMs)}`,
    );
  }
  if (timeMs >= grant.validToMs) {
    return new PurseError(
      'GATECAST_ERR_PURSE_NOT_ENTITLED',
      `not entitled to ${grant.service}: the entitlement ended at ${iso(grant.validToMs)}`,
    );
  }
  return undefined;
}

/**
 * Refuses a state the token's monotonic counter has moved past (a restored copy). A state one
 * revision ahead is the last write before a crash that came before the counter moved: accepted,
 * and the caller moves the counter up to it.
 */
export function rollbackRefusal(state: PurseState, counterValue: number): PurseError | undefined {
  if (state.revision < counterValue) {
    return new PurseError(
      'GATECAST_ERR_PURSE_ROLLBACK',
      `purse state revision ${state.revision} is behind the token's counter ${counterValue}: a rolled-back copy is refused`,
    );
  }
  if (state.revision > counterValue + purseRevisionAheadMax) {
    return new PurseError(
      'GATECAST_ERR_PURSE_ROLLBACK',
      `purse state revision ${state.revision} is ahead of the token's counter ${counterValue}: not a state this token wrote`,
    );
  }
  return undefined;
}

const refused = (error: PurseError): PurseDecision => ({ ok: false, error });

/**
 * Decides one use of a service: a subscription checks its window; pay-as-you-go checks its window,
 * prices the use and debits it, never below zero, writing the next receipt of the chain. Nothing
 * changes on a refusal. `counterValue` is the token's monotonic counter.
 */
export async function authorize(
  state: PurseState,
  counterValue: number,
  grant: PurseGrant,
  use: PurseUse,
  signer: ReceiptSigner,
): Promise<PurseDecision> {
  const rollback = rollbackRefusal(state, counterValue);
  if (rollback !== undefined) {
    return refused(rollback);
  }
  const outside = windowRefusal(grant, use.timeMs);
  if (outside !== undefined) {
    return refused(outside);
  }
  if (grant.mode === 'subscription' || (use.id !== undefined && state.paid.includes(use.id))) {
    return { ok: true, state };
  }
  const invalid = (message: string) => refused(new PurseError('GATECAST_ERR_PURSE_INVALID', message));
  if (!Number.isSafeInteger(use.quantity) || use.quantity < 1) {
    return invalid(`quantity: ${use.quantity} is not a positive integer`);
  }
  const amount = priceOf(grant.rates ?? {}, use);
  if (amount === undefined) {
    return invalid(`${grant.service} is not sold per ${use.unit}`);
  }
  if (amount > state.balance) {
    return refused(
      new PurseError(
        'GATECAST_ERR_PURSE_EMPTY',
        `purse empty: ${grant.service} costs ${amount} ${state.currency} minor units, the balance is ${state.balance}`,
      ),
    );
  }
  const body = {
    tokenId: state.tokenId,
    service: grant.service,
    amount: Math.max(amount, 1),
    currency: state.currency,
    unit: use.unit,
    quantity: use.quantity,
    counter: state.counter + 1,
    timeMs: use.timeMs,
    previousHash: state.head,
  };
  const problem = receiptBodyProblem(body);
  if (problem !== undefined) {
    return invalid(problem);
  }
  if (body.amount > state.balance) {
    return refused(
      new PurseError('GATECAST_ERR_PURSE_EMPTY', `purse empty: the balance is ${state.balance}`),
    );
  }
  const receipt = await signReceipt(body, signer);
  return {
    ok: true,
    receipt,
    state: {
      ...state,
      balance: state.balance - body.amount,
      counter: body.counter,
      head: receipt.hash,
      revision: state.revision + 1,
      paid: use.id === undefined ? state.paid : [...state.paid, use.id].slice(-purseDebitIdsKept),
    },
  };
}

/** Applies a verified top-up once, in sequence; a repeated or skipped sequence is refused. */
export function applyTopUp(state: PurseState, counterValue: number, topUp: PurseTopUp): PurseDecision {
  const rollback = rollbackRefusal(state, counterValue);
  if (rollback !== undefined) {
    return refused(rollback);
  }
  const invalid = (message: string) => refused(new PurseError('GATECAST_ERR_PURSE_INVALID', message));
  if (topUp.sequence !== state.topUps + 1) {
    return invalid(`top-up ${topUp.sequence}: the purse expects top-up ${state.topUps + 1}`);
  }
  if (topUp.currency !== state.currency) {
    return invalid(`top-up ${topUp.sequence}: in ${topUp.currency}, the purse holds ${state.currency}`);
  }
  if (
    !Number.isSafeInteger(topUp.amount) ||
    topUp.amount < 1 ||
    state.balance + topUp.amount > Number.MAX_SAFE_INTEGER
  ) {
    return invalid(`top-up ${topUp.sequence}: amount ${topUp.amount} is not a positive integer in range`);
  }
  return {
    ok: true,
    state: {
      ...state,
      balance: state.balance + topUp.amount,
      topUps: topUp.sequence,
      revision: state.revision + 1,
    },
  };
}

/** The persisted form of a state (the token encrypts it at rest). */
export function serializePurseState(state: PurseState): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, ...state, head: state.head.toString('hex') }));
}

/** Reads a persisted state back; throws PurseError (GATECAST_ERR_PURSE_INVALID) on anything else. */
export function parsePurseState(bytes: Buffer): PurseState {
  const fail = (why: string) => new PurseError('GATECAST_ERR_PURSE_INVALID', `purse state: ${why}`);
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw fail('not JSON');
  }
  if (value === null || typeof value !== 'object' || value.v !== 1) {
    throw fail('not version 1');
  }
  const integer = (name: string) => {
    const field = value[name];
    if (typeof field !== 'number' || !Number.isSafeInteger(field) || field < 0) {
      throw fail(`${name} is not a non-negative integer`);
    }
    return field;
  };
  const text = (name: string) => {
    const field = value[name];
    if (typeof field !== 'string') {
      throw fail(`${name} is not a string`);
    }
    return field;
  };
  const paid = value.paid ?? [];
  if (!Array.isArray(paid) || paid.length > purseDebitIdsKept || paid.some((id) => typeof id !== 'string')) {
    throw fail('paid is not a list of debit ids');
  }
  const head = Buffer.from(text('head'), 'hex');
  if (head.length !== receiptHashBytes) {
    throw fail('head is not a 32-byte hash');
  }
  return {
    tokenId: text('tokenId'),
    currency: text('currency'),
    balance: integer('balance'),
    counter: integer('counter'),
    head,
    topUps: integer('topUps'),
    revision: integer('revision'),
    paid: paid as string[],
  };
}

/** Where a token keeps the purse state (encrypted file, PKCS#11 data object). */
export interface PurseStorage {
  load(): Promise<PurseState>;
  /** Saves the state and, for a debit, its receipt with it (one write, so neither is lost alone). */
  save(state: PurseState, receipt?: Receipt): Promise<void>;
}

/** A counter that only goes up (a PKCS#11 counter, a file the token guards). */
export interface MonotonicCounter {
  read(): Promise<number>;
  advance(to: number): Promise<void>;
}

/** A purse over a storage, a monotonic counter and the token's receipt signer. */
export interface Purse {
  /** Allows a use or refuses it with a PurseError; a debit's receipt is returned for reporting. */
  authorize(grant: PurseGrant, use: PurseUse): Promise<{ receipt?: Receipt | undefined }>;
  /** Applies a verified top-up; throws a PurseError when refused. */
  topUp(topUp: PurseTopUp): Promise<void>;
  /** The balance and counters (not the chain head: that is the token's). */
  status(): Promise<{ balance: number; counter: number; topUps: number; currency: string }>;
}

/**
 * Builds a purse. Operations run one at a time. The state is saved before the counter moves, so a
 * crash between the two leaves a state one revision ahead, which the next load accepts.
 */
export function createPurse(parts: {
  storage: PurseStorage;
  counter: MonotonicCounter;
  signer: ReceiptSigner;
}): Purse {
  let queue: Promise<unknown> = Promise.resolve();
  const serialize = <T>(operation: () => Promise<T>): Promise<T> => {
    const next = queue.then(operation, operation);
    queue = next.catch(() => undefined);
    return next;
  };
  const commit = async (decide: (state: PurseState, counterValue: number) => Promise<PurseDecision>) => {
    const state = await parts.storage.load();
    const counterValue = await parts.counter.read();
    const decision = await decide(state, counterValue);
    if (!decision.ok) {
      throw decision.error;
    }
    if (decision.state !== state) {
      await parts.storage.save(decision.state, decision.receipt);
      await parts.counter.advance(decision.state.revision);
    }
    return decision;
  };
  return {
    authorize: (grant, use) =>
      serialize(async () => {
        const decision = await commit((state, counterValue) =>
          authorize(state, counterValue, grant, use, parts.signer),
        );
        return decision.ok ? { receipt: decision.receipt } : {};
      }),
    topUp: (topUp) =>
      serialize(async () => {
        await commit(async (state, counterValue) => applyTopUp(state, counterValue, topUp));
      }),
    status: () =>
      serialize(async () => {
        const state = await parts.storage.load();
        return {
          balance: state.balance,
          counter: state.counter,
          topUps: state.topUps,
          currency: state.currency,
        };
      }),
  };
}

/**
 * A purse kept in memory, its state and counter living only as long as this process (the demo's
 * purse, and the tests'); `balance()` reads its balance now.
 */
export function createMemoryPurse(
  tokenId: string,
  currency: string,
  signer: ReceiptSigner,
): { purse: Purse; balance: () => number } {
  let state = createPurseState(tokenId, currency);
  let counter = 0;
  const purse = createPurse({
    storage: {
      load: async () => state,
      save: async (next) => {
        state = next;
      },
    },
    counter: {
      read: async () => counter,
      advance: async (to) => {
        counter = Math.max(counter, to);
      },
    },
    signer,
  });
  return { purse, balance: () => state.balance };
}

/**
 * A debit as a token asks for it before unwrapping a pay-as-you-go traffic key (src/crypto/token.ts);
 * the price is the crypto-period's, whatever the service epoch.
 */
export type TokenPurseDebit = Omit<PurseDebit, 'serviceEpoch'>;

/**
 * The purse as a token calls it: one crypto-period's price per (session, incarnation, key epoch),
 * paid once however often the KEY message repeats; each debit's receipt goes to `onReceipt` (the
 * receiver's outbox that reports to billing). The token has checked the grant's window already.
 */
export function tokenPurse(purse: Purse, onReceipt: (receipt: Receipt) => void) {
  return {
    async debit(debit: TokenPurseDebit): Promise<PurseAnswer> {
      const grant: PurseGrant = {
        service: debit.service,
        mode: 'pay-as-you-go',
        validFromMs: 0,
        validToMs: Number.MAX_SAFE_INTEGER,
        rates: { perCryptoPeriod: debit.amountMinor },
      };
      try {
        const status = await purse.status();
        if (status.currency !== debit.currency) {
          return {
            ok: false,
            reason: 'purse-unavailable',
            message: `purse unavailable: ${debit.service} is priced in ${debit.currency}, the purse holds ${status.currency}`,
          };
        }
        const { receipt } = await purse.authorize(grant, {
          unit: 'crypto-period',
          quantity: 1,
          timeMs: Math.floor(debit.streamTimeUs / 1000),
          id: `${debit.sessionId}/${debit.incarnation}/${debit.keyEpoch}`,
        });
        if (receipt !== undefined) {
          onReceipt(receipt);
        }
        return { ok: true };
      } catch (error) {
        if (!(error instanceof PurseError)) {
          throw error;
        }
        return {
          ok: false,
          reason: error.code === 'GATECAST_ERR_PURSE_EMPTY' ? 'purse-empty' : 'purse-unavailable',
          message: error.message,
        };
      }
    },
  };
}
