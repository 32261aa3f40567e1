/**
 * The repair server's run tracker (docs/architecture.md, "Repair server"): which run of the group
 * is being repaired, its window of held DATA, its S1 frontier and its END. It takes up the run a
 * DESCRIPTOR names (with the DATA held for it meanwhile), moves the frontier on what S1 shows
 * exists (DATA, or the claim of a HEARTBEAT, DESCRIPTOR or END), turns what is not held before it
 * into gaps for the run's NACK scheduler, takes what REPAIRs bring, and ends the run at its END or
 * when it falls silent, taking up the next. It owns no socket and no timer: the role hands it
 * decoded REPAIRs and S1 datagrams, and it acts through the parts and callbacks it is given.
 */

import type { SignedSessionGate } from '../crypto/signed-session.js';
import {
  endedRunsMax,
  endRepeatCount,
  endRepeatIntervalMs,
  pendingBytesMax,
  pendingPacketsMax,
  pendingRunsMax,
  progressAheadPacketsMax,
  repairHoldBytesMax,
  repairHoldPacketsMax,
  repairReachBackPacketsMax,
  replayPeersMax,
  resyncPacketsMin,
  resyncQuietMs,
  sessionIdleMs,
  tailQuietMs,
} from '../limits.js';
import type { Timer } from '../net/runtime.js';
import type { Control, RepairBody } from '../protocol/control.js';
import { authTrailerBytes } from '../protocol/control.js';
import {
  type DataPacket,
  decodeData,
  decodeDescriptor,
  decodeEnd,
  decodeHeader,
  type EndPacket,
  headerBytes,
  offsetType,
  PacketType,
  SessionKind,
} from '../protocol/packet.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';
import {
  endContradiction,
  isClaimPastFileEnd,
  isJustAfter,
  isPastFileEnd,
  type PendingRun,
  PendingRuns,
  type RunShape,
  runKey,
  SessionWindow,
} from '../protocol/session-window.js';
import { repairFixedBytes } from '../protocol/sizes.js';
import { ArrivalRate } from './arrival-rate.js';
import type { NackScheduler, UnrecoverableReason } from './nack-scheduler.js';
import type { EmitterEvent, ReorderEmitter } from './reorder-emitter.js';
import type { ServerRanking } from './server-ranking.js';

/** One run being repaired: its window of held DATA and its gaps. */
export interface Run {
  readonly sessionId: number;
  readonly incarnation: number;
  readonly window: SessionWindow;
  /** Its gaps and their NACKs. */
  readonly nacks: NackScheduler;
  endSequence: number | undefined;
  endDatagram: Buffer | undefined;
  /** Ends the run once the END's grace has passed with no DATA contradicting it. */
  endTimer: Timer | undefined;
  /** Resumes the run's paced re-emission on S2 (src/repair/reorder-emitter.ts). */
  paceTimer: Timer | undefined;
  /** Datagrams of this run that arrived (its DATA on S1, its repaired DATA). */
  readonly arrived: { packets: number };
  /**
   * The rate they arrived at, that S2's re-emission of this run is paced by: only this run's own
   * (another run's DATA, forged or not, or an earlier faster run would make its pace useless).
   */
  readonly arrivalRate: ArrivalRate;
  /** What the DESCRIPTOR said, that an END must agree with. */
  readonly shape: RunShape;
  lastActivityMs: number;
  lastDataMs: number;
  /**
   * Per retransmit server (its sender id): the furthest sequence of this run it has shown it holds
   * (a REPAIR carrying it, an ANNOUNCE's last held), and the count of the message that showed it.
   */
  readonly passed: Map<number, { sequence: number; counter: number }>;
  /** Every sequence before it is known from S1 to exist (docs/architecture.md, "Repair server"). */
  frontier: number;
  /** The furthest sequence of the run's session a retransmit server's ANNOUNCE said it holds. */
  announcedLast: number | undefined;
  /** Monotonic time of the run's last HEARTBEAT on S1 (its claim tells where the run is). */
  lastHeartbeatMs: number;
  /** Monotonic time of the last tail probe (probeTail). */
  lastProbeMs: number;
}

