/**
 * The NACK answerer (docs/architecture.md, "Retransmit server"): given an authenticated NACK,
 * answers each sequence it names from a buffer — a REPAIR carrying the original DATA datagram,
 * or a not-held REPAIR for a run of sequences it does not hold — paced per requester (at the
 * configured repair rate, or below it at a ceiling that follows the edge), never answering a
 * sequence twice while the first answer is on its way, and, when answers go once by multicast on a repair group, suppressing a sequence
 * multicast moments ago (docs/architecture.md, "Pacing repairs"). Shared by the retransmit server and a source that keeps its own session
 * (`send --retransmit-listen`): both answer by the same rules (docs/protocol.md, "NACK").
 *
 * It takes its clock, the channel that seals answers, the sockets it answers on and an event sink;
 * it keeps no state for a requester it has not authenticated (the caller accepts the NACK first).
 */
import {
  repairAnswerBurstMs,
  repairAnswerBurstPacketsMin,
  repairAnswerQueuePacketsMax,
  repairAnswerRecentMs,
  repairAnswerRememberedMax,
  repairAnswerRequestersMax,
  repairMulticastRecentMs,
  repairMulticastRememberedMax,
  repairSuppressMs,
} from '../limits.js';
import { OldestFirst } from '../oldest-first.js';
import {
  type Control,
  encodeRepair,
  encodeRepairNotHeld,
  type NackBody,
  type PeerEndpoint,
} from '../protocol/control.js';
import { type HeaderFields, headerBytes, offsetSequence } from '../protocol/packet.js';
import { sequenceAdd } from '../protocol/serial.js';
import { authTrailerBytes, repairFixedBytes } from '../protocol/sizes.js';
import type { RoleClock, Timer } from './runtime.js';

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
  /** Answers dropped: the requester's queue was full. */
  rateLimited: number;
  /** Requests not answered again: queued, answered moments ago, or crossed with a multicast. */
  suppressed: number;
  /** Requests again for answers sent before repairAnswerRecentMs: answers that did not get through. */
  answersLost: number;
  /** Signatures (manifests, END control signatures) sent ahead of REPAIRs (NACK signatures flag). */
  signaturesSent: number;
}

/** The answerer's parts and settings. */
export interface NackAnswererOptions {
  readonly clock: RoleClock;
  /** The owner's timers (paced answers wait on them; the owner's close() clears them). */
  readonly timers: Pick<RoleClock, 'setTimeout'>;
  readonly channel: AnswerSealer;
  readonly sockets: AnswerSockets;
  /** Repair rate allowed to one requester, bit/s: answers to it leave paced at this rate. */
  readonly repairRateBitsPerSecond: number;
  /**
   * A lower ceiling that follows the edge, read at each refill (the source of last resort hands its
   * adaptive rate, which its repair servers' FEEDBACK sets): answers never leave faster.
   */
  readonly repairRateCapBitsPerSecond?: (() => number) | undefined;
  /** The original DATA datagram of a run's sequence, if held. */
  readonly lookup: (sessionId: number, incarnation: number, sequence: number) => Buffer | undefined;
  /**
   * A signed session: the verified SIGNATURE datagram vouching for a held datagram (its manifest, or
   * an END's control signature), sent ahead of it to a NACK with the signatures flag
   * (docs/protocol.md, "REPAIR").
   */
  readonly signatureFor?: ((original: Buffer) => Buffer | undefined) | undefined;
  /** Event sink: a reason counted when something is dropped or refused. */
  readonly drop: (reason: string) => void;
}

/** Bytes of a not-held REPAIR: header, status, count and trailer. */
const notHeldBytes = headerBytes + repairFixedBytes + authTrailerBytes;

/** An answer waiting for its requester's credit. */
interface Queued {
  readonly nack: Control<NackBody>;
  readonly remote: PeerEndpoint;
  readonly sequence: number;
  readonly key: string;
  /**
   * A SIGNATURE datagram (a manifest, or an END's control signature) sent ahead of the REPAIRs it
   * vouches for; undefined for a held datagram, looked up again when it leaves.
   */
  readonly signature?: Buffer | undefined;
}

