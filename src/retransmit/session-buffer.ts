/**
 * One session's ring buffer in a retransmit server: DATA datagrams by sequence, evicted oldest
 * first when over a byte bound or an age bound (both counted), plus the server's own measure of
 * how well it receives the session (loss and RFC 3550 interarrival jitter).
 */
import { progressAheadPacketsMax, resyncPacketsMin } from '../limits.js';
import { OldestFirst } from '../oldest-first.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';

interface Held {
  readonly datagram: Buffer;
  readonly atMs: number;
}

/** Bounds of a buffer. */
export interface BufferBounds {
  readonly bytesMax: number;
  readonly ageMs: number;
}

/** Reception quality over a period. */
export interface PeriodQuality {
  received: number;
  missing: number;
  lossPpm: number;
  jitterUs: number;
}

/** The buffer of one session. */
export class SessionBuffer {
  readonly sessionId: number;
  /** The run this buffer holds: packets of another incarnation are never stored or served here. */
  readonly incarnation: number;
  /** Monotonic time of the last packet stored (the idlest run is evicted first). */
  lastAddedMs = 0;
  readonly #bounds: BufferBounds;
  /** Insertion order is arrival order: the first key is the oldest. */
  readonly #held = new Map<number, Held>();
  /** #held oldest first, in constant time: a full buffer drops one for each packet it stores. */
  readonly #oldest = new OldestFirst(this.#held);
  #bytes = 0;
  evictedCount = 0;
  receivedCount = 0;
  /** Sequences fetched from peers (fill), not heard. */
  filledCount = 0;
  #highest: number | undefined;
  /** Where the END kept (keepEnd) is, if one is. */
  #endSequence: number | undefined;
  /**
   * The next sequence a HEARTBEAT or END of the run claimed, at most progressAheadPacketsMax past
   * the newest DATA heard (a claim further ahead is not believed): how far the run has reached
   * beyond what this server heard itself.
   */
  #claimedNext: number | undefined;
  /**
   * The sequence after the last one the meter accounted for (heard, or counted missing from a gap
   * or from a HEARTBEAT's claim): nothing is counted twice.
   */
  #meterNext: number | undefined;
  #periodReceived = 0;
  #periodMissing = 0;
  #jitterUs = 0;
  #lastTransitUs: number | undefined;
  #strayInARow = 0;

  constructor(sessionId: number, incarnation: number, bounds: BufferBounds) {
    this.sessionId = sessionId;
    this.incarnation = incarnation;
    this.#bounds = bounds;
  }

  get bytes(): number {
    return this.#bytes;
  }
  /** DATA datagrams held (a kept END is not one). */
  get heldCount(): number {
    return this.#held.size - (this.#endSequence === undefined ? 0 : 1);
  }

  /** Oldest and newest sequence held (arrival order), or undefined when empty. */
  get range(): { first: number; last: number } | undefined {
    if (this.#held.size === 0 || this.#highest === undefined) {
      return undefined;
    }
    const first = this.#oldest.peek()?.[0] as number;
    return { first, last: this.#highest };
  }

  /**
   * Stores a DATA datagram; measures loss and jitter from its sequence and its send timestamp
   * against our wall clock (nowWallUs). nowMs is monotonic and ages the buffer.
   */
  add(sequence: number, datagram: Buffer, sentUs: number, nowMs: number, nowWallUs: number): void {
    if (sequence === this.#endSequence) {
      this.#forgetEnd(); // DATA where an END was: that END was not the run's end
    }
    if (this.#held.has(sequence)) {
      return;
    }
    this.lastAddedMs = nowMs;
    this.receivedCount++;
    this.#periodReceived++;
    if (this.#highest === undefined) {
      this.#highest = sequence;
      this.#meterNext = sequenceAdd(sequence, 1);
    } else {
      const gap = sequenceDistance(this.#highest, sequence);
      const far = Math.abs(gap) > progressAheadPacketsMax;
      if (far && ++this.#strayInARow < resyncPacketsMin) {
        // One stray packet far away must not count thousands of packets as lost; a run of them
        // is a real jump (an outage): then the meter follows. Far behind counts too: when the
        // first packet of a run was a stray (forged, unauthenticated DATA), the genuine packets
        // that follow are far behind it, and the meter must come back to them rather than count
        // the next stray near the first as loss (test/sim/found.md #9).
      } else if (far) {
        this.#strayInARow = 0;
        this.#highest = sequence;
        this.#meterNext = sequenceAdd(sequence, 1);
        this.#claimedNext = undefined; // a claim about where the run was before the jump
      } else if (gap > 0) {
        this.#strayInARow = 0;
        this.#highest = sequence;
        this.#meterAdvance(sequence);
      } else {
        this.#strayInARow = 0;
        if (this.#periodMissing > 0) {
          this.#periodMissing--; // a late packet fills a gap counted before
        }
      }
    }
    // RFC 3550 section 6.4.1: J += (|D| - J) / 16, with D the change in transit time.
    const transitUs = nowWallUs - sentUs;
    if (this.#lastTransitUs !== undefined) {
      this.#jitterUs += (Math.abs(transitUs - this.#lastTransitUs) - this.#jitterUs) / 16;
    }
    this.#lastTransitUs = transitUs;
    this.#hold(sequence, { datagram, atMs: nowMs });
    this.#bytes += datagram.length;
    this.evict(nowMs);
  }

  /**
   * Stores a DATA datagram fetched from a peer to fill a hole (docs/protocol.md, "Peer fetch").
   * It is not counted as received: the meter measures what this server heard itself. False when
   * the sequence is already held.
   */
  fill(sequence: number, datagram: Buffer, nowMs: number): boolean {
    if (sequence === this.#endSequence) {
      this.#forgetEnd();
    }
    if (this.#held.has(sequence)) {
      return false;
    }
    this.#hold(sequence, { datagram, atMs: nowMs });
    this.#bytes += datagram.length;
    this.filledCount++;
    this.evict(nowMs);
    return true;
  }

  /**
   * Keeps the run's END datagram under its sequence, so that a repair server that lost it on S1
   * can ask for it like a packet (docs/protocol.md, "REPAIR"). Only one just after the newest DATA
   * heard (an END elsewhere is not this run's end), only one, and DATA that comes at its sequence
   * after all takes its place. Not counted as received; aged and evicted like a packet. False when
   * not kept.
   */
  keepEnd(sequence: number, datagram: Buffer, nowMs: number): boolean {
    if (this.next !== sequence || this.#endSequence !== undefined || this.#held.has(sequence)) {
      return false;
    }
    this.#endSequence = sequence;
    this.#hold(sequence, { datagram, atMs: nowMs });
    this.#bytes += datagram.length;
    this.evict(nowMs);
    return true;
  }

  /** Stores a datagram of a sequence not held, newest last. */
  #hold(sequence: number, held: Held): void {
    this.#held.set(sequence, held);
    this.#oldest.added(sequence, held);
  }

  #forgetEnd(): void {
    const sequence = this.#endSequence;
    const held = sequence === undefined ? undefined : this.#held.get(sequence);
    if (sequence !== undefined && held !== undefined) {
      this.#held.delete(sequence);
      this.#bytes -= held.datagram.length;
    }
    this.#endSequence = undefined;
  }

