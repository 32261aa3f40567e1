import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  ControlChannel,
  ControlSealer,
  ControlVerifier,
  controlKey,
  readSecretFile,
  type Sealed,
  sameEndpoint,
} from '../../src/crypto/control-auth.js';
import {
  controlPeerSilenceMsMax,
  replayFreshnessMs,
  replayPeersMax,
  replayWindowCountersMax,
} from '../../src/limits.js';
import type { TimeSource } from '../../src/net/clock.js';
import {
  authTrailerBytes,
  decodeAnnounce,
  decodeNack,
  decodeQuality,
  decodeRepair,
  decodeSetup,
  encodeAnnounce,
  encodeNack,
  encodeQuality,
  encodeRepair,
  encodeRepairNotHeld,
  encodeSetup,
  type PeerEndpoint,
  SetupAction,
} from '../../src/protocol/control.js';
import type { DecodeResult } from '../../src/protocol/errors.js';
import { encodeData, headerBytes } from '../../src/protocol/packet.js';

const key = controlKey(Buffer.from('an operator secret of some length'));
const realNowUs = 1_764_000_000_000_000;
const secondUs = 1_000_000;

/** A host's clocks: monotonic ms, and a wall clock that can be stepped. */
class FakeClock implements TimeSource {
  monotonicMs = 1_000;
  wallOffsetUs: number;
  constructor(offsetUs = 0) {
    this.wallOffsetUs = offsetUs;
  }
  nowMs(): number {
    return this.monotonicMs;
  }
  wallUs(): number {
    return realNowUs + this.monotonicMs * 1000 + this.wallOffsetUs;
  }
}

/** Moves every host's monotonic clock: the same real time passes everywhere. */
function advance(clocks: FakeClock[], ms: number): void {
  for (const clock of clocks) {
    clock.monotonicMs += ms;
  }
}

const repairAt: PeerEndpoint = { address: '10.200.3.30', port: 7100 };
const retransmitAt: PeerEndpoint = { address: '10.200.2.21', port: 7000 };
const otherRetransmitAt: PeerEndpoint = { address: '10.200.2.22', port: 7000 };
const fields = { sessionId: 9, sequence: 100, incarnation: 3, timestampUs: 0 };
const nack = (replyTo = repairAt) => encodeNack(fields, { replyTo, ranges: [{ start: 100, count: 40 }] });
const setup = (target: PeerEndpoint, action: 1 | 2 = SetupAction.leave) =>
  encodeSetup(fields, {
    action,
    group: '239.1.2.3',
    port: 5000,
    source: undefined,
    bufferBytes: 0,
    bufferAgeMs: 0,
    target,
  });

type Decoder = (datagram: Buffer) => DecodeResult<Sealed>;

/** Accepts through a channel, returning the drop reason (or 'ok'). */
function offer(channel: ControlChannel, datagram: Buffer, remote: PeerEndpoint, decode: Decoder): string {
  let reason = 'ok';
  const accepted = channel.accept(datagram, remote, decode, 'm', (r) => {
    reason = r.slice(2);
  });
  assert.equal(accepted === undefined, reason !== 'ok');
  return reason;
}

/** A repair server and a retransmit server, each with its own clock; the repair knows the server. */
function pair(options: { repairOffsetUs?: number; retransmitOffsetUs?: number } = {}) {
  const repairClock = new FakeClock(options.repairOffsetUs ?? 0);
  const retransmitClock = new FakeClock(options.retransmitOffsetUs ?? 0);
  const repair = new ControlChannel([key], { clock: repairClock });
  const retransmit = new ControlChannel([key], { clock: retransmitClock, self: () => [retransmitAt] });
  return {
    repair,
    retransmit,
    repairClock,
    retransmitClock,
    clocks: [repairClock, retransmitClock] as [FakeClock, FakeClock],
  };
}

/** Accepts a NACK that must pass, returning it. */
function acceptNack(channel: ControlChannel, datagram: Buffer, remote: PeerEndpoint) {
  const accepted = channel.accept(datagram, remote, decodeNack, 'nack', assert.fail);
  assert.ok(accepted !== undefined);
  return accepted;
}

/** Teaches the repair server the retransmit server's id: a NACK naming no one, its introduction. */
function introduce(repair: ControlChannel, retransmit: ControlChannel): void {
  const request = acceptNack(retransmit, repair.seal(nack(), retransmitAt), repairAt);
  const hello = retransmit.introduction(request);
  assert.equal(offer(repair, hello, retransmitAt, decodeAnnounce), 'ok');
  assert.equal(repair.targetIdOf(retransmitAt), retransmit.senderId);
}

