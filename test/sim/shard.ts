/**
 * Runs the seeds named on its command line with the real roles and reports each one's outcome to
 * its parent over IPC (or prints it): how sim.test.ts spreads the CI seeds over a few processes.
 */
import { knownFault } from './ci-seeds.js';
import { realKit } from './real-roles.js';
import { describeFailure, runScenario } from './scenario.js';

/** One seed's outcome, as sent to the parent. */
export interface ShardResult {
  readonly seed: number;
  /** Undefined when every invariant held. */
  readonly failure: string | undefined;
  /** The found.md entry the failure belongs to, if any. */
  readonly known: string | undefined;
}

for (const argument of process.argv.slice(2)) {
  const seed = Number(argument);
  const result = await runScenario(seed, realKit);
  const message: ShardResult = {
    seed,
    failure: result.violation === undefined ? undefined : describeFailure(result, realKit),
    known: knownFault(result),
  };
  if (process.send === undefined) {
    console.log(JSON.stringify(message));
  } else {
    await new Promise<void>((resolve, reject) =>
      process.send?.(message, undefined, {}, (error) => (error === null ? resolve() : reject(error))),
    );
  }
}
process.disconnect?.();
