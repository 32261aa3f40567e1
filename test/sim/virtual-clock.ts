/**
 * A discrete-event clock for the simulator. One Scheduler holds the event queue of the whole
 * simulated network, ordered by (virtual time, insertion order); each simulated host sees it
 * through a HostClock, which implements the roles' RoleClock with the host's own monotonic origin
 * and a wall-clock offset that a scenario can step. Roles are async, so after every event the
 * scheduler lets every pending promise settle before it takes the next one: the interleaving
 * depends on nothing but the event queue, and a seed replays exactly.
 */
import { createHash, type Hash } from 'node:crypto';
import type { RoleClock, Timer } from '../../src/net/runtime.js';

/** Thrown by the scheduler when the simulation stops making progress in virtual time. */
export class SimulationStalled extends Error {
  readonly code = 'GATECAST_SIM_STALLED';
}

interface Event {
  readonly atMs: number;
  readonly seq: number;
  readonly label: string;
  fn: (() => void) | undefined;
}

/** What the scheduler reports after each event (the invariant checker's hook). */
export type StepHook = (atMs: number, label: string) => void;

/** Events run at one virtual instant before the scheduler calls it a livelock. */
export const eventsAtOneInstantMax = 200_000;

/** Lets every pending promise continuation run (they all run before the next macrotask). */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/** The event queue of one simulation. */
export class Scheduler {
  readonly #heap: Event[] = [];
  #nowMs = 0;
  #seq = 0;
  #eventsRun = 0;
  #eventsAtNow = 0;
  #stepHooks: StepHook[] = [];
  #errors: unknown[] = [];
  #trace: Hash = createHash('sha256');

  /** Virtual milliseconds since the simulation began. */
  get nowMs(): number {
    return this.#nowMs;
  }

  /** Events run so far. */
  get eventsRun(): number {
    return this.#eventsRun;
  }

  /** Events still queued (cancelled ones included until they surface). */
  get pendingCount(): number {
    return this.#heap.length;
  }

  /** Exceptions thrown by event callbacks so far (a daemon must never throw from a callback). */
  get errors(): readonly unknown[] {
    return this.#errors;
  }

  /** Adds a line to the event trace (the digest two runs of one seed must agree on). */
  note(line: string): void {
    this.#trace.update(line);
    this.#trace.update('\n');
  }

  /** SHA-256 of the trace so far, hex. */
  traceDigest(): string {
    return this.#trace.copy().digest('hex');
  }

  /** Calls hook after every event, once its promises have settled. */
  onStep(hook: StepHook): void {
    this.#stepHooks.push(hook);
  }

  /** Queues fn at now + delayMs (not before now); returns a handle whose cancel() is idempotent. */
  schedule(delayMs: number, label: string, fn: () => void): Timer {
    const event: Event = { atMs: this.#nowMs + Math.max(0, delayMs), seq: this.#seq++, label, fn };
    this.#push(event);
    return {
      cancel: () => {
        event.fn = undefined;
      },
    };
  }

  /**
   * Runs events in order until the queue is empty or the next one is later than untilMs (or
   * stop() returns true after an event). Virtual time ends at untilMs when the queue ran dry.
   */
  async run(untilMs: number, stop?: () => boolean): Promise<void> {
    await settle();
    for (;;) {
      const next = this.#heap[0];
      if (next === undefined || next.atMs > untilMs) {
        break;
      }
      this.#pop();
      const fn = next.fn;
      if (fn === undefined) {
        continue;
      }
      next.fn = undefined;
      if (next.atMs > this.#nowMs) {
        this.#nowMs = next.atMs;
        this.#eventsAtNow = 0;
      }
      if (++this.#eventsAtNow > eventsAtOneInstantMax) {
        throw new SimulationStalled(
          `more than ${eventsAtOneInstantMax} events at t=${this.#nowMs} ms (last: ${next.label}): livelock`,
        );
      }
      this.#eventsRun++;
      this.note(`${this.#nowMs} ${next.label}`);
      try {
        fn();
      } catch (error) {
        this.#errors.push(error);
      }
      await settle();
      for (const hook of this.#stepHooks) {
        hook(this.#nowMs, next.label);
      }
      if (stop?.() === true) {
        return;
      }
    }
    if (this.#nowMs < untilMs && Number.isFinite(untilMs)) {
      this.#nowMs = untilMs;
    }
  }

  #push(event: Event): void {
    const heap = this.#heap;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(event, heap[parent] as Event)) {
        break;
      }
      heap[i] = heap[parent] as Event;
      i = parent;
    }
    heap[i] = event;
  }

  #pop(): void {
    const heap = this.#heap;
    const last = heap.pop() as Event;
    if (heap.length === 0) {
      return;
    }
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) {
        break;
      }
      const right = left + 1;
      const child = right < heap.length && before(heap[right] as Event, heap[left] as Event) ? right : left;
      if (!before(heap[child] as Event, last)) {
        break;
      }
      heap[i] = heap[child] as Event;
      i = child;
    }
    heap[i] = last;
  }
}

