/**
 * What the roles that serve the subscription server's API share (the subscription role and the
 * billing role): the store, the ledger, the caller's identity from its bearer token, authentication
 * as a preHandler, the schemas every route reuses and the error answers. Roles import this; this
 * imports no role.
 */
import { createHash, type KeyObject, randomBytes } from 'node:crypto';
import type {
  FastifyReply,
  FastifyRequest,
  preHandlerAsyncHookHandler,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
  RouteGenericInterface,
} from 'fastify';
import { sendError } from '../net/http-server.js';
import { ErrorBody } from '../protocol/api-errors.js';
import type { Schema, Store } from '../store/database.js';
import type { createLedger } from '../store/ledger.js';

export { ErrorBody } from '../protocol/api-errors.js';
export { Id, Name, Period, Timestamp } from '../protocol/api-subscription.js';

/** Roles a token can hold. */
export type PartyKind = 'operator' | 'source' | 'subscriber';

/** The authenticated caller. */
export interface Party {
  readonly id: string;
  readonly kind: PartyKind;
  readonly name: string;
}

/** A restricted product the server grants to entitled tokens (flow C). */
export interface RestrictedProduct {
  readonly name: string;
  /** The 32-byte service key of this product and epoch. */
  readonly serviceKey: Buffer;
  readonly serviceEpoch: number;
  /** Raw Ed25519 key of the source whose KEY messages the product trusts. */
  readonly sourcePublicKey: Buffer;
  readonly tier: number;
  /** Minor units per crypto-period for pay-as-you-go entitlements; 0: pay-as-you-go is not sold. */
  readonly pricePerPeriod: number;
  /** Depth of the product's member tree (2^depth members at most). */
  readonly treeDepth: number;
}

/** The operator's keys, when the server issues grants and signs top-ups (`serve --root-key`). */
export interface OperatorAuthority {
  readonly rootPrivateKey: KeyObject;
  readonly products: readonly RestrictedProduct[];
}

/** Shared by every route module. */
export interface ApiContext {
  readonly store: Store;
  readonly db: Store['db'];
  readonly ledger: ReturnType<typeof createLedger>;
  readonly currency: string;
  /** The operator root key and the restricted products; absent when the server holds no root key. */
  readonly authority?: OperatorAuthority | undefined;
  /** Resolves the bearer token to a party, or answers 401 and returns undefined. */
  authenticate(request: FastifyRequest, reply: FastifyReply): Promise<Party | undefined>;
}

export const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');
export const newToken = () => `gct_${randomBytes(24).toString('base64url')}`;

/** The error answers most routes can give. */
export const errorReplies = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  409: ErrorBody,
  422: ErrorBody,
  429: ErrorBody,
  503: ErrorBody,
} as const;

const callers = new WeakMap<FastifyRequest, Party>();

/**
 * Authentication as a preHandler: the bearer token must name a party of one of these kinds
 * (401 without a known token, 403 with the message otherwise). The handler reads the caller with
 * callerOf(request).
 */
export function allow(
  context: Pick<ApiContext, 'authenticate'>,
  kinds: readonly PartyKind[],
  message: string,
): preHandlerAsyncHookHandler {
  return async (request, reply) => {
    const caller = await context.authenticate(request, reply);
    if (caller === undefined) {
      return reply;
    }
    if (!kinds.includes(caller.kind)) {
      return sendError(reply, 'forbidden', message);
    }
    callers.set(request, caller);
    return undefined;
  };
}

/** Only the operator: the prologue of every operator route, as a preHandler. */
export const operatorOnly = (context: Pick<ApiContext, 'authenticate'>, message: string) =>
  allow(context, ['operator'], message);

/** Any party with a known token. */
export const anyParty = (context: Pick<ApiContext, 'authenticate'>) =>
  allow(context, ['operator', 'source', 'subscriber'], 'unreachable');

/**
 * The operator, or the party a request is about ("own records only"), as one preHandler: a caller of
 * one of `kinds` passes when it is the operator or when `subject` (the account, subscriber or owner the
 * request names, looked up if need be) is the caller itself; otherwise 403 with the message. A
 * subject of undefined (no such record) passes, and the handler answers 404. A caller of another
 * kind is refused with `kindRefused`.
 */
export function operatorOrSelf<Route extends RouteGenericInterface>(
  context: Pick<ApiContext, 'authenticate'>,
  subject: (request: FastifyRequest<Route>) => string | undefined | Promise<string | undefined>,
  message: string,
  kinds: readonly PartyKind[] = ['operator', 'source', 'subscriber'],
  kindRefused: string = message,
): preHandlerAsyncHookHandler<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  Route
> {
  const authenticated = allow(context, kinds, kindRefused);
  return async function (request, reply) {
    if ((await authenticated.call(this, request as FastifyRequest, reply as FastifyReply)) !== undefined) {
      return reply; // refused: answered already
    }
    const caller = callerOf(request as FastifyRequest);
    if (caller.kind === 'operator') {
      return undefined;
    }
    const about = await subject(request);
    if (about !== undefined && about !== caller.id) {
      return sendError(reply as FastifyReply, 'forbidden', message);
    }
    return undefined;
  };
}

/** The caller a preHandler authenticated. */
export function callerOf(request: FastifyRequest): Party {
  const caller = callers.get(request);
  if (caller === undefined) {
    throw new Error('the route has no authentication preHandler');
  }
  return caller;
}

export const forbid = (reply: FastifyReply, message: string) => sendError(reply, 'forbidden', message);
export const notFound = (reply: FastifyReply, message: string) => sendError(reply, 'not-found', message);
export const badRequest = (reply: FastifyReply, message: string) =>
  sendError(reply, 'invalid-request', message);

const revenueKnown = new WeakSet<object>();

/** Makes the revenue account the first time it is needed. */
export async function revenueAccount(context: ApiContext): Promise<string> {
  const id = 'operator-revenue';
  if (revenueKnown.has(context.db)) {
    return id;
  }
  const known = await context.db.selectFrom('accounts').select('id').where('id', '=', id).executeTakeFirst();
  if (known === undefined) {
    await context.ledger
      .createAccount({ id, name: 'operator revenue', kind: 'revenue', currency: context.currency })
      .catch(() => undefined); // another server made it first
  }
  revenueKnown.add(context.db);
  return id;
}

/** The first day of a YYYY-MM period and of the next, as ISO timestamps (UTC). */
export function periodBounds(period: string): { from: string; to: string } {
  const [year, month] = period.split('-').map(Number) as [number, number];
  return {
    from: new Date(Date.UTC(year, month - 1, 1)).toISOString(),
    to: new Date(Date.UTC(year, month, 1)).toISOString(),
  };
}

/** An entitlement row as the API shows it. */
export function presentEntitlement(row: Omit<Schema['entitlements'], 'created_at'>) {
  return {
    id: row.id,
    subscriber: row.subscriber,
    service: row.service,
    session: row.session,
    from: row.valid_from,
    to: row.valid_to,
    monthly: row.monthly === null ? null : Number(row.monthly),
  };
}
