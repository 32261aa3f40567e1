/**
 * Serial-number arithmetic on 32-bit sequence numbers (RFC 1982, SERIAL_BITS = 32), so that
 * sessions survive the wrap from 0xffffffff to 0.
 */

const half = 0x8000_0000;

/** Adds n (0 <= n < 2^31) to a sequence number, modulo 2^32 (RFC 1982 section 3.1). */
export function sequenceAdd(sequence: number, n: number): number {
  return (sequence + n) >>> 0;
}

/**
 * Signed distance from a to b: positive when b is after a. Defined for distances below 2^31;
 * the undefined midpoint (RFC 1982 section 3.2) returns -2^31, i.e. "before".
 */
export function sequenceDistance(a: number, b: number): number {
  return (b - a) | 0;
}

/** True when a is before b (RFC 1982 section 3.2, s1 < s2). */
export function sequenceLess(a: number, b: number): boolean {
  const d = (b - a) >>> 0;
  return d !== 0 && d < half;
}

/** True when a is after b. */
export function sequenceGreater(a: number, b: number): boolean {
  return sequenceLess(b, a);
}