/** The status counters a run tracker keeps (fields of RepairStatus, shared with the role). */
export interface RunCounters {
  packetsIn: number;
  repairsReceived: number;
  notHeldReceived: number;
  recovered: number;
  recoveredBytes: number;
  lateDirect: number;
  duplicates: number;
  emitted: number;
  sessionsCompleted: number;
  sessionsIncomplete: number;
  notReached: number;
  beyondWindow: number;
  claimsTooFar: number;
  endsRepaired: number;
  signaturesRepaired: number;
}

/** Parts and callbacks a run tracker acts through. */
export interface RunTrackerOptions {
  readonly clock: { nowMs(): number };
  /** Counted as the tracker goes (the role's status). */
  readonly counters: RunCounters;
  /** Counts dropped datagrams by reason. */
  readonly drop: (reason: string, count?: number) => void;
  /** Counts packets given up (or, with a negative delta, that came after all) by reason. */
  readonly countUnrecoverable: (reason: UnrecoverableReason | 'resync', delta: number) => void;
  /** The NACK scheduler of a new run (its NACKs name the run). */
  readonly nacksFor: (sessionId: number, incarnation: number, window: SessionWindow) => NackScheduler;
  /** The reorder/emitter that puts the run's DATA on S2; its events go to onEmitterEvent. */
  readonly reorder: ReorderEmitter<Run>;
  /** Puts a datagram that is not the run's DATA (DESCRIPTOR, HEARTBEAT, END) on S2 at once. */
  readonly emitS2: (datagram: Buffer) => void;
  /** A timer of the role's (END repeats). */
  readonly setTimeout: (fn: () => void, delayMs: number) => Timer;
  /** Retransmit servers, told which answered and how fast. */
  readonly servers: ServerRanking;
  /** A one-way delay sample: the source's send time of a DATA packet that came directly or repaired. */
  readonly sampleDelay: (sentUs: number, repaired: boolean) => void;
  /** A signed session's gate (DATA, END and signatures a REPAIR brought are taken through it). */
  readonly gate?: SignedSessionGate | undefined;
}

/** True when `current` is the run of that session id and incarnation. */
export const isCurrent = (current: Run | undefined, sessionId: number, incarnation: number): current is Run =>
  current !== undefined && current.sessionId === sessionId && current.incarnation === incarnation;

/** The run tracker of a repair server. */
export interface RunTracker {
  /**
   * The run being repaired; undefined between runs. Methods, not getters: a getter in the object
   * literal below would put the tracker, called for every datagram, in V8's dictionary mode.
   */
  currentRun(): Run | undefined;
  /** DATA held for runs whose DESCRIPTOR has not been taken up yet. */
  pendingPackets(): number;
  pendingBytes(): number;
  /** Takes a datagram from S1 (after a signed session's gate). */
  onS1(datagram: Buffer): void;
  /** Takes an authenticated REPAIR (the datagram it was decoded from, to take its original out). */
  onRepair(repair: Control<RepairBody>, datagram: Buffer): void;
  /** What the reorder/emitter did. */
  onEmitterEvent(event: EmitterEvent<Run>): void;
  /** Re-emits the current run in order on S2. */
  emit(): void;
  /** Ends the current run when it fell silent (no DATA, no HEARTBEAT for sessionIdleMs). */
  endIfIdle(): void;
  /** True when the run has no END and was quiet on S1 for tailQuietMs. */
  tailQuiet(current: Run): boolean;
  /** An ANNOUNCE said a server holds the run up to `lastHeld`. */
  noteAnnouncedLast(current: Run, lastHeld: number): void;
  /** A retransmit server showed it holds `sequence` of the run, in the message it sealed as `counter`. */
  notePassed(current: Run, senderId: number, sequence: number, counter: number): void;
}

