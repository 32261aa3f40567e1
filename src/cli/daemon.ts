/**
 * What the long-running commands share: options for the status endpoint and the periodic status
 * line, the shared secret, lists of endpoints, and running until SIGINT or SIGTERM.
 */
import { logEventPollIntervalMs, shutdownGraceMs } from '../limits.js';
import { parseEndpoint } from '../net/address.js';
import { type EventLog, jsonEventLog, type LogFormat, silentEventLog } from '../net/log.js';
import type { RoleSampler } from '../net/metrics.js';
import { type StatusServer, serveStatus } from '../net/status-http.js';
import { socketBufferReport } from '../net/udp.js';
import { exitIncomplete, exitOk, UsageError } from './errors.js';
import { eventWatcher } from './events.js';
import { type OptionValues, optional, parseSeconds } from './options.js';
import { metricsFor } from './role-metrics.js';
import { describeSocketBuffers } from './socket-buffer.js';

// Kept apart so that `gatecast send` does not load the daemons' metrics and logging (start-up CPU).
export { keysFrom, parseEndpointList } from './control-keys.js';

/** Parses --log-format and makes the event log for a command. */
export function eventLogFrom(values: OptionValues, command: string): EventLog {
  const format = (optional(values, 'log-format') ?? 'text') as LogFormat;
  if (format !== 'text' && format !== 'json') {
    throw new UsageError(`--log-format: "${format}" is not text or json`);
  }
  return format === 'json' ? jsonEventLog(command) : silentEventLog;
}

/** A running role as the runner and `gatecast daemon` see it. */
export interface RunningRole {
  /** The command that runs it: retransmit, repair, agent, serve. */
  readonly command: string;
  status(): unknown;
  /** The one-line status (--status-interval). */
  line(): string;
  /** Its counters for /metrics, if it has any. */
  readonly sampler?: RoleSampler | undefined;
  /** A readiness check besides "its sockets are open" (the store answers). */
  ready?(): Promise<{ ok: boolean; detail?: string }>;
  /** True when the role logs its own events (--log-format json), so no watcher compares its status. */
  readonly logsItsOwnEvents?: boolean;
  /** Leaves its groups, flushes what it holds, closes its sockets; idempotent. */
  close(): Promise<void>;
}

/**
 * A role whose settings have all been checked: calling it opens the role's sockets (and prints
 * what it listens on). A start that fails has closed what it opened.
 */
export type RoleStarter = (err: NodeJS.WritableStream) => Promise<RunningRole>;

/** A RunningRole over a role object with status() and close(). */
export function runningRole(
  command: string,
  role: { status(): unknown; close(): Promise<void> },
  sampler: RoleSampler,
  line: () => string,
): RunningRole {
  return { command, status: () => role.status(), close: () => role.close(), sampler, line };
}

/**
 * Serves a role's own status endpoint when --status is given: /status, /metrics, /health, /ready
 * (not ready while stopping).
 */
export async function serveRoleStatus(
  role: RunningRole,
  values: OptionValues,
  stopping: () => boolean,
): Promise<StatusServer | undefined> {
  const statusText = optional(values, 'status');
  if (statusText === undefined) {
    return undefined;
  }
  return serveStatus(
    parseEndpoint(statusText, '--status'),
    () => ({ ...(role.status() as object), socketBuffers: socketBufferReport() }),
    {
      metrics: metricsFor(role.command, ...(role.sampler === undefined ? [] : [role.sampler])),
      ready: () => ({
        ready: !stopping(),
        checks: {
          sockets: stopping() ? { ok: false, detail: 'stopping: leaving the groups' } : { ok: true },
        },
      }),
    },
  );
}

/** A role's status endpoint, status line and event log while it runs. */
export interface Supervision {
  /** Stops the line and the events (logging the stop) and closes the status endpoint. */
  stop(signal: string): Promise<void>;
}

/**
 * Starts what watches a running role: its own status endpoint (--status), its status line
 * (--status-interval) and its JSON events (--log-format json). A failure closes the role.
 */
export async function supervise(
  role: RunningRole,
  values: OptionValues,
  err: NodeJS.WritableStream,
): Promise<Supervision> {
  const log = role.logsItsOwnEvents === true ? silentEventLog : eventLogFrom(values, role.command);
  let stopping = false;
  let server: StatusServer | undefined;
  try {
    server = await serveRoleStatus(role, values, () => stopping);
  } catch (error) {
    await role.close();
    throw error;
  }
  const intervalText = optional(values, 'status-interval');
  const intervalMs = intervalText === undefined ? undefined : parseSeconds(intervalText, '--status-interval');
  const timer =
    intervalMs === undefined
      ? undefined
      : setInterval(() => err.write(`${role.line()}\n`), Math.max(100, intervalMs));
  const watch = log === silentEventLog ? undefined : eventWatcher(log);
  watch?.(role.status());
  log.event('start', { status: optional(values, 'status') });
  const eventTimer =
    watch === undefined ? undefined : setInterval(() => watch(role.status()), logEventPollIntervalMs);
  return {
    async stop(signal) {
      stopping = true;
      clearInterval(timer);
      clearInterval(eventTimer);
      watch?.(role.status());
      log.event('stop', { signal });
      await server?.close();
    },
  };
}

/**
 * Runs a role until SIGINT or SIGTERM, with its status endpoint and line; returns the exit code.
 * The role has opened its sockets when it is handed in, so it is ready until the stop begins.
 */
export async function runDaemon(
  role: RunningRole,
  values: OptionValues,
  err: NodeJS.WritableStream,
): Promise<number> {
  // The role has opened its sockets: say what the kernel granted (the status endpoint says it too).
  err.write(`${role.command}: ${describeSocketBuffers()}\n`);
  const supervision = await supervise(role, values, err);
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  endProcessSoon(exitOk);
  await supervision.stop(signal);
  const closed = await closeWithin(role.close(), shutdownGraceMs);
  if (!closed.ok) {
    err.write(`${role.line()}\n${role.command}: did not stop cleanly: ${closed.reason}\n`);
    return exitIncomplete;
  }
  err.write(`${role.line()}\nstopped\n`);
  return exitOk;
}

/** How a close ended: in time, or not (it ran out of time, or failed), with the reason. */
export type CloseOutcome = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** Waits for a close, but no longer than `ms`; says whether it finished in time and without error. */
export async function closeWithin(closing: Promise<void>, ms: number): Promise<CloseOutcome> {
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    closing.then(
      (): CloseOutcome => ({ ok: true }),
      (error: unknown): CloseOutcome => ({
        ok: false,
        reason: `closing failed: ${(error as Error)?.message}`,
      }),
    ),
    new Promise<CloseOutcome>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, reason: `still closing after ${ms} ms` }), ms);
    }),
  ]);
  clearTimeout(timer);
  return outcome;
}

/**
 * Once a command stops, its process ends: if a handle (a socket, a timer) still holds the event
 * loop after the grace period, the process exits anyway, with the code the command returned when
 * it did (a stop that did not finish is not turned into 0), else `code`. The timer holds nothing.
 */
export function endProcessSoon(code: number, afterMs = 2 * shutdownGraceMs): void {
  setTimeout(
    () => process.exit(typeof process.exitCode === 'number' ? process.exitCode : code),
    afterMs,
  ).unref();
}