describe('sealing', () => {
  it('stamps the header with the wall clock read now, counts 1, 2, 3 and names the target', () => {
    const clock = new FakeClock();
    const sealer = new ControlSealer(key, { senderId: 77, clock });
    const first = decodeNack(sealer.seal(nack(), 1234));
    clock.wallOffsetUs = -120 * secondUs; // the sender's clock is stepped back
    const second = decodeNack(sealer.seal(nack()));
    assert.ok(first.ok && second.ok);
    assert.equal(first.value.timestampUs, realNowUs + 1_000_000);
    assert.equal(second.value.timestampUs, realNowUs + 1_000_000 - 120 * secondUs);
    assert.deepEqual(
      [first.value.auth.counter, first.value.auth.senderId, first.value.auth.targetId],
      [1, 77, 1234],
    );
    assert.deepEqual([second.value.auth.counter, second.value.auth.targetId], [2, 0]);
  });
});

describe('verifying', () => {
  const verify = (verifier: ControlVerifier, packet: Buffer) => {
    const decoded = decodeNack(packet);
    assert.ok(decoded.ok);
    return verifier.verify(packet, decoded.value);
  };

  it('accepts a sealed message once, and refuses its replay', () => {
    const clock = new FakeClock();
    const sealer = new ControlSealer(key, { clock });
    const verifier = new ControlVerifier([key], { ownId: 5, clock });
    const packet = sealer.seal(nack(), 5);
    assert.equal(verify(verifier, packet), undefined);
    assert.equal(verify(verifier, packet), 'replayed');
    assert.equal(verify(verifier, sealer.seal(nack(), 5)), undefined);
  });

  it('refuses a forged tag, an unknown key, a stale or early timestamp, keeping no state for them', () => {
    const clock = new FakeClock();
    const verifier = new ControlVerifier([key], { ownId: 5, clock });
    const forged = new ControlSealer(key, { clock }).seal(nack(), 5);
    forged[forged.length - 1] = (forged[forged.length - 1] ?? 0) ^ 1;
    assert.equal(verify(verifier, forged), 'bad-tag');
    const tampered = new ControlSealer(key, { clock }).seal(nack(), 5);
    tampered[headerBytes + 27] = (tampered[headerBytes + 27] ?? 0) ^ 9; // the range start
    assert.equal(verify(verifier, tampered), 'bad-tag');
    const retargeted = new ControlSealer(key, { clock }).seal(nack(), 6);
    retargeted.writeUInt32BE(5, retargeted.length - authTrailerBytes + 8); // the target id
    assert.equal(verify(verifier, retargeted), 'bad-tag');
    const other = new ControlSealer(controlKey(Buffer.from('somebody else entirely, not us')), { clock });
    assert.equal(verify(verifier, other.seal(nack(), 5)), 'unknown-key');
    const behind = new ControlSealer(key, { clock: new FakeClock(-(replayFreshnessMs + 1) * 1000) });
    assert.equal(verify(verifier, behind.seal(nack(), 5)), 'stale');
    const ahead = new ControlSealer(key, { clock: new FakeClock((replayFreshnessMs + 1) * 1000) });
    assert.equal(verify(verifier, ahead.seal(nack(), 5)), 'stale');
    assert.equal(verifier.peerCount, 0);
  });

  it('accepts reordering within the window of replayWindowCountersMax counters and refuses what fell out of it', () => {
    const clock = new FakeClock();
    const sealer = new ControlSealer(key, { clock });
    const verifier = new ControlVerifier([key], { ownId: 5, clock });
    const size = replayWindowCountersMax;
    const packets = Array.from({ length: size + 6 }, () => sealer.seal(nack(), 5));
    assert.equal(verify(verifier, packets[1] as Buffer), undefined);
    assert.equal(verify(verifier, packets[0] as Buffer), undefined, 'one reordered message');
    for (const packet of packets.slice(3, size + 5)) {
      assert.equal(verify(verifier, packet), undefined);
    }
    assert.equal(verify(verifier, packets[1] as Buffer), 'replayed');
    assert.equal(verify(verifier, packets[2] as Buffer), 'replayed', 'older than the window');
    assert.equal(verify(verifier, packets[size + 5] as Buffer), undefined);
    for (const packet of packets) {
      assert.equal(verify(verifier, packet), 'replayed', 'every one of them, once accepted or too old');
    }
  });

  it('messages for everyone and for us, read in any interleaving of the two paths, are each accepted once', () => {
    // One sender seals ANNOUNCE chunks and REPAIRs for a group (target 0) and for us (our id),
    // from one counter; a reader takes one socket's queue before the other's.
    const clock = new FakeClock();
    const sealer = new ControlSealer(key, { clock });
    const verifier = new ControlVerifier([key], { ownId: 5, clock });
    const group: Buffer[] = [];
    const direct: Buffer[] = [];
    for (let i = 0; i < 3 * replayWindowCountersMax; i++) {
      (i % 3 === 0 ? direct : group).push(sealer.seal(nack(), i % 3 === 0 ? 5 : 0));
    }
    for (const packet of [...group, ...direct]) {
      assert.equal(verify(verifier, packet), undefined);
    }
    for (const packet of [...direct, ...group]) {
      assert.equal(verify(verifier, packet), 'replayed');
    }
  });

  it('a sender whose clock steps back is not taken for a replay', () => {
    const clock = new FakeClock();
    const senderClock = new FakeClock();
    const sealer = new ControlSealer(key, { clock: senderClock });
    const verifier = new ControlVerifier([key], { ownId: 5, clock });
    assert.equal(verify(verifier, sealer.seal(nack(), 5)), undefined);
    senderClock.wallOffsetUs = -20 * secondUs; // within the freshness window
    assert.equal(verify(verifier, sealer.seal(nack(), 5)), undefined);
    senderClock.wallOffsetUs = -120 * secondUs; // beyond it: stale while wrong, never "replayed"
    assert.equal(verify(verifier, sealer.seal(nack(), 5)), 'stale');
    senderClock.wallOffsetUs = 0; // corrected
    assert.equal(verify(verifier, sealer.seal(nack(), 5)), undefined);
  });

  for (const stepUs of [120 * secondUs, -120 * secondUs]) {
    it(`a server started with its clock ${stepUs / secondUs} s off accepts again once corrected`, () => {
      // Issue 9, item 6: the wall clock was anchored once at start, so every NACK stayed stale.
      const serverClock = new FakeClock(stepUs);
      const senderClock = new FakeClock();
      const sealer = new ControlSealer(key, { clock: senderClock });
      const verifier = new ControlVerifier([key], { ownId: 5, clock: serverClock });
      advance([serverClock, senderClock], 500);
      assert.equal(verify(verifier, sealer.seal(nack(), 5)), 'stale', 'while the clocks disagree');
      serverClock.wallOffsetUs = 0;
      advance([serverClock, senderClock], 500);
      assert.equal(verify(verifier, sealer.seal(nack(), 5)), undefined);
      assert.equal(
        verify(verifier, sealer.seal(nack(), 0)),
        undefined,
        'target 0 too: the start moved with the clock',
      );
      serverClock.wallOffsetUs = -stepUs; // and a step the other way during its life
      advance([serverClock, senderClock], 500);
      assert.equal(verify(verifier, sealer.seal(nack(), 5)), 'stale');
      serverClock.wallOffsetUs = 0;
      assert.equal(verify(verifier, sealer.seal(nack(), 5)), undefined);
    });
  }

  it('forgetting a sender (more than replayPeersMax) does not let its messages be replayed', () => {
    const clock = new FakeClock();
    const verifier = new ControlVerifier([key], { ownId: 5, clock });
    const first = new ControlSealer(key, { clock }).seal(nack(), 5);
    assert.equal(verify(verifier, first), undefined);
    advance([clock], 1);
    for (let i = 0; i < replayPeersMax; i++) {
      assert.equal(verify(verifier, new ControlSealer(key, { clock }).seal(nack(), 5)), undefined);
    }
    assert.equal(verifier.peerCount, replayPeersMax);
    assert.equal(verify(verifier, first), 'replayed');
    advance([clock], 1);
    assert.equal(
      verify(verifier, new ControlSealer(key, { clock }).seal(nack(), 5)),
      undefined,
      'a new sender',
    );
  });
});

