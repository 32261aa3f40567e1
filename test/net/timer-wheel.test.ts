import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TimerWheel } from '../../src/net/timer-wheel.js';

describe('timer wheel', () => {
  it('fires each timer once, not before its deadline, in deadline order across slots', () => {
    let now = 1000;
    const wheel = new TimerWheel({ tickMs: 5, slotCount: 8, clock: () => now, autoStart: false });
    const fired: string[] = [];
    wheel.schedule(12, () => fired.push('a'));
    wheel.schedule(3, () => fired.push('b'));
    wheel.schedule(100, () => fired.push('c')); // beyond one turn of the wheel
    now += 4;
    wheel.advance();
    assert.deepEqual(fired, ['b']);
    now += 10;
    wheel.advance();
    assert.deepEqual(fired, ['b', 'a']);
    now += 50;
    wheel.advance();
    assert.deepEqual(fired, ['b', 'a']);
    now += 40;
    wheel.advance();
    assert.deepEqual(fired, ['b', 'a', 'c']);
    assert.equal(wheel.pending, 0);
  });

  it('does not fire a cancelled timer and forgets everything on close', () => {
    let now = 0;
    const wheel = new TimerWheel({ tickMs: 1, slotCount: 4, clock: () => now, autoStart: false });
    let count = 0;
    const handle = wheel.schedule(2, () => count++);
    wheel.schedule(2, () => count++);
    handle.cancel();
    handle.cancel();
    assert.equal(wheel.pending, 1);
    now = 3;
    wheel.advance();
    assert.equal(count, 1);
    wheel.schedule(1, () => count++);
    wheel.close();
    wheel.close();
    assert.equal(wheel.pending, 0);
    assert.throws(() => wheel.schedule(1, () => count++));
  });

  it('runs on its own interval when started', async () => {
    const wheel = new TimerWheel({ tickMs: 2 });
    const fired = await new Promise<boolean>((resolve) => {
      wheel.schedule(5, () => resolve(true));
      setTimeout(() => resolve(false), 500);
    });
    wheel.close();
    assert.ok(fired);
  });
});
