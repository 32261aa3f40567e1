/**
 * The repair server (docs/architecture.md, "Repair server"): joins S1, finds gaps with
 * serial-number arithmetic, NACKs retransmit servers one after another (best first, the next after
 * a timeout or a not-held answer), and re-emits the session in order on S2 — byte for byte the
 * source's own datagrams, so `gatecast receive` works unchanged there. Unrecoverable packets are
 * counted and reported, never skipped silently.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import type { RemoteInfo } from 'node:dgram';
import { ControlChannel, type ControlKey } from '../crypto/control-auth.js';
import { type S2Key, S2Sealer } from '../crypto/s2-seal.js';
import { createSignedSessionGate, type SignedSessionStats } from '../crypto/signed-session.js';
import {
  adaptFeedbackIntervalMs,
  announceIntervalMsDefault,
  endedRunsMax,
  endGraceMsDefault,
  endRepeatCount,
  endRepeatIntervalMs,
  feedbackTargetsMax,
  nackDelayMsMaxDefault,
  pendingBytesMax,
  pendingPacketsMax,
  pendingRunsMax,
  progressAheadPacketsMax,
  repairHoldBytesMax,
  repairHoldPacketsMax,
  repairKeysKeptMax,
  repairReachBackPacketsMax,
  replayPeersMax,
  resyncPacketsMin,
  resyncQuietMs,
  sessionIdleMs,
  tailProbeIntervalMs,
  tailProbePacketsMax,
  tailQuietMs,
  timerWheelTickMs,
} from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { OwnedTimers, type Runtime, systemRuntime, type Timer } from '../net/runtime.js';
import { TimerWheel } from '../net/timer-wheel.js';
import {
  type ControlSocket,
  openReceiverSocket,
  type ReceiverSocket,
  type SenderSocket,
} from '../net/udp.js';
import {
  authTrailerBytes,
  decodeAnnounce,
  decodeRepair,
  encodeFeedback,
  encodeNack,
  ListenState,
  type SequenceRange,
} from '../protocol/control.js';
import {
  type DataPacket,
  decodeData,
  decodeDescriptor,
  decodeEnd,
  decodeHeader,
  type EndPacket,
  type HeaderFields,
  headerBytes,
  offsetIncarnation,
  offsetKeyEpoch,
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
import { type NackEvent, NackScheduler, type UnrecoverableReason } from './nack-scheduler.js';
import { createReorderEmitter, type EmitterEvent } from './reorder-emitter.js';
import { type RankedServer, ServerRanking } from './server-ranking.js';

/** Settings of a repair server. */
export interface RepairSettings {
  readonly group: Endpoint;
  readonly source?: string | undefined;
  readonly iface?: string | undefined;
  readonly listen: Endpoint;
  readonly keys: readonly ControlKey[];
  /** Retransmit servers known from configuration, in preference order. */
  readonly retransmit: readonly Endpoint[];
  /** Group on which retransmit servers announce themselves (joined when given). */
  readonly announceGroup?: Endpoint | undefined;
  readonly emit: Endpoint;
  readonly emitIface?: string | undefined;
  readonly ttl?: number | undefined;
  /** undefined: reliable (wait as long as the retransmit buffers hold); a number: latency budget. */
  readonly latencyMs: number | undefined;
  readonly nackDelayMsMax?: number | undefined;
  /** Group on which retransmit servers multicast their repairs (joined when given). */
  readonly repairGroup?: Endpoint | undefined;
  /**
   * Seal everything emitted on S2 under this key (docs/protocol.md, "SEALED"); S2 stays plain
   * when absent. The repair controller always gives one and rotates it (`rotateS2Key`).
   */
  readonly s2Key?: S2Key | undefined;
  /**
   * A signed session's source key: DATA, HEARTBEAT, END and DESCRIPTOR (from S1 and in REPAIRs)
   * are taken only when authenticated against it, and verified manifests, control signatures,
   * offers and KEY messages are forwarded on S2 (docs/protocol.md, "Signed sessions").
   */
  readonly sourcePublicKey?: KeyObject | undefined;
}

