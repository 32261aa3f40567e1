/**
 * Where the subscription server's CPU goes on the batch charge path: one `gatecast serve` under
 * `node --cpu-prof`, loaded by the charges benchmark's load generator (POST /v1/usage/batch, 16
 * connections, BENCH_BATCH events per request, default 100) for BENCH_SECONDS (default 8), then
 * self time grouped by where the code lives and the functions with the most self time.
 *
 *   node --import tsx bench/charges-profile.ts [sqlite|postgres]   (after npm run build)
 *
 * BENCH_BIN runs another build's bin/gatecast (an older commit's, to compare in one sitting).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { postgresUnavailable, startPostgres } from '../test/helpers/postgres.js';
import { startServe } from '../test/helpers/serve.js';
import { repoRoot } from '../test/helpers/testbed.js';
import { cpuProfileArguments, frameName, type Profile, readProfiles, selfTimes } from './cpu-profile.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const batchSize = Number(process.env.BENCH_BATCH ?? 100);
const operatorToken = 'operator-token-for-the-charges-profile';

/** The part of the program a frame belongs to. */
function part(url: string, name: string): string {
  if (name === '(idle)' || name === '(program)' || name === '(garbage collector)') {
    return name;
  }
  const module = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1];
  if (module !== undefined) {
    return module;
  }
  if (url.includes('/dist/')) {
    return `gatecast ${url.replace(/^.*\/dist\//, '')}`;
  }
  return url.startsWith('node:') ? url : `${url === '' ? '(native)' : url}`;
}

function summarize(profile: Profile): void {
  const parts = selfTimes(profile, (frame) => part(frame.url, frame.functionName));
  const functions = selfTimes(profile, frameName);
  const all = parts.allMs;
  const top = (map: Map<string, number>, count: number) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(([name, ms]) => `${((100 * ms) / all).toFixed(1).padStart(5)} %  ${name}`)
      .join('\n');
  console.log(
    `profile: ${(all / 1000).toFixed(1)} s sampled\n\nby part:\n${top(parts.byKey, 25)}\n\nby function:\n${top(functions.byKey, 40)}`,
  );
}

async function main(): Promise<void> {
  const kind = process.argv[2] ?? 'sqlite';
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-bench-charges-profile-'));
  const profiles = join(directory, 'profiles');
  const postgres =
    kind === 'postgres' && postgresUnavailable() === undefined ? startPostgres({ durable: true }) : undefined;
  if (kind === 'postgres' && postgres === undefined) {
    throw new Error(`PostgreSQL cannot run: ${postgresUnavailable()}`);
  }
  try {
    const db = postgres?.url ?? `sqlite:${join(directory, 'bench.db')}`;
    const serve = await startServe(
      ['--db', db],
      { GATECAST_OPERATOR_TOKEN: operatorToken },
      undefined,
      cpuProfileArguments(profiles),
    );
    const accounts: string[] = [];
    for (let i = 0; i < 50; i++) {
      const response = await fetch(`${serve.url}/v1/subscribers`, {
        method: 'POST',
        headers: { authorization: `Bearer ${operatorToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `profile ${i}` }),
      });
      accounts.push(((await response.json()) as { id: string }).id);
    }
    const load = loadavg()[0]?.toFixed(1);
    const job = { urls: [serve.url], token: operatorToken, accounts, seconds, connections: 16, run: 'prof' };
    const out = execFileSync(
      process.execPath,
      [
        '--import',
        'tsx',
        join(repoRoot, 'bench', 'charges-load.ts'),
        JSON.stringify({ ...job, mode: 'batch', batchSize }),
      ],
      { timeout: (seconds + 60) * 1000, encoding: 'utf8' },
    );
    await serve.stop();
    console.log(`${kind}, load average ${load}: ${out.trim()}`);
    const [written] = readProfiles(profiles);
    if (written === undefined) {
      throw new Error('the server wrote no profile');
    }
    summarize(written.profile);
  } finally {
    postgres?.stop();
    rmSync(directory, { recursive: true, force: true });
  }
}

await main();
