/**
 * The billing routes: the rate card, usage events rated into the ledger, subscriptions charged per
 * period, invoices per account and period, and the ledger as CSV (docs/api.md, "Billing").
 */
import { randomUUID } from 'node:crypto';
import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { rateCacheMs } from '../limits.js';
import { LedgerError } from '../store/ledger.js';
import {
  type ApiContext,
  badRequest,
  errorReplies,
  forbid,
  Id,
  notFound,
  operatorOnly,
  Period,
  periodBounds,
  revenueAccount,
} from './context.js';

/** Rating rules: minor units per unit of usage. */
export interface RateCard {
  /** Per 10^9 bytes repaired for a subscriber. */
  readonly repairPerGigabyte: number;
  /** Per 10^6 bytes of a pay-as-you-go stream. */
  readonly payAsYouGoPerMegabyte: number;
  /** Per minute of a pay-as-you-go stream. */
  readonly payAsYouGoPerMinute: number;
  /** Per hour of a source's repaired session. */
  readonly sourceRepairPerHour: number;
}
export const rateCardDefault: RateCard = {
  repairPerGigabyte: 50,
  payAsYouGoPerMegabyte: 1,
  payAsYouGoPerMinute: 2,
  sourceRepairPerHour: 100,
};
const rateNames = Object.keys(rateCardDefault) as Array<keyof RateCard>;

export const usageKinds = [
  'repair-bytes',
  'pay-as-you-go-bytes',
  'pay-as-you-go-seconds',
  'source-repair-seconds',
] as const;
export type UsageKind = (typeof usageKinds)[number];

/** Rates a usage event: quantity × price ÷ unit, rounded up to a whole minor unit. */
export function rate(card: RateCard, kind: UsageKind, quantity: number): number {
  const [price, unit]: [number, bigint] =
    kind === 'repair-bytes'
      ? [card.repairPerGigabyte, 1_000_000_000n]
      : kind === 'pay-as-you-go-bytes'
        ? [card.payAsYouGoPerMegabyte, 1_000_000n]
        : kind === 'pay-as-you-go-seconds'
          ? [card.payAsYouGoPerMinute, 60n]
          : [card.sourceRepairPerHour, 3600n];
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

const RatePrice = Type.Integer({ minimum: 1, maximum: 1_000_000_000_000 });
const Rates = Type.Object(
  Object.fromEntries(rateNames.map((name) => [name, RatePrice])) as Record<keyof RateCard, typeof RatePrice>,
  { additionalProperties: false },
);
const RatesUpdate = Type.Partial(Rates, { additionalProperties: false, minProperties: 1 });
const UsageBody = Type.Object(
  {
    account: Id,
    kind: Type.Union(usageKinds.map((kind) => Type.Literal(kind))),
    quantity: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    /** Packets repaired, for repair-bytes (reported, not rated). */
    packets: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
    session: Type.Optional(Id),
  },
  { additionalProperties: false },
);
const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.String({ minLength: 1, maxLength: 200 }),
});
const Charge = Type.Object({
  transfer: Id,
  amount: Type.Integer(),
  currency: Type.String(),
  replayed: Type.Boolean(),
});
const InvoiceQuery = Type.Object({ account: Id, period: Period }, { additionalProperties: false });
const Invoice = Type.Object({
  account: Id,
  period: Type.String(),
  currency: Type.String(),
  from: Type.String(),
  to: Type.String(),
  lines: Type.Array(
    Type.Object({
      transfer: Id,
      at: Type.String(),
      memo: Type.String(),
      /** Positive: charged to the account; negative: credited to it. */
      amount: Type.Integer(),
    }),
  ),
  charges: Type.Integer(),
  credits: Type.Integer(),
  total: Type.Integer(),
});
const UsageQuery = Type.Object({ account: Id, period: Period }, { additionalProperties: false });
const UsageEvent = Type.Object({
  id: Id,
  transfer: Id,
  account: Id,
  kind: Type.String(),
  quantity: Type.Integer(),
  packets: Type.Union([Type.Integer(), Type.Null()]),
  session: Type.Union([Id, Type.Null()]),
  at: Type.String(),
});
const RunBody = Type.Object({ period: Period }, { additionalProperties: false });
const RunResult = Type.Object({
  period: Type.String(),
  charged: Type.Integer(),
  replayed: Type.Integer(),
  amount: Type.Integer(),
});

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
  const card: Record<string, number> = { ...defaults };
  for (const row of rows) {
    if (row.name in card) {
      card[row.name] = Number(row.amount);
    }
  }
  return card as unknown as RateCard;
}

/** Charges an account for rated usage under an idempotency key, with the usage event beside it. */
export async function chargeUsage(
  context: ApiContext,
  defaults: RateCard,
  key: string,
  usage: Static<typeof UsageBody>,
  fingerprint?: unknown,
) {
  const credit = await revenueAccount(context);
  const amount = rate(await currentRates(context, defaults), usage.kind, usage.quantity);
  const packets = usage.packets === undefined ? '' : ` packets ${usage.packets}`;
  return context.ledger.transfer(
    {
      idempotencyKey: key,
      // The key covers the client's request, not the rated amount: a retry after the operator
      // changed the rates gets the stored charge.
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
      memo: `${usage.kind} ${usage.quantity}${packets}${usage.session === undefined ? '' : ` session ${usage.session}`}`,
    },
    async (trx, transfer) => {
      await trx
        .insertInto('usage_events')
        .values({
          id: randomUUID(),
          transfer,
          account: usage.account,
          kind: usage.kind,
          quantity: usage.quantity,
          packets: usage.packets ?? null,
          session: usage.session ?? null,
          created_at: new Date().toISOString(),
        })
        .execute();
    },
  );
}