/** What the answerer keeps of one authenticated requester (its sender id). */
interface Requester {
  creditBytes: number;
  refilledAtMs: number;
  /** Answers waiting for credit, oldest first, by (session, incarnation, sequence). */
  readonly queue: Map<string, Queued>;
  /** (session, incarnation, sequence) answered lately → when, oldest first. */
  readonly answered: Map<string, { readonly atMs: number }>;
  /** `answered` oldest first, in constant time (a full Map drops one for each answer; see OldestFirst). */
  readonly oldestAnswered: OldestFirst<string, { readonly atMs: number }>;
  timer: Timer | undefined;
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
    answersLost: 0,
    signaturesSent: 0,
  };
  readonly #options: NackAnswererOptions;
  readonly #requesters = new Map<number, Requester>();
  /** (session, sequence) repaired by multicast recently, oldest first. */
  readonly #recentlyMulticast = new Map<string, number>();
  #closed = false;

  constructor(options: NackAnswererOptions) {
    this.#options = options;
  }

  /** Requesters remembered (each with its rate and queue). */
  get requesterCount(): number {
    return this.#requesters.size;
  }

  /** Answers waiting for credit, over every requester. */
  get queuedCount(): number {
    let queued = 0;
    for (const requester of this.#requesters.values()) {
      queued += requester.queue.size;
    }
    return queued;
  }

  /** The rate answers leave at now, per requester, bit/s. */
  get rateBitsPerSecond(): number {
    return this.#bytesPerMs() * 8000;
  }

  #bytesPerMs(): number {
    const { repairRateBitsPerSecond, repairRateCapBitsPerSecond } = this.#options;
    const cap = repairRateCapBitsPerSecond?.() ?? repairRateBitsPerSecond;
    return Math.max(1, Math.min(repairRateBitsPerSecond, cap)) / 8000;
  }

  /**
   * Answers a NACK the channel has accepted from `remote` (its reply address). A NACK that does
   * not name us yet gets an introduction, in fewer bytes than it sent (docs/protocol.md, "NACK").
   * Held sequences are queued for the requester and leave paced at its rate (docs/architecture.md,
   * "Pacing repairs"); not-held runs leave at once.
   */
  answer(nack: Control<NackBody>, remote: PeerEndpoint): void {
    const { channel, sockets, clock, lookup } = this.#options;
    if (this.#closed) {
      return;
    }
    if (nack.auth.targetId === 0) {
      this.#options.drop('nack-no-target');
      sockets.sendTo(channel.introduction(nack), remote);
      return;
    }
    this.counters.nacksReceived++;
    const now = clock.nowMs();
    this.#forgetMulticast(now);
    const requester = this.#requester(nack.auth.senderId, now);
    const runKey = `${nack.sessionId}/${nack.incarnation}/`;
    let queued = nack.signatures === true && this.#queueSignatures(requester, nack, remote, runKey, now);
    for (const range of nack.ranges) {
      let notHeldStart: number | undefined;
      let notHeldCount = 0;
      const flushNotHeld = () => {
        if (notHeldStart !== undefined) {
          if (this.#spend(requester, notHeldBytes)) {
            const fields = this.#fields(nack, notHeldStart);
            sockets.sendTo(channel.sealReply(encodeRepairNotHeld(fields, notHeldCount), nack), remote);
            this.counters.notHeldSent++;
          } else {
            // Over the rate: not sent (the requester's timeout moves it on), never a burst.
            this.counters.rateLimited++;
            this.#options.drop('not-held-rate-limited');
          }
          notHeldStart = undefined;
          notHeldCount = 0;
        }
      };
      for (let i = 0; i < range.count; i++) {
        const sequence = sequenceAdd(range.start, i);
        if (lookup(nack.sessionId, nack.incarnation, sequence) === undefined) {
          notHeldStart ??= sequence;
          notHeldCount++;
          continue;
        }
        flushNotHeld();
        if (this.#enqueue(requester, { nack, remote, sequence, key: runKey + sequence }, now)) {
          queued = true;
        }
      }
      flushNotHeld();
    }
    if (queued) {
      this.counters.nacksAnswered++;
      this.#drain(requester);
    }
  }

  /** Cancels every paced answer and its timer; later NACKs are ignored. Idempotent. */
  close(): void {
    this.#closed = true;
    for (const requester of this.#requesters.values()) {
      requester.timer?.cancel();
      requester.timer = undefined;
      requester.queue.clear();
    }
    this.#requesters.clear();
  }

  #fields(nack: Control<NackBody>, sequence: number): HeaderFields {
    return {
      sessionId: nack.sessionId,
      incarnation: nack.incarnation,
      sequence,
      timestampUs: this.#options.clock.wallUs(),
    };
  }

  #forgetMulticast(now: number): void {
    for (const [key, atMs] of this.#recentlyMulticast) {
      if (
        now - atMs <= repairMulticastRecentMs &&
        this.#recentlyMulticast.size <= repairMulticastRememberedMax
      ) {
        break;
      }
      this.#recentlyMulticast.delete(key);
    }
  }

  /** The requester's state, made on its first NACK (most recent last; the oldest forgotten). */
  #requester(senderId: number, now: number): Requester {
    let requester = this.#requesters.get(senderId);
    if (requester !== undefined) {
      this.#requesters.delete(senderId);
      this.#requesters.set(senderId, requester);
      return requester;
    }
    const answered = new Map<string, { readonly atMs: number }>();
    requester = {
      creditBytes: this.#burstBytes(this.#bytesPerMs()),
      refilledAtMs: now,
      queue: new Map(),
      answered,
      oldestAnswered: new OldestFirst(answered),
      timer: undefined,
    };
    this.#requesters.set(senderId, requester);
    if (this.#requesters.size > repairAnswerRequestersMax) {
      const [oldestId, oldest] = this.#requesters.entries().next().value ?? [];
      if (oldestId !== undefined && oldest !== undefined) {
        oldest.timer?.cancel();
        this.counters.rateLimited += oldest.queue.size;
        this.#requesters.delete(oldestId);
      }
    }
    return requester;
  }

  #burstBytes(bytesPerMs: number): number {
    return Math.max(bytesPerMs * repairAnswerBurstMs, repairAnswerBurstPacketsMin * 1500);
  }

  /**
   * Queues one held sequence for the requester; false when it is not answered now: suppressed
   * (queued already, answered within repairAnswerRecentMs, or crossed with a multicast) or over
   * the queue's bound. A request for one answered before that window counts as a lost answer.
   */
  #enqueue(requester: Requester, item: Queued, now: number): boolean {
    if (requester.queue.has(item.key)) {
      this.counters.suppressed++; // its answer is waiting for credit
      return false;
    }
    if (this.#options.sockets.multicast !== undefined && this.#crossed(item.nack, item.key, now)) {
      this.counters.suppressed++; // already multicast to every repair server behind the group
      return false;
    }
    const answeredAtMs = requester.answered.get(item.key)?.atMs;
    if (answeredAtMs !== undefined) {
      if (now - answeredAtMs < repairAnswerRecentMs && item.nack.peerFetch !== true) {
        this.counters.suppressed++; // answered moments ago: the answer is on its way
        return false;
      }
      this.counters.answersLost++;
    }
    if (requester.queue.size >= repairAnswerQueuePacketsMax) {
      this.counters.rateLimited++;
      this.#options.drop('repair-queue-full');
      return false;
    }
    requester.queue.set(item.key, item);
    return true;
  }

  /** Adds the credit the requester earned since it was last refilled, up to a burst. */
  #refill(requester: Requester): void {
    const now = this.#options.clock.nowMs();
    const bytesPerMs = this.#bytesPerMs();
    requester.creditBytes = Math.min(
      this.#burstBytes(bytesPerMs),
      requester.creditBytes + (now - requester.refilledAtMs) * bytesPerMs,
    );
    requester.refilledAtMs = now;
  }

  /** Takes `bytes` of the requester's credit for an answer sent at once; false when it lacks them. */
  #spend(requester: Requester, bytes: number): boolean {
    this.#refill(requester);
    if (requester.creditBytes < bytes) {
      return false;
    }
    requester.creditBytes -= bytes;
    return true;
  }

  /** Sends queued answers while the requester has credit; else waits for it on a timer. */
  #drain(requester: Requester): void {
    const { clock, lookup } = this.#options;
    if (requester.timer !== undefined || this.#closed) {
      return; // a timer drains it when credit is there
    }
    const now = clock.nowMs();
    const bytesPerMs = this.#bytesPerMs();
    this.#refill(requester);
    for (const [key, item] of requester.queue) {
      const original = item.signature ?? lookup(item.nack.sessionId, item.nack.incarnation, item.sequence);
      if (original === undefined) {
        requester.queue.delete(key); // evicted while it waited: the requester asks elsewhere
        this.#options.drop('repair-evicted-while-queued');
        continue;
      }
      const bytes = original.length + headerBytes + authTrailerBytes;
      if (requester.creditBytes < bytes) {
        const waitMs = Math.max(1, (bytes - requester.creditBytes) / bytesPerMs);
        requester.timer = this.#options.timers.setTimeout(() => {
          requester.timer = undefined;
          this.#drain(requester);
        }, waitMs);
        return;
      }
      requester.creditBytes -= bytes;
      requester.queue.delete(key);
      this.#send(item, original, now);
      this.#remember(requester, key, now);
    }
  }

  /**
   * Queues, ahead of the REPAIRs, what vouches for each held datagram the NACK names (its manifest,
   * or the END's control signature) — once per signature however many of its sequences are named,
   * and not again to the requester within repairAnswerRecentMs (its copy is on the way). Paced at
   * the requester's rate like a REPAIR: a NACK naming many sequences under as many manifests must
   * not send them all at once (docs/architecture.md, "Pacing repairs"). True when one was queued.
   */
  #queueSignatures(
    requester: Requester,
    nack: Control<NackBody>,
    remote: PeerEndpoint,
    runKey: string,
    now: number,
  ): boolean {
    const { signatureFor, lookup } = this.#options;
    if (signatureFor === undefined) {
      return false;
    }
    let queued = false;
    const seen = new Set<Buffer>();
    for (const range of nack.ranges) {
      for (let i = 0; i < range.count; i++) {
        const original = lookup(nack.sessionId, nack.incarnation, sequenceAdd(range.start, i));
        const signature = original === undefined ? undefined : signatureFor(original);
        if (signature === undefined || seen.has(signature)) {
          continue;
        }
        seen.add(signature);
        const sequence = signature.readUInt32BE(offsetSequence);
        const key = `${runKey}s${sequence}/${signature[headerBytes]}`;
        if (this.#enqueue(requester, { nack, remote, sequence, key, signature }, now)) {
          queued = true;
        }
      }
    }
    return queued;
  }

  #remember(requester: Requester, key: string, now: number): void {
    requester.answered.delete(key); // most recent last (a new object: OldestFirst tells it moved)
    const answered = { atMs: now };
    requester.answered.set(key, answered);
    requester.oldestAnswered.added(key, answered);
    if (requester.answered.size > repairAnswerRememberedMax) {
      requester.oldestAnswered.shift();
    }
  }

  /** Sends one answer: unicast to the requester, or once on the repair group. */
  #send(item: Queued, original: Buffer, now: number): void {
    this.#sendRepair(item.nack, item.remote, item.sequence, original, item.key, now);
    if (item.signature === undefined) {
      this.counters.repairsSent++;
    } else {
      this.counters.signaturesSent++;
    }
  }

  /** Sends one held REPAIR carrying `original` under `sequence`, by the answer's way (below). */
  #sendRepair(
    nack: Control<NackBody>,
    remote: PeerEndpoint,
    sequence: number,
    original: Buffer,
    key: string,
    now: number,
  ): void {
    const { channel, sockets } = this.#options;
    // Unicast: for the requester (and always for a peer's fetch); on the repair group: for every
    // repair server (target 0).
    const repair = encodeRepair(this.#fields(nack, sequence), original);
    if (sockets.multicast === undefined || nack.peerFetch === true) {
      const reply = channel.sealReply(repair, nack);
      sockets.sendTo(reply, remote);
      this.counters.repairBytesSent += reply.length;
    } else {
      const reply = channel.seal(repair);
      sockets.multicast(reply);
      this.#recentlyMulticast.delete(key); // most recent last
      this.#recentlyMulticast.set(key, now);
      this.counters.repairBytesSent += reply.length;
    }
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
}
