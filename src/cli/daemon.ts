/**
 * What the long-running commands share: options for the status endpoint and the periodic status
 * line, the shared secret, lists of endpoints, and running until SIGINT or SIGTERM.
 */
import { type ControlKey, readSecretFile } from '../crypto/control-auth.js';
import { shutdownGraceMs } from '../limits.js';
import { type Endpoint, parseEndpoint } from '../net/address.js';
import { type StatusServer, serveStatus } from '../net/status-http.js';
import { socketBufferReport } from '../net/udp.js';
import { exitOk, UsageError } from './errors.js';
import { type OptionSpecs, type OptionValues, optional, parseSeconds } from './options.js';
import { describeSocketBuffers, socketBufferOptions } from './socket-buffer.js';

export const daemonOptions: OptionSpecs = {
  'secret-file': {
    type: 'string',
    value: 'FILE',
    help: "the operator's shared secret (>= 16 bytes) for control messages",
  },
  status: {
    type: 'string',
    value: 'ADDR:PORT',
    help: 'serve GET /status as JSON here (e.g. 127.0.0.1:9100)',
  },
  'status-interval': {
    type: 'string',
    value: 'SECONDS',
    help: 'print one status line on standard error this often',
  },
  ...socketBufferOptions,
};

/** Parses a comma-separated list of ADDR:PORT. */
export function parseEndpointList(text: string | undefined, field: string): Endpoint[] {
  if (text === undefined || text.trim() === '') {
    return [];
  }
  return text.split(',').map((part) => parseEndpoint(part.trim(), field));
}

/** The control keys from --secret-file (required). */
export function keysFrom(values: OptionValues): ControlKey[] {
  const path = optional(values, 'secret-file');
  if (path === undefined) {
    throw new UsageError('--secret-file is required: control messages between servers are authenticated');
  }
  return [readSecretFile(path)];
}

/** A running role as the daemon runner sees it. */
export interface DaemonRole {
  status(): unknown;
  close(): Promise<void>;
}

/** Runs a role until SIGINT or SIGTERM, with its status endpoint and line; returns the exit code. */
export async function runDaemon(
  role: DaemonRole,
  values: OptionValues,
  err: NodeJS.WritableStream,
  line: () => string,
): Promise<number> {
  // The role has opened its sockets: say what the kernel granted (the status endpoint says it too).
  err.write(`${/^[a-z]+/.exec(line())?.[0] ?? 'gatecast'}: ${describeSocketBuffers()}\n`);
  const statusText = optional(values, 'status');
  let server: StatusServer | undefined;
  try {
    server =
      statusText === undefined
        ? undefined
        : await serveStatus(parseEndpoint(statusText, '--status'), () => ({
            ...(role.status() as object),
            socketBuffers: socketBufferReport(),
          }));
  } catch (error) {
    await role.close();
    throw error;
  }
  const intervalText = optional(values, 'status-interval');
  const intervalMs = intervalText === undefined ? undefined : parseSeconds(intervalText, '--status-interval');
  const timer =
    intervalMs === undefined
      ? undefined
      : setInterval(() => err.write(`${line()}\n`), Math.max(100, intervalMs));
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  clearInterval(timer);
  endProcessSoon(exitOk);
  await server?.close();
  await closeWithin(role.close(), shutdownGraceMs);
  err.write(`${line()}\nstopped\n`);
  return exitOk;
}

/** Waits for a close, but no longer than the grace period. */
export async function closeWithin(closing: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    closing.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * Once a command stops, its process ends: if a handle (a socket, a timer) still holds the event
 * loop after the grace period, the process exits anyway. The timer itself holds nothing.
 */
export function endProcessSoon(code: number): void {
  setTimeout(() => process.exit(code), 2 * shutdownGraceMs).unref();
}
