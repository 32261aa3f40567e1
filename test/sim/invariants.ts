/**
 * What must hold at every step of a simulation, checked from the outside: the network's record of
 * who really sent what (SendRecord) and what each receiver wrote. The first violation stops the
 * run; it names the invariant, the virtual time and the details, so a failing seed explains itself.
 *
 * - prefix: a receiver's output is always a byte-prefix of the payload of one genuine run (the
 *   run it locked); a run the adversary made up has an empty payload.
 * - whole: a receiver says "complete" only when its output is identical to that payload.
 * - limits: every role's counters stay within the bounds of src/limits.ts (checks the scenario adds).
 * - served-genuine: a retransmit server's REPAIR carries exactly the DATA (or END) the source sent for
 *   the run and sequence it names (never another incarnation's, never a forged one).
 * - recovered: a repair server counts as recovered no more packets than REPAIRs brought it.
 * - held-answered: a retransmit server answers a genuine NACK for a packet it holds with it,
 *   unless it sent that packet to the same requester within repairAnswerRecentMs (the answer is on
 *   its way: docs/architecture.md, "Pacing repairs").
 * - held-not-unrecoverable: a repair server never gives up a packet a REPAIR brought it, nor
 *   one that a live retransmit server holds over a link that loses (almost) nothing.
 * - authenticated-destination: a server sends unicast only to addresses it was configured with or
 *   that sent it a genuine (keyed) control message since it booted: never to a victim.
 * - no-throw: no callback of a role throws, and no promise is rejected unhandled.
 * - receiver-ends: every receiver ends (whole, incomplete or timed out) before the scenario does.
 * - liveness: receivers the scenario expects to finish whole do so within a bound of virtual time.
 *
 * In signed and restricted plans (docs/protocol.md, "Signed sessions"), also:
 * - forged-moved-state: what a receiver's gate passes on (DATA, HEARTBEAT, END, DESCRIPTOR, KEY),
 *   and what a repair server re-emits on S2, is byte for byte a datagram the source sent: no
 *   forged or altered packet reaches any role's state.
 * - key-epochs: the source's DATA of one run never goes back to an earlier key epoch, never uses
 *   one epoch longer than the crypto-period (plus a tick), and never seals two different
 *   datagrams under one (epoch, sequence): one key and nonce, one packet.
 */
import { createHash } from 'node:crypto';
import { repairAnswerRecentMs, retransmitRunsPerGroupMax } from '../../src/limits.js';
import type { Endpoint } from '../../src/net/address.js';
import { decodeNack, SetupAction } from '../../src/protocol/control.js';
import {
  headerBytes,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  offsetType,
  PacketType,
} from '../../src/protocol/packet.js';
import { decodeSignature, SignatureKind } from '../../src/protocol/restricted.js';
import { sequenceAdd, sequenceDistance } from '../../src/protocol/serial.js';
import { authTrailerBytes } from '../../src/protocol/sizes.js';
import { runKey } from './adversary.js';
import type { SendRecord, SimHost, SimNetwork } from './network.js';

/** The first invariant that broke. */
export interface Violation {
  readonly atMs: number;
  readonly invariant: string;
  readonly details: string;
}

/** Thrown out of a check to stop the run at once. */
export class InvariantViolated extends Error {
  readonly violation: Violation;
  constructor(violation: Violation) {
    super(`${violation.invariant} ${violation.details}`);
    this.violation = violation;
  }
}

interface RunPayload {
  readonly key: string;
  readonly payload: Buffer;
  readonly packetBytes: number;
  readonly sha256: string;
}

/** What a source host's boot sends. */
export interface BootPayload {
  readonly payload: Buffer;
  readonly packetBytes: number;
}

/** Where a receiver's output stands in one run it may be writing. */
interface Candidate {
  readonly run: RunPayload;
  /** Index of the next packet of the run the output may continue with. */
  nextPacket: number;
  /** Packets passed over (lost and counted missing by the receiver, or a bug). */
  skipped: number;
}

/** What the checker knows of one watched receiver. */
export interface WatchedReceiver {
  readonly name: string;
  /** Payloads written so far, as one stream. */
  written: number;
  readonly chunks: Buffer[];
  /** Runs whose packets, in order, the output still is (with some left out). */
  candidates: Candidate[] | undefined;
  finished: string | undefined;
  /** The write() the role's sink calls. */
  write(payload: Buffer): void;
}

interface HeldPacket {
  readonly receivedAtMs: number;
}

interface WatchedRetransmit {
  readonly host: SimHost;
  readonly boot: number;
  readonly bufferAgeMs: number;
  /**
   * The runs this boot of the server buffers, as the documented policy keeps them: at most
   * retransmitRunsPerGroupMax, a new run evicting the one that stored a packet least recently
   * (forged runs count too: evicting an idle run for them is within the rules).
   */
  readonly runs: Map<string, HeldRun>;
}

