import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { renewPeriodMs } from '../../src/cli/stb.js';

// With the server's shortest lease (serve --order-lease 1) the box renewed every second, as long as
// the lease itself: each renewal came as the lease ran out, and the order lapsed between renewals.
describe('stb: how often a box renews', () => {
  it('renews within every lease, a third of it by default, even a lease of one second', () => {
    for (const leaseMs of [1_000, 2_000, 3_000, 60_000]) {
      const everyMs = renewPeriodMs(leaseMs, undefined);
      assert.ok(everyMs * 3 <= leaseMs, `lease ${leaseMs} ms renewed every ${everyMs} ms`);
      assert.ok(everyMs > 0);
    }
    assert.equal(renewPeriodMs(60_000, undefined), 20_000);
  });

  it('renews as often as --renew-every says', () => {
    assert.equal(renewPeriodMs(60_000, 5_000), 5_000);
  });
});
