/** A small seeded PRNG (xorshift32) so that a failing fuzz or loss run replays from its seed. */
export function createRandom(seed: number) {
  let state = seed >>> 0 || 1;
  function next(): number {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  }
  return {
    /** An integer in [0, n). */
    int(n: number): number {
      return n <= 0 ? 0 : next() % n;
    },
    bytes(length: number): Buffer {
      const out = Buffer.allocUnsafe(length);
      for (let i = 0; i < length; i++) {
        out[i] = next() & 0xff;
      }
      return out;
    },
  };
}
