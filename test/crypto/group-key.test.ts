/**
 * Every-n-th-packet mode (src/crypto/group-key.ts, docs/protocol.md "Group keys"): the PRF against
 * its published vectors, the derivation's bindings, and a source and a receiver in groups of 16
 * over a token whose calls are counted: asked once per group, never for the traffic key, every
 * packet encrypted, forged seeds costing no token call once a group is open.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { buildKeyMessage, generateSigningKey } from '../../src/crypto/authority.js';
import { TokenRefused } from '../../src/crypto/errors.js';
import { cmacAes, deriveGroupKey, groupKeyModeProblem, groupSeedBytes } from '../../src/crypto/group-key.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { groupKeyPacketsMax, groupKeySuspectAsksPerSecondMax, groupSeedTriesMax } from '../../src/limits.js';
import {
  headerBytes,
  offsetBodyLength,
  offsetSequence,
  offsetType,
  PacketType,
} from '../../src/protocol/packet.js';
import { decodeKey } from '../../src/protocol/restricted.js';
import { createGroupBed, type GroupBed, plainData, groupRun as run } from '../helpers/group-bed.js';
import { burstOfLeaves, createTreeBed, type TreeBed } from '../helpers/member-tree-bed.js';

describe('group keys: AES-CMAC (RFC 4493, NIST SP 800-38B)', () => {
  const message = Buffer.from(
    '6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710',
    'hex',
  );
  const vectors = [
    ['2b7e151628aed2a6abf7158809cf4f3c', 0, 'bb1d6929e95937287fa37d129b756746'],
    ['2b7e151628aed2a6abf7158809cf4f3c', 16, '070a16b46b4d4144f79bdd9dd04a287c'],
    ['2b7e151628aed2a6abf7158809cf4f3c', 40, 'dfa66747de9ae63030ca32611497c827'],
    ['2b7e151628aed2a6abf7158809cf4f3c', 64, '51f0bebf7e3b9d92fc49741779363cfe'],
    [
      '603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4',
      0,
      '028962f61b7bf89efc6b551f4667d983',
    ],
    [
      '603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4',
      16,
      '28a7023f452e8f82bd4bf28d8c37c35c',
    ],
    [
      '603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4',
      40,
      'aaf3d8f1de5640c232f5b169b9c911e6',
    ],
    [
      '603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4',
      64,
      'e1992190549f6ed5696a2c056c315410',
    ],
  ] as const;
  for (const [key, length, mac] of vectors) {
    it(`AES-${key.length * 4} key, ${length}-byte message`, () => {
      assert.equal(cmacAes(Buffer.from(key, 'hex'), message.subarray(0, length)).toString('hex'), mac);
    });
  }
});

describe('group keys: the derivation', () => {
  const context = { sessionId: 1, incarnation: 2, keyEpoch: 3, packetsPerGroup: 16, groupIndex: 4 };
  const shares = [randomBytes(16), randomBytes(16)];
  const seed = randomBytes(groupSeedBytes);

  it('depends on each share, the seed, and every field of the context', () => {
    const base = deriveGroupKey(shares, seed, context, 16).toString('hex');
    const others = [
      deriveGroupKey([shares[0] as Buffer], seed, context, 16),
      deriveGroupKey([shares[1] as Buffer], seed, context, 16),
      deriveGroupKey([shares[0] as Buffer, randomBytes(16)], seed, context, 16),
      deriveGroupKey(shares, randomBytes(groupSeedBytes), context, 16),
      deriveGroupKey(shares, seed, { ...context, sessionId: 9 }, 16),
      deriveGroupKey(shares, seed, { ...context, incarnation: 9 }, 16),
      deriveGroupKey(shares, seed, { ...context, keyEpoch: 9 }, 16),
      deriveGroupKey(shares, seed, { ...context, packetsPerGroup: 8 }, 16),
      deriveGroupKey(shares, seed, { ...context, groupIndex: 5 }, 16),
    ].map((key) => key.toString('hex'));
    assert.equal(new Set([base, ...others]).size, others.length + 1);
    assert.equal(deriveGroupKey(shares, seed, context, 16).toString('hex'), base, 'deterministic');
  });

  it('gives 32-byte keys for 32-byte shares, two PRF blocks that differ', () => {
    const key = deriveGroupKey([randomBytes(32)], seed, context, 32);
    assert.equal(key.length, 32);
    assert.notDeepEqual(key.subarray(0, 16), key.subarray(16));
  });

  it('refuses modes that leave packets in clear, and group sizes out of range', () => {
    assert.match(
      groupKeyModeProblem({ packetsPerGroup: 16, encrypt: 'every-16th' }) ?? '',
      /leaves packets in clear/,
    );
    assert.equal(groupKeyModeProblem({ packetsPerGroup: 16, encrypt: 'all' }), undefined);
    for (const bad of [0, -1, 1.5, groupKeyPacketsMax + 1, Number.NaN]) {
      assert.match(groupKeyModeProblem({ packetsPerGroup: bad, encrypt: 'all' }) ?? '', /not 1-/);
    }
  });
});

const payloadBytes = 200;

const settle = () => new Promise((resolve) => setImmediate(resolve));

/**
 * Streams `packets` DATA of random payloads, a control tick every 5 packets, 10 ms of stream time
 * apart (crypto-periods of 1 s: 100 packets a period), through `filter`. Returns the payloads sent
 * and every datagram that travelled.
 */
