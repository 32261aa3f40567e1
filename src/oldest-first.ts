/**
 * A Map's entries, oldest first (insertion order), in constant time: for the bounded Maps that roles
 * use as queues (hashes a signed session vouched for, a retransmit buffer's packets, the repairs
 * answered to a requester), which drop their oldest entry for each new one once full.
 *
 * `map.keys().next()` (or a new `for … of`) starts at the first slot of the Map's table each time
 * and steps over every entry deleted since the table was last rebuilt. A Map used as a queue deletes
 * at its front, so at 65,536 entries each such call stepped over tens of thousands of deleted slots:
 * about 17 µs, paid for every packet once the Map was full. One live iterator, kept between calls,
 * goes on from where it stopped instead (a Map iterator sees the entries added after it was made,
 * and skips the ones deleted).
 *
 * Every entry the iterator has passed has been taken with shift(), or deleted, or moved to the end
 * by a delete and set (the iterator meets it again there), so the oldest entry is either the one it
 * rests on or the next one it yields. The values must be objects (or at least differ when an entry
 * is set again): an entry deleted and set again with an equal primitive value cannot be told from
 * one left where it was.
 */
export class OldestFirst<K, V> {
  readonly #map: Map<K, V>;
  #entries: IterableIterator<[K, V]> | undefined;
  /** The entry the iterator rests on: yielded, not yet taken. */
  #current: [K, V] | undefined;

  constructor(map: Map<K, V>) {
    this.#map = map;
  }

  /** The oldest entry, or undefined when the Map is empty. Nothing is removed. */
  peek(): [K, V] | undefined {
    const current = this.#current;
    this.#current = undefined;
    if (current !== undefined && this.#map.has(current[0])) {
      if (this.#map.get(current[0]) === current[1]) {
        // Still there with its value: not deleted, nor deleted and set again with another value.
        this.#current = current;
        return current;
      }
      // Set again with another value: in its place (a set alone), or at the end (a delete, then a
      // set). Only the Map's own order tells which: start again at its front (rare; O(deleted)).
      this.#entries = undefined;
    }
    if (this.#map.size === 0) {
      return undefined; // not stepped on: a finished iterator would stay finished for good
    }
    let step = this.#entries?.next();
    if (step === undefined || step.done === true) {
      // Only a Map emptied and filled again between two calls gets here: start at its front.
      this.#entries = this.#map.entries();
      step = this.#entries.next();
    }
    if (step.done === true) {
      return undefined;
    }
    this.#current = step.value;
    return step.value;
  }

  /** Removes the oldest entry and returns it, or undefined when the Map is empty. */
  shift(): [K, V] | undefined {
    const oldest = this.peek();
    if (oldest !== undefined) {
      this.#map.delete(oldest[0]);
      this.#current = undefined;
    }
    return oldest;
  }
}
