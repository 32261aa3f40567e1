/**
 * The plain receiver: joins a group, locks on the session its DESCRIPTOR names, puts DATA back in
 * order, writes the payload, and tells the truth about loss: it reports every missing packet and
 * checks the file's SHA-256 (docs/protocol.md, "Receiver behaviour").
 */
import { createHash } from 'node:crypto';
import type { ReceiverProtection } from '../crypto/restricted-session.js';
import type { SignedSessionGate } from '../crypto/signed-session.js';
import {
  endGraceMsDefault,
  pendingBytesMax,
  pendingPacketsMax,
  pendingRunsMax,
  progressAheadPacketsMax,
  receiveTimeoutMsDefault,
  reorderBytesMax,
  reorderPacketsMax,
  resyncPacketsMin,
  resyncQuietMs,
} from '../limits.js';
import type { Endpoint } from '../net/address.js';
import { OwnedTimers, type Runtime, systemRuntime } from '../net/runtime.js';
import type { ReceiverSocket, ReceiverSocketOptions } from '../net/udp.js';
import type { DecodeErrorReason } from '../protocol/errors.js';
import {
  type DataPacket,
  type DescriptorPacket,
  decodePacket,
  type EndPacket,
  offsetType,
  PacketType,
  SessionKind,
} from '../protocol/packet.js';
import { sequenceDistance } from '../protocol/serial.js';
import {
  endContradiction,
  filePackets,
  isClaimPastFileEnd,
  isJustAfter,
  isPastFileEnd,
  isWrongFileLength,
  PendingRuns,
  SessionWindow,
} from '../protocol/session-window.js';

/** Where the payload goes, in order. */
export interface PayloadSink {
  /** Takes a payload; the buffer is not reused by the receiver, so a sink may keep it. */
  write(payload: Buffer): void;
  /** Writes out what write() gathered; called once per turn of the event loop. */
  flush?(): void;
  close(): Promise<void>;
}

/** Settings of a receiver. */
export interface ReceiverSettings {
  readonly group: Endpoint;
  readonly iface?: string | undefined;
  readonly source?: string | undefined;
  /** Give up after this long without a packet of the session. */
  readonly timeoutMs?: number | undefined;
  readonly receiveBufferBytes?: number | undefined;
  /** How long to wait after END for reordered packets before declaring the rest missing. */
  readonly endGraceMs?: number | undefined;
}

/** Parts a receiver is built from. */
export interface ReceiverComponents {
  readonly sink: PayloadSink;
  readonly openSocket?: (
    options: ReceiverSocketOptions,
    onDatagram: (datagram: Buffer) => void,
  ) => Promise<ReceiverSocket>;
  /** Clock, transport and randomness (default: the system's). */
  readonly runtime?: Runtime | undefined;
  /**
   * A restricted session: every datagram goes through it first (src/crypto/restricted-session.ts);
   * only DATA it opened, and the plain control messages, reach the receiver.
   */
  readonly protection?: ReceiverProtection | undefined;
  /**
   * A signed session: every datagram is authenticated against the source key first
   * (src/crypto/signed-session.ts); only what it vouches for reaches the protection and the receiver.
   */
  readonly signed?: SignedSessionGate | undefined;
}

/** Why a receive ended. */
export type ReceiveOutcome = 'complete' | 'incomplete' | 'hash-mismatch' | 'timeout' | 'aborted';

/** What a receiver saw. */
export interface ReceiveSummary {
  outcome: ReceiveOutcome;
  sessionId: number | undefined;
  /** The run locked on: DATA of any other incarnation is counted in otherSession. */
  incarnation: number | undefined;
  sessionName: string | undefined;
  kind: number | undefined;
  packetsReceived: number;
  packetsDelivered: number;
  bytesDelivered: number;
  packetsMissing: number;
  duplicates: number;
  /** Packets of other sessions or other runs of the locked session: never written. */
  otherSession: number;
  /** DATA dropped because a bound (bytes, packets, runs) was reached. */
  overLimit: number;
  /** DATA far beyond the window, set aside; and HEARTBEAT/END claims too far ahead, ignored. */
  beyondWindow: number;
  claimsTooFar: number;
  /** ENDs not believed: contradicted by the DESCRIPTOR's counts or size, or by DATA after them. */
  endsRevoked: number;
  /** Encrypted DATA (key epoch not 0) received without the means to open it: never written. */
  encryptedDropped: number;
  /** DATA of a file at or after the end its DESCRIPTOR's size puts: cannot exist, never written. */
  beyondFileEnd: number;
  /** DATA of a file whose length is not the one its DESCRIPTOR's size puts there: never written. */
  wrongFileLength: number;
  malformed: Partial<Record<DecodeErrorReason, number>>;
  expectedPackets: number | undefined;
  sha256: string | undefined;
  sha256Expected: string | undefined;
  elapsedMs: number;
}