async function stream(
  bed: GroupBed,
  packets: number,
  deliver: (datagram: Buffer) => void,
): Promise<{ payloads: Buffer[]; wire: Buffer[] }> {
  const startUs = Date.now() * 1000;
  const payloads: Buffer[] = [];
  const wire: Buffer[] = [];
  const send = async (datagrams: Buffer[]) => {
    for (const datagram of datagrams) {
      wire.push(Buffer.from(datagram));
      deliver(Buffer.from(datagram));
    }
    await settle();
  };
  for (let sequence = 0; sequence < packets; sequence++) {
    const atMs = sequence * 10;
    const atUs = startUs + atMs * 1000;
    if (sequence % 5 === 0) {
      await send(bed.sender.control({ ...run, sequence }, atMs, atUs));
    }
    const payload = randomBytes(payloadBytes);
    payloads.push(payload);
    await send(bed.sender.seal(plainData(sequence, atUs, payload), atMs, atUs));
  }
  return { payloads, wire };
}

for (const suiteName of ['aes-128-gcm', 'aes-256-gcm', 'chacha20-poly1305']) {
  describe(`group keys in groups of 16 (${suiteName})`, () => {
    it('the token is asked once per group, never for the traffic key; every packet opens; no payload byte travels in clear', async () => {
      const suite = suiteByName(suiteName, 'suite');
      const bed = createGroupBed(suite, 16);
      const packets = 960; // 9.6 crypto-periods of 100 packets
      const opened: Buffer[] = [];
      const { payloads, wire } = await stream(bed, packets, (datagram) =>
        bed.protection.filter(datagram, (plain) => opened.push(Buffer.from(plain))),
      );
      await settle();
      assert.deepEqual(bed.refusals, []);
      assert.equal(opened.length, packets, JSON.stringify(bed.protection.stats));
      for (const [index, plain] of opened.entries()) {
        assert.equal(plain.readUInt32BE(offsetSequence), index);
        assert.ok(
          plain.subarray(headerBytes).equals(payloads[index] as Buffer),
          `packet ${index} decoded intact`,
        );
      }
      // Groups of 16 by sequence, cut again where a crypto-period ends (every 100 packets).
      let groups = 0;
      let last = '';
      for (let sequence = 0; sequence < packets; sequence++) {
        const name = `${Math.floor(sequence / 100)}/${Math.floor(sequence / 16)}`;
        groups += name === last ? 0 : 1;
        last = name;
      }
      assert.equal(bed.token.groupKeysDerived, groups, 'one token call per group');
      assert.equal(bed.protection.stats.groupKeysAsked, groups);
      assert.ok(groups <= Math.ceil(packets / 16) + 10, `${groups} calls for ${packets} packets`);
      const blocks = suite.keyBytes / 16;
      assert.equal(
        bed.backend.cmacCalls,
        groups * blocks,
        'each call is the PRF inside the token, per block',
      );
      // The traffic key never leaves the token: asked for it, the token refuses.
      const key = wire.find((datagram) => datagram[offsetType] === PacketType.key) as Buffer;
      const decoded = decodeKey(key);
      assert.ok(decoded.ok);
      assert.equal(decoded.value.packetsPerGroup, 16);
      await assert.rejects(bed.token.releaseTrafficKey(decoded.value), (error: unknown) => {
        assert.ok(error instanceof TokenRefused);
        assert.equal(error.reason, 'group-mode');
        return true;
      });
      // No 12-byte run of any payload appears in any datagram that travelled.
      const everything = Buffer.concat(wire);
      for (const payload of payloads) {
        for (let at = 0; at + 12 <= payload.length; at += 47) {
          assert.equal(everything.indexOf(payload.subarray(at, at + 12)), -1, 'plaintext on the wire');
        }
      }
      bed.token.close();
    });
  });
}

