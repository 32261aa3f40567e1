/**
 * The repair controller's usage journal: each usage report is written to a file (and synced)
 * before it is sent, and marked done once the subscription server has taken it. A controller that
 * crashed or was stopped while the server was away finds its unsent reports here on start and
 * sends them with their original idempotency keys: a report is neither lost nor charged twice.
 * JSON lines: {"report": {key, body}} and {"done": key}; rewritten without the done ones on open.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';

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

/** Opens (or creates) the journal at path, keeping only the reports not yet done. */
export function openUsageJournal(path: string): UsageJournal {
  const unsent = new Map<string, UsageReport>();
  if (existsSync(path)) {
    for (const line of readFileSync(path, 'utf8').split('\n')) {
      if (line.trim() === '') {
        continue;
      }
      let entry: { report?: UsageReport; done?: string };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        continue; // a line torn by a crash mid-write: its report was never sent
      }
      if (entry.report !== undefined && typeof entry.report.key === 'string') {
        unsent.set(entry.report.key, entry.report);
      } else if (typeof entry.done === 'string') {
        unsent.delete(entry.done);
      }
    }
  }
  const temporary = `${path}.tmp`;
  const compacted = openSync(temporary, 'w');
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
