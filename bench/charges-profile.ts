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
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { postgresUnavailable, startPostgres } from '../test/helpers/postgres.js';
import { freePort } from '../test/helpers/serve.js';
import { gatecastBin, repoRoot } from '../test/helpers/testbed.js';
import { waitUntil } from '../test/helpers/wait.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const batchSize = Number(process.env.BENCH_BATCH ?? 100);
const operatorToken = 'operator-token-for-the-charges-profile';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

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
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parts = new Map<string, number>();
  const functions = new Map<string, number>();
  let all = 0;
  for (const [i, id] of profile.samples.entries()) {
    const node = byId.get(id);
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    if (node === undefined) {
      continue;
    }
    const { functionName, url, lineNumber } = node.callFrame;
    const where = part(url, functionName);
    parts.set(where, (parts.get(where) ?? 0) + ms);
    const name = `${functionName || '(anonymous)'} ${url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${lineNumber + 1}`;
    functions.set(name, (functions.get(name) ?? 0) + ms);
    all += ms;
  }
  const top = (map: Map<string, number>, count: number) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(([name, ms]) => `${((100 * ms) / all).toFixed(1).padStart(5)} %  ${name}`)
      .join('\n');
  console.log(
    `profile: ${(all / 1000).toFixed(1)} s sampled\n\nby part:\n${top(parts, 25)}\n\nby function:\n${top(functions, 40)}`,
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
    const port = await freePort();
    const child = spawn(
      process.execPath,
      [
        '--cpu-prof',
        '--cpu-prof-dir',
        profiles,
        gatecastBin(),
        'serve',
        '--listen',
        `127.0.0.1:${port}`,
        '--db',
        db,
      ],
      {
        env: { ...process.env, GATECAST_OPERATOR_TOKEN: operatorToken },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    await waitUntil('serve to listen', () => /serve: .* on http/.test(stderr), 60_000);
    const serve = {
      url: `http://127.0.0.1:${port}`,
      stop: async () => {
        child.kill('SIGTERM');
        await exited;
      },
    };
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
    const file = readdirSync(profiles).find((name) => name.endsWith('.cpuprofile'));
    if (file === undefined) {
      throw new Error('the server wrote no profile');
    }
    summarize(JSON.parse(readFileSync(join(profiles, file), 'utf8')) as Profile);
  } finally {
    postgres?.stop();
    rmSync(directory, { recursive: true, force: true });
  }
}

await main();
