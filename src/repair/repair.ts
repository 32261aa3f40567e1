/**
 * The repair server (docs/architecture.md, "Repair server"): joins S1, finds gaps with
 * serial-number arithmetic, NACKs retransmit servers one after another (best first, the next after
 * a timeout or a not-held answer), and re-emits the session in order on S2 — byte for byte the
 * source's own datagrams, so `gatecast receive` works unchanged there. Unrecoverable packets are
 * counted and reported, never skipped silently.
 */
import { acceptControl, type ControlKey, ControlSealer, ControlVerifier } from '../crypto/control-auth.js';
import {
  endRepeatCount,
  endRepeatIntervalMs,
  nackAttemptsMax,
  nackDelayMsMaxDefault,
  nackRangePacketsMax,
  nackRangesMax,
  nackTimeoutMsInitial,
  nackTimeoutMsMax,
  nackTimeoutMsMin,
  notHeldRetryMsInitial,
  pendingPacketsMax,
  repairHoldPacketsMax,
} from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { nowMicroseconds as nowUs } from '../net/clock.js';
import { type TimerHandle, TimerWheel } from '../net/timer-wheel.js';
import {
  type ControlSocket,
  openControlSocket,
  openReceiverSocket,
  openSenderSocket,
  type ReceiverSocket,
  type SenderSocket,
} from '../net/udp.js';
import {
  authTrailerBytes,
  decodeAnnounce,
  decodeRepair,
  encodeNack,
  ListenState,
  type SequenceRange,
} from '../protocol/control.js';
import {
  decodeData,
  decodeDescriptor,
  decodeHeader,
  headerBytes,
  offsetType,
  PacketType,
  SessionKind,
} from '../protocol/packet.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';

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
}

interface Server {
  readonly endpoint: Endpoint;
  readonly key: string;
  readonly staticIndex: number;
  lossPpm: number;
  listening: boolean;
  announcedAtMs: number | undefined;
  consecutiveTimeouts: number;
  srttMs: number | undefined;
  rttvarMs: number;
}

interface Missing {
  readonly sequence: number;
  readonly firstMs: number;
  attempts: number;
  tried: Set<string>;
  server: Server | undefined;
  sentAtMs: number;
  timer: TimerHandle | undefined;
  unrecoverable: boolean;
}

/** What the status endpoint shows. */
export interface RepairStatus {
  role: 'repair';
  listen: string;
  emit: string;
  mode: string;
  sessionId: number | undefined;
  packetsIn: number;
  gaps: number;
  nacksSent: number;
  nackedPackets: number;
  repairsReceived: number;
  notHeldReceived: number;
  recovered: number;
  /** Bytes of the datagrams recovered (what a recipient's repair service is rated on). */
  recoveredBytes: number;
  unrecoverable: number;
  timeouts: number;
  duplicates: number;
  emitted: number;
  /** Bytes this server sent on its control socket (NACKs). */
  controlBytesSent: number;
  /**
   * One-way delay (emission on S2 minus the source's send timestamp) of repaired packets, minus
   * the median one-way delay of packets that arrived directly: what repair added. Milliseconds.
   */
  repairExtraDelayMs: { p50: number; p99: number; max: number } | undefined;
  holding: number;
  missingNow: number;
  sessionsCompleted: number;
  dropped: Record<string, number>;
  servers: Array<{
    address: string;
    lossPercent: number;
    listening: boolean;
    timeouts: number;
    rttMs: number | undefined;
  }>;
}

/** A running repair server. */
export interface RepairServer extends AsyncDisposable {
  readonly local: Endpoint;
  status(): RepairStatus;
  close(): Promise<void>;
}

/** Parts a repair server is built from; tests can hand in a lossy S1 socket. */
export interface RepairComponents {
  readonly openS1Socket?: typeof openReceiverSocket;
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
  const sealer = new ControlSealer(settings.keys[0] as ControlKey);
  const verifier = new ControlVerifier(settings.keys);
  const wheel = new TimerWheel();
  const nackDelayMsMax = settings.nackDelayMsMax ?? nackDelayMsMaxDefault;
  const servers = new Map<string, Server>();
  for (const [staticIndex, endpoint] of settings.retransmit.entries()) {
    addServer(endpoint, staticIndex);
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
    unrecoverable: 0,
    timeouts: 0,
    duplicates: 0,
    emitted: 0,
    sessionsCompleted: 0,
  };
  const dropped: Record<string, number> = {};
  const drop = (reason: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
  };

