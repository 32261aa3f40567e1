/**
 * What a repair server given the source key puts on S2 besides DATA (issue 12): each verified
 * manifest as many times as the source sends it (manifestSendCount, at successive control ticks),
 * so a receiver behind it that loses one copy still authenticates the packets it covers; and on a
 * sealed S2, KEY messages and SIGNATUREs inside SEALED envelopes like everything else.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { after, describe, it } from 'node:test';
import { generateSigningKey } from '../../src/crypto/authority.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import { createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { newS2Key, type S2Key, S2Opener } from '../../src/crypto/s2-seal.js';
import { createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { manifestSendCount, protectedControlIntervalMs } from '../../src/limits.js';
import { parseGroup } from '../../src/net/address.js';
import { openReceiverSocket } from '../../src/net/udp.js';
import { headerBytes, offsetKeyEpoch, offsetType, PacketType } from '../../src/protocol/packet.js';
import { decodeKey, SignatureKind } from '../../src/protocol/restricted.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openTickerInput } from '../../src/source/inputs.js';
import { createSource, type SourceComponents } from '../../src/source/source.js';
import { crafter, data, descriptor, end } from '../helpers/craft.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';
import { newsProtection } from '../helpers/restricted-bed.js';
import { waitUntil } from '../helpers/wait.js';

const key = controlKey(Buffer.from('S2 forwarding test secret, not for use'));
const listen = { address: '127.0.0.1', port: 0, family: 4 as const };
const source = generateSigningKey();
const closers: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
});

const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const isManifest = (datagram: Buffer) =>
  datagram.length > headerBytes &&
  datagram[offsetType] === PacketType.signature &&
  datagram[headerBytes] === SignatureKind.manifest;

/** A raw socket on S2 keeping every datagram with its arrival time. */
async function capture(group: ReturnType<typeof parseGroup>) {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  const got: Array<{ datagram: Buffer; atMs: number }> = [];
  socket.on('message', (datagram) => got.push({ datagram, atMs: performance.now() }));
  await new Promise<void>((resolve) => socket.bind(group.port, group.address, resolve));
  socket.addMembership(group.address, loopbackIface);
  socket.setRecvBufferSize(8 * 1024 * 1024);
  closers.push(() => {
    socket.close();
  });
  return got;
}

/** Retransmit and repair servers between S1 and S2, both given the source key. */
async function repairPath(
  s1: ReturnType<typeof parseGroup>,
  s2: ReturnType<typeof parseGroup>,
  extra: { s2Key?: S2Key; withoutSourceKey?: boolean } = {},
) {
  const { withoutSourceKey, ...repairExtra } = extra;
  const sourceKey = withoutSourceKey === true ? {} : { sourcePublicKey: source.publicKey };
  const retransmit = await startRetransmitServer({
    joins: [{ group: s1 }],
    iface: loopbackIface,
    listen,
    keys: [key],
    bufferBytesMax: 64 * 1024 * 1024,
    bufferAgeMs: 60_000,
    repairRateBitsPerSecond: 500_000_000,
    announceTo: [],
    peers: [],
    ...sourceKey,
  });
  closers.push(() => retransmit.close());
  const repair = await startRepairServer({
    group: s1,
    iface: loopbackIface,
    listen,
    keys: [key],
    retransmit: [retransmit.local],
    emit: s2,
    latencyMs: undefined,
    ...sourceKey,
    ...repairExtra,
  });
  closers.push(() => repair.close());
  return repair;
}

function tickerOn(
  s1: ReturnType<typeof parseGroup>,
  sessionId: number,
  ticks: number,
  protection: NonNullable<SourceComponents['protection']>,
) {
  return createSource(
    {
      group: s1,
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 64,
      sessionName: 'ticker',
      sessionId,
      incarnation: sessionId * 7,
      firstSequence: 1,
      startDelayMs: 50,
    },
    { input: openTickerInput({ ticksPerSecond: 400, tickCount: ticks }), protection },
  );
}

