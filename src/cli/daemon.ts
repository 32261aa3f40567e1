/**
 * What the long-running commands share: options for the status endpoint and the periodic status
 * line, the shared secret, lists of endpoints, and running until SIGINT or SIGTERM.
 */
import { type ControlKey, readSecretFile } from '../crypto/control-auth.js';
import { logEventPollIntervalMs, shutdownGraceMs } from '../limits.js';
import { type Endpoint, parseEndpoint } from '../net/address.js';
import { type EventLog, jsonEventLog, type LogFormat, silentEventLog } from '../net/log.js';
import type { RoleSampler } from '../net/metrics.js';
import { type StatusServer, serveStatus } from '../net/status-http.js';
import { socketBufferReport } from '../net/udp.js';
import { exitOk, UsageError } from './errors.js';
import { eventWatcher } from './events.js';
import { type OptionSpecs, type OptionValues, optional, parseSeconds } from './options.js';
import { metricsFor } from './role-metrics.js';

/** The --log-format option of every daemon. */
export const logFormatOption = {
  type: 'string',
  value: 'text|json',
  help: 'json: also one JSON line per significant event on standard error (default text)',
} as const;

/** Parses --log-format and makes the event log for a command. */
export function eventLogFrom(values: OptionValues, command: string): EventLog {
  const format = (optional(values, 'log-format') ?? 'text') as LogFormat;
  if (format !== 'text' && format !== 'json') {
    throw new UsageError(`--log-format: "${format}" is not text or json`);
  }
  return format === 'json' ? jsonEventLog(command) : silentEventLog;
}

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
    help: 'serve GET /status (JSON), /metrics (Prometheus), /health and /ready here (e.g. 127.0.0.1:9100)',
  },
  'status-interval': {
    type: 'string',
    value: 'SECONDS',
    help: 'print one status line on standard error this often',
  },
  'log-format': logFormatOption,
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

/**
 * Runs a role until SIGINT or SIGTERM, with its status endpoint and line; returns the exit code.
 * The role has opened its sockets when it is handed in, so it is ready until the stop begins.
 */
export async function runDaemon(
  role: DaemonRole,
  values: OptionValues,
  err: NodeJS.WritableStream,
  line: () => string,
  metrics: { command: string; sampler: RoleSampler },
): Promise<number> {
  // The role has opened its sockets: say what the kernel granted (the status endpoint says it too).
  err.write(`${/^[a-z]+/.exec(line())?.[0] ?? 'gatecast'}: ${describeSocketBuffers()}\n`);
  const statusText = optional(values, 'status');
  const log = eventLogFrom(values, metrics.command);
  let server: StatusServer | undefined;
  let stopping = false;
  try {
    server =
      statusText === undefined
        ? undefined
        : await serveStatus(
            parseEndpoint(statusText, '--status'),
            () => ({ ...(role.status() as object), socketBuffers: socketBufferReport() }),
            {
              metrics: metricsFor(metrics.command, metrics.sampler),
              ready: () => ({
                ready: !stopping,
                checks: {
                  sockets: stopping ? { ok: false, detail: 'stopping: leaving the groups' } : { ok: true },
                },
              }),
            },
          );
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
  const watch = log === silentEventLog ? undefined : eventWatcher(log);
  watch?.(role.status());
  log.event('start', { status: statusText });
  const eventTimer =
    watch === undefined ? undefined : setInterval(() => watch(role.status()), logEventPollIntervalMs);
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  stopping = true;
  clearInterval(timer);
  clearInterval(eventTimer);
  watch?.(role.status());
  log.event('stop', { signal });
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
