/** Runs the gatecast command as a user would, to its end (bounded), with its exit code and output. */
import { execFile, spawn } from 'node:child_process';
import { gatecastBin } from './testbed.js';
import { waitUntil } from './wait.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** How long a command may run before it is killed and reported as such. */
export const cliTimeoutMs = 30_000;

/**
 * Runs `gatecast ARGS` to its end. A command still running after `timeoutMs` is killed (SIGKILL,
 * so a process that ignores SIGTERM is ended too); its result then says so in `stderr`, with the
 * command line, how long it ran and what it had written so far, so a failed assertion on the
 * result shows where it stopped instead of an empty message.
 */
export function runGatecast(
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = cliTimeoutMs,
): Promise<CliResult> {
  const command = gatecastBin();
  const startedMs = performance.now();
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [command, ...args],
      { timeout: timeoutMs, killSignal: 'SIGKILL', env: { ...process.env, ...env } },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve({ code: 0, stdout, stderr });
          return;
        }
        const failed = error as { code?: number | string | null; killed?: boolean; signal?: string | null };
        if (typeof failed.code === 'number') {
          resolve({ code: failed.code, stdout, stderr });
          return;
        }
        const ranMs = Math.round(performance.now() - startedMs);
        const why =
          failed.killed === true
            ? `killed by the test's ${timeoutMs} ms timeout after ${ranMs} ms`
            : `ended by ${failed.signal ?? String(failed.code ?? error.message)} after ${ranMs} ms`;
        resolve({
          code: -1,
          stdout,
          stderr: [
            `gatecast ${args.join(' ')}: ${why}`,
            `stdout so far: ${stdout === '' ? '(nothing)' : `\n${stdout}`}`,
            `stderr so far: ${stderr === '' ? '(nothing)' : `\n${stderr}`}`,
          ].join('\n'),
        });
      },
    );
  });
}

/** A command started in the background: its exit code once it ends, and its standard error so far. */
export interface Started {
  exited: Promise<number | null>;
  stderr(): string;
  /** Sends the process SIGTERM (a daemon's orderly stop). */
  stop(): void;
}

/**
 * Spawns `command` with `args` and resolves once its standard error matches `ready`, or once it
 * has exited (the caller's check of its exit code then says why); throws naming `what` when
 * neither happens within `timeoutMs`.
 */
export async function spawnUntilReady(
  command: string,
  args: string[],
  ready: RegExp,
  what: string,
  timeoutMs = 30_000,
): Promise<Started> {
  const child = spawn(command, args);
  let stderr = '';
  let ended = false;
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) =>
    child.on('close', (code) => {
      ended = true;
      resolve(code);
    }),
  );
  await waitUntil(what, () => ready.test(stderr) || ended, timeoutMs);
  return { exited, stderr: () => stderr, stop: () => child.kill('SIGTERM') };
}

/** Starts `gatecast receive ...args` and resolves once it has joined (its readiness line). */
export function startReceive(args: string[]): Promise<Started> {
  return spawnUntilReady(process.execPath, [gatecastBin(), 'receive', ...args], /joined/, 'receive joined');
}