function before(a: Event, b: Event): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
}

/** Wall-clock time at virtual 0: 2025-11-24, the protocol's example timestamp. */
export const wallEpochMs = 1_764_000_000_000;

/**
 * The clock one simulated host (one boot of it) sees. Its monotonic time starts at a per-boot
 * origin like performance.now() does; its wall clock is the scheduler's time plus an offset the
 * scenario steps. kill() is a crash: every timer of the host is dropped and none is made again.
 */
export class HostClock implements RoleClock {
  readonly #scheduler: Scheduler;
  readonly #name: string;
  readonly #monotonicOriginMs: number;
  readonly #timers = new Set<Timer>();
  #wallOffsetMs: number;
  #dead = false;

  constructor(
    scheduler: Scheduler,
    name: string,
    options: { monotonicBaseMs?: number; wallOffsetMs?: number } = {},
  ) {
    this.#scheduler = scheduler;
    this.#name = name;
    this.#monotonicOriginMs = scheduler.nowMs - (options.monotonicBaseMs ?? 0);
    this.#wallOffsetMs = options.wallOffsetMs ?? 0;
  }

  /** The wall clock's offset from true time, in milliseconds. */
  get wallOffsetMs(): number {
    return this.#wallOffsetMs;
  }

  /** Timers pending on this host. */
  get timerCount(): number {
    return this.#timers.size;
  }

  /** True once kill() was called. */
  get dead(): boolean {
    return this.#dead;
  }

  /** Steps the wall clock (an NTP correction or an operator's mistake); monotonic time is untouched. */
  stepWall(deltaMs: number): void {
    this.#wallOffsetMs += deltaMs;
  }

  nowMs(): number {
    return this.#scheduler.nowMs - this.#monotonicOriginMs;
  }

  wallUs(): number {
    return Math.floor((wallEpochMs + this.#scheduler.nowMs + this.#wallOffsetMs) * 1000);
  }

  setTimeout(fn: () => void, delayMs: number): Timer {
    // Node runs a timeout of less than 1 ms after 1 ms; so does the simulation, so a role that
    // polls with setTimeout(0) moves virtual time as it would move real time.
    return this.#add(Math.max(1, Number.isFinite(delayMs) ? delayMs : 1), `${this.#name}:timeout`, fn, false);
  }

  setInterval(fn: () => void, periodMs: number): Timer {
    return this.#add(
      Math.max(1, Number.isFinite(periodMs) ? periodMs : 1),
      `${this.#name}:interval`,
      fn,
      true,
    );
  }

  defer(fn: () => void): Timer {
    // Queued at the current instant after everything already queued for it.
    return this.#add(0, `${this.#name}:defer`, fn, false);
  }

  /** Drops every timer of the host; later calls make timers that never fire. */
  kill(): void {
    this.#dead = true;
    for (const timer of this.#timers) {
      timer.cancel();
    }
    this.#timers.clear();
  }

  #add(delayMs: number, label: string, fn: () => void, repeat: boolean): Timer {
    if (this.#dead) {
      return { cancel: () => undefined };
    }
    let inner: Timer | undefined;
    const handle: Timer = {
      cancel: () => {
        inner?.cancel();
        this.#timers.delete(handle);
      },
    };
    const arm = () => {
      inner = this.#scheduler.schedule(delayMs, label, () => {
        if (repeat) {
          arm();
        } else {
          this.#timers.delete(handle);
        }
        fn();
      });
    };
    this.#timers.add(handle);
    arm();
    return handle;
  }
}
