/**
 * Values by 32-bit sequence for a window: the sequences held at one time all lie within `spanMax`
 * of one another (a window's packets between its delivery point and its far edge).
 *
 * A ring indexed by the sequence's low bits, with the sequence kept beside each value: two
 * sequences closer than the ring's size never share a slot, so a lookup is one array read. The
 * ring starts small and doubles when two held sequences would share a slot, up to the first power
 * of two at or above `spanMax`, where they cannot.
 *
 * Not a Map: a long-lived Map that takes one key and drops another for every packet rebuilds its
 * table every few packets, and V8 allocates the new table in the old generation when the Map is
 * there. That is about 150 bytes of garbage a packet that only a full collection frees (a receiver
 * at 9,000 packets a second ran a full collection every 600 ms).
 */
/** The widest span a ring takes (its slots grow only as far as the sequences held spread). */
export const sequenceRingSpanMax = 2 ** 30;

export class SequenceRing<T> {
  #sequences: Uint32Array;
  #values: Array<T | undefined>;
  #mask: number;
  #size = 0;
  readonly #slotsMax: number;

  constructor(spanMax: number, initialSlots = 64) {
    if (!Number.isInteger(spanMax) || spanMax < 1 || spanMax > sequenceRingSpanMax) {
      throw new RangeError(`spanMax must be an integer from 1 to 2^30, not ${spanMax}`);
    }
    this.#slotsMax = 2 ** Math.ceil(Math.log2(spanMax));
    const slots = Math.min(this.#slotsMax, 2 ** Math.ceil(Math.log2(Math.max(1, initialSlots))));
    this.#sequences = new Uint32Array(slots);
    this.#values = new Array<T | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
  }

  /** How many sequences hold a value. */
  get size(): number {
    return this.#size;
  }

  /** The ring's slots now (for tests: it grows only as far as the held sequences spread). */
  get slots(): number {
    return this.#mask + 1;
  }

  get(sequence: number): T | undefined {
    const slot = sequence & this.#mask;
    const value = this.#values[slot];
    return value !== undefined && this.#sequences[slot] === sequence >>> 0 ? value : undefined;
  }

  has(sequence: number): boolean {
    return this.get(sequence) !== undefined;
  }

  /**
   * Holds `value` at `sequence`. Throws a RangeError when the sequences held would spread wider
   * than the ring can grow (the caller's window keeps them within spanMax).
   */
  set(sequence: number, value: T): void {
    const key = sequence >>> 0;
    for (;;) {
      const slot = key & this.#mask;
      const occupant = this.#values[slot];
      if (occupant === undefined || this.#sequences[slot] === key) {
        if (occupant === undefined) {
          this.#size++;
        }
        this.#sequences[slot] = key;
        this.#values[slot] = value;
        return;
      }
      this.#grow();
    }
  }

  delete(sequence: number): boolean {
    const slot = sequence & this.#mask;
    if (this.#values[slot] === undefined || this.#sequences[slot] !== sequence >>> 0) {
      return false;
    }
    this.#values[slot] = undefined;
    this.#size--;
    return true;
  }

  #grow(): void {
    const slots = (this.#mask + 1) * 2;
    if (slots > this.#slotsMax) {
      throw new RangeError(`sequences held spread wider than the ring's ${this.#slotsMax} slots`);
    }
    const sequences = new Uint32Array(slots);
    const values = new Array<T | undefined>(slots).fill(undefined);
    const mask = slots - 1;
    for (let slot = 0; slot <= this.#mask; slot++) {
      const value = this.#values[slot];
      if (value !== undefined) {
        const sequence = this.#sequences[slot] as number;
        sequences[sequence & mask] = sequence;
        values[sequence & mask] = value;
      }
    }
    this.#sequences = sequences;
    this.#values = values;
    this.#mask = mask;
  }
}
