/**
 * Purses and receipts in billing (docs/api.md, "Purses and receipts"): a token's purse is a ledger
 * account; a top-up is a transfer from the subscriber's account to it; every receipt the token
 * signed is charged from it to operator revenue exactly once, under the idempotency key
 * `receipt/{hash}` (the hash of the receipt's signed bytes), in the same transaction as its row in
 * `receipts`. A receipt is charged only when it decodes, its Ed25519 signature verifies under the
 * token's registered key and it fits the token's chain (its previous hash is the hash of the
 * receipt before it, and no other receipt holds its counter); a bad signature or a broken chain is
 * refused and counted on the token. Reconciliation lists the gaps in each chain and the
 * pay-as-you-go usage no receipt paid for.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { sql } from 'kysely';
import type { ApiContext, Party } from '../api/context.js';
import { revenueAccount } from '../api/context.js';
import { ed25519PublicKeyProblem } from '../crypto/authority.js';
import { decodeReceipt, type Receipt, receiptChainStart, verifyReceipt } from '../crypto/receipt.js';
import { signTopUp } from '../crypto/top-up.js';
import { reconciliationGapsListedMax } from '../limits.js';
import type {
  PurseRegistration,
  PurseStatus,
  ReceiptBatchResult,
  ReceiptRefusal,
  ReceiptResult,
  Reconciliation,
  TopUpBody,
  TopUpResult,
} from '../protocol/api-receipts.js';
import { LedgerError, type TransferRequest } from '../store/ledger.js';

/** A registered purse, as receipts are checked against it. */
interface PurseToken {
  readonly tokenId: string;
  readonly subscriber: string;
  readonly account: string;
  readonly publicKey: KeyObject;
  readonly publicKeyText: string;
}

/** An answer with its HTTP status. */
export type Answer<T> =
  | { readonly status: 200 | 201; readonly body: T }
  | {
      readonly status: 400 | 403 | 404 | 409 | 422;
      readonly error: 'invalid-request' | 'forbidden' | 'not-found' | 'conflict' | 'limit-exceeded';
      readonly message: string;
    };

const purseCache = new WeakMap<object, Map<string, PurseToken>>();

/** The purse account of a token. */
export const purseAccountOf = (tokenId: string) => `purse:${tokenId}`;

function publicKeyOf(text: string): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: text }, format: 'jwk' });
}

async function loadPurses(
  context: ApiContext,
  tokenIds: readonly string[],
): Promise<Map<string, PurseToken>> {
  let cache = purseCache.get(context.db);
  if (cache === undefined) {
    cache = new Map();
    purseCache.set(context.db, cache);
  }
  const missing = tokenIds.filter((id) => !cache.has(id));
  if (missing.length > 0) {
    const rows = await context.db
      .selectFrom('purse_tokens')
      .selectAll()
      .where('token_id', 'in', missing)
      .execute();
    for (const row of rows) {
      cache.set(row.token_id, {
        tokenId: row.token_id,
        subscriber: row.subscriber,
        account: row.account,
        publicKey: publicKeyOf(row.public_key),
        publicKeyText: row.public_key,
      });
    }
  }
  return new Map(tokenIds.flatMap((id) => (cache.has(id) ? [[id, cache.get(id) as PurseToken]] : [])));
}

