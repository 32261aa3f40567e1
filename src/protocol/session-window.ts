/**
 * The in-order window of one session run, shared by the receiver and the repair server
 * (docs/protocol.md, "Windows: what one packet may move"). It holds DATA between the delivery
 * point (base) and base + packetsMax, bounded in packets and in bytes, and knows where the run
 * ends as far as DATA, HEARTBEAT and END have shown. No single packet can move it far:
 *
 * - DATA further than packetsMax ahead is set aside; only resyncPacketsMin such packets in a row,
 *   with no DATA inside the window between them, make the window jump (a real outage longer than
 *   the window), and what is jumped over is counted in one subtraction, never walked;
 * - a HEARTBEAT or END may move the known end at most progressAheadPacketsMax beyond the highest
 *   DATA received.
 *
 * Pure logic over serial-number arithmetic (RFC 1982): no I/O, no clock.
 */
import assert from 'node:assert/strict';
import { progressAheadPacketsMax as progressAheadPacketsMaxDefault } from '../limits.js';
import { SequenceRing } from './sequence-ring.js';
import { sequenceAdd, sequenceDistance } from './serial.js';

/** Bounds of a window. */
export interface WindowLimits {
  /** Sequences at and after base that may be held. */
  readonly packetsMax: number;
  /** Bytes that may be held (window and set-aside together). */
  readonly bytesMax: number;
  /** How far beyond the highest DATA a HEARTBEAT or END may move the known end. */
  readonly progressAheadPacketsMax: number;
  /** Packets beyond the window, in a row, that make it jump to them. */
  readonly resyncPacketsMin: number;
  /** ... and for at least this long (monotonic ms) with no DATA inside the window; default 0. */
  readonly resyncQuietMs?: number | undefined;
}

/** What became of an offered DATA packet. */
export type OfferResult =
  /** Held in the window. */
  | 'held'
  /** Before the delivery point. */
  | 'old'
  /** Already held. */
  | 'duplicate'
  /** Beyond the window; set aside (or dropped when the set-aside is full). */
  | 'beyond'
  /** Beyond the window, and the resyncPacketsMin-th in a row: call resync(). */
  | 'resync'
  /** The byte bound would be passed: move the delivery point on, then offer again. */
  | 'over-bytes';

/** What a claim (HEARTBEAT, END) did to the known end. */
export type ClaimResult = 'extended' | 'unchanged' | 'too-far';

/** The window of one run. */
export class SessionWindow {
  readonly #limits: WindowLimits;
  #base: number;
  /** Exclusive end of what is known to exist: sequences in [base, end) were sent. */
  #end: number;
  /** Highest DATA received, as a distance-comparable sequence; undefined before any. */
  #highestData: number | undefined;
  /** The DATA held, all within packetsMax of base (a ring, not a Map: see SequenceRing). */
  readonly #held: SequenceRing<Buffer>;
  #heldBytes = 0;
  readonly #aside = new Map<number, Buffer>();
  #asideBytes = 0;
  #beyondInARow = 0;
  #beyondSinceMs = 0;

  constructor(base: number, limits: WindowLimits) {
    assert.ok(limits.packetsMax > 0);
    assert.ok(limits.resyncPacketsMin > 0);
    this.#limits = limits;
    this.#held = new SequenceRing<Buffer>(limits.packetsMax);
    this.#base = base >>> 0;
    this.#end = this.#base;
  }

  /** The next sequence to deliver. */
  get base(): number {
    return this.#base;
  }

  /** Exclusive end of the sequences known to exist. */
  get end(): number {
    return this.#end;
  }

  /** Highest DATA sequence received, if any. */
  get highestData(): number | undefined {
    return this.#highestData;
  }

  get heldCount(): number {
    return this.#held.size;
  }

  /** Bytes held in the window and set aside. */
  get heldBytes(): number {
    return this.#heldBytes + this.#asideBytes;
  }

