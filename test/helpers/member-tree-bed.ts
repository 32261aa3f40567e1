/**
 * An in-process member-tree bed (src/subscription/key-trees.ts): the subscription server through
 * app.inject with one restricted product "news", subscribers entitled to it whose tokens (in memory)
 * are enrolled through the API, and a source sealing a stream a packet every 100 ms with a control
 * tick every 50 ms, whose datagrams every member's receiver protection takes.
 */
import assert from 'node:assert/strict';
import { diffieHellman, generateKeyPairSync, randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import {
  ed25519Raw,
  generateSigningKey,
  openGroupKey,
  p256FromPoint,
  unwrapKey,
  x25519Raw,
} from '../../src/crypto/authority.js';
import type { TokenRefused } from '../../src/crypto/errors.js';
import {
  createReceiverProtection,
  createSenderProtection,
  type ReceiverProtection,
  type SenderProtection,
  type SourceTree,
} from '../../src/crypto/restricted-session.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { Token } from '../../src/crypto/token.js';
import type { EnrollResult, TreeForSource } from '../../src/protocol/api-tokens.js';
import { headerBytes, PacketType, writeHeaderFields } from '../../src/protocol/packet.js';
import { decodeGrant, decodeMembership } from '../../src/protocol/restricted.js';
import { followMemberTree } from '../../src/source/member-tree.js';
import { openStore, type Store } from '../../src/store/database.js';
import { MemoryBackend } from '../sim/protection.js';

/** One subscriber's host: its token, what it decoded (sequence numbers), and why it stopped, if it did. */
export interface TreeMember {
  readonly name: string;
  readonly backend: MemoryBackend;
  readonly token: Token;
  readonly protection: ReceiverProtection;
  readonly decoded: number[];
  refusal: TokenRefused | undefined;
  readonly entitlement: string;
  readonly subscriber: { readonly id: string; readonly token: string };
  readonly receiptKey: string;
}

/** The run the bed's source sends. */
export const treeRun = { sessionId: 7, incarnation: 8 } as const;

/** Starts the server over a store (default: SQLite in memory) with "news" in a tree of this depth. */
export async function createTreeBed(settings: {
  treeDepth: number;
  storeUrl?: string;
  packetsPerGroup?: number;
}) {
  const operator = 'operator-token-for-member-tree-beds';
  const root = generateSigningKey();
  const source = generateSigningKey();
  const serviceKey = randomBytes(32);
  const store: Store = await openStore(settings.storeUrl ?? 'sqlite::memory:');
  const app: FastifyInstance = await buildServerApp({
    store,
    trustedOperatorToken: operator,
    authority: {
      rootPrivateKey: root.privateKey,
      products: [
        {
          name: 'news',
          serviceKey,
          serviceEpoch: 1,
          sourcePublicKey: ed25519Raw(source.publicKey),
          tier: 0,
          pricePerPeriod: 0,
          treeDepth: settings.treeDepth,
        },
      ],
    },
  });
  const members: TreeMember[] = [];

  /** An API call through app.inject, as the operator unless another bearer token is given. */
  const call = async (method: string, url: string, body?: unknown, token = operator) => {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}` },
      ...(body === undefined ? {} : { payload: body as object }),
    });
    return { status: response.statusCode, body: response.json() };
  };

  /** A subscriber entitled to news, its token enrolled with its grant and membership installed. */
  async function addMember(name: string): Promise<TreeMember> {
    const created = await call('POST', '/v1/subscribers', { name });
    assert.equal(created.status, 201);
    const entitled = await call('POST', '/v1/entitlements', {
      subscriber: created.body.id,
      service: 'channel',
      session: 'news',
    });
    assert.equal(entitled.status, 201);
    const backend = new MemoryBackend(ed25519Raw(root.publicKey));
    const token = new Token(backend);
    const receiptKey = ed25519Raw(generateSigningKey().publicKey).toString('base64url');
    const enrolled = await call(
      'POST',
      '/v1/enrollments',
      { device: token.devicePoint().toString('hex'), receiptKey },
      created.body.token,
    );
    assert.equal(enrolled.status, 201, JSON.stringify(enrolled.body));
    const grant = (enrolled.body as EnrollResult).grants[0];
    assert.ok(grant?.membership !== undefined, 'a current entitlement comes with a membership');
    token.installGrant(Buffer.from(grant.grant, 'base64'));
    token.installMembership(Buffer.from(grant.membership, 'base64'));
    const member: TreeMember = {
      name,
      backend,
      token,
      protection: createReceiverProtection(token, (refusal) => {
        member.refusal ??= refusal;
      }),
      decoded: [],
      refusal: undefined,
      entitlement: entitled.body.id,
      subscriber: { id: created.body.id, token: created.body.token },
      receiptKey,
    };
    members.push(member);
    return member;
  }

  /**
   * The source of news, following `tree`, AES-128-GCM, no manifests (in groups with packetsPerGroup),
   * sending treeRun or, given `incarnation`, that incarnation of its session.
   */
  const sender = (
    tree: SourceTree,
    cryptoPeriodMs: number,
    incarnation: number = treeRun.incarnation,
  ): SenderProtection =>
    createSenderProtection(
      {
        suite: suiteByName('aes-128-gcm', 'suite'),
        service: 'news',
        serviceEpoch: 1,
        serviceKey,
        sourcePrivateKey: source.privateKey,
        sourcePublicKey: source.publicKey,
        cryptoPeriodMs,
        tier: 0,
        manifestPackets: 0,
        tree,
        packetsPerGroup: settings.packetsPerGroup,
      },
      { sessionId: treeRun.sessionId, incarnation },
    );

  return {
    app,
    store,
    call,
    root,
    serviceKey,
    members,
    addMember,
    sender,
    async close() {
      for (const member of members) {
        member.token.close();
      }
      await app.close();
      await store.close();
    },
  };
}

export type TreeBed = Awaited<ReturnType<typeof createTreeBed>>;

const settle = () => new Promise((resolve) => setImmediate(resolve));

/**
 * Hands datagrams to every member's protection (each its own copy; `lose` may keep one from a
 * member), recording what it decodes, then lets the token's answers settle.
 */
export async function deliverTo(
  members: readonly TreeMember[],
  datagrams: readonly Buffer[],
  lose?: (member: TreeMember, index: number, datagram: Buffer) => boolean,
): Promise<void> {
  for (const datagram of datagrams) {
    for (const [index, member] of members.entries()) {
      if (lose?.(member, index, datagram) === true) {
        continue;
      }
      member.protection.filter(Buffer.from(datagram), (plain) =>
        member.decoded.push(plain.readUInt32BE(headerBytes)),
      );
    }
  }
  await settle();
  await settle();
}

/**
 * Streams `periods` crypto-periods from the source's sender: a control tick every 50 ms, a DATA
 * every 100 ms carrying its sequence. `at(atMs)` runs before each tick (a revoke, a poll). The
 * stream's clock starts at `startUs` (default: now) and its packets are of treeRun, or of
 * `incarnation` of its session. Returns how many DATA were sent.
 */
export async function streamPeriods(settings: {
  sender: SenderProtection;
  periodMs: number;
  periods: number;
  deliver: (datagrams: Buffer[]) => Promise<void>;
  at?: (atMs: number) => Promise<void>;
  startUs?: number;
  incarnation?: number;
}): Promise<number> {
  const startUs = settings.startUs ?? Date.now() * 1000;
  const run = { sessionId: treeRun.sessionId, incarnation: settings.incarnation ?? treeRun.incarnation };
  let sequence = 0;
  for (let atMs = 0; atMs < settings.periods * settings.periodMs; atMs += 50) {
    const atUs = startUs + atMs * 1000;
    await settings.at?.(atMs);
    await settings.deliver(settings.sender.control({ ...run, sequence }, atMs, atUs));
    if (atMs % 100 === 0) {
      const plain = Buffer.alloc(headerBytes + 64);
      writeHeaderFields(plain, PacketType.data, run.sessionId, sequence, atUs, 0, 64, run.incarnation);
      plain.writeUInt32BE(sequence, headerBytes);
      await settings.deliver(settings.sender.seal(plain, atMs, atUs));
      sequence++;
    }
  }
  return sequence;
}

/**
 * A burst of leaves between two polls of the source: the source follows the tree over HTTP as
 * `send --subscription` does (polling only when told), the first `leaving` members are revoked one
 * after another 2.2 periods into a 6-period stream, and the source polls once after. Returns how
 * many DATA were sent.
 */
export async function burstOfLeaves(
  bed: TreeBed,
  settings: {
    leaving: number;
    periodMs: number;
    lose?: (member: TreeMember, index: number, datagram: Buffer) => boolean;
  },
): Promise<number> {
  const studio = await bed.call('POST', '/v1/sources', { name: 'studio' });
  assert.equal(studio.status, 201);
  const address = await bed.app.listen({ host: '127.0.0.1', port: 0 });
  const follower = followMemberTree({
    server: address,
    token: studio.body.token,
    product: 'news',
    serviceEpoch: 1,
    pollMs: 3_600_000,
  });
  await follower.start();
  let revoked = false;
  try {
    return await streamPeriods({
      sender: bed.sender(follower.tree, settings.periodMs),
      periodMs: settings.periodMs,
      periods: 6,
      deliver: (datagrams) => deliverTo(bed.members, datagrams, settings.lose),
      at: async (atMs) => {
        if (revoked || atMs < 2.2 * settings.periodMs) {
          return;
        }
        for (const member of bed.members.slice(0, settings.leaving)) {
          const answer = await bed.call('DELETE', `/v1/entitlements/${member.entitlement}`);
          assert.equal(answer.status, 200, JSON.stringify(answer.body));
        }
        await follower.poll();
        assert.equal(follower.tree.current()?.treeEpoch, settings.leaving);
        revoked = true;
      },
    });
  } finally {
    follower.stop();
  }
}

/** The tree as a source fetches it through the API (GET /v1/products/news/tree), its group key opened. */
export async function fetchTree(bed: TreeBed, sourceToken: string) {
  const recipient = generateKeyPairSync('x25519');
  const answer = await bed.call(
    'GET',
    `/v1/products/news/tree?recipient=${x25519Raw(recipient.publicKey).toString('hex')}`,
    undefined,
    sourceToken,
  );
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  const body = answer.body as TreeForSource;
  const groupKey = openGroupKey(
    recipient.privateKey,
    Buffer.from(body.ephemeral, 'hex'),
    Buffer.from(body.wrappedGroupKey, 'hex'),
  );
  assert.ok(groupKey !== undefined);
  return { body, groupKey };
}

/**
 * Every key a member's token holds, as one who dumped it (device key and state) would open them: its
 * grants' service keys and its memberships' path keys.
 */
export function dumpedKeys(member: TreeMember): Buffer[] {
  const dump = member.backend.dump();
  const kekOf = (ephemeral: Buffer) =>
    diffieHellman({ privateKey: dump.devicePrivateKey, publicKey: p256FromPoint(ephemeral) });
  const held: Buffer[] = [];
  for (const text of dump.state.grants) {
    const grant = decodeGrant(Buffer.from(text, 'base64'));
    assert.ok(grant.ok);
    const key = unwrapKey(kekOf(grant.value.ephemeralPublicKey), grant.value.wrappedServiceKey);
    assert.ok(key !== undefined);
    held.push(key);
  }
  for (const record of dump.state.memberships ?? []) {
    const membership = decodeMembership(Buffer.from(record.membership, 'base64'));
    assert.ok(membership.ok);
    const kek = kekOf(membership.value.ephemeralPublicKey);
    for (const wrapped of membership.value.wrappedKeys) {
      const key = unwrapKey(kek, wrapped);
      assert.ok(key !== undefined);
      held.push(key);
    }
  }
  return held;
}
