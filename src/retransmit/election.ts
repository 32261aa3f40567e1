/**
 * The election of retransmit servers (docs/architecture.md, "Election"): each server reports its
 * measured reception of a session to its peers in QUALITY; from its own figures and the fresh
 * reports of the others it decides to keep listening or to withdraw (and to come back when too
 * few others listen). Pure logic over the reports and a clock: no sockets.
 */
import { electionReportForgetPeriods, electionReportsMax } from '../limits.js';
import type { RoleClock } from '../net/runtime.js';
import { ListenState, type ListenStateCode } from '../protocol/control.js';

/** Election settings (docs/architecture.md, "Election"). */
export interface ElectionSettings {
  /** Withdraw when own loss is above this share (0-1) and another member listens. */
  readonly lossMax: number;
  /** Listen only when among the best N members. */
  readonly bestCount: number;
  /** Quality period; a peer silent for three periods is no longer a member. */
  readonly periodMs: number;
}

/** What one member measured of one session in its last period. */
export interface MemberQuality {
  readonly lossPpm: number;
  /** Sequences that did not arrive in the period (gaps and the kernel's drops). */
  readonly missing: number;
  readonly state: ListenStateCode;
}

/** A member of one session's election. */
export interface Member extends MemberQuality {
  readonly id: number;
}

interface PeerReport extends MemberQuality {
  readonly senderId: number;
  readonly run: string;
  readonly atMs: number;
  /** Sums over every report heard: what the peer received and missed since we first heard it. */
  readonly receivedSum: number;
  readonly missingSum: number;
}

/** A peer's reports of one session, as a status shows them. */
export interface PeerSummary {
  readonly id: number;
  readonly lossPpm: number;
  readonly state: ListenStateCode;
  /** Sums of the peer's QUALITY reports: DATA received and sequences missed. */
  readonly received: number;
  readonly missing: number;
}

/** What a round decided for this server. */
export type ElectionDecision = 'stay' | 'withdraw' | 'rejoin';

/** The peers' reports and the rule that ranks members. */
export class Election {
  readonly #ownId: number;
  readonly #clock: RoleClock;
  readonly #periodMs: number;
  /**
   * Reports by sender id and run (`runKey`): members are compared only on the same run, so a
   * report of a session's earlier run (a source restarted under its id) never counts for the new
   * one (docs/protocol.md, "QUALITY").
   */
  readonly #reports = new Map<string, PeerReport>();

  constructor(options: { ownId: number; clock: RoleClock; periodMs: number }) {
    this.#ownId = options.ownId;
    this.#clock = options.clock;
    this.#periodMs = options.periodMs;
  }

  /** Reports kept (one per peer and run). */
  get size(): number {
    return this.#reports.size;
  }

  /**
   * Records an authenticated peer's report for one run (received: DATA in its period). Reports
   * are kept most recent last; those not heard for electionReportForgetPeriods, and the oldest
   * past electionReportsMax, are forgotten.
   */
  report(senderId: number, run: string, quality: MemberQuality & { readonly received?: number }): void {
    const key = `${senderId} ${run}`;
    const before = this.#reports.get(key);
    this.#reports.delete(key); // most recent last
    this.#forget();
    this.#reports.set(key, {
      senderId,
      run,
      lossPpm: quality.lossPpm,
      missing: quality.missing,
      state: quality.state,
      atMs: this.#clock.nowMs(),
      receivedSum: (before?.receivedSum ?? 0) + (quality.received ?? 0),
      missingSum: (before?.missingSum ?? 0) + quality.missing,
    });
  }

  /** Forgets reports not heard for long, oldest first, and the oldest while over the bound. */
  #forget(): void {
    const forgetBeforeMs = this.#clock.nowMs() - this.#periodMs * electionReportForgetPeriods;
    for (const [key, report] of this.#reports) {
      if (report.atMs >= forgetBeforeMs && this.#reports.size < electionReportsMax) {
        break;
      }
      this.#reports.delete(key);
    }
  }

  /** The peers' reports of a run, fresh or not, for a status. */
  peers(run: string): PeerSummary[] {
    const list: PeerSummary[] = [];
    for (const report of this.#reports.values()) {
      if (report.run === run) {
        list.push({
          id: report.senderId,
          lossPpm: report.lossPpm,
          state: report.state,
          received: report.receivedSum,
          missing: report.missingSum,
        });
      }
    }
    return list;
  }

  /** Members of a run's election that are fresh, with their quality; ourselves first. */
  members(run: string, own: MemberQuality): Member[] {
    const now = this.#clock.nowMs();
    const list: Member[] = [{ id: this.#ownId, ...own }];
    for (const report of this.#reports.values()) {
      if (report.run === run && now - report.atMs <= this.#periodMs * 3) {
        list.push({
          id: report.senderId,
          lossPpm: report.lossPpm,
          missing: report.missing,
          state: report.state,
        });
      }
    }
    return list;
  }

  /**
   * One round for a run (`runKey`). A listening server withdraws when its loss is above lossMax while
   * another listens, or when it is not among the best bestCount listening members (ranked by loss,
   * then by how many packets they missed, then by id); a withdrawn one comes back when fewer than
   * bestCount others listen.
   */
  decide(run: string, own: MemberQuality, settings: ElectionSettings): ElectionDecision {
    const all = this.members(run, own);
    const othersListening = all.filter((m) => m.id !== this.#ownId && m.state === ListenState.listening);
    if (own.state === ListenState.listening) {
      const ranked = all.filter((m) => m.state === ListenState.listening).sort(compareMembers);
      const rank = ranked.findIndex((m) => m.id === this.#ownId);
      const tooLossy = own.lossPpm > settings.lossMax * 1_000_000 && othersListening.length > 0;
      return tooLossy || rank >= settings.bestCount ? 'withdraw' : 'stay';
    }
    return othersListening.length < settings.bestCount ? 'rejoin' : 'stay';
  }
}

/** Best first: lower loss, then fewer packets missed, then lower id (every member ranks alike). */
export function compareMembers(a: Member, b: Member): number {
  return a.lossPpm - b.lossPpm || a.missing - b.missing || a.id - b.id;
}
