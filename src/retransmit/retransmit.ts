/**
 * The retransmit server (docs/architecture.md, "Retransmit server"): joins sessions, keeps each in
 * a bounded ring buffer, answers authenticated NACKs with REPAIR packets by unicast (rate limited
 * per repair server), measures its own reception, takes part in the election with its peers, and
 * announces what it holds.
 */
import { ControlChannel, type ControlKey } from '../crypto/control-auth.js';
import {
  announceIntervalMsDefault,
  announceSessionsMax,
  repairSuppressMs,
  retransmitGroupsMax,
  retransmitRunsPerGroupMax,
} from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { OwnedTimers, type Runtime, systemRuntime } from '../net/runtime.js';
import type { ControlSocket, ReceiverSocket, SenderSocket } from '../net/udp.js';
import {
  type AnnouncedSession,
  decodeNack,
  decodeQuality,
  decodeSetup,
  encodeAnnounce,
  encodeQuality,
  encodeRepair,
  encodeRepairNotHeld,
  ListenState,
  type ListenStateCode,
  type SessionQuality,
  SetupAction,
} from '../protocol/control.js';
import { decodeData, type HeaderFields, headerBytes, offsetType, PacketType } from '../protocol/packet.js';
import { sequenceAdd } from '../protocol/serial.js';
import { runKey } from '../protocol/session-window.js';
import { type PeriodQuality, SessionBuffer } from './session-buffer.js';

/** A group to join. */
export interface JoinSpec {
  readonly group: Endpoint;
  readonly source?: string | undefined;
}

/** Election settings (docs/architecture.md, "Election"). */
export interface ElectionSettings {
  /** Withdraw when own loss is above this share (0-1) and another member listens. */
  readonly lossMax: number;
  /** Listen only when among the best N members. */
  readonly bestCount: number;
  /** Quality period; a peer silent for three periods is no longer a member. */
  readonly periodMs: number;
}

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
  /** Election state changes (listening <-> withdrawn) of this server's sessions. */
  electionChanges: number;
  /** Bytes sent on the control socket (unicast repairs included; multicast ones are in repairBytesSent). */
  bytesSent: number;
  dropped: Record<string, number>;
  sessions: Array<{
    group: string;
    sessionId: number | undefined;
    state: 'listening' | 'withdrawn';
    heldPackets: number;
    bufferBytes: number;
    evicted: number;
    lossPercent: number;
    jitterUs: number;
    members: number;
  }>;
}

interface Joined {
  readonly spec: JoinSpec;
  socket: ReceiverSocket | undefined;
  /** One buffer per run (session id and incarnation) heard on the group, at most retransmitRunsPerGroupMax. */
  readonly runs: Map<string, SessionBuffer>;
  /** The run written most recently: the one announced and measured. */
  buffer: SessionBuffer | undefined;
  state: ListenStateCode;
  lastQuality: PeriodQuality;
}

interface PeerReport {
  lossPpm: number;
  state: ListenStateCode;
  atMs: number;
}

interface Bucket {
  creditBytes: number;
  refilledAtMs: number;
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
  const peerReports = new Map<string, PeerReport>();
  const buckets = new Map<number, Bucket>();
  const counters = {
    packetsIn: 0,
    nacksReceived: 0,
    nacksAnswered: 0,
    repairsSent: 0,
    notHeldSent: 0,
    repairBytesSent: 0,
    rateLimited: 0,
    suppressed: 0,
    /** Election state changes (listening <-> withdrawn), for the metrics. */
    electionChanges: 0,
  };
  /** (session, sequence) repaired by multicast recently, oldest first. */
  const recentlyMulticast = new Map<string, number>();
  const dropped: Record<string, number> = {};
  const drop = (reason: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
  };
  const fields = (sessionId: number, incarnation: number, sequence: number): HeaderFields => ({
    sessionId,
    incarnation,
    sequence,
    timestampUs: clock.wallUs(),
  });

  /** The buffer of one run: a NACK is answered only from the run it names. */
  const bufferFor = (sessionId: number, incarnation: number): SessionBuffer | undefined => {
    const key = runKey(sessionId, incarnation);
    for (const entry of joined) {
      const buffer = entry.runs.get(key);
      if (buffer !== undefined) {
        return buffer;
      }
    }
    return undefined;
  };

