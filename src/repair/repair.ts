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
import { ManifestRepeats } from '../crypto/restricted-session.js';
import { type S2Key, S2Sealer } from '../crypto/s2-seal.js';
import { createSignedSessionGate, type SignedSessionStats } from '../crypto/signed-session.js';
import {
  adaptFeedbackIntervalMs,
  announceIntervalMsDefault,
  endGraceMsDefault,
  feedbackTargetsMax,
  nackDelayMsMaxDefault,
  progressAheadPacketsMax,
  protectedControlIntervalMs,
  repairKeysKeptMax,
  s2PaceArrivalFactor,
  s2PaceBurstPackets,
  s2PacePacketsPerSecondMin,
  sessionIdleMs,
  tailProbeIntervalMs,
  tailProbePacketsMax,
  timerWheelTickMs,
} from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { OwnedTimers, type Runtime, systemRuntime } from '../net/runtime.js';
import { TimerWheel } from '../net/timer-wheel.js';
import {
  type ControlSocket,
  openReceiverSocket,
  type ReceiverSocket,
  type SenderSocket,
} from '../net/udp.js';
import {
  decodeAnnounce,
  decodeRepair,
  encodeFeedback,
  encodeNack,
  ListenState,
  type SequenceRange,
} from '../protocol/control.js';
import {
  decodeHeader,
  type HeaderFields,
  headerBytes,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSessionId,
  offsetTimestamp,
  offsetType,
  PacketType,
} from '../protocol/packet.js';
import { decodeKey, decodeRekeyDatagram, decodeSignature, SignatureKind } from '../protocol/restricted.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';
import type { SessionWindow } from '../protocol/session-window.js';
import { type NackEvent, NackScheduler, type UnrecoverableReason } from './nack-scheduler.js';
import { createReorderEmitter } from './reorder-emitter.js';
import { createRunTracker, isCurrent, type Run } from './run-tracker.js';
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
  /** A signed run: verified manifests sent on S2 again (manifestSendCount copies of each in all). */
  manifestRepeatsSent: number;
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
   * A restricted run's verified KEY messages, by run and key epoch (the newest signing of each, the
   * epochs kept last; a replayed older copy, or another run's KEY of the same epoch, takes no
   * place of the current one):
   * each goes on S2 again just before the first DATA of its epoch that this server re-emits, so a
   * receiver whose S2 lags the KEY stream by several crypto-periods (a reliable server waiting for
   * repairs) holds the key when the DATA comes (docs/protocol.md, "KEY").
   */
  const keysByEpoch = new Map<string, Buffer>();
  const keySlot = (datagram: Buffer) =>
    `${datagram.readUInt32BE(offsetSessionId)}/${datagram.readUInt32BE(offsetIncarnation)}/${datagram.readUInt16BE(offsetKeyEpoch)}`;
  const signedAtUs = (datagram: Buffer) =>
    datagram.readUInt32BE(offsetTimestamp) * 2 ** 32 + datagram.readUInt32BE(offsetTimestamp + 4);
  let lastEmittedEpoch = 0;
  /**
   * Verified manifests sent on S2 again at the next control ticks, manifestSendCount copies in all
   * as the source sends them: the gate takes only the first copy of each, and a receiver behind
   * this server that loses the one copy on S2 could authenticate none of its 32-64 packets.
   */
  const manifestRepeats = new ManifestRepeats();
  /** Sends a datagram the gate verified on S2 (sealed when S2 is: emitS2), once S2 is open. */
  const forward = (datagram: Buffer) => {
    if (forwardTo !== undefined) {
      emitS2(datagram);
    }
  };
  const gate =
    settings.sourcePublicKey === undefined
      ? undefined
      : createSignedSessionGate(settings.sourcePublicKey, {
          onAuthenticated: (datagram) => {
            forward(datagram);
            if (datagram[offsetType] === PacketType.key) {
              keepKey(datagram);
            } else if (
              datagram[offsetType] === PacketType.signature &&
              datagram[headerBytes] === SignatureKind.manifest
            ) {
              manifestRepeats.sent(Buffer.from(datagram));
            }
          },
        });
  if (gate !== undefined) {
    timers.setInterval(() => {
      for (const manifest of manifestRepeats.due()) {
        forward(manifest);
        counters.manifestRepeatsSent++;
      }
    }, protectedControlIntervalMs);
  }
  const keepKey = (datagram: Buffer) => {
    const slot = keySlot(datagram);
    const kept = keysByEpoch.get(slot);
    if (kept !== undefined && signedAtUs(kept) > signedAtUs(datagram)) {
      return; // an older signing of the same KEY (a replay): the newest stays
    }
    keysByEpoch.delete(slot); // most recent last
    keysByEpoch.set(slot, Buffer.from(datagram));
    while (keysByEpoch.size > repairKeysKeptMax) {
      keysByEpoch.delete(keysByEpoch.keys().next().value ?? '');
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
    const key = keysByEpoch.get(keySlot(datagram));
    if (key !== undefined) {
      forward(key);
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
    manifestRepeatsSent: 0,
  };
  const dropped: Record<string, number> = {};
  const drop = (reason: string, count = 1) => {
    dropped[reason] = (dropped[reason] ?? 0) + count;
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
  /** Every repaired packet, and one in 16 direct ones (their median is the reference). */
  const sampleDelay = (sentUs: number, repaired: boolean) => {
    if (repaired || directSeen++ % 16 === 0) {
      recordDelay(sentUs, repaired);
    }
  };

  /** What a run's NACK scheduler reports, in the counters and to the emitter. */
  const onNackEvent = (event: NackEvent) => {
    switch (event.type) {
      case 'gap':
        counters.gaps++;
        if (settings.latencyMs !== undefined) {
          wheel.schedule(settings.latencyMs, () => tracker.emit());
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
        tracker.emit();
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
   * Asks the best retransmit server heard from whether the run goes on after its S1 frontier, while
   * it is quiet: one NACK naming single sequences at the frontier and 1, 3, 7 … 2^k - 1 after it
   * (within the claim limit), and the last sequence a server's ANNOUNCE said it holds and the one
   * after it. The frontier itself is the END's place once every DATA is known. The furthest DATA
   * that comes back moves the frontier (no S1 packet is still on its way), so everything before it
   * is NACKed as gaps, within each server's NACK window. At most one probe per timeout.
   */
  const probeTail = () => {
    const current = tracker.currentRun();
    if (current === undefined || !tracker.tailQuiet(current)) {
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

  // S2's re-emission is paced by the rate the current run's own datagrams arrived at (DATA and
  // its REPAIRs): another run's DATA, forged or not, or an earlier faster run does not count.
  const reorder = createReorderEmitter<Run>({
    clock,
    pace: {
      perSecond: (nowMs) =>
        Math.max(
          s2PacePacketsPerSecondMin,
          s2PaceArrivalFactor * (tracker.currentRun()?.arrivalRate.highestPerSecond(nowMs) ?? 0),
        ),
      burstPackets: s2PaceBurstPackets,
    },
    transport: {
      send: (datagram) => {
        keyAhead(datagram);
        emitS2(datagram);
      },
    },
    setTimeout: (fn, delayMs) => timers.setTimeout(fn, delayMs),
    latencyMs: settings.latencyMs,
    endGraceMs: endGraceMsDefault,
    events: (event) => tracker.onEmitterEvent(event),
  });
  /** The run being repaired (src/repair/run-tracker.ts). */
  const tracker = createRunTracker({
    clock,
    counters,
    drop,
    countUnrecoverable,
    nacksFor: nackSchedulerFor,
    reorder,
    emitS2,
    setTimeout: (fn, delayMs) => timers.setTimeout(fn, delayMs),
    servers,
    sampleDelay,
    gate,
  });

  const onRepair = (datagram: Buffer, remote: RemoteInfo) => {
    const repair = channel.accept(datagram, remote, decodeRepair, 'repair', drop);
    if (repair !== undefined) {
      tracker.onRepair(repair, datagram);
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
    const current = tracker.currentRun();
    if (
      announce.sessions.length === 0 &&
      announce.auth.targetId === channel.senderId &&
      current !== undefined
    ) {
      // An introduction: the server did not answer a NACK that did not name it (docs/protocol.md,
      // "NACK"). Now that we know its id, ask it again at once rather than after the timeout.
      current.nacks.reask(server);
    }
    for (const announced of announce.sessions) {
      if (announced.state === ListenState.lastResort) {
        noteFeedbackTarget(server, announced.sessionId, announced.incarnation);
      }
    }
    // Only what the server says of the current run counts: what it held of another run of the
    // same session id (a source restarted under it) proves nothing of this one, neither how far it
    // got nor whether it listens (docs/protocol.md, "ANNOUNCE").
    const session =
      current === undefined
        ? undefined
        : announce.sessions.find((s) => isCurrent(current, s.sessionId, s.incarnation));
    if (current === undefined || session === undefined) {
      if (
        announce.sessions.length > 0 &&
        announce.sessions.every((s) => s.state === ListenState.lastResort)
      ) {
        // A source of last resort holds its own session only: for any other run it is asked last,
        // after every server that may hold the packet (it ranked as a listening server with no
        // loss, and was asked first for every gap of a run it never sent).
        server.listening = false;
        server.lossPpm = 1_000_000;
      }
      return;
    }
    if (session.heldCount > 0) {
      tracker.notePassed(current, announce.auth.senderId, session.lastHeld, announce.auth.counter);
      tracker.noteAnnouncedLast(current, session.lastHeld);
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
    const current = tracker.currentRun();
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
  timers.setInterval(() => tracker.endIfIdle(), Math.max(10, sessionIdleMs / 4));

  const opened: Array<{ close(): Promise<void> }> = [];
  const control: ControlSocket = await transport.openControl(settings.listen, onControl);
  /**
   * Without the source's key (no --source-public) this server cannot check a restricted or signed
   * run's KEY messages and SIGNATUREs: those of the run it serves go on S2 as they came, for the
   * receivers to verify against the source key themselves (they refuse forged ones); those of
   * other runs are dropped. Each must decode (its lengths checked; not its signature): a
   * malformed one is counted and dropped. Unverified, none is kept to be sent again ahead of its
   * epoch's DATA.
   */
  const onS1Unverified = (datagram: Buffer) => {
    const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
    if (type !== PacketType.key && type !== PacketType.signature) {
      tracker.onS1(datagram);
      return;
    }
    const decoded = type === PacketType.key ? decodeKey(datagram) : decodeSignature(datagram);
    if (!decoded.ok) {
      drop(`s1-${decoded.reason}`);
      return;
    }
    if (!isCurrent(tracker.currentRun(), decoded.value.sessionId, decoded.value.incarnation)) {
      drop('s1-key-other-run');
      return;
    }
    forward(datagram);
  };
  /**
   * A REKEY of the run this server serves goes on S2 as it came, for the tokens behind it: it is
   * signed by the operator root key, which the tokens check (this server holds no root key).
   */
  const onS1Rekey = (datagram: Buffer) => {
    const decoded = decodeRekeyDatagram(datagram);
    if (!decoded.ok) {
      drop(`s1-${decoded.reason}`);
      return;
    }
    if (!isCurrent(tracker.currentRun(), decoded.value.sessionId, decoded.value.incarnation)) {
      drop('s1-rekey-other-run');
      return;
    }
    forward(datagram);
  };
  const onS1Checked =
    gate === undefined ? onS1Unverified : (datagram: Buffer) => gate.filter(datagram, tracker.onS1);
  const onS1Datagram = (datagram: Buffer) => {
    if (datagram.length > offsetType && datagram[offsetType] === PacketType.rekey) {
      onS1Rekey(datagram);
      return;
    }
    onS1Checked(datagram);
  };
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

  const status = (): RepairStatus => {
    const current = tracker.currentRun();
    return {
      role: 'repair',
      listen: formatEndpoint(control.local),
      emit: formatEndpoint(settings.emit),
      mode: settings.latencyMs === undefined ? 'reliable' : `latency ${settings.latencyMs} ms`,
      sessionId: current?.sessionId,
      incarnation: current?.incarnation,
      ...counters,
      s2KeyEpoch: sealer?.epoch,
      controlBytesSent: control.bytesSent,
      repairExtraDelayMs: extraDelay(),
      holding: current?.window.heldCount ?? 0,
      missingNow: current?.nacks.size ?? 0,
      pendingPackets: tracker.pendingPackets(),
      pendingBytes: tracker.pendingBytes(),
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
    };
  };

  /** The current run's NACK window at a server (src/repair/nack-scheduler.ts), when it has one. */
  function nackWindowOf(server: RankedServer): { nackWindow?: number; nacksInFlight?: number } {
    const current = tracker.currentRun();
    const window = current?.nacks.windows().find((entry) => entry.server === server);
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
