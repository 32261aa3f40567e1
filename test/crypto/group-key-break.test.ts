/**
 * Every-n-th-packet mode under attack and at its edges (src/crypto/group-key.ts, src/crypto/suites.ts
 * PacketOpener#openInGroup, src/crypto/restricted-session.ts): forged seeds, far-future groups,
 * truncated packets, sequences that wrap, the largest payload, manifests over the seed.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { UsageError } from '../../src/cli/errors.js';
import { describeReceive } from '../../src/cli/receive.js';
import { senderProtectionOptions } from '../../src/cli/restricted.js';
import { generateSigningKey, unwrapKey } from '../../src/crypto/authority.js';
import { deriveGroupKey, groupSeedBytes } from '../../src/crypto/group-key.js';
import { createSenderProtection } from '../../src/crypto/restricted-session.js';
import { aeadTagBytes, PacketOpener, PacketSealer, suiteByName } from '../../src/crypto/suites.js';
import {
  groupKeyAsksPerSecondMax,
  groupKeySuspectAsksPerSecondMax,
  tokenReleasedKeysMax,
} from '../../src/limits.js';
import {
  dataPayloadBytesMax,
  headerBytes,
  offsetBodyLength,
  offsetKeyEpoch,
  offsetSequence,
  offsetType,
  PacketType,
} from '../../src/protocol/packet.js';
import { decodeKey } from '../../src/protocol/restricted.js';
import { createGroupBed, type GroupBed, plainData, groupRun as run } from '../helpers/group-bed.js';

const settle = () => new Promise((resolve) => setImmediate(resolve));

/** The sealed datagrams of `count` packets from `first` (sequence wraps), a control tick every 5. */
async function sealStream(bed: GroupBed, first: number, count: number, payloadBytes = 100, stepMs = 10) {
  const startUs = Date.now() * 1000;
  const out: { datagram: Buffer; payload?: Buffer; sequence?: number }[] = [];
  for (let index = 0; index < count; index++) {
    const sequence = (first + index) >>> 0;
    const atMs = index * stepMs;
    const atUs = startUs + atMs * 1000;
    if (index % 5 === 0) {
      for (const datagram of bed.sender.control({ ...run, sequence }, atMs, atUs)) {
        out.push({ datagram: Buffer.from(datagram) });
      }
    }
    const payload = randomBytes(payloadBytes);
    for (const datagram of bed.sender.seal(plainData(sequence, atUs, payload), atMs, atUs)) {
      const copy = Buffer.from(datagram);
      out.push(
        copy[offsetType] === PacketType.data ? { datagram: copy, payload, sequence } : { datagram: copy },
      );
    }
  }
  return out;
}

async function deliver(bed: GroupBed, datagrams: Buffer[]): Promise<Buffer[]> {
  const opened: Buffer[] = [];
  for (const datagram of datagrams) {
    bed.protection.filter(Buffer.from(datagram), (plain) => opened.push(Buffer.from(plain)));
    await settle();
  }
  return opened;
}

