/**
 * The NACK answerer (docs/architecture.md, "Retransmit server"): given an authenticated NACK,
 * answers each sequence it names from a buffer — a REPAIR carrying the original DATA datagram,
 * or a not-held REPAIR for a run of sequences it does not hold — rate limited per requester, and,
 * when answers go once by multicast on a repair group, suppressing a sequence multicast moments
 * ago. Shared by the retransmit server and a source that keeps its own session
 * (`send --retransmit-listen`): both answer by the same rules (docs/protocol.md, "NACK").
 *
 * It takes its clock, the channel that seals answers, the sockets it answers on and an event sink;
 * it keeps no state for a requester it has not authenticated (the caller accepts the NACK first).
 */
import { repairMulticastRecentMs, repairMulticastRememberedMax, repairSuppressMs } from '../limits.js';
import {
  type Control,
  encodeRepair,
  encodeRepairNotHeld,
  type NackBody,
  type PeerEndpoint,
} from '../protocol/control.js';
import { type HeaderFields, headerBytes } from '../protocol/packet.js';
import { sequenceAdd } from '../protocol/serial.js';
import { authTrailerBytes } from '../protocol/sizes.js';
import type { RoleClock } from './runtime.js';

/** What the answerer needs of a control channel: sealing answers (src/crypto/control-auth.ts). */
export interface AnswerSealer {
  /** Seals an answer for the process that sent the request. */
  sealReply(packet: Buffer, request: Control<NackBody>): Buffer;
  /** Seals a packet for no one in particular (a multicast). */
  seal(packet: Buffer): Buffer;
  /** An ANNOUNCE of no sessions for a requester that did not name us yet. */
  introduction(request: Control<NackBody>): Buffer;
}

/** Where answers leave: unicast to the requester, or once on a repair group. */
export interface AnswerSockets {
  sendTo(datagram: Buffer, to: PeerEndpoint): void;
  /** Present when answers go by multicast on a repair group (docs/protocol.md, "Repair group"). */
  readonly multicast?: ((datagram: Buffer) => void) | undefined;
}

/** Counters of the answerer, shown in a role's status. */
export interface NackAnswerCounters {
  nacksReceived: number;
  nacksAnswered: number;
  repairsSent: number;
  notHeldSent: number;
  repairBytesSent: number;
  rateLimited: number;
  suppressed: number;
}

/** The answerer's parts and settings. */
export interface NackAnswererOptions {
  readonly clock: RoleClock;
  readonly channel: AnswerSealer;
  readonly sockets: AnswerSockets;
  /** Repair bytes per second allowed to one requester (token bucket). */
  readonly repairRateBitsPerSecond: number;
  /** The original DATA datagram of a run's sequence, if held. */
  readonly lookup: (sessionId: number, incarnation: number, sequence: number) => Buffer | undefined;
  /** Event sink: a reason counted when something is dropped or refused. */
  readonly drop: (reason: string) => void;
}

interface Bucket {
  creditBytes: number;
  refilledAtMs: number;
}

/** Answers authenticated NACKs from a buffer. */
export class NackAnswerer {
  readonly counters: NackAnswerCounters = {
    nacksReceived: 0,
    nacksAnswered: 0,
    repairsSent: 0,
    notHeldSent: 0,
    repairBytesSent: 0,
    rateLimited: 0,
    suppressed: 0,
  };
  readonly #options: NackAnswererOptions;
  readonly #buckets = new Map<number, Bucket>();
  /** (session, sequence) repaired by multicast recently, oldest first. */
  readonly #recentlyMulticast = new Map<string, number>();

  constructor(options: NackAnswererOptions) {
    this.#options = options;
  }

  /** Requesters with a rate bucket. */
  get requesterCount(): number {
    return this.#buckets.size;
  }

