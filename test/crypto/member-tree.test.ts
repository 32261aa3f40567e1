import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type TreeGroupKey, unwrapKey } from '../../src/crypto/authority.js';
import { decodeRekey, lkhUnwrapAny } from '../../src/crypto/lkh.js';
import type { SourceTree } from '../../src/crypto/restricted-session.js';
import { treeRekeyLeadMs } from '../../src/limits.js';
import type { EnrollResult } from '../../src/protocol/api-tokens.js';
import { offsetType, PacketType } from '../../src/protocol/packet.js';
import { decodeKey, decodeRekeyDatagram } from '../../src/protocol/restricted.js';
import {
  createTreeBed,
  deliverTo,
  dumpedKeys,
  fetchTree,
  streamPeriods,
  type TreeBed,
  type TreeMember,
} from '../helpers/member-tree-bed.js';
import { onEveryStore } from '../helpers/postgres.js';

const periodMs = 2_000;

onEveryStore((storeName, options, storeUrl, cleanup) =>
  describe(
    `member trees: a revoked subscriber is rekeyed out, the others go on without a lost packet (${storeName})`,
    options,
    () => {
      let bed: TreeBed;
      let members: TreeMember[];
      const call: TreeBed['call'] = (...args) => bed.call(...args);

      /** The source's view of the tree, fetched through the API as `send --subscription` does. */
      function sourceTree(sourceToken: string) {
        const known = new Map<number, TreeGroupKey>();
        let newest: TreeGroupKey | undefined;
        let rekeys: Buffer[] = [];
        const tree: SourceTree = {
          current: () => newest,
          groupKey: (epoch) => known.get(epoch),
          rekeys: () => rekeys,
        };
        const refresh = async () => {
          const { body, groupKey } = await fetchTree(bed, sourceToken);
          newest = { treeId: body.treeId, treeEpoch: body.epoch, groupKey };
          known.set(body.epoch, newest);
          rekeys = body.rekeys.map((text) => Buffer.from(text, 'base64'));
          return body;
        };
        return { tree, refresh };
      }

      before(async () => {
        bed = await createTreeBed({ treeDepth: 3, storeUrl: storeUrl() });
        members = bed.members;
        for (const name of ['ann', 'ben', 'cat']) {
          const member = await bed.addMember(name);
          assert.equal(member.token.memberships()[0]?.treeEpoch, 0);
        }
      });

      after(async () => {
        await bed?.close();
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
        const sender = bed.sender(tree, periodMs);
        const wire: Buffer[] = [];
        let revokedAtMs: number | undefined;
        let rekeyEpochAtRevoke = 0;
        // 5 periods, a packet every 100 ms and a control tick every 50 ms; cat is revoked 2.3 periods in.
        const sequence = await streamPeriods({
          sender,
          periodMs,
          periods: 5,
          deliver: (datagrams) => {
            wire.push(...datagrams.map((datagram) => Buffer.from(datagram)));
            return deliverTo(members, datagrams);
          },
          at: async (atMs) => {
            if (revokedAtMs !== undefined || atMs < 2.3 * periodMs) {
              return;
            }
            const cat = members[2] as TreeMember;
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
          },
        });
        const [ann, ben, cat] = members as [TreeMember, TreeMember, TreeMember];
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
        const held = dumpedKeys(cat);
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
        const ben = members[1] as TreeMember;
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