  /** Drops the oldest datagrams while over the byte bound or older than the age bound. */
  evict(nowMs: number): void {
    for (let oldest = this.#oldest.peek(); oldest !== undefined; oldest = this.#oldest.peek()) {
      const [sequence, held] = oldest;
      if (this.#bytes <= this.#bounds.bytesMax && nowMs - held.atMs <= this.#bounds.ageMs) {
        break;
      }
      this.#oldest.shift();
      this.#bytes -= held.datagram.length;
      this.evictedCount++;
      if (sequence === this.#endSequence) {
        this.#endSequence = undefined;
      }
    }
  }

  /** The datagram of a sequence, if held. */
  get(sequence: number): Buffer | undefined {
    return this.#held.get(sequence)?.datagram;
  }

  /**
   * The server starts listening again (it re-entered the election): what the run sent while it did
   * not listen is not its loss. The meter starts afresh at the next DATA it hears.
   */
  restartMeter(): void {
    this.#meterNext = undefined;
    this.#claimedNext = undefined;
  }

  /**
   * A DATA newer than any heard: the sequences between it and what the meter accounted for are
   * missing; one the meter already counted missing (from a HEARTBEAT's claim) fills its gap.
   */
  #meterAdvance(sequence: number): void {
    const meterNext = this.#meterNext ?? sequence;
    const skipped = sequenceDistance(meterNext, sequence);
    if (skipped >= 0) {
      this.#periodMissing += skipped;
      this.#meterNext = sequenceAdd(sequence, 1);
    } else if (this.#periodMissing > 0) {
      this.#periodMissing--;
    }
  }

  /**
   * Returns the quality since the last call and starts a new period. The sequences a HEARTBEAT or
   * END said the run reached, and that were not heard, are missing: a server that hears the
   * HEARTBEATs but none of the DATA (its socket overrun, an MTU black hole) measures that loss.
   */
  takePeriod(): PeriodQuality {
    const claimedNext = this.#claimedNext;
    if (claimedNext !== undefined && this.#meterNext !== undefined) {
      const unheard = sequenceDistance(this.#meterNext, claimedNext);
      if (unheard > 0 && unheard <= progressAheadPacketsMax + 1) {
        this.#periodMissing += unheard;
        this.#meterNext = claimedNext;
      }
    }
    const expected = this.#periodReceived + this.#periodMissing;
    const quality = {
      received: this.#periodReceived,
      missing: this.#periodMissing,
      lossPpm: expected === 0 ? 0 : Math.round((this.#periodMissing / expected) * 1_000_000),
      jitterUs: this.#jitterUs,
    };
    this.#periodReceived = 0;
    this.#periodMissing = 0;
    return quality;
  }

  /**
   * A HEARTBEAT or END of the run said its next sequence is `next`: the packets before it exist.
   * Believed only within progressAheadPacketsMax of the newest DATA heard (docs/protocol.md,
   * "Windows: what one packet may move").
   */
  noteProgress(next: number): void {
    if (this.#highest === undefined) {
      return;
    }
    const ahead = sequenceDistance(this.#highest, next);
    if (ahead <= 0 || ahead > progressAheadPacketsMax + 1) {
      return;
    }
    if (this.#claimedNext === undefined || sequenceDistance(this.#claimedNext, next) > 0) {
      this.#claimedNext = next;
    }
  }

  /**
   * Whether the run is known to have reached `sequence`: a DATA at or after it was heard, or a
   * HEARTBEAT or END (within bounds) put the run's next sequence after it. A sequence beyond that
   * may not exist yet (a paused live source): no peer can hold it, so none is asked for it
   * (docs/protocol.md, "Peer fetch").
   */
  reached(sequence: number): boolean {
    if (this.#highest === undefined) {
      return false;
    }
    if (sequenceDistance(sequence, this.#highest) >= 0) {
      return true;
    }
    return this.#claimedNext !== undefined && sequenceDistance(sequence, this.#claimedNext) > 0;
  }

  /** Next sequence after the newest held, for diagnostics. */
  get next(): number | undefined {
    return this.#highest === undefined ? undefined : sequenceAdd(this.#highest, 1);
  }
}