  /** The buffer for a run heard on a group; a new run evicts the run written least recently. */
  const runBuffer = (entry: Joined, sessionId: number, incarnation: number): SessionBuffer => {
    const key = runKey(sessionId, incarnation);
    let buffer = entry.runs.get(key);
    if (buffer === undefined) {
      if (entry.runs.size >= retransmitRunsPerGroupMax) {
        let idlest: [string, SessionBuffer] | undefined;
        for (const candidate of entry.runs) {
          if (idlest === undefined || candidate[1].lastAddedMs < idlest[1].lastAddedMs) {
            idlest = candidate;
          }
        }
        if (idlest !== undefined) {
          entry.runs.delete(idlest[0]);
          drop('run-evicted');
        }
      }
      buffer = new SessionBuffer(sessionId, incarnation, {
        bytesMax: settings.bufferBytesMax,
        ageMs: settings.bufferAgeMs,
      });
      entry.runs.set(key, buffer);
    }
    return buffer;
  };

  const onData = (entry: Joined) => (datagram: Buffer) => {
    if (datagram[offsetType] !== PacketType.data) {
      return;
    }
    const decoded = decodeData(datagram);
    if (!decoded.ok) {
      drop(`data-${decoded.reason}`);
      return;
    }
    counters.packetsIn++;
    const packet = decoded.value;
    const buffer = runBuffer(entry, packet.sessionId, packet.incarnation);
    buffer.add(packet.sequence, datagram, packet.timestampUs, clock.nowMs(), clock.wallUs());
    entry.buffer = buffer;
  };

  const join = async (entry: Joined) => {
    entry.socket = await transport.openReceiver(
      { group: entry.spec.group, iface: settings.iface, source: entry.spec.source },
      onData(entry),
    );
  };

  /** Takes tokens for a repair to one repair server; false when over its rate. */
  const allow = (senderId: number, bytes: number): boolean => {
    const now = clock.nowMs();
    const bytesPerMs = settings.repairRateBitsPerSecond / 8000;
    const burst = Math.max(bytesPerMs * 50, 64 * 1500);
    let bucket = buckets.get(senderId);
    if (bucket === undefined) {
      bucket = { creditBytes: burst, refilledAtMs: now };
      buckets.set(senderId, bucket);
    }
    bucket.creditBytes = Math.min(burst, bucket.creditBytes + (now - bucket.refilledAtMs) * bytesPerMs);
    bucket.refilledAtMs = now;
    if (bucket.creditBytes < bytes) {
      return false;
    }
    bucket.creditBytes -= bytes;
    return true;
  };

  const answerNack = (datagram: Buffer, port: number, address: string) => {
    // Authenticate before anything else: an unproven sender gets no byte back, and answers go
    // only to the address the NACK was signed for (docs/protocol.md, "NACK").
    const nack = channel.accept(datagram, { address, port }, decodeNack, 'nack', drop);
    if (nack === undefined) {
      return;
    }
    if (nack.auth.targetId === 0) {
      // The requester does not know our id yet: tell it, in fewer bytes than it sent.
      drop('nack-no-target');
      control.send(channel.introduction(nack), port, address);
      return;
    }
    counters.nacksReceived++;
    const now = clock.nowMs();
    for (const [key, atMs] of recentlyMulticast) {
      if (now - atMs <= repairSuppressMs) {
        break;
      }
      recentlyMulticast.delete(key);
    }
    const buffer = bufferFor(nack.sessionId, nack.incarnation);
    let answered = false;
    for (const range of nack.ranges) {
      let notHeldStart: number | undefined;
      let notHeldCount = 0;
      const flushNotHeld = () => {
        if (notHeldStart !== undefined) {
          const reply = channel.sealReply(
            encodeRepairNotHeld(fields(nack.sessionId, nack.incarnation, notHeldStart), notHeldCount),
            nack,
          );
          control?.send(reply, port, address);
          counters.notHeldSent++;
          notHeldStart = undefined;
          notHeldCount = 0;
        }
      };
      for (let i = 0; i < range.count; i++) {
        const sequence = sequenceAdd(range.start, i);
        const original = buffer?.get(sequence);
        if (original === undefined) {
          notHeldStart ??= sequence;
          notHeldCount++;
          continue;
        }
        flushNotHeld();
        const suppressKey = `${nack.sessionId}/${sequence}`;
        if (repairSender !== undefined && recentlyMulticast.has(suppressKey)) {
          counters.suppressed++; // already multicast to every repair server behind the group
          continue;
        }
        if (!allow(nack.auth.senderId, original.length + headerBytes + 36)) {
          counters.rateLimited++;
          continue;
        }
        // Unicast: for the requester; on the repair group: for every repair server (target 0).
        const repair = encodeRepair(fields(nack.sessionId, nack.incarnation, sequence), original);
        const reply = repairSender === undefined ? channel.sealReply(repair, nack) : channel.seal(repair);
        if (repairSender === undefined) {
          control?.send(reply, port, address);
        } else {
          repairSender.send(reply, reply.length);
          recentlyMulticast.set(suppressKey, now);
        }
        counters.repairsSent++;
        counters.repairBytesSent += reply.length;
        answered = true;
      }
      flushNotHeld();
    }
    if (answered) {
      counters.nacksAnswered++;
    }
  };

