import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  liveServerWaitMsMax,
  nackAttemptsMax,
  nackBudgetBurstMs,
  nackPacketsPerArrival,
  nackPacketsPerSecondMin,
  nackRangePacketsMax,
  nackRangesMax,
  nackTimeoutMsInitial,
} from '../../src/limits.js';
import type { SequenceRange } from '../../src/protocol/control.js';
import { type NackEvent, NackScheduler, toRanges } from '../../src/repair/nack-scheduler.js';
import { type RankedServer, ServerRanking } from '../../src/repair/server-ranking.js';
import { ManualClock } from '../helpers/manual-clock.js';

const at = (port: number) => ({ address: '10.0.0.1', port, family: 4 as const });

/** A scheduler on a manual clock with two servers; every NACK and event is recorded. */
function setup(options: { alive?: boolean; servers?: number; arrivals?: () => number } = {}) {
  const clock = new ManualClock();
  const servers = new ServerRanking();
  for (let i = 0; i < (options.servers ?? 2); i++) {
    servers.add(at(6000 + i), i);
  }
  const nacks: Array<{ port: number; ranges: readonly SequenceRange[]; atMs: number }> = [];
  const events: NackEvent[] = [];
  const scheduler = new NackScheduler({
    nowMs: () => clock.nowMs(),
    random: () => 0.5,
    schedule: (delayMs, fn) => {
      const timer = clock.setTimeout(fn, delayMs);
      return { cancel: () => timer.cancel() };
    },
    defer: (fn) => clock.defer(fn),
    servers,
    isAlive: () => options.alive ?? false,
    sendNack: (server: RankedServer, ranges) =>
      nacks.push({ port: server.endpoint.port, ranges, atMs: clock.nowMs() }),
    base: () => 0,
    nackDelayMsMax: 2,
    arrivals: options.arrivals,
    events: (event) => events.push(event),
  });
  const count = (type: NackEvent['type']) => events.filter((event) => event.type === type).length;
  const unrecoverable = () =>
    events.reduce((sum, event) => sum + (event.type === 'unrecoverable' ? event.delta : 0), 0);
  return { clock, servers, scheduler, nacks, events, count, unrecoverable };
}

