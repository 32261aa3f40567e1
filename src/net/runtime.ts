/**
 * What a role needs from the world, injected so that a test can hand in its own: a clock with
 * timers, a transport that opens sockets, and a source of randomness. Production uses the system
 * clock and node:dgram; the seeded simulator (test/sim/) uses a virtual clock and an in-memory
 * network, and replays any run from its seed.
 */
import { randomInt } from 'node:crypto';
import type { Endpoint } from './address.js';
import { nowMicroseconds } from './clock.js';
import {
  type ControlSocket,
  type DatagramHandler,
  openControlSocket,
  openReceiverSocket,
  openSenderSocket,
  type ReceiverSocket,
  type ReceiverSocketOptions,
  type SenderSocket,
  type SenderSocketOptions,
} from './udp.js';

/** A scheduled callback; cancel() is idempotent. */
export interface Timer {
  cancel(): void;
}

/** Time and timers. Monotonic time measures durations; the wall clock stamps packets. */
export interface RoleClock {
  /** Milliseconds on a monotonic clock (never steps). */
  nowMs(): number;
  /** Microseconds since 1970 on the wall clock, read afresh on every call (follows clock steps). */
  wallUs(): number;
  /** Calls fn once, no earlier than delayMs from now. */
  setTimeout(fn: () => void, delayMs: number): Timer;
  /** Calls fn every periodMs until cancelled. */
  setInterval(fn: () => void, periodMs: number): Timer;
  /** Calls fn after the current turn, once pending I/O has been handled (setImmediate). */
  defer(fn: () => void): Timer;
}

/** Opens sockets: node:dgram in production, an in-memory network in the simulator. */
export interface Transport {
  openReceiver(options: ReceiverSocketOptions, onDatagram: DatagramHandler): Promise<ReceiverSocket>;
  openSender(options: SenderSocketOptions): Promise<SenderSocket>;
  openControl(listen: Endpoint, onDatagram: DatagramHandler): Promise<ControlSocket>;
}

/** Everything a role takes from outside besides its settings. */
export interface Runtime {
  readonly clock: RoleClock;
  readonly transport: Transport;
  /** A 32-bit unsigned random integer that is not 0 (ids, incarnations). */
  readonly randomId: () => number;
  /** A float in [0, 1) (jitter, NACK delays). */
  readonly random: () => number;
}

/** The system clock: performance.now() for durations, src/net/clock.ts for the wall clock. */
export const systemClock: RoleClock = {
  nowMs: () => performance.now(),
  wallUs: nowMicroseconds,
  setTimeout(fn, delayMs) {
    const handle = setTimeout(fn, Math.max(0, delayMs));
    return { cancel: () => clearTimeout(handle) };
  },
  setInterval(fn, periodMs) {
    const handle = setInterval(fn, periodMs);
    return { cancel: () => clearInterval(handle) };
  },
  defer(fn) {
    const handle = setImmediate(fn);
    return { cancel: () => clearImmediate(handle) };
  },
};

/** node:dgram sockets. */
export const udpTransport: Transport = {
  openReceiver: openReceiverSocket,
  openSender: openSenderSocket,
  openControl: openControlSocket,
};

/** The production runtime. */
export const systemRuntime: Runtime = {
  clock: systemClock,
  transport: udpTransport,
  randomId: () => randomInt(1, 0xffff_ffff),
  random: Math.random,
};

/**
 * Timers that belong to one owner: every timer made through it is cancelled by close(), so no
 * callback of a closed role ever runs (a send on a closed socket, a state change after the end).
 */
export class OwnedTimers {
  readonly #clock: RoleClock;
  readonly #live = new Set<Timer>();
  #closed = false;

  constructor(clock: RoleClock) {
    this.#clock = clock;
  }

  /** Like RoleClock.setTimeout; a no-op once closed. */
  setTimeout(fn: () => void, delayMs: number): Timer {
    return this.#track((done) =>
      this.#clock.setTimeout(() => {
        done();
        fn();
      }, delayMs),
    );
  }

  /** Like RoleClock.setInterval; a no-op once closed. */
  setInterval(fn: () => void, periodMs: number): Timer {
    return this.#track(() => this.#clock.setInterval(fn, periodMs));
  }

  /** Like RoleClock.defer; a no-op once closed. */
  defer(fn: () => void): Timer {
    return this.#track((done) =>
      this.#clock.defer(() => {
        done();
        fn();
      }),
    );
  }

  /** Timers still pending. */
  get size(): number {
    return this.#live.size;
  }

  /** Cancels every pending timer; later calls make no timers. Idempotent. */
  close(): void {
    this.#closed = true;
    for (const timer of this.#live) {
      timer.cancel();
    }
    this.#live.clear();
  }

  #track(start: (done: () => void) => Timer): Timer {
    if (this.#closed) {
      return { cancel: () => undefined };
    }
    let inner: Timer | undefined;
    const handle: Timer = {
      cancel: () => {
        inner?.cancel();
        this.#live.delete(handle);
      },
    };
    this.#live.add(handle);
    inner = start(() => this.#live.delete(handle));
    return handle;
  }
}
