/**
 * The repair server's reorder/emitter (docs/architecture.md, "Repair server"): re-emits a run's
 * held DATA on S2 in sequence order, byte for byte, waits at a gap until it is filled or given up,
 * passes a gap only when given up (never silently: the owner counts it unrecoverable), and ends the
 * run once everything before its END is out and the END's grace passed with nothing contradicting
 * it. It owns no socket and no counter: it sends through the transport it is given and reports
 * what it did to an event sink.
 */
import assert from 'node:assert/strict';
import type { Timer } from '../net/runtime.js';
import { sequenceDistance } from '../protocol/serial.js';
import type { SessionWindow } from '../protocol/session-window.js';

/** What the emitter needs of a run: its window, its gaps' states, its END and its frontier. */
export interface EmitterRun {
  readonly window: SessionWindow;
  readonly nacks: {
    state(sequence: number): { readonly firstMs: number; readonly unrecoverable: boolean } | undefined;
  };
  /** The END's sequence, once believed. */
  readonly endSequence: number | undefined;
  /** Ends the run once the END's grace has passed (set by the emitter, cancelled by the owner). */
  endTimer: Timer | undefined;
  /** Resumes a paced re-emission (set by the emitter, cancelled by the owner when the run ends). */
  paceTimer: Timer | undefined;
  /** Every sequence before it is known from S1 to exist. */
  readonly frontier: number;
}

/** What the emitter did, for the owner's counters and its other parts. */
export type EmitterEvent<R extends EmitterRun> =
  /** A DATA datagram went out on S2. */
  | { readonly type: 'emitted'; readonly run: R; readonly datagram: Buffer }
  /** The delivery point is known from S1 to exist and is not held, with no gap for it yet: ask. */
  | { readonly type: 'ask'; readonly run: R; readonly sequence: number }
  /** A gap was passed (given up, or forced by the hold's bound): unrecoverable, never silently. */
  | { readonly type: 'passed'; readonly run: R; readonly sequence: number }
  /** Everything before END is out and its grace passed with nothing contradicting it. */
  | { readonly type: 'complete'; readonly run: R };

/** Parts and settings of an emitter. */
export interface ReorderEmitterOptions<R extends EmitterRun> {
  /** Monotonic milliseconds. */
  readonly clock: { nowMs(): number };
  /** Sends one datagram on S2. */
  readonly transport: { send(datagram: Buffer): void };
  /** The owner's timers (cleared in its close()). */
  readonly setTimeout: (fn: () => void, delayMs: number) => Timer;
  /** undefined: reliable (wait as long as a gap may be repaired); a number: the latency budget. */
  readonly latencyMs: number | undefined;
  /** How long an END must stand, with nothing contradicting it, before the run is complete. */
  readonly endGraceMs: number;
  /**
   * Paces the in-order re-emission of DATA: datagrams per second allowed now, taken in bursts of at
   * most `burstPackets` (src/limits.ts, s2PaceArrivalFactor). Undefined: unpaced.
   */
  readonly pace?: { perSecond(nowMs: number): number; readonly burstPackets: number } | undefined;
  readonly events: (event: EmitterEvent<R>) => void;
}

/** Creates the reorder/emitter of a repair server. */
export function createReorderEmitter<R extends EmitterRun>(
  options: ReorderEmitterOptions<R>,
): ReorderEmitter<R> {
  return new ReorderEmitter(options);
}

/** Re-emits runs in order (one emitter serves every run of a repair server, one at a time). */
export class ReorderEmitter<R extends EmitterRun> {
  readonly #options: ReorderEmitterOptions<R>;
  /** Paced re-emission: datagrams that may leave now, and when it was last refilled. */
  #creditPackets: number;
  #refilledAtMs: number;