/** What the status endpoint shows. */
export interface RepairStatus {
  role: 'repair';
  listen: string;
  emit: string;
  mode: string;
  sessionId: number | undefined;
  /** The run being repaired (docs/protocol.md, "Session identity"). */
  incarnation: number | undefined;
  packetsIn: number;
  gaps: number;
  nacksSent: number;
  nackedPackets: number;
  repairsReceived: number;
  notHeldReceived: number;
  /** Packets a REPAIR brought that S1 had lost (only these are billed as repaired). */
  recovered: number;
  /** Bytes of the datagrams recovered (what a recipient's repair service is rated on). */
  recoveredBytes: number;
  /** Missing packets that came late on S1 after all (reordered): not counted as recovered. */
  lateDirect: number;
  unrecoverable: number;
  /**
   * Unrecoverable packets by why they were given up: `not-held` (every retransmit server showed it
   * had passed the packet and does not hold it), `no-live-server` (no server asked was heard from),
   * `live-server-wait` (with a latency budget: servers heard from stayed silent too long), `passed`
   * (the emitter went past it: the latency budget, or the hold was full), `idle` (the run fell
   * silent first), `resync` (the window jumped to far-ahead DATA).
   */
  unrecoverableReasons: Record<string, number>;
  timeouts: number;
  duplicates: number;
  emitted: number;
  /** The S2 key epoch envelopes are sealed under; undefined when S2 is plain. */
  s2KeyEpoch: number | undefined;
  /** SEALED envelopes sent on S2. */
  sealed: number;
  /** S2 key rotations since start. */
  s2Rotations: number;
  /** Bytes this server sent on its control socket (NACKs). */
  controlBytesSent: number;
  /**
   * One-way delay (emission on S2 minus the source's send timestamp) of repaired packets, minus
   * the median one-way delay of packets that arrived directly: what repair added. Milliseconds.
   */
  repairExtraDelayMs: { p50: number; p99: number; max: number } | undefined;
  holding: number;
  missingNow: number;
  /** Runs re-emitted to their END. */
  sessionsCompleted: number;
  /** Runs ended because their source fell silent (no DATA, no HEARTBEAT for sessionIdleMs). */
  sessionsIncomplete: number;
  /** Packets before the point this server joined a file at, beyond its reach back: never repaired. */
  notReached: number;
  /** DATA far beyond the hold window (set aside; a run of them makes the window jump). */
  beyondWindow: number;
  /** HEARTBEAT/END claims further ahead than the limits allow: ignored. */
  claimsTooFar: number;
  /** FEEDBACK messages sent to sources of last resort (for their adaptive rate). */
  feedbackSent: number;
  /** NACKs for the tail of a run quiet on S1 with no END (what follows its S1 frontier). */
  tailProbes: number;
  /** ENDs a REPAIR brought (lost on S1). */
  endsRepaired: number;
  /** Manifests and END signatures a REPAIR brought (lost on S1; asked for with the NACK signatures flag). */
  signaturesRepaired: number;
  /** A restricted run: KEY messages sent on S2 again just before the first DATA of their epoch. */
  keysAhead: number;
  /** DATA held for runs whose DESCRIPTOR has not been taken up yet. */
  pendingPackets: number;
  pendingBytes: number;
  dropped: Record<string, number>;
  /** A signed session: what the gate authenticated and refused. */
  signed?: SignedSessionStats | undefined;
  servers: Array<{
    address: string;
    lossPercent: number;
    listening: boolean;
    timeouts: number;
    rttMs: number | undefined;
    /** The current run's NACK window at this server and the packets asked and not answered yet. */
    nackWindow?: number;
    nacksInFlight?: number;
  }>;
}

/** A running repair server. */
export interface RepairServer extends AsyncDisposable {
  readonly local: Endpoint;
  status(): RepairStatus;
  /**
   * One-way delays in ms of packets that came directly and of repaired ones, as kept for
   * repairExtraDelayMs (bounded, append-only): the metrics read what was added since their last look.
   */
  delaySamples?(): { readonly directMs: readonly number[]; readonly repairedMs: readonly number[] };
  /**
   * Seals everything emitted on S2 from now on under this key, whose epoch must be new (the
   * controller's rotation on leave). Only a server started with an S2 key rotates.
   */
  rotateS2Key?(key: S2Key): void;
  close(): Promise<void>;
}

/** Parts a repair server is built from; tests can hand in a lossy S1 socket. */
export interface RepairComponents {
  readonly openS1Socket?: typeof openReceiverSocket;
  /** Clock, transport and randomness (default: the system's). */
  readonly runtime?: Runtime | undefined;
}

