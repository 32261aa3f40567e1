/**
 * The in-order window and the per-run pending store (docs/protocol.md, "Windows: what one packet
 * may move"): bounds in packets and bytes, and what one packet can and cannot move.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sequenceAdd, sequenceDistance } from '../../src/protocol/serial.js';
import { PendingRuns, SessionWindow, type WindowLimits } from '../../src/protocol/session-window.js';
import { createRandom } from '../helpers/random.js';

const limits: WindowLimits = {
  packetsMax: 64,
  bytesMax: 10_000,
  progressAheadPacketsMax: 32,
  resyncPacketsMin: 4,
};
const item = (bytes = 10) => Buffer.alloc(bytes);

describe('SessionWindow', () => {
  it('delivers in order across the wrap and passes gaps only when asked', () => {
    const window = new SessionWindow(0xffff_fffe, limits);
    assert.equal(window.offer(0, item()), 'held');
    assert.equal(window.take(), undefined);
    assert.equal(window.offer(0xffff_fffe, item()), 'held');
    assert.ok(window.take());
    assert.equal(window.base, 0xffff_ffff);
    window.skip();
    assert.ok(window.take());
    assert.equal(window.base, 1);
    assert.equal(window.offer(0, item()), 'old');
  });

  it('a packet far ahead — 2^31 away or just past the window — moves nothing; a run of them jumps, counting what it passed in one number', () => {
    const window = new SessionWindow(100, limits);
    window.offer(100, item());
    window.take();
    assert.equal(window.offer(100 + 2 ** 31 - 1, item()), 'beyond');
    assert.equal(window.offer(101, item()), 'held'); // genuine data resets the run
    assert.equal(window.base, 101);
    for (let i = 0; i < 3; i++) {
      assert.equal(window.offer(1_000_000 + i, item()), 'beyond');
    }
    assert.equal(window.offer(1_000_003, item()), 'resync');
    const delivered: number[] = [];
    const gaps: number[] = [];
    const jumped = window.resync(
      (_, sequence) => delivered.push(sequence),
      (sequence) => gaps.push(sequence),
    );
    assert.deepEqual(delivered, [101]);
    assert.deepEqual(gaps, []);
    assert.equal(jumped, 1_000_000 - 102);
    assert.equal(window.base, 1_000_000);
    assert.equal(window.heldCount, 4);
  });

  it('bounds bytes: 65 KB datagrams hit the byte bound, not memory', () => {
    const window = new SessionWindow(0, limits);
    let held = 0;
    for (let s = 1; s < 64; s++) {
      if (window.offer(s, item(3_000)) === 'held') {
        held++;
      }
    }
    assert.equal(held, 3);
    assert.ok(window.heldBytes <= limits.bytesMax);
    assert.equal(window.offer(60, item(3_000)), 'over-bytes');
  });

  it('a HEARTBEAT claim moves the known end at most progressAheadPacketsMax beyond the highest DATA', () => {
    const window = new SessionWindow(0, limits);
    window.offer(0, item());
    assert.equal(window.claim(1 + 65_000), 'too-far');
    assert.equal(window.end, 1);
    assert.equal(window.claim(1 + 32), 'extended');
    assert.equal(window.end, 33);
    assert.equal(window.claim(10), 'unchanged');
    // An END takes back what only the claim showed; DATA already beyond an END makes it unbelievable.
    assert.equal(window.endAt(5), true);
    assert.equal(window.end, 5);
    window.offer(4, item());
    assert.equal(window.endAt(3), false);
  });

  it('a claim half the sequence space from base is too far, even before any DATA (the known end never passes base + packetsMax)', () => {
    const window = new SessionWindow(1000, limits);
    assert.equal(window.claim(1005), 'extended');
    // 2^31 + 1 ahead of base reads as behind base, and ahead of the known end: not a step forward.
    assert.equal(window.claim(sequenceAdd(1000, 2 ** 31 + 1)), 'too-far');
    assert.equal(window.end, 1005);
    assert.equal(window.endAt(sequenceAdd(1000, 2 ** 31 + 1)), false);
    window.skip();
    window.skip();
    assert.equal(window.outstanding, 3);
    const gaps: number[] = [];
    window.drainToEnd(
      () => undefined,
      (sequence) => gaps.push(sequence),
    );
    assert.deepEqual(gaps, [1002, 1003, 1004]);
  });

  it('holds no more than its bounds whatever the input (seeded property test)', () => {
    for (let seed = 1; seed <= 30; seed++) {
      const random = createRandom(seed);
      const start = random.int(0xffff_ffff);
      const window = new SessionWindow(start, limits);
      for (let step = 0; step < 3_000; step++) {
        const choice = random.int(10);
        const near = sequenceAdd(window.base, random.int(80) - 8);
        const far = random.int(0xffff_ffff);
        const sequence = choice === 0 ? far : near;
        if (choice < 7) {
          const result = window.offer(sequence, item(1 + random.int(2_000)));
          if (result === 'resync') {
            window.resync(
              () => undefined,
              () => undefined,
            );
          }
        } else if (choice === 7) {
          window.claim(sequence);
        } else if (window.take() === undefined && window.outstanding > 0) {
          window.skip();
        }
        assert.ok(window.heldCount <= limits.packetsMax, `seed ${seed}`);
        assert.ok(window.heldBytes <= limits.bytesMax, `seed ${seed}`);
        const high = window.highestData;
        assert.ok(
          sequenceDistance(window.base, window.end) <= limits.packetsMax + limits.progressAheadPacketsMax,
          `seed ${seed}`,
        );
        assert.ok(high === undefined || sequenceDistance(high, window.end) >= 0 || window.heldCount === 0);
      }
    }
  });
});

describe('PendingRuns', () => {
  it('keeps runs apart and takes only the one a DESCRIPTOR names', () => {
    const pending = new PendingRuns({ packetsMax: 100, bytesMax: 10_000, runsMax: 3 });
    assert.ok(pending.hold(222, 1, 0, Buffer.from('b0')));
    assert.ok(pending.hold(111, 1, 0, Buffer.from('a0')));
    assert.ok(pending.hold(111, 2, 0, Buffer.from('restart')));
    assert.equal(pending.hold(333, 1, 0, Buffer.from('fourth run')), false);
    const run = pending.take(111, 1);
    assert.deepEqual([...(run?.data ?? [])], [[0, Buffer.from('a0')]]);
    assert.equal(pending.packetCount, 0);
  });

  it('is bounded in bytes (65 KB datagrams) and in packets', () => {
    const pending = new PendingRuns({ packetsMax: 1_000, bytesMax: 200_000, runsMax: 8 });
    let held = 0;
    for (let s = 0; s < 100; s++) {
      if (pending.hold(1, 1, s, Buffer.alloc(65_000))) {
        held++;
      }
    }
    assert.equal(held, 3);
    assert.ok(pending.byteCount <= 200_000);
  });

  it('hands over the run heard of last whose DESCRIPTOR is known, with its END', () => {
    const pending = new PendingRuns({ packetsMax: 100, bytesMax: 10_000, runsMax: 4 });
    pending.note(5, 5, 'descriptor', Buffer.from('d5'));
    pending.hold(6, 6, 1, Buffer.from('x'));
    pending.note(7, 7, 'descriptor', Buffer.from('d7'));
    pending.note(7, 7, 'end', Buffer.from('e7'));
    const next = pending.takeLatestDescribed();
    assert.equal(next?.sessionId, 7);
    assert.deepEqual(next?.end, Buffer.from('e7'));
    assert.equal(pending.takeLatestDescribed(), undefined);
  });
});
