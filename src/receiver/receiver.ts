/**
 * The plain receiver: joins a group, locks on the session its DESCRIPTOR names, puts DATA back in
 * order, writes the payload, and tells the truth about loss: it reports every missing packet and
 * checks the file's SHA-256 (docs/protocol.md, "Receiver behaviour").
 */
import { createHash } from 'node:crypto';
import {
  endGraceMsDefault,
  pendingPacketsMax,
  receiveTimeoutMsDefault,
  reorderPacketsMax,
} from '../limits.js';
import type { Endpoint } from '../net/address.js';
import { openReceiverSocket, type ReceiverSocket, type ReceiverSocketOptions } from '../net/udp.js';
import type { DecodeErrorReason } from '../protocol/errors.js';
import {
  type DataPacket,
  type DescriptorPacket,
  decodePacket,
  type EndPacket,
  PacketType,
  SessionKind,
} from '../protocol/packet.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';

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
}

/** Why a receive ended. */
export type ReceiveOutcome = 'complete' | 'incomplete' | 'hash-mismatch' | 'timeout' | 'aborted';

/** What a receiver saw. */
export interface ReceiveSummary {
  outcome: ReceiveOutcome;
  sessionId: number | undefined;
  sessionName: string | undefined;
  kind: number | undefined;
  packetsReceived: number;
  packetsDelivered: number;
  bytesDelivered: number;
  packetsMissing: number;
  duplicates: number;
  otherSession: number;
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
  const timeoutMs = settings.timeoutMs ?? receiveTimeoutMsDefault;
  const endGraceMs = settings.endGraceMs ?? endGraceMsDefault;
  const summary: ReceiveSummary = {
    outcome: 'incomplete',
    sessionId: undefined,
    sessionName: undefined,
    kind: undefined,
    packetsReceived: 0,
    packetsDelivered: 0,
    bytesDelivered: 0,
    packetsMissing: 0,
    duplicates: 0,
    otherSession: 0,
    malformed: {},
    expectedPackets: undefined,
    sha256: undefined,
    sha256Expected: undefined,
    elapsedMs: 0,
  };
  const hash = createHash('sha256');
  const reorder = new Map<number, Buffer>();
  /** DATA that arrived before the descriptor told where the session starts. */
  const pending = new Map<number, Buffer>();
  let descriptor: DescriptorPacket | undefined;
  let nextSequence: number | undefined;
  let endSequence: number | undefined;
  /** The next sequence the source had not yet sent, as its latest HEARTBEAT said. */
  let heartbeatSequence: number | undefined;
  let lastPacketAtMs = performance.now();
  let socket: ReceiverSocket | undefined;
  let finish: ((outcome: ReceiveOutcome) => void) | undefined;
  let endTimer: NodeJS.Timeout | undefined;
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
      setImmediate(flush);
    }
    hash.update(payload);
    summary.packetsDelivered++;
    summary.bytesDelivered += payload.length;
  };

  /** Delivers every packet in order from nextSequence on that is present. */
  const drain = () => {
    if (nextSequence === undefined) {
      return;
    }
    let payload = reorder.get(nextSequence);
    while (payload !== undefined) {
      reorder.delete(nextSequence);
      deliver(payload);
      nextSequence = sequenceAdd(nextSequence, 1);
      payload = reorder.get(nextSequence);
    }
    if (endSequence !== undefined && nextSequence === endSequence) {
      finish?.('complete');
    }
  };

  /** Declares the packet at nextSequence lost and moves past it. */
  const skipOne = () => {
    if (nextSequence !== undefined) {
      summary.packetsMissing++;
      nextSequence = sequenceAdd(nextSequence, 1);
    }
  };

  const acceptData = (packet: DataPacket) => {
    if (nextSequence === undefined) {
      if (pending.size < pendingPacketsMax) {
        pending.set(packet.sequence, Buffer.from(packet.payload));
      }
      return;
    }
    // Fast path: the next packet in order with nothing held back goes straight out.
    if (packet.sequence === nextSequence && reorder.size === 0 && endSequence === undefined) {
      deliver(packet.payload);
      nextSequence = sequenceAdd(nextSequence, 1);
      return;
    }
    const distance = sequenceDistance(nextSequence, packet.sequence);
    if (distance < 0 || reorder.has(packet.sequence)) {
      summary.duplicates++;
      return;
    }
    if (endSequence !== undefined && sequenceDistance(packet.sequence, endSequence) <= 0) {
      summary.duplicates++;
      return;
    }
    reorder.set(packet.sequence, packet.payload);
    // A gap older than the reorder window will not be filled: count it and move on.
    while (sequenceDistance(nextSequence, packet.sequence) >= reorderPacketsMax) {
      if (!reorder.has(nextSequence)) {
        skipOne();
      }
      drain();
    }
    drain();
  };

  const acceptDescriptor = (packet: DescriptorPacket) => {
    if (descriptor !== undefined) {
      return;
    }
    descriptor = packet;
    summary.sessionId = packet.sessionId;
    summary.sessionName = packet.name;
    summary.kind = packet.kind;
    summary.sha256Expected = packet.sha256?.toString('hex');
    // A file counts from its first packet; a live stream from what this receiver can still get.
    let start = packet.kind === SessionKind.file ? packet.firstSequence : packet.sequence;
    for (const sequence of pending.keys()) {
      if (packet.kind !== SessionKind.file && sequenceDistance(start, sequence) < 0) {
        start = sequence;
      }
    }
    nextSequence = start;
    for (const [sequence, payload] of pending) {
      if (sequenceDistance(start, sequence) >= 0) {
        reorder.set(sequence, payload);
      }
    }
    pending.clear();
    drain();
  };

  const acceptEnd = (packet: EndPacket) => {
    if (endSequence !== undefined) {
      return;
    }
    endSequence = packet.sequence;
    if (descriptor?.kind === SessionKind.file) {
      summary.expectedPackets = packet.packetCount;
    }
    drain();
    endTimer = setTimeout(() => finish?.('incomplete'), endGraceMs);
  };

  const onDatagram = (datagram: Buffer) => {
    const decoded = decodePacket(datagram);
    if (!decoded.ok) {
      summary.malformed[decoded.reason] = (summary.malformed[decoded.reason] ?? 0) + 1;
      return;
    }
    const packet = decoded.value;
    if (descriptor === undefined && packet.type === PacketType.descriptor) {
      acceptDescriptor(packet);
    }
    if (summary.sessionId !== undefined && packet.sessionId !== summary.sessionId) {
      summary.otherSession++;
      return;
    }
    lastPacketAtMs = performance.now();
    if (packet.type === PacketType.data) {
      summary.packetsReceived++;
      acceptData(packet);
    } else if (packet.type === PacketType.end && descriptor !== undefined) {
      acceptEnd(packet);
    } else if (packet.type === PacketType.heartbeat) {
      if (heartbeatSequence === undefined || sequenceDistance(heartbeatSequence, packet.sequence) > 0) {
        heartbeatSequence = packet.sequence;
      }
    }
  };

  /** Settles the tail after END or a timeout: what is still missing is counted, the rest written. */
  const settle = () => {
    const last = endSequence ?? heartbeatSequence;
    if (nextSequence === undefined || last === undefined) {
      return;
    }
    while (sequenceDistance(nextSequence, last) > 0) {
      if (!reorder.has(nextSequence)) {
        skipOne();
      }
      drain();
    }
  };

  async function run(options: ReceiveRunOptions = {}): Promise<ReceiveSummary> {
    const startedAtMs = performance.now();
    socket = await (components.openSocket ?? openReceiverSocket)(
      {
        group: settings.group,
        iface: settings.iface,
        source: settings.source,
        receiveBufferBytes: settings.receiveBufferBytes,
      },
      onDatagram,
    );
    lastPacketAtMs = performance.now();
    options.onJoined?.(socket);
    let watchdog: NodeJS.Timeout | undefined;
    let outcome = await new Promise<ReceiveOutcome>((resolve) => {
      finish = resolve;
      watchdog = setInterval(
        () => {
          if (performance.now() - lastPacketAtMs > timeoutMs) {
            resolve('timeout');
          }
        },
        Math.min(250, timeoutMs),
      );
      options.signal?.addEventListener('abort', () => resolve('aborted'), { once: true });
    });
    clearInterval(watchdog);
    finish = undefined;
    clearTimeout(endTimer);
    await socket.close();
    settle();
    flush();
    summary.sha256 = hash.digest('hex');
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
    summary.elapsedMs = performance.now() - startedAtMs;
    await close();
    return { ...summary, malformed: { ...summary.malformed } };
  }

  async function close(): Promise<void> {
    closed ??= (async () => {
      clearTimeout(endTimer);
      await socket?.close();
      await sink.close();
    })();
    return closed;
  }

  return { summary, run, close, [Symbol.asyncDispose]: close };
}
