/**
 * A Map's entries, oldest first (insertion order), in amortized constant time: for the bounded Maps
 * that roles use as queues (hashes a signed session vouched for, a retransmit buffer's packets, the
 * repairs answered to a requester), which drop their oldest entry for each new one once full.
 *
 * `map.keys().next()` (or a new `for … of`) starts at the first slot of the Map's table each time
 * and steps over every entry deleted since the table was last rebuilt. A Map used as a queue deletes
 * at its front, so at 65,536 entries each such call stepped over tens of thousands of deleted slots:
 * about 17 µs, paid for every packet once the Map was full.
 *
 * Nor is one Map iterator kept alive between calls: V8 keeps every table a Map outgrows or rebuilds
 * for as long as an iterator made on it has not stepped past the change, with every key and value
 * those tables held. A Map that churns below its bound (held DATA released by its manifests) while
 * such an iterator waits keeps every datagram it ever held.
 *
 * So the role tells this list of each entry it adds (`added`, after a `set` of a key not in the
 * Map, or a `delete` then `set`), and the list keeps them in that order. An entry listed is taken
 * as the Map's oldest only while the Map still holds that key with that very value: one deleted, or
 * deleted and set again (which moves it to the end, where it is listed again), is skipped. The
 * values must therefore be objects, a new one each time an entry is set again, and never replaced
 * in place by a `set` of a key still in the Map (change the object instead). The entries skipped are
 * bounded: past twice the Map's size (and some), the list is made again from the Map.
 */
export class OldestFirst<K, V> {
  readonly #map: Map<K, V>;
  /** Entries in the order they were added; those before #head are gone. Some may be stale. */
  #listed: Array<[K, V] | undefined> = [];
  #head = 0;

  constructor(map: Map<K, V>) {
    this.#map = map;
    for (const entry of map) {
      this.#listed.push(entry);
    }
  }

  /** Lists an entry just set at the end of the Map (a new key, or one deleted and set again). */
  added(key: K, value: V): void {
    this.#listed.push([key, value]);
    if (this.#listed.length - this.#head > 2 * this.#map.size + listedSlackMin) {
      // Mostly entries deleted behind a live front: list the Map's own entries again (O(size),
      // once per at least size + listedSlackMin entries added).
      this.#listed = [...this.#map.entries()];
      this.#head = 0;
    }
  }

  /** The oldest entry, or undefined when the Map is empty. Nothing is removed. */
  peek(): [K, V] | undefined {
    const listed = this.#listed;
    while (this.#head < listed.length) {
      const entry = listed[this.#head] as [K, V];
      if (this.#map.get(entry[0]) === entry[1] && this.#map.has(entry[0])) {
        return entry;
      }
      listed[this.#head] = undefined; // let its value go
      this.#head++;
      if (this.#head >= listedSlackMin && this.#head * 2 >= listed.length) {
        this.#listed = listed.slice(this.#head);
        this.#head = 0;
        return this.peek();
      }
    }
    return undefined;
  }

  /** Removes the oldest entry and returns it, or undefined when the Map is empty. */
  shift(): [K, V] | undefined {
    const oldest = this.peek();
    if (oldest !== undefined) {
      this.#map.delete(oldest[0]);
      this.#listed[this.#head] = undefined;
      this.#head++;
    }
    return oldest;
  }
}

/** Entries listed beyond twice the Map's size before the list is made again from the Map. */
const listedSlackMin = 64;