describe('group keys: forged and altered packets', () => {
  it('a forged seed for an open group costs no token call; one for a new group at most a few; nothing forged is delivered', async () => {
    const bed = createGroupBed(suiteByName('aes-128-gcm', 'suite'), 16);
    const opened: Buffer[] = [];
    const pass = (plain: Buffer) => opened.push(Buffer.from(plain));
    const { wire } = await stream(bed, 64, (datagram) => bed.protection.filter(datagram, pass));
    assert.equal(opened.length, 64);
    const asked = bed.token.groupKeysDerived;
    const data = wire.filter((datagram) => datagram[offsetType] === PacketType.data);
    const last = data[data.length - 1] as Buffer;
    // The last group's packets again, each with its seed altered: refused without asking the token.
    for (let index = 0; index < 50; index++) {
      const forged = Buffer.from(last);
      const at = headerBytes + (index % groupSeedBytes);
      forged[at] = (forged[at] as number) ^ (1 + (index % 255));
      bed.protection.filter(forged, pass);
    }
    assert.equal(bed.token.groupKeysDerived, asked, 'a second seed of an open group is not asked');
    // Packets of a group not seen yet, each with its own made-up seed: a few asks from the stream's
    // budget, then from the suspect budget until it is used up for the second, then none.
    const overBudget = 20;
    const forgedSeeds = groupSeedTriesMax + groupKeySuspectAsksPerSecondMax + overBudget;
    for (let index = 0; index < forgedSeeds; index++) {
      const forged = Buffer.from(last);
      forged.writeUInt32BE(64 + 16 * 3, offsetSequence);
      randomBytes(groupSeedBytes).copy(forged, headerBytes);
      bed.protection.filter(forged, pass);
    }
    assert.equal(bed.token.groupKeysDerived, asked + groupSeedTriesMax + groupKeySuspectAsksPerSecondMax);
    assert.equal(bed.protection.stats.groupKeysNotAsked, overBudget);
    // A flipped bit in the ciphertext of a genuine packet: the tag fails.
    const flipped = Buffer.from(data[10] as Buffer);
    flipped[headerBytes + groupSeedBytes + 3] = (flipped[headerBytes + groupSeedBytes + 3] as number) ^ 0x10;
    bed.protection.filter(flipped, pass);
    // Truncated below header, seed and tag, its body length left as it was: malformed.
    bed.protection.filter(Buffer.from(last).subarray(0, headerBytes + groupSeedBytes + 15), pass);
    // The same, its body length written to fit: it reaches the opener, and its tag fails.
    const cut = Buffer.from(last.subarray(0, headerBytes + groupSeedBytes + 15));
    cut.writeUInt16BE(groupSeedBytes + 15, offsetBodyLength);
    bed.protection.filter(cut, pass);
    assert.equal(opened.length, 64, 'nothing forged or altered delivered');
    assert.equal(
      bed.protection.stats.packetsBadTag,
      50 + forgedSeeds - overBudget + 1 + 1,
      JSON.stringify(bed.protection.stats),
    );
    assert.equal(bed.protection.stats.packetsMalformed, 1);
    bed.token.close();
  });
});

