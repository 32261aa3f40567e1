/** The wall clock that packet timestamps and control-message counters use. */

/** Microseconds since 1970, from the monotonic clock anchored at process start. */
export function nowMicroseconds(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}
