/** The console's live figures, derived from the roles' own counters (src/console/live.ts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { livePoint } from '../../src/console/live.js';

describe('live points', () => {
  it('a repair server: loss before repair counts the recovered and the given-up, after only the given-up', () => {
    const point = livePoint(
      'repair',
      { emitted: 100, recovered: 5, unrecoverable: 0 },
      { emitted: 290, recovered: 14, unrecoverable: 10 },
      2000,
      1000,
    );
    assert.equal(point.lossBeforePercent, 9.5);
    assert.equal(point.lossAfterPercent, 5);
  });

  it('an agent: datagrams per second and the gaps it saw, its own or summed over a watching agent’s sessions', () => {
    const single = livePoint(
      'agent',
      { delivered: 100, gapsSeen: 0 },
      { delivered: 298, gapsSeen: 2 },
      0,
      2000,
    );
    assert.equal(single.deliveredPerSecond, 99);
    assert.equal(single.lossAfterPercent, 1);
    const watching = (a: number, b: number, gaps: number) => ({
      sessions: [
        { s1: '239.1.1.1:5000', delivery: { delivered: a, gapsSeen: gaps } },
        { s1: '239.1.1.2:5000', delivery: { delivered: b, gapsSeen: 0 } },
        { s1: '239.1.1.3:5000', delivery: undefined },
      ],
    });
    const summed = livePoint('agent', watching(10, 10, 0), watching(60, 110, 3), 0, 1000);
    assert.equal(summed.deliveredPerSecond, 150);
    assert.equal(summed.lossAfterPercent, 1.961);
    // A delivery that restarted (its counters from zero) counts nothing negative.
    assert.equal(livePoint('agent', watching(500, 0, 9), watching(20, 0, 0), 0, 1000).deliveredPerSecond, 0);
  });
});
