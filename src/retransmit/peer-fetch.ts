/**
 * Peer fetch (docs/protocol.md, "Peer fetch"): a retransmit server asked for sequences it missed
 * asks its peers — the other retransmit servers of the session and a source of last resort —
 * before it answers not-held, so no packet is lost while someone holds it.
 *
 * Rules that keep it safe:
 * - it fetches only on behalf of an authenticated NACK from a repair server, never for a peer's
 *   own fetch (the NACK flag peerFetch), so two servers missing the same packet never loop;
 * - it asks one peer at a time, with a NACK no larger than the one it answers, and only peers
 *   it knows (configured, or heard in authenticated QUALITY or ANNOUNCE): never amplifying;
 * - a sequence already being fetched is not asked for again, a sequence no peer held is not
 *   asked for again for peerFetchMissMs (an answer that comes in that time is still kept), and at
 *   most peerFetchesMax fetches are in flight;
 * - each peer gets peerFetchTimeoutMs; the caller answers once the fetch settles, in any case.
 */
import { sameEndpoint } from '../crypto/control-auth.js';
import {
  nackRangePacketsMax,
  nackRangesMax,
  peerFetchesMax,
  peerFetchMissesMax,
  peerFetchMissMs,
  peerFetchPeersMax,
  peerFetchTimeoutMs,
} from '../limits.js';
import type { RoleClock, Timer } from '../net/runtime.js';
import {
  type Control,
  encodeNack,
  type PeerEndpoint,
  type RepairBody,
  type SequenceRange,
} from '../protocol/control.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';
import { runKey } from '../protocol/session-window.js';

/** What the fetcher needs of a control channel (src/crypto/control-auth.ts). */
export interface FetchSealer {
  seal(packet: Buffer, to?: PeerEndpoint): Buffer;
}

/** Counters of peer fetch, shown in a retransmit server's status. */
export interface PeerFetchCounters {
  /** Fetches started (a NACK named sequences this server did not hold). */
  fetches: number;
  /** NACKs sent to peers. */
  fetchNacksSent: number;
  /** Sequences a peer sent back and that were stored. */
  fetchedPackets: number;
  /** Sequences no peer sent back in time. */
  fetchMissedPackets: number;
  /** Of fetchedPackets: sent back after their fetch had given up, and kept. */
  fetchedLatePackets: number;
  /** NACKs answered at once because peerFetchesMax fetches were in flight. */
  fetchesRefused: number;
}

/** The fetcher's parts. */
export interface PeerFetcherOptions {
  readonly clock: RoleClock;
  /** Schedules the per-peer timeouts; owned by the role, so close() clears them. */
  readonly setTimeout: (fn: () => void, delayMs: number) => Timer;
  readonly channel: FetchSealer;
  readonly sendTo: (datagram: Buffer, to: PeerEndpoint) => void;
  /** Where peers send their REPAIRs: this server's control socket. */
  readonly replyTo: () => PeerEndpoint;
  /** Peers to ask, best first (without this server itself). */
  readonly peers: () => readonly PeerEndpoint[];
  /** Stores a fetched DATA datagram in the run's buffer; false when the run is not buffered here. */
  readonly store: (sessionId: number, incarnation: number, sequence: number, datagram: Buffer) => boolean;
  /**
   * A signed session: true when no verified manifest vouches for the run's sequence yet, so the
   * fetch NACK asks for signatures too (docs/protocol.md, "Peer fetch"). Absent: never.
   */
  readonly lacksSignature?:
    | ((sessionId: number, incarnation: number, sequence: number) => boolean)
    | undefined;
  readonly drop: (reason: string) => void;
}

interface Fetch {
  readonly sessionId: number;
  readonly incarnation: number;
  /** Sequences still wanted. */
  readonly remaining: Set<number>;
  /** Of remaining: those asked of the current peer and not answered yet. */
  readonly asked: Set<number>;
  readonly peers: PeerEndpoint[];
  peer: PeerEndpoint | undefined;
  timer: Timer | undefined;
  readonly done: () => void;
  /** Settles with the fetch. */
  settled: Promise<void>;
}

/** Counters of a fetcher that has fetched nothing yet (or of a server that fetches nothing). */
export function emptyPeerFetchCounters(): PeerFetchCounters {
  return {
    fetches: 0,
    fetchNacksSent: 0,
    fetchedPackets: 0,
    fetchMissedPackets: 0,
    fetchedLatePackets: 0,
    fetchesRefused: 0,
  };
}

