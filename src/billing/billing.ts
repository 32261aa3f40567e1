/**
 * The billing role (beside the ledger in store/ledger.ts): rating, usage events charged into the
 * ledger (one at a time, in batches, and group-committed), the billing run that charges
 * subscriptions per period, invoices per account and period, and the ledger as CSV (docs/api.md,
 * "Billing"). The subscription role calls it through BillingService (src/api/billing.ts).
 */
import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { BillingFactory, BillingService, ChargeOptions, RateCard } from '../api/billing.js';
import {
  type ApiContext,
  anyParty,
  badRequest,
  errorReplies,
  Id,
  notFound,
  operatorOnly,
  operatorOrSelf,
  Period,
  periodBounds,
  revenueAccount,
} from '../api/context.js';
import { rateCacheMs, usageBatchBodyBytesMax, usageGroupCommitEventsMax } from '../limits.js';
import type { ApiErrorCode } from '../protocol/api-errors.js';
import {
  BillingRunResult,
  Charge,
  IdempotencyKey,
  Invoice,
  Rates,
  UsageBatchBody,
  UsageBatchResult,
  UsageBody,
  UsageEventList,
  type UsageKind,
} from '../protocol/api-subscription.js';
import { insertRows } from '../store/bulk.js';
import { timeOrderedId } from '../store/ids.js';
import { LedgerError, type TransferRequest } from '../store/ledger.js';
import { registerPurse } from './receipts.js';
import { registerReceiptRoutes } from './receipts-routes.js';

export type { RateCard } from '../api/billing.js';

/** The default rate card; the operator overrides it with PUT /v1/rates. */
export const rateCardDefault: RateCard = {
  repairPerGigabyte: 50,
  payAsYouGoPerMegabyte: 1,
  payAsYouGoPerMinute: 2,
  sourceRepairPerHour: 100,
  channelOrderPerOrder: 50,
  channelOrderPerHour: 20,
};
const rateNames = Object.keys(rateCardDefault) as Array<keyof RateCard>;

export { type UsageKind, usageKinds } from '../protocol/api-subscription.js';

/** The rate card's price of a kind of usage, and the units of usage it is the price of. */
export function rateOf(kind: UsageKind): [keyof RateCard, bigint] {
  return kind === 'repair-bytes'
    ? ['repairPerGigabyte', 1_000_000_000n]
    : kind === 'pay-as-you-go-bytes'
      ? ['payAsYouGoPerMegabyte', 1_000_000n]
      : kind === 'pay-as-you-go-seconds'
        ? ['payAsYouGoPerMinute', 60n]
        : kind === 'channel-orders'
          ? ['channelOrderPerOrder', 1n]
          : kind === 'channel-order-seconds'
            ? ['channelOrderPerHour', 3600n]
            : ['sourceRepairPerHour', 3600n];
}

/**
 * Idempotency keys the server writes itself (a session's end, the billing run, purse top-ups and
 * receipts, channel orders). A reported usage event under one of them would take that charge's
 * place: the real charge would then be a conflict, or the answer of another account's charge.
 */
export const reservedKeyPrefixes = [
  'session-end/',
  'subscription/',
  'top-up/',
  'receipt/',
  'order/',
  'order-end/',
] as const;

/** The message refusing a client's key in a reserved namespace, or undefined when it is free. */
function reservedKeyRefusal(key: string, field: string): string | undefined {
  const prefix = reservedKeyPrefixes.find((reserved) => key.startsWith(reserved));
  return prefix === undefined
    ? undefined
    : `${field}: keys starting with "${prefix}" are the server's own; report usage under another key`;
}

export function rate(card: RateCard, kind: UsageKind, quantity: number, priceAgreed?: number): number {
  const [name, unit] = rateOf(kind);
  const price = priceAgreed ?? card[name];
  const total = BigInt(quantity) * BigInt(price);
  const amount = (total + unit - 1n) / unit;
  if (amount > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new LedgerError(
      'GATECAST_ERR_LEDGER_LIMIT',
      `quantity: ${quantity} ${kind} rates to ${amount} minor units, past ${Number.MAX_SAFE_INTEGER}`,
    );
  }
  return Number(amount);
}