describe('control channel: bound to the target process', () => {
  it('a message for another server, or for this one before its restart, is refused', () => {
    const { repair, retransmit, clocks } = pair();
    introduce(repair, retransmit);
    const captured = repair.seal(nack(), retransmitAt);
    const second = new ControlChannel([key], { clock: clocks[1], self: () => [otherRetransmitAt] });
    assert.equal(offer(second, Buffer.from(captured), repairAt, decodeNack), 'wrong-target');
    const restarted = new ControlChannel([key], { clock: clocks[1], self: () => [retransmitAt] });
    assert.notEqual(restarted.senderId, retransmit.senderId, 'a restart draws a new id');
    assert.equal(offer(restarted, Buffer.from(captured), repairAt, decodeNack), 'wrong-target');
    assert.equal(offer(retransmit, captured, repairAt, decodeNack), 'ok');
    assert.equal(offer(retransmit, captured, repairAt, decodeNack), 'replayed');
  });

  it('target 0 is accepted only when sent after this process started, on the clock as it reads now', () => {
    const { repair, clocks } = pair();
    advance(clocks, 5_000);
    const early = repair.seal(nack(), retransmitAt); // no id known yet: target 0
    advance(clocks, 1_000);
    const serverClock = clocks[1];
    serverClock.wallOffsetUs = 120 * secondUs; // the server starts with its clock 120 s ahead
    const server = new ControlChannel([key], { clock: serverClock, self: () => [retransmitAt] });
    serverClock.wallOffsetUs = 0; // and is corrected: its start moves with the correction
    assert.equal(offer(server, Buffer.from(early), repairAt, decodeNack), 'before-start');
    advance(clocks, 1);
    const late = repair.seal(nack(), retransmitAt);
    assert.equal(offer(server, late, repairAt, decodeNack), 'ok');
  });

  it('every control type: accepted once by its target; replayed, sent elsewhere or after a restart, refused', () => {
    const { repair, retransmit, clocks } = pair();
    introduce(repair, retransmit);
    assert.equal(offer(retransmit, repair.seal(nack(), retransmitAt), repairAt, decodeNack), 'ok');
    assert.equal(retransmit.targetIdOf(repairAt), repair.senderId, 'learned from the NACK');
    const peer = new ControlChannel([key], { clock: clocks[1], self: () => [otherRetransmitAt] });
    assert.equal(
      offer(retransmit, peer.seal(encodeQuality(fields, { sessions: [] })), otherRetransmitAt, decodeQuality),
      'ok',
    );
    const toRepair = (packet: Buffer) => retransmit.seal(packet, repairAt);
    const cases: Array<[string, Buffer, ControlChannel, PeerEndpoint, Decoder]> = [
      ['NACK', repair.seal(nack(), retransmitAt), retransmit, repairAt, decodeNack],
      [
        'REPAIR',
        toRepair(encodeRepair(fields, encodeData(fields, Buffer.from('x')))),
        repair,
        retransmitAt,
        decodeRepair,
      ],
      ['not-held REPAIR', toRepair(encodeRepairNotHeld(fields, 3)), repair, retransmitAt, decodeRepair],
      [
        'ANNOUNCE',
        toRepair(encodeAnnounce(fields, { ...retransmitAt, sessions: [] })),
        repair,
        retransmitAt,
        decodeAnnounce,
      ],
      [
        'QUALITY',
        retransmit.seal(encodeQuality(fields, { sessions: [] }), otherRetransmitAt),
        peer,
        retransmitAt,
        decodeQuality,
      ],
    ];
    for (const [name, packet, receiver, from, decode] of cases) {
      const elsewhere = new ControlChannel([key], { clock: clocks[0], self: () => [otherRetransmitAt] });
      assert.equal(offer(elsewhere, Buffer.from(packet), from, decode), 'wrong-target', `${name} elsewhere`);
      assert.equal(offer(receiver, packet, from, decode), 'ok', name);
      assert.equal(offer(receiver, packet, from, decode), 'replayed', `${name} replayed`);
    }
  });

  it('SETUP (target 0: the subscription server learns no ids) binds the server by its endpoint', () => {
    const clock = new FakeClock();
    const subscription = new ControlSealer(key, { clock });
    const server = new ControlChannel([key], { clock, self: () => [retransmitAt] });
    const other = new ControlChannel([key], { clock, self: () => [otherRetransmitAt] });
    advance([clock], 10);
    const leave = subscription.seal(setup(retransmitAt));
    const from = { address: '10.200.1.5', port: 40_000 };
    assert.equal(offer(other, Buffer.from(leave), from, decodeSetup), 'wrong-endpoint');
    assert.equal(offer(server, leave, from, decodeSetup), 'ok');
    assert.equal(offer(server, leave, from, decodeSetup), 'replayed');
    advance([clock], 10);
    const restarted = new ControlChannel([key], { clock, self: () => [retransmitAt] });
    assert.equal(offer(restarted, leave, from, decodeSetup), 'before-start');
    const wildcard = new ControlChannel([key], { clock, self: () => [{ address: '0.0.0.0', port: 7000 }] });
    advance([clock], 10);
    const toLoopback = subscription.seal(setup({ address: '127.0.0.1', port: 7000 }));
    assert.equal(
      offer(wildcard, toLoopback, from, decodeSetup),
      'ok',
      'a wildcard listener is every host address',
    );
    const toAnotherHost = subscription.seal(setup({ address: '192.0.2.99', port: 7000 }));
    assert.equal(offer(wildcard, toAnotherHost, from, decodeSetup), 'wrong-endpoint');
  });
});