/** Registers a token's purse: its owner, its receipt key and its ledger account (idempotent). */
export async function registerPurse(
  context: ApiContext,
  tokenId: string,
  registration: PurseRegistration,
): Promise<Answer<{ token: string; account: string; created: boolean }>> {
  try {
    publicKeyOf(registration.publicKey);
  } catch {
    return { status: 400, error: 'invalid-request', message: 'body/publicKey: not an Ed25519 public key' };
  }
  // A key no signer could hold would have its receipts refused (or, under it, any receipt pass).
  const problem = ed25519PublicKeyProblem(Buffer.from(registration.publicKey, 'base64url'));
  if (problem !== undefined) {
    return {
      status: 400,
      error: 'invalid-request',
      message: `body/publicKey: not a usable Ed25519 public key: ${problem}`,
    };
  }
  const account = purseAccountOf(tokenId);
  return context.store.writeTransaction(async (trx) => {
    const known = await trx
      .selectFrom('purse_tokens')
      .selectAll()
      .where('token_id', '=', tokenId)
      .executeTakeFirst();
    if (known !== undefined) {
      return known.subscriber === registration.subscriber && known.public_key === registration.publicKey
        ? { status: 200 as const, body: { token: tokenId, account, created: false } }
        : {
            status: 409 as const,
            error: 'conflict' as const,
            message: `token ${tokenId} is registered with another subscriber or key`,
          };
    }
    const party = await trx
      .selectFrom('parties')
      .select(['id', 'kind'])
      .where('id', '=', registration.subscriber)
      .executeTakeFirst();
    if (party === undefined || party.kind !== 'subscriber') {
      return {
        status: 404 as const,
        error: 'not-found' as const,
        message: `body/subscriber: no subscriber ${registration.subscriber}`,
      };
    }
    const now = new Date().toISOString();
    await trx
      .insertInto('accounts')
      .values({
        id: account,
        name: `purse of ${tokenId}`,
        kind: 'purse',
        currency: context.currency,
        created_at: now,
        debits: 0,
        credits: 0,
      })
      .execute();
    await trx
      .insertInto('purse_tokens')
      .values({
        token_id: tokenId,
        subscriber: registration.subscriber,
        account,
        public_key: registration.publicKey,
        top_ups: 0,
        refused_signature: 0,
        refused_chain: 0,
        created_at: now,
      })
      .execute();
    return { status: 201 as const, body: { token: tokenId, account, created: true } };
  });
}

/**
 * Credits a top-up to the purse: a transfer from the subscriber's account under the key
 * `top-up/{token}/{sequence}`, so the same top-up sent again is answered, not doubled. Sequences
 * come one after another; a skipped one is refused (the token would refuse it too).
 */
export async function topUpPurse(
  context: ApiContext,
  tokenId: string,
  body: TopUpBody,
  caller: Party,
): Promise<Answer<TopUpResult>> {
  const purse = (await loadPurses(context, [tokenId])).get(tokenId);
  if (purse === undefined) {
    return { status: 404, error: 'not-found', message: `no purse for token ${tokenId}` };
  }
  if (caller.kind !== 'operator' && caller.id !== purse.subscriber) {
    return { status: 403, error: 'forbidden', message: 'a subscriber tops up only its own purses' };
  }
  const row = await context.db
    .selectFrom('purse_tokens')
    .select('top_ups')
    .where('token_id', '=', tokenId)
    .executeTakeFirstOrThrow();
  const next = Number(row.top_ups) + 1;
  const key = `top-up/${tokenId}/${body.sequence}`;
  const [outcome] = await context.ledger.transferMany(
    [
      {
        idempotencyKey: key,
        fingerprint: ['top-up', tokenId, body.sequence, body.amount],
        debit: purse.subscriber,
        credit: purse.account,
        amount: body.amount,
        currency: context.currency,
        memo: `top-up ${body.sequence} of purse ${tokenId}`,
        refusal:
          body.sequence > next
            ? new LedgerError(
                'GATECAST_ERR_IDEMPOTENCY_CONFLICT',
                `top-up ${body.sequence}: the purse's next top-up is ${next}`,
              )
            : undefined,
      },
    ],
    async (trx, written) => {
      if (written.length > 0) {
        await trx
          .updateTable('purse_tokens')
          .set({ top_ups: body.sequence })
          .where('token_id', '=', tokenId)
          .where('top_ups', '<', body.sequence)
          .execute();
      }
    },
  );
  if (outcome === undefined || !outcome.ok) {
    const error = outcome?.error;
    return {
      status: error?.code === 'GATECAST_ERR_LEDGER_LIMIT' ? 422 : 409,
      error: error?.code === 'GATECAST_ERR_LEDGER_LIMIT' ? 'limit-exceeded' : 'conflict',
      message: error?.message ?? 'refused',
    };
  }
  const { transfer } = outcome;
  // Signed only after the transfer is written: a token credits nothing the ledger does not hold.
  const signed =
    context.authority === undefined
      ? undefined
      : signTopUp(
          { tokenId, sequence: body.sequence, amount: transfer.amount, currency: transfer.currency },
          context.authority.rootPrivateKey,
        ).toString('base64url');
  return {
    status: transfer.replayed ? 200 : 201,
    body: {
      token: tokenId,
      sequence: body.sequence,
      transfer: transfer.id,
      amount: transfer.amount,
      currency: transfer.currency,
      replayed: transfer.replayed,
      ...(signed === undefined ? {} : { topUp: signed }),
    },
  };
}

