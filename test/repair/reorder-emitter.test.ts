import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Timer } from '../../src/net/runtime.js';
import { SessionWindow } from '../../src/protocol/session-window.js';
import {
  createReorderEmitter,
  type EmitterEvent,
  type EmitterRun,
} from '../../src/repair/reorder-emitter.js';

/** A run as the emitter sees it, with gaps whose state a test sets. */
interface TestRun extends EmitterRun {
  endSequence: number | undefined;
  frontier: number;
  readonly gaps: Map<number, { firstMs: number; unrecoverable: boolean }>;
}

function testRun(base: number): TestRun {
  const gaps = new Map<number, { firstMs: number; unrecoverable: boolean }>();
  return {
    window: new SessionWindow(base, {
      packetsMax: 64,
      bytesMax: 1 << 20,
      progressAheadPacketsMax: 64,
      resyncPacketsMin: 8,
    }),
    nacks: { state: (sequence) => gaps.get(sequence) },
    endSequence: undefined,
    endTimer: undefined,
    paceTimer: undefined,
    frontier: base,
    gaps,
  };
}

const packet = (sequence: number) => Buffer.from(`packet ${sequence}`);

/** An emitter on a manual clock and manual timers, recording what it sent and reported. */
function harness(latencyMs: number | undefined, pace?: { perSecond: number; burstPackets: number }) {
  let nowMs = 0;
  const timers: Array<{ atMs: number; fn: () => void; cancelled: boolean }> = [];
  const sent: string[] = [];
  const events: Array<Exclude<EmitterEvent<TestRun>['type'], 'emitted'>> = [];
  const passed: number[] = [];
  const asked: number[] = [];
  const emitter = createReorderEmitter<TestRun>({
    clock: { nowMs: () => nowMs },
    transport: { send: (datagram) => sent.push(datagram.toString()) },
    setTimeout: (fn, delayMs): Timer => {
      const timer = { atMs: nowMs + delayMs, fn, cancelled: false };
      timers.push(timer);
      return { cancel: () => (timer.cancelled = true) };
    },
    latencyMs,
    endGraceMs: 100,
    pace:
      pace === undefined ? undefined : { perSecond: () => pace.perSecond, burstPackets: pace.burstPackets },
    events: (event) => {
      if (event.type === 'passed') {
        passed.push(event.sequence);
      } else if (event.type === 'ask') {
        asked.push(event.sequence);
      }
      if (event.type !== 'emitted') {
        events.push(event.type);
      }
    },
  });
  const advance = (ms: number) => {
    nowMs += ms;
    for (const timer of timers.splice(0)) {
      if (timer.atMs <= nowMs && !timer.cancelled) {
        timer.fn();
      } else if (!timer.cancelled) {
        timers.push(timer);
      }
    }
  };
  return { emitter, sent, events, passed, asked, advance, pendingTimers: () => timers.length };
}

/** Offers DATA to the run's window (as the owner does before it emits). */
function hold(run: TestRun, sequences: readonly number[]): void {
  for (const sequence of sequences) {
    assert.equal(run.window.offer(sequence, packet(sequence)), 'held');
  }
}