/** Registers the billing routes. */
export function registerBillingRoutes(app: FastifyInstance, context: ApiContext, defaults: RateCard): void {
  const { db } = context;

  app.get(
    '/v1/rates',
    { schema: { response: { 200: Rates, 401: errorReplies[401] } } },
    async (request, reply) => {
      if ((await context.authenticate(request, reply)) === undefined) {
        return reply;
      }
      return currentRates(context, defaults);
    },
  );

  app.put<{ Body: Static<typeof RatesUpdate> }>(
    '/v1/rates',
    { schema: { body: RatesUpdate, response: { 200: Rates, ...errorReplies } } },
    async (request, reply) => {
      const operator = await operatorOnly(
        context.authenticate,
        request,
        reply,
        'only the operator sets rates',
      );
      if (operator === undefined) {
        return reply;
      }
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

  app.post<{ Body: Static<typeof UsageBody>; Headers: Static<typeof IdempotencyHeaders> }>(
    '/v1/usage',
    {
      schema: {
        body: UsageBody,
        headers: IdempotencyHeaders,
        response: { 200: Charge, 201: Charge, ...errorReplies },
      },
    },
    async (request, reply) => {
      const operator = await operatorOnly(
        context.authenticate,
        request,
        reply,
        'usage is reported by the operator’s servers',
      );
      if (operator === undefined) {
        return reply;
      }
      try {
        const transfer = await chargeUsage(
          context,
          defaults,
          request.headers['idempotency-key'],
          request.body,
        );
        return reply.code(transfer.replayed ? 200 : 201).send({
          transfer: transfer.id,
          amount: transfer.amount,
          currency: transfer.currency,
          replayed: transfer.replayed,
        });
      } catch (error) {
        if (error instanceof LedgerError && error.code === 'GATECAST_ERR_IDEMPOTENCY_CONFLICT') {
          return reply.code(409).send({ error: 'conflict', message: error.message });
        }
        if (error instanceof LedgerError && error.code === 'GATECAST_ERR_UNKNOWN_ACCOUNT') {
          // The ledger checks both accounts inside its transaction: no separate look-up first.
          return notFound(reply, `body/account: no account ${request.body.account}`);
        }
        if (error instanceof LedgerError && error.code === 'GATECAST_ERR_LEDGER_LIMIT') {
          return reply.code(422).send({ error: 'limit-exceeded', message: error.message });
        }
        if (error instanceof LedgerError) {
          return badRequest(reply, error.message);
        }
        throw error;
      }
    },
  );

  app.get<{ Querystring: Static<typeof UsageQuery> }>(
    '/v1/usage',
    { schema: { querystring: UsageQuery, response: { 200: Type.Array(UsageEvent), ...errorReplies } } },
    async (request, reply) => {
      const caller = await context.authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      const { account, period } = request.query;
      if (caller.kind !== 'operator' && caller.id !== account) {
        return forbid(reply, 'a party reads only its own usage');
      }
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
    { schema: { body: RunBody, response: { 200: RunResult, ...errorReplies } } },
    async (request, reply) => {
      const operator = await operatorOnly(
        context.authenticate,
        request,
        reply,
        'only the operator runs billing',
      );
      if (operator === undefined) {
        return reply;
      }
      const { period } = request.body;
      const { from, to } = periodBounds(period);
      if (Date.parse(from) > Date.now()) {
        return badRequest(
          reply,
          `body/period: ${period} has not begun; a month is billed once it has started`,
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
      for (const row of rows) {
        const monthly = Number(row.monthly);
        const overlaps =
          (row.valid_from === null || row.valid_from < to) && (row.valid_to === null || row.valid_to > from);
        if (monthly <= 0 || !overlaps) {
          continue;
        }
        const transfer = await context.ledger.transfer({
          idempotencyKey: `subscription/${row.id}/${period}`,
          debit: row.subscriber,
          credit,
          amount: monthly,
          currency: context.currency,
          memo: `subscription ${row.service} ${period}`,
        });
        if (transfer.replayed) {
          replayed++;
        } else {
          charged++;
          amount += transfer.amount;
        }
      }
      return { period, charged, replayed, amount };
    },
  );

  app.get<{ Querystring: Static<typeof InvoiceQuery> }>(
    '/v1/invoices',
    { schema: { querystring: InvoiceQuery, response: { 200: Invoice, ...errorReplies } } },
    async (request, reply) => {
      const caller = await context.authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      const { account, period } = request.query;
      if (caller.kind !== 'operator' && caller.id !== account) {
        return forbid(reply, 'a party reads only its own invoices');
      }
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
    { schema: { response: { 401: errorReplies[401], 403: errorReplies[403] } } },
    async (request, reply) => {
      const operator = await operatorOnly(
        context.authenticate,
        request,
        reply,
        'only the operator exports the ledger',
      );
      if (operator === undefined) {
        return reply;
      }
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
