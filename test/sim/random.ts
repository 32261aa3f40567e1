/**
 * The simulator's only source of randomness: xoshiro128** seeded through splitmix32. Every stream
 * is forked from the seed by a label, so adding a consumer of randomness in one place does not
 * shift the numbers another place draws, and a seed replays exactly.
 */
import { createHash } from 'node:crypto';

/** A seeded generator of 32-bit numbers and the shapes the simulator draws from them. */
export class SimRandom {
  readonly #state = new Uint32Array(4);

  /** Seeds the four words of state from a 32-bit seed (splitmix32, so that 0 is a valid seed). */
  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.#state[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (this.#state.every((word) => word === 0)) {
      this.#state[0] = 1;
    }
  }

  /** An independent stream for one consumer, derived from a seed and a label. */
  static fork(seed: number, label: string): SimRandom {
    const digest = createHash('sha256')
      .update(`${seed >>> 0}/${label}`)
      .digest();
    return new SimRandom(digest.readUInt32BE(0));
  }

  /** The next 32-bit unsigned number. */
  next(): number {
    const s = this.#state;
    const s1 = s[1] as number;
    const result = Math.imul(rotl(Math.imul(s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (s1 << 9) >>> 0;
    s[2] = (s[2] as number) ^ (s[0] as number);
    s[3] = (s[3] as number) ^ s1;
    s[1] = s1 ^ (s[2] as number);
    s[0] = (s[0] as number) ^ (s[3] as number);
    s[2] = (s[2] as number) ^ t;
    s[3] = rotl(s[3] as number, 11);
    return result;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.next() / 0x1_0000_0000;
  }

  /** An integer in [min, max] (inclusive). */
  int(min: number, max: number): number {
    return min + Math.floor(this.float() * (max - min + 1));
  }

  /** True with the given probability. */
  chance(probability: number): boolean {
    return probability > 0 && this.float() < probability;
  }

  /** One element of a non-empty list. */
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.float() * items.length)] as T;
  }

  /** A 32-bit unsigned number other than 0 (ids, incarnations). */
  nonZero(): number {
    let value = this.next();
    while (value === 0) {
      value = this.next();
    }
    return value;
  }

  /** length pseudo-random bytes. */
  bytes(length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    let i = 0;
    for (; i + 4 <= length; i += 4) {
      out.writeUInt32LE(this.next(), i);
    }
    for (; i < length; i++) {
      out[i] = this.next() & 0xff;
    }
    return out;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
