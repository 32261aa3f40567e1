/**
 * The subscription server's HTTP API (Fastify), built apart from any listening socket so tests use
 * app.inject(). Every request is validated by schema (extra, missing, wrong-typed and oversized
 * fields are a 400 naming the field, and nothing is written); the OpenAPI document is served at
 * GET /openapi.json. Parties authenticate with bearer tokens stored hashed.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import swagger from '@fastify/swagger';
import { type Static, Type } from '@sinclair/typebox';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Store } from '../store/database.js';
import { createLedger, LedgerError } from '../store/ledger.js';

/** Roles a token can hold. */
export type PartyKind = 'operator' | 'source' | 'subscriber';

interface Party {
  id: string;
  kind: PartyKind;
  name: string;
}

const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');
const newToken = () => `gct_${randomBytes(24).toString('base64url')}`;

const Name = Type.String({ minLength: 1, maxLength: 200 });
const Id = Type.String({ minLength: 1, maxLength: 100 });
const Timestamp = Type.String({ format: 'date-time', maxLength: 40 });
const PartyBody = Type.Object({ name: Name }, { additionalProperties: false });
const PartyCreated = Type.Object({ id: Id, name: Name, kind: Type.String(), token: Type.String() });
const EntitlementBody = Type.Object(
  {
    subscriber: Id,
    service: Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z][a-z0-9-]*$' }),
    session: Type.Optional(Id),
    from: Type.Optional(Timestamp),
    to: Type.Optional(Timestamp),
  },
  { additionalProperties: false },
);
const Entitlement = Type.Object({
  id: Id,
  subscriber: Id,
  service: Type.String(),
  session: Type.Union([Id, Type.Null()]),
  from: Type.Union([Type.String(), Type.Null()]),
  to: Type.Union([Type.String(), Type.Null()]),
});
const CheckQuery = Type.Object(
  { subscriber: Id, service: Type.String({ minLength: 1, maxLength: 64 }), session: Type.Optional(Id) },
  { additionalProperties: false },
);
const CheckResult = Type.Object({ allowed: Type.Boolean(), reason: Type.String() });
const Balance = Type.Object({ account: Id, balance: Type.Integer(), currency: Type.String() });
const ErrorBody = Type.Object({ error: Type.String(), message: Type.String() });
const UsageBody = Type.Object(
  {
    account: Id,
    kind: Type.Union([
      Type.Literal('repair-bytes'),
      Type.Literal('pay-as-you-go-bytes'),
      Type.Literal('source-repair-seconds'),
    ]),
    quantity: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }),
    session: Type.Optional(Id),
  },
  { additionalProperties: false },
);
const UsageHeaders = Type.Object({ 'idempotency-key': Type.String({ minLength: 1, maxLength: 200 }) });
const Charge = Type.Object({
  transfer: Id,
  amount: Type.Integer(),
  currency: Type.String(),
  replayed: Type.Boolean(),
});

/** Rating rules: minor units per unit of usage (docs/architecture.md, "Rating"). */
export interface RateCard {
  /** Per 10^9 bytes repaired for a subscriber. */
  readonly repairPerGigabyte: number;
  /** Per 10^6 bytes of a pay-as-you-go stream. */
  readonly payAsYouGoPerMegabyte: number;
  /** Per hour of a source's repaired session. */
  readonly sourceRepairPerHour: number;
}
export const rateCardDefault: RateCard = {
  repairPerGigabyte: 50,
  payAsYouGoPerMegabyte: 1,
  sourceRepairPerHour: 100,
};

/** Rates a usage event: the charge in minor units, rounded up (a started unit is charged). */
export function rate(card: RateCard, kind: Static<typeof UsageBody>['kind'], quantity: number): number {
  const [price, unit] =
    kind === 'repair-bytes'
      ? [card.repairPerGigabyte, 1_000_000_000n]
      : kind === 'pay-as-you-go-bytes'
        ? [card.payAsYouGoPerMegabyte, 1_000_000n]
        : [card.sourceRepairPerHour, 3600n];
  const total = BigInt(quantity) * BigInt(price);
  return Number((total + unit - 1n) / unit);
}

/** Options of the app. */
export interface SubscriptionAppOptions {
  readonly store: Store;
  /** The operator's token; one is made when absent and the store has no operator yet. */
  readonly operatorToken?: string | undefined;
  /** Told the operator token the first time one is made (shown once). */
  readonly onOperatorTokenCreated?: (token: string) => void;
  readonly currency?: string;
  readonly rates?: RateCard;
}

