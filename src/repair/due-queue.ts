/**
 * The gaps due for a NACK, kept in a binary heap ordered by round, then oldest first (serial-number
 * order, RFC 1982), so that a flush walks them in order without sorting every due gap on every
 * call: a flush that takes k gaps of n costs O(k log n), not O(n log n). Removal is lazy: an entry
 * whose item left the queue (or left and came back) is skipped when it comes to the top, and the
 * heap is rebuilt when such entries outnumber the live ones.
 *
 * The round comes first so that an item asked for again never goes ahead of one that has not had
 * its turn yet (RFC 6675, NextSeg: a hole not yet retransmitted before any retransmitted again):
 * with a budget that takes a few items per walk, items that come back due again and again (what no
 * server holds, asked round after round) would otherwise take every walk's budget, and an item
 * behind them in sequence would wait for ever.
 */
import { sequenceDistance } from '../protocol/serial.js';

/** What a walk does with a due item: takes it out, keeps it due, or keeps it and stops. */
export type DueVisit = 'take' | 'keep' | 'stop';

interface Entry<T> {
  readonly item: T;
  readonly sequence: number;
  /** The item's round when the entry was pushed (read again when a walk keeps it). */
  readonly round: number;
  /** The item's admission this entry stands for: stale once the item left the queue. */
  readonly token: number;
}

/**
 * Items with a sequence, due by round (lowest first), then in serial order (all within 2^31 of each
 * other).
 */
export class DueQueue<T> {
  readonly #sequenceOf: (item: T) => number;
  readonly #roundOf: (item: T) => number;
  /** Items due → the token of their current admission. */
  readonly #tokens = new Map<T, number>();
  #heap: Entry<T>[] = [];
  #nextToken = 1;

  /**
   * `roundOf`: how many times the item was asked of every server (an integer that only grows while
   * the item is due or away); without it, every item is in round 0 and the order is serial only.
   */
  constructor(sequenceOf: (item: T) => number, roundOf: (item: T) => number = () => 0) {
    this.#sequenceOf = sequenceOf;
    this.#roundOf = roundOf;
  }

  /** Items due. */
  get size(): number {
    return this.#tokens.size;
  }

  has(item: T): boolean {
    return this.#tokens.has(item);
  }

  /** Makes an item due (nothing when it already is). */
  add(item: T): void {
    if (this.#tokens.has(item)) {
      return;
    }
    const token = this.#nextToken++;
    this.#tokens.set(item, token);
    this.#push({ item, sequence: this.#sequenceOf(item), round: this.#roundOf(item), token });
  }

  /** The item is no longer due. */
  delete(item: T): void {
    if (this.#tokens.delete(item) && this.#heap.length > 2 * this.#tokens.size + 64) {
      this.#rebuild();
    }
  }

  clear(): void {
    this.#tokens.clear();
    this.#heap = [];
  }

  /**
   * Visits the due items by round, oldest first within a round. `take` removes the item; `keep` leaves it due and goes on;
   * `stop` leaves it due and ends the walk. The visitor may add or delete other items: an item
   * added during the walk is not visited by it.
   */
  walk(visit: (item: T) => DueVisit): void {
    const kept: Entry<T>[] = [];
    while (this.#heap.length > 0) {
      const entry = this.#pop();
      if (entry === undefined) {
        break;
      }
      if (this.#tokens.get(entry.item) !== entry.token) {
        continue; // it left the queue (and perhaps came back under a newer entry)
      }
      const action = visit(entry.item);
      if (action === 'take') {
        if (this.#tokens.get(entry.item) === entry.token) {
          this.#tokens.delete(entry.item);
        }
        continue;
      }
      kept.push(entry);
      if (action === 'stop') {
        break;
      }
    }
    for (const entry of kept) {
      // The visitor may have begun the item's next round (it asked every server): kept, it waits
      // in that round's place.
      this.#push({ ...entry, round: this.#roundOf(entry.item) });
    }
  }

  /** True when a is due before b: an earlier round, or the same round and an older sequence. */
  static #before(a: Entry<unknown>, b: Entry<unknown>): boolean {
    if (a.round !== b.round) {
      return a.round < b.round;
    }
    return sequenceDistance(a.sequence, b.sequence) > 0;
  }

  #push(entry: Entry<T>): void {
    const heap = this.#heap;
    heap.push(entry);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const above = heap[parent];
      if (above === undefined || !DueQueue.#before(entry, above)) {
        break;
      }
      heap[i] = above;
      i = parent;
    }
    heap[i] = entry;
  }

  #pop(): Entry<T> | undefined {
    const heap = this.#heap;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) {
      return top;
    }
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = last;
      let at = i;
      const l = heap[left];
      if (l !== undefined && DueQueue.#before(l, smallest)) {
        smallest = l;
        at = left;
      }
      const r = heap[right];
      if (r !== undefined && DueQueue.#before(r, smallest)) {
        smallest = r;
        at = right;
      }
      if (at === i) {
        break;
      }
      heap[i] = smallest;
      i = at;
    }
    heap[i] = last;
    return top;
  }

  #rebuild(): void {
    const live = this.#heap.filter((entry) => this.#tokens.get(entry.item) === entry.token);
    this.#heap = [];
    for (const entry of live) {
      this.#push(entry);
    }
  }
}
