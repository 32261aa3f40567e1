/** Starts `gatecast serve` as a child process on loopback, for tests that need the real server. */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { gatecastBin } from './testbed.js';

/** A running `gatecast serve`. */
export interface ServeProcess {
  readonly url: string;
  readonly child: ChildProcess;
  stderr(): string;
  /** SIGTERM and wait. */
  stop(): Promise<void>;
  /** SIGKILL and wait: a crash. */
  kill(): Promise<void>;
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts the server with these extra arguments (and Node's own before them: a benchmark's
 * `--cpu-prof`) and waits until it listens (bounded).
 */
export async function startServe(
  args: string[],
  env: Record<string, string> = {},
  port?: number,
  nodeArguments: readonly string[] = [],
): Promise<ServeProcess> {
  const listenPort = port ?? (await freePort());
  const child = spawn(
    process.execPath,
    [...nodeArguments, gatecastBin(), 'serve', '--listen', `127.0.0.1:${listenPort}`, ...args],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start within 60 s: ${stderr}`)), 60_000);
    const check = () => {
      if (/serve: .* on https?:\/\//.test(stderr)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stderr?.on('data', check);
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`serve exited before listening: ${stderr}`));
    });
  });
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
    }
    await exited;
  };
  return {
    url: `${/serve: .* on https:\/\//.test(stderr) ? 'https' : 'http'}://127.0.0.1:${listenPort}`,
    child,
    stderr: () => stderr,
    stop: () => end('SIGTERM'),
    kill: () => end('SIGKILL'),
  };
}