const refusal = (reason: ReceiptRefusal, message: string, hash?: string): ReceiptResult => ({
  ...(hash === undefined ? {} : { hash }),
  status: reason === 'forbidden' ? 403 : reason === 'unknown-token' ? 404 : reason === 'currency' ? 422 : 409,
  refused: reason,
  message,
});

interface Link {
  readonly hash: string;
  readonly previous: string;
}

/**
 * Checks candidates against their token's chain (what is stored, and the batch itself, in counter
 * order). Returns the refusal message of each broken one by index.
 */
async function checkChains(
  context: ApiContext,
  candidates: ReadonlyArray<{ index: number; receipt: Receipt; hash: string }>,
): Promise<Map<number, string>> {
  const broken = new Map<number, string>();
  const byToken = new Map<string, Array<{ index: number; receipt: Receipt; hash: string }>>();
  for (const candidate of candidates) {
    const list = byToken.get(candidate.receipt.tokenId) ?? [];
    list.push(candidate);
    byToken.set(candidate.receipt.tokenId, list);
  }
  for (const [tokenId, list] of byToken) {
    const counters = [
      ...new Set(list.flatMap(({ receipt: r }) => [r.counter - 1, r.counter, r.counter + 1])),
    ];
    const known = new Map<number, Link>();
    for (let start = 0; start < counters.length; start += 900) {
      const rows = await context.db
        .selectFrom('receipts')
        .select(['counter', 'hash', 'previous_hash'])
        .where('token_id', '=', tokenId)
        .where('counter', 'in', counters.slice(start, start + 900))
        .execute();
      for (const row of rows) {
        known.set(Number(row.counter), { hash: row.hash, previous: row.previous_hash });
      }
    }
    list.sort((a, b) => a.receipt.counter - b.receipt.counter);
    for (const { index, receipt, hash } of list) {
      const counter = receipt.counter;
      const previous = receipt.previousHash.toString('hex');
      const here = known.get(counter);
      if (here !== undefined) {
        if (here.hash !== hash) {
          broken.set(index, `receipt ${counter} of token ${tokenId}: another receipt holds this counter`);
        }
        continue; // the same receipt again: charged once, answered again
      }
      const before = known.get(counter - 1);
      const after = known.get(counter + 1);
      if (counter === 1 && !receipt.previousHash.equals(receiptChainStart)) {
        broken.set(index, `receipt 1 of token ${tokenId}: the first receipt names a previous hash`);
      } else if (before !== undefined && before.hash !== previous) {
        broken.set(
          index,
          `receipt ${counter} of token ${tokenId}: its previous hash is not receipt ${counter - 1}'s`,
        );
      } else if (after !== undefined && after.previous !== hash) {
        broken.set(
          index,
          `receipt ${counter} of token ${tokenId}: receipt ${counter + 1} names another before it`,
        );
      } else {
        known.set(counter, { hash, previous });
      }
    }
  }
  return broken;
}

