/**
 * The source's adaptive rate (`send --adapt-rate`, docs/architecture.md, "Adaptive rate"): the
 * pacing rate of a file session is capped by what the repair path reports, so a session slows
 * down rather than losing data when the edge cannot keep up. AIMD, as TCP does (RFC 5681 §3.1,
 * with the gentler decrease of RFC 8312 §4.5): a repair server whose FEEDBACK shows trouble (a
 * packet given up, datagrams its kernel dropped, a repair backlog above its bound or growing, a
 * hold above its bound, more packets NACKed than received while the backlog does not shrink) cuts
 * the rate by a factor, at most once per hold time, never below the floor; while every fresh
 * report is clear the rate climbs back by a fixed step per interval, never above the ceiling
 * (`--rate`). Pure: the caller hands in the time and the reports, already authenticated.
 */
import assert from 'node:assert/strict';
import {
  adaptBacklogGrowthPacketsMin,
  adaptBacklogPacketsHigh,
  adaptBacklogPacketsLow,
  adaptHoldingPacketsHigh,
  adaptNackedPacketsMin,
  adaptRateDecreaseFactor,
  adaptRateDecreaseHoldMs,
  adaptRateIncreaseIntervalMs,
  adaptRateIncreaseStepFraction,
  adaptReportersMax,
  adaptReportStaleMs,
} from '../limits.js';
import type { FeedbackBody } from '../protocol/control.js';

/** Settings of an adaptive rate: the ceiling is `--rate`, the floor `--rate-floor`. */
export interface AdaptiveRateSettings {
  readonly ceilingBitsPerSecond: number;
  readonly floorBitsPerSecond: number;
}

/** What one repair server said last, and the highest of its growing counts seen. */
interface Reporter {
  heardAtMs: number;
  missing: number;
  holding: number;
  unrecoverableMax: number;
  socketDropsMax: number;
  received: number;
  nacked: number;
}

/** Counters of an adaptive rate, for the source's stats. */
export interface AdaptiveRateStats {
  /** The rate now, bit/s. */
  bitsPerSecond: number;
  /** The lowest rate it went down to, bit/s. */
  lowestBitsPerSecond: number;
  ceilingBitsPerSecond: number;
  floorBitsPerSecond: number;
  /** FEEDBACK messages taken (authenticated, of this run). */
  reports: number;
  /** Repair servers heard from. */
  reporters: number;
  decreases: number;
  increases: number;
  /**
   * Why the rate went down, by reason: unrecoverable, socket-drops, backlog, backlog-growing,
   * holding, nacks-exceed-data.
   */
  decreaseReasons: Record<string, number>;
}

/** Why a report says the edge is not keeping up; undefined when it is. */
function trouble(reporter: Reporter | undefined, report: FeedbackBody): string | undefined {
  // The first report of a server is its baseline: its counts since it started may belong to
  // earlier runs, and say nothing of this one.
  if (reporter !== undefined && report.unrecoverable > reporter.unrecoverableMax) {
    return 'unrecoverable';
  }
  if (reporter !== undefined && report.socketDrops > reporter.socketDropsMax) {
    return 'socket-drops';
  }
  if (report.missing >= adaptBacklogPacketsHigh) {
    return 'backlog';
  }
  // A backlog that keeps growing: repairs do not keep up with the gaps (random loss alone keeps
  // it steady, at the loss rate times the repair round trip).
  if (
    reporter !== undefined &&
    report.missing > adaptBacklogPacketsLow &&
    report.missing >= reporter.missing + adaptBacklogGrowthPacketsMin
  ) {
    return 'backlog-growing';
  }
  if (report.holding >= adaptHoldingPacketsHigh) {
    return 'holding';
  }
  // The edge asks for more packets than it receives while its backlog does not shrink: its
  // repairs do not get through (random loss of a fraction p asks for about p / (1 - p) of what
  // arrives, under 1 below 50 %). One whose backlog shrinks is getting its repairs: after a cut,
  // fewer packets arrive while it asks for the gaps it found before, and cutting again for that
  // would only slow the run further.
  if (reporter !== undefined) {
    // Running counts sent modulo 2^32 (docs/protocol.md, "FEEDBACK"): their growth in serial
    // arithmetic, so a server that passed 2^32 received reads right.
    const nacked = (report.nacked - reporter.nacked) | 0;
    const received = (report.received - reporter.received) | 0;
    if (nacked >= adaptNackedPacketsMin && nacked > received && report.missing >= reporter.missing) {
      return 'nacks-exceed-data';
    }
  }
  return undefined;
}

/** An AIMD pacing rate fed by repair servers' FEEDBACK. */
export class AdaptiveRate {
  readonly #settings: AdaptiveRateSettings;
  readonly #reporters = new Map<number, Reporter>();
  #bitsPerSecond: number;
  #lowestBitsPerSecond: number;
  #lastDecreaseMs = Number.NEGATIVE_INFINITY;
  #lastTroubleMs = Number.NEGATIVE_INFINITY;
  #lastChangeMs: number;
  #reports = 0;
  #decreases = 0;
  #increases = 0;
  readonly #decreaseReasons: Record<string, number> = {};

