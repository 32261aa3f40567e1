import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { timeOrderedId } from '../../src/store/ids.js';

describe('time-ordered row ids', () => {
  it('are RFC 9562 version 7 UUIDs carrying the time in milliseconds', () => {
    const now = Date.UTC(2026, 11, 1, 5, 0, 0, 123);
    const id = timeOrderedId(now);
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(Number.parseInt(id.replaceAll('-', '').slice(0, 12), 16), now);
  });

  it('sort by time and do not repeat', () => {
    const ids = Array.from({ length: 5000 }, (_, i) => timeOrderedId(1_700_000_000_000 + Math.floor(i / 10)));
    assert.equal(new Set(ids).size, ids.length);
    for (let i = 10; i < ids.length; i += 10) {
      assert.ok((ids[i - 1] as string) < (ids[i] as string), `${ids[i - 1]} sorts before ${ids[i]}`);
    }
  });
});