describe('control channel: a peer that restarted is reached again', () => {
  it('a learned id is named only while the peer is heard from; then target 0 reaches its new life', () => {
    const { repair, retransmit, clocks } = pair();
    introduce(repair, retransmit);
    advance(clocks, controlPeerSilenceMsMax - 10);
    const restarted = new ControlChannel([key], { clock: clocks[1], self: () => [retransmitAt] });
    advance(clocks, 1);
    assert.equal(repair.targetIdOf(retransmitAt), retransmit.senderId, 'heard from recently enough');
    assert.equal(offer(restarted, repair.seal(nack(), retransmitAt), repairAt, decodeNack), 'wrong-target');
    advance(clocks, 10);
    assert.equal(repair.targetIdOf(retransmitAt), 0, 'silent too long: target 0');
    const request = acceptNack(restarted, repair.seal(nack(), retransmitAt), repairAt);
    assert.equal(offer(repair, restarted.introduction(request), retransmitAt, decodeAnnounce), 'ok');
    assert.equal(repair.targetIdOf(retransmitAt), restarted.senderId, 'the newer life wins');
  });

  it('a restarted server whose earlier life stamped later times is learned again by a message sealed for us', () => {
    // Its clock ran 10 s ahead before the crash and was corrected for the restart: its new life's
    // times are earlier than the ones it taught, and its old id falls silent (test/sim/found.md #7).
    const { repair, repairClock, retransmitClock } = pair({ retransmitOffsetUs: 10 * secondUs });
    const ahead = new ControlChannel([key], { clock: retransmitClock, self: () => [retransmitAt] });
    const announced = ahead.seal(encodeAnnounce(fields, { ...retransmitAt, sessions: [] }));
    assert.equal(offer(repair, announced, retransmitAt, decodeAnnounce), 'ok');
    assert.equal(repair.targetIdOf(retransmitAt), ahead.senderId);
    const correctedClock = new FakeClock();
    correctedClock.monotonicMs = retransmitClock.monotonicMs;
    advance([repairClock, correctedClock], controlPeerSilenceMsMax + 1);
    assert.ok(controlPeerSilenceMsMax + 1 < replayFreshnessMs, 'silent, but not for the freshness window');
    const restarted = new ControlChannel([key], { clock: correctedClock, self: () => [retransmitAt] });
    advance([repairClock, correctedClock], 1);
    assert.equal(repair.targetIdOf(retransmitAt), 0, 'silent too long: target 0');
    // Sealed for everyone and older than what the old id taught: it does not replace the id.
    const forEveryone = restarted.seal(encodeAnnounce(fields, { ...retransmitAt, sessions: [] }));
    assert.equal(offer(repair, forEveryone, retransmitAt, decodeAnnounce), 'ok');
    assert.equal(repair.targetIdOf(retransmitAt), 0, 'a message for everyone could be an old capture');
    // Its introduction answers our NACK and is sealed for our id: only its present life can seal it.
    const request = acceptNack(restarted, repair.seal(nack(), retransmitAt), repairAt);
    assert.equal(offer(repair, restarted.introduction(request), retransmitAt, decodeAnnounce), 'ok');
    assert.equal(repair.targetIdOf(retransmitAt), restarted.senderId, 'the restarted life is named again');
    assert.equal(offer(restarted, repair.seal(nack(), retransmitAt), repairAt, decodeNack), 'ok');
  });
});

