/**
 * The purse and receipt routes of the billing role (docs/api.md, "Purses and receipts"); the work
 * is in receipts.ts.
 */
import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import {
  type ApiContext,
  allow,
  callerOf,
  errorReplies,
  forbid,
  notFound,
  operatorOnly,
} from '../api/context.js';
import { receiptBatchBodyBytesMax } from '../limits.js';
import {
  PurseRegistration,
  PurseStatus,
  ReceiptBatchBody,
  ReceiptBatchResult,
  Reconciliation,
  TokenId,
  TopUpBody,
  TopUpResult,
} from '../protocol/api-receipts.js';
import {
  type Answer,
  chargeReceipts,
  purseStatus,
  reconcilePurse,
  registerPurse,
  topUpPurse,
} from './receipts.js';

const TokenParams = Type.Object({ token: TokenId });
const Registered = Type.Object({ token: TokenId, account: Type.String(), created: Type.Boolean() });

function send<T>(reply: FastifyReply, answer: Answer<T>) {
  return 'body' in answer
    ? reply.code(answer.status).send(answer.body)
    : reply.code(answer.status).send({ error: answer.error, message: answer.message });
}

/** Registers the purse and receipt routes. */
export function registerReceiptRoutes(app: FastifyInstance, context: ApiContext): void {
  const ownerOrOperator = allow(context, ['operator', 'subscriber'], 'a source has no purse');

  app.put<{ Params: Static<typeof TokenParams>; Body: PurseRegistration }>(
    '/v1/purses/:token',
    {
      preHandler: operatorOnly(context, 'only the operator registers purses'),
      schema: {
        params: TokenParams,
        body: PurseRegistration,
        response: { 200: Registered, 201: Registered, ...errorReplies },
      },
    },
    async (request, reply) => send(reply, await registerPurse(context, request.params.token, request.body)),
  );

  app.post<{ Params: Static<typeof TokenParams>; Body: TopUpBody }>(
    '/v1/purses/:token/top-ups',
    {
      preHandler: ownerOrOperator,
      schema: {
        params: TokenParams,
        body: TopUpBody,
        response: { 200: TopUpResult, 201: TopUpResult, ...errorReplies },
      },
    },
    async (request, reply) =>
      send(reply, await topUpPurse(context, request.params.token, request.body, callerOf(request))),
  );

  app.get<{ Params: Static<typeof TokenParams> }>(
    '/v1/purses/:token',
    {
      preHandler: ownerOrOperator,
      schema: { params: TokenParams, response: { 200: PurseStatus, ...errorReplies } },
    },
    async (request, reply) => {
      const status = await purseStatus(context, request.params.token);
      if (status === undefined) {
        return notFound(reply, `no purse for token ${request.params.token}`);
      }
      const caller = callerOf(request);
      if (caller.kind !== 'operator' && caller.id !== status.subscriber) {
        return forbid(reply, 'a subscriber reads only its own purses');
      }
      return status;
    },
  );

  app.get<{ Params: Static<typeof TokenParams> }>(
    '/v1/purses/:token/reconciliation',
    {
      preHandler: operatorOnly(context, 'only the operator reconciles'),
      schema: { params: TokenParams, response: { 200: Reconciliation, ...errorReplies } },
    },
    async (request, reply) => {
      const reconciliation = await reconcilePurse(context, request.params.token);
      return reconciliation ?? notFound(reply, `no purse for token ${request.params.token}`);
    },
  );

  app.post<{ Body: ReceiptBatchBody }>(
    '/v1/receipts/batch',
    {
      preHandler: ownerOrOperator,
      bodyLimit: receiptBatchBodyBytesMax,
      schema: { body: ReceiptBatchBody, response: { 200: ReceiptBatchResult, ...errorReplies } },
    },
    async (request) => chargeReceipts(context, request.body.receipts, callerOf(request)),
  );
}
