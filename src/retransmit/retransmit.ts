/**
 * The retransmit server (docs/architecture.md, "Retransmit server"): joins sessions, keeps each in
 * a bounded ring buffer, answers authenticated NACKs with REPAIR packets by unicast (rate limited
 * per repair server), measures its own reception, takes part in the election with its peers, and
 * announces what it holds.
 */
import type { KeyObject } from 'node:crypto';
import { ControlChannel, type ControlKey } from '../crypto/control-auth.js';
import { createSignedSessionGate, type SignedSessionStats } from '../crypto/signed-session.js';
import {
  announceIntervalMsDefault,
  retransmitGroupsMax,
  retransmitPeersLearnedMax,
  retransmitRunsPerGroupMax,
} from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { NackAnswerer } from '../net/nack-answerer.js';
import { OwnedTimers, type Runtime, systemRuntime } from '../net/runtime.js';
import type { ControlSocket, ReceiverSocket, SenderSocket } from '../net/udp.js';
import {
  type AnnouncedSession,
  type Control,
  decodeAnnounce,
  decodeNack,
  decodeQuality,
  decodeRepair,
  decodeSetup,
  ListenState,
  type ListenStateCode,
  type NackBody,
  type PeerEndpoint,
  type SessionQuality,
  SetupAction,
} from '../protocol/control.js';
import { headerBytes, offsetType, PacketType } from '../protocol/packet.js';
import { sequenceAdd } from '../protocol/serial.js';
import { runKey } from '../protocol/session-window.js';
import { authTrailerBytes, repairFixedBytes } from '../protocol/sizes.js';
import { Announcer } from './announcer.js';
import { Election, type ElectionSettings } from './election.js';
import { GroupRuns } from './group-runs.js';
import { PeerBook } from './peer-book.js';
import { emptyPeerFetchCounters, type PeerFetchCounters, PeerFetcher } from './peer-fetch.js';
import type { PeriodQuality, SessionBuffer } from './session-buffer.js';

/** A group to join. */
export interface JoinSpec {
  readonly group: Endpoint;
  readonly source?: string | undefined;
}

export type { ElectionSettings };

/** Settings of a retransmit server. */
export interface RetransmitSettings {
  readonly joins: readonly JoinSpec[];
  readonly iface?: string | undefined;
  /** Where NACKs, SETUP and QUALITY arrive. */
  readonly listen: Endpoint;
  /** The address announced for NACKs (default: the listen address). */
  readonly announceAddress?: string | undefined;
  readonly keys: readonly ControlKey[];
  readonly bufferBytesMax: number;
  readonly bufferAgeMs: number;
  readonly repairRateBitsPerSecond: number;
  readonly announceTo: readonly Endpoint[];
  readonly announceGroup?: Endpoint | undefined;
  /** Other retransmit servers of the sessions: QUALITY reports go to them. */
  readonly peers: readonly Endpoint[];
  readonly election?: ElectionSettings | undefined;
  /** Answer held sequences once, by multicast on this group, for every repair server behind it. */
  readonly repairGroup?: Endpoint | undefined;
  /**
   * Fetch what this server missed from its peers before answering not-held (docs/protocol.md,
   * "Peer fetch"); default true.
   */
  readonly peerFetch?: boolean | undefined;
  /**
   * A signed session's source key: only DATA a verified manifest vouches for is buffered and served
   * (docs/protocol.md, "Signed sessions"). The server never holds a content key.
   */
  readonly sourcePublicKey?: KeyObject | undefined;
}

