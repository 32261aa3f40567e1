/**
 * Member trees: a burst of more leaves than rekeyGapsFatal, and one member's receiver loses the
 * first of its REKEY datagrams. Every later one is a gap until the source's next full repeat
 * brings the lost one: the receiver must wait for it, not tell its token to enroll again.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import { ed25519Raw, generateSigningKey, type TreeGroupKey } from '../../src/crypto/authority.js';
import type { TokenRefused } from '../../src/crypto/errors.js';
import {
  createReceiverProtection,
  createSenderProtection,
  type ReceiverProtection,
} from '../../src/crypto/restricted-session.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { Token } from '../../src/crypto/token.js';
import { rekeyGapsFatal } from '../../src/limits.js';
import type { EnrollResult } from '../../src/protocol/api-tokens.js';
import { headerBytes, offsetType, PacketType, writeHeaderFields } from '../../src/protocol/packet.js';
import { decodeRekeyDatagram } from '../../src/protocol/restricted.js';
import { followMemberTree } from '../../src/source/member-tree.js';
import { openStore, type Store } from '../../src/store/database.js';
import { MemoryBackend } from '../sim/protection.js';

const operator = 'operator-token-for-member-tree-lost-rekey-tests';
const root = generateSigningKey();
const source = generateSigningKey();
const serviceKey = randomBytes(32);
const periodMs = 2_000;
const leaving = rekeyGapsFatal + 6;
const staying = 3;

interface Member {
  readonly token: Token;
  readonly protection: ReceiverProtection;
  readonly decoded: number[];
  refusal: TokenRefused | undefined;
  readonly entitlement: string;
}

describe('member trees: a REKEY lost in a burst of leaves', () => {
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

  before(async () => {
    store = await openStore('sqlite::memory:');
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
            treeDepth: 6,
          },
        ],
      },
    });
    for (let index = 0; index < leaving + staying; index++) {
      const created = await call('POST', '/v1/subscribers', { name: `m${index}` });
      assert.equal(created.status, 201);
      const entitled = await call('POST', '/v1/entitlements', {
        subscriber: created.body.id,
        service: 'channel',
        session: 'news',
      });
      assert.equal(entitled.status, 201);
      const token = new Token(new MemoryBackend(ed25519Raw(root.publicKey)));
      const enrolled = await call(
        'POST',
        '/v1/enrollments',
        {
          device: token.devicePoint().toString('hex'),
          receiptKey: ed25519Raw(generateSigningKey().publicKey).toString('base64url'),
        },
        created.body.token,
      );
      assert.equal(enrolled.status, 201, JSON.stringify(enrolled.body));
      const grant = (enrolled.body as EnrollResult).grants[0];
      assert.ok(grant?.membership !== undefined);
      token.installGrant(Buffer.from(grant.grant, 'base64'));
      token.installMembership(Buffer.from(grant.membership, 'base64'));
      const member: Member = {
        token,
        protection: undefined as unknown as ReceiverProtection,
        decoded: [],
        refusal: undefined,
        entitlement: entitled.body.id,
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
  });

  it(`${leaving} revokes in a row, the first REKEY lost by one member: the ${staying} members left decode every packet, none is told to enroll again`, async () => {
    const studio = await call('POST', '/v1/sources', { name: 'studio' });
    assert.equal(studio.status, 201);
    // The source follows the tree as `send --subscription` does, over HTTP; it polls when told to.
    const address = await app.listen({ host: '127.0.0.1', port: 0 });
    const follower = followMemberTree({
      server: address,
      token: studio.body.token,
      product: 'news',
      serviceEpoch: 1,
      pollMs: 3_600_000,
    });
    await follower.start();
    const tree = follower.tree;
    const refresh = async () => {
      await follower.poll();
      return tree.current() as TreeGroupKey;
    };
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
    let droppedOne = false;
    const deliver = async (datagrams: Buffer[]) => {
      for (const datagram of datagrams) {
        for (const [index, member] of members.entries()) {
          if (index === members.length - 1 && datagram[offsetType] === PacketType.rekey && !droppedOne) {
            const decoded = decodeRekeyDatagram(datagram);
            if (decoded.ok && decoded.value.rekey.readUInt32BE(8) === 1) {
              droppedOne = true;
              continue;
            }
          }
          member.protection.filter(Buffer.from(datagram), (plain) =>
            member.decoded.push(plain.readUInt32BE(headerBytes)),
          );
        }
      }
      await settle();
      await settle();
    };
    let sequence = 0;
    let revoked = false;
    for (let atMs = 0; atMs < 6 * periodMs; atMs += 50) {
      const atUs = startUs + atMs * 1000;
      if (!revoked && atMs >= 2.2 * periodMs) {
        for (const member of members.slice(0, leaving)) {
          const answer = await call('DELETE', `/v1/entitlements/${member.entitlement}`);
          assert.equal(answer.status, 200, JSON.stringify(answer.body));
        }
        assert.equal((await refresh()).treeEpoch, leaving);
        revoked = true;
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
    follower.stop();
    assert.ok(droppedOne, 'the first REKEY was lost by the last member');
    assert.ok(((members.at(-1) as Member).protection.stats.rekeysIgnored.gap ?? 0) >= rekeyGapsFatal);
    const all = Array.from({ length: sequence }, (_, index) => index);
    for (const member of members.slice(leaving)) {
      assert.equal(member.refusal, undefined, String(member.refusal?.message));
      assert.equal(member.protection.stats.rekeysApplied, leaving, JSON.stringify(member.protection.stats));
      assert.equal(member.token.memberships()[0]?.treeEpoch, leaving);
      assert.deepEqual(member.decoded, all, JSON.stringify(member.protection.stats));
    }
    for (const member of members.slice(0, leaving)) {
      assert.ok(member.decoded.length < sequence);
    }
  });
});
