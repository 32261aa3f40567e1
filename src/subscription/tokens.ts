/**
 * Token enrollment (docs/api.md, "Tokens"; docs/security.md, "Enrollment"): a subscriber registers
 * its token — the device key the grants are wrapped to, and the receipt key billing checks its
 * receipts against — and gets one grant per restricted product it is entitled to, signed with the
 * operator root key. A product is granted for an entitlement to `channel` (a subscription) or to
 * `pay-as-you-go` (debited per crypto-period from the token's purse, at the product's price) whose
 * session names the product, or names none (every product).
 */

import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { RestrictedProduct } from '../api/context.js';
import { issueGrant, p256FromPoint, tokenIdOf, x25519Usable } from '../crypto/authority.js';
import { enrollGrantMsMax, treeSweepMs } from '../limits.js';
import { sendError } from '../net/http-server.js';
import {
  EnrollBody,
  type EnrolledGrant,
  EnrollResult,
  RevokedEntitlement,
  TreeForSource,
  TreeQuery,
} from '../protocol/api-tokens.js';
import { PriceModel } from '../protocol/restricted.js';
import {
  type ApiContext,
  allow,
  badRequest,
  callerOf,
  errorReplies,
  forbid,
  notFound,
  type Schema,
} from './context.js';
import { createKeyTrees, type KeyTrees } from './key-trees.js';

type EntitlementRow = Schema['entitlements'];

/** The window of an entitlement as a grant carries it; an open end is capped at enrollGrantMsMax. */
function windowOf(row: EntitlementRow, nowMs: number): { fromMs: number; untilMs: number } {
  const fromMs = row.valid_from === null ? nowMs : Date.parse(row.valid_from);
  const untilMs =
    row.valid_to === null ? Math.max(nowMs, fromMs) + enrollGrantMsMax : Date.parse(row.valid_to);
  return { fromMs, untilMs };
}

/**
 * The entitlement a product is granted under: the one valid now, else the next to start (the
 * token says "not entitled until …"), else the last that ended ("… since …").
 */
function chosenEntitlement(rows: readonly EntitlementRow[], nowMs: number): EntitlementRow | undefined {
  const windows = rows.map((row) => ({ row, ...windowOf(row, nowMs) }));
  const current = windows.find((entry) => entry.fromMs <= nowMs && nowMs < entry.untilMs);
  const next = windows.filter((entry) => entry.fromMs > nowMs).sort((a, b) => a.fromMs - b.fromMs)[0];
  const last = windows.filter((entry) => entry.untilMs <= nowMs).sort((a, b) => b.untilMs - a.untilMs)[0];
  return (current ?? next ?? last)?.row;
}

async function grantFor(
  context: ApiContext,
  keyTrees: KeyTrees,
  product: RestrictedProduct,
  row: EntitlementRow,
  device: Buffer,
  subscriber: string,
  nowMs: number,
): Promise<EnrolledGrant> {
  const authority = context.authority;
  if (authority === undefined) {
    throw new Error('grantFor needs the operator authority');
  }
  const { fromMs, untilMs } = windowOf(row, nowMs);
  const payAsYouGo = row.service === 'pay-as-you-go';
  const grant = issueGrant(
    {
      devicePoint: device,
      serviceKey: product.serviceKey,
      tier: product.tier,
      service: product.name,
      serviceEpoch: product.serviceEpoch,
      notBeforeMs: fromMs,
      notAfterMs: untilMs,
      priceModel: payAsYouGo ? PriceModel.perCryptoPeriod : PriceModel.subscription,
      currency: context.currency,
      priceMinor: payAsYouGo ? product.pricePerPeriod : 0,
      sourcePublicKey: product.sourcePublicKey,
    },
    authority.rootPrivateKey,
  );
  // A token whose entitlement has ended gets no membership (and is no member: the sweep removes it).
  const membership =
    untilMs > nowMs
      ? (await keyTrees.membershipFor(product, device, subscriber)).toString('base64')
      : undefined;
  return {
    ...(membership === undefined ? {} : { membership }),
    service: product.name,
    serviceEpoch: product.serviceEpoch,
    tier: product.tier,
    from: new Date(fromMs).toISOString(),
    until: new Date(untilMs).toISOString(),
    priceModel: payAsYouGo ? 'per-crypto-period' : 'subscription',
    price: payAsYouGo ? product.pricePerPeriod : 0,
    currency: context.currency,
    grant: grant.toString('base64'),
  };
}

/**
 * Registers POST /v1/enrollments, GET /v1/products/{name}/tree (for sources) and DELETE
 * /v1/entitlements/{id} (the operator ends an entitlement now: its members leave their trees).
 */