/** Fetches missed sequences from peers. */
export class PeerFetcher {
  readonly counters: PeerFetchCounters = emptyPeerFetchCounters();
  readonly #options: PeerFetcherOptions;
  readonly #active = new Set<Fetch>();
  /** `${run}/${sequence}` → when no peer held it (oldest first). */
  readonly #misses = new Map<string, number>();
  #closed = false;

  constructor(options: PeerFetcherOptions) {
    this.#options = options;
  }

  /** Fetches in flight. */
  get activeCount(): number {
    return this.#active.size;
  }

  /**
   * Asks peers for the sequences of a run; resolves when every one came back, or every peer was
   * asked (each for at most peerFetchTimeoutMs), or at once when there is nothing to ask.
   */
  fetch(sessionId: number, incarnation: number, sequences: readonly number[]): Promise<void> {
    const run = runKey(sessionId, incarnation);
    const now = this.#options.clock.nowMs();
    this.#forgetMisses(now);
    // A sequence another fetch is asking for is not asked again: this one waits for that one.
    const inFlight = new Set<number>();
    const overlapping: Promise<void>[] = [];
    const asked = new Set(sequences);
    for (const other of this.#active) {
      if (other.sessionId === sessionId && other.incarnation === incarnation) {
        let overlaps = false;
        for (const sequence of other.remaining) {
          inFlight.add(sequence);
          overlaps ||= asked.has(sequence);
        }
        if (overlaps) {
          overlapping.push(other.settled);
        }
      }
    }
    const wanted = sequences.filter(
      (sequence) => !inFlight.has(sequence) && !this.#misses.has(`${run}/${sequence}`),
    );
    const peers = this.#options.peers().slice(0, peerFetchPeersMax);
    if (this.#closed || wanted.length === 0 || peers.length === 0) {
      return settleAll(overlapping);
    }
    if (this.#active.size >= peerFetchesMax) {
      this.counters.fetchesRefused++;
      return settleAll(overlapping);
    }
    this.counters.fetches++;
    let done: () => void = () => undefined;
    const settled = new Promise<void>((resolve) => {
      done = resolve;
    });
    const fetch: Fetch = {
      sessionId,
      incarnation,
      remaining: new Set(wanted),
      asked: new Set(),
      peers: [...peers],
      peer: undefined,
      timer: undefined,
      done,
      settled,
    };
    this.#active.add(fetch);
    this.#askNext(fetch);
    return settleAll([settled, ...overlapping]);
  }

  /**
   * Takes an authenticated REPAIR that came to this server's control socket. A held one fills the
   * sequence for every fetch waiting on it; a not-held one from the peer being asked moves that
   * fetch to its next peer once the peer has answered all it was asked. False when no fetch
   * wanted it (counted by the caller).
   */
  onRepair(repair: Control<RepairBody>, original: Buffer | undefined, remote: PeerEndpoint): boolean {
    let wanted = false;
    if (repair.data !== undefined && original !== undefined) {
      const sequence = repair.sequence;
      for (const fetch of [...this.#active]) {
        if (!this.#sameRun(fetch, repair) || !fetch.remaining.has(sequence)) {
          continue;
        }
        if (!wanted && this.#options.store(repair.sessionId, repair.incarnation, sequence, original)) {
          this.counters.fetchedPackets++;
        }
        wanted = true;
        fetch.remaining.delete(sequence);
        fetch.asked.delete(sequence);
        this.#progress(fetch);
      }
      // An answer that came after its fetch gave up (a slow or busy peer) is still what we asked
      // for: kept, so the repair server's next NACK finds it here.
      const late = `${runKey(repair.sessionId, repair.incarnation)}/${sequence}`;
      if (!wanted && this.#misses.delete(late)) {
        wanted = true;
        if (this.#options.store(repair.sessionId, repair.incarnation, sequence, original)) {
          this.counters.fetchedPackets++;
          this.counters.fetchedLatePackets++;
        }
      }
      return wanted;
    }
    for (const fetch of [...this.#active]) {
      if (!this.#sameRun(fetch, repair) || fetch.peer === undefined || !sameEndpoint(fetch.peer, remote)) {
        continue;
      }
      for (let i = 0; i < repair.notHeldCount; i++) {
        if (fetch.asked.delete(sequenceAdd(repair.sequence, i))) {
          wanted = true;
        }
      }
      this.#progress(fetch);
    }
    return wanted;
  }

  /** A peer told us its id (an introduction): ask it again at once, now naming it. */
  onIntroduction(remote: PeerEndpoint): void {
    for (const fetch of this.#active) {
      if (fetch.peer !== undefined && sameEndpoint(fetch.peer, remote) && fetch.asked.size > 0) {
        this.#send(fetch, [...fetch.asked]);
        fetch.timer?.cancel(); // a full wait for the answer to this ask
        fetch.timer = this.#options.setTimeout(() => this.#askNext(fetch), peerFetchTimeoutMs);
      }
    }
  }

  /** Settles every fetch at once; later fetches resolve at once. */
  close(): void {
    this.#closed = true;
    for (const fetch of [...this.#active]) {
      this.#finish(fetch);
    }
  }

  #sameRun(fetch: Fetch, repair: { sessionId: number; incarnation: number }): boolean {
    return fetch.sessionId === repair.sessionId && fetch.incarnation === repair.incarnation;
  }

  /** Moves a fetch on when it has all it wanted, or its current peer answered everything. */
  #progress(fetch: Fetch): void {
    if (fetch.remaining.size === 0) {
      this.#finish(fetch);
    } else if (fetch.asked.size === 0) {
      fetch.timer?.cancel();
      this.#askNext(fetch);
    }
  }

  #askNext(fetch: Fetch): void {
    fetch.timer = undefined;
    const peer = fetch.peers.shift();
    if (peer === undefined || this.#closed) {
      this.#finish(fetch);
      return;
    }
    fetch.peer = peer;
    fetch.asked.clear();
    for (const sequence of fetch.remaining) {
      fetch.asked.add(sequence);
    }
    this.#send(fetch, [...fetch.asked]);
    fetch.timer = this.#options.setTimeout(() => this.#askNext(fetch), peerFetchTimeoutMs);
  }