/** Counters and state a status endpoint shows. */
export interface RetransmitStatus {
  role: 'retransmit';
  listen: string;
  senderId: number;
  packetsIn: number;
  nacksReceived: number;
  nacksAnswered: number;
  repairsSent: number;
  notHeldSent: number;
  repairBytesSent: number;
  rateLimited: number;
  suppressed: number;
  /** Signed sessions: manifests and END signatures sent ahead of REPAIRs (NACK signatures flag). */
  signaturesSent: number;
  /** Election state changes (listening <-> withdrawn) of this server's sessions. */
  electionChanges: number;
  /** Peer fetch: holes this server filled from its peers before answering. */
  peerFetch: PeerFetchCounters;
  /** Peers known for peer fetch: configured, and heard in QUALITY or ANNOUNCE. */
  peersKnown: number;
  /** Bytes sent on the control socket (unicast repairs included; multicast ones are in repairBytesSent). */
  bytesSent: number;
  dropped: Record<string, number>;
  /** A signed session: what the gate authenticated and refused. */
  signed?: SignedSessionStats | undefined;
  sessions: Array<{
    group: string;
    sessionId: number | undefined;
    state: 'listening' | 'withdrawn';
    heldPackets: number;
    bufferBytes: number;
    evicted: number;
    /** Loss measured over the last period: gaps in sequence and the kernel's drops, whichever is more. */
    lossPercent: number;
    jitterUs: number;
    members: number;
    /** Since the server joined: DATA packets received. */
    receivedPackets: number;
    /** Since the server joined: packets it missed (per period, the larger of gaps and kernel drops). */
    missingPackets: number;
    /** Since the server joined: datagrams the kernel dropped for its socket (undefined: not told). */
    kernelDrops: number | undefined;
    /** Packets fetched from peers to fill holes. */
    fetchedPackets: number;
    /** What the peers reported of this session in QUALITY (sums since first heard). */
    peers: Array<{ id: number; lossPercent: number; received: number; missing: number; state: string }>;
  }>;
}

interface Joined {
  readonly spec: JoinSpec;
  socket: ReceiverSocket | undefined;
  /** One buffer per run (session id and incarnation) heard on the group; the current one is announced. */
  readonly runs: GroupRuns;
  state: ListenStateCode;
  lastQuality: PeriodQuality;
  /** The meter since the server joined (docs/architecture.md, "Quality meter"). */
  readonly totals: { received: number; missing: number; kernelDrops: number | undefined };
  /** The kernel's drop count for the socket at the last period (a new socket starts again at 0). */
  kernelDropsSeen: number;
}

/** A Joined entry before its first packet. */
function newJoined(spec: JoinSpec, runs: GroupRuns): Joined {
  return {
    spec,
    socket: undefined,
    runs,
    state: ListenState.listening,
    lastQuality: { received: 0, missing: 0, lossPpm: 0, jitterUs: 0 },
    totals: { received: 0, missing: 0, kernelDrops: undefined },
    kernelDropsSeen: 0,
  };
}

/**
 * One period of the quality meter: what the buffer saw (gaps in sequence) and what the kernel
 * dropped for the socket. Drops and gaps mostly count the same packets, so a period's missing is
 * the larger of the two, never their sum; drops alone show the loss that leaves no gap (a tail, or
 * a stretch with no packet after it).
 */
export function meterPeriod(fromBuffer: PeriodQuality, kernelDropsInPeriod: number): PeriodQuality {
  const missing = Math.max(fromBuffer.missing, kernelDropsInPeriod);
  const expected = fromBuffer.received + missing;
  return {
    received: fromBuffer.received,
    missing,
    lossPpm: expected === 0 ? 0 : Math.round((missing / expected) * 1_000_000),
    jitterUs: fromBuffer.jitterUs,
  };
}

/** A running retransmit server. */
export interface RetransmitServer extends AsyncDisposable {
  readonly local: Endpoint;
  status(): RetransmitStatus;
  close(): Promise<void>;
}

/** Parts a retransmit server is built from. */
export interface RetransmitComponents {
  /** Clock, transport and randomness (default: the system's). */
  readonly runtime?: Runtime | undefined;
}

