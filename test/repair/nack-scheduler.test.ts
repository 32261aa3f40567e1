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
  reliableNotHeldWaitMsMax,
} from '../../src/limits.js';
import type { SequenceRange } from '../../src/protocol/control.js';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { type NackEvent, NackScheduler, toRanges } from '../../src/repair/nack-scheduler.js';
import { type RankedServer, ServerRanking } from '../../src/repair/server-ranking.js';
import { ManualClock } from '../helpers/manual-clock.js';

const at = (port: number) => ({ address: '10.0.0.1', port, family: 4 as const });

/** A scheduler on a manual clock with two servers; every NACK and event is recorded. */
function setup(
  options: {
    alive?: boolean | ((port: number) => boolean);
    servers?: number;
    reliable?: boolean;
    arrivals?: () => number;
  } = {},
) {
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
    isAlive: (server: RankedServer) =>
      typeof options.alive === 'function' ? options.alive(server.endpoint.port) : (options.alive ?? false),
    sendNack: (server: RankedServer, ranges) =>
      nacks.push({ port: server.endpoint.port, ranges, atMs: clock.nowMs() }),
    base: () => 0,
    nackDelayMsMax: 2,
    reliable: options.reliable ?? false,
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

  it("reliable: a live server's silence never gives a packet up; with no live server it is, saying why", () => {
    const live = setup({ alive: true, reliable: true });
    live.scheduler.add(5);
    live.clock.advance(liveServerWaitMsMax * 4);
    assert.equal(live.count('gave-up') + live.unrecoverable(), 0, 'still asked');
    assert.ok(live.nacks.length > nackAttemptsMax);
    assert.equal(live.scheduler.filled(5)?.wasUnrecoverable, false);
    const gone = setup({ alive: false, reliable: true });
    gone.scheduler.add(5);
    gone.clock.advance(60_000);
    assert.equal(gone.unrecoverable(), 1);
    const event = gone.events.find((e) => e.type === 'unrecoverable');
    assert.equal(event?.type === 'unrecoverable' ? event.reason : undefined, 'no-live-server');
  });

  it('reliable: unproven "not held" gives a packet up only after reliableNotHeldWaitMsMax; proven ones do (not-held)', () => {
    const { clock, scheduler, events, unrecoverable } = setup({ alive: true, reliable: true, servers: 1 });
    scheduler.add(5);
    clock.advance(2);
    for (let i = 0; i < nackAttemptsMax * 3; i++) {
      scheduler.notHeld(5, false);
      clock.advance((reliableNotHeldWaitMsMax - 1_000) / (nackAttemptsMax * 3));
    }
    assert.equal(unrecoverable(), 0, 'a server behind has not lost it yet');
    const waited = setup({ alive: true, reliable: true, servers: 1 });
    waited.scheduler.add(5);
    for (let i = 0; i < 1_000 && waited.unrecoverable() === 0; i++) {
      waited.clock.advance(1_000);
      waited.scheduler.notHeld(5, false);
    }
    assert.equal(
      waited.unrecoverable(),
      1,
      'a packet no server read in minutes is given up: the run can end',
    );
    assert.ok(waited.clock.nowMs() > reliableNotHeldWaitMsMax);
    for (let i = 0; i < nackAttemptsMax; i++) {
      scheduler.notHeld(5, true);
      clock.advance(10_000);
    }
    assert.equal(unrecoverable(), 1);
    const event = events.find((e) => e.type === 'unrecoverable');
    assert.equal(event?.type === 'unrecoverable' ? event.reason : undefined, 'not-held');
  });

  it('reliable: "not held" proven by one server never gives up a packet a live server may hold', () => {
    // Server 6000 is live but slow (its answers are late), server 6001 lost the packet itself and
    // proves it each round: only 6001's answers are proof, and 6000 may still hold the packet.
    const { clock, scheduler, nacks, unrecoverable } = setup({ alive: true, reliable: true });
    scheduler.add(5);
    let answered = 0;
    for (let step = 0; step < 20_000 && clock.nowMs() < 1_000 + liveServerWaitMsMax * 3; step++) {
      clock.advance(5);
      for (; answered < nacks.length; answered++) {
        if (nacks[answered]?.port === 6001) {
          scheduler.notHeld(5, true);
        }
      }
    }
    assert.ok(
      nacks.filter((nack) => nack.port === 6001).length > nackAttemptsMax,
      'the server without it was asked more than nackAttemptsMax times',
    );
    assert.equal(unrecoverable(), 0, 'a live server that never said "not held" may still hold it');
    assert.equal(scheduler.filled(5)?.wasUnrecoverable, false);
  });

  it('reliable: a server gone never gives up a packet a live, slow server may hold', () => {
    // 6000 is gone (its timeouts count), 6001 is live and slow: the packet is still asked for.
    const { clock, scheduler, nacks, unrecoverable } = setup({
      alive: (port) => port === 6001,
      reliable: true,
    });
    scheduler.add(5);
    clock.advance(liveServerWaitMsMax * 3);
    assert.ok(nacks.filter((nack) => nack.port === 6000).length > nackAttemptsMax);
    assert.equal(unrecoverable(), 0, 'the live server was never shown to lack it');
  });

  it('reliable: proven "not held" from every live server gives it up, whatever a gone server did', () => {
    const { clock, scheduler, nacks, events, unrecoverable } = setup({
      alive: (port) => port === 6001,
      reliable: true,
    });
    scheduler.add(5);
    let answered = 0;
    for (let step = 0; step < 20_000 && unrecoverable() === 0; step++) {
      clock.advance(5);
      for (; answered < nacks.length; answered++) {
        if (nacks[answered]?.port === 6001) {
          scheduler.notHeld(5, true);
        }
      }
    }
    assert.equal(unrecoverable(), 1, 'given up within the bounded steps');
    const event = events.find((e) => e.type === 'unrecoverable');
    assert.ok(event?.type === 'unrecoverable' && ['not-held', 'no-live-server'].includes(event.reason));
  });

  it('reliable: a withdrawn server\'s "not held" does not hold back a gap every listening server proved lost', () => {
    const { clock, scheduler, servers, nacks, events, unrecoverable } = setup({
      alive: true,
      reliable: true,
    });
    const withdrawn = servers.ranked().find((server) => server.endpoint.port === 6000);
    assert.ok(withdrawn !== undefined);
    withdrawn.listening = false; // its ANNOUNCE said the election withdrew it: it reads no S1
    scheduler.add(5);
    let answered = 0;
    for (let step = 0; step < 20_000 && unrecoverable() === 0; step++) {
      clock.advance(5);
      for (; answered < nacks.length; answered++) {
        scheduler.notHeld(5, nacks[answered]?.port === 6001); // only the listening one had passed it
      }
    }
    assert.equal(unrecoverable(), 1, 'given up within the bounded steps');
    const event = events.find((e) => e.type === 'unrecoverable');
    assert.equal(event?.type === 'unrecoverable' ? event.reason : undefined, 'not-held');
  });

  it('a burst of 2,000 gaps with no live server is given up in the time of one gap, not 2,000 / window of them', () => {
    const { clock, scheduler, unrecoverable, events } = setup({ alive: false, reliable: true, servers: 1 });
    for (let sequence = 0; sequence < 2_000; sequence++) {
      scheduler.add(sequence);
    }
    for (let step = 0; step < 600 && unrecoverable() < 2_000; step++) {
      clock.advance(100);
    }
    assert.equal(unrecoverable(), 2_000, 'every gap given up within 60 s: no one can serve them');
    assert.ok(
      events.every((e) => e.type !== 'unrecoverable' || e.reason === 'no-live-server'),
      'each for the reason that no live server was heard from',
    );
  });

  it("a burst of 3,000 gaps is asked for within each server's NACK window, which opens as answers come", () => {
    const { clock, scheduler, servers, nacks, count, unrecoverable } = setup({ alive: true, reliable: true });
    // Each server answers 5 ms after a NACK, at most 256 packets per 20 ms (a rate limit that drops
    // what is over, as a retransmit server's does); what it drops is never answered.
    const credit = new Map<number, { packets: number; atMs: number }>();
    const inFlightMax = new Map<number, number>();
    let sent = 0;
    const outstanding = new Map<number, number>();
    const originalPush = nacks.push.bind(nacks);
    nacks.push = (...items) => {
      for (const nack of items) {
        const packets = nack.ranges.reduce((sum, range) => sum + range.count, 0);
        sent += packets;
        outstanding.set(nack.port, (outstanding.get(nack.port) ?? 0) + packets);
        inFlightMax.set(
          nack.port,
          Math.max(inFlightMax.get(nack.port) ?? 0, outstanding.get(nack.port) ?? 0),
        );
        for (const range of nack.ranges) {
          for (let i = 0; i < range.count; i++) {
            const sequence = range.start + i;
            clock.setTimeout(() => {
              outstanding.set(nack.port, (outstanding.get(nack.port) ?? 0) - 1);
              const bucket = credit.get(nack.port) ?? { packets: 256, atMs: clock.nowMs() };
              bucket.packets = Math.min(256, bucket.packets + ((clock.nowMs() - bucket.atMs) * 256) / 20);
              bucket.atMs = clock.nowMs();
              credit.set(nack.port, bucket);
              if (bucket.packets >= 1) {
                bucket.packets--;
                // As the repair server does: an answer resets the server's timeouts; one to a first NACK measures the round trip.
                const filled = scheduler.filled(sequence);
                if (filled?.server !== undefined) {
                  servers.answered(filled.server);
                  if (filled.firstNack) {
                    servers.sampleRoundTrip(filled.server, clock.nowMs() - filled.sentAtMs);
                  }
                }
              }
            }, 5);
          }
        }
      }
      return originalPush(...items);
    };
    const gaps = 3000;
    for (let sequence = 0; sequence < gaps; sequence++) {
      scheduler.add(sequence);
    }
    clock.advance(3);
    const firstRound = nacks.reduce((sum, nack) => sum + nack.ranges.reduce((n, r) => n + r.count, 0), 0);
    assert.ok(firstRound <= 2 * 64, `first round asked for ${firstRound} packets, not every gap at once`);
    let elapsedMs = 0;
    while (scheduler.size > 0 && elapsedMs < 10_000) {
      clock.advance(10);
      elapsedMs += 10;
    }
    assert.equal(scheduler.size, 0, `${scheduler.size} gaps left after ${elapsedMs} ms`);
    assert.equal(unrecoverable(), 0);
    assert.ok(elapsedMs <= 2_000, `repaired in ${elapsedMs} ms`);
    assert.ok(sent <= gaps * 2, `${sent} packets NACKed for ${gaps} gaps (${count('timeout')} timeouts)`);
    for (const [port, max] of inFlightMax) {
      assert.ok(max <= 1024, `server ${port}: ${max} packets asked at once`);
    }
  });

  it("a timeout halves the server's NACK window, once per timeout period", () => {
    const { clock, scheduler } = setup({ alive: true, reliable: true, servers: 1 });
    for (let sequence = 0; sequence < 200; sequence++) {
      scheduler.add(sequence);
    }
    clock.advance(3);
    assert.deepEqual(
      scheduler.windows().map((w) => [w.packets, w.inFlight]),
      [[64, 64]],
    );
    clock.advance(nackTimeoutMsInitial);
    assert.equal(scheduler.windows()[0]?.packets, 32, 'halved once for 64 timeouts at one moment');
  });

  /**
   * One server that answers each NACKed packet 10 ms later unless `lost` says its answer is lost;
   * 40 new gaps every 10 ms (4,000 packets/s of gaps) for 2 s. Returns the window at the end.
   */
  function windowUnder(lost: (index: number) => boolean): { packets: number; repaired: number } {
    const { clock, scheduler, servers, nacks } = setup({ alive: true, reliable: true, servers: 1 });
    let answers = 0;
    let repaired = 0;
    const originalPush = nacks.push.bind(nacks);
    nacks.push = (...items) => {
      for (const nack of items) {
        for (const range of nack.ranges) {
          for (let i = 0; i < range.count; i++) {
            const sequence = range.start + i;
            if (lost(answers++)) {
              continue;
            }
            clock.setTimeout(() => {
              const filled = scheduler.filled(sequence);
              if (filled?.server !== undefined) {
                repaired++;
                servers.answered(filled.server);
                if (filled.firstNack) {
                  servers.sampleRoundTrip(filled.server, clock.nowMs() - filled.sentAtMs);
                }
              }
            }, 10);
          }
        }
      }
      return originalPush(...items);
    };
    let next = 0;
    for (let step = 0; step < 200; step++) {
      for (let i = 0; i < 40; i++) {
        scheduler.add(next++);
      }
      clock.advance(10);
    }
    return { packets: scheduler.windows()[0]?.packets ?? 0, repaired };
  }

  it('answers lost at random on a lossy edge (one in five) do not hold the NACK window down', () => {
    const { packets, repaired } = windowUnder((index) => index % 5 === 4);
    assert.ok(packets >= 256, `the window opened to ${packets} packets`);
    assert.ok(repaired >= 7_000, `${repaired} of 8,000 gaps repaired in 2 s`);
  });

  it('a server that leaves most NACKs unanswered (over its rate) still halves the window', () => {
    const { packets } = windowUnder((index) => index % 4 !== 0);
    assert.ok(packets <= 32, `the window stayed at ${packets} packets`);
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
    // The server's NACK window bounds it too (nothing answers: it shrinks), so the floor is a
    // ceiling here; what matters is that asking goes on.
    assert.ok(floorOnly > burst * 2, `the floor keeps asking: ${floorOnly}`);
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

  it('reliable: gaps no server holds, asked round after round, never starve a held gap behind them of the budget (sim seed 26)', () => {
    // Nothing arrives (the budget is its floor) and three live servers answer 5 ms after each NACK.
    // Forty gaps just before the wrap are held by none: each is answered "not held", unproven, and
    // asked again round after round (reliable: none of them may be given up). A gap found later,
    // past the wrap, is held by 6001 alone. It must be asked of 6001 and filled well within
    // sessionIdleMs, or the run falls silent and it is given up although a live server holds it.
    const { clock, scheduler, nacks, unrecoverable } = setup({
      alive: true,
      reliable: true,
      servers: 3,
      arrivals: () => 0,
    });
    const first = 0xffff_ff60;
    for (let i = 0; i < 40; i++) {
      scheduler.add(sequenceAdd(first, i));
    }
    const held = sequenceAdd(first, 175); // 15, past the wrap
    let filledAtMs: number | undefined;
    const originalPush = nacks.push.bind(nacks);
    nacks.push = (...items) => {
      for (const nack of items) {
        for (const range of nack.ranges) {
          for (let i = 0; i < range.count; i++) {
            const sequence = sequenceAdd(range.start, i);
            clock.setTimeout(() => {
              if (sequence === held && nack.port === 6001) {
                scheduler.filled(sequence);
                filledAtMs ??= clock.nowMs();
              } else {
                scheduler.notHeld(sequence, false);
              }
            }, 5);
          }
        }
      }
      return originalPush(...items);
    };
    clock.advance(2_000); // the forty are well into their rounds
    const foundAtMs = clock.nowMs();
    scheduler.add(held);
    for (let step = 0; step < 100 && filledAtMs === undefined; step++) {
      clock.advance(10);
    }
    const filledAfterMs = filledAtMs;
    assert.ok(filledAfterMs !== undefined, 'the held gap was asked of the server that holds it');
    assert.ok(filledAfterMs - foundAtMs < 1_000, `filled ${filledAfterMs - foundAtMs} ms after it was found`);
    clock.advance(3_000);
    assert.equal(unrecoverable(), 0, 'nothing given up: every gap may still be held by a live server');
    const askedAfter = new Set(
      nacks
        .filter((nack) => nack.atMs > filledAfterMs)
        .flatMap((nack) =>
          nack.ranges.flatMap((range) =>
            Array.from({ length: range.count }, (_, i) => sequenceAdd(range.start, i)),
          ),
        ),
    );
    assert.equal(askedAfter.size, 40, 'the forty are still asked for, in their turn (the budget paces them)');
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
