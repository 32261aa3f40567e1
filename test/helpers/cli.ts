/** Runs the gatecast command as a user would, to its end (bounded), with its exit code and output. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { gatecastBin } from './testbed.js';

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
