/**
 * Member trees: receivers that start after leaves, with a token enrolled before them (they catch
 * up from the in-band REKEYs), one further behind than the source repeats (told to enroll again,
 * and decoding once it did), the agent's filter (S2) following a revoke like `receive`, and more
 * leaves than a token keeps group keys for just before a period ends (the members that stay must
 * still open the next period's key, which is too late to replace).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ed25519Raw, generateSigningKey } from '../../src/crypto/authority.js';
import type { TokenRefused } from '../../src/crypto/errors.js';
import { createReceiverProtection } from '../../src/crypto/restricted-session.js';
import { Token } from '../../src/crypto/token.js';
import type { EnrollResult } from '../../src/protocol/api-tokens.js';
import { headerBytes, offsetType, PacketType } from '../../src/protocol/packet.js';
import { createAgentRestrictedFilter } from '../../src/receiver/agent-restricted.js';
import { followMemberTree } from '../../src/source/member-tree.js';
import { createTreeBed, streamPeriods, type TreeBed } from '../helpers/member-tree-bed.js';
import { MemoryBackend } from '../sim/protection.js';

const periodMs = 2_000;

interface Member {
  readonly name: string;
  token: Token;
  filter: ((datagram: Buffer) => void) | undefined;
  readonly decoded: number[];
  refusal: TokenRefused | undefined;
  readonly entitlement: string;
  readonly subscriberToken: string;
  readonly receiptKey: string;
  stats: () => unknown;
}

describe('member trees: late receivers, tokens behind, and the agent', () => {
  let bed: TreeBed;

  const enroll = async (member: Member) => {
    const answer = await bed.call(
      'POST',
      '/v1/enrollments',
      { device: member.token.devicePoint().toString('hex'), receiptKey: member.receiptKey },
      member.subscriberToken,
    );
    assert.ok(answer.status === 201 || answer.status === 200, JSON.stringify(answer.body));
    const grant = (answer.body as EnrollResult).grants[0];
    assert.ok(grant?.membership !== undefined);
    member.token.installGrant(Buffer.from(grant.grant, 'base64'));
    member.token.installMembership(Buffer.from(grant.membership, 'base64'));
  };

  const newMember = async (name: string): Promise<Member> => {
    const created = await bed.call('POST', '/v1/subscribers', { name });
    assert.equal(created.status, 201);
    const entitled = await bed.call('POST', '/v1/entitlements', {
      subscriber: created.body.id,
      service: 'channel',
      session: 'news',
    });
    assert.equal(entitled.status, 201);
    const member: Member = {
      name,
      token: new Token(new MemoryBackend(ed25519Raw(bed.root.publicKey))),
      filter: undefined,
      decoded: [],
      refusal: undefined,
      entitlement: entitled.body.id,
      subscriberToken: created.body.token,
      receiptKey: ed25519Raw(generateSigningKey().publicKey).toString('base64url'),
      stats: () => undefined,
    };
    await enroll(member);
    return member;
  };

  const attach = (member: Member) => {
    member.refusal = undefined;
    const protection = createReceiverProtection(member.token, (refusal) => {
      member.refusal ??= refusal;
    });
    member.stats = () => protection.stats;
    member.filter = (datagram) =>
      protection.filter(datagram, (plain) => member.decoded.push(plain.readUInt32BE(headerBytes)));
  };
  const attachAgent = (member: Member) => {
    const filter = createAgentRestrictedFilter(
      member.token,
      (event) => {
        if (event.kind === 'refused') {
          member.refusal ??= event.refusal;
        }
      },
      (datagram) => {
        if (datagram[offsetType] === PacketType.data) {
          member.decoded.push(datagram.readUInt32BE(headerBytes));
        }
      },
    );
    member.stats = () => filter.status();
    member.filter = (datagram) => filter.filter(datagram);
  };

  before(async () => {
    bed = await createTreeBed({ treeDepth: 5 });
  });

  after(async () => {
    await bed?.close();
  });

  it('late tokens catch up from the REKEYs; one too far behind is told to enroll again; the agent stops when revoked; a burst of leaves just before a period ends loses no packet', async () => {
    const ann = await newMember('ann');
    const ben = await newMember('ben');
    const late = await newMember('late');
    const behind = await newMember('behind');
    const leavers: Member[] = [];
    for (let index = 0; index < 15; index++) {
      leavers.push(await newMember(`leaver-${index}`));
    }
    attach(ann);
    attachAgent(ben);
    for (const [index, leaver] of leavers.entries()) {
      (index % 2 === 0 ? attach : attachAgent)(leaver);
    }
    const everyone = [ann, ben, late, behind, ...leavers];
    const studio = await bed.call('POST', '/v1/sources', { name: 'studio' });
    assert.equal(studio.status, 201);
    const address = await bed.app.listen({ host: '127.0.0.1', port: 0 });
    let clockUs = Date.now() * 1000;
    const run = async (incarnation: number, periods: number, at: (atMs: number) => Promise<void>) => {
      const follower = followMemberTree({
        server: address,
        token: studio.body.token,
        product: 'news',
        serviceEpoch: 1,
        pollMs: 3_600_000,
      });
      await follower.start();
      // One clock across runs: a token's rollback counter sees stream time go on.
      const startUs = clockUs;
      clockUs += periods * periodMs * 1000;
      const settle = () => new Promise((resolve) => setImmediate(resolve));
      const deliver = async (datagrams: Buffer[]) => {
        for (const datagram of datagrams) {
          for (const member of everyone) {
            member.filter?.(Buffer.from(datagram));
          }
        }
        await settle();
        await settle();
      };
      follow = () => follower.poll();
      const sequence = await streamPeriods({
        sender: bed.sender(follower.tree, periodMs, incarnation),
        periodMs,
        periods,
        deliver,
        at: async (atMs) => {
          await at(atMs);
          if (atMs % 1000 === 0) {
            await follower.poll();
          }
        },
        startUs,
        incarnation,
      });
      follower.stop();
      return sequence;
    };
    const revoke = async (members: Member[]) => {
      for (const member of members) {
        const answer = await bed.call('DELETE', `/v1/entitlements/${member.entitlement}`);
        assert.equal(answer.status, 200, JSON.stringify(answer.body));
      }
    };

    // Run 1: five leave at 2.2 periods; `late` (enrolled at tree epoch 0) starts at 3.5 periods.
    let lateFrom = 0;
    let follow: (() => Promise<void>) | undefined;
    const sent = await run(8, 7, async (atMs) => {
      if (atMs === 2.2 * periodMs) {
        await revoke(leavers.slice(0, 5));
      }
      if (atMs === 3.5 * periodMs) {
        lateFrom = atMs / 100;
        attach(late);
      }
    });
    const all = Array.from({ length: sent }, (_, index) => index);
    for (const member of [ann, ben]) {
      assert.equal(member.refusal, undefined, `${member.name}: ${member.refusal?.message}`);
      assert.deepEqual(member.decoded, all, `${member.name}: ${JSON.stringify(member.stats())}`);
    }
    for (const member of leavers.slice(0, 5)) {
      assert.equal(member.refusal?.reason, 'removed', `${member.name}: ${JSON.stringify(member.stats())}`);
      assert.ok(member.decoded.length < sent, member.name);
    }
    assert.equal(late.refusal, undefined, String(late.refusal?.message));
    assert.ok(late.decoded.length > 0, `late: ${JSON.stringify(late.stats())}`);
    // It decodes from the first period it has the key for, then every packet.
    const lateFirst = late.decoded[0] as number;
    assert.ok(lateFirst - lateFrom <= periodMs / 100, `late began at ${lateFirst}, attached at ${lateFrom}`);
    assert.deepEqual(late.decoded, all.slice(lateFirst), `late: ${JSON.stringify(late.stats())}`);

    // Run 2: five more leave; a new source run knows the newest 8 rekeys only; `behind` holds epoch 0.
    for (const member of everyone) {
      member.decoded.length = 0;
    }
    attach(ann);
    attachAgent(ben);
    attach(late);
    attach(behind);
    await revoke(leavers.slice(5, 10));
    let reenrolledAt: number | undefined;
    const sent2 = await run(9, 8, async (atMs) => {
      if (reenrolledAt === undefined && behind.refusal !== undefined) {
        assert.equal(behind.refusal.reason, 'rekey-missing', behind.refusal.message);
        assert.match(behind.refusal.message, /enroll the token again/);
        await enroll(behind);
        attach(behind);
        reenrolledAt = atMs / 100;
      }
    });
    const all2 = Array.from({ length: sent2 }, (_, index) => index);
    for (const member of [ann, ben, late]) {
      assert.equal(member.refusal, undefined, `${member.name}: ${member.refusal?.message}`);
      assert.deepEqual(member.decoded, all2, `${member.name}: ${JSON.stringify(member.stats())}`);
    }
    assert.ok(reenrolledAt !== undefined, `behind: ${JSON.stringify(behind.stats())}`);
    assert.ok(behind.decoded.length > 0, `behind: ${JSON.stringify(behind.stats())}`);
    for (const member of leavers.slice(0, 10)) {
      assert.ok(member.decoded.length === 0 || member.refusal !== undefined, member.name);
    }

    // Run 3: five leave 0.5 s before a period ends (less than treeRekeyLeadMs), the source learning
    // of it at once: the next period's key is not replaced, and the members that stay have applied
    // more rekeys than a token keeps group keys for by the time they ask for it.
    for (const member of everyone) {
      member.decoded.length = 0;
    }
    attach(ann);
    attachAgent(ben);
    attach(late);
    attach(behind);
    for (const [index, leaver] of leavers.slice(10).entries()) {
      (index % 2 === 0 ? attach : attachAgent)(leaver);
    }
    const sent3 = await run(10, 6, async (atMs) => {
      if (atMs === 2.75 * periodMs) {
        await revoke(leavers.slice(10));
        await follow?.();
      }
    });
    const all3 = Array.from({ length: sent3 }, (_, index) => index);
    for (const member of [ann, ben, late, behind]) {
      assert.equal(member.refusal, undefined, `${member.name}: ${member.refusal?.message}`);
      assert.deepEqual(member.decoded, all3, `${member.name}: ${JSON.stringify(member.stats())}`);
    }
    // Those removed decode nothing after the next period (key epoch 5 starts at packet 80).
    for (const member of leavers.slice(10)) {
      assert.equal(member.refusal?.reason, 'removed', member.name);
      assert.ok(Math.max(-1, ...member.decoded) < (4 * periodMs) / 100, member.name);
    }
  });
});