describe('group keys under attack', () => {
  it('forged seeds sent ahead of a group do not make its genuine packets count as forged', async () => {
    const bed = createGroupBed(suiteByName('aes-128-gcm', 'suite'), 16);
    const wire = await sealStream(bed, 0, 64);
    // Everything up to the first packet of the third group (sequence 32), then forgeries for it.
    const cut = wire.findIndex((one) => one.sequence === 32);
    const opened = await deliver(
      bed,
      wire.slice(0, cut).map((one) => one.datagram),
    );
    const genuine = wire[cut]?.datagram as Buffer;
    for (let index = 0; index < 8; index++) {
      const forged = Buffer.from(genuine);
      randomBytes(groupSeedBytes).copy(forged, headerBytes);
      bed.protection.filter(forged, () => assert.fail('a forged packet delivered'));
    }
    opened.push(
      ...(await deliver(
        bed,
        wire.slice(cut).map((one) => one.datagram),
      )),
    );
    assert.equal(opened.length, 64, JSON.stringify(bed.protection.stats));
    assert.equal(bed.protection.stats.packetsBadTag, 8, 'the forgeries, and only they, counted as forged');
    bed.token.close();
  });

  it('a flood of made-up seeds for far-off groups does not use up the token budget of the stream', async () => {
    let now = 0;
    const bed = createGroupBed(suiteByName('aes-128-gcm', 'suite'), 16, { nowMs: () => now });
    const wire = await sealStream(bed, 1000, 320);
    const first = wire.find((one) => one.sequence !== undefined)?.datagram as Buffer;
    const opened: Buffer[] = [];
    let sent = 0;
    for (const one of wire) {
      // 100 forged packets before each genuine one, each of another far-off group.
      if (one.sequence !== undefined) {
        for (let index = 0; index < 100; index++) {
          const forged = Buffer.from(first);
          forged.writeUInt32BE((0x8000_0000 + sent * 1000 + index * 16) >>> 0, offsetSequence);
          randomBytes(groupSeedBytes).copy(forged, headerBytes);
          bed.protection.filter(forged, () => assert.fail('a forged packet delivered'));
        }
        sent++;
        now += 10;
      }
      opened.push(...(await deliver(bed, [one.datagram])));
    }
    assert.equal(opened.length, 320, JSON.stringify(bed.protection.stats));
    // The stream's groups, and the suspect budget for each second of the flood.
    const seconds = Math.ceil(now / 1000) + 1;
    assert.ok(
      bed.token.groupKeysDerived <= 21 + groupKeySuspectAsksPerSecondMax * seconds,
      `${bed.token.groupKeysDerived} token calls`,
    );
    bed.token.close();
  });

  it('a flood for far-off groups just before a new crypto-period starts does not shut its first groups', async () => {
    let now = 0;
    const bed = createGroupBed(suiteByName('aes-128-gcm', 'suite'), 16, { nowMs: () => now });
    // Periods of 100 packets, 10 ms apart: sequence 100 starts key epoch 2.
    const wire = await sealStream(bed, 0, 200);
    const template = wire.find((one) => one.sequence === 0)?.datagram as Buffer;
    const opened: Buffer[] = [];
    for (const one of wire) {
      if (one.sequence === 100) {
        // One forged packet of the new epoch has the receiver ask for its KEY; then the flood.
        for (let index = 0; index < groupKeyAsksPerSecondMax + 10; index++) {
          if (index === 1) {
            await settle();
          }
          const forged = Buffer.from(template);
          forged.writeUInt16BE(2, offsetKeyEpoch);
          forged.writeUInt32BE((0x4000_0000 + index * 16) >>> 0, offsetSequence);
          randomBytes(groupSeedBytes).copy(forged, headerBytes);
          bed.protection.filter(forged, () => assert.fail('a forged packet delivered'));
        }
      }
      if (one.sequence !== undefined) {
        now += 10;
      }
      opened.push(...(await deliver(bed, [one.datagram])));
    }
    assert.equal(opened.length, 200, JSON.stringify(bed.protection.stats));
    bed.token.close();
  });

  it('truncated packets, every length from 0 to header, seed and tag, are counted and never delivered', async () => {
    const bed = createGroupBed(suiteByName('chacha20-poly1305', 'suite'), 16);
    const wire = await sealStream(bed, 0, 20);
    const opened = await deliver(
      bed,
      wire.map((one) => one.datagram),
    );
    assert.equal(opened.length, 20);
    const sample = wire.find((one) => one.sequence === 19)?.datagram as Buffer;
    const badBefore = bed.protection.stats.packetsBadTag;
    const malformedBefore = bed.protection.stats.packetsMalformed;
    const reasons = new Set<string>();
    let passed = 0;
    for (let length = 0; length <= headerBytes + groupSeedBytes + aeadTagBytes; length++) {
      const cut = Buffer.from(sample.subarray(0, length));
      if (length >= headerBytes) {
        cut.writeUInt16BE(length - headerBytes, offsetBodyLength);
      }
      // Too short to have a type: passed on for the receiver's decoder to refuse. With DATA's type
      // but shorter than a header: malformed (truncated), counted, never opened.
      bed.protection.filter(
        cut,
        (datagram) => {
          assert.ok(datagram.length <= offsetType, `${length} bytes delivered`);
          passed++;
        },
        (reason) => reasons.add(reason),
      );
    }
    await settle();
    assert.equal(passed, offsetType + 1);
    assert.equal(bed.protection.stats.packetsMalformed - malformedBefore, headerBytes - offsetType - 1);
    assert.deepEqual([...reasons], ['truncated']);
    assert.equal(bed.protection.stats.packetsBadTag - badBefore, groupSeedBytes + aeadTagBytes + 1);
    bed.token.close();
  });
});