const RatesUpdate = Type.Partial(Rates, { additionalProperties: false, minProperties: 1 });
const IdempotencyHeaders = Type.Object({ 'idempotency-key': IdempotencyKey });
const InvoiceQuery = Type.Object({ account: Id, period: Period }, { additionalProperties: false });
const UsageQuery = Type.Object({ account: Id, period: Period }, { additionalProperties: false });
const RunBody = Type.Object({ period: Period }, { additionalProperties: false });

const rateCache = new WeakMap<object, { at: number; card: RateCard }>();

/** The rate card in force: the defaults, overridden by what the operator stored. */
export async function currentRates(context: ApiContext, defaults: RateCard): Promise<RateCard> {
  const cached = rateCache.get(context.db);
  if (cached !== undefined && Date.now() - cached.at < rateCacheMs) {
    return cached.card;
  }
  const card = await readRates(context, defaults);
  rateCache.set(context.db, { at: Date.now(), card });
  return card;
}

async function readRates(context: ApiContext, defaults: RateCard): Promise<RateCard> {
  const rows = await context.db.selectFrom('rates').select(['name', 'amount']).execute();
  const card: { -readonly [name in keyof RateCard]: number } = { ...defaults };
  for (const row of rows) {
    if (rateNames.includes(row.name as keyof RateCard)) {
      card[row.name as keyof RateCard] = Number(row.amount);
    }
  }
  return card;
}

/** One usage event to charge: its idempotency key, the client's report, and what the key covers. */
export interface UsageItem {
  readonly key: string;
  readonly usage: UsageBody;
  /** What the key covers; default: the usage report itself. */
  readonly fingerprint?: unknown;
  /** The price agreed (minor units per unit of its kind); default: the rate card's now. */
  readonly price?: number | undefined;
}

/** The answer to one usage event, as POST /v1/usage gives it (status and body). */
export type UsageResult =
  | { readonly status: 200 | 201; readonly body: Charge }
  | { readonly status: 400 | 404 | 409 | 422; readonly body: { error: ApiErrorCode; message: string } };

const usageMemo = (usage: UsageBody) =>
  `${usage.kind} ${usage.quantity}${usage.packets === undefined ? '' : ` packets ${usage.packets}`}${usage.session === undefined ? '' : ` session ${usage.session}`}`;

/** Maps a ledger refusal to the answer the API gives for it. */
function refusalResult(
  error: LedgerError,
  account: string,
): Extract<UsageResult, { status: 400 | 404 | 409 | 422 }> {
  switch (error.code) {
    case 'GATECAST_ERR_IDEMPOTENCY_CONFLICT':
      return { status: 409, body: { error: 'conflict', message: error.message } };
    case 'GATECAST_ERR_UNKNOWN_ACCOUNT':
      return { status: 404, body: { error: 'not-found', message: `account: no account ${account}` } };
    case 'GATECAST_ERR_LEDGER_LIMIT':
      return { status: 422, body: { error: 'limit-exceeded', message: error.message } };
    default:
      return { status: 400, body: { error: 'invalid-request', message: error.message } };
  }
}

/** The first month a billing run accepts: nothing in the ledger can be older (docs/api.md). */
export const billingPeriodFirst = '2000-01';

/** The sessions that usage events name and the store does not hold. */
async function unknownSessions(context: ApiContext, items: readonly UsageItem[]): Promise<Set<string>> {
  const named = [
    ...new Set(items.flatMap((item) => (item.usage.session === undefined ? [] : [item.usage.session]))),
  ];
  if (named.length === 0) {
    return new Set();
  }
  const rows = await context.db.selectFrom('sessions').select('id').where('id', 'in', named).execute();
  const found = new Set(rows.map((row) => row.id));
  return new Set(named.filter((id) => !found.has(id)));
}

