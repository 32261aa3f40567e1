import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resyncPacketsMin } from '../../src/limits.js';
import { GroupRuns } from '../../src/retransmit/group-runs.js';
import { data, end, heartbeat } from '../helpers/craft.js';
import { ManualClock } from '../helpers/manual-clock.js';

/** A group's runs on a manual clock, with every drop recorded. */
function setup(runsMax = 2) {
  const clock = new ManualClock();
  const dropped: string[] = [];
  const runs = new GroupRuns({
    clock,
    bounds: { bytesMax: 1 << 20, ageMs: 10_000 },
    runsMax,
    drop: (reason) => dropped.push(reason),
  });
  return { clock, dropped, runs };
}

const first = { sessionId: 42, incarnation: 1 };
const restarted = { sessionId: 42, incarnation: 2 };
const payload = (sequence: number) => Buffer.alloc(10, sequence);

describe('the runs a retransmit server hears on one group', () => {
  it('keeps a restarted run apart: each run serves only its own packet 5, the newest is current once it sent on', () => {
    const { runs } = setup();
    for (let s = 0; s < 10; s++) {
      assert.equal(runs.take(data(first, s, payload(s))), true);
    }
    const b5 = data(restarted, 5, Buffer.from('b'));
    runs.take(b5);
    for (let s = 6; s < 10; s++) {
      runs.take(data(restarted, s, payload(s)));
    }
    assert.equal(runs.current?.incarnation, 1, 'the restarted run has sent fewer packets yet');
    for (let s = 10; s < 10 + resyncPacketsMin; s++) {
      runs.take(data(restarted, s, payload(s)));
    }
    assert.equal(runs.current?.incarnation, 2);
    assert.equal(runs.get(42, 2)?.get(5), b5);
    assert.notEqual(runs.get(42, 1)?.get(5), b5);
    assert.equal(runs.get(42, 3), undefined);
  });

  it('an END or HEARTBEAT of a run never heard makes no state; of a known run it says how far it reached', () => {
    const { runs, dropped } = setup();
    runs.take(end(first, 10, 10));
    runs.take(heartbeat(first, 10));
    assert.equal(runs.size, 0);
    assert.deepEqual(dropped, ['end-unknown-run']);
    runs.take(data(first, 0, payload(0)));
    assert.equal(runs.get(42, 1)?.reached(3), false);
    runs.take(heartbeat(first, 4));
    assert.equal(runs.get(42, 1)?.reached(3), true);
    runs.take(end(first, 1, 1));
    assert.ok(runs.get(42, 1)?.get(1) !== undefined, "the run's END is kept under its sequence");
  });

  it('at most runsMax runs: a new one evicts the idlest, counted; aged-out old runs are forgotten', () => {
    const { runs, clock, dropped } = setup(2);
    runs.take(data(first, 0, payload(0)));
    clock.advance(10);
    runs.take(data(restarted, 0, payload(0)));
    clock.advance(10);
    runs.take(data({ sessionId: 43, incarnation: 1 }, 0, payload(0)));
    assert.equal(runs.size, 2);
    assert.deepEqual(dropped, ['run-evicted']);
    assert.equal(runs.get(42, 1), undefined, 'the idlest run went first');
    clock.advance(10_001);
    runs.sweep(clock.nowMs());
    assert.equal(runs.size, 1, 'the old run aged out and is forgotten; the current one stays');
    assert.equal(runs.current?.sessionId, 43);
  });

  it('counts and drops a malformed DATA packet; ignores other types', () => {
    const { runs, dropped } = setup();
    const bad = data(first, 0, payload(0));
    bad.writeUInt16BE(9999, 24); // a body length that does not match
    assert.equal(runs.take(bad), false);
    assert.equal(runs.take(Buffer.alloc(2)), false);
    assert.equal(dropped.length, 1);
    assert.match(dropped[0] ?? '', /^data-/);
    assert.equal(runs.size, 0);
  });

  it("forged DATA of new runs, one packet each, never evicts a run holding more (four forged packets took a live run's whole buffer)", () => {
    const { runs, clock, dropped } = setup(4);
    for (let s = 0; s < 100; s++) {
      runs.take(data(first, s, payload(s)));
    }
    // Right after a genuine packet, in the same millisecond: four DATA packets of made-up runs.
    for (let forged = 1; forged <= 4; forged++) {
      runs.take(data({ sessionId: 42, incarnation: 1000 + forged }, 100, payload(0)));
    }
    assert.equal(runs.get(42, 1)?.heldCount, 100, 'the live run keeps every packet it held');
    assert.ok(runs.get(42, 1)?.get(5) !== undefined, 'its packet 5 is still served');
    assert.deepEqual(dropped, ['run-evicted'], 'a forged run went instead');
    assert.equal(runs.size, 4);
    clock.advance(1);
    runs.take(data(first, 100, payload(100)));
    assert.equal(runs.get(42, 1)?.heldCount, 101);
  });

  it('one forged DATA packet of a new run does not become the run announced and measured; a run that keeps sending does', () => {
    const { runs } = setup(4);
    for (let s = 0; s < 100; s++) {
      runs.take(data(first, s, payload(s)));
    }
    runs.take(data({ sessionId: 42, incarnation: 999 }, 100, payload(0)));
    assert.equal(runs.current?.incarnation, 1, 'one packet of a run never heard moves nothing');
    // A source restarted under the same id sends on: its run becomes the current one.
    for (let s = 0; s < resyncPacketsMin; s++) {
      runs.take(data(restarted, s, payload(s)));
    }
    assert.equal(runs.current?.incarnation, 2);
  });
});
