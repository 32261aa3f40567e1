/**
 * The runs a retransmit server heard on one group (docs/protocol.md, "Session identity"): one
 * bounded buffer per run (session id and incarnation), at most retransmitRunsPerGroupMax of them,
 * the one holding fewest packets evicted first (the idlest of those); the current run — the one
 * measured, and announced first — is the run written most recently that has sent resyncPacketsMin
 * packets (or the only one). DATA is not authenticated: a packet of a made-up run must cost the
 * attacker as much as the damage it does, so one such packet neither evicts a run holding more nor
 * becomes the run measured (docs/protocol.md, "Windows: what one packet may move"). It
 * takes the group's datagrams as they come (DATA into its run's buffer; END kept for the repair
 * server that lost it; HEARTBEAT and END as how far the run reached) and counts what it drops.
 * No socket: the role hands it datagrams, a clock and an event sink.
 */
import { resyncPacketsMin } from '../limits.js';
import type { RoleClock } from '../net/runtime.js';
import { decodeData, decodeEnd, decodeHeartbeat, offsetType, PacketType } from '../protocol/packet.js';
import { runKey } from '../protocol/session-window.js';
import { type BufferBounds, SessionBuffer } from './session-buffer.js';

/** What a group's runs need. */
export interface GroupRunsOptions {
  readonly clock: Pick<RoleClock, 'nowMs' | 'wallUs'>;
  readonly bounds: BufferBounds;
  /** Runs kept per group; a new run past it evicts the run written least recently. */
  readonly runsMax: number;
  /** Counts a datagram dropped, or a run evicted, by reason. */
  readonly drop: (reason: string) => void;
}

/** The runs heard on one group. */
export class GroupRuns {
  readonly #options: GroupRunsOptions;
  readonly #runs = new Map<string, SessionBuffer>();
  #current: SessionBuffer | undefined;

  constructor(options: GroupRunsOptions) {
    this.#options = options;
  }

  /**
   * The run measured (and announced first): the one written most recently that has sent resyncPacketsMin
   * DATA packets, or the first run heard until another has (undefined before any DATA).
   */
  get current(): SessionBuffer | undefined {
    return this.#current;
  }

  /** Runs kept. */
  get size(): number {
    return this.#runs.size;
  }

  /**
   * The runs to announce (docs/protocol.md, "ANNOUNCE"): the current one, then every other run
   * that still holds packets — a repair server still repairing an earlier run asks from it.
   */
  announced(): SessionBuffer[] {
    const current = this.#current;
    const others = [...this.#runs.values()].filter((run) => run !== current && run.heldCount > 0);
    return current === undefined ? others : [current, ...others];
  }

  /** The buffer of a run, if heard on this group. */
  get(sessionId: number, incarnation: number): SessionBuffer | undefined {
    return this.#runs.get(runKey(sessionId, incarnation));
  }

  /**
   * Takes one datagram of the group. True when it was a DATA packet stored (or already held) in
   * its run's buffer; other types are kept or noted as their rule says, and dropped otherwise.
   */
  take(datagram: Buffer): boolean {
    const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
    if (type === PacketType.end) {
      this.#keepEnd(datagram);
      return false;
    }
    if (type === PacketType.heartbeat) {
      this.#noteHeartbeat(datagram);
      return false;
    }
    if (type !== PacketType.data) {
      return false;
    }
    const decoded = decodeData(datagram);
    if (!decoded.ok) {
      this.#options.drop(`data-${decoded.reason}`);
      return false;
    }
    const packet = decoded.value;
    const { clock } = this.#options;
    // Most often the run of the last packet: its key (a string) is built only when the run changes.
    const last = this.#current;
    const buffer =
      last !== undefined && last.sessionId === packet.sessionId && last.incarnation === packet.incarnation
        ? last
        : this.#bufferFor(packet.sessionId, packet.incarnation);
    buffer.add(packet.sequence, datagram, packet.timestampUs, clock.nowMs(), clock.wallUs());
    const current = this.#current;
    if (
      current === undefined ||
      current.heldCount === 0 ||
      buffer.receivedCount >= resyncPacketsMin ||
      buffer.receivedCount >= current.receivedCount
    ) {
      this.#current = buffer;
    }
    return true;
  }

  /** Ages every run's buffer; forgets an old run (not the current one) whose packets all aged out. */
  sweep(nowMs: number): void {
    for (const [key, run] of this.#runs) {
      run.evict(nowMs);
      if (run !== this.#current && run.heldCount === 0) {
        this.#runs.delete(key);
      }
    }
  }

  /**
   * The buffer for a run heard on the group; a new run past runsMax evicts the run holding fewest
   * packets (of those, the one written least recently): to take a run's buffer away, made-up runs
   * must each hold more than it does.
   */
  #bufferFor(sessionId: number, incarnation: number): SessionBuffer {
    const key = runKey(sessionId, incarnation);
    let buffer = this.#runs.get(key);
    if (buffer === undefined) {
      if (this.#runs.size >= this.#options.runsMax) {
        let idlest: [string, SessionBuffer] | undefined;
        for (const candidate of this.#runs) {
          const [, run] = candidate;
          if (
            idlest === undefined ||
            run.heldCount < idlest[1].heldCount ||
            (run.heldCount === idlest[1].heldCount && run.lastAddedMs < idlest[1].lastAddedMs)
          ) {
            idlest = candidate;
          }
        }
        if (idlest !== undefined) {
          this.#runs.delete(idlest[0]);
          if (this.#current === idlest[1]) {
            this.#current = undefined;
          }
          this.#options.drop('run-evicted');
        }
      }
      buffer = new SessionBuffer(sessionId, incarnation, this.#options.bounds);
      this.#runs.set(key, buffer);
    }
    return buffer;
  }

  /**
   * An END: kept in its run's buffer under its sequence, served like a packet to a repair server
   * that lost it (docs/protocol.md, "REPAIR"). Only for a run whose DATA we buffer.
   */
  #keepEnd(datagram: Buffer): void {
    const end = decodeEnd(datagram);
    if (!end.ok) {
      this.#options.drop(`end-${end.reason}`);
      return;
    }
    const buffer = this.get(end.value.sessionId, end.value.incarnation);
    if (buffer === undefined) {
      this.#options.drop('end-unknown-run'); // no state is made for a run we never heard DATA of
      return;
    }
    buffer.noteProgress(end.value.sequence);
    buffer.keepEnd(end.value.sequence, datagram, this.#options.clock.nowMs());
  }

  /** A HEARTBEAT: how far a run we buffer has reached, for peer fetch (no state for others). */
  #noteHeartbeat(datagram: Buffer): void {
    const heartbeat = decodeHeartbeat(datagram);
    if (!heartbeat.ok) {
      this.#options.drop(`heartbeat-${heartbeat.reason}`);
      return;
    }
    this.get(heartbeat.value.sessionId, heartbeat.value.incarnation)?.noteProgress(heartbeat.value.sequence);
  }
}