  /**
   * Answers a NACK the channel has accepted from `remote` (its reply address). A NACK that does
   * not name us yet gets an introduction, in fewer bytes than it sent (docs/protocol.md, "NACK").
   */
  answer(nack: Control<NackBody>, remote: PeerEndpoint): void {
    const { channel, sockets, clock, lookup } = this.#options;
    if (nack.auth.targetId === 0) {
      this.#options.drop('nack-no-target');
      sockets.sendTo(channel.introduction(nack), remote);
      return;
    }
    this.counters.nacksReceived++;
    const now = clock.nowMs();
    for (const [key, atMs] of this.#recentlyMulticast) {
      if (
        now - atMs <= repairMulticastRecentMs &&
        this.#recentlyMulticast.size <= repairMulticastRememberedMax
      ) {
        break;
      }
      this.#recentlyMulticast.delete(key);
    }
    const fields = (sequence: number): HeaderFields => ({
      sessionId: nack.sessionId,
      incarnation: nack.incarnation,
      sequence,
      timestampUs: clock.wallUs(),
    });
    let answered = false;
    for (const range of nack.ranges) {
      let notHeldStart: number | undefined;
      let notHeldCount = 0;
      const flushNotHeld = () => {
        if (notHeldStart !== undefined) {
          sockets.sendTo(
            channel.sealReply(encodeRepairNotHeld(fields(notHeldStart), notHeldCount), nack),
            remote,
          );
          this.counters.notHeldSent++;
          notHeldStart = undefined;
          notHeldCount = 0;
        }
      };
      for (let i = 0; i < range.count; i++) {
        const sequence = sequenceAdd(range.start, i);
        const original = lookup(nack.sessionId, nack.incarnation, sequence);
        if (original === undefined) {
          notHeldStart ??= sequence;
          notHeldCount++;
          continue;
        }
        flushNotHeld();
        if (this.#send(nack, remote, sequence, original, now, fields(sequence))) {
          answered = true;
        }
      }
      flushNotHeld();
    }
    if (answered) {
      this.counters.nacksAnswered++;
    }
  }

  /** Sends one held sequence, unless suppressed or over the requester's rate; true when sent. */
  #send(
    nack: Control<NackBody>,
    remote: PeerEndpoint,
    sequence: number,
    original: Buffer,
    now: number,
    fields: HeaderFields,
  ): boolean {
    const { channel, sockets } = this.#options;
    const suppressKey = `${nack.sessionId}/${nack.incarnation}/${sequence}`;
    if (sockets.multicast !== undefined && this.#crossed(nack, suppressKey, now)) {
      this.counters.suppressed++; // already multicast to every repair server behind the group
      return false;
    }
    if (!this.#allow(nack.auth.senderId, original.length + headerBytes + authTrailerBytes, now)) {
      this.counters.rateLimited++;
      return false;
    }
    // Unicast: for the requester (and always for a peer's fetch); on the repair group: for every
    // repair server (target 0).
    const repair = encodeRepair(fields, original);
    if (sockets.multicast === undefined || nack.peerFetch === true) {
      const reply = channel.sealReply(repair, nack);
      sockets.sendTo(reply, remote);
      this.counters.repairBytesSent += reply.length;
    } else {
      const reply = channel.seal(repair);
      sockets.multicast(reply);
      this.#recentlyMulticast.delete(suppressKey); // most recent last
      this.#recentlyMulticast.set(suppressKey, now);
      this.counters.repairBytesSent += reply.length;
    }
    this.counters.repairsSent++;
    return true;
  }

  /**
   * Whether a request for a sequence multicast lately is answered by that multicast (docs/protocol.md,
   * "Repair group: one multicast per lost packet"): a first request within repairMulticastRecentMs
   * crossed it (the requester will read it, or ask again with the again flag if it lost it); a
   * request again within repairSuppressMs crossed it too. A peer's fetch is never suppressed.
   */
  #crossed(nack: Control<NackBody>, key: string, now: number): boolean {
    const atMs = this.#recentlyMulticast.get(key);
    if (atMs === undefined || nack.peerFetch === true) {
      return false;
    }
    return now - atMs <= (nack.again === true ? repairSuppressMs : repairMulticastRecentMs);
  }

  /** Takes tokens for a repair to one requester; false when over its rate. */
  #allow(senderId: number, bytes: number, now: number): boolean {
    const bytesPerMs = this.#options.repairRateBitsPerSecond / 8000;
    const burst = Math.max(bytesPerMs * 50, 64 * 1500);
    let bucket = this.#buckets.get(senderId);
    if (bucket === undefined) {
      bucket = { creditBytes: burst, refilledAtMs: now };
      this.#buckets.set(senderId, bucket);
    }
    bucket.creditBytes = Math.min(burst, bucket.creditBytes + (now - bucket.refilledAtMs) * bytesPerMs);
    bucket.refilledAtMs = now;
    if (bucket.creditBytes < bytes) {
      return false;
    }
    bucket.creditBytes -= bytes;
    return true;
  }
}
