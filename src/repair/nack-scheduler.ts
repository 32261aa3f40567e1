/**
 * The repair server's NACK scheduler (docs/architecture.md, "Repair server", the NACK scheduler
 * part): the gaps of one run, when each is NACKed and to which retransmit server, the timeouts and
 * "not held" answers that move a gap on to the next server or to another round, and when a gap is
 * given up (docs/protocol.md, "NACK" and "REPAIR"). It keeps no socket and no clock of its own:
 * time, randomness, timers and the sending of a NACK are injected, and what happens is told to an
 * event sink, so a test drives it with a fake clock.
 */
import {
  liveServerWaitMsMax,
  nackAttemptsMax,
  nackBudgetBurstMs,
  nackBudgetRetryMs,
  nackPacketsPerArrival,
  nackPacketsPerSecondMin,
  nackRangePacketsMax,
  nackRangesMax,
  nackTimeoutMsInitial,
  nackTimeoutMsMax,
  nackWindowOutcomeWeight,
  nackWindowPacketsInitial,
  nackWindowPacketsMax,
  nackWindowPacketsMin,
  nackWindowTimeoutShareMax,
  notHeldRetryMsInitial,
  reliableNotHeldWaitMsMax,
} from '../limits.js';
import type { Timer } from '../net/runtime.js';
import type { TimerHandle } from '../net/timer-wheel.js';
import type { SequenceRange } from '../protocol/control.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';
import { ArrivalRate } from './arrival-rate.js';
import { DueQueue } from './due-queue.js';
import type { RankedServer, ServerRanking } from './server-ranking.js';

/** What the scheduler tells its owner (counters, and when the emitter should look again). */
export type NackEvent =
  /** A new gap (to be NACKed after a random delay). */
  | { readonly type: 'gap'; readonly sequence: number }
  /** A gap withdrawn: an END showed the sequence never existed. */
  | { readonly type: 'gap-withdrawn'; readonly sequence: number }
  /** One NACK datagram sent, naming `packets` sequences. */
  | { readonly type: 'nack-sent'; readonly packets: number }
  /** A NACK went unanswered within its timeout. */
  | { readonly type: 'timeout'; readonly sequence: number }
  /**
   * A gap was given up (delta 1, with the reason), or one given up arrived or was withdrawn after
   * all (delta -1, with the reason it had been given up for).
   */
  | {
      readonly type: 'unrecoverable';
      readonly sequence: number;
      readonly delta: 1 | -1;
      readonly reason: UnrecoverableReason;
    }
  /** A gap was given up by a timeout: the emitter may pass it now. */
  | { readonly type: 'gave-up'; readonly sequence: number };

/**
 * Why a gap was given up (the repair server's status counts each): `not-held`, every server showed
 * it had passed the packet and answered "not held"; `no-live-server`, no server that asked was
 * heard from; `live-server-wait`, servers heard from stayed silent past liveServerWaitMsMax (only
 * with a latency budget: a reliable server keeps asking a live server); `passed`, the emitter went
 * past it (the latency budget, or the hold was full); `idle`, the run fell silent before it came.
 */
export type UnrecoverableReason = 'not-held' | 'no-live-server' | 'live-server-wait' | 'passed' | 'idle';

/** What the owner learns when a gap's packet arrives. */
export interface GapFilled {
  /** The server last asked for it, if any. */
  readonly server: RankedServer | undefined;
  /** Whether it was asked only once (Karn's rule: only then does the answer measure a round trip). */
  readonly firstNack: boolean;
  /** Monotonic time the last NACK for it was sent. */
  readonly sentAtMs: number;
  /** Whether it had been given up (it came after all). */
  readonly wasUnrecoverable: boolean;
}

