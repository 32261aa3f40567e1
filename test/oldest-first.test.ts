/**
 * OldestFirst (src/oldest-first.ts): a Map's entries oldest first, checked against the Map's own
 * insertion order after every step of random work (sets, deletes, sets again, clears), and letting
 * go of what the Map let go.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { OldestFirst } from '../src/oldest-first.js';

/** A full garbage collection (test only: the flag is set before the first call). */
setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/** A small seeded generator, so that a failure replays. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

/** A Map and its OldestFirst, set the way the roles set them (a new key, or delete then set). */
function queue<K, V>() {
  const map = new Map<K, V>();
  const oldest = new OldestFirst(map);
  const append = (key: K, value: V) => {
    map.delete(key);
    map.set(key, value);
    oldest.added(key, value);
  };
  return { map, oldest, append };
}

describe('OldestFirst', () => {
  it('takes entries in insertion order; an entry set again after a delete goes to the end', () => {
    const { map, oldest, append } = queue<number, { name: string }>();
    const a = { name: 'a' };
    append(1, a);
    append(2, { name: 'b' });
    append(3, { name: 'c' });
    assert.equal(oldest.peek()?.[1], a);
    assert.equal(oldest.peek()?.[1], a, 'peek removes nothing');
    const again = { name: 'a again' };
    append(1, again);
    assert.deepEqual(oldest.shift(), [2, { name: 'b' }]);
    append(4, { name: 'd' });
    assert.deepEqual(oldest.shift(), [3, { name: 'c' }]);
    assert.equal(oldest.shift()?.[1], again);
    assert.deepEqual(oldest.shift(), [4, { name: 'd' }]);
    assert.equal(oldest.shift(), undefined);
    assert.equal(map.size, 0);
    // Filled again after it was emptied, and after clear().
    append(9, { name: 'z' });
    assert.deepEqual(oldest.peek(), [9, { name: 'z' }]);
    map.clear();
    assert.equal(oldest.peek(), undefined);
    append(7, { name: 'y' });
    append(8, { name: 'x' });
    assert.deepEqual(oldest.shift(), [7, { name: 'y' }]);
    assert.deepEqual([...map.keys()], [8]);
  });

  it('lists the entries a Map held when it was made', () => {
    const map = new Map([
      ['p', { n: 1 }],
      ['q', { n: 2 }],
    ]);
    const oldest = new OldestFirst(map);
    assert.deepEqual(oldest.shift(), ['p', { n: 1 }]);
    assert.deepEqual(oldest.shift(), ['q', { n: 2 }]);
    assert.equal(oldest.shift(), undefined);
  });

  it('agrees with the Map after 20,000 random steps, whatever else deletes from it', () => {
    for (const seed of [1, 2, 3]) {
      const next = random(seed);
      const { map, oldest, append } = queue<number, { step: number }>();
      let key = 0;
      for (let step = 0; step < 20_000; step++) {
        const roll = next();
        if (roll < 0.5) {
          append(key++, { step });
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
          append(keys[Math.floor(next() * keys.length)] as number, { step });
        } else if (roll < 0.99 && map.size > 0) {
          // The value changed in place (the object, not the entry): the entry keeps its place.
          const keys = [...map.keys()];
          (map.get(keys[Math.floor(next() * keys.length)] as number) as { step: number }).step = step;
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

  it('keeps no value the Map let go: a queue once full, then churning below its bound', async () => {
    const { map, oldest, append } = queue<number, Buffer>();
    for (let key = 0; key < 1_000; key++) {
      append(key, Buffer.alloc(16));
    }
    oldest.shift(); // full once
    map.clear();
    const released: Array<WeakRef<Buffer>> = [];
    for (let key = 0; key < 100_000; key++) {
      const value = Buffer.alloc(16);
      if (key < 1_000) {
        released.push(new WeakRef(value));
      }
      append(key, value);
      if (map.size > 100) {
        map.delete(key - 100); // let go by the role itself, not through OldestFirst
      }
    }
    assert.equal(map.size, 100);
    await new Promise<void>((resolve) => setImmediate(resolve)); // a WeakRef holds its target for the turn
    collectGarbage();
    const kept = released.filter((ref) => ref.deref() !== undefined).length;
    assert.equal(kept, 0, `${kept} of 1000 values deleted long ago are still kept`);
    assert.equal(oldest.peek()?.[0], 100_000 - 100);
  });
});
