/**
 * The source role: packetizes an input into DATA packets, paces them to a rate in bit/s, repeats
 * the session DESCRIPTOR for late joiners, sends HEARTBEATs carrying the next sequence (so that
 * tail loss is visible) and ends with END (docs/protocol.md, "Source behaviour").
 */
import { randomInt } from 'node:crypto';
import {
  descriptorIntervalMs,
  endRepeatCount,
  endRepeatIntervalMs,
  heartbeatIntervalMs,
  sendBatchPacketsMax,
  sendRingPacketsMax,
  startDelayMsDefault,
} from '../limits.js';
import type { Endpoint } from '../net/address.js';
import { nowMicroseconds as nowUs } from '../net/clock.js';
import { openSenderSocket, type SenderSocket, type SenderSocketOptions } from '../net/udp.js';
import {
  encodeDescriptor,
  encodeProgress,
  type HeaderFields,
  headerBytes,
  PacketType,
  writeHeaderFields,
} from '../protocol/packet.js';
import { sequenceAdd } from '../protocol/serial.js';
import { inputEnded, inputNotReady, type PayloadInput } from './inputs.js';

/** Settings of a source. */
export interface SourceSettings {
  readonly group: Endpoint;
  readonly iface?: string | undefined;
  readonly ttl?: number | undefined;
  /** Pacing rate counted on whole datagrams (header and payload); 0 sends as fast as possible. */
  readonly rateBitsPerSecond: number;
  readonly packetPayloadBytes: number;
  readonly sessionName: string;
  /** Chosen at random when absent. */
  readonly sessionId?: number | undefined;
  /** Chosen at random when absent (RFC 3550 practice), so wrap-around is exercised in the field. */
  readonly firstSequence?: number | undefined;
  /**
   * The run's incarnation; drawn at random (never 0) when absent, so a restart under the same
   * session id is a different run (docs/protocol.md, "Session identity").
   */
  readonly incarnation?: number | undefined;
  /** Pause between the first DESCRIPTOR and the first DATA packet. */
  readonly startDelayMs?: number | undefined;
}

/** Parts a source is built from; tests can hand in their own. */
export interface SourceComponents {
  readonly input: PayloadInput;
  readonly openSocket?: (options: SenderSocketOptions) => Promise<SenderSocket>;
}

/** Counters of a running or finished source. */
export interface SourceStats {
  sessionId: number;
  incarnation: number;
  firstSequence: number;
  packetsSent: number;
  payloadBytesSent: number;
  datagramBytesSent: number;
  sendErrors: number;
  startedAtMs: number;
  /** From the first DATA packet to the last (start delay and END repeats not included). */
  elapsedMs: number;
  totalBytes: number | undefined;
  inputDropped: number;
}

