/** Waiting on a condition in tests: poll, bounded in time, never a fixed sleep. */

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
