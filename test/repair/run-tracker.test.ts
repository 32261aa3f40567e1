import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { endGraceMsDefault, endRepeatCount, sessionIdleMs } from '../../src/limits.js';
import type { Timer } from '../../src/net/runtime.js';
import {
  decodeHeader,
  encodeData,
  encodeDescriptor,
  encodeProgress,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import type { SessionWindow } from '../../src/protocol/session-window.js';
import { NackScheduler } from '../../src/repair/nack-scheduler.js';
import { createReorderEmitter } from '../../src/repair/reorder-emitter.js';
import { createRunTracker, type Run, type RunCounters } from '../../src/repair/run-tracker.js';
import { ServerRanking } from '../../src/repair/server-ranking.js';
import { hasFastProperties } from '../helpers/fast-properties.js';

const sessionId = 7;

const descriptor = (incarnation: number, sequence = 0) =>
  encodeDescriptor(
    { sessionId, incarnation, sequence, timestampUs: 0 },
    {
      firstSequence: 0,
      packetPayloadBytes: 1000,
      kind: SessionKind.stream,
      totalBytes: undefined,
      rateBitsPerSecond: 1_000_000,
      sha256: undefined,
      name: 'test',
    },
  );
const data = (incarnation: number, sequence: number) =>
  encodeData(
    { sessionId, incarnation, sequence, timestampUs: 0 },
    Buffer.from(`run ${incarnation} #${sequence}`),
  );
const progress = (
  type: typeof PacketType.heartbeat | typeof PacketType.end,
  incarnation: number,
  sequence: number,
) =>
  encodeProgress(
    type,
    { sessionId, incarnation, sequence, timestampUs: 0 },
    { packetCount: sequence, byteCount: 0 },
  );

/**
 * A run tracker on a manual clock: manual timers, a reorder/emitter whose S2 is a list, and NACK
 * schedulers that register gaps but never NACK them.
 */
function harness() {
  let nowMs = 1_000;
  const timers: Array<{ atMs: number; fn: () => void; cancelled: boolean }> = [];
  const setTimeout = (fn: () => void, delayMs: number): Timer => {
    const timer = { atMs: nowMs + delayMs, fn, cancelled: false };
    timers.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  };
  /** Moves the clock on, firing the timers due by then in time order. */
  const advance = (ms: number) => {
    const until = nowMs + ms;
    for (let due = nextDue(until); due !== undefined; due = nextDue(until)) {
      nowMs = Math.max(nowMs, due.atMs);
      due.cancelled = true;
      due.fn();
    }
    nowMs = until;
  };
  const nextDue = (until: number) =>
    timers.filter((t) => !t.cancelled && t.atMs <= until).sort((a, b) => a.atMs - b.atMs)[0];
  const s2: Buffer[] = [];
  const counters: RunCounters = {
    packetsIn: 0,
    repairsReceived: 0,
    notHeldReceived: 0,
    recovered: 0,
    recoveredBytes: 0,
    lateDirect: 0,
    duplicates: 0,
    emitted: 0,
    sessionsCompleted: 0,
    sessionsIncomplete: 0,
    notReached: 0,
    beyondWindow: 0,
    claimsTooFar: 0,
    endsRepaired: 0,
    signaturesRepaired: 0,
  };
  const dropped: Record<string, number> = {};
  const unrecoverable: Record<string, number> = {};
  const servers = new ServerRanking();
  const nacksFor = (_sessionId: number, _incarnation: number, window: SessionWindow) =>
    new NackScheduler({
      nowMs: () => nowMs,
      random: () => 0.5,
      // Its NACK timers never fire: a gap waits (as for a server that is slow) until the tracker acts.
      schedule: () => ({ cancel: () => undefined }),
      defer: () => ({ cancel: () => undefined }),
      servers,
      isAlive: () => false,
      base: () => window.base,
      nackDelayMsMax: 10,
      reliable: true,
      // As the role does: what the scheduler gives up is counted with what the tracker passes.
      events: (event) => {
        if (event.type === 'unrecoverable') {
          unrecoverable[event.reason] = (unrecoverable[event.reason] ?? 0) + event.delta;
        }
      },
      sendNack: () => assert.fail('no retransmit server is known'),
    });
  const reorder = createReorderEmitter<Run>({
    clock: { nowMs: () => nowMs },
    transport: { send: (datagram) => s2.push(datagram) },
    setTimeout,
    latencyMs: undefined,
    endGraceMs: endGraceMsDefault,
    events: (event) => tracker.onEmitterEvent(event),
  });
  const tracker = createRunTracker({
    clock: { nowMs: () => nowMs },
    counters,
    drop: (reason, count = 1) => {
      dropped[reason] = (dropped[reason] ?? 0) + count;
    },
    countUnrecoverable: (reason, delta) => {
      unrecoverable[reason] = (unrecoverable[reason] ?? 0) + delta;
    },
    nacksFor,
    reorder,
    emitS2: (datagram) => s2.push(datagram),
    setTimeout,
    servers,
    sampleDelay: () => undefined,
  });
  /** What went out on S2, as "type incarnation/sequence". */
  const sent = () =>
    s2.map((datagram) => {
      const header = decodeHeader(datagram);
      assert.ok(header.ok);
      const name = Object.entries(PacketType).find(([, code]) => code === header.value.type)?.[0];
      return `${name} ${header.value.incarnation}/${header.value.sequence}`;
    });
  /** The run being repaired, read afresh (an assertion on it narrows no later read). */
  const current = (): Run | undefined => tracker.currentRun();
  return { tracker, current, counters, dropped, unrecoverable, advance, sent };
}

describe('the repair server’s run tracker', () => {
  it('stays in V8’s fast mode, every tracker made: it takes every S1 datagram and is asked for its run at every REPAIR', () => {
    const made = [harness(), harness(), harness()];
    for (const { tracker } of made) {
      tracker.onS1(descriptor(1));
      tracker.onS1(data(1, 0));
      assert.equal(hasFastProperties(tracker), true);
      assert.equal(tracker.currentRun()?.incarnation, 1);
      assert.equal(tracker.pendingPackets(), 0);
    }
  });

  it('takes up a run, moves its frontier on S1, asks for its gaps and finishes it at its END', () => {
    const { tracker, current, counters, advance, sent } = harness();
    assert.equal(current(), undefined);
    tracker.onS1(descriptor(100));
    assert.equal(current()?.incarnation, 100);
    for (const sequence of [0, 1, 3]) {
      tracker.onS1(data(100, sequence));
    }
    assert.equal(current()?.frontier, 4);
    assert.equal(current()?.nacks.size, 1, 'sequence 2 is a gap');
    // A HEARTBEAT claims sequences 4 and 5 exist: they are gaps too.
    tracker.onS1(progress(PacketType.heartbeat, 100, 6));
    assert.equal(current()?.frontier, 6);
    assert.equal(current()?.nacks.size, 3);
    for (const sequence of [2, 4, 5]) {
      tracker.onS1(data(100, sequence));
    }
    assert.equal(counters.lateDirect, 3, 'gaps filled on S1 are late, not recovered');
    assert.equal(counters.recovered, 0);
    assert.equal(current()?.nacks.size, 0);
    tracker.onS1(progress(PacketType.end, 100, 6));
    assert.equal(current()?.endSequence, 6);
    advance(endGraceMsDefault + 1_000);
    assert.equal(current(), undefined);
    assert.equal(counters.sessionsCompleted, 1);
    assert.equal(counters.sessionsIncomplete, 0);
    assert.equal(counters.emitted, 6);
    assert.deepEqual(sent(), [
      'descriptor 100/0',
      'data 100/0',
      'data 100/1',
      'heartbeat 100/6',
      'data 100/2',
      'data 100/3',
      'data 100/4',
      'data 100/5',
      ...Array.from({ length: endRepeatCount }, () => 'end 100/6'),
    ]);
  });

  it('takes up a new incarnation of the session with what was held for it, and never the old one again', () => {
    const { tracker, current, counters, dropped, advance, sent } = harness();
    tracker.onS1(descriptor(100));
    tracker.onS1(data(100, 0));
    // The source restarted under the same session id: its new run is held, never written to the old.
    tracker.onS1(descriptor(200));
    tracker.onS1(data(200, 0));
    tracker.onS1(data(200, 1));
    assert.equal(current()?.incarnation, 100);
    assert.equal(dropped['other-session'], 2);
    assert.equal(tracker.pendingPackets(), 2);
    tracker.onS1(progress(PacketType.end, 100, 1));
    advance(endGraceMsDefault + 1_000);
    assert.equal(counters.sessionsCompleted, 1);
    assert.equal(current()?.incarnation, 200, 'the new run is taken up at once');
    assert.equal(tracker.pendingPackets(), 0);
    assert.deepEqual(
      sent().filter((line) => !line.startsWith('end')),
      ['descriptor 100/0', 'data 100/0', 'data 200/0', 'data 200/1', 'descriptor 200/0'],
    );
    // A replayed DESCRIPTOR or DATA of the run that ended is not taken up again.
    tracker.onS1(data(100, 1));
    assert.equal(current()?.incarnation, 200);
    assert.equal(dropped['ended-run'], 1);
  });

  it('ends a run whose source fell silent, its gaps unrecoverable, and serves the next', () => {
    const { tracker, current, counters, unrecoverable, advance, sent } = harness();
    tracker.onS1(descriptor(100));
    for (const sequence of [0, 1, 3]) {
      tracker.onS1(data(100, sequence));
    }
    advance(sessionIdleMs - 1);
    tracker.endIfIdle();
    assert.equal(current()?.incarnation, 100, 'not silent for sessionIdleMs yet');
    advance(2);
    tracker.endIfIdle();
    assert.equal(current(), undefined);
    assert.equal(counters.sessionsIncomplete, 1);
    assert.equal(counters.sessionsCompleted, 0);
    assert.deepEqual(unrecoverable, { idle: 1 }, 'sequence 2 is given up, not skipped silently');
    assert.deepEqual(sent(), ['descriptor 100/0', 'data 100/0', 'data 100/1', 'data 100/3']);
    tracker.onS1(descriptor(300));
    assert.equal(current()?.incarnation, 300);
  });

  it('paces a run by its own arrivals: other runs’ DATA and an earlier faster run do not inflate it', () => {
    const { tracker, current, advance } = harness();
    // The harness's clock starts at 1,000 ms. Run 100 arrives at 1,000 DATA a second for a second.
    tracker.onS1(descriptor(100));
    let sequence = 0;
    for (let ms = 0; ms < 1000; ms++) {
      tracker.onS1(data(100, sequence++));
      advance(1);
    }
    const first = current();
    assert.ok(first !== undefined);
    assert.ok(Math.abs(first.arrivalRate.peakPerSecond(2_000) - 1000) <= 50, 'run 100 at about 1,000/s');
    // Run 300 arrives at 100 DATA a second, while forged DATA of another incarnation floods S1 at
    // 5,000 a second: run 300's rate (that its S2 is paced by) is its own, about 100/s.
    advance(sessionIdleMs + 1);
    tracker.endIfIdle(); // run 100 ends, silent
    assert.equal(current(), undefined);
    tracker.onS1(descriptor(300));
    const second = current();
    assert.equal(second?.incarnation, 300);
    let own = 0;
    for (let ms = 0; ms < 1000; ms++) {
      for (let i = 0; i < 5; i++) {
        tracker.onS1(data(999, ms * 5 + i));
      }
      if (ms % 10 === 0) {
        tracker.onS1(data(300, own++));
      }
      advance(1);
    }
    const peak = second.arrivalRate.peakPerSecond(3_000 + sessionIdleMs + 1);
    assert.ok(peak >= 90 && peak <= 110, `run 300 paced by about 100/s, not ${peak}`);
  });
});
