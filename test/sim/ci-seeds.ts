/**
 * The seeds CI runs (test/sim/sim.test.ts) and how a failure is matched to a fault recorded in
 * test/sim/found.md. Shared by the test and the processes it runs the seeds in (shard.ts).
 */
import type { ScenarioResult } from './scenario.js';

/**
 * Seeds 1-20, and the seeds that found a fault outside them (test/sim/found.md), so each kind stays
 * fixed: about 30 s of CPU, run over four processes (sim.test.ts) so that a 2-core machine at load 20
 * still gets through them in a minute and a half. `npm run sim -- --seeds N` runs as many more.
 */
export const ciSeeds: readonly number[] = [
  ...Array.from({ length: 20 }, (_, i) => i + 1),
  1014,
  1077,
  1131,
  1157,
  3061,
  3124,
  3261,
  3387,
  // Burst plans whose tail and END were lost at a repair server (found.md 10).
  28,
  78,
  // A held packet starved of NACK budget by gaps no server holds, asked round after round (found.md 13).
  26,
];

/**
 * Signed and restricted sessions (`npm run sim -- --protection signed|restricted`): the same plans
 * with a signed or a restricted source, every role authenticating against its key, and an
 * adversary that forges DATA inside the window, control signatures by another key, and replays or
 * alters KEY messages (test/sim/protection.ts). Named "signed:N" / "restricted:N" in shard.ts.
 */
export const ciProtectedSeeds: readonly string[] = [
  ...Array.from({ length: 6 }, (_, i) => `signed:${i + 1}`),
  ...Array.from({ length: 6 }, (_, i) => `restricted:${i + 1}`),
  // A receiver on S2 behind a repair server lagging the KEY stream lost a key epoch (found.md 12).
  'restricted:13',
];

/**
 * Open entries of found.md, each with what matches a failure to it: such a failure is reported as
 * TODO rather than failing CI. Every entry recorded so far is fixed, so the list is empty and any
 * failure of a CI seed fails the test (a fault that comes back is a regression, not a known fault).
 */
const openFaults: ReadonlyArray<{ entry: string; matches: (result: ScenarioResult) => boolean }> = [];

/** The open found.md entry a failure belongs to, or undefined for a new one (or a regression). */
export function knownFault(result: ScenarioResult): string | undefined {
  if (result.violation === undefined) {
    return undefined;
  }
  return openFaults.find((fault) => fault.matches(result))?.entry;
}
