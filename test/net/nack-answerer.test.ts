import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import { repairAnswerRecentMs, repairMulticastRecentMs } from '../../src/limits.js';
import { NackAnswerer } from '../../src/net/nack-answerer.js';
import {
  decodeAnnounce,
  decodeNack,
  decodeRepair,
  encodeNack,
  type PeerEndpoint,
  type SequenceRange,
} from '../../src/protocol/control.js';
import { encodeData, offsetSequence, offsetType, PacketType } from '../../src/protocol/packet.js';
import { encodeManifestUnsigned } from '../../src/protocol/restricted.js';
import { ManualClock } from '../helpers/manual-clock.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));
const requesterAt: PeerEndpoint = { address: '10.0.0.2', port: 7000 };
const serverAt: PeerEndpoint = { address: '10.0.0.1', port: 6000 };

/** A server's answerer over a buffer of sequences 100..149 of session 7, run 3, and a requester. */
function setup(
  options: {
    rateBitsPerSecond?: number;
    multicast?: boolean;
    cap?: () => number;
    signed?: boolean;
    /** A signed session whose every datagram has its own manifest (the most a NACK can name). */
    manifestPerPacket?: boolean;
  } = {},
) {
  const clock = new ManualClock();
  const server = new ControlChannel([key], { clock, self: () => [serverAt] });
  const requester = new ControlChannel([key], { clock });
  const held = new Map<number, Buffer>();
  for (let sequence = 100; sequence < 150; sequence++) {
    held.set(
      sequence,
      encodeData(
        { sessionId: 7, incarnation: 3, sequence, timestampUs: clock.wallUs() },
        Buffer.alloc(1000, sequence),
      ),
    );
  }
  // A signed session: manifests over 100..131 and 132..163 (the gate's verified datagrams).
  const manifests = [100, 132].map((first) =>
    encodeManifestUnsigned(
      { sessionId: 7, incarnation: 3, sequence: first, timestampUs: clock.wallUs() },
      Array.from({ length: 32 }, () => Buffer.alloc(16)),
    ),
  );
  const manifestOf = (sequence: number) =>
    encodeManifestUnsigned(
      { sessionId: 7, incarnation: 3, sequence, timestampUs: clock.wallUs() },
      Array.from({ length: 32 }, () => Buffer.alloc(16)),
    );
  const ownManifests = new Map([...held.keys()].map((sequence) => [sequence, manifestOf(sequence)]));
  const sent: Array<{ datagram: Buffer; to: PeerEndpoint | 'group' }> = [];
  const dropped: string[] = [];
  const answerer = new NackAnswerer({
    clock,
    timers: clock,
    channel: server,
    sockets: {
      sendTo: (datagram, to) => sent.push({ datagram, to }),
      multicast: options.multicast === true ? (datagram) => sent.push({ datagram, to: 'group' }) : undefined,
    },
    repairRateBitsPerSecond: options.rateBitsPerSecond ?? 1_000_000_000,
    repairRateCapBitsPerSecond: options.cap,
    lookup: (sessionId, incarnation, sequence) =>
      sessionId === 7 && incarnation === 3 ? held.get(sequence) : undefined,
    signatureFor:
      options.manifestPerPacket === true
        ? (original) => ownManifests.get(original.readUInt32BE(offsetSequence))
        : options.signed === true
          ? (original) => manifests[original.readUInt32BE(offsetSequence) < 132 ? 0 : 1]
          : undefined,
    drop: (reason) => dropped.push(reason),
  });
  /** Seals a NACK as the requester and has the server accept it, as the role does. */
  const nack = (ranges: SequenceRange[], incarnation = 3, again = false, signatures = false) => {
    const datagram = requester.seal(
      encodeNack(
        { sessionId: 7, incarnation, sequence: ranges[0]?.start ?? 0, timestampUs: clock.wallUs() },
        { replyTo: requesterAt, ranges, again, signatures },
      ),
      serverAt,
    );
    const accepted = server.accept(datagram, requesterAt, decodeNack, 'nack', (reason) =>
      dropped.push(reason),
    );
    assert.ok(accepted !== undefined, `the NACK was refused: ${dropped.join(', ')}`);
    return accepted;
  };
  /** Makes the requester know the server's id (as an introduction would). */
  const introduce = () => {
    answerer.answer(nack([{ start: 100, count: 1 }]), requesterAt);
    const intro = sent.pop();
    assert.ok(intro !== undefined);
    assert.ok(requester.accept(intro.datagram, serverAt, decodeAnnounce, 'announce', () => undefined));
  };
  return { clock, answerer, sent, dropped, nack, introduce, manifests };
}