/** The signatures of the receipts among these hashes that were charged already. */
async function chargedSignatures(
  context: ApiContext,
  hashes: readonly string[],
): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const unique = [...new Set(hashes)];
  for (let start = 0; start < unique.length; start += 900) {
    const rows = await context.db
      .selectFrom('receipts')
      .select(['hash', 'signature'])
      .where('hash', 'in', unique.slice(start, start + 900))
      .execute();
    for (const row of rows) {
      found.set(row.hash, row.signature);
    }
  }
  return found;
}

/**
 * Charges a batch of receipts (base64url, as the token wrote them) in one transaction, each once:
 * one result per receipt, in order. A subscriber may report only its own tokens' receipts.
 */
export async function chargeReceipts(
  context: ApiContext,
  encoded: readonly string[],
  caller: Party,
): Promise<ReceiptBatchResult> {
  const results: Array<ReceiptResult | undefined> = encoded.map(() => undefined);
  const decoded: Array<{ index: number; receipt: Receipt; hash: string }> = [];
  for (const [index, text] of encoded.entries()) {
    const result = decodeReceipt(Buffer.from(text, 'base64url'));
    if (!result.ok) {
      results[index] = { status: 400, refused: 'malformed', message: `receipts/${index}: ${result.detail}` };
    } else {
      decoded.push({ index, receipt: result.value, hash: result.value.hash.toString('hex') });
    }
  }
  const purses = await loadPurses(context, [...new Set(decoded.map((d) => d.receipt.tokenId))]);
  const charged = await chargedSignatures(
    context,
    decoded.map((d) => d.hash),
  );
  const refusedSignature = new Map<string, number>();
  const refusedChain = new Map<string, number>();
  const count = (counts: Map<string, number>, tokenId: string) =>
    counts.set(tokenId, (counts.get(tokenId) ?? 0) + 1);
  const signed: typeof decoded = [];
  const known: typeof decoded = [];
  for (const candidate of decoded) {
    const { receipt, hash, index } = candidate;
    const purse = purses.get(receipt.tokenId);
    if (purse === undefined) {
      results[index] = refusal(
        'unknown-token',
        `receipts/${index}: no purse for token ${receipt.tokenId}`,
        hash,
      );
    } else if (caller.kind !== 'operator' && caller.id !== purse.subscriber) {
      results[index] = refusal('forbidden', `receipts/${index}: token ${receipt.tokenId} is not yours`, hash);
    } else if (charged.get(hash) === receipt.signature.toString('hex')) {
      known.push(candidate); // these very bytes were verified, chained and charged: answer again
    } else if (!verifyReceipt(receipt, purse.publicKey)) {
      results[index] = refusal('bad-signature', `receipts/${index}: the signature does not verify`, hash);
      count(refusedSignature, receipt.tokenId);
    } else if (receipt.currency !== context.currency) {
      results[index] = refusal(
        'currency',
        `receipts/${index}: in ${receipt.currency}, not ${context.currency}`,
        hash,
      );
    } else {
      signed.push(candidate);
    }
  }
  const broken = await checkChains(context, signed);
  for (const [index, message] of broken) {
    const receipt = (signed.find((s) => s.index === index) as (typeof signed)[number]).receipt;
    results[index] = refusal('broken-chain', `receipts/${index}: ${message}`, receipt.hash.toString('hex'));
    count(refusedChain, receipt.tokenId);
  }
  const charging = [...known, ...signed.filter((s) => !broken.has(s.index))];
  await chargeChecked(context, charging, purses, results);
  await countRefusals(context, refusedSignature, refusedChain);
  const final = results as ReceiptResult[];
  return {
    results: final,
    charged: final.filter((r) => r.status === 201).length,
    replayed: final.filter((r) => r.status === 200).length,
    refused: final.filter((r) => r.status !== 200 && r.status !== 201).length,
  };
}