  /** One-way delays in ms, bounded samples: packets that came directly and repaired ones. */
  const directDelays: number[] = [];
  const repairedDelays: number[] = [];
  const sampleMax = 200_000;
  let directSeen = 0;
  const nowMsEpoch = () => performance.timeOrigin + performance.now();
  const recordDelay = (datagram: Buffer, repaired: boolean) => {
    const list = repaired ? repairedDelays : directDelays;
    if (list.length < sampleMax && datagram.length >= headerBytes) {
      const sentUs = datagram.readUInt32BE(16) * 0x1_0000_0000 + datagram.readUInt32BE(20);
      list.push(nowMsEpoch() - sentUs / 1000);
    }
  };

  // Session state; reset after each session's END has been re-emitted.
  let sessionId: number | undefined;
  let live = false;
  let base = 0;
  let highest = 0;
  let endDatagram: Buffer | undefined;
  let endSequence: number | undefined;
  const hold = new Map<number, Buffer>();
  const missing = new Map<number, Missing>();
  const pending: Buffer[] = [];
  const due = new Set<Missing>();
  let flushScheduled = false;

  function addServer(endpoint: Endpoint, staticIndex: number): Server {
    const key = formatEndpoint(endpoint);
    let server = servers.get(key);
    if (server === undefined) {
      server = {
        endpoint,
        key,
        staticIndex,
        lossPpm: 0,
        listening: true,
        announcedAtMs: undefined,
        consecutiveTimeouts: 0,
        srttMs: undefined,
        rttvarMs: 0,
      };
      servers.set(key, server);
    }
    return server;
  }

  /** Servers best first: answering ones, then listening, then lowest loss, then configuration order. */
  const ranked = (): Server[] =>
    [...servers.values()].sort(
      (a, b) =>
        Math.min(a.consecutiveTimeouts, 3) - Math.min(b.consecutiveTimeouts, 3) ||
        Number(b.listening) - Number(a.listening) ||
        a.lossPpm - b.lossPpm ||
        a.staticIndex - b.staticIndex,
    );

  /** RFC 6298-style timeout from the measured round trip. */
  const timeoutFor = (server: Server, attempts: number): number => {
    const base = server.srttMs === undefined ? nackTimeoutMsInitial : 2 * server.srttMs + 4 * server.rttvarMs;
    const backoff = 2 ** Math.min(Math.floor(attempts / Math.max(1, servers.size)), 4);
    return Math.min(nackTimeoutMsMax, Math.max(nackTimeoutMsMin, base) * backoff);
  };

