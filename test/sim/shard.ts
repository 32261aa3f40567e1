/**
 * Runs the seeds named on its command line with the real roles and reports each one's outcome to
 * its parent over IPC (or prints it): how sim.test.ts spreads the CI seeds over a few processes.
 */
import { knownFault } from './ci-seeds.js';
import type { ProtectionKind } from './protection.js';
import { realKit } from './real-roles.js';
import { describeFailure, runScenario } from './scenario.js';

/** One seed's outcome, as sent to the parent. */
export interface ShardResult {
  /** The seed as named on the command line: "N", or "signed:N" / "restricted:N". */
  readonly seed: string;
  /** Undefined when every invariant held. */
  readonly failure: string | undefined;
  /** The found.md entry the failure belongs to, if any. */
  readonly known: string | undefined;
}

for (const argument of process.argv.slice(2)) {
  // "N", or "signed:N" / "restricted:N" for a protected plan (ci-seeds.ts).
  const [first, second] = argument.split(':');
  const protection = second === undefined ? undefined : (first as ProtectionKind);
  const seed = Number(second ?? first);
  const options = protection === undefined ? {} : { protection };
  const result = await runScenario(seed, realKit, options);
  const message: ShardResult = {
    seed: argument,
    failure: result.violation === undefined ? undefined : describeFailure(result, realKit, options),
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
