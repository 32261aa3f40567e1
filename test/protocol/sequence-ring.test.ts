import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SequenceRing } from '../../src/protocol/sequence-ring.js';
import { sequenceAdd, sequenceDistance } from '../../src/protocol/serial.js';

describe('SequenceRing', () => {
  it('holds, finds and lets go of values by sequence', () => {
    const ring = new SequenceRing<string>(64, 4);
    ring.set(10, 'a');
    ring.set(11, 'b');
    assert.equal(ring.get(10), 'a');
    assert.equal(ring.get(11), 'b');
    assert.equal(ring.has(12), false);
    assert.equal(ring.size, 2);
    ring.set(10, 'c'); // again at the same sequence: replaced, not counted twice
    assert.equal(ring.get(10), 'c');
    assert.equal(ring.size, 2);
    assert.equal(ring.delete(10), true);
    assert.equal(ring.delete(10), false);
    assert.equal(ring.get(10), undefined);
    assert.equal(ring.size, 1);
  });

  it('never answers for a sequence that only shares a slot with a held one', () => {
    const ring = new SequenceRing<string>(64, 8);
    ring.set(3, 'held');
    for (const other of [3 + 8, 3 + 64, 3 + 2 ** 20, (3 + 2 ** 31) >>> 0, 3 - 8]) {
      assert.equal(ring.get(other), undefined, `sequence ${other}`);
      assert.equal(ring.delete(other), false, `sequence ${other}`);
    }
    assert.equal(ring.get(3), 'held');
  });

  it('grows when held sequences spread, keeping every value, up to the span', () => {
    const ring = new SequenceRing<number>(100, 4);
    assert.equal(ring.slots, 4);
    for (let sequence = 0; sequence < 30; sequence += 3) {
      ring.set(sequence, sequence * 2);
    }
    assert.ok(ring.slots <= 32, 'as far as the held sequences spread, not the span');
    for (let sequence = 30; sequence < 100; sequence += 3) {
      ring.set(sequence, sequence * 2);
    }
    ring.set(1, 2);
    ring.set(65, 130); // 1 and 65 share a slot of 64: one more doubling
    assert.equal(ring.slots, 128); // the first power of two at or above 100
    for (let sequence = 0; sequence < 100; sequence++) {
      const expected = sequence % 3 === 0 || sequence === 1 || sequence === 65 ? sequence * 2 : undefined;
      assert.equal(ring.get(sequence), expected, `sequence ${sequence}`);
    }
    assert.equal(ring.size, 36);
  });

  it('stays small while the held sequences stay close', () => {
    const ring = new SequenceRing<number>(65_536, 64);
    for (let sequence = 0; sequence < 100_000; sequence++) {
      ring.set(sequence, sequence);
      if (sequence >= 20) {
        assert.equal(ring.delete(sequence - 20), true);
      }
    }
    assert.equal(ring.slots, 64);
    assert.equal(ring.size, 20);
  });

  it('refuses, with a RangeError, sequences spread wider than its span', () => {
    const ring = new SequenceRing<number>(16, 4);
    ring.set(0, 0);
    assert.throws(() => ring.set(16, 16), RangeError);
    assert.equal(ring.get(0), 0, 'what it held is still there');
    assert.equal(ring.get(16), undefined);
    assert.equal(ring.size, 1);
  });

  it('takes sequences across the 32-bit wrap', () => {
    const ring = new SequenceRing<string>(32, 4);
    const base = 2 ** 32 - 5;
    for (let step = 0; step < 10; step++) {
      ring.set(sequenceAdd(base, step), `v${step}`);
    }
    for (let step = 0; step < 10; step++) {
      assert.equal(ring.get(sequenceAdd(base, step)), `v${step}`);
    }
    assert.equal(ring.get(sequenceAdd(base, 10)), undefined);
    assert.equal(ring.get(sequenceAdd(base, 10 + 16)), undefined);
    assert.equal(ring.size, 10);
  });

  it('agrees with a Map over a moving window (random offers, takes and gaps)', () => {
    let seed = 12_345;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) >>> 0;
      return seed / 2 ** 32;
    };
    const span = 200;
    for (const start of [0, 2 ** 32 - 150, 2 ** 31]) {
      const ring = new SequenceRing<number>(span, 2);
      const model = new Map<number, number>();
      let base = start;
      for (let step = 0; step < 20_000; step++) {
        const choice = random();
        if (choice < 0.55) {
          const sequence = sequenceAdd(base, Math.floor(random() * span));
          ring.set(sequence, step);
          model.set(sequence, step);
        } else if (choice < 0.9) {
          // Take at base, or pass it as a gap: the window moves on.
          assert.equal(ring.get(base), model.get(base));
          assert.equal(ring.delete(base), model.delete(base));
          base = sequenceAdd(base, 1);
        } else {
          const probe = sequenceAdd(base, Math.floor(random() * 3 * span) - span);
          assert.equal(ring.get(probe), model.get(probe), `probe ${probe} at base ${base}`);
        }
        assert.equal(ring.size, model.size);
      }
      for (const [sequence, value] of model) {
        assert.ok(sequenceDistance(base, sequence) >= 0);
        assert.equal(ring.get(sequence), value);
      }
    }
  });
});
