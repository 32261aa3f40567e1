/**
 * The subscription server's HTTP API (Fastify), built apart from any listening socket so tests use
 * app.inject(). Every request is validated by schema (extra, missing, wrong-typed and oversized
 * fields are a 400 naming the field, and nothing is written); the OpenAPI document is served at
 * GET /openapi.json. Parties authenticate with bearer tokens stored hashed.
 */
import { randomUUID } from 'node:crypto';
import swagger from '@fastify/swagger';
import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest, preHandlerAsyncHookHandler } from 'fastify';
import type { BillingFactory, RateCard } from '../api/billing.js';
import { subscriptionBodyBytesMax } from '../limits.js';
import { InvalidArgumentError } from '../net/errors.js';
import { bearerToken } from '../net/http.js';
import { createHttpApp, type HttpServerLimits } from '../net/http-server.js';
import type { TlsFiles } from '../net/tls.js';
import {
  Balance,
  CheckResult,
  Entitlement,
  EntitlementList,
  PartyCreated,
  ServiceList,
  TokenList,
  Whoami,
} from '../protocol/api-subscription.js';
import type { Store } from '../store/database.js';
import { createLedger } from '../store/ledger.js';
import { nameKey } from '../store/names.js';
import {
  type ApiContext,
  anyParty,
  badRequest,
  callerOf,
  ErrorBody,
  errorReplies,
  hashToken,
  Id,
  Name,
  newToken,
  notFound,
  type OperatorAuthority,
  operatorOnly,
  operatorOrSelf,
  type Party,
  type PartyKind,
  presentEntitlement,
  type SetupSender,
  Timestamp,
} from './context.js';
import { refreshSetups, registerSessionRoutes } from './sessions.js';
import { registerTokenRoutes } from './tokens.js';

export type { PartyKind } from './context.js';

const PartyBody = Type.Object({ name: Name }, { additionalProperties: false });
/** The services a subscriber can be granted (a source buys repair on its session instead). */
export const services = [
  { name: 'repair', description: 'repair of a session for this recipient (flow A), rated per GB repaired' },
  { name: 'channel', description: 'a channel subscription, charged per month by the billing run' },
  { name: 'pay-as-you-go', description: 'a stream charged per MB or per minute received' },
] as const;
const ServiceName = Type.Union(services.map((service) => Type.Literal(service.name)));
const EntitlementBody = Type.Object(
  {
    subscriber: Id,
    service: ServiceName,
    session: Type.Optional(Id),
    from: Type.Optional(Timestamp),
    to: Type.Optional(Timestamp),
    /** Minor units charged per started calendar month by the billing run. */
    monthly: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000_000_000 })),
  },
  { additionalProperties: false },
);
const EntitlementQuery = Type.Object({ subscriber: Id }, { additionalProperties: false });
const CheckQuery = Type.Object(
  { subscriber: Id, service: Type.String({ minLength: 1, maxLength: 64 }), session: Type.Optional(Id) },
  { additionalProperties: false },
);

/** Options of the app. */
export interface SubscriptionAppOptions {
  readonly store: Store;
  /** The operator's token; one is made when absent and the store has no operator yet. */
  readonly operatorToken?: string | undefined;
  /** Told the operator token the first time one is made (shown once). */
  readonly onOperatorTokenCreated?: (token: string) => void;
  /**
   * A token that authenticates as the operator without being stored: `gatecast admin --db` uses it
   * to drive the API in-process.
   */
  readonly trustedOperatorToken?: string | undefined;
  readonly currency?: string;
  /** Default rates; the operator may override them with PUT /v1/rates. */
  readonly rates?: RateCard | undefined;
  /** Builds the billing role (src/billing/), which this role calls through its interface. */
  readonly billing: BillingFactory;
  /** Sends SETUP to retransmit servers (flow B); without it, sessions cannot buy repair. */
  readonly setup?: SetupSender | undefined;
  /**
   * Which routes to serve: parties, entitlements and balances always; sessions and the server
   * registry with `subscription`; rates, usage, billing runs, invoices and the export with
   * `billing`. Default: both.
   */
  readonly roles?: readonly ('subscription' | 'billing')[] | undefined;
  /** The operator root key and restricted products: enrollment grants and signed top-ups. */
  readonly authority?: OperatorAuthority | undefined;
  /** Serve HTTPS with this certificate and key. */
  readonly tls?: TlsFiles | undefined;
  /** Re-send SETUP join for the open sessions that bought repair this often (off when absent). */
  readonly setupRefreshMs?: number | undefined;
  /** Told of every internal error (a 500), e.g. to log it. */
  readonly onInternalError?: ((error: Error) => void) | undefined;
  /** Bounds of the HTTP server (defaults from src/limits.ts). */
  readonly httpLimits?: Partial<HttpServerLimits> | undefined;
  /**
   * Other roles served on the same app and store (the order role): each registers its routes with
   * the same context (store, authentication, billing). The CLI composes them.
   */
  readonly plugins?: readonly ((app: FastifyInstance, context: ApiContext) => void)[] | undefined;
  /**
   * Adds routes of other roles composed into the same server (the console), before the app is
   * ready; they get this role's operator check as a preHandler.
   */
  readonly extend?:
    | ((app: FastifyInstance, auth: { operatorOnly: preHandlerAsyncHookHandler }) => void | Promise<void>)
    | undefined;
}