  /** One NACK (or several, when the ranges do not fit one) to the fetch's current peer. */
  #send(fetch: Fetch, sequences: number[]): void {
    const peer = fetch.peer;
    if (peer === undefined) {
      return;
    }
    const ranges = toRanges(sequences);
    const lacksSignature = this.#options.lacksSignature;
    const signatures =
      lacksSignature !== undefined &&
      sequences.some((sequence) => lacksSignature(fetch.sessionId, fetch.incarnation, sequence));
    for (let i = 0; i < ranges.length; i += nackRangesMax) {
      const slice = ranges.slice(i, i + nackRangesMax);
      const nack = encodeNack(
        {
          sessionId: fetch.sessionId,
          incarnation: fetch.incarnation,
          sequence: slice[0]?.start ?? 0,
          timestampUs: this.#options.clock.wallUs(),
        },
        { replyTo: this.#options.replyTo(), ranges: slice, peerFetch: true, signatures },
      );
      this.#options.sendTo(this.#options.channel.seal(nack, peer), peer);
      this.counters.fetchNacksSent++;
    }
  }

  #finish(fetch: Fetch): void {
    if (!this.#active.delete(fetch)) {
      return;
    }
    fetch.timer?.cancel();
    fetch.timer = undefined;
    const now = this.#options.clock.nowMs();
    const run = runKey(fetch.sessionId, fetch.incarnation);
    for (const sequence of fetch.remaining) {
      this.counters.fetchMissedPackets++;
      this.#misses.set(`${run}/${sequence}`, now);
    }
    while (this.#misses.size > peerFetchMissesMax) {
      const oldest = this.#misses.keys().next().value;
      if (oldest === undefined) {
        break;
      }
      this.#misses.delete(oldest);
    }
    fetch.done();
  }

  #forgetMisses(now: number): void {
    for (const [key, atMs] of this.#misses) {
      if (now - atMs <= peerFetchMissMs) {
        break;
      }
      this.#misses.delete(key);
    }
  }
}

function settleAll(promises: Promise<void>[]): Promise<void> {
  return promises.length === 0 ? Promise.resolve() : Promise.all(promises).then(() => undefined);
}

/** Sequences as ranges in serial order, each at most nackRangePacketsMax long. */
export function toRanges(sequences: readonly number[]): SequenceRange[] {
  if (sequences.length === 0) {
    return [];
  }
  const base = sequences[0] ?? 0;
  const sorted = [...sequences].sort((a, b) => sequenceDistance(base, a) - sequenceDistance(base, b));
  const ranges: SequenceRange[] = [];
  let start = sorted[0] ?? 0;
  let count = 1;
  for (const sequence of sorted.slice(1)) {
    if (sequence === sequenceAdd(start, count) && count < nackRangePacketsMax) {
      count++;
    } else if (sequence !== sequenceAdd(start, count - 1)) {
      ranges.push({ start, count });
      start = sequence;
      count = 1;
    }
  }
  ranges.push({ start, count });
  return ranges;
}
