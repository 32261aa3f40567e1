/** Waiting on a condition in tests: poll, bounded in time, never a fixed sleep. */
import { statSync } from 'node:fs';

/** Polls check every pollMs until it holds; false when timeoutMs passes first. */
export async function eventually(check: () => boolean, timeoutMs: number, pollMs = 20): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) {
      return false;
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
  return true;
}

/** Like eventually(), but throws naming what was awaited when the time runs out. */
export async function waitUntil(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  if (!(await eventually(check, timeoutMs))) {
    throw new Error(`timed out waiting for ${what}`);
  }
}

/** Waits until the file at `path` holds at least `bytes` bytes (a file not there yet holds none). */
export async function waitForBytes(
  what: string,
  path: string,
  bytes: number,
  timeoutMs: number,
): Promise<void> {
  await waitUntil(
    what,
    () => {
      try {
        return statSync(path).size >= bytes;
      } catch {
        return false;
      }
    },
    timeoutMs,
  );
}
