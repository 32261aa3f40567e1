/**
 * The rate of a count that only grows (datagrams that arrived for a run), over about the last
 * second, from samples taken about every 100 ms as it is read; and the highest such rate seen since
 * it began. The repair server bounds its NACKs by it and paces its re-emission on S2 by it.
 */
export class ArrivalRate {
  readonly #count: () => number;
  /** (time, count) samples, about every 100 ms, over the last second. */
  readonly #samples: Array<{ atMs: number; count: number }> = [];
  #peakPerSecond = 0;

  constructor(count: () => number, nowMs: number) {
    this.#count = count;
    this.#samples.push({ atMs: nowMs, count: count() });
  }

  /** Arrivals per second over about the last second (0 before 100 ms of samples). */
  perSecond(nowMs: number): number {
    const count = this.#count();
    const last = this.#samples[this.#samples.length - 1];
    if (last === undefined || nowMs - last.atMs >= 100) {
      this.#samples.push({ atMs: nowMs, count });
    }
    while (this.#samples.length > 2 && nowMs - (this.#samples[1]?.atMs ?? nowMs) >= 1000) {
      this.#samples.shift();
    }
    const oldest = this.#samples[0];
    const spanMs = oldest === undefined ? 0 : Math.max(nowMs - oldest.atMs, 100);
    const rate = oldest === undefined ? 0 : ((count - oldest.count) * 1000) / spanMs;
    // A peak counts only over a span of at least half a second: a burst of a few packets in the
    // first 100 ms is no rate.
    if (spanMs >= 500 && rate > this.#peakPerSecond) {
      this.#peakPerSecond = rate;
    }
    return rate;
  }

  /** The highest rate over a span of at least half a second since it began (reads it now). */
  peakPerSecond(nowMs: number): number {
    this.perSecond(nowMs);
    return this.#peakPerSecond;
  }

  /**
   * The rate now or the peak, whichever is higher: what a pace follows, so that a run's first half
   * second, before it has a peak, is paced at the rate it arrives at and not at a floor.
   */
  highestPerSecond(nowMs: number): number {
    return Math.max(this.perSecond(nowMs), this.#peakPerSecond);
  }
}
