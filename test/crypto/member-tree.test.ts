import assert from 'node:assert/strict';
import { diffieHellman, generateKeyPairSync, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import {
  ed25519Raw,
  generateSigningKey,
  openGroupKey,
  p256FromPoint,
  type TreeGroupKey,
  unwrapKey,
  x25519Raw,
} from '../../src/crypto/authority.js';
import type { TokenRefused } from '../../src/crypto/errors.js';
import { decodeRekey, lkhUnwrapAny } from '../../src/crypto/lkh.js';
import {
  createReceiverProtection,
  createSenderProtection,
  type ReceiverProtection,
  type SourceTree,
} from '../../src/crypto/restricted-session.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { Token } from '../../src/crypto/token.js';
import { treeRekeyLeadMs } from '../../src/limits.js';
import type { EnrollResult, TreeForSource } from '../../src/protocol/api-tokens.js';
import { headerBytes, offsetType, PacketType, writeHeaderFields } from '../../src/protocol/packet.js';
import {
  decodeGrant,
  decodeKey,
  decodeMembership,
  decodeRekeyDatagram,
} from '../../src/protocol/restricted.js';
import { openStore, type Store } from '../../src/store/database.js';
import { onEveryStore } from '../helpers/postgres.js';
import { MemoryBackend } from '../sim/protection.js';

const operator = 'operator-token-for-member-tree-tests';
const root = generateSigningKey();
const source = generateSigningKey();
const serviceKey = randomBytes(32);
const periodMs = 2_000;

/** What one subscriber's host holds: its token, what it decoded, and why it stopped, if it did. */
interface Member {
  readonly name: string;
  readonly backend: MemoryBackend;
  readonly token: Token;
  readonly protection: ReceiverProtection;
  readonly decoded: number[];
  refusal: TokenRefused | undefined;
  entitlement: string;
  readonly subscriber: { id: string; token: string };
  readonly receiptKey: string;
}

onEveryStore((storeName, options, storeUrl, cleanup) =>
  describe(
    `member trees: a revoked subscriber is rekeyed out, the others go on without a lost packet (${storeName})`,
    options,
    () => {
      let store: Store;
      let app: FastifyInstance;
      const members: Member[] = [];

      const call = async (method: string, url: string, body?: unknown, token = operator) => {
        const response = await app.inject({
          method: method as 'GET',
          url,
          headers: { authorization: `Bearer ${token}` },
          ...(body === undefined ? {} : { payload: body as object }),
        });
        return { status: response.statusCode, body: response.json() };
      };

      /** The source's view of the tree, fetched through the API as `send --subscription` does. */
      function sourceTree(sourceToken: string) {
        const recipient = generateKeyPairSync('x25519');
        const known = new Map<number, TreeGroupKey>();
        let newest: TreeGroupKey | undefined;
        let rekeys: Buffer[] = [];
        const tree: SourceTree = {
          current: () => newest,
          groupKey: (epoch) => known.get(epoch),
          rekeys: () => rekeys,
        };
        const refresh = async () => {
          const answer = await call(
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
          newest = { treeId: body.treeId, treeEpoch: body.epoch, groupKey };
          known.set(body.epoch, newest);
          rekeys = body.rekeys.map((text) => Buffer.from(text, 'base64'));
          return body;
        };
        return { tree, refresh };
      }

      before(async () => {
        store = await openStore(storeUrl());
        app = await buildServerApp({
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
                treeDepth: 3,
              },
            ],
          },
        });
        for (const name of ['ann', 'ben', 'cat']) {
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
          const view = token.installMembership(Buffer.from(grant.membership, 'base64'));
          assert.equal(view.treeEpoch, 0);
          const member: Member = {
            name,
            backend,
            token,
            protection: undefined as unknown as ReceiverProtection,
            decoded: [],
            refusal: undefined,
            entitlement: entitled.body.id,
            subscriber: { id: created.body.id, token: created.body.token },
            receiptKey,
          };
          (member as { protection: ReceiverProtection }).protection = createReceiverProtection(
            token,
            (refusal) => {
              member.refusal ??= refusal;
            },
          );
          members.push(member);
        }
      });

      after(async () => {
        for (const member of members) {
          member.token.close();
        }
        await app?.close();
        await store?.close();
        cleanup();
      });

      it('the memberships name three slots of one tree, each wrapped to its own token', () => {
        const slots = members.map((member) => member.token.memberships()[0]?.slot);
        assert.equal(new Set(slots).size, 3);
        const trees = members.map((member) => member.token.memberships()[0]?.treeId);
        assert.equal(new Set(trees).size, 1);
      });

      it('after a revoke, the next periods decode for ann and ben, not for cat, and cat is told why', async () => {
        const studio = await call('POST', '/v1/sources', { name: 'studio' });
        assert.equal(studio.status, 201);
        const { tree, refresh } = sourceTree(studio.body.token);
        assert.equal((await refresh()).members, 3);
        const sender = createSenderProtection(
          {
            suite: suiteByName('aes-128-gcm', 'suite'),
            service: 'news',
            serviceEpoch: 1,
            serviceKey,
            sourcePrivateKey: source.privateKey,
            sourcePublicKey: source.publicKey,
            cryptoPeriodMs: periodMs,
            tier: 0,
            manifestPackets: 0,
            tree,
          },
          { sessionId: 7, incarnation: 8 },
        );
        const startUs = Date.now() * 1000;
        const settle = () => new Promise((resolve) => setImmediate(resolve));
        const wire: Buffer[] = [];
        const deliver = async (datagrams: Buffer[]) => {
          for (const datagram of datagrams) {
            wire.push(Buffer.from(datagram));
            for (const member of members) {
              member.protection.filter(Buffer.from(datagram), (plain) =>
                member.decoded.push(plain.readUInt32BE(headerBytes)),
              );
            }
          }
          await settle();
          await settle();
        };
        let sequence = 0;
        let revokedAtMs: number | undefined;
        let rekeyEpochAtRevoke = 0;
        // 5 periods, a packet every 100 ms and a control tick every 50 ms; cat is revoked 2.3 periods in.
        for (let atMs = 0; atMs < 5 * periodMs; atMs += 50) {
          const atUs = startUs + atMs * 1000;
          if (revokedAtMs === undefined && atMs >= 2.3 * periodMs) {
            const cat = members[2] as Member;
            const revoked = await call('DELETE', `/v1/entitlements/${cat.entitlement}`);
            assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
            assert.equal(revoked.body.removed.length, 1);
            assert.equal(revoked.body.removed[0].epoch, 1);
            const fetched = await refresh();
            assert.equal(fetched.epoch, 1);
            assert.equal(fetched.members, 2);
            assert.equal(fetched.rekeys.length, 1);
            revokedAtMs = atMs;
            rekeyEpochAtRevoke = Math.floor(atMs / periodMs) + 1;
          }
          await deliver(sender.control({ sessionId: 7, incarnation: 8, sequence }, atMs, atUs));
          if (atMs % 100 === 0) {
            const plain = Buffer.alloc(headerBytes + 64);
            writeHeaderFields(plain, PacketType.data, 7, sequence, atUs, 0, 64, 8);
            plain.writeUInt32BE(sequence, headerBytes);
            await deliver(sender.seal(plain, atMs, atUs));
            sequence++;
          }
        }
        const [ann, ben, cat] = members as [Member, Member, Member];
        const all = Array.from({ length: sequence }, (_, index) => index);
        assert.deepEqual(ann.decoded, all, `ann: ${JSON.stringify(ann.protection.stats)}`);
        assert.deepEqual(ben.decoded, all, `ben: ${JSON.stringify(ben.protection.stats)}`);
        assert.equal(ann.protection.stats.rekeysApplied, 1);
        assert.equal(ann.refusal, undefined);
        // cat was revoked 0.3 periods into key epoch 3 (more than treeRekeyLeadMs before epoch 4):
        // epoch 4's key is replaced and announced under the new group key; cat decodes up to epoch 3.
        assert.ok(periodMs * 0.7 >= treeRekeyLeadMs);
        const lastCat = Math.max(...cat.decoded);
        const lastCatEpoch = Math.floor((lastCat * 100) / periodMs) + 1;
        assert.equal(lastCatEpoch, rekeyEpochAtRevoke, `cat decoded up to packet ${lastCat}`);
        assert.deepEqual(cat.decoded, all.slice(0, lastCat + 1), 'what cat decoded was whole up to then');
        assert.equal(cat.refusal?.reason, 'removed', String(cat.refusal?.message));
        assert.match(String(cat.refusal?.message), /removed from news's members \(key tree epoch 1\)/);
        assert.equal(cat.token.memberships()[0]?.removedAt, 1);

        // What cat's token holds, dumped: its device key opens its grant and its membership; with those
        // keys nothing of the rekey opens, and no later KEY's tree share unwraps.
        const dump = cat.backend.dump();
        const held: Buffer[] = [];
        const kekOf = (ephemeral: Buffer) =>
          diffieHellman({ privateKey: dump.devicePrivateKey, publicKey: p256FromPoint(ephemeral) });
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
        assert.equal(held.length, 1 + 4);
        const rekeys = wire
          .filter((datagram) => datagram[offsetType] === PacketType.rekey)
          .map((datagram) => {
            const decoded = decodeRekeyDatagram(datagram);
            assert.ok(decoded.ok);
            return decoded.value.rekey;
          });
        assert.ok(rekeys.length >= 2, 'the rekey was repeated in-band');
        const rekey = rekeys[0] as Buffer;
        assert.equal(decodeRekey(rekey).ok, true);
        assert.deepEqual(lkhUnwrapAny(rekey, held), [], 'a dumped departed token opens nothing of the rekey');
        const later = wire
          .filter((datagram) => datagram[offsetType] === PacketType.key)
          .map((datagram) => decodeKey(datagram))
          .filter((key) => key.ok && key.value.tree !== undefined && key.value.tree.treeEpoch >= 1);
        assert.ok(later.length > 0);
        for (const key of later) {
          assert.ok(key.ok && key.value.tree !== undefined);
          for (const candidate of held) {
            assert.equal(unwrapKey(candidate, key.value.tree.wrappedShare), undefined);
          }
        }
      });

      it('an ended entitlement is swept out too, and a token enrolled again later gets a fresh slot at the current epoch', async () => {
        const ben = members[1] as Member;
        // ben's entitlement ends: revoked like cat's, through the same route.
        const revoked = await call('DELETE', `/v1/entitlements/${ben.entitlement}`);
        assert.equal(revoked.status, 200);
        assert.equal(revoked.body.removed[0].epoch, 2);
        const again = await call('DELETE', `/v1/entitlements/${ben.entitlement}`);
        assert.equal(again.status, 200);
        assert.deepEqual(again.body.removed, [], 'revoking twice rekeys once');
        assert.equal((await call('DELETE', '/v1/entitlements/no-such')).status, 404);
        // Entitled again: enrolling again admits the token to a slot, with the keys of epoch 2.
        const entitled = await call('POST', '/v1/entitlements', {
          subscriber: ben.subscriber.id,
          service: 'channel',
          session: 'news',
        });
        assert.equal(entitled.status, 201);
        const enrolled = await call(
          'POST',
          '/v1/enrollments',
          { device: ben.token.devicePoint().toString('hex'), receiptKey: ben.receiptKey },
          ben.subscriber.token,
        );
        assert.equal(enrolled.status, 200, JSON.stringify(enrolled.body));
        const membership = (enrolled.body as EnrollResult).grants[0]?.membership;
        assert.ok(membership !== undefined);
        const view = ben.token.installMembership(Buffer.from(membership, 'base64'));
        assert.equal(view.treeEpoch, 2);
        assert.equal(view.removedAt, undefined);
        assert.equal(ben.token.memberships().length, 1, 'the new membership replaced the old one');
        const asSubscriber = await call(
          'GET',
          '/v1/products/news/tree?recipient=' + '00'.repeat(32),
          undefined,
          'x',
        );
        assert.equal(asSubscriber.status, 401);
      });
    },
  ),
);
