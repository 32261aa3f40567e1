/**
 * Member trees attacked: what a departed or never-entitled token can do with everything it holds
 * dumped, and what forged or replayed REKEYs do to a legitimate member.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { ed25519Raw, generateSigningKey } from '../../src/crypto/authority.js';
import { decodeRekey, lkhHeaderBytes, lkhUnwrapAny } from '../../src/crypto/lkh.js';
import { createReceiverProtection } from '../../src/crypto/restricted-session.js';
import { Token } from '../../src/crypto/token.js';
import { encodeRekeyDatagram } from '../../src/protocol/restricted.js';
import {
  createTreeBed,
  dumpedKeys,
  fetchTree as fetchTreeOf,
  type TreeBed,
  type TreeMember,
} from '../helpers/member-tree-bed.js';
import { MemoryBackend } from '../sim/protection.js';

const depth = 3;

describe('member trees under attack', () => {
  let bed: TreeBed;
  let members: TreeMember[];
  let sourceToken = '';
  const call: TreeBed['call'] = (...args) => bed.call(...args);
  const fetchTree = () => fetchTreeOf(bed, sourceToken);

  before(async () => {
    bed = await createTreeBed({ treeDepth: depth });
    members = bed.members;
    const studio = await call('POST', '/v1/sources', { name: 'studio' });
    assert.equal(studio.status, 201);
    sourceToken = studio.body.token;
    for (const name of ['ann', 'ben', 'cat']) {
      await bed.addMember(name);
    }
  });

  after(async () => {
    await bed?.close();
  });

  it('a departed token with its service key dumped derives no key of the tree and opens nothing of its leave', async () => {
    const cat = members[2] as TreeMember;
    const before = await fetchTree();
    const revoked = await call('DELETE', `/v1/entitlements/${cat.entitlement}`);
    assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
    assert.equal(revoked.body.removed.length, 1);
    const after = await fetchTree();
    assert.equal(after.body.epoch, before.body.epoch + 1);
    const rekey = Buffer.from(after.body.rekeys.at(-1) as string, 'base64');
    assert.ok(decodeRekey(rekey).ok);
    const held = dumpedKeys(cat);
    // Whatever the token held, and every key anyone could derive from it by HMAC over the tree id
    // and node numbers (a master secret taken from a key that tokens hold is such a key).
    const derivedKeys: Buffer[] = [];
    const treeId = Buffer.alloc(4);
    treeId.writeUInt32BE(after.body.treeId >>> 0);
    for (const key of held) {
      for (const label of ['gatecast member tree master v1', 'gatecast member tree storage v1']) {
        const master = createHmac('sha256', key).update(label).update(treeId).digest();
        derivedKeys.push(master);
        for (let node = 1; node < 2 ** (depth + 1); node++) {
          const name = Buffer.alloc(4);
          name.writeUInt32BE(node);
          derivedKeys.push(createHmac('sha256', master).update(name).digest());
        }
      }
    }
    assert.ok(
      !derivedKeys.some((key) => key.equals(before.groupKey)),
      'the group key is not derivable from the service key',
    );
    const candidates = [...held, ...derivedKeys];
    assert.deepEqual(lkhUnwrapAny(rekey, candidates), [], 'the departed token opens nothing of the rekey');
    assert.ok(!candidates.some((key) => key.equals(after.groupKey)));

    // cat's token takes the rekey and knows it was removed, and so does the token opened again
    // (as `gatecast token show` opens it in a process of its own).
    const outcome = cat.token.applyRekey(rekey);
    assert.deepEqual(outcome, { status: 'applied', treeEpoch: 1, removed: true });
    assert.equal(cat.token.memberships()[0]?.removedAt, 1);
    const reopened = new Token(cat.backend);
    assert.deepEqual(
      reopened.memberships().map((view) => [view.treeEpoch, view.removedAt]),
      [[1, 1]],
      'a token opened again shows its removal',
    );
  });

  it('a flood of forged REKEYs of the next epoch does not keep a member from the genuine one', async () => {
    const ann = members[0] as TreeMember;
    const ben = members[1] as TreeMember;
    let clock = 1_000;
    const protection = createReceiverProtection(
      ann.token,
      () => {},
      undefined,
      () => clock,
    );
    const datagram = (rekey: Buffer) =>
      encodeRekeyDatagram(
        { sessionId: 7, sequence: 1, timestampUs: Date.now() * 1000, incarnation: 8 },
        rekey,
      );
    // ann catches up with cat's leave (epoch 1).
    const before = await fetchTree();
    for (const text of before.body.rekeys) {
      protection.filter(datagram(Buffer.from(text, 'base64')), () => {});
    }
    assert.equal(ann.token.treeEpochOf(before.body.treeId), 1);
    assert.equal((await call('DELETE', `/v1/entitlements/${ben.entitlement}`)).status, 200);
    const after = await fetchTree();
    assert.equal(after.body.epoch, 2);
    const genuine = Buffer.from(after.body.rekeys.at(-1) as string, 'base64');
    // One who can send to the group but holds no key of the tree: the genuine message's header
    // (tree id, epoch 2, depth, entry count) with random wrapped keys and signature, many times.
    const forged = () => {
      const copy = Buffer.from(genuine);
      randomBytes(copy.length - lkhHeaderBytes).copy(copy, lkhHeaderBytes);
      for (let at = lkhHeaderBytes; at + 44 <= copy.length - 64; at += 44) {
        copy.writeUInt32BE(genuine.readUInt32BE(at), at); // the genuine targets
      }
      return copy;
    };
    for (let round = 0; round < 3; round++) {
      for (let index = 0; index < 100; index++) {
        protection.filter(datagram(forged()), () => {});
      }
      protection.filter(datagram(genuine), () => {});
      clock += 300;
    }
    assert.equal(protection.stats.rekeysApplied, 2, JSON.stringify(protection.stats));
    assert.equal(ann.token.treeEpochOf(after.body.treeId), 2);
  });

  it('a source naming an unusable X25519 key is told so (400), and a full tree refuses a token with 409, not 500', async () => {
    for (const recipient of ['00'.repeat(32), `01${'00'.repeat(31)}`]) {
      const answer = await call(
        'GET',
        `/v1/products/news/tree?recipient=${recipient}`,
        undefined,
        sourceToken,
      );
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.match(answer.body.message, /recipient: not a usable X25519 public key/);
    }
    // Fill the tree (2^3 slots; ann is the only member left) and enroll one more.
    const enroll = async () => {
      const created = await call('POST', '/v1/subscribers', { name: `s${randomBytes(4).toString('hex')}` });
      assert.equal(created.status, 201);
      const entitled = await call('POST', '/v1/entitlements', {
        subscriber: created.body.id,
        service: 'channel',
        session: 'news',
      });
      assert.equal(entitled.status, 201);
      const token = new Token(new MemoryBackend(ed25519Raw(bed.root.publicKey)));
      const answer = await call(
        'POST',
        '/v1/enrollments',
        {
          device: token.devicePoint().toString('hex'),
          receiptKey: ed25519Raw(generateSigningKey().publicKey).toString('base64url'),
        },
        created.body.token,
      );
      token.close();
      return answer;
    };
    const members = (await fetchTree()).body.members;
    for (let index = members; index < 2 ** depth; index++) {
      assert.equal((await enroll()).status, 201);
    }
    const refused = await enroll();
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.error, 'capacity-full');
    assert.match(refused.body.message, /the member tree of news is full \(8 members, treeDepth 3\)/);
  });
});