describe('NACK answerer', () => {
  it('with the signatures flag, sends each covering manifest once, ahead of the REPAIRs, and not again within repairAnswerRecentMs', () => {
    const { answerer, sent, nack, introduce, manifests, clock } = setup({ signed: true });
    introduce();
    answerer.answer(nack([{ start: 120, count: 20 }], 3, false, true), requesterAt);
    const carried = sent.map((s) => decodeRepair(s.datagram)).map((r) => (r.ok ? r.value : undefined));
    // Two manifests (120..131 and 132..139 are under different ones), then twenty REPAIRs of DATA.
    assert.equal(carried.length, 22);
    assert.deepEqual(carried[0]?.signature, manifests[0]);
    assert.equal(carried[0]?.sequence, 100);
    assert.deepEqual(carried[1]?.signature, manifests[1]);
    assert.equal(carried[1]?.sequence, 132);
    assert.ok(
      carried.slice(2).every((repair) => repair?.data !== undefined && repair.signature === undefined),
    );
    assert.equal(answerer.counters.signaturesSent, 2);
    assert.equal(answerer.counters.repairsSent, 20);
    // Asked again at once: the manifests are on their way, and so are the REPAIRs.
    sent.length = 0;
    answerer.answer(nack([{ start: 120, count: 20 }], 3, true, true), requesterAt);
    assert.equal(sent.length, 0);
    // After the window: both go again (their copies were lost).
    clock.advance(repairAnswerRecentMs);
    answerer.answer(nack([{ start: 125, count: 1 }], 3, true, true), requesterAt);
    const again = sent.map((s) => decodeRepair(s.datagram)).map((r) => (r.ok ? r.value : undefined));
    assert.deepEqual(again[0]?.signature, manifests[0]);
    assert.equal(again[1]?.data?.sequence, 125);
    assert.equal(again.length, 2);
  });

  it("paces the manifests a NACK with the signatures flag draws at the requester's rate, like the REPAIRs (they bypassed it)", () => {
    // 8 Mbit/s is 1,000 bytes a ms: a burst of 10 ms is about 10,000 bytes. Fifty held datagrams,
    // each under its own manifest: one NACK draws fifty manifests and fifty REPAIRs.
    const { answerer, sent, nack, introduce, clock } = setup({
      rateBitsPerSecond: 8_000_000,
      manifestPerPacket: true,
    });
    introduce();
    answerer.answer(nack([{ start: 100, count: 50 }], 3, false, true), requesterAt);
    const burstBytes = sent.reduce((sum, s) => sum + s.datagram.length, 0);
    assert.ok(burstBytes <= 10_000 + 1_200, `at once, no more than a burst leaves: ${burstBytes} bytes`);
    assert.ok(answerer.queuedCount > 0, 'the rest waits for credit');
    clock.advance(1_000);
    assert.equal(answerer.counters.signaturesSent, 50);
    assert.equal(answerer.counters.repairsSent, 50);
    assert.equal(answerer.queuedCount, 0);
    // Each manifest still leaves ahead of the REPAIR it vouches for.
    const carried = sent.map((s) => decodeRepair(s.datagram)).map((r) => (r.ok ? r.value : undefined));
    for (let sequence = 100; sequence < 150; sequence++) {
      const manifestAt = carried.findIndex((r) => r?.signature !== undefined && r.sequence === sequence);
      const dataAt = carried.findIndex((r) => r?.data?.sequence === sequence);
      assert.ok(manifestAt >= 0 && manifestAt < dataAt, `manifest of ${sequence} ahead of its REPAIR`);
    }
  });

  it("sends not-held answers within the requester's rate: a NACK naming 128 holes drew 128 at once past it", () => {
    // 800 kbit/s: a burst is the floor of two 1,500-byte datagrams, 3,000 bytes.
    const { answerer, sent, nack, introduce, clock } = setup({ rateBitsPerSecond: 800_000 });
    introduce();
    // 128 ranges of one sequence each, none held: as many not-held answers.
    const holes = Array.from({ length: 128 }, (_, i) => ({ start: 1_000 + 2 * i, count: 1 }));
    answerer.answer(nack(holes), requesterAt);
    const bytes = sent.reduce((sum, s) => sum + s.datagram.length, 0);
    assert.ok(bytes <= 3_000, `at once, no more than a burst leaves: ${bytes} bytes`);
    assert.ok(answerer.counters.notHeldSent > 0, 'some leave at once');
    assert.equal(answerer.counters.rateLimited, 128 - answerer.counters.notHeldSent, 'the rest are counted');
    // Credit comes back with time: a NACK later is answered again.
    sent.length = 0;
    clock.advance(1_000);
    answerer.answer(nack([{ start: 5_000, count: 1 }]), requesterAt);
    assert.equal(sent.length, 1);
  });

  it('without the signatures flag, or for sequences not held, sends no manifest', () => {
    const { answerer, sent, nack, introduce } = setup({ signed: true });
    introduce();
    answerer.answer(nack([{ start: 120, count: 5 }]), requesterAt);
    answerer.answer(nack([{ start: 150, count: 5 }], 3, false, true), requesterAt);
    const carried = sent.map((s) => decodeRepair(s.datagram)).map((r) => (r.ok ? r.value : undefined));
    assert.equal(
      carried.filter((repair) => repair?.signature !== undefined).length,
      0,
      JSON.stringify(carried.map((repair) => repair?.sequence)),
    );
    assert.equal(answerer.counters.signaturesSent, 0);
  });

  it('answers a NACK that does not name it with an introduction smaller than the NACK, and nothing else', () => {
    const { answerer, sent, nack } = setup();
    const request = nack([{ start: 100, count: 10 }]);
    answerer.answer(request, requesterAt);
    assert.equal(sent.length, 1);
    assert.equal(sent[0]?.datagram[offsetType], PacketType.announce);
    assert.equal(answerer.counters.repairsSent, 0);
  });

  it('answers held sequences with REPAIRs of the original bytes and the rest with one not-held run', () => {
    const { answerer, sent, nack, introduce } = setup();
    introduce();
    answerer.answer(nack([{ start: 145, count: 10 }]), requesterAt);
    const repairs = sent.map((s) => decodeRepair(s.datagram));
    const held = repairs.filter((r) => r.ok && r.value.data !== undefined);
    const notHeld = repairs.filter((r) => r.ok && r.value.data === undefined);
    assert.equal(held.length, 5);
    assert.equal(notHeld.length, 1);
    const first = notHeld[0];
    assert.ok(first?.ok);
    assert.equal(first.value.sequence, 150);
    assert.equal(first.value.notHeldCount, 5);
    for (const repair of held) {
      assert.ok(repair.ok && repair.value.data !== undefined);
      assert.equal(repair.value.data.payload[0], repair.value.sequence & 0xff);
    }
    assert.ok(sent.every((s) => s.to === requesterAt));
    assert.equal(answerer.counters.nacksAnswered, 1);
  });

  it('never serves a sequence of another incarnation', () => {
    const { answerer, sent, nack, introduce } = setup();
    introduce();
    answerer.answer(nack([{ start: 100, count: 3 }], 4), requesterAt);
    assert.equal(answerer.counters.repairsSent, 0);
    assert.equal(answerer.counters.notHeldSent, 1);
    assert.equal(sent.length, 1);
  });

  it('paces answers to a requester at its rate: a burst waits for credit and leaves as time passes', () => {
    // 8 Mbit/s is 1,000 bytes a ms: a burst of 10 ms holds about 9 answers of 1,000-byte packets.
    const { answerer, sent, nack, introduce, clock } = setup({ rateBitsPerSecond: 8_000_000 });
    introduce();
    answerer.answer(nack([{ start: 100, count: 50 }]), requesterAt);
    const first = answerer.counters.repairsSent;
    assert.ok(first > 0 && first < 50, `a burst leaves at once, the rest waits: ${first}`);
    assert.equal(answerer.queuedCount, 50 - first);
    assert.equal(answerer.counters.rateLimited, 0, 'nothing is dropped: it waits');
    clock.advance(20);
    assert.ok(answerer.counters.repairsSent > first, 'credit comes back with time');
    clock.advance(100);
    assert.equal(answerer.counters.repairsSent, 50);
    assert.equal(answerer.queuedCount, 0);
    const sequences = sent.map((s) => decodeRepair(s.datagram)).map((r) => (r.ok ? r.value.sequence : -1));
    assert.deepEqual(
      sequences,
      Array.from({ length: 50 }, (_, i) => 100 + i),
      'in the order asked',
    );
  });

  it('does not answer a sequence again while its answer waits or was sent moments ago', () => {
    const { answerer, nack, introduce, clock } = setup({ rateBitsPerSecond: 8_000_000 });
    introduce();
    answerer.answer(nack([{ start: 100, count: 30 }]), requesterAt);
    // The requester timed out and asks for all of it again: queued ones and just-sent ones alike.
    clock.advance(repairAnswerRecentMs / 2);
    answerer.answer(nack([{ start: 100, count: 30 }], 3, true), requesterAt);
    clock.advance(repairAnswerRecentMs / 2 - 1);
    assert.equal(answerer.counters.repairsSent, 30, 'each once');
    assert.equal(answerer.counters.suppressed, 30);
    assert.equal(answerer.counters.answersLost, 0);
    // Long after, a request again means the answer was lost: it is answered again.
    clock.advance(repairAnswerRecentMs * 2);
    answerer.answer(nack([{ start: 100, count: 2 }], 3, true), requesterAt);
    clock.advance(10);
    assert.equal(answerer.counters.repairsSent, 32);
    assert.equal(answerer.counters.answersLost, 2);
  });

  it('paces no faster than a ceiling that follows the edge (the adaptive rate of a source), read at each refill', () => {
    let capBitsPerSecond = 800_000; // 100 bytes a ms: one 1,000-byte answer per 10 ms, after the burst
    const { answerer, nack, introduce, clock } = setup({
      rateBitsPerSecond: 100_000_000,
      cap: () => capBitsPerSecond,
    });
    introduce();
    assert.equal(answerer.rateBitsPerSecond, capBitsPerSecond);
    answerer.answer(nack([{ start: 100, count: 50 }]), requesterAt);
    const burst = answerer.counters.repairsSent;
    clock.advance(100);
    const slow = answerer.counters.repairsSent - burst;
    assert.ok(slow >= 8 && slow <= 11, `about 10 in 100 ms at the ceiling: ${slow}`);
    capBitsPerSecond = 8_000_000; // the edge keeps up again: ten times faster
    clock.advance(100);
    assert.equal(answerer.counters.repairsSent, 50, 'the rest within 100 ms at the new ceiling');
    assert.equal(answerer.rateBitsPerSecond, capBitsPerSecond);
  });

  it('on a repair group sends each sequence once for everyone and suppresses a repeat within the window', () => {
    const { answerer, sent, nack, introduce, clock } = setup({ multicast: true });
    introduce();
    answerer.answer(nack([{ start: 100, count: 4 }]), requesterAt);
    answerer.answer(nack([{ start: 100, count: 4 }], 3, true), requesterAt);
    assert.equal(sent.filter((s) => s.to === 'group').length, 4);
    assert.equal(answerer.counters.suppressed, 4);
    clock.advance(1_000);
    answerer.answer(nack([{ start: 100, count: 4 }], 3, true), requesterAt);
    assert.equal(sent.filter((s) => s.to === 'group').length, 8, 'asked again after the window: sent again');
  });

  it('on a repair group a first request for a sequence multicast lately crossed it: not sent again (a late repair server)', () => {
    const { answerer, sent, nack, introduce, clock } = setup({ multicast: true });
    introduce();
    answerer.answer(nack([{ start: 100, count: 4 }]), requesterAt);
    // Another repair server, seconds behind in reading S1, asks for the same packets the first time.
    clock.advance(repairMulticastRecentMs - 1);
    answerer.answer(nack([{ start: 100, count: 4 }]), requesterAt);
    assert.equal(sent.filter((s) => s.to === 'group').length, 4, 'one multicast per lost packet');
    assert.equal(answerer.counters.suppressed, 4);
    // Had it lost the multicast, it asks again (the flag) after its timeout, and gets it.
    answerer.answer(nack([{ start: 102, count: 2 }], 3, true), requesterAt);
    assert.equal(sent.filter((s) => s.to === 'group').length, 6);
    // Long after, a first request is answered again.
    clock.advance(2);
    introduce(); // the requester heard nothing from us for seconds: it names us again after an introduction
    answerer.answer(nack([{ start: 100, count: 2 }]), requesterAt);
    assert.equal(sent.filter((s) => s.to === 'group').length, 8);
  });
});