  constructor(options: ReorderEmitterOptions<R>) {
    assert.ok(options.endGraceMs >= 0);
    assert.ok(
      options.pace === undefined || options.pace.burstPackets >= 1,
      'a pace needs a burst of at least 1',
    );
    this.#options = options;
    this.#creditPackets = options.pace?.burstPackets ?? 0;
    this.#refilledAtMs = options.clock.nowMs();
  }

  /**
   * Paced: true when one more datagram may leave now; otherwise schedules the run's re-emission
   * for when it may (once) and returns false.
   */
  #mayEmit(run: R, nowMs: number): boolean {
    const { pace } = this.#options;
    if (pace === undefined) {
      return true;
    }
    const perMs = Math.max(pace.perSecond(nowMs), 1) / 1000;
    this.#creditPackets = Math.min(
      pace.burstPackets,
      this.#creditPackets + Math.max(0, nowMs - this.#refilledAtMs) * perMs,
    );
    this.#refilledAtMs = nowMs;
    if (this.#creditPackets >= 1) {
      this.#creditPackets -= 1;
      return true;
    }
    run.paceTimer ??= this.#options.setTimeout(
      () => {
        run.paceTimer = undefined;
        this.emit(run);
      },
      Math.max(1, Math.ceil((1 - this.#creditPackets) / perMs)),
    );
    return false;
  }

  /** Sends one datagram of the run on S2 (DATA, in order, or one the run re-emits as it came). */
  send(run: R, datagram: Buffer): void {
    this.#options.transport.send(datagram);
    this.#options.events({ type: 'emitted', run, datagram });
  }

  /** Re-emits in order what is there; passes gaps only when given up. */
  emit(run: R): void {
    const { window } = run;
    const now = this.#options.clock.nowMs();
    for (;;) {
      if (run.endSequence !== undefined && window.base === run.endSequence) {
        run.endTimer ??= this.#options.setTimeout(() => {
          if (run.endSequence !== undefined && run.window.base === run.endSequence) {
            this.#options.events({ type: 'complete', run });
          }
        }, this.#options.endGraceMs);
        return;
      }
      if (window.has(window.base) && !this.#mayEmit(run, now)) {
        return; // paced: the rest leaves when the run's pace timer fires
      }
      const datagram = window.take();
      if (datagram !== undefined) {
        this.send(run, datagram);
        continue;
      }
      if (window.outstanding === 0) {
        return;
      }
      const entry = run.nacks.state(window.base);
      if (entry === undefined) {
        // Known from S1 to exist and not here: ask for it. Only REPAIRs beyond it (for other
        // servers' gaps): it may still be waiting in our S1 socket, so wait for S1 to tell.
        if (sequenceDistance(window.base, run.frontier) > 0) {
          this.#options.events({ type: 'ask', run, sequence: window.base });
        }
        return;
      }
      // Sequences known only from a HEARTBEAT (no DATA after them yet, no END) are never given
      // up while the run is live: a forged HEARTBEAT must not make genuine DATA look old.
      const evidenced = window.hasDataAfter(window.base) || run.endSequence !== undefined;
      const { latencyMs } = this.#options;
      const overBudget = latencyMs !== undefined && now - entry.firstMs >= latencyMs;
      if (evidenced && (entry.unrecoverable || overBudget)) {
        this.#pass(run);
        continue;
      }
      return;
    }
  }

  /**
   * The hold is full: makes room at the delivery point. A gap there is given up; a packet held
   * there (waiting for its pace) leaves now, ahead of its pace, since holding it would lose what
   * arrives. Then emits what follows as the pace allows.
   */
  forcePassOldest(run: R): void {
    const { window } = run;
    if (window.has(window.base)) {
      const datagram = window.take();
      if (datagram !== undefined) {
        this.send(run, datagram);
      }
    } else if (window.outstanding > 0) {
      this.#pass(run);
    }
    this.emit(run);
  }

  #pass(run: R): void {
    const sequence = run.window.base;
    this.#options.events({ type: 'passed', run, sequence });
    run.window.skip();
  }
}
