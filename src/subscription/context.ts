/**
 * What the subscription server's route modules share: the store, the ledger, the caller's
 * identity from its bearer token, and the schemas every route reuses.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Schema, Store } from '../store/database.js';
import type { createLedger } from '../store/ledger.js';

/** Roles a token can hold. */
export type PartyKind = 'operator' | 'source' | 'subscriber';

/** The authenticated caller. */
export interface Party {
  readonly id: string;
  readonly kind: PartyKind;
  readonly name: string;
}

/** Sends SETUP join/leave to retransmit servers (flow B); absent when no control secret is set. */
export interface SetupSender {
  send(
    action: 'join' | 'leave',
    session: { group: string; port: number; source: string | undefined },
    servers: readonly string[],
  ): Promise<void>;
}

/** Shared by every route module. */
export interface ApiContext {
  readonly store: Store;
  readonly db: Store['db'];
  readonly ledger: ReturnType<typeof createLedger>;
  readonly currency: string;
  readonly setup: SetupSender | undefined;
  /** Resolves the bearer token to a party, or answers 401 and returns undefined. */
  authenticate(request: FastifyRequest, reply: FastifyReply): Promise<Party | undefined>;
}

export const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');
export const newToken = () => `gct_${randomBytes(24).toString('base64url')}`;

export const Name = Type.String({ minLength: 1, maxLength: 200 });
export const Id = Type.String({ minLength: 1, maxLength: 100 });
export const Timestamp = Type.String({ format: 'date-time', maxLength: 40 });
export const Period = Type.String({ pattern: '^[0-9]{4}-(0[1-9]|1[0-2])$', maxLength: 7 });
export const ErrorBody = Type.Object({ error: Type.String(), message: Type.String() });
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

/**
 * Authenticates the caller and lets only the operator through; answers 401 or 403 (with the
 * message) otherwise and returns undefined.
 */
export async function operatorOnly(
  authenticate: ApiContext['authenticate'],
  request: FastifyRequest,
  reply: FastifyReply,
  message: string,
): Promise<Party | undefined> {
  const caller = await authenticate(request, reply);
  if (caller === undefined) {
    return undefined;
  }
  if (caller.kind !== 'operator') {
    await forbid(reply, message);
    return undefined;
  }
  return caller;
}

export const forbid = (reply: FastifyReply, message: string) =>
  reply.code(403).send({ error: 'forbidden', message });
export const notFound = (reply: FastifyReply, message: string) =>
  reply.code(404).send({ error: 'not-found', message });
export const badRequest = (reply: FastifyReply, message: string) =>
  reply.code(400).send({ error: 'invalid-request', message });

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

export type { Schema };
