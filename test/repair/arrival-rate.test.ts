import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ArrivalRate } from '../../src/repair/arrival-rate.js';

describe('repair server: the arrival rate a pace follows', () => {
  it('a run arriving at 1,000 a second is paced at that rate from its first 100 ms, keeps its peak after it slows, and has no peak before half a second', () => {
    let count = 0;
    const rate = new ArrivalRate(() => count, 0);
    const at = (ms: number) => {
      count = ms; // one datagram a millisecond
      return ms;
    };
    for (let ms = 0; ms <= 200; ms += 10) {
      rate.perSecond(at(ms));
    }
    assert.equal(rate.peakPerSecond(200), 0, 'no peak over less than half a second');
    assert.ok(Math.abs(rate.highestPerSecond(200) - 1000) <= 50, `${rate.highestPerSecond(200)}`);
    for (let ms = 210; ms <= 1000; ms += 10) {
      rate.perSecond(at(ms));
    }
    assert.ok(Math.abs(rate.peakPerSecond(1000) - 1000) <= 50, `${rate.peakPerSecond(1000)}`);
    // It stops: the rate now falls to nothing, the pace keeps the peak.
    for (let ms = 1100; ms <= 3000; ms += 100) {
      rate.perSecond(ms);
    }
    assert.equal(rate.perSecond(3000), 0);
    assert.ok(Math.abs(rate.highestPerSecond(3000) - 1000) <= 50, `${rate.highestPerSecond(3000)}`);
  });
});