describe('control channel: answers go only to the authenticated address', () => {
  it('a NACK from anywhere but its reply endpoint is refused and leaves no state', () => {
    const { repair, retransmit } = pair();
    introduce(repair, retransmit);
    const packet = repair.seal(nack(), retransmitAt);
    const victim = { address: '192.0.2.1', port: 7100 };
    assert.equal(offer(retransmit, packet, victim, decodeNack), 'reply-mismatch');
    assert.equal(
      offer(retransmit, packet, { address: repairAt.address, port: 7101 }, decodeNack),
      'reply-mismatch',
    );
    assert.equal(retransmit.targetIdOf(victim), 0, 'nothing learned');
    assert.equal(
      offer(retransmit, packet, { address: `::ffff:${repairAt.address}`, port: 7100 }, decodeNack),
      'ok',
    );
  });

  it('our own message sent back to us (a fetch replayed from our own address) is refused: no answer to ourselves', () => {
    const { repair } = pair();
    const packet = repair.seal(nack(), retransmitAt);
    assert.equal(offer(repair, packet, repairAt, decodeNack), 'own-message');
    assert.equal(repair.targetIdOf(repairAt), 0, 'nothing learned');
  });

  it('a NACK naming no target gets an introduction smaller than itself, which teaches the id', () => {
    const { repair, retransmit } = pair();
    const first = repair.seal(nack(), retransmitAt);
    const decoded = decodeNack(first);
    assert.ok(decoded.ok && decoded.value.auth.targetId === 0);
    const request = acceptNack(retransmit, first, repairAt);
    const smallestNack = encodeNack(fields, { replyTo: repairAt, ranges: [{ start: 1, count: 1 }] });
    const hello = retransmit.introduction(request);
    assert.ok(hello.length < smallestNack.length, `${hello.length} < ${smallestNack.length}`);
    const announce = decodeAnnounce(hello);
    assert.ok(announce.ok);
    assert.deepEqual([announce.value.sessions.length, announce.value.auth.targetId], [0, repair.senderId]);
    assert.equal(offer(repair, hello, retransmitAt, decodeAnnounce), 'ok');
    const second = decodeNack(repair.seal(nack(), retransmitAt));
    assert.ok(second.ok);
    assert.equal(second.value.auth.targetId, retransmit.senderId);
  });

  it("a replayed ANNOUNCE of a server's earlier life does not undo the id its current one taught", () => {
    const { repair, clocks } = pair();
    const old = new ControlChannel([key], { clock: clocks[1], self: () => [retransmitAt] });
    const captured = old.seal(encodeAnnounce(fields, { ...retransmitAt, sessions: [] }));
    advance(clocks, 1_000);
    const current = new ControlChannel([key], { clock: clocks[1], self: () => [retransmitAt] });
    assert.equal(
      offer(
        repair,
        current.seal(encodeAnnounce(fields, { ...retransmitAt, sessions: [] })),
        retransmitAt,
        decodeAnnounce,
      ),
      'ok',
    );
    assert.equal(offer(repair, captured, retransmitAt, decodeAnnounce), 'ok', 'fresh and after our start');
    assert.equal(repair.targetIdOf(retransmitAt), current.senderId);
  });
});

