/**
 * Sessions (a source's S1: group, port, owner, price model) and the registry of retransmit and
 * repair servers. Flow B: a session registered with `repair: true` makes the subscription server
 * send SETUP to every registered retransmit server, which join and buffer it; ending the session
 * sends SETUP leave and charges the source per started hour of repaired session.
 */
import { randomUUID } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { sql } from 'kysely';
import { canonicalAddress, formatEndpoint, isMulticast, parseEndpoint, parseGroup } from '../net/address.js';
import { Server, ServerList } from '../protocol/api-subscription.js';
import { LedgerError } from '../store/ledger.js';
import {
  type ApiContext,
  allow,
  badRequest,
  callerOf,
  errorReplies,
  forbid,
  Id,
  Name,
  notFound,
  operatorOnly,
  operatorOrSelf,
  type Schema,
} from './context.js';

const Endpoint = Type.String({ minLength: 3, maxLength: 64 });
const Address = Type.String({ minLength: 2, maxLength: 46 });
const PriceModel = Type.Union([
  Type.Literal('free'),
  Type.Literal('subscription'),
  Type.Literal('pay-as-you-go'),
]);
const SessionBody = Type.Object(
  {
    name: Name,
    /** S1 as GROUP:PORT ([GROUP]:PORT for IPv6). */
    group: Endpoint,
    /** The sender's address, for source-specific joins. */
    source: Type.Optional(Address),
    price: Type.Optional(PriceModel),
    /** Buy the repair service for this session (flow B). */
    repair: Type.Optional(Type.Boolean()),
    /** The owning source; the operator names it, a source owns what it registers. */
    owner: Type.Optional(Id),
  },
  { additionalProperties: false },
);
const Session = Type.Object({
  id: Id,
  owner: Id,
  name: Type.String(),
  group: Type.String(),
  source: Type.Union([Type.String(), Type.Null()]),
  price: Type.String(),
  repair: Type.Boolean(),
  state: Type.String(),
  startedAt: Type.String(),
  endedAt: Type.Union([Type.String(), Type.Null()]),
  /** Retransmit servers sent SETUP by this call. */
  setup: Type.Array(Type.String()),
  /** The source's charge for repair, once the session ended. */
  charge: Type.Optional(Type.Object({ transfer: Id, amount: Type.Integer(), replayed: Type.Boolean() })),
});
const ServerKind = Type.Union([Type.Literal('retransmit'), Type.Literal('repair')]);
const ServerBody = Type.Object(
  { kind: ServerKind, name: Name, address: Endpoint },
  { additionalProperties: false },
);
const IdParams = Type.Object({ id: Id });
const SessionQuery = Type.Object({ group: Type.Optional(Endpoint) }, { additionalProperties: false });

type SessionRow = Schema['sessions'];

const formatGroup = (row: SessionRow) =>
  formatEndpoint({
    address: row.group_address,
    port: row.port,
    family: row.group_address.includes(':') ? 6 : 4,
  });

const present = (row: SessionRow, setup: string[] = []) => ({
  id: row.id,
  owner: row.owner,
  name: row.name,
  group: formatGroup(row),
  source: row.source_address,
  price: row.price_model,
  repair: row.repair === 1,
  state: row.state,
  startedAt: row.started_at,
  endedAt: row.ended_at,
  setup,
});

/**
 * Sends SETUP join for every open session that bought repair to the given retransmit servers (all
 * registered ones when none are named). A retransmit server that restarted, or was registered
 * after the session began, joins this way; a join it already has changes nothing.
 */
export async function refreshSetups(context: ApiContext, servers?: readonly string[]): Promise<number> {
  if (context.setup === undefined) {
    return 0;
  }
  const targets =
    servers ??
    (await context.db.selectFrom('servers').select('address').where('kind', '=', 'retransmit').execute()).map(
      (row) => row.address,
    );
  const sessions = await context.db
    .selectFrom('sessions')
    .select(['group_address', 'port', 'source_address'])
    .where('state', '=', 'open')
    .where('repair', '=', 1)
    .execute();
  if (targets.length === 0) {
    return 0;
  }
  for (const session of sessions) {
    await context.setup.send(
      'join',
      { group: session.group_address, port: session.port, source: session.source_address ?? undefined },
      targets,
    );
  }
  return sessions.length;
}