/** Components of a NACK scheduler. */
export interface NackSchedulerOptions {
  /** Monotonic milliseconds. */
  readonly nowMs: () => number;
  /** A float in [0, 1): the NACK delay's jitter. */
  readonly random: () => number;
  /** Schedules on the owner's timer wheel. */
  readonly schedule: (delayMs: number, fn: () => void) => TimerHandle;
  /** Runs fn after the current turn (the owner's timers: cleared in its close()). */
  readonly defer: (fn: () => void) => Timer;
  /** The retransmit servers, best first. */
  readonly servers: ServerRanking;
  /** Whether a server has been heard from (its id is known): a slow one, not a gone one. */
  readonly isAlive: (server: RankedServer) => boolean;
  /**
   * Sends one NACK for `ranges` (at most nackRangesMax, each at most nackRangePacketsMax) to a
   * server; `again` when every sequence in it was NACKed before (the NACK's again flag).
   */
  readonly sendNack: (server: RankedServer, ranges: readonly SequenceRange[], again: boolean) => void;
  /** Where the run's delivery point is: NACKs name the oldest gaps first. */
  readonly base: () => number;
  /** Largest random delay before a new gap is NACKed. */
  readonly nackDelayMsMax: number;
  /**
   * Reliable mode (no latency budget): a gap is given up only when no live server can serve it —
   * every server proved it does not hold it, or none is alive — never because a live one is slow.
   */
  readonly reliable?: boolean | undefined;
  /**
   * Datagrams (DATA and REPAIR) that arrived for the run so far, a count that only grows: NACKs
   * are bounded by what arrives (docs/architecture.md, "Pacing repairs"). Without it, unbounded.
   */
  readonly arrivals?: (() => number) | undefined;
  readonly events: (event: NackEvent) => void;
}

/**
 * The NACK budget of a run: packets it may NACK, refilled at nackPacketsPerArrival per datagram
 * that arrived over about the last second plus nackPacketsPerSecondMin, capped at nackBudgetBurstMs
 * of that rate. A storm of repeated NACKs into an edge that drops the answers thus slows to what
 * the edge passes, and the answers it would have caused are never sent.
 */
class NackBudget {
  readonly #arrivals: ArrivalRate;
  #creditPackets: number;
  #refilledAtMs: number;

  constructor(arrivals: () => number, nowMs: number) {
    this.#arrivals = new ArrivalRate(arrivals, nowMs);
    this.#refilledAtMs = nowMs;
    this.#creditPackets = (nackPacketsPerSecondMin * nackBudgetBurstMs) / 1000;
  }

  /** Packets allowed per second now. */
  perSecond(nowMs: number): number {
    return nackPacketsPerSecondMin + nackPacketsPerArrival * this.#arrivals.perSecond(nowMs);
  }

