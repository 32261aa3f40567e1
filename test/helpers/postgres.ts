/**
 * A throwaway PostgreSQL cluster for the store suite (Debian postgresql, run as the postgres user
 * from root). Tests skip with the reason where it cannot start, and fail instead when
 * GATECAST_REQUIRE_POSTGRES=1 (set by .ci/run).
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function binDirectory(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) {
    return undefined;
  }
  const version = readdirSync(root).sort().pop();
  return version === undefined ? undefined : join(root, version, 'bin');
}

/** Why PostgreSQL cannot run here, or undefined. */
export function postgresUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) {
    return 'needs root to start a throwaway PostgreSQL cluster as the postgres user';
  }
  if (binDirectory() === undefined) {
    return 'needs the Debian package postgresql';
  }
  return undefined;
}

/** A running cluster. */
export interface Postgres {
  readonly url: string;
  stop(): void;
}

/**
 * Starts a cluster on a free-ish port in a temporary directory. Tests run it with fsync off;
 * benchmarks ask for a durable one (fsync on, as in production).
 */
export function startPostgres(options: { durable?: boolean } = {}): Postgres {
  const bin = binDirectory() as string;
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-pg-'));
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(directory, uid, gid);
  const port = 20_000 + (process.pid % 20_000);
  const data = join(directory, 'data');
  const asPostgres = (command: string, args: string[]) =>
    execFileSync('runuser', ['-u', 'postgres', '--', join(bin, command), ...args], { stdio: 'pipe' });
  asPostgres('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  asPostgres('pg_ctl', [
    '-D',
    data,
    '-o',
    `-p ${port} -k ${directory} -c listen_addresses=127.0.0.1${options.durable === true ? '' : ' -c fsync=off'}`,
    '-l',
    join(directory, 'log'),
    '-w',
    'start',
  ]);
  let stopped = false;
  const stop = () => {
    if (stopped) {
      return;
    }
    stopped = true;
    try {
      asPostgres('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']);
    } finally {
      rmSync(directory, { recursive: true, force: true });
      process.off('exit', stop);
    }
  };
  process.on('exit', stop);
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, stop };
}

/** node:test options for a PostgreSQL suite: skip with the reason, or fail when it is required. */
export function postgresSkip(): { skip?: string } {
  const reason = postgresUnavailable();
  if (reason === undefined) {
    return {};
  }
  if (process.env.GATECAST_REQUIRE_POSTGRES === '1') {
    throw new Error(`GATECAST_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: ${reason}`);
  }
  return { skip: reason };
}

/** How a store suite is told where its store is, and how to clean up after it. */
export type StoreSuite = (
  name: string,
  options: { skip?: string },
  url: () => string,
  cleanup: () => void,
) => void;

/** Defines a store suite once per dialect: SQLite in memory always, PostgreSQL where a cluster can start. */
export function onEveryStore(suite: StoreSuite): void {
  suite(
    'SQLite',
    {},
    () => 'sqlite::memory:',
    () => undefined,
  );
  let postgres: Postgres | undefined;
  suite(
    'PostgreSQL',
    postgresSkip(),
    () => {
      postgres = startPostgres();
      return postgres.url;
    },
    () => postgres?.stop(),
  );
}
