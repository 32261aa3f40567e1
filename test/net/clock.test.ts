import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nowMicroseconds, systemTime } from '../../src/net/clock.js';

describe('the wall clock', () => {
  it('is read afresh: it follows a step of the host clock in either direction (issue 9, item 6)', (t) => {
    let stepMs = 0;
    const realNow = Date.now.bind(Date);
    t.mock.method(Date, 'now', () => realNow() + stepMs);
    // Between two reads of the (stepped) host clock, allowing for its whole milliseconds.
    const near = () => {
      const beforeMs = Date.now();
      const actualMs = nowMicroseconds() / 1000;
      const afterMs = Date.now();
      assert.ok(
        actualMs >= beforeMs - 1 && actualMs <= afterMs + 1,
        `${actualMs} is not in ${beforeMs}-${afterMs}`,
      );
    };
    near();
    for (const step of [120_000, 0, -120_000, 0]) {
      stepMs = step;
      near();
      near();
    }
  });

  it('has microsecond resolution between the wall clock milliseconds', () => {
    const samples = new Set(Array.from({ length: 2_000 }, () => nowMicroseconds() % 1000));
    assert.ok(samples.size > 1, 'more than whole milliseconds');
  });

  it('comes with a monotonic clock for durations', () => {
    const first = systemTime.nowMs();
    assert.ok(systemTime.nowMs() >= first);
    const beforeMs = Date.now();
    const wallMs = systemTime.wallUs() / 1000;
    assert.ok(wallMs >= beforeMs - 1 && wallMs <= Date.now() + 1);
  });
});