interface HeldRun {
  lastAddedMs: number;
  /**
   * Sequence -> when it arrived (or, in a protected plan, when its manifest did), whether the
   * server holds it as the source's (sent by the source and, when protected, vouched for by a
   * manifest), and whether the source sent it.
   */
  readonly packets: Map<number, HeldPacket & { readonly genuine: boolean; readonly sourceSent: boolean }>;
}

interface WatchedServer {
  readonly name: string;
  readonly host: SimHost;
  readonly allowed: Set<string>;
  /** Per boot: endpoints that sent this server a genuine control message. */
  readonly proven: Map<number, Set<string>>;
}

interface EmitState {
  run: string;
  next: number | undefined;
}

/** REPAIR status "held" (docs/protocol.md). */
const repairHeld = 0;
const authBytes = authTrailerBytes;

/** How soon a retransmit server must answer a NACK for a packet it holds, in virtual ms. */
const nackAnswerMsMax = 100;
/** A server booted or cut off more recently than this is not held to it. */
const nackAnswerSettleMs = 3000;
/** NACKs asking for more packets than this may be held back by the repair rate: not checked. */
const nackAnswerPacketsMax = 500;

/** Unicast loss under which nackAttemptsMax attempts all failing is too unlikely to happen by chance. */
const reliableLinkLossMax = 0.01;

/** Key epochs: slack past the crypto-period before an epoch must have changed, in virtual ms. */
const keyEpochSlackMs = 100;

/** How often role counters are compared with their limits, in virtual milliseconds. */
const statusCheckIntervalMs = 10;

const ep = (endpoint: Endpoint) => `${endpoint.address}:${endpoint.port}`;

/** The invariant checker of one simulation. */
export class Invariants {
  readonly #network: SimNetwork;
  readonly #runs = new Map<string, RunPayload>();
  readonly #receivers: WatchedReceiver[] = [];
  readonly #retransmits: WatchedRetransmit[] = [];
  readonly #servers = new Map<SimHost, WatchedServer>();
  readonly #repairEmitters = new Map<
    SimHost,
    { group: Endpoint; reliable: boolean; states: Map<string, EmitState> }
  >();
  readonly #statusChecks: Array<{ name: string; invariant: string; check: () => string | undefined }> = [];
  readonly #deadlines: Array<{ name: string; byMs: number; met: () => boolean | undefined }> = [];
  readonly #adversaryHosts = new Set<SimHost>();
  #phantoms: ReadonlySet<string> = new Set();
  #violation: Violation | undefined;
  #statusCheckedAtMs = Number.NEGATIVE_INFINITY;
  /** Every DATA datagram a source sent, by run and sequence: what a REPAIR may carry. */
  readonly #genuineData = new Map<string, Buffer>();
  /** The END datagrams each run's source sent (a retransmit server may serve one: docs/protocol.md, "REPAIR"). */
  readonly #genuineEnds = new Map<string, Buffer[]>();
  /** Held REPAIRs delivered from a genuine server to each host (what "recovered" may count). */
  readonly #repairsDelivered = new Map<SimHost, number>();
  /** NACKed packets a retransmit server holds and must answer: key -> when it is due. */
  readonly #nackDue = new Map<string, { dueMs: number; server: SimHost; boot: number; what: string }>();
  /** When a server last sent a held REPAIR of a packet to a requester (same key as #nackDue). */
  readonly #answeredAt = new Map<string, number>();
  /** NACKs (server, boot, sender id, counter) already delivered once: a duplicate is refused. */
  readonly #nacksSeen = new Set<string>();
  /** Per repair host: "boot|run#sequence" of every packet a held REPAIR brought it. */
  readonly #repairedPackets = new Map<SimHost, Set<string>>();
  /** Checks run, for the report. */
  checks = 0;
  /** SHA-256 (hex) of every datagram a watched source sent (signed and restricted plans). */
  readonly #sourceSent = new Set<string>();
  /** Signed or restricted plan: the source's crypto-period (restricted), or 0 (signed only). */
  #protection: { cryptoPeriodMs: number } | undefined;
  /** Per run: the key epoch of its latest DATA and when that epoch was first seen. */
  readonly #epochs = new Map<string, { epoch: number; sinceMs: number }>();
  /** Per run, epoch and sequence: the SHA-256 of the DATA sealed under it. */
  readonly #sealed = new Map<string, string>();
  /** Protected plans: "boot|run#sequence" a genuine manifest delivered to each host covers. */
  readonly #vouched = new Map<SimHost, Set<string>>();

