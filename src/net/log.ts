/**
 * Structured logs (pino): one JSON line per significant event on standard error, for operators
 * who collect logs (`--log-format json`). Without it the commands keep their human status lines.
 */
import pino, { type Logger } from 'pino';

/** How a command logs its events. */
export type LogFormat = 'text' | 'json';

/** Writes one line per event. */
export interface EventLog {
  /** One event: a short kebab-case name and its fields. */
  event(name: string, fields?: Record<string, unknown>): void;
}

/** A JSON event log for a command on a file descriptor (standard error by default), written synchronously. */
export function jsonEventLog(command: string, fd = 2): EventLog {
  const logger: Logger = pino(
    { base: { command, pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'message' },
    pino.destination({ dest: fd, sync: true }),
  );
  return { event: (name, fields = {}) => logger.info({ event: name, ...fields }, name) };
}

/** Logs nothing (text format: the commands' own status lines speak). */
export const silentEventLog: EventLog = { event: () => undefined };