/**
 * Charges usage events in one transaction (group commit): each is rated by the card in force,
 * written once per idempotency key with its usage event beside it, and gets its own result. The
 * key covers the client's report, not the rated amount: a retry after a rate change returns the
 * stored charge.
 */
export async function chargeUsageMany(
  context: ApiContext,
  defaults: RateCard,
  items: readonly UsageItem[],
): Promise<UsageResult[]> {
  if (items.length === 0) {
    return [];
  }
  // A usage event names a session the server registered, or none: an unknown session is refused
  // before anything is written (sessions are ended, never deleted, so the check cannot go stale).
  const missing = await unknownSessions(context, items);
  if (missing.size > 0) {
    const known = items.flatMap((item, index) =>
      item.usage.session !== undefined && missing.has(item.usage.session) ? [] : [index],
    );
    const charged = await chargeUsageMany(
      context,
      defaults,
      known.map((index) => items[index] as UsageItem),
    );
    const results: UsageResult[] = items.map((item) => ({
      status: 404,
      body: { error: 'not-found', message: `body/session: no session ${item.usage.session ?? ''}` },
    }));
    known.forEach((index, at) => {
      results[index] = charged[at] as UsageResult;
    });
    return results;
  }
  const credit = await revenueAccount(context);
  const card = await currentRates(context, defaults);
  const requests: TransferRequest[] = items.map(({ key, usage, fingerprint, price }) => {
    let amount = 1;
    let refusal: LedgerError | undefined;
    try {
      amount = rate(card, usage.kind, usage.quantity, price);
    } catch (error) {
      if (!(error instanceof LedgerError)) {
        throw error;
      }
      refusal = error; // refused unless the key is known: then its stored charge is the answer
    }
    return {
      idempotencyKey: key,
      fingerprint: fingerprint ?? [
        'usage',
        usage.account,
        usage.kind,
        usage.quantity,
        usage.packets ?? null,
        usage.session ?? null,
      ],
      debit: usage.account,
      credit,
      amount,
      currency: context.currency,
      memo: usageMemo(usage),
      refusal,
    };
  });
  const createdAt = new Date().toISOString();
  const outcomes = await context.ledger.transferMany(requests, async (trx, written) => {
    if (written.length === 0) {
      return;
    }
    await insertRows(
      trx,
      context.store.dialect,
      'usage_events',
      written.map(({ index, id }) => {
        const usage = (items[index] as UsageItem).usage;
        return {
          id: timeOrderedId(),
          transfer: id,
          account: usage.account,
          kind: usage.kind,
          quantity: usage.quantity,
          packets: usage.packets ?? null,
          session: usage.session ?? null,
          created_at: createdAt,
        };
      }),
    );
  });
  return outcomes.map((outcome, index): UsageResult => {
    if (!outcome.ok) {
      return refusalResult(outcome.error, (items[index] as UsageItem).usage.account);
    }
    const { transfer } = outcome;
    return {
      status: transfer.replayed ? 200 : 201,
      body: {
        transfer: transfer.id,
        amount: transfer.amount,
        currency: transfer.currency,
        replayed: transfer.replayed,
      },
    };
  });
}

/** Charges one usage event (through chargeUsageMany); throws the ledger's refusal. */
export async function chargeUsage(
  context: ApiContext,
  defaults: RateCard,
  key: string,
  usage: UsageBody,
  fingerprint?: unknown,
  options: ChargeOptions = {},
): Promise<{ id: string; amount: number; replayed: boolean }> {
  const [result] = await chargeUsageMany(context, defaults, [
    { key, usage, fingerprint, price: options.price },
  ]);
  if (result === undefined || (result.status !== 200 && result.status !== 201)) {
    const body = result?.body as { error: string; message: string } | undefined;
    throw new LedgerError(
      body?.error === 'limit-exceeded'
        ? 'GATECAST_ERR_LEDGER_LIMIT'
        : body?.error === 'conflict'
          ? 'GATECAST_ERR_IDEMPOTENCY_CONFLICT'
          : body?.error === 'not-found'
            ? 'GATECAST_ERR_UNKNOWN_ACCOUNT'
            : 'GATECAST_ERR_LEDGER_INVALID',
      body?.message ?? 'refused',
    );
  }
  const charge = result.body as Charge;
  return { id: charge.transfer, amount: charge.amount, replayed: charge.replayed };
}