/** Creates a run tracker. */
export function createRunTracker(options: RunTrackerOptions): RunTracker {
  const { clock, counters, drop, countUnrecoverable, reorder, emitS2, servers, gate } = options;
  /** The run being repaired; undefined between runs. */
  let run: Run | undefined;
  /** DATA of runs not (yet) taken up, per run and bounded, for the run that comes next. */
  const pending = new PendingRuns({
    packetsMax: pendingPacketsMax,
    bytesMax: pendingBytesMax,
    runsMax: pendingRunsMax,
  });
  /** Runs that ended here, most recent last (bounded): never taken up again. */
  const ended = new Set<string>();

  /**
   * A run with no END that sent nothing on S1 for tailQuietMs (nor a HEARTBEAT, whose claim tells
   * where it is): its tail and its END may all have been lost on S1 (docs/protocol.md, "Repair
   * server behaviour").
   */
  const tailQuiet = (current: Run) => {
    const now = clock.nowMs();
    return (
      current.endSequence === undefined &&
      now - current.lastDataMs >= tailQuietMs &&
      now - current.lastHeartbeatMs >= tailQuietMs
    );
  };

  const addMissing = (current: Run, sequence: number) => {
    if (!current.window.has(sequence)) {
      current.nacks.add(sequence);
    }
  };

  /**
   * S1 showed that every sequence before `to` exists (its DATA, or a claim of a HEARTBEAT, the
   * DESCRIPTOR or the END that the window took): those not held are gaps. A REPAIR never moves
   * this frontier: with a repair group, REPAIRs for other servers' gaps reach a server that is
   * behind in reading S1, and the packets still waiting in its socket must not look lost.
   */
  const reachFrontier = (current: Run, to: number) => {
    const { window } = current;
    const limit = sequenceDistance(window.end, to) > 0 ? window.end : to; // never past what is known
    if (sequenceDistance(current.frontier, limit) <= 0) {
      return; // nothing new is known
    }
    const start = sequenceDistance(window.base, current.frontier) < 0 ? window.base : current.frontier;
    current.frontier = limit;
    for (let sequence = start; sequenceDistance(sequence, limit) > 0; sequence = sequenceAdd(sequence, 1)) {
      addMissing(current, sequence);
    }
  };

  /** A gap is passed (given up, or jumped over in a resync): it is unrecoverable, never silently. */
  const passGap =
    (current: Run, reason: UnrecoverableReason = 'passed') =>
    (sequence: number) => {
      if (!current.nacks.pass(sequence, reason)) {
        countUnrecoverable(reason, 1);
      }
    };

  /** What the reorder/emitter did: counted, and its gaps passed or asked for. */
  const onEmitterEvent = (event: EmitterEvent<Run>) => {
    switch (event.type) {
      case 'emitted':
        counters.emitted++;
        return;
      case 'ask':
        addMissing(event.run, event.sequence);
        return;
      case 'passed':
        passGap(event.run)(event.sequence);
        return;
      case 'complete':
        finishRun(event.run, 'complete');
        return;
    }
  };

  /** Sends a DATA datagram of the run on S2, in order. */
  const send = (current: Run) => (datagram: Buffer) => reorder.send(current, datagram);

  /** Accepts a DATA datagram of the current run, from S1 or from a REPAIR. */
  const acceptData = (current: Run, datagram: Buffer, packet: DataPacket, repaired: boolean) => {
    const { sequence } = packet;
    if (isPastFileEnd(current.shape, sequence)) {
      drop('beyond-file-end'); // a file's DESCRIPTOR puts its end: nothing after it exists
      return;
    }
    if (current.endSequence !== undefined && isJustAfter(current.endSequence, sequence)) {
      // DATA at or after END's sequence: that END was not the run's end (a forgery): take it back.
      current.endSequence = undefined;
      current.endDatagram = undefined;
      current.endTimer?.cancel();
      current.endTimer = undefined;
      drop('end-revoked');
    }
    let result = current.window.offer(sequence, datagram, clock.nowMs());
    // Over the byte bound: room is made at the delivery point (its gap given up, or the packet
    // waiting there for its pace sent now) so that what keeps arriving is not lost.
    for (let passes = 0; result === 'over-bytes' && passes < repairHoldPacketsMax; passes++) {
      forcePassOldest(current);
      result = current.window.offer(sequence, datagram, clock.nowMs());
    }
    switch (result) {
      case 'old':
      case 'duplicate':
        counters.duplicates++;
        return;
      case 'over-bytes':
        drop('over-hold-bytes');
        return;
      case 'beyond':
        counters.beyondWindow++;
        return;
      case 'resync': {
        counters.beyondWindow++;
        const jumped = current.window.resync(send(current), passGap(current));
        countUnrecoverable('resync', jumped);
        current.nacks.clear(false);
        current.frontier = current.window.base;
        reachFrontier(current, current.window.end);
        emit();
        return;
      }
      case 'held':
        break;
    }
    const filled = current.nacks.filled(sequence); // a given-up one that came after all is counted back
    if (filled !== undefined) {
      if (repaired) {
        counters.recovered++;
        counters.recoveredBytes += datagram.length;
        if (filled.server !== undefined) {
          servers.answered(filled.server);
          // Karn's rule: only an answer to a packet's first NACK measures the round trip.
          if (filled.firstNack) {
            servers.sampleRoundTrip(filled.server, clock.nowMs() - filled.sentAtMs);
          }
        }
      } else {
        counters.lateDirect++;
      }
    }
    options.sampleDelay(packet.timestampUs, repaired);
    if (!repaired) {
      reachFrontier(current, sequenceAdd(sequence, 1));
    }
    emit();
  };

  /** Makes room at the delivery point (the hold is full) and emits what follows it. */
  const forcePassOldest = (current: Run) => reorder.forcePassOldest(current);

  /** Re-emits the current run in order on S2 (src/repair/reorder-emitter.ts). */
  function emit(): void {
    if (run !== undefined) {
      reorder.emit(run);
    }
  }

  /** Ends the current run: at its END (complete), or silent for sessionIdleMs (incomplete). */
  const finishRun = (current: Run, how: 'complete' | 'idle') => {
    if (run !== current) {
      return;
    }
    current.endTimer?.cancel();
    current.paceTimer?.cancel();
    current.paceTimer = undefined;
    if (how === 'idle') {
      current.window.drainToEnd(send(current), passGap(current, 'idle'));
      counters.sessionsIncomplete++;
    } else {
      const end = current.endDatagram;
      if (end !== undefined) {
        for (let i = 0; i < endRepeatCount; i++) {
          options.setTimeout(() => emitS2(end), i * endRepeatIntervalMs);
        }
      }
      counters.sessionsCompleted++;
    }
    current.nacks.clear(how === 'idle'); // gaps left of a run that fell silent are unrecoverable
    current.nacks.close();
    run = undefined;
    // A late or replayed DESCRIPTOR of a run that ended must not start it again.
    ended.add(runKey(current.sessionId, current.incarnation));
    if (ended.size > endedRunsMax) {
      ended.delete(ended.values().next().value ?? '');
    }
    // A run that came while this one was served is taken up now, with what was held for it.
    const heldBefore = pending.packetCount;
    const next = pending.takeLatestDescribed();
    countDiscarded(heldBefore - (next?.data.size ?? 0));
    if (next?.descriptor !== undefined) {
      startRun(next.descriptor, next);
    }
  };

  /** DATA held for runs that were not taken up: never re-emitted, but counted. */
  const countDiscarded = (packets: number) => {
    if (packets > 0) {
      drop('pending-other-run', packets);
    }
  };

  /** Takes up the run a DESCRIPTOR names, with the DATA held for it. */
  const startRun = (datagram: Buffer, taken?: PendingRun) => {
    const decoded = decodeDescriptor(datagram);
    if (!decoded.ok) {
      drop(`descriptor-${decoded.reason}`);
      return;
    }
    const d = decoded.value;
    if (ended.has(runKey(d.sessionId, d.incarnation))) {
      drop('ended-run');
      return;
    }
    const live = d.kind !== SessionKind.file;
    const heldBefore = pending.packetCount;
    const heldRun = taken ?? pending.take(d.sessionId, d.incarnation);
    if (taken === undefined) {
      countDiscarded(heldBefore - (heldRun?.data.size ?? 0));
    }
    const held = heldRun?.data ?? new Map<number, Buffer>();
    let base = d.sequence;
    if (live) {
      for (const sequence of held.keys()) {
        const distance = sequenceDistance(base, sequence);
        if (distance < 0 && distance > -repairHoldPacketsMax) {
          base = sequence;
        }
      }
    } else {
      // A file from its first packet, unless this server joined too far in to reach back.
      const into = sequenceDistance(d.firstSequence, d.sequence);
      if (into >= 0 && into <= repairReachBackPacketsMax) {
        base = d.firstSequence;
      } else if (into > 0) {
        counters.notReached += into - Math.min(into, repairReachBackPacketsMax);
        base = sequenceAdd(d.sequence, -Math.min(into, repairReachBackPacketsMax) >>> 0);
      }
    }
    const window = new SessionWindow(base, {
      packetsMax: repairHoldPacketsMax,
      bytesMax: repairHoldBytesMax,
      progressAheadPacketsMax,
      resyncPacketsMin,
      resyncQuietMs,
    });
    const arrived = { packets: 0 };
    const current: Run = {
      sessionId: d.sessionId,
      incarnation: d.incarnation,
      window,
      nacks: options.nacksFor(d.sessionId, d.incarnation, window),
      endSequence: undefined,
      endDatagram: undefined,
      endTimer: undefined,
      paceTimer: undefined,
      arrived,
      arrivalRate: new ArrivalRate(() => arrived.packets, clock.nowMs()),
      shape: d,
      lastActivityMs: clock.nowMs(),
      lastDataMs: clock.nowMs(),
      passed: new Map(),
      frontier: base,
      announcedLast: undefined,
      lastHeartbeatMs: Number.NEGATIVE_INFINITY,
      lastProbeMs: Number.NEGATIVE_INFINITY,
    };
    run = current;
    for (const p of held.values()) {
      const decoded = decodeData(p); // held as it came, after it was checked
      if (decoded.ok) {
        acceptData(current, p, decoded.value, false);
      }
    }
    claim(current, d.sequence);
    emitS2(datagram); // receivers of S2 learn the run at once
    if (heldRun?.end !== undefined) {
      onS1(heldRun.end);
    }
  };

  const claim = (current: Run, next: number) => {
    if (isClaimPastFileEnd(current.shape, next) || current.window.claim(next) === 'too-far') {
      counters.claimsTooFar++;
      return;
    }
    reachFrontier(current, next);
  };

  const onS1 = (datagram: Buffer) => {
    const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
    if (type === PacketType.data) {
      const decoded = decodeData(datagram);
      if (!decoded.ok) {
        drop(`s1-${decoded.reason}`);
        return;
      }
      counters.packetsIn++;
      const { sessionId, incarnation, sequence } = decoded.value;
      if (!isCurrent(run, sessionId, incarnation)) {
        if (run !== undefined) {
          drop('other-session');
        }
        if (ended.has(runKey(sessionId, incarnation))) {
          drop('ended-run'); // a late or replayed packet of a run that is over
        } else if (!pending.hold(sessionId, incarnation, sequence, datagram)) {
          drop('pending-full');
        }
        return;
      }
      run.arrived.packets++;
      run.lastActivityMs = clock.nowMs();
      run.lastDataMs = run.lastActivityMs;
      acceptData(run, datagram, decoded.value, false);
      return;
    }
    const header = decodeHeader(datagram);
    if (!header.ok) {
      drop(`s1-${header.reason}`);
      return;
    }
    const { sessionId, incarnation } = header.value;
    if (header.value.type === PacketType.descriptor) {
      if (run === undefined) {
        startRun(datagram);
      } else if (!isCurrent(run, sessionId, incarnation)) {
        pending.note(sessionId, incarnation, 'descriptor', datagram);
      } else {
        run.lastActivityMs = clock.nowMs();
        emitS2(datagram);
      }
      return;
    }
    if (!isCurrent(run, sessionId, incarnation)) {
      if (header.value.type === PacketType.end) {
        pending.note(sessionId, incarnation, 'end', datagram);
      }
      return;
    }
    const current = run;
    if (header.value.type === PacketType.heartbeat) {
      current.lastActivityMs = clock.nowMs();
      current.lastHeartbeatMs = current.lastActivityMs;
      claim(current, header.value.sequence);
      emitS2(datagram);
      emit();
    } else if (header.value.type === PacketType.end && current.endSequence === undefined) {
      const end = decodeEnd(datagram);
      if (!end.ok || endContradiction(current.shape, end.value) !== undefined) {
        drop('end-not-believed'); // its counts or the file's size say it is not the run's end
        return;
      }
      if (!current.window.endAt(header.value.sequence)) {
        drop('end-not-believed'); // further ahead than the limits allow, or behind DATA received
        return;
      }
      // Gaps that only a HEARTBEAT claimed, beyond the END, never existed: forget them.
      current.nacks.withdrawFrom(header.value.sequence);
      if (sequenceDistance(header.value.sequence, current.frontier) > 0) {
        current.frontier = header.value.sequence; // what a HEARTBEAT claimed beyond the END is taken back
      }
      reachFrontier(current, header.value.sequence);
      current.endSequence = header.value.sequence;
      current.endDatagram = datagram;
      emit();
    }
  };

  const onRepair = (repair: Control<RepairBody>, datagram: Buffer) => {
    const current = run;
    if (!isCurrent(current, repair.sessionId, repair.incarnation)) {
      drop('repair-other-session');
      return;
    }
    if (repair.signature !== undefined) {
      onRepairedSignature(current, repair.signature);
      return;
    }
    if (repair.end !== undefined) {
      onRepairedEnd(current, datagram, repair.end);
      return;
    }
    if (repair.data === undefined) {
      counters.notHeldReceived++;
      const passed = current.passed.get(repair.auth.senderId);
      for (let i = 0; i < repair.notHeldCount; i++) {
        const sequence = sequenceAdd(repair.sequence, i);
        const proven =
          passed !== undefined &&
          passed.counter < repair.auth.counter &&
          sequenceDistance(sequence, passed.sequence) >= 0;
        current.nacks.notHeld(sequence, proven);
      }
      emit();
      return;
    }
    const original = datagram.subarray(headerBytes + repairFixedBytes, datagram.length - authTrailerBytes);
    if (repair.data.incarnation !== current.incarnation) {
      drop('repair-other-incarnation'); // another run's packet is never written
      return;
    }
    counters.repairsReceived++;
    current.arrived.packets++;
    // Repairs of the run still arriving: it is being repaired, not silent (a run whose END was
    // lost at the edge must not end while paced repairs fill its last gaps).
    current.lastActivityMs = clock.nowMs();
    notePassed(current, repair.auth.senderId, repair.data.sequence, repair.auth.counter);
    const packet = repair.data;
    if (gate === undefined) {
      acceptRepaired(current, original, packet);
      return;
    }
    // A signed session: the retransmit server's copy is taken only when a manifest vouches for it.
    gate.filter(original, (authenticated) => {
      if (isCurrent(run, packet.sessionId, packet.incarnation)) {
        acceptRepaired(run, authenticated, packet);
      }
    });
  };

  /**
   * A repaired DATA packet. While the run is quiet on S1 (tailQuiet), no S1 packet is still on its
   * way: the packet shows that every sequence before it exists, so the frontier moves past it
   * (docs/protocol.md, "REPAIR"), and what lies between is asked for as gaps.
   */
  const acceptRepaired = (current: Run, datagram: Buffer, packet: DataPacket) => {
    if (tailQuiet(current) && sequenceDistance(current.frontier, packet.sequence) >= 0) {
      claim(current, sequenceAdd(packet.sequence, 1));
    }
    acceptData(current, datagram, packet, true);
  };

  /**
   * A REPAIR carrying a manifest or an END's control signature, asked for by a NACK with the
   * signatures flag because every copy was lost on S1: verified by the gate as if it came on S1,
   * which releases what it held for it (from S1 or from REPAIRs) and forwards it on S2 ahead of
   * them (docs/protocol.md, "REPAIR").
   */
  const onRepairedSignature = (current: Run, signature: Buffer) => {
    if (gate === undefined) {
      drop('repair-signature-unsigned'); // an unsigned session has no use for one
      return;
    }
    counters.signaturesRepaired++;
    current.lastActivityMs = clock.nowMs();
    gate.filter(signature, () => undefined); // a SIGNATURE is consumed by the gate
  };

  /** A REPAIR carrying the run's END (asked for by its sequence): taken as if it came on S1. */
  const onRepairedEnd = (current: Run, datagram: Buffer, end: EndPacket) => {
    if (end.incarnation !== current.incarnation) {
      drop('repair-other-incarnation');
      return;
    }
    counters.endsRepaired++;
    const original = datagram.subarray(headerBytes + repairFixedBytes, datagram.length - authTrailerBytes);
    if (gate === undefined) {
      onS1(original);
    } else {
      gate.filter(original, onS1); // a signed session's END is taken only when authenticated
    }
  };

  /**
   * An ANNOUNCE said a server holds the run up to `lastHeld`: how far a tail probe asks. Only a
   * hint within the window limits: what comes back is checked like any REPAIR.
   */
  const noteAnnouncedLast = (current: Run, lastHeld: number) => {
    const ahead = sequenceDistance(current.frontier, lastHeld);
    if (ahead < -1 || ahead > progressAheadPacketsMax) {
      return; // behind what S1 showed, or too far to be this run
    }
    if (current.announcedLast === undefined || sequenceDistance(current.announcedLast, lastHeld) > 0) {
      current.announcedLast = lastHeld;
    }
  };

  /** A retransmit server showed it holds `sequence` of the run, in the message it sealed as `counter`. */
  const notePassed = (current: Run, senderId: number, sequence: number, counter: number) => {
    const known = current.passed.get(senderId);
    if (known !== undefined && sequenceDistance(known.sequence, sequence) <= 0) {
      return;
    }
    current.passed.delete(senderId);
    current.passed.set(senderId, { sequence, counter });
    if (current.passed.size > replayPeersMax) {
      current.passed.delete(current.passed.keys().next().value ?? 0);
    }
  };

  /** Ends the current run when its source fell silent, so that the next run is served. */
  const endIfIdle = () => {
    const now = clock.nowMs();
    // Silent, or sending no DATA while another run's DATA arrives (HEARTBEATs alone, perhaps
    // forged, must not hold the server on a run that sends nothing).
    // A run whose END came ends by itself once everything before it is emitted or given up.
    if (
      run !== undefined &&
      run.endSequence === undefined &&
      (now - run.lastActivityMs > sessionIdleMs ||
        (now - run.lastDataMs > sessionIdleMs && pending.packetCount > 0))
    ) {
      finishRun(run, 'idle');
    }
  };

  return {
    currentRun: () => run,
    pendingPackets: () => pending.packetCount,
    pendingBytes: () => pending.byteCount,
    onS1,
    onRepair,
    onEmitterEvent,
    emit,
    endIfIdle,
    tailQuiet,
    noteAnnouncedLast,
    notePassed,
  };
}