  constructor(network: SimNetwork) {
    this.#network = network;
    network.onSend((record) => this.#guard(() => this.#onSend(record)));
    network.onDeliver((record, target) =>
      this.#guard(() => {
        if (target.kind === 'control') {
          this.#onControlDelivered(record, target.host, target.boot);
        } else {
          this.#onGroupDelivered(record, target.host, target.boot);
        }
      }),
    );
  }

  /** The first violation, if any. */
  get violation(): Violation | undefined {
    return this.#violation;
  }

  /** Records a violation (the first one wins) without throwing: for callers outside a check. */
  report(invariant: string, details: string): void {
    this.#violation ??= { atMs: this.#network.scheduler.nowMs, invariant, details };
  }

  /** Records a violation (the first one wins) and throws to stop the current check. */
  fail(invariant: string, details: string): never {
    this.#violation ??= { atMs: this.#network.scheduler.nowMs, invariant, details };
    throw new InvariantViolated(this.#violation);
  }

  /** Declares the payload a source host's boot sends: the run it starts is learned from the wire. */
  watchSource(host: SimHost, payloadOfBoot: (boot: number) => BootPayload | undefined): void {
    this.#sources.set(host, payloadOfBoot);
  }
  readonly #sources = new Map<SimHost, (boot: number) => BootPayload | undefined>();

  /**
   * A signed (cryptoPeriodMs 0) or restricted plan: the source's datagrams are recorded, and what
   * roles pass on is checked against them (module comment: forged-moved-state, key-epochs).
   */
  watchProtection(cryptoPeriodMs: number): void {
    this.#protection = { cryptoPeriodMs };
  }

  /**
   * Called with every datagram a receiver's gate passes on to its role: DATA, HEARTBEAT, END,
   * DESCRIPTOR and KEY must be ones the source sent, byte for byte.
   */
  passedOn(role: string, datagram: Buffer): void {
    this.#guard(() => {
      const type = datagram.length >= headerBytes ? datagram[offsetType] : undefined;
      if (type === undefined || !(type <= PacketType.descriptor || type === PacketType.key)) {
        return; // not the source's kind of datagram: the role counts it as malformed or foreign
      }
      if (!this.#sourceSent.has(sha256(datagram))) {
        this.fail(
          'forged-moved-state',
          `${role}'s gate passed on a type ${type} datagram of run ${runOf(datagram)} sequence ${datagram.readUInt32BE(offsetSequence)} that the source never sent`,
        );
      }
    });
  }

  /** Key epochs of a restricted source's DATA (module comment: key-epochs). */
  #checkEpochs(record: SendRecord): void {
    const datagram = record.datagram;
    const cryptoPeriodMs = this.#protection?.cryptoPeriodMs ?? 0;
    if (cryptoPeriodMs === 0 || datagram[offsetType] !== PacketType.data) {
      return;
    }
    const run = runOf(datagram);
    const epoch = datagram.readUInt16BE(offsetKeyEpoch);
    const sequence = datagram.readUInt32BE(offsetSequence);
    const now = this.#network.scheduler.nowMs;
    if (epoch === 0) {
      this.fail('key-epochs', `the restricted source sent plain DATA (${run} sequence ${sequence})`);
    }
    const nonce = `${run}/${epoch}/${sequence}`;
    const digest = sha256(datagram);
    const before = this.#sealed.get(nonce);
    if (before !== undefined && before !== digest) {
      this.fail('key-epochs', `two different DATA sealed under ${run} epoch ${epoch} sequence ${sequence}`);
    }
    this.#sealed.set(nonce, digest);
    const last = this.#epochs.get(run);
    if (last === undefined || epoch > last.epoch) {
      this.#epochs.set(run, { epoch, sinceMs: now });
      return;
    }
    if (epoch < last.epoch) {
      this.fail('key-epochs', `${run} went back from key epoch ${last.epoch} to ${epoch}`);
    }
    // The epoch changes at the first packet after a period ends; allow one control tick of slack.
    if (now - last.sinceMs > cryptoPeriodMs + keyEpochSlackMs) {
      this.fail(
        'key-epochs',
        `${run} still seals under key epoch ${epoch} ${(now - last.sinceMs).toFixed(0)} ms after it began (crypto-period ${cryptoPeriodMs} ms)`,
      );
    }
  }

  /** The adversary's host (never genuine) and the runs it made up (empty payloads). */
  watchAdversary(host: SimHost, phantoms: ReadonlySet<string>): void {
    this.#adversaryHosts.add(host);
    this.#phantoms = phantoms;
  }

  /** Payload of a genuine run, by key (session/incarnation). */
  payloadOf(key: string): Buffer | undefined {
    return this.#runs.get(key)?.payload;
  }

  /** Runs seen so far. */
  get runKeys(): string[] {
    return [...this.#runs.keys()];
  }

  /** A receiver to watch; hand its write() to the role's sink. */
  watchReceiver(name: string): WatchedReceiver {
    const checker = this;
    const watched: WatchedReceiver = {
      name,
      written: 0,
      chunks: [],
      candidates: undefined,
      finished: undefined,
      write(payload: Buffer) {
        checker.#guard(() => checker.#onWrite(watched, payload));
      },
    };
    this.#receivers.push(watched);
    return watched;
  }

  /** Checks a receiver's verdict: "complete" only with output identical to the locked run. */
  receiverFinished(
    watched: WatchedReceiver,
    outcome: string,
    locked: string | undefined,
    missingReported?: number,
  ): void {
    this.#guard(() => {
      watched.finished = outcome;
      const output = Buffer.concat(watched.chunks);
      if (locked !== undefined && watched.written > 0) {
        const run = this.#runs.get(locked);
        if (run === undefined && !this.#phantoms.has(locked)) {
          this.fail(
            'prefix',
            `${watched.name} locked ${locked}, a run no source sent, and wrote ${watched.written} bytes`,
          );
        }
        const candidate = watched.candidates?.find((c) => c.run === run);
        if (run !== undefined && candidate === undefined) {
          this.fail(
            'prefix',
            `${watched.name} says it locked ${locked} but wrote packets of ${describe(watched.candidates)}`,
          );
        }
        if (candidate !== undefined && missingReported !== undefined && candidate.skipped > missingReported) {
          this.fail(
            'hidden-loss',
            `${watched.name} left out ${candidate.skipped} packets of ${locked} but reports ${missingReported} missing`,
          );
        }
      }
      if (outcome !== 'complete') {
        return;
      }
      const digest = sha256(output);
      const run = locked === undefined ? undefined : this.#runs.get(locked);
      const matches =
        run !== undefined ? run.sha256 === digest : [...this.#runs.values()].some((r) => r.sha256 === digest);
      if (!matches) {
        this.fail(
          'whole',
          `${watched.name} says complete for ${locked ?? '?'} with ${output.length} bytes (sha256 ${digest.slice(0, 16)}) ` +
            `but the run's payload is ${run?.payload.length ?? '?'} bytes (sha256 ${run?.sha256.slice(0, 16) ?? '?'})`,
        );
      }
    });
  }

  /** A retransmit server whose held packets the repair servers must not give up. */
  watchRetransmit(host: SimHost, bufferAgeMs: number): void {
    this.#retransmits.push({ host, boot: host.boot, bufferAgeMs, runs: new Map() });
  }

  /** A retransmit server was told (genuinely) to leave: what it buffered is no longer held. */
  forgetHeld(host: SimHost): void {
    for (const watched of this.#retransmits) {
      if (watched.host === host) {
        watched.runs.clear();
      }
    }
  }

  /** A server that may send unicast only to `allowed` and to what proved itself to it. */
  watchServer(name: string, host: SimHost, allowed: readonly Endpoint[]): void {
    this.#servers.set(host, { name, host, allowed: new Set(allowed.map(ep)), proven: new Map() });
  }

  /** A repair server whose S2 emissions show what it gave up (reliable: never what is held). */
  watchRepairEmitter(host: SimHost, group: Endpoint, reliable: boolean): void {
    this.#repairEmitters.set(host, { group, reliable, states: new Map() });
  }

  /** A check run at every step; returns a description of what is wrong, or undefined. */
  addStatusCheck(name: string, check: () => string | undefined, invariant = 'limits'): void {
    this.#statusChecks.push({ name, invariant, check });
  }

  /**
   * A liveness expectation: met() must be true by virtual time byMs; false means it never will be
   * (fails at once), undefined that it is not decided yet.
   */
  expectBy(name: string, byMs: number, met: () => boolean | undefined): void {
    this.#deadlines.push({ name, byMs, met });
  }

  /** Runs the checks that look at state; called after every event. */
  step(nowMs: number, errors: readonly unknown[], force = false): void {
    this.checks++;
    this.#guard(() => {
      if (errors.length > 0) {
        const error = errors[0];
        this.fail(
          'no-throw',
          `a callback threw: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
        );
      }
      for (const [key, due] of this.#nackDue) {
        if (due.dueMs > nowMs) {
          continue;
        }
        this.#nackDue.delete(key);
        if (due.server.alive && due.server.boot === due.boot) {
          this.fail('held-answered', `${due.server.name} holds ${due.what} and did not send it back`);
        }
      }
      // Role counters are state that stays over a bound once over it: sampled every
      // statusCheckIntervalMs of virtual time (a status() may sort its samples), and at the end.
      if (force || nowMs - this.#statusCheckedAtMs >= statusCheckIntervalMs) {
        this.#statusCheckedAtMs = nowMs;
        for (const { name, invariant, check } of this.#statusChecks) {
          const problem = check();
          if (problem !== undefined) {
            this.fail(invariant, `${name}: ${problem}`);
          }
        }
      }
      for (const deadline of this.#deadlines) {
        const met = deadline.met();
        if (met === false) {
          this.fail('liveness', `${deadline.name}: it did not (deadline t=${deadline.byMs} ms)`);
        }
        if (nowMs > deadline.byMs && met !== true) {
          this.fail('liveness', `${deadline.name}: not by t=${deadline.byMs} ms`);
        }
      }
    });
  }

  /** Final checks once the scenario's time is over. */
  finish(nowMs: number, errors: readonly unknown[]): void {
    this.step(nowMs, errors, true);
    this.#guard(() => {
      for (const watched of this.#receivers) {
        if (watched.finished === undefined) {
          this.fail(
            'receiver-ends',
            `${watched.name} has not ended by t=${nowMs} ms (its timeout is 15 s of silence)`,
          );
        }
      }
      for (const deadline of this.#deadlines) {
        if (deadline.met() !== true) {
          this.fail(
            'liveness',
            `${deadline.name} not met by the end (t=${nowMs} ms, deadline ${deadline.byMs} ms)`,
          );
        }
      }
    });
  }

  #guard(check: () => void): void {
    if (this.#violation !== undefined) {
      return;
    }
    try {
      check();
    } catch (error) {
      if (!(error instanceof InvariantViolated)) {
        this.#violation = {
          atMs: this.#network.scheduler.nowMs,
          invariant: 'checker',
          details: error instanceof Error ? (error.stack ?? error.message) : String(error),
        };
      }
    }
  }

  #onWrite(watched: WatchedReceiver, payload: Buffer): void {
    if (watched.candidates === undefined) {
      watched.candidates = [...this.#runs.values()].map((run) => ({ run, nextPacket: 0, skipped: 0 }));
    }
    const at = watched.written;
    watched.candidates = watched.candidates.filter((candidate) => advance(candidate, payload));
    watched.chunks.push(Buffer.from(payload));
    watched.written += payload.length;
    if (watched.candidates.length === 0) {
      this.fail(
        'prefix',
        `${watched.name} wrote ${payload.length} bytes at offset ${at} that are no later packet of any run ` +
          `(runs: ${[...this.#runs.keys()].join(', ') || 'none'})`,
      );
    }
  }

  #onSend(record: SendRecord): void {
    if (record.spoofed || record.datagram.length < headerBytes) {
      return;
    }
    const type = record.datagram[offsetType];
    const payloadOfBoot = this.#sources.get(record.host);
    if (this.#protection !== undefined && payloadOfBoot !== undefined && record.multicast) {
      this.#sourceSent.add(sha256(record.datagram));
      this.#checkEpochs(record);
    }
    if (
      payloadOfBoot !== undefined &&
      record.multicast &&
      type !== undefined &&
      type <= PacketType.descriptor
    ) {
      const key = runOf(record.datagram);
      if (type === PacketType.data) {
        this.#genuineData.set(`${key}#${record.datagram.readUInt32BE(offsetSequence)}`, record.datagram);
      } else if (type === PacketType.end) {
        const endKey = `${key}#${record.datagram.readUInt32BE(offsetSequence)}`;
        const copies = this.#genuineEnds.get(endKey) ?? [];
        if (copies.length < 16) {
          copies.push(record.datagram); // its repeats may differ (their timestamps)
        }
        this.#genuineEnds.set(endKey, copies);
      }
      if (!this.#runs.has(key)) {
        const boot = payloadOfBoot(record.boot);
        if (boot !== undefined) {
          this.#runs.set(key, { key, ...boot, sha256: sha256(boot.payload) });
        }
      }
    }
    if (type === PacketType.repair && this.#retransmits.some((r) => r.host === record.host)) {
      this.#checkServed(record);
      if (record.datagram[headerBytes] === repairHeld) {
        const run = runOf(record.datagram);
        const sequence = record.datagram.readUInt32BE(offsetSequence);
        const key = `${record.host.name}|${record.boot}|${run}#${sequence}|${ep(record.to)}`;
        this.#nackDue.delete(key);
        this.#answeredAt.set(key, this.#network.scheduler.nowMs);
      }
    }
    const server = this.#servers.get(record.host);
    if (server !== undefined && !record.multicast) {
      const to = ep(record.to);
      if (!server.allowed.has(to) && !(server.proven.get(record.boot)?.has(to) ?? false)) {
        this.fail(
          'authenticated-destination',
          `${server.name} sent ${record.datagram.length} bytes (type ${type}) to ${to}, which never proved itself to it ` +
            `(proven this boot: ${[...(server.proven.get(record.boot) ?? [])].join(', ') || 'none'})`,
        );
      }
    }
    const emitter = this.#repairEmitters.get(record.host);
    if (
      this.#protection !== undefined &&
      emitter !== undefined &&
      record.multicast &&
      ep(record.to) === ep(emitter.group) &&
      type !== undefined &&
      (type <= PacketType.descriptor || type === PacketType.key) &&
      !this.#sourceSent.has(sha256(record.datagram))
    ) {
      this.fail(
        'forged-moved-state',
        `${record.host.name} re-emitted on S2 a type ${type} datagram of run ${runOf(record.datagram)} that the source never sent`,
      );
    }
    if (
      emitter !== undefined &&
      record.multicast &&
      ep(record.to) === ep(emitter.group) &&
      (type === PacketType.data || type === PacketType.end)
    ) {
      this.#onRepairEmit(record, emitter);
    }
  }

  /** Held REPAIRs a genuine server delivered to a host so far. */
  repairsDeliveredTo(host: SimHost): number {
    return this.#repairsDelivered.get(host) ?? 0;
  }

  /**
   * A genuine NACK reached a retransmit server that holds some of what it asks for: each held
   * packet must go back to the requester within nackAnswerMsMax. Left out: either end booted
   * lately (the target ids are being learned), a requester cut off from it (clocks
   * apart, partition), and NACKs so large that the server's rate limit may hold part back.
   */
  #expectAnswer(record: SendRecord, host: SimHost, boot: number): void {
    const watched = this.#retransmits.find((w) => w.host === host && w.boot === boot);
    const now = this.#network.scheduler.nowMs;
    // Either end booted lately: the requester may not know the server's sender id yet (its NACK
    // names no target, and is refused), or it may still name the server's former self.
    const settling = Math.min(now - host.bootedAtMs, now - record.host.bootedAtMs) < nackAnswerSettleMs;
    if (watched === undefined || settling) {
      return;
    }
    const nack = decodeNack(record.datagram);
    if (!nack.ok) {
      return;
    }
    const seen = `${host.name}|${boot}|${nack.value.auth.senderId}|${nack.value.auth.counter}`;
    if (this.#nacksSeen.has(seen)) {
      return; // a copy the network doubled: refused as a replay, rightly
    }
    this.#nacksSeen.add(seen);
    const total = nack.value.ranges.reduce((sum, range) => sum + range.count, 0);
    if (total > nackAnswerPacketsMax || this.#unreachableSince(record.host, host, now - nackAnswerSettleMs)) {
      return;
    }
    const run = runOf(record.datagram);
    const packets = watched.runs.get(run)?.packets;
    for (const range of nack.value.ranges) {
      for (let i = 0; i < range.count; i++) {
        const sequence = sequenceAdd(range.start, i);
        if (packets?.get(sequence)?.genuine === true) {
          const key = `${host.name}|${boot}|${run}#${sequence}|${ep(record.from)}`;
          const answeredAtMs = this.#answeredAt.get(key);
          if (answeredAtMs !== undefined && now - answeredAtMs < repairAnswerRecentMs) {
            continue; // sent to this requester moments ago: its answer is on the way (not sent again)
          }
          if (!this.#nackDue.has(key)) {
            this.#nackDue.set(key, {
              dueMs: now + nackAnswerMsMax,
              server: host,
              boot,
              what: `${run} sequence ${sequence} asked by ${record.host.name} at t=${now.toFixed(1)} ms`,
            });
          }
        }
      }
    }
  }

  /** A retransmit server's held REPAIR carries, byte for byte, the DATA the source sent for its run and sequence. */
  #checkServed(record: SendRecord): void {
    const datagram = record.datagram;
    if (datagram.length < headerBytes + 4 + authBytes || datagram[headerBytes] !== repairHeld) {
      return;
    }
    const run = runOf(datagram);
    const sequence = datagram.readUInt32BE(offsetSequence);
    const carried = datagram.subarray(headerBytes + 4, datagram.length - authBytes);
    if (carried.length >= headerBytes && carried[offsetType] === PacketType.signature) {
      // A manifest sent ahead of the REPAIRs it covers (NACK signatures flag): the source's own.
      if (!this.#sourceSent.has(sha256(carried))) {
        this.fail(
          'served-genuine',
          `${record.host.name} served, as ${run} signature at ${sequence}, one no source sent`,
        );
      }
      return;
    }
    if (carried.length >= headerBytes && carried[offsetType] === PacketType.end) {
      const ends = this.#genuineEnds.get(`${run}#${sequence}`) ?? [];
      if (!ends.some((end) => end.equals(carried))) {
        this.fail(
          'served-genuine',
          `${record.host.name} served, as ${run} END at ${sequence}, an END no source sent`,
        );
      }
      return;
    }
    const genuine = this.#genuineData.get(`${run}#${sequence}`);
    if (genuine === undefined || !genuine.equals(carried)) {
      const carriedRun = carried.length >= headerBytes ? runOf(carried) : '?';
      this.fail(
        'served-genuine',
        `${record.host.name} served, as ${run} sequence ${sequence}, ${carried.length} bytes of run ${carriedRun} ` +
          `that ${genuine === undefined ? 'no source sent' : 'differ from what the source sent'}`,
      );
    }
  }

  /** A retransmit server's held REPAIR reached a host: the packet (or manifest) it brought. */
  #onRepairDelivered(record: SendRecord, host: SimHost, boot: number): void {
    const reachable = !this.#unreachableSince(host, record.host, this.#network.scheduler.nowMs);
    const carried = record.datagram.subarray(headerBytes + 4, record.datagram.length - authBytes);
    if (carried.length >= headerBytes && carried[offsetType] === PacketType.signature) {
      // A manifest sent ahead of a REPAIR: it vouches for its packets there as one from S1 would.
      if (reachable && this.#protection !== undefined && this.#sourceSent.has(sha256(carried))) {
        this.#onManifestDelivered(carried, host, boot);
      }
      return;
    }
    this.#repairsDelivered.set(host, (this.#repairsDelivered.get(host) ?? 0) + 1);
    let brought = this.#repairedPackets.get(host);
    if (brought === undefined) {
      brought = new Set();
      this.#repairedPackets.set(host, brought);
    }
    // Only a REPAIR the repair server could take counts: while the two cannot authenticate to
    // each other (clocks further apart than the freshness window), it is refused as stale, by the
    // rule (docs/protocol.md, "Freshness, replay and binding"; found.md #5).
    if (reachable) {
      brought.add(`${boot}|${runOf(record.datagram)}#${record.datagram.readUInt32BE(offsetSequence)}`);
    }
  }

  #onControlDelivered(record: SendRecord, host: SimHost, boot: number): void {
    if (
      record.datagram[offsetType] === PacketType.setup &&
      record.datagram[headerBytes] === SetupAction.leave &&
      !record.spoofed &&
      !this.#adversaryHosts.has(record.host)
    ) {
      // A genuine leave reached it: whatever it buffered for the group goes (it may refuse the
      // SETUP, e.g. as stale; then it holds more than this model says, which checks less).
      this.forgetHeld(host);
    }
    if (
      record.datagram[offsetType] === PacketType.nack &&
      !record.spoofed &&
      this.#repairEmitters.has(record.host)
    ) {
      this.#expectAnswer(record, host, boot);
    }
    if (
      !record.spoofed &&
      record.datagram[offsetType] === PacketType.repair &&
      record.datagram[headerBytes] === repairHeld &&
      this.#retransmits.some((r) => r.host === record.host)
    ) {
      this.#onRepairDelivered(record, host, boot);
    }
    const server = this.#servers.get(host);
    if (server === undefined || record.spoofed || this.#adversaryHosts.has(record.host)) {
      return;
    }
    // A genuine server's control message carries its key: the sender is proven to this boot.
    let proven = server.proven.get(boot);
    if (proven === undefined) {
      proven = new Set();
      server.proven.set(boot, proven);
    }
    proven.add(ep(record.from));
  }

  /** True when a genuine manifest covering (run, sequence) reached this boot of the host. */
  #hasManifest(host: SimHost, boot: number, run: string, sequence: number): boolean {
    return this.#vouched.get(host)?.has(`${boot}|${run}#${sequence}`) === true;
  }

  /**
   * A genuine manifest reached a host (protected plans): the DATA it covers may now be held by a
   * retransmit server there (a signed session's server buffers DATA only once a manifest vouches).
   */
  #onManifestDelivered(datagram: Buffer, host: SimHost, boot: number): void {
    const decoded = decodeSignature(datagram);
    if (!decoded.ok || decoded.value.kind !== SignatureKind.manifest) {
      return;
    }
    const run = runOf(datagram);
    let vouched = this.#vouched.get(host);
    if (vouched === undefined) {
      vouched = new Set();
      this.#vouched.set(host, vouched);
    }
    const now = this.#network.scheduler.nowMs;
    for (let index = 0; index < decoded.value.hashes.length; index++) {
      const sequence = sequenceAdd(decoded.value.sequence, index);
      vouched.add(`${boot}|${run}#${sequence}`);
      for (const watched of this.#retransmits) {
        const held = watched.host === host && watched.boot === boot ? watched.runs.get(run) : undefined;
        const packet = held?.packets.get(sequence);
        if (held !== undefined && packet !== undefined && !packet.genuine && packet.sourceSent) {
          held.packets.set(sequence, { receivedAtMs: now, genuine: true, sourceSent: true });
        }
      }
    }
  }

  #onGroupDelivered(record: SendRecord, host: SimHost, boot: number): void {
    const datagram = record.datagram;
    if (
      this.#protection !== undefined &&
      datagram[offsetType] === PacketType.signature &&
      !record.spoofed &&
      this.#sources.has(record.host)
    ) {
      this.#onManifestDelivered(datagram, host, boot);
      return;
    }
    if (datagram[offsetType] !== PacketType.data || datagram.length < headerBytes) {
      return;
    }
    const now = this.#network.scheduler.nowMs;
    for (const watched of this.#retransmits) {
      if (watched.host !== host || watched.boot !== boot) {
        continue;
      }
      const key = runOf(datagram);
      let run = watched.runs.get(key);
      if (run === undefined) {
        if (watched.runs.size >= retransmitRunsPerGroupMax) {
          const idlest = [...watched.runs].reduce((a, b) => (b[1].lastAddedMs < a[1].lastAddedMs ? b : a));
          watched.runs.delete(idlest[0]);
        }
        run = { lastAddedMs: now, packets: new Map() };
        watched.runs.set(key, run);
      }
      const sequence = datagram.readUInt32BE(offsetSequence);
      if (!run.packets.has(sequence)) {
        run.lastAddedMs = now;
        const sourceSent = !record.spoofed && this.#sources.has(record.host);
        run.packets.set(sequence, {
          receivedAtMs: now,
          // A signed session's server holds a packet only once a manifest vouches for it.
          genuine:
            sourceSent && (this.#protection === undefined || this.#hasManifest(host, boot, key, sequence)),
          sourceSent,
        });
      }
    }
  }

  #onRepairEmit(record: SendRecord, emitter: { reliable: boolean; states: Map<string, EmitState> }): void {
    const datagram = record.datagram;
    const run = runOf(datagram);
    const stateKey = `${record.boot}`;
    let state = emitter.states.get(stateKey);
    if (state === undefined || state.run !== run) {
      state = { run, next: undefined };
      emitter.states.set(stateKey, state);
    }
    const sequence = datagram.readUInt32BE(offsetSequence);
    const isData = datagram[offsetType] === PacketType.data;
    const reached = isData ? sequence : sequence;
    if (state.next !== undefined && sequenceDistance(state.next, reached) > 0 && emitter.reliable) {
      for (let missing = state.next; missing !== reached; missing = sequenceAdd(missing, 1)) {
        this.#checkGivenUp(record.host, record.boot, run, missing);
      }
    }
    if (isData && (state.next === undefined || sequenceDistance(state.next, sequence) >= 0)) {
      state.next = sequenceAdd(sequence, 1);
    } else if (!isData) {
      state.next = undefined;
    }
  }

  /** A reliable repair server skipped (run, sequence): no live, reachable server may hold it. */
  #checkGivenUp(repairHost: SimHost, boot: number, run: string, sequence: number): void {
    const now = this.#network.scheduler.nowMs;
    if (this.#repairedPackets.get(repairHost)?.has(`${boot}|${run}#${sequence}`) === true) {
      const unvouched =
        this.#protection !== undefined && !this.#hasManifest(repairHost, boot, run, sequence)
          ? ', though no manifest covering it reached it (found.md 10)'
          : '';
      this.fail(
        'held-not-unrecoverable',
        `repair server on ${repairHost.name} gave up ${run} sequence ${sequence}, which a REPAIR had brought it${unvouched}`,
      );
    }
    for (const watched of this.#retransmits) {
      const held = watched.runs.get(run)?.packets.get(sequence);
      if (held?.genuine !== true || !watched.host.alive || watched.host.boot !== watched.boot) {
        continue;
      }
      // Held for the whole buffer age (less a margin for the edge), and reachable from the repair
      // server for as long as the repair server tried.
      if (now - held.receivedAtMs > watched.bufferAgeMs - 2000) {
        continue;
      }
      if (this.#unreachableSince(repairHost, watched.host, Math.max(held.receivedAtMs, now - 5000))) {
        continue;
      }
      // Over a lossy link every attempt may be lost (the budget is nackAttemptsMax): only a link
      // that loses almost nothing both ways makes giving up a held packet a fault by itself.
      if (this.#lossy(repairHost, watched.host)) {
        continue;
      }
      this.fail(
        'held-not-unrecoverable',
        `repair server on ${repairHost.name} gave up ${run} sequence ${sequence}, which ${watched.host.name} ` +
          `(boot ${watched.boot}) has held since t=${held.receivedAtMs.toFixed(1)} ms and is reachable`,
      );
    }
  }

  /** Periods during which two hosts could not talk (partitions, clocks too far apart). */
  readonly #cuts: Array<{ a: SimHost; b: SimHost; fromMs: number; toMs: number }> = [];

  /** Records that a and b cannot reach each other from now until the returned function is called. */
  openCut(a: SimHost, b: SimHost): () => void {
    const cut = { a, b, fromMs: this.#network.scheduler.nowMs, toMs: Number.POSITIVE_INFINITY };
    this.#cuts.push(cut);
    return () => {
      cut.toMs = this.#network.scheduler.nowMs;
    };
  }

  #lossy(x: SimHost, y: SimHost): boolean {
    return [this.#network.faultsBetween(x, y, 'unicast'), this.#network.faultsBetween(y, x, 'unicast')].some(
      (faults) => faults.lossRate > reliableLinkLossMax || faults.burstEnterRate > 0,
    );
  }

  #unreachableSince(x: SimHost, y: SimHost, sinceMs: number): boolean {
    return this.#cuts.some(
      (cut) => ((cut.a === x && cut.b === y) || (cut.a === y && cut.b === x)) && cut.toMs >= sinceMs,
    );
  }
}

/** The run key of a data-plane datagram. */
export function runOf(datagram: Buffer): string {
  return runKey(datagram.readUInt32BE(offsetSessionId), datagram.readUInt32BE(offsetIncarnation));
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function describe(candidates: Candidate[] | undefined): string {
  return candidates === undefined ? 'nothing yet' : candidates.map((c) => c.run.key).join(', ') || 'no run';
}

/**
 * Moves a candidate past the packet a write carries: the next packet of the run, or a later one
 * (the ones between are left out, as a receiver does with what it counts missing). False when the
 * write is no later packet of the run.
 */
function advance(candidate: Candidate, payload: Buffer): boolean {
  const { payload: whole, packetBytes } = candidate.run;
  const count = Math.ceil(whole.length / packetBytes);
  for (let index = candidate.nextPacket; index < count; index++) {
    const start = index * packetBytes;
    const packet = whole.subarray(start, Math.min(whole.length, start + packetBytes));
    if (packet.length === payload.length && packet.equals(payload)) {
      candidate.skipped += index - candidate.nextPacket;
      candidate.nextPacket = index + 1;
      return true;
    }
  }
  return false;
}