/**
 * Group commit: usage that arrives while a transaction is being written waits for the next one,
 * which writes it all together; each caller gets its own results. A caller's items (one event, or
 * one batch request) are never split over two transactions; several callers' items share one, up
 * to `eventsMax` events. One transaction (and one flush to disk) carries many charges, so a server
 * under load writes far fewer of them.
 */
export function createGroupCommitter(
  write: (items: readonly UsageItem[]) => Promise<UsageResult[]>,
  eventsMax: number,
) {
  let queue: Array<{
    items: readonly UsageItem[];
    resolve: (results: UsageResult[]) => void;
    reject: (error: Error) => void;
  }> = [];
  let writing = false;
  const drain = async () => {
    writing = true;
    while (queue.length > 0) {
      let taken = 1;
      let events = queue[0]?.items.length ?? 0;
      while (taken < queue.length && events + (queue[taken]?.items.length ?? 0) <= eventsMax) {
        events += queue[taken]?.items.length ?? 0;
        taken++;
      }
      const group = queue.slice(0, taken);
      queue = queue.slice(taken);
      try {
        const results = await write(group.flatMap((entry) => entry.items));
        let at = 0;
        for (const entry of group) {
          entry.resolve(results.slice(at, at + entry.items.length));
          at += entry.items.length;
        }
      } catch (error) {
        for (const entry of group) {
          entry.reject(error as Error);
        }
      }
    }
    writing = false;
  };
  return (items: readonly UsageItem[]): Promise<UsageResult[]> =>
    new Promise((resolve, reject) => {
      queue.push({ items, resolve, reject });
      if (!writing) {
        writing = true;
        setImmediate(() => void drain()); // gather what arrives in this turn of the event loop
      }
    });
}