/** Builds the app (not listening). */
export async function buildSubscriptionApp(options: SubscriptionAppOptions): Promise<FastifyInstance> {
  const { store } = options;
  const { db } = store;
  const ledger = createLedger(store);
  const currency = options.currency ?? 'EUR';
  const trusted = options.trustedOperatorToken;
  if (trusted === undefined) {
    await ensureOperator(options);
  }

  const app = createHttpApp({
    tls: options.tls,
    bodyBytesMax: subscriptionBodyBytesMax,
    limits: options.httpLimits,
    onInternalError: options.onInternalError,
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'gatecast subscription server', version: '1' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  /** Resolves the bearer token to a party, or answers 401. */
  const authenticate = async (request: FastifyRequest, reply: FastifyReply): Promise<Party | undefined> => {
    const token = bearerToken(request.headers.authorization);
    if (token === undefined) {
      await reply.code(401).send({ error: 'unauthorized', message: 'a bearer token is required' });
      return undefined;
    }
    if (trusted !== undefined && token === trusted) {
      return { id: 'operator', kind: 'operator', name: 'operator' };
    }
    const party = await db
      .selectFrom('parties')
      .select(['id', 'kind', 'name'])
      .where('token_hash', '=', hashToken(token))
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    if (party === undefined) {
      await reply.code(401).send({ error: 'unauthorized', message: 'unknown token' });
      return undefined;
    }
    return party as Party;
  };

  const authContext = { authenticate };

  const createParty =
    (kind: PartyKind) =>
    async (request: FastifyRequest<{ Body: Static<typeof PartyBody> }>, reply: FastifyReply) => {
      const token = newToken();
      const id = randomUUID();
      const taken = await db
        .selectFrom('parties')
        .select('id')
        .where('kind', '=', kind)
        .where('name_key', '=', nameKey(request.body.name))
        .executeTakeFirst();
      if (taken !== undefined) {
        return reply.code(409).send({
          error: 'conflict',
          message: `body/name: a ${kind} named "${request.body.name}" exists (${taken.id})`,
        });
      }
      const created = await store
        .writeTransaction(async (trx) => {
          await trx
            .insertInto('parties')
            .values({
              id,
              kind,
              name: request.body.name,
              name_key: nameKey(request.body.name),
              token_hash: hashToken(token),
              created_at: new Date().toISOString(),
            })
            .execute();
          await trx
            .insertInto('accounts')
            .values({
              id,
              name: request.body.name,
              kind,
              currency,
              created_at: new Date().toISOString(),
              debits: 0,
              credits: 0,
            })
            .execute();
          return true;
        })
        .catch((error: { code?: string }) => {
          // Another server created the same name between the check and the insert.
          if (error.code === '23505' || error.code === 'SQLITE_CONSTRAINT_UNIQUE') {
            return false;
          }
          throw error;
        });
      if (!created) {
        return reply
          .code(409)
          .send({ error: 'conflict', message: `body/name: a ${kind} named "${request.body.name}" exists` });
      }
      return reply.code(201).send({ id, name: request.body.name, kind, token });
    };
  const partyRoute = {
    preHandler: operatorOnly(authContext, 'only the operator creates parties'),
    schema: {
      body: PartyBody,
      response: { 201: PartyCreated, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 409: ErrorBody },
    },
  };
  app.post<{ Body: Static<typeof PartyBody> }>('/v1/subscribers', partyRoute, createParty('subscriber'));
  app.get(
    '/v1/tokens',
    {
      preHandler: operatorOnly(authContext, 'only the operator lists tokens'),
      schema: { response: { 200: TokenList, ...errorReplies } },
    },
    async () => {
      const rows = await db
        .selectFrom('parties')
        .select(['id', 'kind', 'name', 'created_at', 'revoked_at'])
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      return rows.map((row) => ({
        party: row.id,
        kind: row.kind,
        name: row.name,
        createdAt: row.created_at,
        revokedAt: row.revoked_at,
      }));
    },
  );
  app.delete<{ Params: { id: string } }>(
    '/v1/tokens/:id',
    {
      preHandler: operatorOnly(authContext, 'only the operator revokes tokens'),
      schema: { params: Type.Object({ id: Id }), response: { 204: Type.Null(), ...errorReplies } },
    },
    async (request, reply) => {
      const outcome = await store.writeTransaction(async (trx) => {
        const party = await trx
          .selectFrom('parties')
          .select(['id', 'kind', 'revoked_at'])
          .where('id', '=', request.params.id)
          .executeTakeFirst();
        if (party === undefined) {
          return 'unknown' as const;
        }
        if (party.kind === 'operator' && party.revoked_at === null) {
          const others = await trx
            .selectFrom('parties')
            .select('id')
            .where('kind', '=', 'operator')
            .where('revoked_at', 'is', null)
            .where('id', '<>', party.id)
            .execute();
          if (others.length === 0 && trusted === undefined) {
            return 'last' as const;
          }
        }
        await trx
          .updateTable('parties')
          .set({ revoked_at: party.revoked_at ?? new Date().toISOString() })
          .where('id', '=', party.id)
          .execute();
        return 'revoked' as const;
      });
      if (outcome === 'unknown') {
        return notFound(reply, `no party ${request.params.id}`);
      }
      if (outcome === 'last') {
        return reply.code(409).send({
          error: 'conflict',
          message: 'this is the last operator token; set a new GATECAST_OPERATOR_TOKEN and restart instead',
        });
      }
      return reply.code(204).send(null);
    },
  );
  app.post<{ Body: Static<typeof PartyBody> }>('/v1/sources', partyRoute, createParty('source'));

  app.post<{ Body: Static<typeof EntitlementBody> }>(
    '/v1/entitlements',
    {
      preHandler: operatorOnly(authContext, 'only the operator grants services'),
      schema: {
        body: EntitlementBody,
        response: { 201: Entitlement, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
      },
    },
    async (request, reply) => {
      const body = request.body;
      if (body.from !== undefined && body.to !== undefined && Date.parse(body.from) >= Date.parse(body.to)) {
        return badRequest(reply, 'body/to must be after body/from');
      }
      const subscriber = await db
        .selectFrom('parties')
        .select('kind')
        .where('id', '=', body.subscriber)
        .executeTakeFirst();
      if (subscriber?.kind !== 'subscriber') {
        return notFound(reply, `body/subscriber: no subscriber ${body.subscriber}`);
      }
      // A repair grant for one session names a registered session: a mistyped id would make a
      // grant that never matches, accepted as if it sold something.
      if (body.service === 'repair' && body.session !== undefined) {
        const session = await db
          .selectFrom('sessions')
          .select('id')
          .where('id', '=', body.session)
          .executeTakeFirst();
        if (session === undefined) {
          return notFound(reply, `body/session: no session ${body.session}`);
        }
      }
      const row = {
        id: randomUUID(),
        subscriber: body.subscriber,
        service: body.service,
        session: body.session ?? null,
        valid_from: body.from ?? null,
        valid_to: body.to ?? null,
        monthly: body.monthly ?? null,
        created_at: new Date().toISOString(),
      };
      await db.insertInto('entitlements').values(row).execute();
      return reply.code(201).send(presentEntitlement(row));
    },
  );

  app.get<{ Querystring: Static<typeof EntitlementQuery> }>(
    '/v1/entitlements',
    {
      preHandler: operatorOrSelf<{ Querystring: Static<typeof EntitlementQuery> }>(
        authContext,
        (request) => request.query.subscriber,
        'a subscriber reads only its own entitlements',
        ['operator', 'subscriber'],
        'a source does not read entitlements',
      ),
      schema: { querystring: EntitlementQuery, response: { 200: EntitlementList, ...errorReplies } },
    },
    async (request) => {
      const rows = await db
        .selectFrom('entitlements')
        .selectAll()
        .where('subscriber', '=', request.query.subscriber)
        .orderBy('created_at')
        .execute();
      return rows.map(presentEntitlement);
    },
  );

  app.get(
    '/v1/services',
    { preHandler: anyParty(authContext), schema: { response: { 200: ServiceList, 401: ErrorBody } } },
    async () => services,
  );

  app.get(
    '/v1/whoami',
    { preHandler: anyParty(authContext), schema: { response: { 200: Whoami, 401: ErrorBody } } },
    async (request) => callerOf(request),
  );

  app.get<{ Querystring: Static<typeof CheckQuery> }>(
    '/v1/entitlements/check',
    {
      preHandler: operatorOrSelf<{ Querystring: Static<typeof CheckQuery> }>(
        authContext,
        (request) => request.query.subscriber,
        'a subscriber reads only its own entitlements',
        ['operator', 'subscriber'],
        'a source does not read entitlements',
      ),
      schema: {
        querystring: CheckQuery,
        response: { 200: CheckResult, 400: ErrorBody, 401: ErrorBody, 403: ErrorBody },
      },
    },
    async (request) => {
      const { subscriber, service, session } = request.query;
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
      preHandler: operatorOrSelf<{ Params: { id: string } }>(
        authContext,
        (request) => request.params.id,
        'a party reads only its own account',
      ),
      schema: {
        params: Type.Object({ id: Id }),
        response: { 200: Balance, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody },
      },
    },
    async (request, reply) => {
      const account = await db
        .selectFrom('accounts')
        .select(['id', 'currency'])
        .where('id', '=', request.params.id)
        .executeTakeFirst();
      if (account === undefined) {
        return notFound(reply, `no account ${request.params.id}`);
      }
      return { account: account.id, balance: await ledger.balance(account.id), currency: account.currency };
    },
  );

  const shared = { store, db, ledger, currency, authenticate, authority: options.authority };
  const context: ApiContext = {
    ...shared,
    setup: options.setup,
    billing: options.billing(shared, options.rates),
  };
  const roles = options.roles ?? ['subscription', 'billing'];
  if (options.setup !== undefined && options.setupRefreshMs !== undefined && roles.includes('subscription')) {
    // Retransmit servers that restarted (or missed every copy of a SETUP) join again.
    const timer = setInterval(() => {
      refreshSetups(context).catch((error: Error) => options.onInternalError?.(error));
    }, options.setupRefreshMs);
    app.addHook('onClose', async () => clearInterval(timer));
  }
  if (roles.includes('billing')) {
    context.billing.register(app);
  }
  if (roles.includes('subscription')) {
    registerSessionRoutes(app, context);
    registerTokenRoutes(app, context);
  }
  for (const plugin of options.plugins ?? []) {
    plugin(app, context);
  }

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  await options.extend?.(app, {
    operatorOnly: operatorOnly(authContext, 'only the operator sees the console'),
  });
  await app.ready();
  return app;
}

/**
 * Makes sure an operator can log in: from the given token, or a new one shown once. A given token
 * is the operator's only one: rotating GATECAST_OPERATOR_TOKEN revokes every other operator token.
 */
async function ensureOperator(options: SubscriptionAppOptions): Promise<void> {
  const { store } = options;
  const now = new Date().toISOString();
  if (options.operatorToken !== undefined) {
    const hash = hashToken(options.operatorToken);
    await store.writeTransaction(async (trx) => {
      const known = await trx
        .selectFrom('parties')
        .select(['id', 'kind'])
        .where('token_hash', '=', hash)
        .executeTakeFirst();
      if (known !== undefined && known.kind !== 'operator') {
        throw new InvalidArgumentError('GATECAST_OPERATOR_TOKEN', 'is the token of a subscriber or a source');
      }
      if (known === undefined) {
        await trx
          .insertInto('parties')
          .values({
            id: randomUUID(),
            kind: 'operator',
            name: 'operator',
            name_key: nameKey('operator'),
            token_hash: hash,
            created_at: now,
          })
          .execute();
      } else {
        await trx.updateTable('parties').set({ revoked_at: null }).where('id', '=', known.id).execute();
      }
      await trx
        .updateTable('parties')
        .set({ revoked_at: now })
        .where('kind', '=', 'operator')
        .where('token_hash', '<>', hash)
        .where('revoked_at', 'is', null)
        .execute();
    });
    return;
  }
  const { db } = store;
  const operator = await db
    .selectFrom('parties')
    .select('id')
    .where('kind', '=', 'operator')
    .where('revoked_at', 'is', null)
    .executeTakeFirst();
  if (operator === undefined) {
    const token = newToken();
    await db
      .insertInto('parties')
      .values({
        id: randomUUID(),
        kind: 'operator',
        name: 'operator',
        name_key: nameKey('operator'),
        token_hash: hashToken(token),
        created_at: now,
      })
      .execute();
    options.onOperatorTokenCreated?.(token);
  }
}