  const onControl = (datagram: Buffer, remote: { address: string; port: number }) => {
    switch (datagram.length > offsetType ? datagram[offsetType] : undefined) {
      case PacketType.nack:
        answerNack(datagram, remote.port, remote.address);
        return;
      case PacketType.quality: {
        const quality = channel.accept(datagram, remote, decodeQuality, 'quality', drop);
        for (const session of quality?.sessions ?? []) {
          peerReports.set(`${quality?.auth.senderId}/${session.sessionId}`, {
            lossPpm: session.lossPpm,
            state: session.state,
            atMs: clock.nowMs(),
          });
        }
        return;
      }
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
      await entry?.socket?.close();
      return;
    }
    if (index < 0) {
      if (joined.length >= retransmitGroupsMax) {
        drop('setup-over-groups');
        return;
      }
      const family = setup.group.includes(':') ? 6 : 4;
      const entry: Joined = {
        spec: { group: { address: setup.group, port: setup.port, family }, source: setup.source },
        socket: undefined,
        runs: new Map(),
        buffer: undefined,
        state: ListenState.listening,
        lastQuality: { received: 0, missing: 0, lossPpm: 0, jitterUs: 0 },
      };
      joined.push(entry);
      await join(entry).catch(() => drop('setup-join-failed'));
    }
  };

  const control: ControlSocket = await transport.openControl(settings.listen, onControl);
  const repairSender: SenderSocket | undefined =
    settings.repairGroup === undefined
      ? undefined
      : await transport.openSender({ group: settings.repairGroup, iface: settings.iface });
  const announceSender: SenderSocket | undefined =
    settings.announceGroup === undefined
      ? undefined
      : await transport.openSender({ group: settings.announceGroup, iface: settings.iface });
  for (const spec of settings.joins) {
    const entry: Joined = {
      spec,
      socket: undefined,
      runs: new Map(),
      buffer: undefined,
      state: ListenState.listening,
      lastQuality: { received: 0, missing: 0, lossPpm: 0, jitterUs: 0 },
    };
    joined.push(entry);
    await join(entry);
  }

  /** Members of a session's election that are fresh, with their loss; ourselves included. */
  const members = (sessionId: number, own: { lossPpm: number; state: ListenStateCode }) => {
    const periodMs = settings.election?.periodMs ?? announceIntervalMsDefault;
    const now = clock.nowMs();
    const list = [{ id: channel.senderId, lossPpm: own.lossPpm, state: own.state }];
    for (const [key, report] of peerReports) {
      const [senderId, session] = key.split('/').map(Number);
      if (session === sessionId && now - report.atMs <= periodMs * 3) {
        list.push({ id: senderId ?? 0, lossPpm: report.lossPpm, state: report.state });
      }
    }
    return list;
  };

  /** One election round for a session (docs/architecture.md, "Election"). */
  const elect = async (entry: Joined) => {
    const election = settings.election;
    const sessionId = entry.buffer?.sessionId;
    if (election === undefined || sessionId === undefined) {
      return;
    }
    const all = members(sessionId, { lossPpm: entry.lastQuality.lossPpm, state: entry.state });
    const othersListening = all.filter((m) => m.id !== channel.senderId && m.state === ListenState.listening);
    if (entry.state === ListenState.listening) {
      const ranked = all
        .filter((m) => m.state === ListenState.listening)
        .sort((a, b) => a.lossPpm - b.lossPpm || a.id - b.id);
      const rank = ranked.findIndex((m) => m.id === channel.senderId);
      const tooLossy = entry.lastQuality.lossPpm > election.lossMax * 1_000_000 && othersListening.length > 0;
      if (tooLossy || rank >= election.bestCount) {
        entry.state = ListenState.withdrawn;
        counters.electionChanges++;
        await entry.socket?.close();
        entry.socket = undefined;
      }
    } else if (othersListening.length < election.bestCount) {
      entry.state = ListenState.listening;
      counters.electionChanges++;
      await join(entry).catch(() => drop('rejoin-failed'));
    }
  };

