import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  createLkhMember,
  createLkhTree,
  decodeRekey,
  lkhEntryBytes,
  lkhHeaderBytes,
  lkhSignatureBytes,
  lkhUnwrapAny,
} from '../../src/crypto/lkh.js';
import { createRandom } from '../helpers/random.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');

function setUp(depth: number, members: number) {
  const tree = createLkhTree({ depth, treeId: 9, signingKey: privateKey, members });
  const handles = Array.from({ length: members }, (_, slot) =>
    createLkhMember({ depth, treeId: 9, publicKey, welcome: tree.welcome(slot) }),
  );
  return { tree, handles };
}

describe('LKH rekey', () => {
  it('after a leave every other member derives the new group key; the departed one learns nothing', () => {
    const { tree, handles } = setUp(5, 32);
    const old = tree.groupKey();
    const departed = handles[13];
    assert.ok(departed !== undefined);
    const heldBefore = [...departed.keys().values()];
    const message = tree.leave(13);
    const fresh = tree.groupKey();
    assert.notDeepEqual(fresh, old);
    for (const [slot, member] of handles.entries()) {
      if (slot === 13) {
        continue;
      }
      assert.deepEqual(member.apply(message).ok, true);
      assert.deepEqual(member.groupKey(), fresh, `member ${slot}`);
    }
    // Everything it held, plus the message: nothing opens, and the new group key is not among its keys.
    assert.deepEqual(lkhUnwrapAny(message, heldBefore), []);
    departed.apply(message);
    assert.deepEqual(departed.groupKey(), old);
    for (const key of departed.keys().values()) {
      assert.notDeepEqual(key, fresh);
    }
  });

  it('property: after random joins and leaves, members agree and no departed member can open any later message', () => {
    const random = createRandom(2026);
    const depth = 4;
    const tree = createLkhTree({ depth, treeId: 1, signingKey: privateKey, members: 0 });
    const members = new Map<number, ReturnType<typeof createLkhMember>>();
    const departedKeys: Buffer[] = [];
    for (let step = 0; step < 200; step++) {
      let message: Buffer;
      if (members.size === 0 || (members.size < 16 && random.int(2) === 0)) {
        const { welcome, rekey } = tree.join();
        message = rekey;
        for (const member of members.values()) {
          assert.equal(member.apply(message).ok, true);
        }
        members.set(welcome.slot, createLkhMember({ depth, treeId: 1, publicKey, welcome }));
      } else {
        const slots = [...members.keys()];
        const slot = slots[random.int(slots.length)] as number;
        const leaving = members.get(slot);
        members.delete(slot);
        departedKeys.push(...(leaving?.keys().values() ?? []));
        message = tree.leave(slot);
        for (const member of members.values()) {
          assert.equal(member.apply(message).ok, true);
        }
      }
      assert.deepEqual(
        lkhUnwrapAny(message, departedKeys),
        [],
        `step ${step}: a departed member opened a key`,
      );
      for (const [slot, member] of members) {
        assert.deepEqual(member.groupKey(), tree.groupKey(), `step ${step}, slot ${slot}`);
      }
    }
  });

  it('a message is about 2·log₂N wrapped keys: 2·20 − 1 at a million members, under 2 KB', () => {
    const tree = createLkhTree({ depth: 20, treeId: 3, signingKey: privateKey, members: 1_000_000 });
    const message = tree.leave(123_456);
    const decoded = decodeRekey(message);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.entries.length, 2 * 20 - 1);
    assert.equal(message.length, lkhHeaderBytes + 39 * lkhEntryBytes + lkhSignatureBytes);
    assert.ok(message.length <= 2048, `${message.length} bytes`);
    const member = createLkhMember({ depth: 20, treeId: 3, publicKey, welcome: tree.welcome(999_999) });
    // This member was welcomed after the leave: a later one must still work for it.
    const next = tree.leave(5);
    assert.equal(member.apply(next).ok, true);
    assert.deepEqual(member.groupKey(), tree.groupKey());
  });

  it('refuses forged, replayed, other-tree and skipped messages, and leaves its keys alone', () => {
    const { tree, handles } = setUp(3, 8);
    const member = handles[0];
    assert.ok(member !== undefined);
    const first = tree.leave(7);
    const forged = Buffer.from(first);
    forged[lkhHeaderBytes + 10] = (forged[lkhHeaderBytes + 10] as number) ^ 1;
    const before = member.groupKey();
    assert.deepEqual(member.apply(forged), { ok: false, reason: 'bad-signature' });
    assert.deepEqual(member.apply(first.subarray(0, 20)), { ok: false, reason: 'malformed' });
    const other = createLkhTree({ depth: 3, treeId: 10, signingKey: privateKey, members: 8 });
    assert.deepEqual(member.apply(other.leave(1)), { ok: false, reason: 'other-tree' });
    assert.deepEqual(member.groupKey(), before);
    assert.equal(member.apply(first).ok, true);
    assert.deepEqual(member.apply(first), { ok: false, reason: 'stale' });
    tree.leave(6);
    assert.deepEqual(member.apply(tree.leave(5)), { ok: false, reason: 'missed-epoch' });
  });

  it('decoder: truncated, bad version and too many entries are refused', () => {
    const { tree } = setUp(3, 8);
    const message = tree.leave(2);
    for (let length = 0; length < message.length; length++) {
      assert.equal(decodeRekey(message.subarray(0, length)).ok, false);
    }
    const version = Buffer.from(message);
    version[4] = 9;
    assert.equal(decodeRekey(version).ok, false);
    const count = Buffer.from(message);
    count.writeUInt16BE(100, 6);
    assert.equal(decodeRekey(count).ok, false);
  });
});
