import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { DueQueue } from '../../src/repair/due-queue.js';
import { createRandom } from '../helpers/random.js';

interface Item {
  readonly sequence: number;
}

/** Every item the walk visits, in order, taking them all. */
function drain(queue: DueQueue<Item>): number[] {
  const seen: number[] = [];
  queue.walk((item) => {
    seen.push(item.sequence);
    return 'take';
  });
  return seen;
}

describe('due queue', () => {
  it('walks due gaps oldest first across the wrap of the sequence space, whatever order they came in', () => {
    const queue = new DueQueue<Item>((item) => item.sequence);
    const start = 0xffff_fff0;
    const items = Array.from({ length: 40 }, (_, i) => ({ sequence: sequenceAdd(start, i) }));
    const random = createRandom(7);
    const shuffled = [...items].sort(() => random.int(3) - 1);
    for (const item of shuffled) {
      queue.add(item);
    }
    assert.equal(queue.size, 40);
    assert.deepEqual(
      drain(queue),
      items.map((item) => item.sequence),
    );
    assert.equal(queue.size, 0);
  });

  it('walks an earlier round first, oldest first within a round; a kept item waits in the round it is in now', () => {
    const rounds = new Map<number, number>();
    const queue = new DueQueue<Item>(
      (item) => item.sequence,
      (item) => rounds.get(item.sequence) ?? 0,
    );
    const start = 0xffff_fffe;
    const items = Array.from({ length: 6 }, (_, i) => ({ sequence: sequenceAdd(start, i) }));
    // The two oldest were asked round after round; the newest, past the wrap, not yet.
    rounds.set(sequenceAdd(start, 0), 3);
    rounds.set(sequenceAdd(start, 1), 1);
    for (const item of items) {
      queue.add(item);
    }
    const visited: number[] = [];
    queue.walk((item) => {
      visited.push(item.sequence);
      if (item.sequence === sequenceAdd(start, 2)) {
        rounds.set(item.sequence, 2); // it began its next rounds while visited, and stays due
        return 'keep';
      }
      return item.sequence === sequenceAdd(start, 4) ? 'stop' : 'take';
    });
    assert.deepEqual(
      visited,
      [2, 3, 4].map((i) => sequenceAdd(start, i)),
    );
    assert.deepEqual(
      drain(queue),
      [4, 5, 1, 2, 0].map((i) => sequenceAdd(start, i)),
    );
  });

  it('keeps what the walk keeps, stops where it stops, and forgets what was deleted', () => {
    const queue = new DueQueue<Item>((item) => item.sequence);
    const items = Array.from({ length: 10 }, (_, i) => ({ sequence: 100 + i }));
    for (const item of items) {
      queue.add(item);
    }
    queue.delete(items[3] as Item);
    queue.add(items[0] as Item); // already due: no second entry
    const visited: number[] = [];
    queue.walk((item) => {
      visited.push(item.sequence);
      if (item.sequence === 106) {
        return 'stop';
      }
      return item.sequence % 2 === 0 ? 'take' : 'keep';
    });
    assert.deepEqual(visited, [100, 101, 102, 104, 105, 106]);
    assert.deepEqual(drain(queue), [101, 105, 106, 107, 108, 109]);
  });

  it('an item deleted and added again is visited once, in its place', () => {
    const queue = new DueQueue<Item>((item) => item.sequence);
    const items = Array.from({ length: 5 }, (_, i) => ({ sequence: i }));
    for (const item of items) {
      queue.add(item);
    }
    for (let round = 0; round < 3; round++) {
      queue.delete(items[2] as Item);
      queue.add(items[2] as Item);
    }
    assert.deepEqual(drain(queue), [0, 1, 2, 3, 4]);
  });

  it('stays within bounds under many deletions: the heap is rebuilt, the order holds', () => {
    const queue = new DueQueue<Item>((item) => item.sequence);
    const random = createRandom(11);
    const live = new Map<number, Item>();
    for (let i = 0; i < 20_000; i++) {
      const sequence = random.int(5_000);
      const known = live.get(sequence);
      if (known !== undefined && random.int(10) < 6) {
        queue.delete(known);
        live.delete(sequence);
      } else {
        const item = known ?? { sequence };
        live.set(sequence, item);
        queue.add(item);
      }
    }
    assert.equal(queue.size, live.size);
    assert.deepEqual(
      drain(queue),
      [...live.keys()].sort((a, b) => a - b),
    );
  });
});