  const tick = async () => {
    const announced: AnnouncedSession[] = [];
    const qualities: SessionQuality[] = [];
    const now = clock.nowMs();
    for (const entry of joined) {
      for (const [key, run] of entry.runs) {
        run.evict(now);
        if (run !== entry.buffer && run.heldCount === 0) {
          entry.runs.delete(key); // an old run whose packets have all aged out
        }
      }
      const buffer = entry.buffer;
      if (buffer === undefined) {
        continue;
      }
      if (entry.state === ListenState.listening) {
        entry.lastQuality = buffer.takePeriod();
      }
      await elect(entry);
      const range = buffer.range;
      announced.push({
        sessionId: buffer.sessionId,
        firstHeld: range?.first ?? 0,
        lastHeld: range?.last ?? 0,
        heldCount: buffer.heldCount,
        lossPpm: entry.lastQuality.lossPpm,
        state: entry.state,
      });
      qualities.push({
        sessionId: buffer.sessionId,
        received: Math.min(entry.lastQuality.received, 0xffff_ffff),
        missing: Math.min(entry.lastQuality.missing, 0xffff_ffff),
        lossPpm: entry.lastQuality.lossPpm,
        jitterUs: Math.min(Math.round(entry.lastQuality.jitterUs), 0xffff_ffff),
        state: entry.state,
      });
    }
    const header = { sessionId: 0, sequence: 0, timestampUs: clock.wallUs() };
    // A server holding more sessions than one message carries sends several (docs/protocol.md,
    // "Size budgets"); each is sealed once per repair server, naming its id once known, and once
    // for the groups (target 0).
    for (let i = 0; i === 0 || i < announced.length; i += announceSessionsMax) {
      const announceBody = {
        address: settings.announceAddress ?? control.local.address,
        port: control.local.port,
        sessions: announced.slice(i, i + announceSessionsMax),
      };
      for (const target of settings.announceTo) {
        control.send(channel.seal(encodeAnnounce(header, announceBody), target), target.port, target.address);
      }
      const announce = channel.seal(encodeAnnounce(header, announceBody));
      announceSender?.send(announce, announce.length);
      // Also on the repair group: routers install its forwarding state before the first repair needs it.
      repairSender?.send(announce, announce.length);
    }
    if (settings.peers.length > 0) {
      for (let i = 0; i === 0 || i < qualities.length; i += announceSessionsMax) {
        const sessions = qualities.slice(i, i + announceSessionsMax);
        for (const peer of settings.peers) {
          control.send(channel.seal(encodeQuality(header, { sessions }), peer), peer.port, peer.address);
        }
      }
    }
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
  timers.setInterval(runTick, settings.election?.periodMs ?? announceIntervalMsDefault);

  const status = (): RetransmitStatus => ({
    role: 'retransmit',
    listen: formatEndpoint(control.local),
    senderId: channel.senderId,
    ...counters,
    bytesSent: control.bytesSent,
    dropped: { ...dropped },
    sessions: joined.map((entry) => ({
      group: formatEndpoint(entry.spec.group),
      sessionId: entry.buffer?.sessionId,
      state: entry.state === ListenState.listening ? 'listening' : 'withdrawn',
      heldPackets: entry.buffer?.heldCount ?? 0,
      bufferBytes: entry.buffer?.bytes ?? 0,
      evicted: entry.buffer?.evictedCount ?? 0,
      lossPercent: entry.lastQuality.lossPpm / 10_000,
      jitterUs: Math.round(entry.lastQuality.jitterUs),
      members:
        entry.buffer === undefined
          ? 1
          : members(entry.buffer.sessionId, { lossPpm: 0, state: entry.state }).length,
    })),
  });

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      timers.close();
      for (const entry of joined) {
        await entry.socket?.close();
      }
      await control.close();
      await announceSender?.close();
      await repairSender?.close();
    })();
    return closed;
  };
  return { local: control.local, status, close, [Symbol.asyncDispose]: close };
}