export function registerTokenRoutes(app: FastifyInstance, context: ApiContext): void {
  const keyTrees =
    context.authority === undefined ? undefined : createKeyTrees(context.store, context.authority);
  if (keyTrees !== undefined && context.authority !== undefined && context.authority.products.length > 0) {
    // Entitlements end by themselves too: their members leave at the next sweep.
    let sweeping = false;
    const timer = setInterval(() => {
      if (sweeping) {
        return;
      }
      sweeping = true;
      keyTrees
        .sweep()
        .catch((error: Error) => app.log.error({ err: error }, 'member tree sweep failed'))
        .finally(() => {
          sweeping = false;
        });
    }, context.treeSweepMs ?? treeSweepMs);
    timer.unref();
    app.addHook('onClose', async () => clearInterval(timer));
  }

  app.get<{ Params: { name: string }; Querystring: TreeQuery }>(
    '/v1/products/:name/tree',
    {
      preHandler: allow(context, ['operator', 'source'], 'only sources and the operator read a member tree'),
      schema: {
        params: Type.Object({ name: Type.String({ minLength: 1, maxLength: 64 }) }),
        querystring: TreeQuery,
        response: { 200: TreeForSource, ...errorReplies },
      },
    },
    async (request, reply) => {
      if (keyTrees === undefined) {
        return sendError(
          reply,
          'unavailable',
          'this server holds no operator root key (serve --root-key): it keeps no member trees',
        );
      }
      const recipient = Buffer.from(request.query.recipient, 'hex');
      if (!x25519Usable(recipient)) {
        return badRequest(
          reply,
          'querystring/recipient: not a usable X25519 public key (a low-order point gives no shared secret)',
        );
      }
      const since = request.query.since === undefined ? undefined : Number(request.query.since);
      const tree = await keyTrees.forSource(request.params.name, recipient, since);
      if (tree === undefined) {
        return notFound(reply, `no restricted product ${request.params.name} (serve --products)`);
      }
      return {
        product: tree.product,
        serviceEpoch: tree.serviceEpoch,
        treeId: tree.treeId,
        depth: tree.depth,
        epoch: tree.epoch,
        members: tree.members,
        ephemeral: tree.ephemeral.toString('hex'),
        wrappedGroupKey: tree.wrappedGroupKey.toString('hex'),
        rekeys: tree.rekeys.map((message) => message.toString('base64')),
      };
    },
  );

  app.delete<{ Params: { id: string } }>(
    '/v1/entitlements/:id',
    {
      preHandler: allow(context, ['operator'], 'only the operator revokes entitlements'),
      schema: {
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }),
        response: { 200: RevokedEntitlement, ...errorReplies },
      },
    },
    async (request, reply) => {
      const row = await context.db
        .selectFrom('entitlements')
        .select(['id', 'valid_from', 'valid_to'])
        .where('id', '=', request.params.id)
        .executeTakeFirst();
      if (row === undefined) {
        return notFound(reply, `no entitlement ${request.params.id}`);
      }
      const now = new Date();
      // Ended now, unless it ended already; one that had not started yet ends before it starts.
      const endedAt =
        row.valid_to !== null && Date.parse(row.valid_to) <= now.getTime()
          ? row.valid_to
          : row.valid_from !== null && Date.parse(row.valid_from) > now.getTime()
            ? row.valid_from
            : now.toISOString();
      await context.db
        .updateTable('entitlements')
        .set({ valid_to: endedAt })
        .where('id', '=', row.id)
        .execute();
      const departures = keyTrees === undefined ? [] : await keyTrees.sweep(now.getTime());
      return {
        id: row.id,
        endedAt,
        removed: departures.map((departure) => ({
          product: departure.product,
          token: departure.tokenId,
          epoch: departure.epoch,
        })),
      };
    },
  );

  app.post<{ Body: EnrollBody }>(
    '/v1/enrollments',
    {
      preHandler: allow(context, ['operator', 'subscriber'], 'a source enrolls no token'),
      schema: { body: EnrollBody, response: { 200: EnrollResult, 201: EnrollResult, ...errorReplies } },
    },
    async (request, reply) => {
      const authority = context.authority;
      if (authority === undefined) {
        return sendError(
          reply,
          'unavailable',
          'this server holds no operator root key (serve --root-key): it issues no grants',
        );
      }
      const caller = callerOf(request);
      const subscriber = caller.kind === 'subscriber' ? caller.id : request.body.subscriber;
      if (subscriber === undefined) {
        return badRequest(reply, 'body/subscriber: the operator names the subscriber it enrolls a token for');
      }
      if (
        caller.kind === 'subscriber' &&
        request.body.subscriber !== undefined &&
        request.body.subscriber !== caller.id
      ) {
        return forbid(reply, 'a subscriber enrolls tokens only for itself');
      }
      const device = Buffer.from(request.body.device, 'hex');
      try {
        p256FromPoint(device);
      } catch {
        return badRequest(reply, 'body/device: not a point on P-256');
      }
      const tokenId = tokenIdOf(device);
      const registered = await context.billing.registerPurse(tokenId, {
        subscriber,
        publicKey: request.body.receiptKey,
      });
      if (!registered.ok) {
        return sendError(
          reply,
          registered.status === 409
            ? 'conflict'
            : registered.status === 404
              ? 'not-found'
              : 'invalid-request',
          // The enrollment names the receipt key receiptKey; billing's purse registration names it publicKey.
          registered.message.replace('body/publicKey', 'body/receiptKey'),
        );
      }
      const rows = await context.db
        .selectFrom('entitlements')
        .selectAll()
        .where('subscriber', '=', subscriber)
        .where('service', 'in', ['channel', 'pay-as-you-go'])
        .execute();
      const nowMs = Date.now();
      const grants: EnrolledGrant[] = [];
      for (const product of authority.products) {
        // Pay-as-you-go is not sold for a product without a price: such an entitlement grants nothing.
        const row = chosenEntitlement(
          rows.filter(
            (entry) =>
              (entry.session === null || entry.session === product.name) &&
              !(entry.service === 'pay-as-you-go' && product.pricePerPeriod === 0),
          ),
          nowMs,
        );
        if (row !== undefined && keyTrees !== undefined) {
          grants.push(await grantFor(context, keyTrees, product, row, device, subscriber, nowMs));
        }
      }
      return reply.code(registered.created ? 201 : 200).send({
        token: tokenId,
        subscriber,
        account: registered.account,
        currency: context.currency,
        created: registered.created,
        grants,
      });
    },
  );
}