describe('the repair server NACK scheduler', () => {
  it('NACKs new gaps after the random delay, in one NACK of ranges to the best server, oldest first', () => {
    const { clock, scheduler, nacks, count } = setup();
    for (const sequence of [7, 3, 4, 5, 9]) {
      scheduler.add(sequence);
    }
    scheduler.add(4); // known: no second gap
    assert.equal(count('gap'), 5);
    clock.advance(0.5);
    assert.equal(nacks.length, 0, 'not before the delay (0.5 × 2 ms)');
    clock.advance(1);
    assert.deepEqual(nacks, [
      {
        port: 6000,
        ranges: [
          { start: 3, count: 3 },
          { start: 7, count: 1 },
          { start: 9, count: 1 },
        ],
        atMs: 1_001,
      },
    ]);
  });

  it('a packet that arrives is no longer NACKed; an answer to the first NACK measures the round trip', () => {
    const { clock, scheduler, nacks } = setup();
    scheduler.add(1);
    scheduler.add(2);
    const early = scheduler.filled(2);
    assert.deepEqual(early, { server: undefined, firstNack: true, sentAtMs: 0, wasUnrecoverable: false });
    clock.advance(2);
    assert.deepEqual(nacks[0]?.ranges, [{ start: 1, count: 1 }]);
    clock.advance(7);
    const answered = scheduler.filled(1);
    assert.equal(answered?.server?.endpoint.port, 6000);
    assert.equal(answered?.firstNack, true);
    assert.equal(answered?.sentAtMs, 1_001);
    assert.equal(scheduler.size, 0);
    clock.advance(10_000);
    assert.equal(nacks.length, 1, 'no NACK after it arrived');
  });

  it('a timeout moves the gap to the next server; a silent server counts toward giving up', () => {
    const { clock, scheduler, nacks, count, unrecoverable } = setup();
    scheduler.add(5);
    clock.advance(2);
    clock.advance(nackTimeoutMsInitial);
    assert.deepEqual(
      nacks.map((nack) => nack.port),
      [6000, 6001],
    );
    assert.equal(count('timeout'), 1);
    // Every round times out: after nackAttemptsMax unanswered NACKs the gap is given up, once.
    clock.advance(60_000);
    assert.equal(count('timeout'), nackAttemptsMax);
    assert.equal(nacks.length, nackAttemptsMax);
    assert.equal(count('gave-up'), 1);
    assert.equal(unrecoverable(), 1);
    assert.equal(scheduler.state(5)?.unrecoverable, true);
    // It came after all: counted back.
    assert.equal(scheduler.filled(5)?.wasUnrecoverable, true);
    assert.equal(unrecoverable(), 0);
  });

  it("a live server's silence does not count toward giving up until liveServerWaitMsMax", () => {
    const { clock, scheduler, count, nacks } = setup({ alive: true });
    scheduler.add(5);
    clock.advance(liveServerWaitMsMax - 10);
    assert.ok(nacks.length > nackAttemptsMax, `${nacks.length} NACKs`);
    assert.equal(count('gave-up'), 0, 'still asked, not given up');
    clock.advance(120_000);
    assert.equal(count('gave-up'), 1, 'given up once the wait is over');
  });

  it('"not held" asks the next server at once; from every server, another round after a short backoff', () => {
    const { clock, scheduler, nacks } = setup();
    scheduler.add(5);
    clock.advance(2);
    scheduler.notHeld(5, false);
    clock.advance(0);
    assert.deepEqual(
      nacks.map((nack) => nack.port),
      [6000, 6001],
    );
    assert.equal(nacks[1]?.atMs, 1_002, 'at once');
    scheduler.notHeld(5, false);
    clock.advance(9);
    assert.equal(nacks.length, 2, 'every server said not held: wait');
    clock.advance(1);
    assert.equal(nacks.length, 3, 'another round, 10 ms later (two answers: 5 ms doubled)');
    assert.equal(nacks[2]?.port, 6000);
  });

  it('only proven "not held" answers give a gap up; unproven ones only after liveServerWaitMsMax', () => {
    const unproven = setup({ servers: 1 });
    unproven.scheduler.add(5);
    unproven.clock.advance(2);
    for (let i = 0; i < nackAttemptsMax * 2; i++) {
      unproven.scheduler.notHeld(5, false);
      unproven.clock.advance(30);
    }
    assert.equal(unproven.count('gave-up') + unproven.unrecoverable(), 0, 'a server behind has not lost it');
    const proven = setup({ servers: 1 });
    proven.scheduler.add(5);
    proven.clock.advance(2);
    for (let i = 0; i < nackAttemptsMax; i++) {
      proven.scheduler.notHeld(5, true);
      proven.clock.advance(30_000);
    }
    assert.equal(proven.unrecoverable(), 1);
    assert.equal(proven.scheduler.state(5)?.unrecoverable, true);
  });

  it('an END withdraws the gaps at or after it; passing and clearing count what was never recovered', () => {
    const { clock, scheduler, nacks, count, unrecoverable } = setup();
    for (let sequence = 0; sequence < 10; sequence++) {
      scheduler.add(sequence);
    }
    scheduler.withdrawFrom(6);
    assert.equal(count('gap-withdrawn'), 4);
    assert.equal(scheduler.size, 6);
    assert.equal(scheduler.pass(0), true);
    assert.equal(scheduler.pass(0), false, 'no longer a gap: the caller counts it');
    assert.equal(unrecoverable(), 1);
    scheduler.clear(true);
    assert.equal(unrecoverable(), 6);
    assert.equal(scheduler.size, 0);
    clock.advance(1_000);
    assert.equal(nacks.length, 0, 'cleared gaps are not NACKed');
  });

  it('close() cancels every timer and schedules nothing after', () => {
    const { clock, scheduler, nacks } = setup();
    scheduler.add(1);
    scheduler.close();
    scheduler.add(2);
    clock.advance(60_000);
    assert.equal(nacks.length, 0);
    assert.equal(scheduler.size, 0);
  });

  it('NACKs no more packets than its budget: what arrives plus a floor, in the order they fell due, the rest later', () => {
    let arrived = 0;
    const { clock, scheduler, nacks } = setup({ alive: true, servers: 1, arrivals: () => arrived });
    const nacked = () => nacks.reduce((sum, nack) => sum + nack.ranges.reduce((n, r) => n + r.count, 0), 0);
    // An edge that lets nothing through: 1,000 gaps at once, and nothing arrives.
    for (let sequence = 0; sequence < 1000; sequence++) {
      scheduler.add(sequence);
    }
    clock.advance(2);
    const burst = (nackPacketsPerSecondMin * nackBudgetBurstMs) / 1000;
    assert.equal(nacked(), burst, 'the first flush takes the burst');
    assert.deepEqual(nacks[0]?.ranges[0], { start: 0, count: burst }, 'in the order they fell due');
    // Every NACK times out and is asked again (the server is alive): over 5 s, the floor bounds it.
    clock.advance(5_000);
    const floorOnly = nacked();
    assert.ok(
      floorOnly <= burst + nackPacketsPerSecondMin * 5 + 1,
      `NACKed ${floorOnly} in 5 s with nothing arriving`,
    );
    assert.ok(floorOnly >= nackPacketsPerSecondMin * 4, `the floor keeps asking: ${floorOnly}`);
    // Once datagrams arrive (2,000 a second), the budget grows with them.
    const before = nacked();
    for (let ms = 0; ms < 2_000; ms += 10) {
      arrived += 20;
      clock.advance(10);
    }
    const withArrivals = nacked() - before;
    assert.ok(withArrivals > nackPacketsPerSecondMin * 2 * 3, `more with arrivals: ${withArrivals} in 2 s`);
    assert.ok(
      withArrivals <= (nackPacketsPerSecondMin + nackPacketsPerArrival * 2_000) * 2 + burst,
      `still bounded: ${withArrivals}`,
    );
  });

  it('toRanges splits at range and NACK limits', () => {
    const sequences = Array.from({ length: nackRangePacketsMax + 1 }, (_, i) => i);
    assert.deepEqual(toRanges(sequences), [
      [
        { start: 0, count: nackRangePacketsMax },
        { start: nackRangePacketsMax, count: 1 },
      ],
    ]);
    const scattered = Array.from({ length: nackRangesMax + 1 }, (_, i) => i * 2);
    const lists = toRanges(scattered);
    assert.equal(lists.length, 2);
    assert.equal(lists[0]?.length, nackRangesMax);
    assert.deepEqual(lists[1], [{ start: nackRangesMax * 2, count: 1 }]);
    assert.deepEqual(toRanges([0xffff_ffff, 0, 1]), [[{ start: 0xffff_ffff, count: 3 }]]);
  });
});
