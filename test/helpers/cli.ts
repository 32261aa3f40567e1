/** Runs the gatecast command as a user would, to its end (bounded), with its exit code and output. */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { gatecastBin } from './testbed.js';
import { waitUntil } from './wait.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runGatecast(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const command = gatecastBin();
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [command, ...args], {
      timeout: 30_000,
      env: { ...process.env, ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

/** A command started in the background: its exit code once it ends, and its standard error so far. */
export interface Started {
  exited: Promise<number | null>;
  stderr(): string;
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
  return { exited, stderr: () => stderr };
}

/** Starts `gatecast receive ...args` and resolves once it has joined (its readiness line). */
export function startReceive(args: string[]): Promise<Started> {
  return spawnUntilReady(process.execPath, [gatecastBin(), 'receive', ...args], /joined/, 'receive joined');
}