/** Registers the billing routes. */
export function registerBillingRoutes(app: FastifyInstance, context: ApiContext, defaults: RateCard): void {
  const { db } = context;
  const commit = createGroupCommitter(
    (items) => chargeUsageMany(context, defaults, items),
    usageGroupCommitEventsMax,
  );
  registerReceiptRoutes(app, context);

  app.get(
    '/v1/rates',
    { preHandler: anyParty(context), schema: { response: { 200: Rates, 401: errorReplies[401] } } },
    async () => {
      return currentRates(context, defaults);
    },
  );

  app.put<{ Body: Static<typeof RatesUpdate> }>(
    '/v1/rates',
    {
      preHandler: operatorOnly(context, 'only the operator sets rates'),
      schema: { body: RatesUpdate, response: { 200: Rates, ...errorReplies } },
    },
    async (request, _reply) => {
      const now = new Date().toISOString();
      await context.store.writeTransaction(async (trx) => {
        for (const [name, amount] of Object.entries(request.body)) {
          await trx
            .insertInto('rates')
            .values({ name, amount, updated_at: now })
            .onConflict((oc) => oc.column('name').doUpdateSet({ amount, updated_at: now }))
            .execute();
        }
      });
      rateCache.delete(context.db);
      return currentRates(context, defaults);
    },
  );

  app.post<{ Body: UsageBody; Headers: Static<typeof IdempotencyHeaders> }>(
    '/v1/usage',
    {
      preHandler: operatorOnly(context, 'usage is reported by the operator’s servers'),
      schema: {
        body: UsageBody,
        headers: IdempotencyHeaders,
        response: { 200: Charge, 201: Charge, ...errorReplies },
      },
    },
    async (request, reply) => {
      const reserved = reservedKeyRefusal(request.headers['idempotency-key'], 'headers/idempotency-key');
      if (reserved !== undefined) {
        return badRequest(reply, reserved);
      }
      const [result] = await commit([{ key: request.headers['idempotency-key'], usage: request.body }]);
      if (result === undefined) {
        throw new Error('a charge of one has one result');
      }
      return reply.code(result.status).send(result.body);
    },
  );

  app.post<{ Body: Static<typeof UsageBatchBody> }>(
    '/v1/usage/batch',
    {
      preHandler: operatorOnly(context, 'usage is reported by the operator’s servers'),
      bodyLimit: usageBatchBodyBytesMax,
      schema: { body: UsageBatchBody, response: { 200: UsageBatchResult, ...errorReplies } },
    },
    async (request, reply) => {
      for (const [index, event] of request.body.events.entries()) {
        const reserved = reservedKeyRefusal(event.key, `body/events/${index}/key`);
        if (reserved !== undefined) {
          return badRequest(reply, reserved);
        }
      }
      const items = request.body.events.map(({ key, ...usage }) => ({ key, usage }));
      const results = await commit(items); // one transaction, maybe shared with concurrent reports
      return {
        results: results.map((result, index) => ({
          key: (items[index] as UsageItem).key,
          status: result.status,
          ...result.body,
        })),
      };
    },
  );

  app.get<{ Querystring: Static<typeof UsageQuery> }>(
    '/v1/usage',
    {
      preHandler: operatorOrSelf<{ Querystring: Static<typeof UsageQuery> }>(
        context,
        (request) => request.query.account,
        'a party reads only its own usage',
      ),
      schema: { querystring: UsageQuery, response: { 200: UsageEventList, ...errorReplies } },
    },
    async (request) => {
      const { account, period } = request.query;
      const { from, to } = periodBounds(period);
      const rows = await db
        .selectFrom('usage_events')
        .selectAll()
        .where('account', '=', account)
        .where('created_at', '>=', from)
        .where('created_at', '<', to)
        .orderBy('created_at')
        .execute();
      return rows.map((row) => ({
        id: row.id,
        transfer: row.transfer,
        account: row.account,
        kind: row.kind,
        quantity: Number(row.quantity),
        packets: row.packets === null ? null : Number(row.packets),
        session: row.session,
        at: row.created_at,
      }));
    },
  );

  app.post<{ Body: Static<typeof RunBody> }>(
    '/v1/billing/run',
    {
      preHandler: operatorOnly(context, 'only the operator runs billing'),
      schema: { body: RunBody, response: { 200: BillingRunResult, ...errorReplies } },
    },
    async (request, reply) => {
      const { period } = request.body;
      const { from, to } = periodBounds(period);
      if (Date.parse(from) > Date.now()) {
        return badRequest(
          reply,
          `body/period: ${period} has not begun; a month is billed once it has started`,
        );
      }
      if (period < billingPeriodFirst) {
        return badRequest(
          reply,
          `body/period: ${period} is before ${billingPeriodFirst}, the first month the ledger can hold`,
        );
      }
      const rows = await db
        .selectFrom('entitlements')
        .select(['id', 'subscriber', 'service', 'monthly', 'valid_from', 'valid_to'])
        .where('monthly', 'is not', null)
        .execute();
      const credit = await revenueAccount(context);
      let charged = 0;
      let replayed = 0;
      let amount = 0;
      // An entitlement the ledger refuses (its subscriber's total would pass the bound) is named in
      // the answer and the run goes on: it must not keep every other subscriber from being billed.
      const refused: Array<{ entitlement: string; error: ApiErrorCode; message: string }> = [];
      for (const row of rows) {
        const monthly = Number(row.monthly);
        const overlaps =
          (row.valid_from === null || row.valid_from < to) && (row.valid_to === null || row.valid_to > from);
        if (monthly <= 0 || !overlaps) {
          continue;
        }
        const [outcome] = await context.ledger.transferMany([
          {
            idempotencyKey: `subscription/${row.id}/${period}`,
            debit: row.subscriber,
            credit,
            amount: monthly,
            currency: context.currency,
            memo: `subscription ${row.service} ${period}`,
          },
        ]);
        if (outcome === undefined) {
          throw new Error('a batch of one has one outcome');
        }
        if (!outcome.ok) {
          const { body } = refusalResult(outcome.error, row.subscriber);
          refused.push({ entitlement: row.id, error: body.error, message: body.message });
        } else if (outcome.transfer.replayed) {
          replayed++;
        } else {
          charged++;
          amount += outcome.transfer.amount;
        }
      }
      return { period, charged, replayed, amount, refused };
    },
  );

  app.get<{ Querystring: Static<typeof InvoiceQuery> }>(
    '/v1/invoices',
    {
      preHandler: operatorOrSelf<{ Querystring: Static<typeof InvoiceQuery> }>(
        context,
        (request) => request.query.account,
        'a party reads only its own invoices',
      ),
      schema: { querystring: InvoiceQuery, response: { 200: Invoice, ...errorReplies } },
    },
    async (request, reply) => {
      const { account, period } = request.query;
      const known = await db
        .selectFrom('accounts')
        .select(['id', 'currency'])
        .where('id', '=', account)
        .executeTakeFirst();
      if (known === undefined) {
        return notFound(reply, `querystring/account: no account ${account}`);
      }
      const { from, to } = periodBounds(period);
      const rows = await db
        .selectFrom('transfers')
        .selectAll()
        .where((eb) => eb.or([eb('debit_account', '=', account), eb('credit_account', '=', account)]))
        .where('created_at', '>=', from)
        .where('created_at', '<', to)
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      const lines = rows.map((row) => ({
        transfer: row.id,
        at: row.created_at,
        memo: row.memo,
        amount: row.debit_account === account ? Number(row.amount) : -Number(row.amount),
      }));
      const charges = lines.filter((l) => l.amount > 0).reduce((sum, l) => sum + l.amount, 0);
      const credits = -lines.filter((l) => l.amount < 0).reduce((sum, l) => sum + l.amount, 0);
      return {
        account,
        period,
        currency: known.currency,
        from,
        to,
        lines,
        charges,
        credits,
        total: charges - credits,
      };
    },
  );

  app.get(
    '/v1/ledger.csv',
    {
      preHandler: operatorOnly(context, 'only the operator exports the ledger'),
      schema: { response: { 401: errorReplies[401], 403: errorReplies[403] } },
    },
    async (_request, reply) => {
      const rows = await db.selectFrom('transfers').selectAll().orderBy('created_at').orderBy('id').execute();
      const quote = (value: string) => (/[",\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value);
      const lines = ['id,created_at,idempotency_key,debit,credit,amount,currency,memo'];
      for (const row of rows) {
        lines.push(
          [
            row.id,
            row.created_at,
            row.idempotency_key,
            row.debit_account,
            row.credit_account,
            String(row.amount),
            row.currency,
            row.memo,
          ]
            .map(quote)
            .join(','),
        );
      }
      return reply.type('text/csv; charset=utf-8').send(`${lines.join('\n')}\n`);
    },
  );
}

/** The billing role over the API context: what the subscription role calls, and the routes it serves. */
export const createBilling: BillingFactory = (context, defaults = rateCardDefault): BillingService => ({
  chargeUsage: (key, usage, fingerprint, options) =>
    chargeUsage(context, defaults, key, usage, fingerprint, options),
  currentRates: () => currentRates(context, defaults),
  registerPurse: async (tokenId, registration) => {
    const answer = await registerPurse(context, tokenId, registration);
    return 'body' in answer
      ? { ok: true, account: answer.body.account, created: answer.body.created }
      : {
          ok: false,
          status: answer.status === 409 ? 409 : answer.status === 404 ? 404 : 400,
          message: answer.message,
        };
  },
  register: (app) => registerBillingRoutes(app, context, defaults),
});
