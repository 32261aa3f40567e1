/**
 * One hashed timer wheel per owner instead of a timer per packet: scheduling and cancelling are
 * O(1), and a single interval drives every deadline. Resolution is one tick.
 */
import assert from 'node:assert/strict';
import { timerWheelSlotCount, timerWheelTickMs } from '../limits.js';

/** A clock in milliseconds, injectable for tests. */
export type Clock = () => number;

/** Handle of a scheduled callback. */
export interface TimerHandle {
  cancel(): void;
}

interface Entry extends TimerHandle {
  deadlineMs: number;
  callback: () => void;
  cancelled: boolean;
}

/** Options of a wheel. */
export interface TimerWheelOptions {
  readonly tickMs?: number;
  readonly slotCount?: number;
  readonly clock?: Clock;
  /** When false the wheel does not start its own interval; call advance() (tests). */
  readonly autoStart?: boolean;
}

/** A timer wheel; close() drops every pending timer. */
export class TimerWheel implements Disposable {
  readonly #tickMs: number;
  readonly #slots: Entry[][];
  readonly #clock: Clock;
  #interval: NodeJS.Timeout | undefined;
  #cursorMs: number;
  #pending = 0;
  #closed = false;

  constructor(options: TimerWheelOptions = {}) {
    this.#tickMs = options.tickMs ?? timerWheelTickMs;
    const slotCount = options.slotCount ?? timerWheelSlotCount;
    assert.ok(this.#tickMs > 0);
    assert.ok(slotCount > 0);
    this.#slots = Array.from({ length: slotCount }, () => []);
    this.#clock = options.clock ?? (() => performance.now());
    this.#cursorMs = this.#clock();
    if (options.autoStart ?? true) {
      this.#interval = setInterval(() => this.advance(), this.#tickMs);
      this.#interval.unref();
    }
  }

  /** Timers not yet fired or cancelled. */
  get pending(): number {
    return this.#pending;
  }

  /** Calls callback once, no earlier than delayMs from now. */
  schedule(delayMs: number, callback: () => void): TimerHandle {
    assert.ok(!this.#closed, 'timer wheel is closed');
    const deadlineMs = this.#clock() + Math.max(0, delayMs);
    const entry: Entry = {
      deadlineMs,
      callback,
      cancelled: false,
      cancel: () => {
        if (!entry.cancelled) {
          entry.cancelled = true;
          this.#pending--;
        }
      },
    };
    this.#slotFor(deadlineMs).push(entry);
    this.#pending++;
    return entry;
  }

  #slotFor(deadlineMs: number): Entry[] {
    const index = Math.floor(deadlineMs / this.#tickMs) % this.#slots.length;
    const slot = this.#slots[index];
    assert.ok(slot !== undefined);
    return slot;
  }

  /** Fires every timer whose deadline has passed. Driven by the interval, or by hand in tests. */
  advance(): void {
    const now = this.#clock();
    const slotCount = this.#slots.length;
    let ticks = Math.floor(now / this.#tickMs) - Math.floor(this.#cursorMs / this.#tickMs);
    ticks = Math.min(ticks, slotCount - 1);
    let tickMs = this.#cursorMs;
    for (let i = 0; i <= ticks; i++, tickMs += this.#tickMs) {
      const slot = this.#slotFor(tickMs);
      for (const entry of slot.splice(0)) {
        if (entry.cancelled) {
          continue;
        }
        if (entry.deadlineMs <= now) {
          entry.cancelled = true;
          this.#pending--;
          entry.callback();
        } else {
          slot.push(entry);
        }
      }
    }
    this.#cursorMs = now;
  }

  /** Drops every timer and stops the interval. Idempotent. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#interval);
    this.#interval = undefined;
    for (const slot of this.#slots) {
      slot.length = 0;
    }
    this.#pending = 0;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
