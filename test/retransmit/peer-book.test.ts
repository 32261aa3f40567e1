import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PeerBook } from '../../src/retransmit/peer-book.js';
import { ManualClock } from '../helpers/manual-clock.js';

const at = (port: number) => ({ address: '10.0.0.1', port });

function setup(learnedMax = 2) {
  const clock = new ManualClock();
  const book = new PeerBook({
    clock,
    configured: [at(1)],
    learnedMax,
    freshMs: 3_000,
    own: () => [at(9)],
  });
  return { clock, book };
}

describe('peer book', () => {
  it('configured peers first, then announced ones most recent first, never the server itself', () => {
    const { clock, book } = setup(4);
    book.learn(at(2));
    clock.advance(10);
    book.learn(at(3));
    book.learn(at(9)); // our own endpoint, announced back to us
    book.learn(at(1)); // a configured peer that also announces: listed once
    assert.deepEqual(
      book.peers().map((peer) => peer.port),
      [1, 3, 2],
    );
  });

  it('a QUALITY refreshes a learned peer but never adds one', () => {
    const { clock, book } = setup();
    book.refresh(at(5)); // from an address no ANNOUNCE named: nothing learned
    assert.deepEqual(
      book.peers().map((peer) => peer.port),
      [1],
    );
    book.learn(at(2));
    clock.advance(2_500);
    book.refresh(at(2));
    clock.advance(2_500);
    assert.deepEqual(
      book.peers().map((peer) => peer.port),
      [1, 2],
      'kept fresh by its QUALITY',
    );
  });

  it('a peer silent for three periods is not asked; at most learnedMax are kept, the oldest forgotten', () => {
    const { clock, book } = setup(2);
    book.learn(at(2));
    book.learn(at(3));
    book.learn(at(4));
    assert.deepEqual(
      book.peers().map((peer) => peer.port),
      [1, 4, 3],
    );
    clock.advance(3_001);
    assert.deepEqual(
      book.peers().map((peer) => peer.port),
      [1],
    );
  });
});