/** Builds the app (not listening). */
export async function buildSubscriptionApp(options: SubscriptionAppOptions): Promise<FastifyInstance> {
  const { store } = options;
  const { db } = store;
  const ledger = createLedger(store);
  const currency = options.currency ?? 'EUR';
  await ensureOperator(options);

  const app = Fastify({
    logger: false,
    bodyLimit: 16 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'gatecast subscription server', version: '1' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  app.setErrorHandler((error: Error & { validation?: unknown; statusCode?: number }, _request, reply) => {
    if (error.validation !== undefined) {
      return reply.code(400).send({ error: 'invalid-request', message: error.message });
    }
    const status = error.statusCode ?? 500;
    return reply.code(status).send({ error: status === 500 ? 'internal' : 'error', message: error.message });
  });

  /** Resolves the bearer token to a party, or answers 401. */
  const authenticate = async (request: FastifyRequest, reply: FastifyReply): Promise<Party | undefined> => {
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer ([A-Za-z0-9_\-.]{8,200})$/.exec(header) : null;
    if (!match?.[1]) {
      await reply.code(401).send({ error: 'unauthorized', message: 'a bearer token is required' });
      return undefined;
    }
    const party = await db
      .selectFrom('parties')
      .select(['id', 'kind', 'name'])
      .where('token_hash', '=', hashToken(match[1]))
      .executeTakeFirst();
    if (party === undefined) {
      await reply.code(401).send({ error: 'unauthorized', message: 'unknown token' });
      return undefined;
    }
    return party as Party;
  };
  const forbid = (reply: FastifyReply, message: string) =>
    reply.code(403).send({ error: 'forbidden', message });

  const createParty =
    (kind: PartyKind) =>
    async (request: FastifyRequest<{ Body: Static<typeof PartyBody> }>, reply: FastifyReply) => {
      const caller = await authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      if (caller.kind !== 'operator') {
        return forbid(reply, 'only the operator creates parties');
      }
      const token = newToken();
      const id = randomUUID();
      await db.transaction().execute(async (trx) => {
        await trx
          .insertInto('parties')
          .values({
            id,
            kind,
            name: request.body.name,
            token_hash: hashToken(token),
            created_at: new Date().toISOString(),
          })
          .execute();
        await trx
          .insertInto('accounts')
          .values({ id, name: request.body.name, kind, currency, created_at: new Date().toISOString() })
          .execute();
      });
      return reply.code(201).send({ id, name: request.body.name, kind, token });
    };
  const partyRoute = {
    schema: {
      body: PartyBody,
      response: { 201: PartyCreated, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody },
    },
  };
  app.post('/v1/subscribers', partyRoute, createParty('subscriber'));
  app.post('/v1/sources', partyRoute, createParty('source'));

  app.post<{ Body: Static<typeof EntitlementBody> }>(
    '/v1/entitlements',
    {
      schema: {
        body: EntitlementBody,
        response: { 201: Entitlement, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
      },
    },
    async (request, reply) => {
      const caller = await authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      if (caller.kind !== 'operator') {
        return forbid(reply, 'only the operator grants services');
      }
      const body = request.body;
      if (body.from !== undefined && body.to !== undefined && Date.parse(body.from) >= Date.parse(body.to)) {
        return reply.code(400).send({ error: 'invalid-request', message: 'body/to must be after body/from' });
      }
      const subscriber = await db
        .selectFrom('parties')
        .select('kind')
        .where('id', '=', body.subscriber)
        .executeTakeFirst();
      if (subscriber?.kind !== 'subscriber') {
        return reply
          .code(404)
          .send({ error: 'not-found', message: `body/subscriber: no subscriber ${body.subscriber}` });
      }
      const row = {
        id: randomUUID(),
        subscriber: body.subscriber,
        service: body.service,
        session: body.session ?? null,
        valid_from: body.from ?? null,
        valid_to: body.to ?? null,
        created_at: new Date().toISOString(),
      };
      await db.insertInto('entitlements').values(row).execute();
      return reply.code(201).send({ ...row, from: row.valid_from, to: row.valid_to });
    },
  );

  app.get<{ Querystring: Static<typeof CheckQuery> }>(
    '/v1/entitlements/check',
    {
      schema: {
        querystring: CheckQuery,
        response: { 200: CheckResult, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody },
      },
    },
    async (request, reply) => {
      const caller = await authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      const { subscriber, service, session } = request.query;
      if (caller.kind === 'subscriber' && caller.id !== subscriber) {
        return forbid(reply, 'a subscriber reads only its own entitlements');
      }
      if (caller.kind === 'source') {
        return forbid(reply, 'a source does not read entitlements');
      }
      const rows = await db
        .selectFrom('entitlements')
        .selectAll()
        .where('subscriber', '=', subscriber)
        .where('service', '=', service)
        .execute();
      const now = Date.now();
      const matching = rows.filter((row) => row.session === null || row.session === session);
      if (matching.length === 0) {
        return { allowed: false, reason: `no ${service} entitlement` };
      }
      const current = matching.find(
        (row) =>
          (row.valid_from === null || Date.parse(row.valid_from) <= now) &&
          (row.valid_to === null || now < Date.parse(row.valid_to)),
      );
      return current === undefined
        ? { allowed: false, reason: `the ${service} entitlement is outside its validity window` }
        : { allowed: true, reason: `entitled to ${service}` };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/accounts/:id/balance',
    {
      schema: {
        params: Type.Object({ id: Id }),
        response: { 200: Balance, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
      },
    },
    async (request, reply) => {
      const caller = await authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      if (caller.kind !== 'operator' && caller.id !== request.params.id) {
        return forbid(reply, 'a party reads only its own account');
      }
      const account = await db
        .selectFrom('accounts')
        .select(['id', 'currency'])
        .where('id', '=', request.params.id)
        .executeTakeFirst();
      if (account === undefined) {
        return reply.code(404).send({ error: 'not-found', message: `no account ${request.params.id}` });
      }
      return { account: account.id, balance: await ledger.balance(account.id), currency: account.currency };
    },
  );

  const revenueAccount = 'operator-revenue';
  app.post<{ Body: Static<typeof UsageBody>; Headers: Static<typeof UsageHeaders> }>(
    '/v1/usage',
    {
      schema: {
        body: UsageBody,
        headers: UsageHeaders,
        response: {
          200: Charge,
          201: Charge,
          400: ErrorBody,
          401: ErrorBody,
          403: ErrorBody,
          404: ErrorBody,
          409: ErrorBody,
        },
      },
    },
    async (request, reply) => {
      const caller = await authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      if (caller.kind !== 'operator') {
        return forbid(reply, 'usage is reported by the operator’s servers');
      }
      const { account, kind, quantity, session } = request.body;
      const known = await db.selectFrom('accounts').select('id').where('id', '=', account).executeTakeFirst();
      if (known === undefined) {
        return reply.code(404).send({ error: 'not-found', message: `body/account: no account ${account}` });
      }
      const revenue = await db
        .selectFrom('accounts')
        .select('id')
        .where('id', '=', revenueAccount)
        .executeTakeFirst();
      if (revenue === undefined) {
        await ledger
          .createAccount({ id: revenueAccount, name: 'operator revenue', kind: 'revenue', currency })
          .catch(() => undefined);
      }
      try {
        const transfer = await ledger.transfer({
          idempotencyKey: request.headers['idempotency-key'],
          debit: account,
          credit: revenueAccount,
          amount: rate(options.rates ?? rateCardDefault, kind, quantity),
          currency,
          memo: `${kind} ${quantity}${session === undefined ? '' : ` session ${session}`}`,
        });
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
        if (error instanceof LedgerError) {
          return reply.code(400).send({ error: 'invalid-request', message: error.message });
        }
        throw error;
      }
    },
  );

  app.get(
    '/v1/ledger.csv',
    { schema: { response: { 401: ErrorBody, 403: ErrorBody } } },
    async (request, reply) => {
      const caller = await authenticate(request, reply);
      if (caller === undefined) {
        return reply;
      }
      if (caller.kind !== 'operator') {
        return forbid(reply, 'only the operator exports the ledger');
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

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  await app.ready();
  return app;
}

/** Makes sure an operator can log in: from the given token, or a new one shown once. */
async function ensureOperator(options: SubscriptionAppOptions): Promise<void> {
  const { db } = options.store;
  const now = new Date().toISOString();
  if (options.operatorToken !== undefined) {
    const hash = hashToken(options.operatorToken);
    const known = await db
      .selectFrom('parties')
      .select('id')
      .where('token_hash', '=', hash)
      .executeTakeFirst();
    if (known === undefined) {
      await db
        .insertInto('parties')
        .values({ id: randomUUID(), kind: 'operator', name: 'operator', token_hash: hash, created_at: now })
        .execute();
    }
    return;
  }
  const operator = await db
    .selectFrom('parties')
    .select('id')
    .where('kind', '=', 'operator')
    .executeTakeFirst();
  if (operator === undefined) {
    const token = newToken();
    await db
      .insertInto('parties')
      .values({
        id: randomUUID(),
        kind: 'operator',
        name: 'operator',
        token_hash: hashToken(token),
        created_at: now,
      })
      .execute();
    options.onOperatorTokenCreated?.(token);
  }
}