  /** Sequences known to exist and not yet delivered or passed. */
  get outstanding(): number {
    return sequenceDistance(this.#base, this.#end);
  }

  /** Whether sequence is held. */
  has(sequence: number): boolean {
    return this.#held.has(sequence);
  }

  /** Whether DATA at a later sequence than this one has been received (so it was not the tail). */
  hasDataAfter(sequence: number): boolean {
    return this.#highestData !== undefined && sequenceDistance(sequence, this.#highestData) > 0;
  }

  /** Offers a DATA packet; nowMs (monotonic) times a run of packets beyond the window. */
  offer(sequence: number, item: Buffer, nowMs = 0): OfferResult {
    const distance = sequenceDistance(this.#base, sequence);
    if (distance < 0) {
      return 'old';
    }
    if (this.#held.has(sequence)) {
      return 'duplicate';
    }
    if (distance >= this.#limits.packetsMax) {
      return this.#setAside(sequence, item, nowMs);
    }
    if (this.heldBytes + item.length > this.#limits.bytesMax) {
      return 'over-bytes';
    }
    this.#held.set(sequence, item);
    this.#heldBytes += item.length;
    if (this.#beyondInARow > 0) {
      // DATA inside the window: the flow has not moved on; what was set aside was stray.
      this.#beyondInARow = 0;
      this.#aside.clear();
      this.#asideBytes = 0;
    }
    if (this.#highestData === undefined || sequenceDistance(this.#highestData, sequence) > 0) {
      this.#highestData = sequence;
    }
    const next = sequenceAdd(sequence, 1);
    if (sequenceDistance(this.#end, next) > 0) {
      this.#end = next;
    }
    return 'held';
  }

  #setAside(sequence: number, item: Buffer, nowMs: number): OfferResult {
    if (this.#beyondInARow === 0) {
      this.#beyondSinceMs = nowMs;
    }
    this.#beyondInARow++;
    if (
      !this.#aside.has(sequence) &&
      this.#aside.size < this.#limits.resyncPacketsMin &&
      this.heldBytes + item.length <= this.#limits.bytesMax
    ) {
      this.#aside.set(sequence, item);
      this.#asideBytes += item.length;
    }
    const long = nowMs - this.#beyondSinceMs >= (this.#limits.resyncQuietMs ?? 0);
    return this.#beyondInARow >= this.#limits.resyncPacketsMin && long ? 'resync' : 'beyond';
  }

  /**
   * A HEARTBEAT or END says the source's next sequence is `next`: sequences before it exist. The
   * known end moves at most progressAheadPacketsMax beyond the highest DATA received (or beyond
   * base before any DATA), and never past the window.
   */
  claim(next: number): ClaimResult {
    if (sequenceDistance(this.#end, next) <= 0) {
      return 'unchanged';
    }
    const anchor = this.#highestData === undefined ? this.#base : sequenceAdd(this.#highestData, 1);
    // Ahead of the known end, so ahead of base: a distance from base at or below 0 is a claim about
    // 2^31 away (ahead of the end, "behind" base), which would make the window 2^31 long.
    const fromBase = sequenceDistance(this.#base, next);
    if (
      sequenceDistance(anchor, next) > this.#limits.progressAheadPacketsMax ||
      fromBase <= 0 ||
      fromBase > this.#limits.packetsMax
    ) {
      return 'too-far';
    }
    this.#end = next >>> 0;
    return 'extended';
  }

  /**
   * An END says the run ends before `next`. The part of the known end that only HEARTBEATs claimed
   * (no DATA there) is taken back to it, so a forged HEARTBEAT cannot keep a finished run open.
   * Returns whether the known end now equals `next`; false when DATA at or after `next` was
   * received (the END contradicts the data and is not believed) or `next` is too far ahead.
   */
  endAt(next: number): boolean {
    if (this.#highestData !== undefined && sequenceDistance(this.#highestData, next) <= 0) {
      return false;
    }
    if (sequenceDistance(this.#base, next) < 0) {
      return false;
    }
    if (sequenceDistance(this.#end, next) < 0) {
      this.#end = next >>> 0;
      return true;
    }
    return this.claim(next) !== 'too-far' && this.#end === next >>> 0;
  }

  /** Removes and returns the packet at base, moving base on; undefined when base is a gap. */
  take(): Buffer | undefined {
    const item = this.#held.get(this.#base);
    if (item === undefined) {
      return undefined;
    }
    this.#held.delete(this.#base);
    this.#heldBytes -= item.length;
    this.#advance();
    return item;
  }

  /** Passes the gap at base (the caller counts it lost). Only for a sequence not held. */
  skip(): void {
    assert.ok(!this.#held.has(this.#base), 'skip() over a held packet');
    this.#advance();
  }

  #advance(): void {
    this.#base = sequenceAdd(this.#base, 1);
    if (sequenceDistance(this.#end, this.#base) > 0) {
      this.#end = this.#base;
    }
  }

  /**
   * Delivers every held packet in order up to the known end, passing gaps: onItem for each packet,
   * onGap for each sequence passed. At most packetsMax + progressAheadPacketsMax steps.
   */
  drainToEnd(onItem: (item: Buffer, sequence: number) => void, onGap: (sequence: number) => void): void {
    while (sequenceDistance(this.#base, this.#end) > 0) {
      const sequence = this.#base;
      const item = this.take();
      if (item === undefined) {
        onGap(sequence);
        this.skip();
      } else {
        onItem(item, sequence);
      }
    }
  }

  /**
   * After 'resync': delivers what the window holds (as drainToEnd), then jumps to the earliest
   * packet set aside and takes the set-aside packets in. Returns how many sequences were jumped
   * over beyond the known end (to be counted lost, like onGap, but in one number).
   */
  resync(onItem: (item: Buffer, sequence: number) => void, onGap: (sequence: number) => void): number {
    this.drainToEnd(onItem, onGap);
    // Jump to the cluster the latest packets form; a stray packet far from them is dropped.
    const latest = [...this.#aside.keys()].at(-1);
    let first: number | undefined;
    for (const sequence of this.#aside.keys()) {
      if (latest === undefined || Math.abs(sequenceDistance(latest, sequence)) >= this.#limits.packetsMax) {
        this.#aside.delete(sequence);
        continue;
      }
      if (first === undefined || sequenceDistance(first, sequence) < 0) {
        first = sequence;
      }
    }
    this.#beyondInARow = 0;
    if (first === undefined) {
      return 0;
    }
    const jumped = Math.max(0, sequenceDistance(this.#base, first));
    this.#base = first;
    this.#end = first;
    this.#highestData = undefined;
    const aside = [...this.#aside];
    this.#aside.clear();
    this.#asideBytes = 0;
    for (const [sequence, item] of aside) {
      this.offer(sequence, item);
    }
    return jumped;
  }
}

/** Bounds of the DATA held before a DESCRIPTOR names the run to take. */
export interface PendingLimits {
  readonly packetsMax: number;
  readonly bytesMax: number;
  readonly runsMax: number;
}

/** The name of a run as a map key: session id and incarnation. */
export function runKey(sessionId: number, incarnation: number): string {
  return `${sessionId >>> 0}/${incarnation >>> 0}`;
}

/** What is held for one run that has not been taken up. */
export interface PendingRun {
  readonly sessionId: number;
  readonly incarnation: number;
  /** DATA by sequence. */
  readonly data: Map<number, Buffer>;
  /** The run's latest DESCRIPTOR and its END, when seen. */
  descriptor: Buffer | undefined;
  end: Buffer | undefined;
  /** Order in which runs were last heard of. */
  heardAt: number;
}

/**
 * DATA (and the DESCRIPTOR and END) held per run before the run is taken up, so that the run a
 * receiver or repair server takes starts with its own packets only — never another session's or
 * another incarnation's — and a run that arrived while another was being served is not lost.
 */
export class PendingRuns {
  readonly #limits: PendingLimits;
  readonly #runs = new Map<string, PendingRun>();
  #packets = 0;
  #bytes = 0;
  #heard = 0;

  constructor(limits: PendingLimits) {
    this.#limits = limits;
  }

  get packetCount(): number {
    return this.#packets;
  }

  get byteCount(): number {
    return this.#bytes;
  }

  #run(sessionId: number, incarnation: number, bytes: number): PendingRun | undefined {
    const key = runKey(sessionId, incarnation);
    let run = this.#runs.get(key);
    if (this.#bytes + bytes > this.#limits.bytesMax) {
      return undefined;
    }
    if (run === undefined) {
      if (this.#runs.size >= this.#limits.runsMax) {
        return undefined;
      }
      run = { sessionId, incarnation, data: new Map(), descriptor: undefined, end: undefined, heardAt: 0 };
      this.#runs.set(key, run);
    }
    run.heardAt = ++this.#heard;
    return run;
  }

  /** Holds a DATA packet of a run; false when a bound is reached (the caller counts the drop). */
  hold(sessionId: number, incarnation: number, sequence: number, item: Buffer): boolean {
    const existing = this.#runs.get(runKey(sessionId, incarnation));
    if (existing?.data.has(sequence)) {
      return true;
    }
    if (this.#packets >= this.#limits.packetsMax) {
      return false;
    }
    const run = this.#run(sessionId, incarnation, item.length);
    if (run === undefined) {
      return false;
    }
    run.data.set(sequence, item);
    this.#packets++;
    this.#bytes += item.length;
    return true;
  }

  /** Remembers a run's latest DESCRIPTOR or its END (one of each per run). */
  note(sessionId: number, incarnation: number, what: 'descriptor' | 'end', datagram: Buffer): void {
    const run = this.#run(sessionId, incarnation, datagram.length);
    if (run === undefined) {
      return;
    }
    const previous = run[what];
    this.#bytes += datagram.length - (previous?.length ?? 0);
    run[what] = datagram;
  }

  /** Takes what is held for one run and forgets every other run. */
  take(sessionId: number, incarnation: number): PendingRun | undefined {
    const run = this.#runs.get(runKey(sessionId, incarnation));
    this.clear();
    return run;
  }

  /** Takes the run heard of most recently whose DESCRIPTOR is known, if any. */
  takeLatestDescribed(): PendingRun | undefined {
    let latest: PendingRun | undefined;
    for (const run of this.#runs.values()) {
      if (run.descriptor !== undefined && (latest === undefined || run.heardAt > latest.heardAt)) {
        latest = run;
      }
    }
    return latest === undefined ? undefined : this.take(latest.sessionId, latest.incarnation);
  }

  clear(): void {
    this.#runs.clear();
    this.#packets = 0;
    this.#bytes = 0;
  }
}

/** What a run's DESCRIPTOR says that an END must agree with. */
export interface RunShape {
  readonly kind: number;
  readonly firstSequence: number;
  readonly packetPayloadBytes: number;
  readonly totalBytes: number | undefined;
}

/** The fields of an END checked against the run. */
export interface EndClaim {
  readonly sequence: number;
  readonly packetCount: number;
  readonly byteCount: number;
}

/**
 * Why an END cannot be the run's real end, or undefined when it can (docs/protocol.md, "Windows").
 * An honest source's END counts every DATA packet from the first sequence to its next sequence,
 * and a file's END falls where the DESCRIPTOR's size puts it. Without signatures an END can still
 * be forged by someone who reads the DESCRIPTOR, but not blindly, and never for a file.
 */
export function endContradiction(run: RunShape, end: EndClaim): string | undefined {
  if (end.packetCount % 0x1_0000_0000 !== (end.sequence - run.firstSequence) >>> 0) {
    return 'its packet count does not match its sequence';
  }
  if (run.kind === 1 && run.totalBytes !== undefined) {
    const packets = Math.ceil(run.totalBytes / run.packetPayloadBytes);
    if (end.sequence !== (run.firstSequence + packets) >>> 0 || end.byteCount !== run.totalBytes) {
      return "it does not fall where the file's size puts the end";
    }
  }
  return undefined;
}

/**
 * Whether DATA at `sequence` lies at or after the end a file's DESCRIPTOR puts by its size (first
 * sequence + packets of the file): an honest source never sends it, so it is a forgery, and taking
 * it would emit or write bytes after the file and make the genuine END look contradicted
 * (docs/protocol.md, "Windows"). False for a run whose size is not known.
 */
export function isPastFileEnd(run: RunShape, sequence: number): boolean {
  const packets = filePackets(run);
  return packets !== undefined && sequenceDistance(run.firstSequence, sequence) >= packets;
}

/**
 * Whether a HEARTBEAT or END claiming `next` as the next sequence claims packets past the end a
 * file's DESCRIPTOR puts by its size: not believed, so that one forged claim draws no NACKs for
 * packets that cannot exist. False for a run whose size is not known.
 */
export function isClaimPastFileEnd(run: RunShape, next: number): boolean {
  const packets = filePackets(run);
  return packets !== undefined && sequenceDistance(run.firstSequence, next) > packets;
}

/**
 * Whether DATA at `sequence` (within the file) has a payload length other than the one a file's
 * DESCRIPTOR puts there: every packet but the last carries the packet payload bytes, the last one
 * the rest of the file. An honest source never sends another length, so one forged packet of the
 * wrong length is not taken in place of the genuine one. False for a run whose size is not known.
 */
export function isWrongFileLength(run: RunShape, sequence: number, payloadBytes: number): boolean {
  const packets = filePackets(run);
  if (packets === undefined || run.totalBytes === undefined) {
    return false;
  }
  const index = sequenceDistance(run.firstSequence, sequence);
  if (index < 0 || index >= packets) {
    return false; // not within the file: isPastFileEnd and the window judge it
  }
  const last = run.totalBytes - (packets - 1) * run.packetPayloadBytes;
  return payloadBytes !== (index === packets - 1 ? last : run.packetPayloadBytes);
}

/** Packets of a file whose size its DESCRIPTOR gives; undefined for any other run. */
export function filePackets(run: RunShape): number | undefined {
  if (run.kind !== 1 || run.totalBytes === undefined) {
    return undefined;
  }
  return Math.ceil(run.totalBytes / run.packetPayloadBytes);
}

/**
 * Whether DATA at `sequence` contradicts an END at `end`: it is at or after it, by less than a
 * window (a stray sequence far away, e.g. 2^31 off, proves nothing).
 */
export function isJustAfter(
  end: number,
  sequence: number,
  windowPackets = progressAheadPacketsMaxDefault,
): boolean {
  const distance = sequenceDistance(end, sequence);
  return distance >= 0 && distance < windowPackets;
}
