import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { electionReportForgetPeriods, electionReportsMax } from '../../src/limits.js';
import { ListenState } from '../../src/protocol/control.js';
import { runKey } from '../../src/protocol/session-window.js';
import { compareMembers, Election } from '../../src/retransmit/election.js';
import { ManualClock } from '../helpers/manual-clock.js';

const settings = { lossMax: 0.05, bestCount: 1, periodMs: 1_000 };
const listening = ListenState.listening;
const runOne = runKey(1, 0xaaaa);
const runTwo = runKey(2, 0xbbbb);

describe('election', () => {
  it('a server that missed more loses to one that missed less, at the same loss ppm', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    election.report(9, runOne, { lossPpm: 0, missing: 0, state: listening });
    assert.equal(election.decide(runOne, { lossPpm: 0, missing: 3, state: listening }, settings), 'withdraw');
    const other = new Election({ ownId: 9, clock, periodMs: 1_000 });
    other.report(5, runOne, { lossPpm: 0, missing: 3, state: listening });
    assert.equal(other.decide(runOne, { lossPpm: 0, missing: 0, state: listening }, settings), 'stay');
  });

  it('withdraws above the loss bound only while another listens, and comes back when it falls silent', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    const lossy = { lossPpm: 200_000, missing: 200, state: listening };
    assert.equal(
      election.decide(runOne, lossy, { ...settings, bestCount: 2 }),
      'stay',
      'alone, it keeps listening',
    );
    election.report(9, runOne, { lossPpm: 0, missing: 0, state: listening });
    assert.equal(election.decide(runOne, lossy, { ...settings, bestCount: 2 }), 'withdraw');
    const withdrawn = { ...lossy, state: ListenState.withdrawn };
    assert.equal(election.decide(runOne, withdrawn, settings), 'stay', 'the other listens');
    clock.advance(3_001);
    assert.equal(
      election.decide(runOne, withdrawn, settings),
      'rejoin',
      'the other fell silent for three periods',
    );
  });

  it('reports of another session do not count', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    election.report(9, runTwo, { lossPpm: 0, missing: 0, state: listening });
    assert.equal(election.members(runOne, { lossPpm: 0, missing: 0, state: listening }).length, 1);
    assert.equal(election.members(runTwo, { lossPpm: 0, missing: 0, state: listening }).length, 2);
  });

  it('reports of an earlier run of the same session id do not count for the new run', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    const restarted = runKey(1, 0xcccc);
    election.report(9, runOne, { lossPpm: 0, missing: 0, state: listening });
    const own = { lossPpm: 0, missing: 3, state: listening };
    assert.equal(election.decide(runOne, own, settings), 'withdraw', 'the peer did better on that run');
    assert.equal(election.decide(restarted, own, settings), 'stay', 'the peer said nothing of this run');
    assert.deepEqual(election.peers(restarted), []);
  });

  it('ranks by loss, then missing, then id', () => {
    const members = [
      { id: 3, lossPpm: 10, missing: 1, state: listening },
      { id: 2, lossPpm: 10, missing: 0, state: listening },
      { id: 1, lossPpm: 20, missing: 0, state: listening },
      { id: 4, lossPpm: 10, missing: 0, state: listening },
    ].sort(compareMembers);
    assert.deepEqual(
      members.map((m) => m.id),
      [2, 4, 3, 1],
    );
  });

  it('forgets reports of runs no longer heard, and keeps at most electionReportsMax (each source restart added one for good)', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    // A day of a source restarting every minute, reported by three peers each period.
    for (let restart = 0; restart < 1_440; restart++) {
      const run = runKey(1, restart + 1);
      for (let period = 0; period < 60; period += 10) {
        for (const peer of [7, 8, 9]) {
          election.report(peer, run, { lossPpm: 0, missing: 0, state: listening });
        }
        clock.advance(10_000);
      }
    }
    const fresh = Math.ceil(electionReportForgetPeriods / 60) + 1;
    assert.ok(election.size <= 3 * (fresh + 1), `${election.size} reports kept`);
    // The current run's reports are all still there.
    assert.equal(election.peers(runKey(1, 1_440)).length, 3);
    // However many runs a burst of reports names, no more than the bound is kept.
    for (let i = 0; i < electionReportsMax + 10; i++) {
      election.report(7, runKey(2, i + 1), { lossPpm: 0, missing: 0, state: listening });
    }
    assert.equal(election.size, electionReportsMax);
  });
});