/** Options of one run. */
export interface ReceiveRunOptions {
  readonly signal?: AbortSignal;
  readonly onJoined?: (socket: ReceiverSocket) => void;
}

/** A built receiver. */
export interface Receiver extends AsyncDisposable {
  readonly summary: Readonly<ReceiveSummary>;
  /** Receives one session; onJoined is called once the group is joined. */
  run(options?: ReceiveRunOptions): Promise<ReceiveSummary>;
  close(): Promise<void>;
}

/** Builds a receiver. */
export function createReceiver(settings: ReceiverSettings, components: ReceiverComponents): Receiver {
  const { sink } = components;
  const runtime = components.runtime ?? systemRuntime;
  const clock = runtime.clock;
  const timers = new OwnedTimers(clock);
  const timeoutMs = settings.timeoutMs ?? receiveTimeoutMsDefault;
  const endGraceMs = settings.endGraceMs ?? endGraceMsDefault;
  const summary: ReceiveSummary = {
    outcome: 'incomplete',
    sessionId: undefined,
    incarnation: undefined,
    sessionName: undefined,
    kind: undefined,
    packetsReceived: 0,
    packetsDelivered: 0,
    bytesDelivered: 0,
    packetsMissing: 0,
    duplicates: 0,
    otherSession: 0,
    overLimit: 0,
    beyondWindow: 0,
    claimsTooFar: 0,
    endsRevoked: 0,
    encryptedDropped: 0,
    beyondFileEnd: 0,
    wrongFileLength: 0,
    malformed: {},
    expectedPackets: undefined,
    sha256: undefined,
    sha256Expected: undefined,
    elapsedMs: 0,
  };
  const hash = createHash('sha256');
  /** DATA that arrived before the descriptor named the run, kept per run. */
  const pending = new PendingRuns({
    packetsMax: pendingPacketsMax,
    bytesMax: pendingBytesMax,
    runsMax: pendingRunsMax,
  });
  let descriptor: DescriptorPacket | undefined;
  let window: SessionWindow | undefined;
  let endSequence: number | undefined;
  let endTimer: { cancel(): void } | undefined;
  let lastPacketAtMs = clock.nowMs();
  let socket: ReceiverSocket | undefined;
  let finish: ((outcome: ReceiveOutcome) => void) | undefined;
  let closed: Promise<void> | undefined;

  let flushScheduled = false;
  const flush = () => {
    flushScheduled = false;
    sink.flush?.();
  };
  const deliver = (payload: Buffer) => {
    sink.write(payload);
    if (!flushScheduled && sink.flush !== undefined) {
      flushScheduled = true;
      timers.defer(flush);
    }
    hash.update(payload);
    summary.packetsDelivered++;
    summary.bytesDelivered += payload.length;
  };
  const missed = () => {
    summary.packetsMissing++;
  };

  /** Delivers every packet in order from the delivery point on that is present. */
  const drain = () => {
    if (window === undefined) {
      return;
    }
    for (let payload = window.take(); payload !== undefined; payload = window.take()) {
      deliver(payload);
    }
  };

  /** The window is full (packets or bytes): the oldest gap will not be filled; count it and go on. */
  const passOldestGap = () => {
    if (window === undefined) {
      return;
    }
    if (!window.has(window.base)) {
      missed();
      window.skip();
    }
    drain();
  };

  const acceptData = (packet: DataPacket) => {
    if (window === undefined) {
      if (!pending.hold(packet.sessionId, packet.incarnation, packet.sequence, Buffer.from(packet.payload))) {
        summary.overLimit++;
      }
      return;
    }
    if (descriptor !== undefined && isPastFileEnd(descriptor, packet.sequence)) {
      summary.beyondFileEnd++;
      return;
    }
    if (descriptor !== undefined && isWrongFileLength(descriptor, packet.sequence, packet.payload.length)) {
      summary.wrongFileLength++;
      return;
    }
    // Fast path: the next packet in order with nothing held back goes straight out.
    if (
      packet.sequence === window.base &&
      window.heldCount === 0 &&
      endSequence === undefined &&
      window.end === window.base
    ) {
      window.offer(packet.sequence, packet.payload);
      drain();
      return;
    }
    if (endSequence !== undefined && isJustAfter(endSequence, packet.sequence)) {
      // DATA at or just after END's sequence: the END was not the run's end (a forgery): take it
      // back. A stray packet far away proves nothing and is left to the window.
      endSequence = undefined;
      endTimer?.cancel();
      summary.endsRevoked++;
    }
    let result = window.offer(packet.sequence, packet.payload, clock.nowMs());
    // Bounded: each pass moves the delivery point on by one; the window holds at most its bytes.
    for (let passes = 0; result === 'over-bytes' && passes < reorderPacketsMax; passes++) {
      passOldestGap();
      result = window.offer(packet.sequence, packet.payload, clock.nowMs());
    }
    switch (result) {
      case 'held':
        drain();
        return;
      case 'old':
      case 'duplicate':
        summary.duplicates++;
        return;
      case 'beyond':
        summary.beyondWindow++;
        return;
      case 'resync':
        summary.beyondWindow++;
        summary.packetsMissing += window.resync(deliver, missed);
        drain();
        return;
      case 'over-bytes':
        summary.overLimit++;
        return;
    }
  };

  const acceptDescriptor = (packet: DescriptorPacket) => {
    descriptor = packet;
    // The run is fixed from here and later DESCRIPTORs change nothing: the gate drops them and
    // their control signatures (about 20 a second) unverified.
    components.signed?.ignoreControl(PacketType.descriptor);
    summary.sessionId = packet.sessionId;
    summary.incarnation = packet.incarnation;
    summary.sessionName = packet.name;
    summary.kind = packet.kind;
    summary.sha256Expected = packet.sha256?.toString('hex');
    const heldBefore = pending.packetCount;
    const held = pending.take(packet.sessionId, packet.incarnation)?.data ?? new Map<number, Buffer>();
    // DATA of other sessions or runs held while no DESCRIPTOR had come: never written, but counted.
    summary.otherSession += heldBefore - held.size;
    // A file counts from its first packet; a live stream from what this receiver can still get.
    let start = packet.kind === SessionKind.file ? packet.firstSequence : packet.sequence;
    if (packet.kind !== SessionKind.file) {
      for (const sequence of held.keys()) {
        const distance = sequenceDistance(start, sequence);
        if (distance < 0 && distance > -reorderPacketsMax) {
          start = sequence;
        }
      }
    }
    window = new SessionWindow(start, {
      packetsMax: reorderPacketsMax,
      bytesMax: reorderBytesMax,
      progressAheadPacketsMax,
      resyncPacketsMin,
      resyncQuietMs,
    });
    for (const [sequence, payload] of held) {
      acceptData({ ...packet, type: PacketType.data, sequence, payload });
    }
    window.claim(packet.sequence);
    drain();
  };

  const claim = (next: number) => {
    if (descriptor !== undefined && isClaimPastFileEnd(descriptor, next)) {
      summary.claimsTooFar++;
      return;
    }
    if (window?.claim(next) === 'too-far') {
      summary.claimsTooFar++;
    }
  };

  const acceptEnd = (packet: EndPacket) => {
    if (endSequence !== undefined || window === undefined || descriptor === undefined) {
      return;
    }
    if (endContradiction(descriptor, packet) !== undefined) {
      summary.endsRevoked++;
      return;
    }
    if (!window.endAt(packet.sequence)) {
      summary.claimsTooFar++; // further ahead than the limits allow, or behind DATA received: not believed
      return;
    }
    endSequence = packet.sequence;
    if (descriptor?.kind === SessionKind.file) {
      summary.expectedPackets = packet.packetCount;
    }
    drain();
    // The run is over once the grace has passed with no DATA contradicting the END.
    endTimer = timers.setTimeout(() => finish?.('incomplete'), endGraceMs);
  };

  const onDatagram = (datagram: Buffer) => {
    if (components.signed !== undefined) {
      components.signed.filter(datagram, onAuthenticated);
      return;
    }
    onAuthenticated(datagram);
  };

  const onAuthenticated = (datagram: Buffer) => {
    if (components.protection !== undefined) {
      components.protection.filter(datagram, onPlainDatagram, onMalformedData);
      return;
    }
    onPlainDatagram(datagram);
  };

  /** A DATA the protection found malformed before opening it: counted as the codec would. */
  const onMalformedData = (reason: DecodeErrorReason) => {
    summary.malformed[reason] = (summary.malformed[reason] ?? 0) + 1;
  };

  const onPlainDatagram = (datagram: Buffer) => {
    if (
      datagram[offsetType] === PacketType.signature ||
      datagram[offsetType] === PacketType.key ||
      datagram[offsetType] === PacketType.rekey
    ) {
      return; // a signed or restricted run's own messages: for the gate and the token, not the payload
    }
    const decoded = decodePacket(datagram);
    if (!decoded.ok) {
      summary.malformed[decoded.reason] = (summary.malformed[decoded.reason] ?? 0) + 1;
      return;
    }
    const packet = decoded.value;
    if (packet.type === PacketType.data && packet.keyEpoch !== 0 && components.protection === undefined) {
      summary.encryptedDropped++; // a restricted session: ciphertext is never written as payload
      return;
    }
    if (descriptor === undefined && packet.type === PacketType.descriptor) {
      acceptDescriptor(packet);
    }
    if (
      descriptor !== undefined &&
      (packet.sessionId !== descriptor.sessionId || packet.incarnation !== descriptor.incarnation)
    ) {
      summary.otherSession++;
      return;
    }
    if (packet.type === PacketType.data) {
      summary.packetsReceived++;
      if (descriptor !== undefined) {
        lastPacketAtMs = clock.nowMs();
      }
      acceptData(packet);
    } else if (packet.type === PacketType.end) {
      acceptEnd(packet);
    } else if (packet.type === PacketType.heartbeat && window !== undefined) {
      lastPacketAtMs = clock.nowMs();
      claim(packet.sequence);
    }
  };

  /** Settles the tail after END or a timeout: what is still missing is counted, the rest written. */
  const settle = () => {
    window?.drainToEnd(deliver, missed);
  };

  async function run(options: ReceiveRunOptions = {}): Promise<ReceiveSummary> {
    const startedAtMs = clock.nowMs();
    const openSocket = components.openSocket ?? runtime.transport.openReceiver;
    socket = await openSocket(
      {
        group: settings.group,
        iface: settings.iface,
        source: settings.source,
        receiveBufferBytes: settings.receiveBufferBytes,
      },
      onDatagram,
    );
    lastPacketAtMs = clock.nowMs();
    options.onJoined?.(socket);
    let watchdog: { cancel(): void } | undefined;
    let outcome = await new Promise<ReceiveOutcome>((resolve) => {
      finish = resolve;
      watchdog = timers.setInterval(
        () => {
          if (clock.nowMs() - lastPacketAtMs > timeoutMs) {
            resolve('timeout');
          }
        },
        Math.min(250, timeoutMs),
      );
      options.signal?.addEventListener('abort', () => resolve('aborted'), { once: true });
    });
    watchdog?.cancel();
    finish = undefined;
    await socket.close();
    settle();
    flush();
    summary.sha256 = hash.digest('hex');
    // A file's packets never delivered are missing, whether a gap was passed over, held behind
    // one that never filled, or never shown by any DATA, HEARTBEAT or END (the tail): a run that
    // stopped behind a stalled gap does not say "0 packets missing". The count is the one the
    // DESCRIPTOR's size gives (the size the run was locked on, which every DATA, HEARTBEAT and END
    // is held to), else the sequences up to an END the window accepted; never an END's packet
    // count, which nothing checks beyond 32 bits (a forged one must not turn a whole file into
    // billions of packets missing).
    const sizePackets = descriptor === undefined ? undefined : filePackets(descriptor);
    const filePacketCount =
      descriptor === undefined || descriptor.kind !== SessionKind.file
        ? undefined
        : (sizePackets ??
          (endSequence === undefined ? undefined : sequenceDistance(descriptor.firstSequence, endSequence)));
    if (outcome !== 'complete' && filePacketCount !== undefined) {
      summary.packetsMissing = Math.max(summary.packetsMissing, filePacketCount - summary.packetsDelivered);
    }
    // Every packet of a file of known size delivered and its SHA-256 the DESCRIPTOR's: the file is
    // whole, even when every copy of its END was lost and the run ended by --timeout.
    if (
      outcome === 'timeout' &&
      sizePackets === summary.packetsDelivered &&
      summary.packetsMissing === 0 &&
      summary.sha256Expected !== undefined &&
      summary.sha256 === summary.sha256Expected
    ) {
      outcome = 'complete';
    }
    if (outcome === 'complete' && summary.packetsMissing > 0) {
      outcome = 'incomplete';
    }
    if (outcome === 'incomplete' && summary.packetsMissing === 0 && endSequence !== undefined) {
      outcome = 'complete';
    }
    if (
      outcome === 'complete' &&
      summary.sha256Expected !== undefined &&
      summary.sha256 !== summary.sha256Expected
    ) {
      outcome = 'hash-mismatch';
    }
    summary.outcome = outcome;
    summary.elapsedMs = clock.nowMs() - startedAtMs;
    await close();
    return { ...summary, malformed: { ...summary.malformed } };
  }

  async function close(): Promise<void> {
    closed ??= (async () => {
      timers.close();
      await socket?.close();
      await sink.close();
    })();
    return closed;
  }

  return { summary, run, close, [Symbol.asyncDispose]: close };
}