  /** Credit in packets now (refilled). */
  credit(nowMs: number): number {
    const perMs = this.perSecond(nowMs) / 1000;
    this.#creditPackets = Math.min(
      Math.max(perMs * nackBudgetBurstMs, 1),
      this.#creditPackets + (nowMs - this.#refilledAtMs) * perMs,
    );
    this.#refilledAtMs = nowMs;
    return this.#creditPackets;
  }

  /** Takes `packets` of credit. */
  take(packets: number): void {
    this.#creditPackets -= packets;
  }

  /** Milliseconds until one packet of credit is there. */
  waitMs(nowMs: number): number {
    const perMs = this.perSecond(nowMs) / 1000;
    return Math.max(1, Math.ceil((1 - this.#creditPackets) / perMs));
  }
}

interface Gap {
  readonly sequence: number;
  readonly firstMs: number;
  /** NACKs that went unanswered, or that a server answered "not held" when it had passed the packet. */
  attempts: number;
  /** "Not held" answers from servers not yet shown to have passed the packet (they may still get it). */
  notYet: number;
  readonly tried: Set<string>;
  /**
   * Rounds begun again: how many times every server had been asked (tried was cleared). Due gaps
   * are NACKed by round first, so a gap asked round after round never holds back one not yet asked.
   */
  rounds: number;
  /** Servers that answered "not held" when they had shown they were past the packet. */
  readonly provenBy: Set<string>;
  /** Servers that answered "not held" at all (proven or not). */
  readonly notHeldBy: Set<string>;
  server: RankedServer | undefined;
  /** NACKs sent for it so far. */
  nacks: number;
  sentAtMs: number;
  timer: TimerHandle | undefined;
  /** The server whose answer it waits on (it takes one place of that server's NACK window). */
  inFlight: RankedServer | undefined;
  unrecoverable: boolean;
  reason: UnrecoverableReason | undefined;
}

/**
 * Per server, the packets a run may have NACKed and not yet answered: it opens by one per answer
 * (doubling per round trip) up to the size at its last halving, by one per round trip past it, and
 * halves on a timeout (at most once per timeout period; RFC 5681's slow start and congestion
 * avoidance) while more than nackWindowTimeoutShareMax of the recent NACKed packets timed out (an
 * answer lost at random on a lossy edge is not the server falling behind), so that a burst of thousands of gaps
 * is asked for in what the server answers within its timeout — a retransmit server rate-limits its
 * answers and drops what is over, and a busy host reads its answers late — not all at once.
 */
interface NackWindow {
  packets: number;
  inFlight: number;
  decreasedAtMs: number;
  /** Past it (the size at the last halving) the window opens by one per window of answers, not per answer. */
  threshold: number;
  /** Monotonic time of the server's last answer with a packet (or of the window's start). */
  answeredAtMs: number;
  /** Moving average of the share of NACKed packets that timed out (0: all answered). */
  timeoutShare: number;
}

/** The gaps of one run and their NACKs. close() cancels every timer it made. */
export class NackScheduler {
  readonly #options: NackSchedulerOptions;
  readonly #gaps = new Map<number, Gap>();
  /**
   * Gaps due for a NACK, by round, then oldest first: a flush walks them in order without sorting
   * them again, and a gap no server holds, asked again and again, never takes the budget of the
   * gaps that have not had their turn (a held packet behind it would otherwise wait until the run
   * ended and be given up).
   */
  readonly #due = new DueQueue<Gap>(
    (gap) => gap.sequence,
    // A gap every server was asked for (its last answer a timeout) waits in the round it begins next.
    (gap) => gap.rounds + (gap.tried.size >= this.#options.servers.size ? 1 : 0),
  );
  /** Gaps whose NACK timed out: decided after the owner's sockets were read (answers may be waiting there). */
  readonly #expired = new Set<Gap>();
  readonly #windows = new Map<RankedServer, NackWindow>();
  #flush: Timer | undefined;
  /** A flush waiting for NACK budget. */
  #budgetWait: TimerHandle | undefined;
  readonly #budget: NackBudget | undefined;
  #closed = false;

  constructor(options: NackSchedulerOptions) {
    this.#options = options;
    this.#budget =
      options.arrivals === undefined ? undefined : new NackBudget(options.arrivals, options.nowMs());
  }

  /** Due gaps waiting for NACK budget (or for the current turn to end). */
  get dueCount(): number {
    return this.#due.size;
  }

  /** Gaps open (given up ones included until they are passed). */
  get size(): number {
    return this.#gaps.size;
  }

  /** Whether `sequence` is a gap. */
  has(sequence: number): boolean {
    return this.#gaps.has(sequence);
  }

  /** Per server: its NACK window and the packets NACKed to it and not answered yet (for the status). */
  windows(): Array<{ readonly server: RankedServer; readonly packets: number; readonly inFlight: number }> {
    return [...this.#windows].map(([server, window]) => ({
      server,
      packets: Math.floor(window.packets),
      inFlight: window.inFlight,
    }));
  }

  /** A gap's state for the emitter: when it was found and whether it was given up. */
  state(sequence: number): { readonly firstMs: number; readonly unrecoverable: boolean } | undefined {
    return this.#gaps.get(sequence);
  }

  /** A new gap: NACKed after a random delay of at most nackDelayMsMax. No-op if known. */
  add(sequence: number): void {
    if (this.#closed || this.#gaps.has(sequence)) {
      return;
    }
    const gap: Gap = {
      sequence,
      firstMs: this.#options.nowMs(),
      attempts: 0,
      notYet: 0,
      tried: new Set(),
      rounds: 0,
      provenBy: new Set(),
      notHeldBy: new Set(),
      server: undefined,
      nacks: 0,
      sentAtMs: 0,
      timer: undefined,
      inFlight: undefined,
      unrecoverable: false,
      reason: undefined,
    };
    this.#gaps.set(sequence, gap);
    gap.timer = this.#options.schedule(this.#options.random() * this.#options.nackDelayMsMax, () =>
      this.#markDue(gap),
    );
    this.#options.events({ type: 'gap', sequence });
  }

  /** The gap's packet arrived (from S1 or a REPAIR): it is no longer a gap. */
  filled(sequence: number): GapFilled | undefined {
    const answeredBy = this.#gaps.get(sequence)?.inFlight;
    const gap = this.#remove(sequence);
    if (gap === undefined) {
      return undefined;
    }
    if (answeredBy !== undefined) {
      this.#open(answeredBy);
    }
    if (gap.unrecoverable) {
      this.#options.events({ type: 'unrecoverable', sequence, delta: -1, reason: gap.reason ?? 'passed' });
    }
    return {
      server: gap.server,
      firstNack: gap.attempts + gap.notYet === 0,
      sentAtMs: gap.sentAtMs,
      wasUnrecoverable: gap.unrecoverable,
    };
  }

  /**
   * The emitter passes `sequence` (given up, or jumped over): it is unrecoverable, never silently.
   * False when it was not a gap here (the caller counts it).
   */
  pass(sequence: number, reason: UnrecoverableReason = 'passed'): boolean {
    const gap = this.#gaps.get(sequence);
    if (gap === undefined) {
      return false;
    }
    this.#giveUp(gap, reason);
    this.#remove(sequence);
    return true;
  }

  /** An END at `end` was believed: gaps at or after it never existed (only a HEARTBEAT claimed them). */
  withdrawFrom(end: number): void {
    for (const [sequence, gap] of this.#gaps) {
      if (sequenceDistance(end, sequence) >= 0) {
        this.#remove(sequence);
        this.#options.events({ type: 'gap-withdrawn', sequence });
        if (gap.unrecoverable) {
          this.#options.events({
            type: 'unrecoverable',
            sequence,
            delta: -1,
            reason: gap.reason ?? 'passed',
          });
        }
      }
    }
  }

  /**
   * A server answered that it does not hold `sequence`: ask the next one now. When every server has
   * said so, wait a backoff and start another round (a server may still be receiving it). An answer
   * counts toward giving up (nackAttemptsMax) only when `proven`: the server had shown, in a message
   * sealed before it, that it was past the packet; a server that is merely behind has not lost it
   * (docs/protocol.md, "REPAIR"). Unproven answers are bounded in time (liveServerWaitMsMax).
   * Ignored for a gap not waiting on an answer.
   */
  notHeld(sequence: number, proven: boolean): void {
    const gap = this.#gaps.get(sequence);
    const server = gap?.server;
    if (gap === undefined || server === undefined || gap.unrecoverable || gap.timer === undefined) {
      return;
    }
    gap.timer.cancel();
    gap.timer = undefined;
    this.#release(gap);
    gap.tried.add(server.key);
    const waitedMs = this.#options.nowMs() - gap.firstMs;
    const waitedTooLong = this.#options.reliable
      ? waitedMs > reliableNotHeldWaitMsMax
      : waitedMs > liveServerWaitMsMax;
    gap.notHeldBy.add(server.key);
    if (proven || (this.#options.reliable && waitedTooLong)) {
      gap.provenBy.add(server.key);
    }
    if (proven || waitedTooLong) {
      gap.attempts++;
    } else {
      gap.notYet++;
    }
    if (gap.attempts >= nackAttemptsMax && !this.#liveServerMayHold(gap)) {
      this.#giveUp(gap, 'not-held');
      return;
    }
    const { servers } = this.#options;
    if (gap.tried.size >= servers.size) {
      // Often the servers have simply not read the packet yet (their data and control sockets
      // race): ask again soon, then back off — 5 ms, 10 ms, 20 ms … up to the timeout.
      gap.tried.clear();
      gap.rounds++;
      gap.server = undefined;
      const rounds = gap.attempts + gap.notYet;
      const retryMs = Math.min(servers.timeoutFor(server, rounds), notHeldRetryMsInitial * 2 ** (rounds - 1));
      gap.timer = this.#options.schedule(retryMs, () => this.#markDue(gap));
      return;
    }
    this.#markDue(gap);
  }

  /** A server just introduced itself: gaps waiting on it are asked again at once, not after the timeout. */
  reask(server: RankedServer): void {
    for (const gap of this.#gaps.values()) {
      if (gap.server === server && gap.timer !== undefined && !gap.unrecoverable) {
        gap.timer.cancel();
        this.#release(gap);
        this.#markDue(gap);
      }
    }
  }

  /**
   * Forgets every gap and cancels its timers; with `countUnrecoverable`, the gaps not given up yet
   * are counted as unrecoverable (a run that ended without its END). The scheduler can be used again.
   */
  clear(countUnrecoverable: boolean): void {
    for (const gap of this.#gaps.values()) {
      if (countUnrecoverable && !gap.unrecoverable) {
        this.#options.events({ type: 'unrecoverable', sequence: gap.sequence, delta: 1, reason: 'idle' });
      }
      gap.timer?.cancel();
    }
    this.#gaps.clear();
    this.#due.clear();
    this.#expired.clear();
    this.#windows.clear();
  }

  /** Cancels every timer; later calls schedule nothing. Idempotent. */
  close(): void {
    this.#closed = true;
    this.clear(false);
    this.#flush?.cancel();
    this.#flush = undefined;
    this.#budgetWait?.cancel();
    this.#budgetWait = undefined;
  }

  #remove(sequence: number): Gap | undefined {
    const gap = this.#gaps.get(sequence);
    if (gap !== undefined) {
      gap.timer?.cancel();
      gap.timer = undefined;
      this.#release(gap);
      this.#due.delete(gap);
      this.#expired.delete(gap);
      this.#gaps.delete(sequence);
    }
    return gap;
  }

  #giveUp(gap: Gap, reason: UnrecoverableReason): void {
    if (!gap.unrecoverable) {
      gap.unrecoverable = true;
      gap.reason = reason;
      gap.timer?.cancel();
      gap.timer = undefined;
      this.#release(gap);
      this.#due.delete(gap);
      this.#expired.delete(gap);
      this.#options.events({ type: 'unrecoverable', sequence: gap.sequence, delta: 1, reason });
    }
  }

  /**
   * Reliable mode: some live server has not proven it lacks the gap's packet (it may hold it, only
   * slow or asked less often), so the gap is not given up however many answers other servers gave.
   * A server the election withdrew (it no longer reads S1, and fetches from its peers before it
   * answers) that said "not held" will not get it: it holds nothing back.
   */
  #liveServerMayHold(gap: Gap): boolean {
    if (!this.#options.reliable) {
      return false;
    }
    return this.#options.servers
      .ranked()
      .some(
        (server) =>
          this.#options.isAlive(server) &&
          !gap.provenBy.has(server.key) &&
          !(!server.listening && gap.notHeldBy.has(server.key)),
      );
  }

  #window(server: RankedServer): NackWindow {
    let window = this.#windows.get(server);
    if (window === undefined) {
      window = {
        packets: nackWindowPacketsInitial,
        inFlight: 0,
        decreasedAtMs: Number.NEGATIVE_INFINITY,
        threshold: nackWindowPacketsMax,
        answeredAtMs: this.#options.nowMs(),
        timeoutShare: 0,
      };
      this.#windows.set(server, window);
    }
    return window;
  }

  /** The gap no longer waits on its server: its place in that server's window is free. */
  #release(gap: Gap): void {
    const server = gap.inFlight;
    if (server === undefined) {
      return;
    }
    gap.inFlight = undefined;
    const window = this.#window(server);
    window.inFlight = Math.max(0, window.inFlight - 1);
    if (this.#due.size > 0) {
      this.#scheduleFlush();
    }
  }

  /** The server answered with the packet: its window opens by one (doubles per round trip). */
  #open(server: RankedServer): void {
    const window = this.#window(server);
    window.answeredAtMs = this.#options.nowMs();
    window.timeoutShare -= window.timeoutShare * nackWindowOutcomeWeight;
    const step = window.packets < window.threshold ? 1 : 1 / window.packets;
    window.packets = Math.min(nackWindowPacketsMax, window.packets + step);
  }

  /**
   * The server left a NACK unanswered: its window halves, once per timeout period, while most of
   * what it was asked lately timed out.
   */
  #narrow(server: RankedServer): void {
    const window = this.#window(server);
    const now = this.#options.nowMs();
    window.timeoutShare += (1 - window.timeoutShare) * nackWindowOutcomeWeight;
    if (
      window.timeoutShare > nackWindowTimeoutShareMax &&
      now - window.decreasedAtMs >= this.#options.servers.timeoutFor(server, 0)
    ) {
      window.packets = Math.max(nackWindowPacketsMin, Math.floor(window.packets / 2));
      window.threshold = window.packets;
      window.decreasedAtMs = now;
    }
  }

  #markDue(gap: Gap): void {
    gap.timer = undefined;
    if (this.#closed) {
      return;
    }
    this.#due.add(gap);
    if (this.#budgetWait !== undefined) {
      return; // a flush is waiting for budget: it takes this one too, in its turn
    }
    this.#scheduleFlush();
  }

  #scheduleFlush(): void {
    if (this.#closed) {
      return;
    }
    this.#flush ??= this.#options.defer(() => {
      this.#flush = undefined;
      for (const gap of this.#expired) {
        this.#expired.delete(gap);
        this.#onTimeout(gap);
      }
      this.#flushNacks();
    });
  }

  /**
   * A NACK's timer ran out. The decision waits until the owner's pending input was read: on a busy
   * host the answer is often already in the socket, and deciding first would ask again for it.
   */
  #expire(gap: Gap): void {
    gap.timer = undefined;
    this.#expired.add(gap);
    this.#scheduleFlush();
  }

  #onTimeout(gap: Gap): void {
    if (this.#gaps.get(gap.sequence) !== gap || gap.unrecoverable) {
      return; // it came, or was given up, while the decision waited
    }
    const waitedOn = gap.inFlight;
    this.#release(gap);
    if (waitedOn !== undefined) {
      this.#narrow(waitedOn);
    }
    this.#options.events({ type: 'timeout', sequence: gap.sequence });
    // A server heard from lately (it announces, it answers) is slow, not gone: on a busy host its
    // answer may take longer than any timeout. Its silence counts toward giving up only after
    // liveServerWaitMsMax; a silent one's at once.
    const alive = gap.server !== undefined && this.#options.isAlive(gap.server);
    if (gap.server !== undefined) {
      gap.server.consecutiveTimeouts++;
      gap.tried.add(gap.server.key);
    }
    if (alive && (this.#options.reliable || this.#options.nowMs() - gap.firstMs <= liveServerWaitMsMax)) {
      gap.notYet++;
      this.#markDue(gap);
      return;
    }
    gap.attempts++;
    if (gap.attempts >= nackAttemptsMax && !this.#liveServerMayHold(gap)) {
      this.#giveUp(gap, alive ? 'live-server-wait' : 'no-live-server');
      this.#options.events({ type: 'gave-up', sequence: gap.sequence });
      return;
    }
    this.#markDue(gap);
  }

  /**
   * Sends one NACK per server for the due gaps, in ranges, by round and oldest first, as far as
   * each server's NACK window and the NACK budget (docs/architecture.md, "Pacing repairs") allow;
   * the rest stay due until answers free places or credit is back (a flush at least
   * nackBudgetRetryMs later: a flush costs the same for one gap as for many).
   */
  #flushNacks(): void {
    const { servers, schedule } = this.#options;
    const order = servers.ranked();
    const base = this.#options.base();
    const oldestFirst = (a: number, b: number) => sequenceDistance(base, a) - sequenceDistance(base, b);
    // A window measures what a live server answers in time. One not heard from lately (not alive, or
    // silent for nackTimeoutMsMax: gone, or refusing our NACKs) has none to measure: its gaps are
    // asked for at once, so that what no live server can serve moves on to another server or is
    // given up in the time of one gap's attempts, not a window at a time (a wedge on S2).
    const now = this.#options.nowMs();
    const hasRoom = (server: RankedServer) => {
      const window = this.#window(server);
      return (
        window.inFlight < window.packets ||
        !this.#options.isAlive(server) ||
        now - window.answeredAtMs > nackTimeoutMsMax
      );
    };
    if (order.length > 0 && !order.some(hasRoom)) {
      return; // every window is full: answers (or timeouts) free places and flush again
    }
    // Per server, first requests apart from requests again (docs/protocol.md, "Repair group").
    const byServer = new Map<RankedServer, { first: number[]; again: number[] }>();
    const budget = this.#budget;
    const allowed = budget === undefined ? Number.POSITIVE_INFINITY : Math.floor(budget.credit(now));
    let taken = 0;
    let budgetShort = false;
    this.#due.walk((gap) => {
      if (gap.unrecoverable || this.#gaps.get(gap.sequence) !== gap) {
        return 'take';
      }
      let untried = order.filter((candidate) => !gap.tried.has(candidate.key));
      if (untried.length === 0 && order.length > 0) {
        gap.tried.clear(); // every server was asked: start another round, with backoff
        gap.rounds++;
        untried = order;
      }
      if (untried.length === 0) {
        gap.server = undefined;
        gap.timer = schedule(nackTimeoutMsInitial, () => this.#expire(gap));
        return 'take';
      }
      const server = untried.find(hasRoom);
      if (server === undefined) {
        return 'keep'; // every server it may ask is busy with older gaps: it waits, still due
      }
      if (taken >= allowed) {
        budgetShort = true; // the rest wait for credit, still due
        return 'stop';
      }
      taken++;
      gap.server = server;
      gap.inFlight = server;
      this.#window(server).inFlight++;
      const lists = byServer.get(server) ?? { first: [], again: [] };
      (gap.nacks === 0 ? lists.first : lists.again).push(gap.sequence);
      byServer.set(server, lists);
      return 'take';
    });
    if (budget !== undefined) {
      budget.take(taken);
      if (budgetShort && this.#budgetWait === undefined) {
        this.#budgetWait = this.#options.schedule(Math.max(nackBudgetRetryMs, budget.waitMs(now)), () => {
          this.#budgetWait = undefined;
          this.#scheduleFlush();
        });
      }
    }
    for (const [server, lists] of byServer) {
      for (const [sequences, again] of [
        [lists.again, true],
        [lists.first, false],
      ] as const) {
        sequences.sort(oldestFirst);
        for (const ranges of toRanges(sequences)) {
          this.#options.sendNack(server, ranges, again);
          this.#options.events({
            type: 'nack-sent',
            packets: ranges.reduce((sum, range) => sum + range.count, 0),
          });
        }
      }
      for (const sequence of [...lists.again, ...lists.first]) {
        const gap = this.#gaps.get(sequence);
        if (gap !== undefined) {
          gap.nacks++;
          gap.sentAtMs = now;
          gap.timer = schedule(servers.timeoutFor(server, gap.attempts + gap.notYet), () =>
            this.#expire(gap),
          );
        }
      }
    }
  }
}

/** Sorted sequences into NACK-sized lists of ranges. */
export function toRanges(sequences: readonly number[]): SequenceRange[][] {
  const all: SequenceRange[] = [];
  let start: number | undefined;
  let count = 0;
  for (const sequence of sequences) {
    if (start !== undefined && sequence === sequenceAdd(start, count) && count < nackRangePacketsMax) {
      count++;
      continue;
    }
    if (start !== undefined) {
      all.push({ start, count });
    }
    start = sequence;
    count = 1;
  }
  if (start !== undefined) {
    all.push({ start, count });
  }
  const lists: SequenceRange[][] = [];
  for (let i = 0; i < all.length; i += nackRangesMax) {
    lists.push(all.slice(i, i + nackRangesMax));
  }
  return lists;
}