describe('group keys at the edges', () => {
  for (const [suiteName, packetsPerGroup] of [
    ['aes-128-gcm', 3],
    ['aes-256-gcm', 1],
    ['chacha20-poly1305', 1024],
    ['aes-256-gcm', 1000],
  ] as const) {
    it(`sequences that wrap past 2^32 (${suiteName}, groups of ${packetsPerGroup}): every packet opens intact`, async () => {
      const bed = createGroupBed(suiteByName(suiteName, 'suite'), packetsPerGroup);
      const wire = await sealStream(bed, 0xffff_ffff - 40, 90);
      const opened = await deliver(
        bed,
        wire.map((one) => one.datagram),
      );
      const data = wire.filter((one) => one.sequence !== undefined);
      assert.equal(opened.length, data.length, JSON.stringify(bed.protection.stats));
      for (const [index, plain] of opened.entries()) {
        assert.ok(plain.subarray(headerBytes).equals(data[index]?.payload as Buffer), `packet ${index}`);
      }
      bed.token.close();
    });
  }

  it('the largest payload a source accepts still seals into a DATA a REPAIR carries', () => {
    const suite = suiteByName('aes-256-gcm', 'suite');
    const bed = createGroupBed(suite, 16);
    const payloadBytes = dataPayloadBytesMax - bed.sender.overheadBytes;
    const [sealed] = bed.sender
      .seal(plainData(5, Date.now() * 1000, randomBytes(payloadBytes)), 0, Date.now() * 1000)
      .filter((one) => one[offsetType] === PacketType.data);
    assert.ok(sealed !== undefined);
    assert.ok(sealed.length - headerBytes <= dataPayloadBytesMax, `${sealed.length} bytes`);
    bed.token.close();
  });

  it("a manifest's hash covers the whole sealed datagram, the seed with it", () => {
    const suite = suiteByName('aes-128-gcm', 'suite');
    const sealer = new PacketSealer(suite, run.incarnation);
    const plain = plainData(7, 1, randomBytes(100));
    plain.writeUInt16BE(1, offsetKeyEpoch);
    sealer.setGroupShares(1, [randomBytes(16)], 16);
    const hash = Buffer.alloc(32);
    const sealed = sealer.seal(plain, undefined, hash, 0, 32);
    assert.ok(hash.equals(createHash('sha256').update(sealed).digest()));
  });
});

describe('group keys when the member tree comes after the first packets', () => {
  it('every KEY of a period sealed before the tree came derives the group keys its packets are sealed under', async () => {
    const suite = suiteByName('aes-128-gcm', 'suite');
    const source = generateSigningKey();
    const serviceKey = randomBytes(32);
    const tree = { treeId: 9, treeEpoch: 3, groupKey: randomBytes(32) };
    let fetched = false;
    const sender = createSenderProtection(
      {
        suite,
        service: 'news',
        serviceEpoch: 1,
        serviceKey,
        sourcePrivateKey: source.privateKey,
        sourcePublicKey: source.publicKey,
        cryptoPeriodMs: 10_000,
        tier: 0,
        manifestPackets: 0,
        packetsPerGroup: 16,
        // Before its first fetch a source's tree is unknown (SourceTree.current).
        tree: {
          current: () => (fetched ? tree : undefined),
          groupKey: (treeEpoch) => (fetched && treeEpoch === tree.treeEpoch ? tree : undefined),
          rekeys: () => [],
        },
      },
      run,
    );
    const startUs = Date.now() * 1000;
    const sealed: Buffer[] = [];
    const keys: Buffer[] = [];
    for (let sequence = 0; sequence < 40; sequence++) {
      const atMs = sequence * 10;
      const atUs = startUs + atMs * 1000;
      fetched = sequence >= 10;
      for (const datagram of sender.control({ ...run, sequence }, atMs, atUs)) {
        if (datagram[offsetType] === PacketType.key) {
          keys.push(Buffer.from(datagram));
        }
      }
      for (const datagram of sender.seal(plainData(sequence, atUs, randomBytes(50)), atMs, atUs)) {
        if (datagram[offsetType] === PacketType.data) {
          sealed.push(Buffer.from(datagram));
        }
      }
    }
    const last = sealed[sealed.length - 1] as Buffer;
    const period = keys
      .map((bytes) => decodeKey(bytes))
      .filter((decoded) => decoded.ok && decoded.value.keyEpoch === 1);
    assert.ok(period.length > 2, 'the period is announced again after the tree came');
    for (const decoded of period) {
      assert.ok(decoded.ok);
      const key = decoded.value;
      const service = unwrapKey(serviceKey, key.wrappedKey) as Buffer;
      const shares =
        key.tree === undefined
          ? [service]
          : [service, unwrapKey(tree.groupKey, key.tree.wrappedShare) as Buffer];
      const opener = new PacketOpener(suite);
      opener.setGroupKeys(
        1,
        {
          packetsPerGroup: 16,
          keyBytes: 16,
          groupKey: (groupIndex, seed) =>
            deriveGroupKey(
              shares,
              seed,
              { ...run, keyEpoch: 1, packetsPerGroup: 16, groupIndex },
              suite.keyBytes,
            ),
        },
        () => true,
      );
      assert.ok(Buffer.isBuffer(opener.open(Buffer.from(last), false)), 'a late joiner opens the period');
    }
  });
});