/** A built source; run() sends the whole session. */
export interface Source extends AsyncDisposable {
  readonly stats: Readonly<SourceStats>;
  /** Sends the session to its end (or until the signal aborts, which still sends END). */
  run(options?: { signal?: AbortSignal }): Promise<SourceStats>;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Builds a source. */
export function createSource(settings: SourceSettings, components: SourceComponents): Source {
  const { input } = components;
  const sessionId = settings.sessionId ?? randomInt(1, 0xffff_ffff);
  const firstSequence = settings.firstSequence ?? randomInt(0, 0xffff_ffff);
  const incarnation = settings.incarnation ?? randomInt(1, 0xffff_ffff);
  const slotBytes = headerBytes + settings.packetPayloadBytes;
  const ring = Array.from({ length: sendRingPacketsMax }, () => Buffer.allocUnsafe(slotBytes));
  const stats: SourceStats = {
    sessionId,
    incarnation,
    firstSequence,
    packetsSent: 0,
    payloadBytesSent: 0,
    datagramBytesSent: 0,
    sendErrors: 0,
    startedAtMs: 0,
    elapsedMs: 0,
    totalBytes: input.totalBytes,
    inputDropped: 0,
  };
  let socket: SenderSocket | undefined;
  let nextSequence = firstSequence;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  let closed: Promise<void> | undefined;

  const fields = (): HeaderFields => ({
    sessionId,
    incarnation,
    sequence: nextSequence,
    timestampUs: nowUs(),
  });
  const onSent = (error: Error | null) => {
    inFlight--;
    if (error) {
      stats.sendErrors++;
    }
    drained?.();
  };
  const sendControl = (datagram: Buffer) => {
    inFlight++;
    socket?.send(datagram, datagram.length, onSent);
  };
  const descriptor = () =>
    encodeDescriptor(fields(), {
      firstSequence,
      packetPayloadBytes: settings.packetPayloadBytes,
      kind: input.kind,
      totalBytes: input.totalBytes,
      rateBitsPerSecond: settings.rateBitsPerSecond,
      sha256: input.sha256,
      name: settings.sessionName,
    });
  const progress = (type: typeof PacketType.heartbeat | typeof PacketType.end) =>
    encodeProgress(type, fields(), { packetCount: stats.packetsSent, byteCount: stats.payloadBytesSent });
  const waitForSlot = async () => {
    while (inFlight >= sendRingPacketsMax - 8) {
      await new Promise<void>((resolve) => {
        drained = resolve;
      });
      drained = undefined;
    }
  };

  async function run(options: { signal?: AbortSignal } = {}): Promise<SourceStats> {
    socket = await (components.openSocket ?? openSenderSocket)({
      group: settings.group,
      iface: settings.iface,
      ttl: settings.ttl,
    });
    sendControl(descriptor());
    const descriptorTimer = setInterval(() => sendControl(descriptor()), descriptorIntervalMs);
    const heartbeatTimer = setInterval(
      () => sendControl(progress(PacketType.heartbeat)),
      heartbeatIntervalMs,
    );
    try {
      // Routers install forwarding state when a group's first packet arrives, and drop what comes
      // while they do; the descriptor opens the path before the first DATA packet.
      // Three copies of the descriptor during the start delay: a receiver or repair server that
      // loses the first one must not wait a whole repeat interval to lock on the session.
      const startDelayMs = settings.startDelayMs ?? startDelayMsDefault;
      for (let i = 1; i < 3 && startDelayMs > 0; i++) {
        await sleep(startDelayMs / 3);
        sendControl(descriptor());
      }
      await sleep(startDelayMs / 3);
      stats.startedAtMs = performance.now();
      await pump(options.signal);
      stats.elapsedMs = performance.now() - stats.startedAtMs;
    } finally {
      clearInterval(descriptorTimer);
      clearInterval(heartbeatTimer);
    }
    for (let i = 0; i < endRepeatCount; i++) {
      sendControl(progress(PacketType.end));
      await sleep(endRepeatIntervalMs);
    }
    while (inFlight > 0) {
      await sleep(1);
    }
    stats.inputDropped = input.droppedCount;
    await close();
    return { ...stats };
  }

  /** The pacing loop: a token bucket in bytes, refilled from the clock, bursts of at most one batch. */
  async function pump(signal: AbortSignal | undefined): Promise<void> {
    const bytesPerMs = settings.rateBitsPerSecond / 8000;
    const burstBytes = Math.max(slotBytes * 4, bytesPerMs * 5);
    let creditBytes = slotBytes;
    let refilledAtMs = performance.now();
    let slot = 0;
    let batch = 0;
    const aborted = abortPromise(signal);
    while (signal?.aborted !== true) {
      if (bytesPerMs > 0 && creditBytes < slotBytes) {
        const now = performance.now();
        creditBytes = Math.min(burstBytes, creditBytes + (now - refilledAtMs) * bytesPerMs);
        refilledAtMs = now;
        if (creditBytes < slotBytes) {
          await sleep(Math.max(1, Math.ceil((slotBytes - creditBytes) / bytesPerMs)));
          batch = 0;
          continue;
        }
      }
      await waitForSlot();
      const buffer = ring[slot] as Buffer;
      const length = input.read(buffer.subarray(headerBytes));
      if (length === inputEnded) {
        return;
      }
      if (length === inputNotReady) {
        await Promise.race([input.waitReadable(), aborted]);
        batch = 0;
        continue;
      }
      writeHeaderFields(buffer, PacketType.data, sessionId, nextSequence, nowUs(), 0, length, incarnation);
      inFlight++;
      (socket as SenderSocket).send(buffer, headerBytes + length, onSent);
      slot = (slot + 1) % sendRingPacketsMax;
      nextSequence = sequenceAdd(nextSequence, 1);
      stats.packetsSent++;
      stats.payloadBytesSent += length;
      stats.datagramBytesSent += headerBytes + length;
      creditBytes -= headerBytes + length;
      if (++batch >= sendBatchPacketsMax) {
        batch = 0;
        await yieldToLoop();
      }
    }
  }

  async function close(): Promise<void> {
    closed ??= (async () => {
      await input.close();
      await socket?.close();
    })();
    return closed;
  }

  return { stats, run, close, [Symbol.asyncDispose]: close };
}

/** A promise that resolves when the signal aborts (never, without a signal). */
function abortPromise(signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) {
    return new Promise(() => undefined);
  }
  if (signal.aborted) {
    return Promise.resolve();
  }
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