  constructor(settings: AdaptiveRateSettings, nowMs: number) {
    assert.ok(settings.ceilingBitsPerSecond > 0, 'an adaptive rate needs a ceiling');
    assert.ok(settings.floorBitsPerSecond > 0, 'an adaptive rate needs a floor above 0');
    assert.ok(settings.floorBitsPerSecond <= settings.ceilingBitsPerSecond, 'floor above ceiling');
    this.#settings = settings;
    this.#bitsPerSecond = settings.ceilingBitsPerSecond;
    this.#lowestBitsPerSecond = settings.ceilingBitsPerSecond;
    this.#lastChangeMs = nowMs;
  }

  /** The pacing rate now, bit/s: between the floor and the ceiling. */
  get bitsPerSecond(): number {
    return this.#bitsPerSecond;
  }

  /**
   * Takes one authenticated FEEDBACK of the run from the repair server `reporterId` (its sender
   * id): a report of trouble cuts the rate, unless it was cut less than the hold time ago (one
   * episode of trouble, seen by several servers or in several reports, cuts it once).
   */
  report(reporterId: number, report: FeedbackBody, nowMs: number): void {
    this.#reports++;
    const known = this.#reporters.get(reporterId);
    const reason = trouble(known, report);
    const reporter: Reporter = {
      heardAtMs: nowMs,
      missing: report.missing,
      holding: report.holding,
      unrecoverableMax: Math.max(known?.unrecoverableMax ?? 0, report.unrecoverable),
      socketDropsMax: Math.max(known?.socketDropsMax ?? 0, report.socketDrops),
      received: report.received,
      nacked: report.nacked,
    };
    this.#reporters.delete(reporterId); // most recently heard last: the oldest goes first
    this.#reporters.set(reporterId, reporter);
    if (this.#reporters.size > adaptReportersMax) {
      this.#reporters.delete(this.#reporters.keys().next().value ?? 0);
    }
    if (reason !== undefined) {
      this.#lastTroubleMs = nowMs;
      if (nowMs - this.#lastDecreaseMs >= adaptRateDecreaseHoldMs) {
        this.#set(this.#bitsPerSecond * adaptRateDecreaseFactor, nowMs);
        this.#lastDecreaseMs = nowMs;
        this.#decreases++;
        this.#decreaseReasons[reason] = (this.#decreaseReasons[reason] ?? 0) + 1;
      }
    }
    this.update(nowMs);
  }

  /**
   * Moves the rate up one step per interval while the path is clear: no report of trouble within
   * the hold time and every server heard lately at or below the low backlog mark. A server not
   * heard for adaptReportStaleMs no longer holds the rate down (it ended its run, or it is gone).
   * While the path is not clear the steps do not accumulate.
   */
  update(nowMs: number): void {
    let clear =
      this.#bitsPerSecond < this.#settings.ceilingBitsPerSecond &&
      nowMs - this.#lastTroubleMs >= adaptRateDecreaseHoldMs;
    for (const reporter of this.#reporters.values()) {
      if (nowMs - reporter.heardAtMs <= adaptReportStaleMs && reporter.missing > adaptBacklogPacketsLow) {
        clear = false;
      }
    }
    if (!clear) {
      this.#lastChangeMs = nowMs;
      return;
    }
    const steps = Math.floor((nowMs - this.#lastChangeMs) / adaptRateIncreaseIntervalMs);
    if (steps <= 0) {
      return;
    }
    const step = this.#settings.ceilingBitsPerSecond * adaptRateIncreaseStepFraction;
    this.#set(this.#bitsPerSecond + steps * step, this.#lastChangeMs + steps * adaptRateIncreaseIntervalMs);
    this.#increases += steps;
  }

  #set(bitsPerSecond: number, atMs: number): void {
    const { floorBitsPerSecond, ceilingBitsPerSecond } = this.#settings;
    this.#bitsPerSecond = Math.round(
      Math.min(ceilingBitsPerSecond, Math.max(floorBitsPerSecond, bitsPerSecond)),
    );
    this.#lowestBitsPerSecond = Math.min(this.#lowestBitsPerSecond, this.#bitsPerSecond);
    this.#lastChangeMs = atMs;
  }

  stats(): AdaptiveRateStats {
    return {
      bitsPerSecond: this.#bitsPerSecond,
      lowestBitsPerSecond: this.#lowestBitsPerSecond,
      ceilingBitsPerSecond: this.#settings.ceilingBitsPerSecond,
      floorBitsPerSecond: this.#settings.floorBitsPerSecond,
      reports: this.#reports,
      reporters: this.#reporters.size,
      decreases: this.#decreases,
      increases: this.#increases,
      decreaseReasons: { ...this.#decreaseReasons },
    };
  }
}