describe('group keys with a member tree: a member revoked mid-stream', () => {
  let bed: TreeBed;

  before(async () => {
    bed = await createTreeBed({ treeDepth: 4, packetsPerGroup: 16 });
    for (const name of ['ann', 'ben', 'cat']) {
      await bed.addMember(name);
    }
  });

  after(async () => {
    await bed?.close();
  });

  it('ben and cat decode every packet; ann, revoked, stops; each token derives group keys, never the traffic key', async () => {
    const sequence = await burstOfLeaves(bed, { leaving: 1, periodMs: 2_000 });
    const all = Array.from({ length: sequence }, (_, index) => index);
    // burstOfLeaves revokes the first member: ann.
    const [ann, ...staying] = bed.members;
    for (const member of staying) {
      assert.equal(member.refusal, undefined, String(member.refusal?.message));
      assert.deepEqual(member.decoded, all, JSON.stringify(member.protection.stats));
      assert.ok(member.token.groupKeysDerived > 0);
      assert.ok(
        member.token.groupKeysDerived <= Math.ceil(sequence / 16) + 6,
        `${member.token.groupKeysDerived} asks`,
      );
    }
    const cat = ann as NonNullable<typeof ann>;
    assert.equal(cat.refusal?.reason, 'removed');
    assert.ok(cat.decoded.length < sequence);
    assert.deepEqual(cat.decoded, all.slice(0, cat.decoded.length), 'an intact prefix');
  });
});

describe('group keys: the KEY group part on the wire', () => {
  const signer = generateSigningKey();
  const build = (packetsPerGroup: number | undefined, tree: boolean) =>
    buildKeyMessage(
      { sessionId: 1, incarnation: 2, sequence: 0, timestampUs: Date.now() * 1000, keyEpoch: 3 },
      { suite: 1, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 10_000, service: 'news', packetsPerGroup },
      randomBytes(32),
      randomBytes(16),
      signer.privateKey,
      tree ? { treeId: 5, treeEpoch: 6, groupKey: randomBytes(32) } : undefined,
    );

  it('round-trips with and without a tree part', () => {
    for (const tree of [false, true]) {
      for (const packetsPerGroup of [undefined, 1, 16, groupKeyPacketsMax]) {
        const decoded = decodeKey(build(packetsPerGroup, tree));
        assert.ok(decoded.ok, `${tree} ${packetsPerGroup}`);
        assert.equal(decoded.value.packetsPerGroup, packetsPerGroup);
        assert.equal(decoded.value.tree?.treeEpoch, tree ? 6 : undefined);
      }
    }
  });

  it('refuses a group size out of range, and every body length between the four forms', () => {
    for (const tree of [false, true]) {
      const good = build(16, tree);
      const at = good.length - 64 - 4;
      for (const bad of [0, groupKeyPacketsMax + 1, 0xffff_ffff]) {
        const copy = Buffer.from(good);
        copy.writeUInt32BE(bad, at);
        const decoded = decodeKey(copy);
        assert.ok(!decoded.ok);
        assert.equal(decoded.reason, 'bad-field');
      }
      for (const extra of [1, 2, 3, 5, 8]) {
        const longer = Buffer.concat([good, Buffer.alloc(extra)]);
        longer.writeUInt16BE(longer.length - headerBytes, 24);
        const decoded = decodeKey(longer);
        assert.ok(!decoded.ok, `${extra} bytes more`);
      }
    }
    assert.throws(() => build(0, false), /packets per group is 1-/);
    assert.throws(() => build(groupKeyPacketsMax + 1, true), /packets per group is 1-/);
  });
});
