/**
 * The simulator's command line: `npm run sim -- --seeds N [--from S] [--seed S] [--verbose]
 * [--replay-check] [--keep-going] [--skip-actions A,B] [--kit real|fake] [--protection signed|restricted]`. Runs each seed's scenario and stops at the first one that
 * breaks an invariant, printing the seed, the virtual time, the invariant, what the adversary did
 * last and the command that replays it exactly. Exits 1 on a failure, 2 on bad arguments.
 */
import { parseArgs } from 'node:util';
import { adversaryActions, protectedAdversaryActions } from './adversary.js';
import { fakeKit } from './fake-roles.js';
import type { ProtectionKind } from './protection.js';
import { realKit } from './real-roles.js';
import { describeFailure, planKind, type RoleKit, runScenario } from './scenario.js';

/** The kits by name. */
const kits: Record<string, RoleKit> = { real: realKit, fake: fakeKit };

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse();
  } catch (error) {
    console.error(`sim: ${(error as Error).message}`);
    return 2;
  }
  const { values } = parsed;
  const kit = kits[values.kit];
  if (kit === undefined) {
    console.error(`sim: --kit must be one of ${Object.keys(kits).join(', ')}`);
    return 2;
  }
  let seeds: number[];
  if (values.seed !== undefined) {
    seeds = [Number(values.seed) >>> 0];
  } else {
    const count = Number(values.seeds);
    const from = values.from === undefined ? Date.now() % 1_000_000_000 : Number(values.from);
    if (!Number.isInteger(count) || count < 1 || !Number.isInteger(from) || from < 0) {
      console.error('sim: --seeds takes a positive count and --from a seed');
      return 2;
    }
    seeds = Array.from({ length: count }, (_, i) => (from + i) >>> 0);
    console.log(
      `sim: seeds ${from}..${from + count - 1} (${kit.name} roles${values.protection === undefined ? '' : `, ${values.protection} sessions`})`,
    );
  }
  const skipActions = new Set((values['skip-actions'] ?? '').split(',').filter((a) => a !== ''));
  const actions: readonly string[] = [...adversaryActions, ...protectedAdversaryActions];
  for (const action of skipActions) {
    if (!actions.includes(action)) {
      console.error(`sim: --skip-actions: no action ${action} (${actions.join(', ')})`);
      return 2;
    }
  }
  const protection = values.protection;
  if (protection !== undefined && protection !== 'signed' && protection !== 'restricted') {
    console.error('sim: --protection must be signed or restricted');
    return 2;
  }
  const options = {
    verbose: values.verbose,
    skipActions,
    ...(protection === undefined ? {} : { protection: protection as ProtectionKind }),
  };
  const startedAtMs = performance.now();
  let virtualMs = 0;
  const failed: string[] = [];
  for (const seed of seeds) {
    const result = await runScenario(seed, kit, options);
    virtualMs += result.virtualMs;
    if (values['replay-check'] && result.violation === undefined) {
      const again = await runScenario(seed, kit, { ...options, verbose: false });
      if (again.traceDigest !== result.traceDigest) {
        console.error(
          `sim: seed ${seed} did not replay: trace ${result.traceDigest} then ${again.traceDigest}`,
        );
        return 1;
      }
    }
    if (values.verbose || seeds.length === 1) {
      console.log(
        `sim: seed ${seed} ${result.violation === undefined ? 'ok' : 'FAILED'}: ${planKind(result.plan)}, ` +
          `${result.events} events, ${(result.virtualMs / 1000).toFixed(1)} s virtual, trace ${result.traceDigest.slice(0, 16)}, ` +
          `outcomes ${JSON.stringify(result.outcomes)}`,
      );
    }
    if (result.violation !== undefined) {
      if (!values['keep-going']) {
        console.error(describeFailure(result, kit, options));
        return 1;
      }
      const { violation } = result;
      failed.push(`${seed}`);
      console.error(
        `sim: seed ${seed} failed at t=${violation.atMs.toFixed(1)} ms : ${violation.invariant} ${violation.details.split('\n')[0]}`,
      );
    }
  }
  if (failed.length > 0) {
    console.error(`sim: ${failed.length} of ${seeds.length} seeds failed: ${failed.join(' ')}`);
    return 1;
  }
  const seconds = (performance.now() - startedAtMs) / 1000;
  console.log(
    `sim: ${seeds.length} seed${seeds.length === 1 ? '' : 's'} passed in ${seconds.toFixed(1)} s ` +
      `(${(virtualMs / 1000).toFixed(0)} s of virtual time)`,
  );
  return 0;
}

function parse() {
  return parseArgs({
    options: {
      seeds: { type: 'string', default: '20' },
      from: { type: 'string' },
      seed: { type: 'string' },
      kit: { type: 'string', default: 'real' },
      verbose: { type: 'boolean', default: false },
      'replay-check': { type: 'boolean', default: false },
      'keep-going': { type: 'boolean', default: false },
      'skip-actions': { type: 'string' },
      protection: { type: 'string' },
    },
    strict: true,
  });
}

process.exitCode = await main();