  const markDue = (entry: Missing) => {
    entry.timer = undefined;
    due.add(entry);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flushNacks);
    }
  };

  const addMissing = (sequence: number) => {
    if (missing.has(sequence) || hold.has(sequence)) {
      return;
    }
    counters.gaps++;
    const entry: Missing = {
      sequence,
      firstMs: performance.now(),
      attempts: 0,
      tried: new Set(),
      server: undefined,
      sentAtMs: 0,
      timer: undefined,
      unrecoverable: false,
    };
    missing.set(sequence, entry);
    entry.timer = wheel.schedule(Math.random() * nackDelayMsMax, () => markDue(entry));
    if (settings.latencyMs !== undefined) {
      wheel.schedule(settings.latencyMs, emit);
    }
  };

  const giveUp = (entry: Missing) => {
    if (!entry.unrecoverable) {
      entry.unrecoverable = true;
      entry.timer?.cancel();
      due.delete(entry);
      counters.unrecoverable++;
    }
  };

  /**
   * A server answered that it does not hold a packet: ask the next one now. When every server has
   * said so, wait a backoff and start another round (a server may still be receiving it); give up
   * after nackAttemptsMax attempts.
   */
  const notHeld = (entry: Missing, server: Server) => {
    entry.timer?.cancel();
    entry.timer = undefined;
    entry.tried.add(server.key);
    entry.attempts++;
    if (entry.attempts >= nackAttemptsMax) {
      giveUp(entry);
      return;
    }
    if (entry.tried.size >= servers.size) {
      // Often the servers have simply not read the packet yet (their data and control sockets
      // race): ask again soon, then back off — 5 ms, 10 ms, 20 ms … up to the timeout.
      entry.tried.clear();
      entry.server = undefined;
      const retryMs = Math.min(
        timeoutFor(server, entry.attempts),
        notHeldRetryMsInitial * 2 ** (entry.attempts - 1),
      );
      entry.timer = wheel.schedule(retryMs, () => markDue(entry));
      return;
    }
    markDue(entry);
  };

  const onTimeout = (entry: Missing) => {
    entry.timer = undefined;
    counters.timeouts++;
    if (entry.server !== undefined) {
      entry.server.consecutiveTimeouts++;
      entry.tried.add(entry.server.key);
    }
    entry.attempts++;
    if (entry.attempts >= nackAttemptsMax) {
      giveUp(entry);
      emit();
      return;
    }
    markDue(entry);
  };

  /** Sends one NACK per server for every due gap, in ranges. */
  function flushNacks(): void {
    flushScheduled = false;
    if (sessionId === undefined) {
      due.clear();
      return;
    }
    const order = ranked();
    const byServer = new Map<Server, number[]>();
    for (const entry of due) {
      if (entry.unrecoverable || !missing.has(entry.sequence)) {
        continue;
      }
      let server = order.find((candidate) => !entry.tried.has(candidate.key));
      if (server === undefined && order.length > 0) {
        entry.tried.clear(); // every server was asked: start another round, with backoff
        server = order[0];
      }
      if (server === undefined) {
        entry.server = undefined;
        entry.timer = wheel.schedule(nackTimeoutMsInitial, () => onTimeout(entry));
        continue;
      }
      entry.server = server;
      const list = byServer.get(server) ?? [];
      list.push(entry.sequence);
      byServer.set(server, list);
    }
    due.clear();
    const now = performance.now();
    for (const [server, sequences] of byServer) {
      sequences.sort((a, b) => sequenceDistance(base, a) - sequenceDistance(base, b));
      for (const ranges of toRanges(sequences)) {
        const nack = sealer.seal(
          encodeNack(
            { sessionId: sessionId ?? 0, sequence: ranges[0]?.start ?? 0, timestampUs: nowUs() },
            { ranges },
          ),
        );
        control.send(nack, server.endpoint.port, server.endpoint.address);
        counters.nacksSent++;
      }
      for (const sequence of sequences) {
        const entry = missing.get(sequence);
        if (entry !== undefined) {
          counters.nackedPackets++;
          entry.sentAtMs = now;
          entry.timer = wheel.schedule(timeoutFor(server, entry.attempts), () => onTimeout(entry));
        }
      }
    }
  }

  /** Accepts a DATA datagram of the locked session, from S1 or from a REPAIR. */
  const acceptData = (datagram: Buffer, sequence: number, repaired: boolean) => {
    const distance = sequenceDistance(base, sequence);
    if (distance < 0 || hold.has(sequence)) {
      counters.duplicates++;
      return;
    }
    if (distance >= repairHoldPacketsMax) {
      drop('beyond-hold-window');
      return;
    }
    const entry = missing.get(sequence);
    if (entry !== undefined) {
      entry.timer?.cancel();
      due.delete(entry);
      missing.delete(sequence);
      if (entry.unrecoverable) {
        counters.unrecoverable--; // it came after all
      }
      counters.recovered++;
      counters.recoveredBytes += datagram.length;
      if (repaired && entry.server !== undefined) {
        const server = entry.server;
        server.consecutiveTimeouts = 0;
        const sample = performance.now() - entry.sentAtMs;
        if (server.srttMs === undefined) {
          server.srttMs = sample;
          server.rttvarMs = sample / 2;
        } else {
          server.rttvarMs = 0.75 * server.rttvarMs + 0.25 * Math.abs(server.srttMs - sample);
          server.srttMs = 0.875 * server.srttMs + 0.125 * sample;
        }
      }
    }
    // Every repaired packet, and one in 16 direct ones (their median is the reference).
    if (repaired || directSeen++ % 16 === 0) {
      recordDelay(datagram, repaired);
    }
    hold.set(sequence, datagram);
    extendTo(sequence, true);
    emit();
  };

  /**
   * Everything up to sequence exists: what has not arrived is a gap. arrived says whether
   * sequence itself is in hand (a DATA packet) or only known to exist (HEARTBEAT, END).
   */
  const extendTo = (sequence: number, arrived: boolean) => {
    if (sequenceDistance(highest, sequence) > repairHoldPacketsMax) {
      drop('beyond-hold-window');
      return;
    }
    while (sequenceDistance(highest, sequence) > 0) {
      highest = sequenceAdd(highest, 1);
      if (highest !== sequence || !arrived) {
        addMissing(highest);
      }
    }
  };

  /** Re-emits in order on S2 what is there; passes gaps only when given up. */
  function emit(): void {
    if (sessionId === undefined) {
      return;
    }
    const now = performance.now();
    for (;;) {
      if (endSequence !== undefined && base === endSequence) {
        finishSession();
        return;
      }
      const datagram = hold.get(base);
      if (datagram !== undefined) {
        hold.delete(base);
        emitter.send(datagram, datagram.length);
        counters.emitted++;
        base = sequenceAdd(base, 1);
        continue;
      }
      const entry = missing.get(base);
      const overBudget =
        entry !== undefined && settings.latencyMs !== undefined && now - entry.firstMs >= settings.latencyMs;
      const overHold = entry !== undefined && hold.size >= repairHoldPacketsMax;
      if (entry !== undefined && (entry.unrecoverable || overBudget || overHold)) {
        giveUp(entry);
        missing.delete(base);
        base = sequenceAdd(base, 1);
        continue;
      }
      return;
    }
  }

  const finishSession = () => {
    if (endDatagram !== undefined) {
      const end = endDatagram;
      for (let i = 0; i < endRepeatCount; i++) {
        setTimeout(() => emitter.send(end, end.length), i * endRepeatIntervalMs).unref();
      }
    }
    counters.sessionsCompleted++;
    for (const entry of missing.values()) {
      entry.timer?.cancel();
    }
    missing.clear();
    hold.clear();
    due.clear();
    sessionId = undefined;
    endDatagram = undefined;
    endSequence = undefined;
  };

  const startSession = (datagram: Buffer) => {
    const descriptor = decodeDescriptor(datagram);
    if (!descriptor.ok) {
      drop(`descriptor-${descriptor.reason}`);
      return;
    }
    const d = descriptor.value;
    sessionId = d.sessionId;
    live = d.kind !== SessionKind.file;
    base = live ? d.sequence : d.firstSequence;
    const held = pending.splice(0).filter((p) => p.readUInt32BE(8) === d.sessionId);
    if (live) {
      for (const p of held) {
        const sequence = p.readUInt32BE(12);
        if (sequenceDistance(base, sequence) < 0) {
          base = sequence;
        }
      }
    }
    highest = sequenceAdd(base, -1 >>> 0);
    for (const p of held) {
      acceptData(p, p.readUInt32BE(12), false);
    }
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
      if (sessionId === undefined) {
        if (pending.length < pendingPacketsMax) {
          pending.push(datagram);
        }
        return;
      }
      if (decoded.value.sessionId !== sessionId) {
        drop('other-session');
        return;
      }
      acceptData(datagram, decoded.value.sequence, false);
      return;
    }
    const header = decodeHeader(datagram);
    if (!header.ok) {
      drop(`s1-${header.reason}`);
      return;
    }
    if (header.value.type === PacketType.descriptor) {
      if (sessionId === undefined) {
        startSession(datagram);
      }
      if (header.value.sessionId === sessionId) {
        emitter.send(datagram, datagram.length);
      }
      return;
    }
    if (header.value.sessionId !== sessionId || sessionId === undefined) {
      return;
    }
    if (header.value.type === PacketType.heartbeat) {
      extendTo(sequenceAdd(header.value.sequence, -1 >>> 0), false);
      emitter.send(datagram, datagram.length);
      emit();
    } else if (header.value.type === PacketType.end && endSequence === undefined) {
      endSequence = header.value.sequence;
      endDatagram = datagram;
      extendTo(sequenceAdd(header.value.sequence, -1 >>> 0), false);
      emit();
    }
  };

  const onRepair = (datagram: Buffer) => {
    const repair = acceptControl(datagram, decodeRepair, verifier, 'repair', drop);
    if (repair === undefined) {
      return;
    }
    if (repair.sessionId !== sessionId) {
      drop('repair-other-session');
      return;
    }
    if (repair.data === undefined) {
      counters.notHeldReceived++;
      for (let i = 0; i < repair.notHeldCount; i++) {
        const entry = missing.get(sequenceAdd(repair.sequence, i));
        if (entry?.server !== undefined && !entry.unrecoverable && entry.timer !== undefined) {
          notHeld(entry, entry.server);
        }
      }
      emit();
      return;
    }
    counters.repairsReceived++;
    const original = datagram.subarray(headerBytes + 4, datagram.length - authTrailerBytes);
    acceptData(original, repair.sequence, true);
  };

  const onAnnounce = (datagram: Buffer) => {
    const announce = acceptControl(datagram, decodeAnnounce, verifier, 'announce', drop);
    if (announce === undefined) {
      return;
    }
    const family = announce.address.includes(':') ? 6 : 4;
    if (family !== settings.listen.family) {
      return;
    }
    const server = addServer(
      { address: announce.address, port: announce.port, family },
      Number.MAX_SAFE_INTEGER,
    );
    server.announcedAtMs = performance.now();
    const session = announce.sessions.find((s) => s.sessionId === sessionId) ?? announce.sessions[0];
    if (session !== undefined) {
      server.lossPpm = session.lossPpm;
      server.listening = session.state === ListenState.listening;
    }
  };

  const onControl = (datagram: Buffer) => {
    const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
    if (type === PacketType.repair) {
      onRepair(datagram);
    } else if (type === PacketType.announce) {
      onAnnounce(datagram);
    } else {
      drop('unexpected-type');
    }
  };

  // A failed start closes every socket it opened before it throws.
  const opened: Array<{ close(): unknown }> = [];
  const open = async <T extends { close(): unknown }>(socket: Promise<T>): Promise<T> => {
    const value = await socket;
    opened.push(value);
    return value;
  };
  let control: ControlSocket;
  let emitter: SenderSocket;
  let s1: ReceiverSocket;
  let announceSocket: ReceiverSocket | undefined;
  let repairGroupSocket: ReceiverSocket | undefined;
  try {
    control = await open(openControlSocket(settings.listen, onControl));
    emitter = await open(
      openSenderSocket({
        group: settings.emit,
        iface: settings.emitIface ?? settings.iface,
        ttl: settings.ttl,
      }),
    );
    s1 = await open(
      (components.openS1Socket ?? openReceiverSocket)(
        { group: settings.group, iface: settings.iface, source: settings.source },
        onS1,
      ),
    );
    announceSocket =
      settings.announceGroup === undefined
        ? undefined
        : await open(openReceiverSocket({ group: settings.announceGroup, iface: settings.iface }, onControl));
    repairGroupSocket =
      settings.repairGroup === undefined
        ? undefined
        : await open(openReceiverSocket({ group: settings.repairGroup, iface: settings.iface }, onControl));
  } catch (error) {
    for (const socket of opened) {
      await Promise.resolve(socket.close()).catch(() => undefined);
    }
    wheel.close();
    throw error;
  }

  const status = (): RepairStatus => ({
    role: 'repair',
    listen: formatEndpoint(control.local),
    emit: formatEndpoint(settings.emit),
    mode: settings.latencyMs === undefined ? 'reliable' : `latency ${settings.latencyMs} ms`,
    sessionId,
    ...counters,
    controlBytesSent: control.bytesSent,
    repairExtraDelayMs: extraDelay(),
    holding: hold.size,
    missingNow: missing.size,
    dropped: { ...dropped },
    servers: ranked().map((server) => ({
      address: server.key,
      lossPercent: server.lossPpm / 10_000,
      listening: server.listening,
      timeouts: server.consecutiveTimeouts,
      rttMs: server.srttMs === undefined ? undefined : Math.round(server.srttMs * 100) / 100,
    })),
  });

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
      wheel.close();
      await s1.close();
      await announceSocket?.close();
      await repairGroupSocket?.close();
      await control.close();
      await emitter.close();
    })();
    return closed;
  };
  return { local: control.local, status, close, [Symbol.asyncDispose]: close };
}

/** The q-quantile (0-1) of samples, nearest rank. */
function percentile(samples: readonly number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
}

/** Sorted sequences into NACK-sized lists of ranges. */
function toRanges(sequences: readonly number[]): SequenceRange[][] {
  const all: SequenceRange[] = [];
  let start: number | undefined;
  let count = 0;
  for (const sequence of sequences) {
    if (start !== undefined && sequence === sequenceAdd(start, count) && count < nackRangePacketsMax) {
      count++;
      continue;
    }
    if (start !== undefined) {
      all.push({ start, count });
    }
    start = sequence;
    count = 1;
  }
  if (start !== undefined) {
    all.push({ start, count });
  }
  const lists: SequenceRange[][] = [];
  for (let i = 0; i < all.length; i += nackRangesMax) {
    lists.push(all.slice(i, i + nackRangesMax));
  }
  return lists;
}
