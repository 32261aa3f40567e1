/**
 * The repair controller's usage journal: each usage report is written to a file (and synced)
 * before it is sent, and marked done once the subscription server has taken it. A controller that
 * crashed or was stopped while the server was away finds its unsent reports here on start and
 * sends them with their original idempotency keys: a report is neither lost nor charged twice.
 * JSON lines: {"report": {key, body}} and {"done": key}; rewritten without the done ones on open.
 */
import { chmodSync, closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { journalBytesMax } from '../limits.js';
import { FileRefused, readBoundedFile } from '../net/files.js';

/** One usage report as sent to POST /v1/usage. */
export interface UsageReport {
  readonly key: string;
  readonly body: {
    readonly account: string;
    readonly kind: 'repair-bytes';
    readonly quantity: number;
    readonly packets: number;
    readonly session?: string;
  };
}

/** An open journal. */
export interface UsageJournal {
  /** Reports written but not yet marked done, oldest first. */
  readonly unsent: readonly UsageReport[];
  append(report: UsageReport): void;
  done(key: string): void;
  close(): void;
}

/** The journal's text: empty when it does not exist yet; a regular file of bounded size otherwise. */
function readJournal(path: string): string {
  try {
    return readBoundedFile(path, journalBytesMax).toString('utf8');
  } catch (error) {
    if (error instanceof FileRefused && error.errno === 'ENOENT') {
      return '';
    }
    throw error;
  }
}

/**
 * Opens (or creates) the journal at path, keeping only the reports not yet done. The file holds
 * what subscribers owe: it is written 0600. Throws FileRefused for a FIFO, a device, a directory or
 * a file past journalBytesMax.
 */
export function openUsageJournal(path: string): UsageJournal {
  const unsent = new Map<string, UsageReport>();
  for (const line of readJournal(path).split('\n')) {
    if (line.trim() === '') {
      continue;
    }
    let entry: { report?: UsageReport; done?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue; // a line torn by a crash mid-write: its report was never sent
    }
    if (entry === null || typeof entry !== 'object') {
      continue; // not a line this journal writes: nothing to send again
    }
    if (entry.report !== null && typeof entry.report === 'object' && typeof entry.report.key === 'string') {
      unsent.set(entry.report.key, entry.report);
    } else if (typeof entry.done === 'string') {
      unsent.delete(entry.done);
    }
  }
  const temporary = `${path}.tmp`;
  const compacted = openSync(temporary, 'w', 0o600);
  chmodSync(temporary, 0o600); // a leftover temporary file keeps its old mode otherwise
  for (const report of unsent.values()) {
    writeSync(compacted, `${JSON.stringify({ report })}\n`);
  }
  fsyncSync(compacted);
  closeSync(compacted);
  renameSync(temporary, path);
  const fd = openSync(path, 'a');
  const write = (entry: object, sync: boolean) => {
    writeSync(fd, `${JSON.stringify(entry)}\n`);
    if (sync) {
      fsyncSync(fd);
    }
  };
  return {
    unsent: [...unsent.values()],
    append: (report) => write({ report }, true),
    // Losing a "done" line costs a replay the server answers from its idempotency key: no sync.
    done: (key) => write({ done: key }, false),
    close: () => closeSync(fd),
  };
}