describe('a repair server forwards each manifest on S2 as often as the source sends it', () => {
  it(`${manifestSendCount} copies of every manifest, at successive control ticks; a receiver on S2 that loses the first copy of each still authenticates every packet`, async () => {
    const s1 = parseGroup(`239.255.75.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.75.2:${freshPort()}`, 's2');
    const repair = await repairPath(s1, s2);
    const got = await capture(s2);
    // The receiver behind the repair server loses the first copy of every manifest on S2.
    const seen = new Set<string>();
    const sink = memorySink();
    const receiver = createReceiver(
      { group: s2, iface: loopbackIface, timeoutMs: 10_000 },
      {
        sink,
        signed: createSignedSessionGate(source.publicKey),
        openSocket: (options, onDatagram) =>
          openReceiverSocket(options, (datagram) => {
            if (isManifest(datagram) && !seen.has(sha(datagram))) {
              seen.add(sha(datagram));
              return;
            }
            onDatagram(datagram);
          }),
      },
    );
    let joined: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => {
      joined = resolve;
    });
    const receiving = receiver.run({ onJoined: () => joined() });
    await ready;
    const ticks = 320;
    await tickerOn(s1, 91, ticks, (identity) =>
      createSignedSenderProtection(
        { sourcePrivateKey: source.privateKey, sourcePublicKey: source.publicKey, manifestPackets: 32 },
        identity,
      ),
    ).run();
    const summary = await receiving;
    assert.equal(summary.outcome, 'complete', JSON.stringify({ summary, repair: repair.status() }));
    assert.equal(summary.packetsDelivered, ticks);
    // Every manifest on S2, by its bytes: manifestSendCount copies, spread over control ticks.
    await waitUntil(
      'every manifest repeated on S2',
      () => repair.status().manifestRepeatsSent >= (manifestSendCount - 1) * seen.size,
      10_000,
    );
    const copies = new Map<string, number[]>();
    for (const { datagram, atMs } of got) {
      if (isManifest(datagram)) {
        copies.set(sha(datagram), [...(copies.get(sha(datagram)) ?? []), atMs]);
      }
    }
    assert.ok(copies.size >= ticks / 32, `${copies.size} manifests on S2`);
    for (const times of copies.values()) {
      assert.equal(times.length, manifestSendCount);
      const spanMs = (times.at(-1) ?? 0) - (times[0] ?? 0);
      // The last copy comes at least one whole control interval after the first: paced, not a burst.
      assert.ok(spanMs >= protectedControlIntervalMs * 0.8, `copies within ${spanMs} ms`);
    }
  });
});

describe('a repair server forwards every copy of a KEY and of the offer, repeats included', () => {
  it('each KEY and offer the source sends unchanged at its control ticks is on S2 as many times as on S1', async () => {
    const s1 = parseGroup(`239.255.75.5:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.75.6:${freshPort()}`, 's2');
    const repair = await repairPath(s1, s2);
    const onS1 = await capture(s1);
    const onS2 = await capture(s2);
    await tickerOn(s1, 93, 200, newsProtection(randomBytes(32), source)).run();
    await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
    const copies = (got: Array<{ datagram: Buffer }>) => {
      const counted = new Map<string, number>();
      for (const { datagram } of got) {
        const offer =
          datagram[offsetType] === PacketType.signature && datagram[headerBytes] === SignatureKind.session;
        if (datagram[offsetType] === PacketType.key || offer) {
          counted.set(sha(datagram), (counted.get(sha(datagram)) ?? 0) + 1);
        }
      }
      return counted;
    };
    const sent = copies(onS1);
    const total = [...sent.values()].reduce((sum, count) => sum + count, 0);
    assert.ok(total > 2 * sent.size, `the source repeats each unchanged: ${total} copies of ${sent.size}`);
    await waitUntil(
      'every copy on S2',
      () => {
        const forwarded = copies(onS2);
        return [...sent].every(([hash, count]) => (forwarded.get(hash) ?? 0) >= count);
      },
      5_000,
    );
  });
});

describe('a repair server keeps the KEY it sends ahead of an epoch per run, the newest signing', () => {
  it("another run's KEY of the same epoch and an older signing, replayed on S1 all along, take no place of the run's own", async () => {
    const s1 = parseGroup(`239.255.75.7:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.75.8:${freshPort()}`, 's2');
    const repair = await repairPath(s1, s2);
    const serviceKey = randomBytes(32);
    const sessionId = 95;
    // Genuine KEY messages (the source's key signed them) of epochs 1 and 2: of another run of the
    // session, and of this run's incarnation signed an hour earlier, as an attacker recorded them.
    const keysOf = (incarnation: number, wallUs: number) =>
      newsProtection(
        serviceKey,
        source,
      )({ sessionId, incarnation })
        .control({ sessionId, incarnation, sequence: 1 }, 0, wallUs)
        .filter((datagram) => datagram[offsetType] === PacketType.key);
    const hourAgoUs = (Date.now() - 3_600_000) * 1000;
    const replayed = [...keysOf(sessionId * 7, hourAgoUs), ...keysOf(sessionId * 7 + 1, Date.now() * 1000)];
    const attacker = createSocket({ type: 'udp4' });
    await new Promise<void>((resolve) => attacker.bind(0, resolve));
    attacker.setMulticastInterface(loopbackIface);
    closers.push(() => {
      attacker.close();
    });
    const onS2 = await capture(s2);
    const startedUs = Date.now() * 1000;
    let replays = 0;
    const replaying = setInterval(() => {
      for (const datagram of replayed) {
        attacker.send(datagram, s1.port, s1.address);
      }
      replays++;
    }, 5);
    try {
      // The run's own incarnation is sessionId * 7 (tickerOn); its first DATA of epoch 1 goes on S2
      // right after that epoch's KEY, which must be the run's own.
      await tickerOn(s1, sessionId, 200, newsProtection(serviceKey, source)).run();
      await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
    } finally {
      clearInterval(replaying);
    }
    assert.ok(replays > 20, `the replays ran along the run (${replays} rounds)`);
    assert.equal(repair.status().keysAhead, 1, 'epoch 1 had its own KEY sent ahead of its first DATA');
    // What went just before the first DATA on S2 (in the same turn, from the same socket) is the
    // KEY sent ahead: the run's own, signed during the run, not an hour ago.
    const first = onS2.findIndex(({ datagram }) => datagram[offsetType] === PacketType.data);
    const ahead = onS2[first - 1]?.datagram;
    assert.ok(
      ahead !== undefined && ahead[offsetType] === PacketType.key,
      'a KEY just before the first DATA',
    );
    const decoded = decodeKey(ahead);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.incarnation, sessionId * 7);
    assert.ok(decoded.value.timestampUs > startedUs, 'signed during the run');
  });
});

