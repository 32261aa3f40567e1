import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nowMicroseconds, systemTime } from '../../src/net/clock.js';

describe('the wall clock', () => {
  it('is read afresh: it follows a step of the host clock in either direction (issue 9, item 6)', (t) => {
    let stepMs = 0;
    const realNow = Date.now.bind(Date);
    t.mock.method(Date, 'now', () => realNow() + stepMs);
    const near = (expectedMs: number) => {
      const actualMs = nowMicroseconds() / 1000;
      assert.ok(Math.abs(actualMs - expectedMs) <= 2, `${actualMs} is not ${expectedMs}`);
    };
    near(realNow());
    for (const step of [120_000, 0, -120_000, 0]) {
      stepMs = step;
      near(realNow() + step);
      near(realNow() + step);
    }
  });

  it('has microsecond resolution between the wall clock milliseconds', () => {
    const samples = new Set(Array.from({ length: 2_000 }, () => nowMicroseconds() % 1000));
    assert.ok(samples.size > 1, 'more than whole milliseconds');
  });

  it('comes with a monotonic clock for durations', () => {
    const first = systemTime.nowMs();
    assert.ok(systemTime.nowMs() >= first);
    assert.ok(Math.abs(systemTime.wallUs() / 1000 - Date.now()) <= 2);
  });
});