describe('group keys inside the token', () => {
  it('the shares of many crypto-periods do not pile up, and none outlives the token', async () => {
    const bed = createGroupBed(suiteByName('aes-256-gcm', 'suite'), 16);
    const startUs = Date.now() * 1000;
    const held = () => bed.backend.groupShares.filter((share) => share.some((byte) => byte !== 0)).length;
    for (let period = 0; period < 3 * tokenReleasedKeysMax; period++) {
      const atMs = period * 1000;
      for (const datagram of bed.sender.control({ ...run, sequence: period }, atMs, startUs + atMs * 1000)) {
        const decoded = datagram[offsetType] === PacketType.key ? decodeKey(datagram) : undefined;
        if (decoded?.ok === true) {
          await bed.token.releaseGroupKeys(decoded.value);
        }
      }
      assert.ok(held() <= tokenReleasedKeysMax, `${held()} shares held after ${period + 1} periods`);
    }
    bed.token.close();
    assert.equal(held(), 0, 'shares wiped when the token closes');
  });
});

describe('send --group-packets on the command line', () => {
  it('without --restricted: the error names the option, in a sentence', () => {
    assert.throws(
      () =>
        senderProtectionOptions(
          { 'group-packets': '16', signed: true, 'source-key': 'source.pem' },
          undefined,
          1400,
        ),
      (error: unknown) =>
        error instanceof UsageError && error.message === '--group-packets needs --restricted',
    );
  });
});

describe('group keys for late packets', () => {
  it('in groups of 1, a burst of packets from seconds ago (repairs) is asked from the stream budget', async () => {
    let now = 0;
    const bed = createGroupBed(suiteByName('aes-128-gcm', 'suite'), 1, { nowMs: () => now });
    // 1,000 packets a crypto-period, 1 ms apart.
    const wire = await sealStream(bed, 0, 1200, 100, 1);
    // Packets 300 to 899 are lost and come back (repaired) once the last 300 have arrived.
    const isLate = (sequence: number | undefined) =>
      sequence !== undefined && sequence >= 300 && sequence < 900;
    const late = wire.filter((one) => isLate(one.sequence));
    const rest = wire.filter((one) => !isLate(one.sequence));
    const opened = await deliver(
      bed,
      rest.map((one) => one.datagram),
    );
    now += 10;
    opened.push(
      ...(await deliver(
        bed,
        late.map((one) => one.datagram),
      )),
    );
    assert.equal(opened.length, 1200, JSON.stringify(bed.protection.stats));
    bed.token.close();
  });
});

describe('receive: the summary line', () => {
  it('says one group key, not one group keys', () => {
    const line = describeReceive(
      {
        outcome: 'complete',
        sessionName: 'film.bin',
        packetsDelivered: 3,
        bytesDelivered: 300,
        elapsedMs: 10,
        malformed: {},
        duplicates: 0,
        otherSession: 0,
        encryptedDropped: 0,
        packetsMissing: 0,
      } as unknown as Parameters<typeof describeReceive>[0],
      {
        groupKeysAsked: 1,
        groupKeysNotAsked: 0,
        packetsBadTag: 0,
        keysRejected: {},
      } as unknown as Parameters<typeof describeReceive>[1],
    );
    assert.match(line, /\(1 group key asked of the token/);
  });
});