describe('a sealed S2 carries KEY messages and SIGNATUREs sealed, like DATA', () => {
  it('a restricted, signed run through a repair server sealing S2: every datagram on S2 is a SEALED envelope; inside are the KEY messages, the offer and every manifest', async () => {
    const s1 = parseGroup(`239.255.75.3:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.75.4:${freshPort()}`, 's2');
    const s2Key = newS2Key(1);
    const repair = await repairPath(s1, s2, { s2Key });
    const got = await capture(s2);
    const serviceKey = randomBytes(32);
    await tickerOn(s1, 92, 200, newsProtection(serviceKey, source)).run();
    await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
    await waitUntil(
      'every manifest repeated on S2',
      () => repair.status().manifestRepeatsSent >= 2 * 6,
      10_000,
    );
    const opener = new S2Opener();
    opener.setKey(s2Key);
    const inside: Record<string, number> = {};
    for (const { datagram } of got) {
      assert.equal(
        datagram[offsetType],
        PacketType.sealed,
        `a type ${datagram[offsetType]} datagram on a sealed S2`,
      );
      const opened = opener.open(datagram);
      assert.ok(Buffer.isBuffer(opened), `an envelope that does not open: ${String(opened)}`);
      const type = isManifest(opened) ? 'manifest' : String(opened[offsetType]);
      inside[type] = (inside[type] ?? 0) + 1;
    }
    assert.ok((inside[String(PacketType.key)] ?? 0) > 0, JSON.stringify(inside));
    assert.ok((inside[String(PacketType.signature)] ?? 0) > 0, `the signed offer: ${JSON.stringify(inside)}`);
    assert.ok((inside.manifest ?? 0) >= manifestSendCount * Math.floor(200 / 32), JSON.stringify(inside));
    assert.equal(inside[String(PacketType.data)], 200, JSON.stringify(inside));
  });
});

describe('a repair server without the source key still carries KEY messages and SIGNATUREs', () => {
  it('a restricted run through servers not given --source-public: the KEY messages, the offer and the manifests of the run go on S2 as they came, for the receivers to verify', async () => {
    const s1 = parseGroup(`239.255.75.5:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.75.6:${freshPort()}`, 's2');
    const repair = await repairPath(s1, s2, { withoutSourceKey: true });
    const got = await capture(s2);
    const serviceKey = randomBytes(32);
    const ticker = tickerOn(s1, 93, 200, newsProtection(serviceKey, source));
    await ticker.run();
    await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
    const count = (type: number) => got.filter(({ datagram }) => datagram[offsetType] === type).length;
    assert.equal(count(PacketType.data), 200);
    assert.ok(count(PacketType.key) > 0, 'KEY messages on S2');
    const manifests = got.filter(({ datagram }) => isManifest(datagram)).length;
    assert.ok(manifests >= Math.floor(200 / 32), `${manifests} manifests on S2`);
    assert.ok(count(PacketType.signature) > manifests, 'the signed offer on S2 besides the manifests');
  });
});

describe('a repair server without the source key checks what it forwards', () => {
  it('a KEY or SIGNATURE of the current run too short for its body is counted and dropped, not put on S2', async () => {
    const s1 = parseGroup(`239.255.75.7:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.75.8:${freshPort()}`, 's2');
    const repair = await repairPath(s1, s2, { withoutSourceKey: true });
    const got = await capture(s2);
    const sender = await crafter(s1);
    closers.push(() => sender.close());
    const run = { sessionId: 95, incarnation: 95 * 7 };
    /** A datagram of `type` with a well-formed header of the run and an 8-byte body. */
    const short = (type: number) => {
      const datagram = Buffer.from(data(run, 1, Buffer.alloc(8)));
      datagram[offsetType] = type;
      datagram.writeUInt16BE(1, offsetKeyEpoch);
      return datagram;
    };
    sender.send(descriptor(run, { firstSequence: 0, next: 0 }), data(run, 0, Buffer.from('first')));
    await waitUntil('the run taken up', () => repair.status().packetsIn === 1, 5_000);
    sender.send(short(PacketType.key), short(PacketType.signature));
    sender.send(data(run, 1, Buffer.from('second')), end(run, 2, 2));
    await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
    const count = (type: number) => got.filter(({ datagram }) => datagram[offsetType] === type).length;
    assert.equal(count(PacketType.data), 2);
    assert.equal(count(PacketType.key), 0, 'no truncated KEY on S2');
    assert.equal(count(PacketType.signature), 0, 'no truncated SIGNATURE on S2');
    assert.equal(repair.status().dropped['s1-truncated'], 2, JSON.stringify(repair.status().dropped));
  });
});
