/**
 * OldestFirst (src/oldest-first.ts): a Map's entries oldest first, checked against the Map's own
 * insertion order after every step of random work (sets, deletes, sets again, clears).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OldestFirst } from '../src/oldest-first.js';

/** A small seeded generator, so that a failure replays. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

describe('OldestFirst', () => {
  it('takes entries in insertion order; an entry set again after a delete goes to the end', () => {
    const map = new Map<number, string>([
      [1, 'a'],
      [2, 'b'],
      [3, 'c'],
    ]);
    const oldest = new OldestFirst(map);
    assert.deepEqual(oldest.peek(), [1, 'a']);
    assert.deepEqual(oldest.peek(), [1, 'a'], 'peek removes nothing');
    map.delete(1);
    map.set(1, 'a again');
    assert.deepEqual(oldest.shift(), [2, 'b']);
    map.set(4, 'd');
    assert.deepEqual(oldest.shift(), [3, 'c']);
    assert.deepEqual(oldest.shift(), [1, 'a again']);
    assert.deepEqual(oldest.shift(), [4, 'd']);
    assert.equal(oldest.shift(), undefined);
    assert.equal(map.size, 0);
    // Filled again after it was emptied, and after clear().
    map.set(9, 'z');
    assert.deepEqual(oldest.peek(), [9, 'z']);
    map.clear();
    assert.equal(oldest.peek(), undefined);
    map.set(7, 'y').set(8, 'x');
    assert.deepEqual(oldest.shift(), [7, 'y']);
    assert.deepEqual([...map.keys()], [8]);
  });

  it('the entry it rests on, changed under it (value replaced in place, or deleted), is not taken as it was', () => {
    const map = new Map<string, number>([
      ['p', 1],
      ['q', 2],
    ]);
    const oldest = new OldestFirst(map);
    assert.deepEqual(oldest.peek(), ['p', 1]);
    map.set('p', 10); // a set without delete keeps its place in the order, with the new value
    assert.deepEqual(map.keys().next().value, 'p');
    // Its value changed: the Map's own order is looked up again, and 'p' is still first.
    assert.deepEqual(oldest.peek(), ['p', 10]);
    map.delete('p');
    map.set('p', 11); // deleted and set again: now last
    assert.deepEqual(oldest.shift(), ['q', 2]);
    assert.deepEqual(oldest.shift(), ['p', 11]);
    assert.equal(oldest.peek(), undefined);
  });

  it('agrees with the Map after 20,000 random steps, whatever else deletes from it', () => {
    for (const seed of [1, 2, 3]) {
      const next = random(seed);
      const map = new Map<number, object>();
      const oldest = new OldestFirst(map);
      let key = 0;
      for (let step = 0; step < 20_000; step++) {
        const roll = next();
        if (roll < 0.5) {
          map.set(key++, {});
        } else if (roll < 0.7) {
          const front = map.size === 0 ? undefined : (map.keys().next().value as number);
          const taken = oldest.shift();
          assert.equal(taken?.[0], front, `seed ${seed} step ${step}: shift takes the oldest`);
          if (taken !== undefined) {
            assert.equal(map.has(taken[0]), false);
          }
        } else if (roll < 0.85 && map.size > 0) {
          // Someone else deletes any entry, sometimes the oldest.
          const keys = [...map.keys()];
          map.delete(keys[Math.floor(next() * keys.length)] as number);
        } else if (roll < 0.95 && map.size > 0) {
          // Deleted and set again: it moves to the end.
          const keys = [...map.keys()];
          const moved = keys[Math.floor(next() * keys.length)] as number;
          map.delete(moved);
          map.set(moved, {});
        } else if (roll < 0.99 && map.size > 0) {
          // A value replaced in place: the entry keeps its place.
          const keys = [...map.keys()];
          map.set(keys[Math.floor(next() * keys.length)] as number, {});
        } else if (roll < 0.995) {
          map.clear();
        }
        const expected = map.size === 0 ? undefined : (map.entries().next().value as [number, object]);
        const got = oldest.peek();
        assert.deepEqual(got?.[0], expected?.[0], `seed ${seed} step ${step}`);
        assert.equal(got?.[1], expected?.[1], `seed ${seed} step ${step}: the same value object`);
      }
    }
  });
});
