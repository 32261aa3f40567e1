/**
 * A clock a test moves by hand: nowMs() and wallUs() return what the test set, timers run when
 * advance() passes their time. For unit tests of parts that take a RoleClock.
 */
import type { RoleClock, Timer } from '../../src/net/runtime.js';

interface Pending {
  atMs: number;
  fn: () => void;
  periodMs: number | undefined;
  cancelled: boolean;
}

/** A RoleClock moved by advance(). */
export class ManualClock implements RoleClock {
  #nowMs = 1_000;
  /** Wall time at monotonic 0: the wall clock moves with advance(). */
  readonly #wallOriginMs = Date.now() - 1_000;
  readonly #pending: Pending[] = [];

  nowMs(): number {
    return this.#nowMs;
  }

  wallUs(): number {
    return Math.round((this.#wallOriginMs + this.#nowMs) * 1000);
  }

  setTimeout(fn: () => void, delayMs: number): Timer {
    return this.#add(fn, delayMs, undefined);
  }

  setInterval(fn: () => void, periodMs: number): Timer {
    return this.#add(fn, periodMs, periodMs);
  }

  defer(fn: () => void): Timer {
    return this.#add(fn, 0, undefined);
  }

  /** Moves time on by ms, running every timer due on the way, in order (bounded). */
  advance(ms: number): void {
    const until = this.#nowMs + ms;
    for (let guard = 0; guard < 100_000; guard++) {
      const next = this.#pending
        .filter((p) => !p.cancelled && p.atMs <= until)
        .sort((a, b) => a.atMs - b.atMs)[0];
      if (next === undefined) {
        break;
      }
      this.#nowMs = Math.max(this.#nowMs, next.atMs);
      if (next.periodMs === undefined) {
        next.cancelled = true;
      } else {
        next.atMs += next.periodMs;
      }
      next.fn();
    }
    this.#nowMs = until;
  }

  #add(fn: () => void, delayMs: number, periodMs: number | undefined): Timer {
    const pending: Pending = { atMs: this.#nowMs + Math.max(0, delayMs), fn, periodMs, cancelled: false };
    this.#pending.push(pending);
    return {
      cancel: () => {
        pending.cancelled = true;
      },
    };
  }
}