/** One run being repaired: its window of held DATA and its gaps. */
interface Run {
  readonly sessionId: number;
  readonly incarnation: number;
  readonly window: SessionWindow;
  /** Its gaps and their NACKs. */
  readonly nacks: NackScheduler;
  endSequence: number | undefined;
  endDatagram: Buffer | undefined;
  /** Ends the run once the END's grace has passed with no DATA contradicting it. */
  endTimer: Timer | undefined;
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

/**
 * An S1 socket that loses the DATA datagrams `lose` picks: the demo shows repair on loopback (which
 * loses nothing) with it, and tests lose packets by a seeded rule.
 */
export function lossyS1Socket(lose: (sequence: number) => boolean): typeof openReceiverSocket {
  return (options, onDatagram) =>
    openReceiverSocket(options, (datagram, remote) => {
      const header = decodeHeader(datagram);
      if (header.ok && header.value.type === PacketType.data && lose(header.value.sequence)) {
        return;
      }
      onDatagram(datagram, remote);
    });
}

/** Starts a repair server. */
export async function startRepairServer(
  settings: RepairSettings,
  components: RepairComponents = {},
): Promise<RepairServer> {
  const runtime = components.runtime ?? systemRuntime;
  const { clock, transport } = runtime;
  const timers = new OwnedTimers(clock);
  const channel = new ControlChannel(settings.keys, { clock, senderId: runtime.randomId() });
  const wheel = new TimerWheel({ clock: () => clock.nowMs(), autoStart: false });
  timers.setInterval(() => wheel.advance(), timerWheelTickMs);
  const nackDelayMsMax = settings.nackDelayMsMax ?? nackDelayMsMaxDefault;
  const servers = new ServerRanking();
  /** A signed session's gate; what it verified goes on to S2 at once, ahead of what it vouches for. */
  let forwardTo: SenderSocket | undefined;
  /**
   * A restricted run's verified KEY messages, by key epoch (the latest copy, the newest epochs):
   * each goes on S2 again just before the first DATA of its epoch that this server re-emits, so a
   * receiver whose S2 lags the KEY stream by several crypto-periods (a reliable server waiting for
   * repairs) holds the key when the DATA comes (docs/protocol.md, "KEY").
   */
  const keysByEpoch = new Map<number, Buffer>();
  let lastEmittedEpoch = 0;
  const gate =
    settings.sourcePublicKey === undefined
      ? undefined
      : createSignedSessionGate(settings.sourcePublicKey, {
          onAuthenticated: (datagram) => {
            forwardTo?.send(datagram, datagram.length);
            if (datagram[offsetType] === PacketType.key) {
              keepKey(datagram);
            }
          },
        });
  const keepKey = (datagram: Buffer) => {
    const epoch = datagram.readUInt16BE(offsetKeyEpoch);
    keysByEpoch.delete(epoch); // most recent last
    keysByEpoch.set(epoch, Buffer.from(datagram));
    while (keysByEpoch.size > repairKeysKeptMax) {
      keysByEpoch.delete(keysByEpoch.keys().next().value ?? 0);
    }
  };
  /** Before the first re-emitted DATA of a key epoch: that epoch's KEY again, when held. */
  const keyAhead = (datagram: Buffer) => {
    if (datagram[offsetType] !== PacketType.data || datagram.length < headerBytes) {
      return;
    }
    const epoch = datagram.readUInt16BE(offsetKeyEpoch);
    if (epoch === 0 || epoch === lastEmittedEpoch) {
      return;
    }
    lastEmittedEpoch = epoch;
    const key = keysByEpoch.get(epoch);
    if (
      key !== undefined &&
      key.readUInt32BE(offsetIncarnation) === datagram.readUInt32BE(offsetIncarnation)
    ) {
      forwardTo?.send(key, key.length);
      counters.keysAhead++;
    }
  };
  for (const [staticIndex, endpoint] of settings.retransmit.entries()) {
    servers.add(endpoint, staticIndex);
  }
  const counters = {
    packetsIn: 0,
    gaps: 0,
    nacksSent: 0,
    nackedPackets: 0,
    repairsReceived: 0,
    notHeldReceived: 0,
    recovered: 0,
    recoveredBytes: 0,
    lateDirect: 0,
    unrecoverable: 0,
    timeouts: 0,
    duplicates: 0,
    emitted: 0,
    sessionsCompleted: 0,
    sessionsIncomplete: 0,
    notReached: 0,
    beyondWindow: 0,
    claimsTooFar: 0,
    sealed: 0,
    s2Rotations: 0,
    feedbackSent: 0,
    tailProbes: 0,
    endsRepaired: 0,
    signaturesRepaired: 0,
    keysAhead: 0,
  };
  const dropped: Record<string, number> = {};
  const drop = (reason: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
  };
  /** Unrecoverable packets by why they were given up (RepairStatus.unrecoverableReasons). */
  const unrecoverableReasons: Record<string, number> = {};
  const countUnrecoverable = (reason: UnrecoverableReason | 'resync', delta: number) => {
    counters.unrecoverable += delta;
    const count = (unrecoverableReasons[reason] ?? 0) + delta;
    if (count === 0) {
      delete unrecoverableReasons[reason];
    } else {
      unrecoverableReasons[reason] = count;
    }
  };

  /** One-way delays in ms, bounded samples: packets that came directly and repaired ones. */
  const directDelays: number[] = [];
  const repairedDelays: number[] = [];
  const sampleMax = 200_000;
  let directSeen = 0;
  const recordDelay = (sentUs: number, repaired: boolean) => {
    const list = repaired ? repairedDelays : directDelays;
    if (list.length < sampleMax) {
      list.push((clock.wallUs() - sentUs) / 1000);
    }
  };

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
  /** What a run's NACK scheduler reports, in the counters and to the emitter. */
  const onNackEvent = (event: NackEvent) => {
    switch (event.type) {
      case 'gap':
        counters.gaps++;
        if (settings.latencyMs !== undefined) {
          wheel.schedule(settings.latencyMs, emit);
        }
        return;
      case 'gap-withdrawn':
        counters.gaps--;
        return;
      case 'nack-sent':
        counters.nacksSent++;
        counters.nackedPackets += event.packets;
        return;
      case 'timeout':
        counters.timeouts++;
        return;
      case 'unrecoverable':
        countUnrecoverable(event.reason, event.delta);
        return;
      case 'gave-up':
        emit();
        return;
    }
  };

  /** The NACK scheduler of a run: NACKs name the run and go sealed from our control socket. */
  const nackSchedulerFor = (sessionId: number, incarnation: number, window: SessionWindow) =>
    new NackScheduler({
      nowMs: () => clock.nowMs(),
      random: runtime.random,
      schedule: (delayMs, fn) => wheel.schedule(delayMs, fn),
      defer: (fn) => timers.defer(fn),
      servers,
      isAlive: (server) => channel.targetIdOf(server.endpoint) !== 0,
      base: () => window.base,
      nackDelayMsMax,
      reliable: settings.latencyMs === undefined,
      // What arrives bounds what is NACKed (docs/architecture.md, "Pacing repairs").
      arrivals: () => counters.packetsIn + counters.repairsReceived,
      events: onNackEvent,
      sendNack: (server, ranges, again) => sendNack(sessionId, incarnation, server, ranges, again),
    });

  /** True when the gate holds no verified manifest hash for some sequence the ranges name. */
  const lacksManifest = (sessionId: number, incarnation: number, ranges: readonly SequenceRange[]) => {
    for (const range of ranges) {
      for (let i = 0; i < range.count; i++) {
        if (gate?.vouches(sessionId, incarnation, sequenceAdd(range.start, i)) === false) {
          return true;
        }
      }
    }
    return false;
  };

  /** Sends one NACK of a run to a retransmit server. */
  const sendNack = (
    sessionId: number,
    incarnation: number,
    server: RankedServer,
    ranges: readonly SequenceRange[],
    again: boolean,
  ) => {
    const fields: HeaderFields = {
      sessionId,
      incarnation,
      sequence: ranges[0]?.start ?? 0,
      timestampUs: clock.wallUs(),
    };
    // A signed session: a sequence no verified manifest vouches for (or the END's, which none
    // does) asks for what vouches for it too.
    const signatures = gate !== undefined && lacksManifest(sessionId, incarnation, ranges);
    // Sealed for the server's id once learned; REPAIRs may come only to our own control socket.
    const nack = channel.seal(
      encodeNack(fields, { ranges, replyTo: control.local, again, signatures }),
      server.endpoint,
    );
    control.send(nack, server.endpoint.port, server.endpoint.address);
  };

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

  /**
   * Asks the best retransmit server heard from whether the run goes on after its S1 frontier, while
   * it is quiet: one NACK naming single sequences at the frontier and 1, 3, 7 … 2^k - 1 after it
   * (within the claim limit), and the last sequence a server's ANNOUNCE said it holds and the one
   * after it. The frontier itself is the END's place once every DATA is known. The furthest DATA
   * that comes back moves the frontier (no S1 packet is still on its way), so everything before it
   * is NACKed as gaps, within each server's NACK window. At most one probe per timeout.
   */
  const probeTail = () => {
    const current = run;
    if (current === undefined || !tailQuiet(current)) {
      return;
    }
    const ranked = servers.ranked();
    const server = ranked.find((candidate) => channel.targetIdOf(candidate.endpoint) !== 0) ?? ranked[0];
    const now = clock.nowMs();
    if (server === undefined || now - current.lastProbeMs < servers.timeoutFor(server, 0)) {
      return;
    }
    current.lastProbeMs = now;
    const offsets = new Set<number>();
    for (let ahead = 1; ahead - 1 <= tailProbePacketsMax; ahead *= 2) {
      offsets.add(ahead - 1);
    }
    if (current.announcedLast !== undefined) {
      const last = sequenceDistance(current.frontier, current.announcedLast);
      if (last >= 0 && last < progressAheadPacketsMax) {
        offsets.add(last);
        offsets.add(last + 1);
      }
    }
    const ranges = [...offsets]
      .sort((a, b) => a - b)
      .map((offset) => ({ start: sequenceAdd(current.frontier, offset), count: 1 }));
    // With the again flag: a repair group's recent multicast of these does not hold the answer back.
    sendNack(current.sessionId, current.incarnation, server, ranges, true);
    counters.tailProbes++;
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

  /** Sealed S2 when the server holds an S2 key (module comment of src/crypto/s2-seal.ts). */
  const sealer = settings.s2Key === undefined ? undefined : new S2Sealer(channel.senderId, settings.s2Key);
  /** Puts one datagram on S2: as it is, or sealed in its own envelope when S2 is sealed. */
  const emitS2 = (datagram: Buffer) => {
    if (sealer === undefined) {
      emitter.send(datagram, datagram.length);
      return;
    }
    let envelope: Buffer;
    try {
      envelope = sealer.seal(datagram, clock.wallUs());
    } catch {
      drop('s2-seal-refused'); // the key sealed 2^32 - 1 envelopes: nothing leaves in clear
      return;
    }
    counters.sealed++;
    emitter.send(envelope, envelope.length);
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
  const reorder = createReorderEmitter<Run>({
    clock,
    transport: {
      send: (datagram) => {
        keyAhead(datagram);
        emitS2(datagram);
      },
    },
    setTimeout: (fn, delayMs) => timers.setTimeout(fn, delayMs),
    latencyMs: settings.latencyMs,
    endGraceMs: endGraceMsDefault,
    events: onEmitterEvent,
  });
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
    // Over the byte bound: the oldest gap is given up so that what keeps arriving is not lost.
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
    // Every repaired packet, and one in 16 direct ones (their median is the reference).
    if (repaired || directSeen++ % 16 === 0) {
      recordDelay(packet.timestampUs, repaired);
    }
    if (!repaired) {
      reachFrontier(current, sequenceAdd(sequence, 1));
    }
    emit();
  };

  /** Gives up the gap at the delivery point (the hold is full) and emits what follows it. */
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
    if (how === 'idle') {
      current.window.drainToEnd(send(current), passGap(current, 'idle'));
      counters.sessionsIncomplete++;
    } else {
      const end = current.endDatagram;
      if (end !== undefined) {
        for (let i = 0; i < endRepeatCount; i++) {
          timers.setTimeout(() => emitS2(end), i * endRepeatIntervalMs);
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
      dropped['pending-other-run'] = (dropped['pending-other-run'] ?? 0) + packets;
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
    const current: Run = {
      sessionId: d.sessionId,
      incarnation: d.incarnation,
      window,
      nacks: nackSchedulerFor(d.sessionId, d.incarnation, window),
      endSequence: undefined,
      endDatagram: undefined,
      endTimer: undefined,
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

  const isCurrent = (current: Run | undefined, sessionId: number, incarnation: number): current is Run =>
    current !== undefined && current.sessionId === sessionId && current.incarnation === incarnation;

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

  const onRepair = (datagram: Buffer, remote: RemoteInfo) => {
    const repair = channel.accept(datagram, remote, decodeRepair, 'repair', drop);
    if (repair === undefined) {
      return;
    }
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

  const onAnnounce = (datagram: Buffer, remote: RemoteInfo) => {
    const announce = channel.accept(datagram, remote, decodeAnnounce, 'announce', drop);
    if (announce === undefined) {
      return;
    }
    const family = announce.address.includes(':') ? 6 : 4;
    if (family !== settings.listen.family) {
      return;
    }
    const server = servers.add({ address: announce.address, port: announce.port, family });
    server.announcedAtMs = clock.nowMs();
    if (announce.sessions.length === 0 && announce.auth.targetId === channel.senderId && run !== undefined) {
      // An introduction: the server did not answer a NACK that did not name it (docs/protocol.md,
      // "NACK"). Now that we know its id, ask it again at once rather than after the timeout.
      run.nacks.reask(server);
    }
    for (const announced of announce.sessions) {
      if (announced.state === ListenState.lastResort) {
        noteFeedbackTarget(server, announced.sessionId, announced.incarnation);
      }
    }
    // Only what the server says of the current run counts: what it held of another run of the
    // same session id (a source restarted under it) proves nothing of this one, neither how far it
    // got nor whether it listens (docs/protocol.md, "ANNOUNCE").
    const current = run;
    const session =
      current === undefined
        ? undefined
        : announce.sessions.find((s) => isCurrent(current, s.sessionId, s.incarnation));
    if (current === undefined || session === undefined) {
      return;
    }
    if (session.heldCount > 0) {
      notePassed(current, announce.auth.senderId, session.lastHeld, announce.auth.counter);
      noteAnnouncedLast(current, session.lastHeld);
    }
    server.lossPpm = session.lossPpm;
    server.listening = session.state === ListenState.listening;
  };

  /**
   * Sources of last resort by endpoint: the session each announced and when (bounded). They take
   * FEEDBACK on the run for their adaptive rate (docs/protocol.md, "FEEDBACK").
   */
  const feedbackTargets = new Map<
    string,
    { server: RankedServer; sessionId: number; incarnation: number; heardAtMs: number }
  >();
  const noteFeedbackTarget = (server: RankedServer, sessionId: number, incarnation: number) => {
    feedbackTargets.delete(server.key);
    feedbackTargets.set(server.key, { server, sessionId, incarnation, heardAtMs: clock.nowMs() });
    if (feedbackTargets.size > feedbackTargetsMax) {
      feedbackTargets.delete(feedbackTargets.keys().next().value ?? '');
    }
  };

  /** FEEDBACK on the current run to each source of last resort of its session heard lately. */
  const sendFeedback = () => {
    const current = run;
    if (current === undefined || feedbackTargets.size === 0) {
      return;
    }
    const now = clock.nowMs();
    let datagram: Buffer | undefined;
    for (const target of feedbackTargets.values()) {
      if (
        !isCurrent(current, target.sessionId, target.incarnation) ||
        now - target.heardAtMs > 3 * announceIntervalMsDefault
      ) {
        continue;
      }
      datagram ??= encodeFeedback(
        {
          sessionId: current.sessionId,
          incarnation: current.incarnation,
          sequence: current.window.base,
          timestampUs: clock.wallUs(),
        },
        {
          missing: current.nacks.size,
          holding: current.window.heldCount,
          unrecoverable: counters.unrecoverable,
          socketDrops: s1.kernelDrops?.() ?? 0,
          received: counters.packetsIn,
          nacked: counters.nackedPackets,
        },
      );
      // Each copy is sealed for its own target: one counter per message (docs/protocol.md).
      const sealed = channel.seal(Buffer.from(datagram), target.server.endpoint);
      control.send(sealed, target.server.endpoint.port, target.server.endpoint.address);
      counters.feedbackSent++;
    }
  };
  const onControl = (datagram: Buffer, remote: RemoteInfo) => {
    const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
    if (type === PacketType.repair) {
      onRepair(datagram, remote);
    } else if (type === PacketType.announce) {
      onAnnounce(datagram, remote);
    } else {
      drop('unexpected-type');
    }
  };

  // A run whose source died without END is ended after sessionIdleMs, so the next run is served.
  timers.setInterval(
    () => {
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
    },
    Math.max(10, sessionIdleMs / 4),
  );

  const opened: Array<{ close(): Promise<void> }> = [];
  const control: ControlSocket = await transport.openControl(settings.listen, onControl);
  const onS1Datagram = gate === undefined ? onS1 : (datagram: Buffer) => gate.filter(datagram, onS1);
  opened.push(control);
  let emitter: SenderSocket;
  let s1: ReceiverSocket;
  let announceSocket: ReceiverSocket | undefined;
  let repairGroupSocket: ReceiverSocket | undefined;
  try {
    emitter = await transport.openSender({
      group: settings.emit,
      iface: settings.emitIface ?? settings.iface,
      ttl: settings.ttl,
    });
    opened.push(emitter);
    forwardTo = emitter;
    s1 = await (components.openS1Socket ?? transport.openReceiver)(
      { group: settings.group, iface: settings.iface, source: settings.source },
      onS1Datagram,
    );
    opened.push(s1);
    if (settings.announceGroup !== undefined) {
      announceSocket = await transport.openReceiver(
        { group: settings.announceGroup, iface: settings.iface },
        onControl,
      );
      opened.push(announceSocket);
    }
    if (settings.repairGroup !== undefined) {
      repairGroupSocket = await transport.openReceiver(
        { group: settings.repairGroup, iface: settings.iface },
        onControl,
      );
      opened.push(repairGroupSocket);
    }
  } catch (error) {
    // A failed start closes everything it opened.
    timers.close();
    wheel.close();
    for (const socket of opened.reverse()) {
      await socket.close();
    }
    throw error;
  }

  timers.setInterval(sendFeedback, adaptFeedbackIntervalMs);
  timers.setInterval(probeTail, tailProbeIntervalMs);

  const status = (): RepairStatus => ({
    role: 'repair',
    listen: formatEndpoint(control.local),
    emit: formatEndpoint(settings.emit),
    mode: settings.latencyMs === undefined ? 'reliable' : `latency ${settings.latencyMs} ms`,
    sessionId: run?.sessionId,
    incarnation: run?.incarnation,
    ...counters,
    s2KeyEpoch: sealer?.epoch,
    controlBytesSent: control.bytesSent,
    repairExtraDelayMs: extraDelay(),
    holding: run?.window.heldCount ?? 0,
    missingNow: run?.nacks.size ?? 0,
    pendingPackets: pending.packetCount,
    pendingBytes: pending.byteCount,
    unrecoverableReasons: { ...unrecoverableReasons },
    dropped: { ...dropped },
    ...(gate === undefined ? {} : { signed: { ...gate.stats, forged: { ...gate.stats.forged } } }),
    servers: servers.ranked().map((server) => ({
      address: server.key,
      lossPercent: server.lossPpm / 10_000,
      listening: server.listening,
      timeouts: server.consecutiveTimeouts,
      rttMs: server.srttMs === undefined ? undefined : Math.round(server.srttMs * 100) / 100,
      ...nackWindowOf(server),
    })),
  });

  /** The current run's NACK window at a server (src/repair/nack-scheduler.ts), when it has one. */
  function nackWindowOf(server: RankedServer): { nackWindow?: number; nacksInFlight?: number } {
    const window = run?.nacks.windows().find((entry) => entry.server === server);
    return window === undefined ? {} : { nackWindow: window.packets, nacksInFlight: window.inFlight };
  }

  function extraDelay(): RepairStatus['repairExtraDelayMs'] {
    if (repairedDelays.length === 0 || directDelays.length === 0) {
      return undefined;
    }
    const direct = percentile(directDelays, 0.5);
    const round = (ms: number) => Math.round(ms * 100) / 100;
    return {
      p50: round(percentile(repairedDelays, 0.5) - direct),
      p99: round(percentile(repairedDelays, 0.99) - direct),
      max: round(percentile(repairedDelays, 1) - direct),
    };
  }

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      timers.close();
      wheel.close();
      await s1.close();
      await announceSocket?.close();
      await repairGroupSocket?.close();
      await control.close();
      await emitter.close();
    })();
    return closed;
  };
  const delaySamples = () => ({ directMs: directDelays, repairedMs: repairedDelays });
  const rotateS2Key = (key: S2Key) => {
    assert.ok(sealer !== undefined, 'S2 is plain: a server started without an S2 key has none to rotate');
    sealer.rotate(key);
    counters.s2Rotations++;
  };
  return {
    local: control.local,
    status,
    delaySamples,
    rotateS2Key,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** The q-quantile (0-1) of samples, nearest rank. */
function percentile(samples: readonly number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
}