async function chargeChecked(
  context: ApiContext,
  charging: ReadonlyArray<{ index: number; receipt: Receipt; hash: string }>,
  purses: ReadonlyMap<string, PurseToken>,
  results: Array<ReceiptResult | undefined>,
): Promise<void> {
  if (charging.length === 0) {
    return;
  }
  const credit = await revenueAccount(context);
  const requests: TransferRequest[] = charging.map(({ receipt, hash }) => ({
    idempotencyKey: `receipt/${hash}`,
    fingerprint: ['receipt', hash],
    debit: (purses.get(receipt.tokenId) as PurseToken).account,
    credit,
    amount: receipt.amount,
    currency: receipt.currency,
    memo: `receipt ${receipt.counter} of ${receipt.tokenId}: ${receipt.service} ${receipt.quantity} ${receipt.unit}`,
  }));
  const createdAt = new Date().toISOString();
  const outcomes = await context.ledger.transferMany(requests, async (trx, written) => {
    if (written.length === 0) {
      return;
    }
    await trx
      .insertInto('receipts')
      .values(
        written.map(({ index, id }) => {
          const { receipt, hash } = charging[index] as (typeof charging)[number];
          return {
            hash,
            token_id: receipt.tokenId,
            counter: receipt.counter,
            previous_hash: receipt.previousHash.toString('hex'),
            signature: receipt.signature.toString('hex'),
            service: receipt.service,
            unit: receipt.unit,
            quantity: receipt.quantity,
            amount: receipt.amount,
            time_ms: receipt.timeMs,
            transfer: id,
            created_at: createdAt,
          };
        }),
      )
      .execute();
  });
  for (const [position, outcome] of outcomes.entries()) {
    const { index, hash } = charging[position] as (typeof charging)[number];
    results[index] = outcome.ok
      ? {
          hash,
          status: outcome.transfer.replayed ? 200 : 201,
          transfer: outcome.transfer.id,
          amount: outcome.transfer.amount,
          replayed: outcome.transfer.replayed,
        }
      : {
          hash,
          status: outcome.error.code === 'GATECAST_ERR_LEDGER_LIMIT' ? 422 : 409,
          message: `receipts/${index}: ${outcome.error.message}`,
        };
  }
}

async function countRefusals(
  context: ApiContext,
  signature: ReadonlyMap<string, number>,
  chain: ReadonlyMap<string, number>,
): Promise<void> {
  const tokens = new Set([...signature.keys(), ...chain.keys()]);
  if (tokens.size === 0) {
    return;
  }
  await context.store.writeTransaction(async (trx) => {
    for (const tokenId of tokens) {
      const row = await trx
        .selectFrom('purse_tokens')
        .select(['refused_signature', 'refused_chain'])
        .where('token_id', '=', tokenId)
        .executeTakeFirstOrThrow();
      await trx
        .updateTable('purse_tokens')
        .set({
          refused_signature: Number(row.refused_signature) + (signature.get(tokenId) ?? 0),
          refused_chain: Number(row.refused_chain) + (chain.get(tokenId) ?? 0),
        })
        .where('token_id', '=', tokenId)
        .execute();
    }
  });
}

/** A purse as billing sees it: owner, balance from the ledger, receipts and refusals. */
export async function purseStatus(context: ApiContext, tokenId: string): Promise<PurseStatus | undefined> {
  const row = await context.db
    .selectFrom('purse_tokens')
    .selectAll()
    .where('token_id', '=', tokenId)
    .executeTakeFirst();
  if (row === undefined) {
    return undefined;
  }
  const totals = await context.db
    .selectFrom('receipts')
    .select((eb) => [
      eb.fn.countAll<string | number>().as('count'),
      eb.fn.sum<string | number | null>('amount').as('amount'),
    ])
    .where('token_id', '=', tokenId)
    .executeTakeFirstOrThrow();
  return {
    token: tokenId,
    subscriber: row.subscriber,
    account: row.account,
    currency: context.currency,
    balance: await context.ledger.balance(row.account),
    topUps: Number(row.top_ups),
    receipts: Number(totals.count),
    charged: Number(totals.amount ?? 0),
    refusedSignature: Number(row.refused_signature),
    refusedChain: Number(row.refused_chain),
  };
}