/** Registers the session and server-registry routes. */
export function registerSessionRoutes(app: FastifyInstance, context: ApiContext): void {
  const { db } = context;

  const retransmitServers = async () =>
    (await db.selectFrom('servers').select('address').where('kind', '=', 'retransmit').execute()).map(
      (row) => row.address,
    );

  const ownerOf = async (id: string) =>
    (await db.selectFrom('sessions').select('owner').where('id', '=', id).executeTakeFirst())?.owner;

  /** The operator or the session's owner (authentication and ownership as one preHandler). */
  const operatorOrOwner = operatorOrSelf<{ Params: Static<typeof IdParams> }>(
    context,
    (request) => ownerOf(request.params.id),
    'a source reads only its own sessions',
  );

  /** Loads a session (the preHandler checked who may see it), or answers 404. */
  const visibleSession = async (id: string, reply: FastifyReply) => {
    const row = await db.selectFrom('sessions').selectAll().where('id', '=', id).executeTakeFirst();
    if (row === undefined) {
      await notFound(reply, `no session ${id}`);
    }
    return row;
  };

  app.post<{ Body: Static<typeof SessionBody> }>(
    '/v1/sessions',
    {
      preHandler: allow(context, ['operator', 'source'], 'only a source or the operator registers sessions'),
      schema: { body: SessionBody, response: { 201: Session, ...errorReplies } },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const body = request.body;
      if (caller.kind === 'source' && body.owner !== undefined && body.owner !== caller.id) {
        return forbid(reply, 'a source registers only its own sessions');
      }
      if (caller.kind === 'operator' && body.owner === undefined) {
        return badRequest(reply, 'body/owner: the operator names the owning source');
      }
      let group: ReturnType<typeof parseGroup>;
      try {
        group = parseGroup(body.group, 'body/group');
      } catch (error) {
        return badRequest(reply, (error as Error).message);
      }
      if (
        body.source !== undefined &&
        (isMulticast(body.source) || !isAddressOf(body.source, group.family))
      ) {
        return badRequest(
          reply,
          `body/source: "${body.source}" is not a unicast address of the group's family`,
        );
      }
      const owner = body.owner ?? caller.id;
      const ownerRow = await db
        .selectFrom('parties')
        .select('kind')
        .where('id', '=', owner)
        .executeTakeFirst();
      if (ownerRow?.kind !== 'source') {
        return notFound(reply, `body/owner: no source ${owner}`);
      }
      const row: SessionRow = {
        id: randomUUID(),
        owner,
        name: body.name,
        group_address: group.address,
        port: group.port,
        source_address: body.source === undefined ? null : canonicalAddress(body.source),
        price_model: body.price ?? 'free',
        repair: body.repair === true ? 1 : 0,
        state: 'open',
        started_at: new Date().toISOString(),
        ended_at: null,
      };
      let servers: string[] = [];
      if (row.repair === 1) {
        if (context.setup === undefined) {
          return reply.code(409).send({
            error: 'conflict',
            message: 'body/repair: this server has no control secret (--secret-file) to send SETUP with',
          });
        }
        servers = await retransmitServers();
        if (servers.length === 0) {
          return reply.code(409).send({
            error: 'conflict',
            message: 'body/repair: no retransmit server is registered (POST /v1/servers)',
          });
        }
      }
      const holder = await context.store.writeTransaction(async (trx) => {
        // S1 belongs to one open session at a time: two sources (or two registrations) cannot
        // share a group, or one's end would make the retransmit servers leave the other's.
        if (context.store.dialect === 'postgres') {
          await sql`select pg_advisory_xact_lock(hashtext(${`s1/${group.address}/${group.port}`}))`.execute(
            trx,
          );
        }
        const open = await trx
          .selectFrom('sessions')
          .select('id')
          .where('group_address', '=', group.address)
          .where('port', '=', group.port)
          .where('state', '=', 'open')
          .executeTakeFirst();
        if (open === undefined) {
          await trx.insertInto('sessions').values(row).execute();
        }
        return open;
      });
      if (holder !== undefined) {
        return reply.code(409).send({
          error: 'conflict',
          message: `body/group: ${body.group} is already the S1 of open session ${caller.kind === 'operator' || (await ownerOf(holder.id)) === caller.id ? holder.id : 'of another source'}; end it first`,
        });
      }
      if (row.repair === 1) {
        await context.setup?.send(
          'join',
          { group: row.group_address, port: row.port, source: row.source_address ?? undefined },
          servers,
        );
      }
      return reply.code(201).send(present(row, servers));
    },
  );

  app.get<{ Querystring: Static<typeof SessionQuery> }>(
    '/v1/sessions',
    {
      preHandler: allow(context, ['operator', 'source'], 'a subscriber does not list sessions'),
      schema: { querystring: SessionQuery, response: { 200: Type.Array(Session), ...errorReplies } },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      let query = db.selectFrom('sessions').selectAll().orderBy('started_at');
      if (caller.kind === 'source') {
        query = query.where('owner', '=', caller.id);
      }
      if (request.query.group !== undefined) {
        let group: ReturnType<typeof parseGroup>;
        try {
          group = parseGroup(request.query.group, 'querystring/group');
        } catch (error) {
          return badRequest(reply, (error as Error).message);
        }
        query = query.where('group_address', '=', group.address).where('port', '=', group.port);
      }
      return (await query.execute()).map((row) => present(row));
    },
  );

  app.get<{ Params: Static<typeof IdParams> }>(
    '/v1/sessions/:id',
    {
      preHandler: operatorOrOwner,
      schema: { params: IdParams, response: { 200: Session, ...errorReplies } },
    },
    async (request, reply) => {
      const row = await visibleSession(request.params.id, reply);
      return row === undefined ? reply : present(row);
    },
  );

  app.post<{ Params: Static<typeof IdParams> }>(
    '/v1/sessions/:id/end',
    {
      preHandler: operatorOrOwner,
      schema: { params: IdParams, response: { 200: Session, ...errorReplies } },
    },
    async (request, reply) => {
      const found = await visibleSession(request.params.id, reply);
      if (found === undefined) {
        return reply;
      }
      if (found.state !== 'ended') {
        await db
          .updateTable('sessions')
          .set({ state: 'ended', ended_at: new Date().toISOString() })
          .where('id', '=', found.id)
          .where('state', '=', 'open')
          .execute();
      }
      const row = await db
        .selectFrom('sessions')
        .selectAll()
        .where('id', '=', found.id)
        .executeTakeFirstOrThrow();
      if (row.repair !== 1) {
        return present(row);
      }
      const servers = await retransmitServers();
      const stillOpen = await db
        .selectFrom('sessions')
        .select('id')
        .where('group_address', '=', row.group_address)
        .where('port', '=', row.port)
        .where('state', '=', 'open')
        .where('repair', '=', 1)
        .executeTakeFirst();
      // A store from before S1 was unique may hold another open session on this S1: it keeps its servers.
      if (context.setup !== undefined && servers.length > 0 && stillOpen === undefined) {
        await context.setup.send(
          'leave',
          { group: row.group_address, port: row.port, source: row.source_address ?? undefined },
          servers,
        );
      }
      const seconds = Math.max(
        1,
        Math.ceil((Date.parse(row.ended_at ?? row.started_at) - Date.parse(row.started_at)) / 1000),
      );
      let transfer: Awaited<ReturnType<ApiContext['billing']['chargeUsage']>>;
      try {
        transfer = await context.billing.chargeUsage(
          `session-end/${row.id}`,
          { account: row.owner, kind: 'source-repair-seconds', quantity: seconds, session: row.id },
          ['session-end', row.id],
        );
      } catch (error) {
        if (error instanceof LedgerError) {
          const limit = error.code === 'GATECAST_ERR_LEDGER_LIMIT';
          return reply
            .code(limit ? 422 : 409)
            .send({ error: limit ? 'limit-exceeded' : 'conflict', message: error.message });
        }
        throw error;
      }
      return {
        ...present(row, servers),
        charge: { transfer: transfer.id, amount: transfer.amount, replayed: transfer.replayed },
      };
    },
  );

  app.post<{ Body: Static<typeof ServerBody> }>(
    '/v1/servers',
    {
      preHandler: operatorOnly(context, 'only the operator registers servers'),
      schema: { body: ServerBody, response: { 200: Server, 201: Server, ...errorReplies } },
    },
    async (request, reply) => {
      const { kind, name } = request.body;
      let address: string;
      try {
        const endpoint = parseEndpoint(request.body.address, 'body/address');
        if (isMulticast(endpoint.address) || endpoint.port === 0) {
          return badRequest(reply, 'body/address: a server is reached at a unicast ADDR:PORT');
        }
        address = request.body.address;
      } catch (error) {
        return badRequest(reply, (error as Error).message);
      }
      const existing = await db
        .selectFrom('servers')
        .select(['id', 'kind', 'name', 'address'])
        .where('kind', '=', kind)
        .where('address', '=', address)
        .executeTakeFirst();
      if (existing !== undefined) {
        return reply.code(200).send(existing);
      }
      const row = { id: randomUUID(), kind, name, address, created_at: new Date().toISOString() };
      await db.insertInto('servers').values(row).execute();
      if (kind === 'retransmit') {
        await refreshSetups(context, [address]); // the sessions already buying repair
      }
      return reply.code(201).send({ id: row.id, kind, name, address });
    },
  );

  app.get(
    '/v1/servers',
    {
      preHandler: operatorOnly(context, 'only the operator reads the server registry'),
      schema: { response: { 200: ServerList, ...errorReplies } },
    },
    async () => {
      return db
        .selectFrom('servers')
        .select(['id', 'kind', 'name', 'address'])
        .orderBy('created_at')
        .execute();
    },
  );

  app.delete<{ Params: Static<typeof IdParams> }>(
    '/v1/servers/:id',
    {
      preHandler: operatorOnly(context, 'only the operator changes the server registry'),
      schema: { params: IdParams, response: { 204: Type.Null(), ...errorReplies } },
    },
    async (request, reply) => {
      const result = await db.deleteFrom('servers').where('id', '=', request.params.id).executeTakeFirst();
      if (Number(result.numDeletedRows) === 0) {
        return notFound(reply, `no server ${request.params.id}`);
      }
      return reply.code(204).send(null);
    },
  );
}

/** True when the text is an IP address of that family. */
function isAddressOf(text: string, family: 4 | 6): boolean {
  return family === 4 ? isIPv4(text) : isIPv6(text);
}
