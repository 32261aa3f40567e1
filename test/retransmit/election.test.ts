import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ListenState } from '../../src/protocol/control.js';
import { compareMembers, Election } from '../../src/retransmit/election.js';
import { ManualClock } from '../helpers/manual-clock.js';

const settings = { lossMax: 0.05, bestCount: 1, periodMs: 1_000 };
const listening = ListenState.listening;

describe('election', () => {
  it('a server that missed more loses to one that missed less, at the same loss ppm', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    election.report(9, 1, { lossPpm: 0, missing: 0, state: listening });
    assert.equal(election.decide(1, { lossPpm: 0, missing: 3, state: listening }, settings), 'withdraw');
    const other = new Election({ ownId: 9, clock, periodMs: 1_000 });
    other.report(5, 1, { lossPpm: 0, missing: 3, state: listening });
    assert.equal(other.decide(1, { lossPpm: 0, missing: 0, state: listening }, settings), 'stay');
  });

  it('withdraws above the loss bound only while another listens, and comes back when it falls silent', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    const lossy = { lossPpm: 200_000, missing: 200, state: listening };
    assert.equal(
      election.decide(1, lossy, { ...settings, bestCount: 2 }),
      'stay',
      'alone, it keeps listening',
    );
    election.report(9, 1, { lossPpm: 0, missing: 0, state: listening });
    assert.equal(election.decide(1, lossy, { ...settings, bestCount: 2 }), 'withdraw');
    const withdrawn = { ...lossy, state: ListenState.withdrawn };
    assert.equal(election.decide(1, withdrawn, settings), 'stay', 'the other listens');
    clock.advance(3_001);
    assert.equal(
      election.decide(1, withdrawn, settings),
      'rejoin',
      'the other fell silent for three periods',
    );
  });

  it('reports of another session do not count', () => {
    const clock = new ManualClock();
    const election = new Election({ ownId: 5, clock, periodMs: 1_000 });
    election.report(9, 2, { lossPpm: 0, missing: 0, state: listening });
    assert.equal(election.members(1, { lossPpm: 0, missing: 0, state: listening }).length, 1);
    assert.equal(election.members(2, { lossPpm: 0, missing: 0, state: listening }).length, 2);
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
});