describe('repair server: the reorder/emitter', () => {
  it('re-emits in order and waits at a gap until it is filled', () => {
    const { emitter, sent, events } = harness(undefined);
    const run = testRun(10);
    hold(run, [10, 11, 13, 14]);
    run.frontier = 15;
    run.gaps.set(12, { firstMs: 0, unrecoverable: false });
    emitter.emit(run);
    assert.deepEqual(sent, ['packet 10', 'packet 11']);
    hold(run, [12]);
    run.gaps.delete(12);
    emitter.emit(run);
    assert.deepEqual(sent, ['packet 10', 'packet 11', 'packet 12', 'packet 13', 'packet 14']);
    assert.deepEqual(events, []);
  });

  it('asks for a delivery point known from S1 to exist, and only then', () => {
    const { emitter, asked } = harness(undefined);
    const run = testRun(20);
    hold(run, [21]);
    emitter.emit(run);
    assert.deepEqual(asked, [], 'not yet known from S1: it may still be in the socket');
    run.frontier = 22;
    emitter.emit(run);
    assert.deepEqual(asked, [20]);
  });

  it('passes a gap only when given up and evidenced by DATA after it, reporting each', () => {
    const { emitter, sent, passed } = harness(undefined);
    const run = testRun(0);
    run.window.claim(3); // a HEARTBEAT says 0-2 exist: no DATA after them
    run.gaps.set(0, { firstMs: 0, unrecoverable: true });
    emitter.emit(run);
    assert.deepEqual(passed, [], 'known only from a HEARTBEAT: never given up while the run is live');
    hold(run, [1]);
    emitter.emit(run);
    assert.deepEqual(passed, [0]);
    assert.deepEqual(sent, ['packet 1']);
  });

  it('with a latency budget, a gap older than the budget is passed; a younger one waits', () => {
    const { emitter, sent, passed, advance } = harness(100);
    const run = testRun(0);
    hold(run, [1]);
    run.frontier = 2;
    run.gaps.set(0, { firstMs: 0, unrecoverable: false });
    advance(99);
    emitter.emit(run);
    assert.deepEqual([passed, sent], [[], []]);
    advance(1);
    emitter.emit(run);
    assert.deepEqual([passed, sent], [[0], ['packet 1']]);
  });

  it("completes a run only after END's grace with everything before it out", () => {
    const { emitter, sent, events, advance } = harness(undefined);
    const run = testRun(0);
    hold(run, [0, 1]);
    run.frontier = 2;
    assert.ok(run.window.endAt(2));
    run.endSequence = 2;
    emitter.emit(run);
    assert.deepEqual(sent, ['packet 0', 'packet 1']);
    emitter.emit(run); // a second call while the grace runs sets no second timer
    advance(99);
    assert.deepEqual(events, []);
    advance(1);
    assert.deepEqual(events, ['complete']);
  });

  it('an END taken back during its grace (DATA after it) completes nothing', () => {
    const { emitter, events, advance } = harness(undefined);
    const run = testRun(0);
    hold(run, [0]);
    assert.ok(run.window.endAt(1));
    run.endSequence = 1;
    emitter.emit(run);
    run.endSequence = undefined; // as the owner does when DATA at or after the END arrives
    advance(1_000);
    assert.deepEqual(events, []);
  });

  it('forcePassOldest gives up the gap at the delivery point and emits what follows', () => {
    const { emitter, sent, passed } = harness(undefined);
    const run = testRun(5);
    hold(run, [6, 7]);
    run.gaps.set(5, { firstMs: 0, unrecoverable: false });
    emitter.forcePassOldest(run);
    assert.deepEqual(passed, [5]);
    assert.deepEqual(sent, ['packet 6', 'packet 7']);
    emitter.forcePassOldest(run);
    assert.deepEqual(passed, [5], 'nothing outstanding: nothing passed');
  });

  it('paced: a hold released when its gap fills leaves in bursts at the pace, in order, all of it', () => {
    // 4 datagrams per ms, bursts of 8: 40 packets held behind a gap must not leave at once (a
    // receiver's socket would overflow), nor be lost or reordered.
    const { emitter, sent, advance } = harness(undefined, { perSecond: 4000, burstPackets: 8 });
    const run = testRun(0);
    const behind = Array.from({ length: 40 }, (_, i) => i + 1);
    hold(run, behind);
    run.frontier = 41;
    run.gaps.set(0, { firstMs: 0, unrecoverable: false });
    emitter.emit(run);
    assert.deepEqual(sent, [], 'waits at the gap');
    hold(run, [0]);
    run.gaps.delete(0);
    emitter.emit(run);
    assert.equal(sent.length, 8, 'one burst leaves at once');
    assert.ok(run.paceTimer !== undefined, 'the rest is scheduled');
    const steps: number[] = [];
    for (let ms = 0; ms < 100 && sent.length < 41; ms++) {
      const before = sent.length;
      advance(1);
      steps.push(sent.length - before);
    }
    assert.deepEqual(
      sent,
      Array.from({ length: 41 }, (_, i) => `packet ${i}`),
      'every held packet leaves, in order',
    );
    assert.ok(Math.max(...steps) <= 4, `at most the pace per ms after the burst: ${steps.join(',')}`);
    assert.ok(steps.length >= 8, `33 packets at 4 per ms take at least 8 ms: ${steps.length}`);
    assert.equal(run.paceTimer, undefined, 'nothing left to pace');
  });

  it('paced: a hold full of packets waiting for their pace makes room by sending the oldest, giving up nothing', () => {
    // Over the hold's byte bound the owner calls forcePassOldest until the arrival fits: with the
    // delivery point held and no credit it did nothing, the owner looped 65,536 times per
    // arriving datagram and then dropped it (over-hold-bytes).
    const { emitter, sent, passed } = harness(undefined, { perSecond: 1000, burstPackets: 2 });
    const run = testRun(0);
    hold(run, [0, 1, 2, 3, 4]);
    run.frontier = 5;
    emitter.emit(run);
    assert.deepEqual(sent, ['packet 0', 'packet 1'], 'a burst, then the pace');
    const heldBefore = run.window.heldBytes;
    emitter.forcePassOldest(run);
    assert.deepEqual(passed, [], 'a held packet is never given up');
    assert.deepEqual(sent, ['packet 0', 'packet 1', 'packet 2'], 'the oldest left ahead of its pace');
    assert.ok(run.window.heldBytes < heldBefore, 'room was made');
  });

  it('paced: an arrival while the pace timer waits emits only what the credit allows', () => {
    const { emitter, sent } = harness(undefined, { perSecond: 1000, burstPackets: 2 });
    const run = testRun(0);
    hold(run, [0, 1, 2, 3]);
    run.frontier = 4;
    emitter.emit(run);
    emitter.emit(run);
    assert.deepEqual(sent, ['packet 0', 'packet 1'], 'the burst, then nothing more at the same instant');
  });
});