/** Reconciles a purse: gaps in its chain, usage its owner reported that no receipt paid for. */
export async function reconcilePurse(
  context: ApiContext,
  tokenId: string,
): Promise<Reconciliation | undefined> {
  const status = await purseStatus(context, tokenId);
  if (status === undefined) {
    return undefined;
  }
  const counters = await context.db
    .selectFrom('receipts')
    .select('counter')
    .where('token_id', '=', tokenId)
    .orderBy('counter')
    .execute();
  const gaps: Array<{ from: number; to: number }> = [];
  let missing = 0;
  let expected = 1;
  for (const { counter } of counters) {
    const value = Number(counter);
    if (value > expected) {
      missing += value - expected;
      if (gaps.length < reconciliationGapsListedMax) {
        gaps.push({ from: expected, to: value - 1 });
      }
    }
    expected = value + 1;
  }
  // Each quantity is below 2^53, but their sum is not bounded: summed whole it overflows SQLite's
  // 64-bit sum (an error) and rounds past 2^53 as a number. Summed as high and low 32-bit halves,
  // each half's sum fits, and the total is exact as a bigint.
  const halves = sql<string>`sum(quantity / 4294967296)`.as('high');
  const lows = sql<string>`sum(quantity % 4294967296)`.as('low');
  const receipted = await context.db
    .selectFrom((eb) =>
      eb
        .selectFrom('receipts')
        .innerJoin('purse_tokens', 'purse_tokens.token_id', 'receipts.token_id')
        .select(['receipts.unit as unit', 'receipts.quantity as quantity'])
        .where('purse_tokens.subscriber', '=', status.subscriber)
        .as('r'),
    )
    .select(['unit', halves, lows])
    .groupBy('unit')
    .execute();
  const used = await context.db
    .selectFrom('usage_events')
    .select(['kind', halves, lows])
    .where('account', '=', status.subscriber)
    .where('kind', 'in', ['pay-as-you-go-bytes', 'pay-as-you-go-seconds'])
    .groupBy('kind')
    .execute();
  const sumOf = (rows: ReadonlyArray<{ high: unknown; low: unknown }>) =>
    rows.reduce((sum, row) => sum + (BigInt(String(row.high)) << 32n) + BigInt(String(row.low)), 0n);
  /** Usage beyond receipts, shown up to reconciliationUnreceiptedMax (2^53 - 1; docs/api.md). */
  const beyond = (usedTotal: bigint, receiptedTotal: bigint) => {
    const difference = usedTotal - receiptedTotal;
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    return Number(difference < 0n ? 0n : difference > max ? max : difference);
  };
  const unreceipted = {
    bytes: beyond(
      sumOf(used.filter((r) => r.kind === 'pay-as-you-go-bytes')),
      sumOf(receipted.filter((r) => r.unit === 'bytes')),
    ),
    seconds: beyond(
      sumOf(used.filter((r) => r.kind === 'pay-as-you-go-seconds')),
      sumOf(receipted.filter((r) => r.unit === 'seconds')),
    ),
  };
  const overdrawn = status.balance < 0;
  return {
    token: tokenId,
    receipts: status.receipts,
    highestCounter: expected - 1,
    missing,
    gaps,
    unreceipted,
    overdrawn,
    refusedSignature: status.refusedSignature,
    refusedChain: status.refusedChain,
    clean:
      missing === 0 &&
      unreceipted.bytes === 0 &&
      unreceipted.seconds === 0 &&
      !overdrawn &&
      status.refusedSignature === 0 &&
      status.refusedChain === 0,
  };
}