/** Starts a retransmit server. */
export async function startRetransmitServer(
  settings: RetransmitSettings,
  components: RetransmitComponents = {},
): Promise<RetransmitServer> {
  const runtime = components.runtime ?? systemRuntime;
  const { clock, transport } = runtime;
  const timers = new OwnedTimers(clock);
  /** A signed session: DATA is buffered only once a manifest vouches for it. */
  const gate =
    settings.sourcePublicKey === undefined ? undefined : createSignedSessionGate(settings.sourcePublicKey);
  // Peers reach us at the announced address and at the socket's own (docs/protocol.md, "SETUP").
  const channel = new ControlChannel(settings.keys, {
    clock,
    senderId: runtime.randomId(),
    self: () => [
      { address: settings.announceAddress ?? control.local.address, port: control.local.port },
      control.local,
    ],
  });
  const joined: Joined[] = [];
  /**
   * Runs of groups left on a SETUP leave (a source's session ended): no longer received, still
   * served to NACKs until their packets age out, so the end of a session does not take the packets
   * away from repair servers still repairing it; a SETUP join of the group takes them back. Oldest
   * first, at most retransmitGroupsMax.
   */
  const left: Array<{ group: Endpoint; runs: GroupRuns }> = [];
  /** Election state changes (listening <-> withdrawn), for the metrics. */
  let electionChanges = 0;
  /** Set by close(): sockets that finish opening after it are closed at once. */
  let closed: Promise<void> | undefined;
  const dropped: Record<string, number> = {};
  const drop = (reason: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
  };
  let packetsIn = 0;
  const periodMs = settings.election?.periodMs ?? announceIntervalMsDefault;
  const election = new Election({ ownId: channel.senderId, clock, periodMs });
  let repairSender: SenderSocket | undefined;
  let announceSender: SenderSocket | undefined;
  const sendTo = (datagram: Buffer, to: { address: string; port: number }) =>
    control.send(datagram, to.port, to.address);
  const answerer = new NackAnswerer({
    clock,
    timers,
    channel,
    sockets: {
      sendTo,
      multicast:
        settings.repairGroup === undefined
          ? undefined
          : (datagram) => repairSender?.send(datagram, datagram.length),
    },
    repairRateBitsPerSecond: settings.repairRateBitsPerSecond,
    lookup: (sessionId, incarnation, sequence) => bufferFor(sessionId, incarnation)?.get(sequence),
    // A signed session: what vouches for a packet goes ahead of it to a requester that lost it.
    signatureFor: gate === undefined ? undefined : (original) => gate.signatureFor(original),
    drop,
  });
  /** Peers for peer fetch: configured, and announced lately (docs/protocol.md, "Peer fetch"). */
  const peerBook = new PeerBook({
    clock,
    configured: settings.peers,
    learnedMax: retransmitPeersLearnedMax,
    freshMs: periodMs * 3,
    own: () => [control.local, ownAddress()],
  });
  const fetchPeers = () => peerBook.peers();
  const fetcher =
    settings.peerFetch === false
      ? undefined
      : new PeerFetcher({
          clock,
          setTimeout: (fn, delayMs) => timers.setTimeout(fn, delayMs),
          channel,
          sendTo,
          replyTo: () => control.local,
          peers: fetchPeers,
          store: (sessionId, incarnation, sequence, datagram) => {
            // A signed session: a peer's copy is kept only when a manifest already vouches for it.
            if (gate !== undefined && gate.check(datagram) !== 'authentic') {
              drop('peer-fetch-unauthenticated');
              return false;
            }
            return bufferFor(sessionId, incarnation)?.fill(sequence, datagram, clock.nowMs()) ?? false;
          },
          lacksSignature:
            gate === undefined
              ? undefined
              : (sessionId, incarnation, sequence) => !gate.vouches(sessionId, incarnation, sequence),
          drop,
        });
  const ownAddress = () => ({
    address: settings.announceAddress ?? control.local.address,
    port: control.local.port,
  });
  const announcer = new Announcer({
    clock,
    channel,
    sendTo,
    // Also on the repair group: routers install its forwarding state before the first repair needs it.
    multicasts: [
      ...(settings.announceGroup === undefined
        ? []
        : [(datagram: Buffer) => announceSender?.send(datagram, datagram.length)]),
      ...(settings.repairGroup === undefined
        ? []
        : [(datagram: Buffer) => repairSender?.send(datagram, datagram.length)]),
    ],
    announceTo: settings.announceTo,
    address: ownAddress,
  });

  /** The buffer of one run: a NACK is answered only from the run it names. */
  const bufferFor = (sessionId: number, incarnation: number): SessionBuffer | undefined => {
    for (const entry of joined) {
      const buffer = entry.runs.get(sessionId, incarnation);
      if (buffer !== undefined) {
        return buffer;
      }
    }
    for (const { runs } of left) {
      const buffer = runs.get(sessionId, incarnation);
      if (buffer !== undefined) {
        return buffer;
      }
    }
    return undefined;
  };

  /** A group's runs, bounded (docs/protocol.md, "Session identity"). */
  const groupRuns = () =>
    new GroupRuns({
      clock,
      bounds: { bytesMax: settings.bufferBytesMax, ageMs: settings.bufferAgeMs },
      runsMax: retransmitRunsPerGroupMax,
      drop,
    });

  const onData = (entry: Joined) => (datagram: Buffer) => {
    if (entry.runs.take(datagram)) {
      packetsIn++;
    }
  };

  const join = async (entry: Joined) => {
    const take = onData(entry);
    const socket = await transport.openReceiver(
      { group: entry.spec.group, iface: settings.iface, source: entry.spec.source },
      gate === undefined ? take : (datagram) => gate.filter(datagram, take),
    );
    // Let go while it opened (a SETUP leave, a withdrawal, close()): the socket is nobody's, so
    // it closes at once rather than receive into a group the server left, open for good.
    if (closed !== undefined || !joined.includes(entry) || entry.state !== ListenState.listening) {
      await socket.close();
      return;
    }
    entry.socket = socket;
    entry.kernelDropsSeen = 0;
  };

  /** Takes one period of the meter for a listening entry (gaps and the kernel's drops). */
  const measure = (entry: Joined, buffer: SessionBuffer) => {
    const drops = entry.socket?.kernelDrops?.();
    const dropsInPeriod = drops === undefined ? 0 : Math.max(0, drops - entry.kernelDropsSeen);
    if (drops !== undefined) {
      entry.kernelDropsSeen = drops;
      entry.totals.kernelDrops = (entry.totals.kernelDrops ?? 0) + dropsInPeriod;
    }
    entry.lastQuality = meterPeriod(buffer.takePeriod(), dropsInPeriod);
    entry.totals.received += entry.lastQuality.received;
    entry.totals.missing += entry.lastQuality.missing;
  };

  const answerNack = (datagram: Buffer, remote: { address: string; port: number }) => {
    // Authenticate before anything else: an unproven sender gets no byte back, and answers go
    // only to the address the NACK was signed for (docs/protocol.md, "NACK").
    const nack = channel.accept(datagram, remote, decodeNack, 'nack', drop);
    if (nack === undefined) {
      return;
    }
    const missed = fetcher === undefined ? [] : missedOf(nack);
    if (missed.length === 0) {
      answerer.answer(nack, remote);
      return;
    }
    // Fill our holes from the peers first, then answer (docs/protocol.md, "Peer fetch").
    void fetcher?.fetch(nack.sessionId, nack.incarnation, missed).then(() => answerer.answer(nack, remote));
  };

  /**
   * Sequences a repair server's NACK names that we do not hold, of a run we buffer, at or below
   * what the run is known to have reached: what a peer may fill. None for a peer's own fetch
   * (never forwarded), a NACK that does not name us yet, or a run we never heard (no state is
   * made for it); nor a sequence the run may not have sent yet (a tail probe of a paused ticker),
   * which no peer can hold.
   */
  const missedOf = (nack: Control<NackBody>): number[] => {
    const buffer = bufferFor(nack.sessionId, nack.incarnation);
    if (nack.peerFetch === true || nack.auth.targetId === 0 || buffer === undefined) {
      return [];
    }
    const missed: number[] = [];
    for (const range of nack.ranges) {
      for (let i = 0; i < range.count; i++) {
        const sequence = sequenceAdd(range.start, i);
        if (buffer.get(sequence) === undefined && buffer.reached(sequence)) {
          missed.push(sequence);
        }
      }
    }
    return missed;
  };

  /** A REPAIR from a peer we fetched from. */
  const onRepair = (datagram: Buffer, remote: PeerEndpoint) => {
    const repair = channel.accept(datagram, remote, decodeRepair, 'repair', drop);
    if (repair === undefined) {
      return;
    }
    if (repair.signature !== undefined) {
      // A peer's copy of a manifest (or END signature), sent ahead of what it vouches for: the gate
      // verifies it like one from S1, and releases what it held for it into the buffer.
      if (gate === undefined) {
        drop('repair-signature-unsigned');
      } else {
        gate.filter(repair.signature, () => undefined);
      }
      return;
    }
    if (repair.data !== undefined && repair.data.incarnation !== repair.incarnation) {
      drop('repair-other-incarnation'); // another run's packet is never stored
      return;
    }
    const original =
      repair.data === undefined
        ? undefined
        : datagram.subarray(headerBytes + repairFixedBytes, datagram.length - authTrailerBytes);
    if (fetcher?.onRepair(repair, original, remote) !== true) {
      drop('repair-unasked');
    }
  };

  /** An ANNOUNCE: a peer (another retransmit server, or a source of last resort) to fetch from. */
  const onAnnounce = (datagram: Buffer, remote: PeerEndpoint) => {
    const announce = channel.accept(datagram, remote, decodeAnnounce, 'announce', drop);
    if (announce === undefined) {
      return;
    }
    if (announce.sessions.length === 0 && announce.auth.targetId === channel.senderId) {
      fetcher?.onIntroduction(remote); // it did not know our id; now it does
      return;
    }
    peerBook.learn({ address: announce.address, port: announce.port });
  };

  const onControl = (datagram: Buffer, remote: { address: string; port: number }) => {
    switch (datagram.length > offsetType ? datagram[offsetType] : undefined) {
      case PacketType.nack:
        answerNack(datagram, remote);
        return;
      case PacketType.quality: {
        const quality = channel.accept(datagram, remote, decodeQuality, 'quality', drop);
        if (quality !== undefined) {
          // Refreshes a peer learned from its ANNOUNCE (the address sealed in it), never adds one:
          // a QUALITY's source address is not sealed, and a captured copy replayed from a victim's
          // address must not make us send fetches there (test/sim/found.md #6).
          peerBook.refresh(remote);
        }
        for (const session of quality?.sessions ?? []) {
          election.report(
            quality?.auth.senderId ?? 0,
            runKey(session.sessionId, session.incarnation),
            session,
          );
        }
        return;
      }
      case PacketType.repair:
        onRepair(datagram, remote);
        return;
      case PacketType.announce:
        onAnnounce(datagram, remote);
        return;
      case PacketType.setup:
        void onSetup(datagram, remote);
        return;
      default:
        drop('unexpected-type');
    }
  };

  const onSetup = async (datagram: Buffer, remote: { address: string; port: number }) => {
    const setup = channel.accept(datagram, remote, decodeSetup, 'setup', drop);
    if (setup === undefined) {
      return;
    }
    const index = joined.findIndex(
      (entry) => entry.spec.group.address === setup.group && entry.spec.group.port === setup.port,
    );
    if (setup.action === SetupAction.leave) {
      const [entry] = index >= 0 ? joined.splice(index, 1) : [];
      if (entry !== undefined && entry.runs.size > 0) {
        left.push({ group: entry.spec.group, runs: entry.runs });
        if (left.length > retransmitGroupsMax) {
          left.shift();
        }
      }
      await entry?.socket?.close();
      return;
    }
    if (index < 0) {
      if (joined.length >= retransmitGroupsMax) {
        drop('setup-over-groups');
        return;
      }
      const family = setup.group.includes(':') ? 6 : 4;
      // Joined again after a leave: the runs it kept are taken back, so that what it buffered
      // before is still served rather than hidden behind a new, empty buffer of the same run.
      const leftAt = left.findIndex(
        ({ group }) => group.address === setup.group && group.port === setup.port,
      );
      const [taken] = leftAt >= 0 ? left.splice(leftAt, 1) : [];
      const entry = newJoined(
        {
          group: { address: setup.group, port: setup.port, family },
          source: setup.source,
        },
        taken?.runs ?? groupRuns(),
      );
      joined.push(entry);
      await join(entry).catch(() => drop('setup-join-failed'));
    }
  };

  const control: ControlSocket = await transport.openControl(settings.listen, onControl);
  try {
    repairSender =
      settings.repairGroup === undefined
        ? undefined
        : await transport.openSender({ group: settings.repairGroup, iface: settings.iface });
    announceSender =
      settings.announceGroup === undefined
        ? undefined
        : await transport.openSender({ group: settings.announceGroup, iface: settings.iface });
    for (const spec of settings.joins) {
      const entry = newJoined(spec, groupRuns());
      joined.push(entry);
      await join(entry);
    }
  } catch (error) {
    // A failed start closes everything it opened (its timers too), like every role's.
    await close();
    throw error;
  }

  /** One election round for a session (docs/architecture.md, "Election"). */
  const elect = async (entry: Joined) => {
    const buffer = entry.runs.current;
    if (settings.election === undefined || buffer === undefined) {
      return;
    }
    const own = {
      lossPpm: entry.lastQuality.lossPpm,
      missing: entry.lastQuality.missing,
      state: entry.state,
    };
    const decision = election.decide(runKey(buffer.sessionId, buffer.incarnation), own, settings.election);
    if (decision === 'withdraw') {
      entry.state = ListenState.withdrawn;
      electionChanges++;
      await entry.socket?.close();
      entry.socket = undefined;
    } else if (decision === 'rejoin') {
      entry.state = ListenState.listening;
      electionChanges++;
      buffer.restartMeter(); // what was sent while withdrawn is not loss
      await join(entry).catch(() => drop('rejoin-failed'));
    }
  };

  const tick = async () => {
    const announced: AnnouncedSession[] = [];
    const qualities: SessionQuality[] = [];
    const now = clock.nowMs();
    for (const [i, { runs }] of [...left.entries()].reverse()) {
      runs.sweep(now);
      if (runs.announced().every((run) => run.heldCount === 0)) {
        left.splice(i, 1); // a left group's packets have all aged out, of every run
      }
    }
    for (const entry of joined) {
      entry.runs.sweep(now); // an old run whose packets have all aged out is forgotten
      const buffer = entry.runs.current;
      if (buffer === undefined) {
        continue;
      }
      if (entry.state === ListenState.listening) {
        measure(entry, buffer);
      }
      await elect(entry);
      // Every run held, each in an entry of its own (docs/protocol.md, "ANNOUNCE"): the loss is
      // what the server measured of the group.
      for (const run of entry.runs.announced()) {
        const range = run.range;
        announced.push({
          sessionId: run.sessionId,
          incarnation: run.incarnation,
          firstHeld: range?.first ?? 0,
          lastHeld: range?.last ?? 0,
          heldCount: run.heldCount,
          lossPpm: entry.lastQuality.lossPpm,
          state: entry.state,
        });
      }
      qualities.push({
        sessionId: buffer.sessionId,
        incarnation: buffer.incarnation,
        received: Math.min(entry.lastQuality.received, 0xffff_ffff),
        missing: Math.min(entry.lastQuality.missing, 0xffff_ffff),
        lossPpm: entry.lastQuality.lossPpm,
        jitterUs: Math.min(Math.round(entry.lastQuality.jitterUs), 0xffff_ffff),
        state: entry.state,
      });
    }
    announcer.announce(announced);
    announcer.report(qualities, settings.peers);
  };
  let ticking = false;
  const runTick = () => {
    if (!ticking) {
      ticking = true;
      void tick()
        .catch(() => drop('tick-failed')) // a daemon never dies of one period's work
        .finally(() => {
          ticking = false;
        });
    }
  };
  runTick(); // announce at once: repair servers learn of us, routers install the groups' state
  timers.setInterval(runTick, periodMs);

  const status = (): RetransmitStatus => ({
    role: 'retransmit',
    listen: formatEndpoint(control.local),
    senderId: channel.senderId,
    packetsIn,
    ...answerer.counters,
    electionChanges,
    peerFetch: { ...(fetcher?.counters ?? emptyPeerFetchCounters()) },
    peersKnown: fetchPeers().length,
    bytesSent: control.bytesSent,
    dropped: { ...dropped },
    ...(gate === undefined ? {} : { signed: { ...gate.stats, forged: { ...gate.stats.forged } } }),
    sessions: joined.map((entry) => statusOf(entry, entry.runs.current)),
  });

  const statusOf = (
    entry: Joined,
    buffer: SessionBuffer | undefined,
  ): RetransmitStatus['sessions'][number] => ({
    group: formatEndpoint(entry.spec.group),
    sessionId: buffer?.sessionId,
    state: entry.state === ListenState.listening ? 'listening' : 'withdrawn',
    heldPackets: buffer?.heldCount ?? 0,
    bufferBytes: buffer?.bytes ?? 0,
    evicted: buffer?.evictedCount ?? 0,
    lossPercent: entry.lastQuality.lossPpm / 10_000,
    jitterUs: Math.round(entry.lastQuality.jitterUs),
    receivedPackets: entry.totals.received,
    missingPackets: entry.totals.missing,
    kernelDrops: entry.totals.kernelDrops,
    fetchedPackets: buffer?.filledCount ?? 0,
    peers:
      buffer === undefined
        ? []
        : election.peers(runKey(buffer.sessionId, buffer.incarnation)).map((peer) => ({
            id: peer.id,
            lossPercent: peer.lossPpm / 10_000,
            received: peer.received,
            missing: peer.missing,
            state: peer.state === ListenState.listening ? 'listening' : 'withdrawn',
          })),
    members:
      buffer === undefined
        ? 1
        : election.members(runKey(buffer.sessionId, buffer.incarnation), {
            lossPpm: 0,
            missing: 0,
            state: entry.state,
          }).length,
  });

  /** Closes everything the server opened; idempotent (hoisted: a failed start calls it). */
  function close(): Promise<void> {
    closed ??= (async () => {
      timers.close();
      answerer.close();
      fetcher?.close();
      for (const entry of joined) {
        await entry.socket?.close();
      }
      await control.close();
      await announceSender?.close();
      await repairSender?.close();
    })();
    return closed;
  }
  return { local: control.local, status, close, [Symbol.asyncDispose]: close };
}
