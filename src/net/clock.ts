/**
 * The two clocks of gatecast (docs/protocol.md, "Freshness and replay"): a monotonic clock for
 * durations, which never steps, and the wall clock for timestamps that other hosts read, which
 * is read afresh every time so that it follows a correction of the host's clock in either
 * direction. Nothing anchors the wall clock once at start.
 */

/** What a part that checks times takes, so a test can hand in a fake. */
export interface TimeSource {
  /** Milliseconds on a monotonic clock (never steps; only differences mean anything). */
  nowMs(): number;
  /** Microseconds since 1970 on the wall clock, read afresh on every call. */
  wallUs(): number;
}

/** Milliseconds on the monotonic clock. */
export function monotonicMs(): number {
  return performance.now();
}

/** Wall time minus monotonic time, in ms: re-anchored whenever the wall clock moved. */
let wallOffsetMs = Date.now() - performance.now();

/**
 * Microseconds since 1970 on the wall clock. Date.now() is read on every call and only adds
 * sub-millisecond resolution from the monotonic clock: its whole milliseconds put the true time in
 * [wall, wall + 1), and when the monotonic estimate leaves that interval (the clock was stepped or
 * slewed) the estimate is anchored to the wall clock again.
 */
export function nowMicroseconds(): number {
  const monotonic = performance.now();
  const wall = Date.now();
  let estimateMs = wallOffsetMs + monotonic;
  if (estimateMs < wall || estimateMs >= wall + 1) {
    wallOffsetMs = wall + 0.5 - monotonic;
    estimateMs = wall + 0.5;
  }
  return Math.floor(estimateMs * 1000);
}

/** The system's clocks. */
export const systemTime: TimeSource = { nowMs: monotonicMs, wallUs: nowMicroseconds };