describe('endpoints', () => {
  it('compare however the address is written', () => {
    assert.ok(sameEndpoint({ address: '::ffff:10.0.0.1', port: 1 }, { address: '10.0.0.1', port: 1 }));
    assert.ok(sameEndpoint({ address: '::ffff:a00:1', port: 1 }, { address: '10.0.0.1', port: 1 }));
    assert.ok(!sameEndpoint({ address: '::a00:1', port: 1 }, { address: '10.0.0.1', port: 1 }));
    assert.ok(sameEndpoint({ address: 'fd00:0:0::1', port: 1 }, { address: 'FD00::1', port: 1 }));
    assert.ok(sameEndpoint({ address: 'fe80::1%eth0', port: 1 }, { address: 'fe80::1', port: 1 }));
    assert.ok(!sameEndpoint({ address: '10.0.0.1', port: 1 }, { address: '10.0.0.1', port: 2 }));
    assert.ok(!sameEndpoint({ address: 'localhost', port: 1 }, { address: 'localhost', port: 1 }));
  });
});

describe('secret files', () => {
  it('reads a secret file and refuses a short one, naming it', () => {
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-secret-'));
    try {
      writeFileSync(join(directory, 'good'), 'correct horse battery staple\n');
      writeFileSync(join(directory, 'short'), 'tiny\n');
      assert.equal(readSecretFile(join(directory, 'good')).key.toString(), 'correct horse battery staple');
      assert.throws(
        () => readSecretFile(join(directory, 'short')),
        /--secret-file: .*short holds 4 bytes; a secret needs at least 16/,
      );
      assert.throws(() => readSecretFile(join(directory, 'none')), /--secret-file: cannot read .*ENOENT/);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});
