/**
 * The deterministic simulator in CI: a fixed list of seeds through the whole repair path with
 * the real roles, each checked against every invariant after every event; and replay — a seed
 * gives the same event trace twice. `npm run sim -- --seeds N` runs as many more as wanted.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { realKit } from './real-roles.js';
import { describeFailure, runScenario } from './scenario.js';

/** Sized to finish in a minute or two on a loaded 2-core machine. */
const ciSeeds = Array.from({ length: 40 }, (_, i) => 1000 + i);

describe('deterministic simulator', () => {
  it('replays a seed exactly (same event trace twice)', async () => {
    const first = await runScenario(ciSeeds[0] as number, realKit);
    const second = await runScenario(ciSeeds[0] as number, realKit);
    assert.equal(first.traceDigest, second.traceDigest);
    assert.equal(first.events, second.events);
  });

  it(`holds every invariant on ${ciSeeds.length} seeds`, async () => {
    for (const seed of ciSeeds) {
      const result = await runScenario(seed, realKit);
      assert.equal(result.violation, undefined, describeFailure(result, realKit));
    }
  });
});
