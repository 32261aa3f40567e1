/**
 * The source role: packetizes an input into DATA packets, paces them to a rate in bit/s, repeats
 * the session DESCRIPTOR for late joiners, sends HEARTBEATs carrying the next sequence (so that
 * tail loss is visible) and ends with END (docs/protocol.md, "Source behaviour").
 */

import { KeyEpochsExhausted } from '../crypto/errors.js';
import type { SenderProtection } from '../crypto/restricted-session.js';
import {
  descriptorIntervalMs,
  endRepeatCount,
  endRepeatIntervalMs,
  heartbeatIntervalMs,
  protectedControlIntervalMs,
  sendBatchPacketsMax,
  sendRingPacketsMax,
  startDelayMsDefault,
} from '../limits.js';
import type { Endpoint } from '../net/address.js';
import { type RoleClock, type Runtime, systemRuntime, type Timer } from '../net/runtime.js';
import type { SenderSocket, SenderSocketOptions } from '../net/udp.js';
import {
  encodeDescriptor,
  encodeProgress,
  type HeaderFields,
  headerBytes,
  offsetType,
  PacketType,
  writeHeaderFields,
} from '../protocol/packet.js';
import { SignatureKind } from '../protocol/restricted.js';
import { sequenceAdd } from '../protocol/serial.js';
import { dataPayloadBytesMax } from '../protocol/sizes.js';
import { AdaptiveRate, type AdaptiveRateStats } from './adaptive-rate.js';
import { SourceSettingsError } from './errors.js';
import { inputEnded, inputNotReady, type PayloadInput } from './inputs.js';
import {
  type LastResort,
  type LastResortSettings,
  type LastResortStats,
  startLastResort,
} from './last-resort.js';

/** Settings of a source. */
export interface SourceSettings {
  readonly group: Endpoint;
  readonly iface?: string | undefined;
  readonly ttl?: number | undefined;
  /** Pacing rate counted on whole datagrams (header and payload); 0 sends as fast as possible. */
  readonly rateBitsPerSecond: number;
  /** At most dataPayloadBytesMax (src/protocol/sizes.ts): every DATA packet must fit a REPAIR. */
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
  /**
   * Keep the run in a bounded buffer and answer authenticated NACKs as the retransmit server of
   * last resort (`send --retransmit-listen`); after END the source stays until no NACK has come
   * for quietMs, at most lingerMsMax.
   */
  readonly lastResort?:
    | (LastResortSettings & { readonly quietMs: number; readonly lingerMsMax: number })
    | undefined;
  /**
   * Pace below rateBitsPerSecond (the ceiling) when the repair servers' FEEDBACK, which arrives at
   * the last-resort endpoint, says the edge does not keep up; never below the floor
   * (`send --adapt-rate`, src/source/adaptive-rate.ts). Needs lastResort and a rate.
   */
  readonly adaptRate?: { readonly floorBitsPerSecond: number } | undefined;
}

/** Parts a source is built from; tests can hand in their own. */
export interface SourceComponents {
  readonly input: PayloadInput;
  readonly openSocket?: (options: SenderSocketOptions) => Promise<SenderSocket>;
  /** Clock, transport and randomness (default: the system's). */
  readonly runtime?: Runtime | undefined;
  /**
   * Told about every datagram that did not leave (EPERM from a local firewall, ENETUNREACH, ...);
   * the source counts them in its stats and goes on.
   */
  readonly onSendError?: (error: Error) => void;
  /**
   * A restricted or signed session: builds the run's protection once its identity is drawn
   * (src/crypto/restricted-session.ts). DATA is sealed before it is sent, and KEY messages and the
   * signed offer go out with every DESCRIPTOR, every protectedControlIntervalMs; a signed run's
   * HEARTBEAT, END and DESCRIPTOR each follow their control signature.
   */
  readonly protection?: (run: { sessionId: number; incarnation: number }) => SenderProtection;
}

/** Counters of a running or finished source. */
export interface SourceStats {
  sessionId: number;
  incarnation: number;
  firstSequence: number;
  /** DATA packets handed to the socket (see sendErrors for those that did not leave). */
  packetsSent: number;
  /** DATA packets with an empty payload (a relayed zero-length datagram; legal, and relayed). */
  packetsEmpty: number;
  payloadBytesSent: number;
  /**
   * What the paced stream put on the wire: each DATA datagram whole (a restricted run's with its
   * tag) and every manifest sent (with the DATA, over what was sent since the last one, and each
   * repeat); the rate (--rate) is counted on the same bytes. Control datagrams (DESCRIPTOR,
   * HEARTBEAT, END, KEY, the signed offer, control signatures) are not in it.
   */
  datagramBytesSent: number;
  /** Every datagram handed to the socket: DATA, DESCRIPTOR, HEARTBEAT and END. */
  datagramsAttempted: number;
  /** Datagrams that did not leave, of datagramsAttempted. */
  sendErrors: number;
  /** sendErrors by error code, e.g. { EPERM: 108 }. */
  sendErrorCodes: Record<string, number>;
  startedAtMs: number;
  /** From the first DATA packet to the last (start delay and END repeats not included). */
  elapsedMs: number;
  totalBytes: number | undefined;
  /** Input datagrams the input dropped (relay: queue full or too large). */
  inputDropped: number;
  /** Of inputDropped: datagrams larger than a packet's payload. */
  inputDroppedTooLarge: number;
  /** The retransmit server of last resort, when the source is one. */
  lastResort?: LastResortStats | undefined;
  /** The adaptive rate, when the source paces by its repair servers' FEEDBACK. */
  adaptiveRate?: AdaptiveRateStats | undefined;
}

/** A built source; run() sends the whole session. */
export interface Source extends AsyncDisposable {
  readonly stats: Readonly<SourceStats>;
  /**
   * Sends the session to its end (or until the signal aborts, which still sends END). Rejects
   * with the error that stopped it (a socket that cannot be opened, a bug); the input and the
   * socket are closed either way.
   */
  run(options?: { signal?: AbortSignal }): Promise<SourceStats>;
  /** Stops a run at once (no END), clears every timer, closes the input and the socket. */
  close(): Promise<void>;
}

/**
 * The timers of one owner: close() clears every one of them, and a pending sleep then resolves at
 * once, so that nothing fires after the owner closed.
 */
class SourceTimers {
  readonly #clock: RoleClock;
  readonly #sleeps = new Map<Timer, () => void>();
  readonly #intervals = new Set<Timer>();
  #closed = false;

  constructor(clock: RoleClock) {
    this.#clock = clock;
  }

  /** Resolves after ms, or at once when the owner closes or the signal aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (this.#closed || signal?.aborted === true) {
        resolve();
        return;
      }
      const onAbort = () => {
        timer.cancel();
        this.#sleeps.delete(timer);
        resolve();
      };
      const timer = this.#clock.setTimeout(() => {
        this.#sleeps.delete(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      this.#sleeps.set(timer, resolve);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Resolves after the current turn of the event loop (I/O first). */
  yield(): Promise<void> {
    return new Promise((resolve) => {
      this.#clock.defer(resolve);
    });
  }

  /** Calls callback every ms until cleared or closed. */
  every(ms: number, callback: () => void): Timer | undefined {
    if (this.#closed) {
      return undefined;
    }
    const timer = this.#clock.setInterval(callback, ms);
    this.#intervals.add(timer);
    return timer;
  }

  clear(timer: Timer | undefined): void {
    if (timer !== undefined) {
      timer.cancel();
      this.#intervals.delete(timer);
    }
  }

  close(): void {
    this.#closed = true;
    for (const timer of this.#intervals) {
      timer.cancel();
    }
    this.#intervals.clear();
    for (const [timer, resolve] of this.#sleeps) {
      timer.cancel();
      resolve();
    }
    this.#sleeps.clear();
  }
}

/** Checks what the wire cannot carry before anything is opened. */
function checkSettings(settings: SourceSettings, overheadBytes = 0): void {
  const bytes = settings.packetPayloadBytes;
  const maxBytes = dataPayloadBytesMax - overheadBytes;
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > maxBytes) {
    throw new SourceSettingsError(
      `packet payload of ${bytes} bytes: the maximum is ${maxBytes} (a REPAIR must carry the whole DATA packet${overheadBytes > 0 ? `, with the ${overheadBytes} bytes sealing adds` : ''})`,
    );
  }
  const adapt = settings.adaptRate;
  if (adapt !== undefined) {
    if (settings.lastResort === undefined) {
      throw new SourceSettingsError(
        'an adaptive rate needs the last-resort endpoint, where repair servers send FEEDBACK',
      );
    }
    if (settings.rateBitsPerSecond <= 0) {
      throw new SourceSettingsError('an adaptive rate needs a rate to adapt below (the ceiling)');
    }
    const floor = adapt.floorBitsPerSecond;
    if (!Number.isFinite(floor) || floor <= 0 || floor > settings.rateBitsPerSecond) {
      throw new SourceSettingsError(
        `rate floor of ${floor} bit/s: it must be above 0 and at most the rate (${settings.rateBitsPerSecond} bit/s)`,
      );
    }
  }
}

/** Builds a source. Throws SourceSettingsError for settings no packet could carry. */
export function createSource(settings: SourceSettings, components: SourceComponents): Source {
  const { input } = components;
  const runtime = components.runtime ?? systemRuntime;
  const { clock } = runtime;
  const sessionId = settings.sessionId ?? runtime.randomId();
  const firstSequence = settings.firstSequence ?? runtime.randomId();
  const incarnation = settings.incarnation ?? runtime.randomId();
  const protection = components.protection?.({ sessionId, incarnation });
  checkSettings(settings, protection?.overheadBytes);
  const slotBytes = headerBytes + settings.packetPayloadBytes;
  const ring = Array.from({ length: sendRingPacketsMax }, () => Buffer.allocUnsafe(slotBytes));
  // A protected run seals each packet into a slot of its own ring, reused like the plain one: a
  // slot is written again only once its datagram left (slotSends), and the last resort copies.
  const sealedRing =
    protection === undefined || protection.overheadBytes === 0
      ? undefined
      : Array.from({ length: sendRingPacketsMax }, () =>
          Buffer.allocUnsafe(slotBytes + protection.overheadBytes),
        );
  const stats: SourceStats = {
    sessionId,
    incarnation,
    firstSequence,
    packetsSent: 0,
    packetsEmpty: 0,
    payloadBytesSent: 0,
    datagramBytesSent: 0,
    datagramsAttempted: 0,
    sendErrors: 0,
    sendErrorCodes: {},
    startedAtMs: 0,
    elapsedMs: 0,
    totalBytes: input.totalBytes,
    inputDropped: 0,
    inputDroppedTooLarge: 0,
  };
  const timers = new SourceTimers(clock);
  /** Aborted by close() or by a failure: the run stops where it is. */
  const stopping = new AbortController();
  let failure: Error | undefined;
  /**
   * Set when the run's protection has no key epoch left (KeyEpochsExhausted): the pump stops, the
   * run still sends its last manifests and END, and run() then throws it.
   */
  let exhausted: KeyEpochsExhausted | undefined;
  /**
   * Aborted with `exhausted`: a pump waiting (for a stream's next payload, for its rate) stops at
   * once, since nothing more can be sealed; `stopping` stays as it is, so END still goes out.
   */
  const exhaustion = new AbortController();
  const endRun = (error: KeyEpochsExhausted) => {
    exhausted ??= error;
    exhaustion.abort();
  };
  let socket: SenderSocket | undefined;
  let lastResort: LastResort | undefined;
  const adaptive =
    settings.adaptRate === undefined
      ? undefined
      : new AdaptiveRate(
          {
            ceilingBitsPerSecond: settings.rateBitsPerSecond,
            floorBitsPerSecond: settings.adaptRate.floorBitsPerSecond,
          },
          clock.nowMs(),
        );
  let nextSequence = firstSequence;
  let inFlight = 0;
  // Datagrams of each ring slot the socket has not yet said are sent. A socket may complete sends
  // in any order (SenderSocket.send), so a count over all of them does not free a given slot: one
  // slow datagram holds its slot however many later ones completed.
  const slotSends = new Uint32Array(sendRingPacketsMax);
  let drained: (() => void) | undefined;
  let closed: Promise<void> | undefined;

  const fields = (): HeaderFields => ({
    sessionId,
    incarnation,
    sequence: nextSequence,
    timestampUs: clock.wallUs(),
  });
  const onSent = (error: Error | null) => {
    inFlight--;
    if (error) {
      stats.sendErrors++;
      const code = (error as NodeJS.ErrnoException).code ?? 'error';
      stats.sendErrorCodes[code] = (stats.sendErrorCodes[code] ?? 0) + 1;
      components.onSendError?.(error);
    }
    drained?.();
  };
  /** onSent for a datagram from a ring slot: the slot is free again once its count is back to 0. */
  const slotSent = Array.from({ length: sendRingPacketsMax }, (_, slot) => (error: Error | null) => {
    slotSends[slot] = (slotSends[slot] ?? 1) - 1;
    onSent(error);
  });
  const send = (datagram: Buffer, length: number, sent: (error: Error | null) => void = onSent) => {
    if (
      lastResort !== undefined &&
      datagram[offsetType] === PacketType.signature &&
      datagram[headerBytes] === SignatureKind.manifest
    ) {
      lastResort.keepManifest(datagram); // sent ahead of its packets to a requester that lost it
    }
    inFlight++;
    stats.datagramsAttempted++;
    (socket as SenderSocket).send(datagram, length, sent);
  };
  /**
   * Manifest bytes sent outside a burst (a manifest's repeats at the control ticks, the manifest
   * over what was sent since the last one, the last ones with END): they go on the wire with the
   * DATA they cover and grow with it, so the pacer pays them from its credit at its next turn.
   */
  let manifestBytesOwed = 0;
  /** Sends a datagram of the protection outside a burst; a manifest is counted with the DATA. */
  const sendOutsideBurst = (datagram: Buffer) => {
    if (datagram[offsetType] === PacketType.signature && datagram[headerBytes] === SignatureKind.manifest) {
      manifestBytesOwed += datagram.length;
      stats.datagramBytesSent += datagram.length;
    }
    send(datagram, datagram.length);
  };
  /** Sends a datagram read from ring slot `slot` (plain or sealed) and holds the slot until it left. */
  const sendFromSlot = (slot: number, datagram: Buffer, length: number) => {
    slotSends[slot] = (slotSends[slot] ?? 0) + 1;
    send(datagram, length, slotSent[slot]);
  };
  /** Stops the run with an error (it is thrown by run(), never left uncaught in a timer). */
  const fail = (error: unknown) => {
    failure ??= error instanceof Error ? error : new Error(String(error));
    stopping.abort();
  };
  /** Encodes and sends a control message; an encode error stops the run instead of escaping. */
  /**
   * Sends one control datagram (after its SIGNATURE in a signed run); `sent` is told of both, as
   * they went out.
   */
  const sendControl = (
    encode: () => Buffer,
    sent?: (datagram: Buffer, signature: Buffer | undefined) => void,
  ) => {
    if (socket === undefined || stopping.signal.aborted) {
      return;
    }
    let datagram: Buffer;
    let signature: Buffer | undefined;
    try {
      datagram = encode();
      // A signed run vouches for each control datagram just before it (docs/protocol.md, "Signed sessions").
      signature = protection?.signControl(datagram);
    } catch (error) {
      fail(error);
      return;
    }
    if (signature !== undefined) {
      send(signature, signature.length);
    }
    send(datagram, datagram.length);
    sent?.(datagram, signature);
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
  const progress = (type: typeof PacketType.heartbeat | typeof PacketType.end) => () =>
    encodeProgress(type, fields(), { packetCount: stats.packetsSent, byteCount: stats.payloadBytesSent });
  /** A restricted run's in-band KEY messages and signed offer, repeated with the DESCRIPTOR and HEARTBEAT. */
  const sendProtection = () => {
    if (protection === undefined || socket === undefined || stopping.signal.aborted) {
      return;
    }
    try {
      for (const datagram of protection.control(
        { sessionId, incarnation, sequence: nextSequence },
        clock.nowMs(),
        clock.wallUs(),
      )) {
        sendOutsideBurst(datagram);
      }
    } catch (error) {
      if (error instanceof KeyEpochsExhausted) {
        endRun(error); // the pump ends the run now, with END, even while it waits for input
        return;
      }
      fail(error);
    }
  };
  const sendDescriptor = () => {
    sendProtection();
    sendControl(descriptor);
  };
  // A descriptor that cannot be encoded (a name too long) is the caller's to fix, before any I/O.
  try {
    descriptor();
  } catch (error) {
    throw new SourceSettingsError(`cannot describe the session: ${(error as Error).message}`);
  }
  const waitForSlot = async (slot: number) => {
    while ((inFlight >= sendRingPacketsMax - 8 || (slotSends[slot] ?? 0) > 0) && !stopping.signal.aborted) {
      await new Promise<void>((resolve) => {
        drained = resolve;
      });
      drained = undefined;
    }
  };

  async function run(options: { signal?: AbortSignal } = {}): Promise<SourceStats> {
    try {
      socket = await (components.openSocket ?? runtime.transport.openSender)({
        group: settings.group,
        iface: settings.iface,
        ttl: settings.ttl,
      });
      if (settings.lastResort !== undefined) {
        lastResort = await startLastResort(
          adaptive === undefined
            ? settings.lastResort
            : // Repairs cross the same edge as DATA: they leave no faster than its FEEDBACK allows.
              { ...settings.lastResort, repairRateCapBitsPerSecond: () => adaptive.bitsPerSecond },
          { sessionId, incarnation },
          runtime,
          adaptive === undefined ? undefined : (id, report) => adaptive.report(id, report, clock.nowMs()),
        );
      }
      await sendSession(options.signal);
      // A run whose key epochs ran out still answers repairs of what it sent, then says so.
      await linger(options.signal);
      if (exhausted !== undefined) {
        throw exhausted;
      }
    } catch (error) {
      fail(error);
    } finally {
      stats.inputDropped = input.droppedCount;
      stats.inputDroppedTooLarge = input.droppedTooLargeCount ?? 0;
      stats.lastResort = lastResort?.stats();
      stats.adaptiveRate = adaptive?.stats();
      await close();
      // A socket that opened after close() was called (close() saw none) is closed here.
      await socket?.close();
      await lastResort?.close();
    }
    if (failure !== undefined) {
      throw failure;
    }
    return { ...stats, sendErrorCodes: { ...stats.sendErrorCodes } };
  }

  /** DESCRIPTORs through the start delay, DATA with HEARTBEATs, then END (repeated). */
  async function sendSession(signal: AbortSignal | undefined): Promise<void> {
    sendDescriptor();
    // The DESCRIPTOR (and a protected run's KEY messages, offer and pending manifest with it) is
    // repeated often: a late joiner needs all of them before its first packet (docs/benchmarks.md,
    // join to first decoded packet).
    const descriptorTimer = timers.every(
      protection === undefined ? descriptorIntervalMs : protectedControlIntervalMs,
      sendDescriptor,
    );
    const heartbeatTimer = timers.every(heartbeatIntervalMs, () => {
      // A manifest over what was sent since the last one goes first: a HEARTBEAT of a signed run
      // claims no sequence that no manifest vouches for.
      for (const manifest of protection?.flush(clock.wallUs()) ?? []) {
        sendOutsideBurst(manifest);
      }
      sendControl(progress(PacketType.heartbeat));
    });
    try {
      // Routers install forwarding state when a group's first packet arrives, and drop what comes
      // while they do; the descriptor opens the path before the first DATA packet.
      // Three copies of the descriptor during the start delay: a receiver or repair server that
      // loses the first one must not wait a whole repeat interval to lock on the session.
      const startDelayMs = settings.startDelayMs ?? startDelayMsDefault;
      for (let i = 1; i < 3 && startDelayMs > 0; i++) {
        await timers.sleep(startDelayMs / 3);
        sendDescriptor();
      }
      await timers.sleep(startDelayMs / 3);
      stats.startedAtMs = clock.nowMs();
      await pump(signal);
      stats.elapsedMs = clock.nowMs() - stats.startedAtMs;
    } finally {
      timers.clear(descriptorTimer);
      timers.clear(heartbeatTimer);
    }
    if (protection !== undefined && socket !== undefined) {
      for (const datagram of protection.finish(clock.wallUs())) {
        sendOutsideBurst(datagram);
      }
    }
    for (let i = 0; i < endRepeatCount && !stopping.signal.aborted; i++) {
      // A signed run's END is kept with its SIGNATURE: a repair server takes it only once
      // authenticated, so an END answered without it would be no END.
      sendControl(progress(PacketType.end), (end, signature) =>
        lastResort?.keepEnd(nextSequence, end, signature),
      );
      await timers.sleep(endRepeatIntervalMs);
    }
    // Every send calls back once (src/net/udp.ts), so this ends; close() ends it at once.
    while (inFlight > 0 && !stopping.signal.aborted) {
      await timers.sleep(1);
    }
  }

  /**
   * As the retransmit server of last resort, stays after END while repair servers still ask: until
   * no NACK has come for quietMs, at most lingerMsMax (docs/architecture.md, "Retransmit server of
   * last resort"). An abort ends it at once.
   */
  async function linger(signal: AbortSignal | undefined): Promise<void> {
    const options = settings.lastResort;
    if (lastResort === undefined || options === undefined) {
      return;
    }
    const startedMs = clock.nowMs();
    const stopped = anySignal([signal, stopping.signal]);
    while (!stopped.aborted) {
      const now = clock.nowMs();
      const quietUntil = Math.max(lastResort.lastNackAtMs(), startedMs) + options.quietMs;
      const until = Math.min(quietUntil, startedMs + options.lingerMsMax);
      if (now >= until) {
        return;
      }
      await timers.sleep(Math.min(until - now, 100));
    }
  }

  /**
   * The DATA packets of one burst, made ready before the first of them is sent: one record per
   * place in the burst, reused from burst to burst. The sequence of the packet at place i is the
   * burst's first sequence plus i.
   */
  const burst: BurstPacket[] = Array.from({ length: sendBatchPacketsMax }, () => ({
    slot: 0,
    datagram: undefined,
    length: 0,
    following: undefined,
    payloadBytes: 0,
    wireBytes: 0,
  }));

  /** Sends the `count` packets made ready in this burst, from `firstSequence` on, in order, back to back. */
  const sendBurst = (count: number, firstSequence: number) => {
    for (let index = 0; index < count; index++) {
      const packet = burst[index] as BurstPacket;
      const datagram = packet.datagram as Buffer;
      sendFromSlot(packet.slot, datagram, packet.length);
      const following = packet.following;
      if (following !== undefined) {
        for (let extra = 1; extra < following.length; extra++) {
          const manifest = following[extra] as Buffer;
          send(manifest, manifest.length);
        }
      }
      lastResort?.keep(sequenceAdd(firstSequence, index), datagram.subarray(0, packet.length));
      stats.packetsSent++;
      stats.packetsEmpty += packet.payloadBytes === 0 ? 1 : 0;
      stats.payloadBytesSent += packet.payloadBytes;
      stats.datagramBytesSent += packet.wireBytes;
      packet.datagram = undefined; // the slot's buffer is not held past its send
      packet.following = undefined;
    }
  };

  /**
   * The pacing loop: a token bucket in bytes, refilled from the clock. Each turn makes a burst
   * ready (every packet the credit, the ring and the input allow now, at most one batch): read,
   * headed and sealed, then sent back to back, so a receiver is woken once for the burst rather
   * than once for each packet that sealing spaced apart. With an adaptive rate, the bucket fills at
   * the rate it allows at each refill.
   */
  async function pump(signal: AbortSignal | undefined): Promise<void> {
    let bytesPerMs = settings.rateBitsPerSecond / 8000;
    let burstBytes = Math.max(slotBytes * 4, bytesPerMs * 5);
    let creditBytes = slotBytes;
    let refilledAtMs = clock.nowMs();
    let slot = 0;
    let batch = 0;
    const stopped = anySignal([signal, stopping.signal, exhaustion.signal]);
    const aborted = abortPromise(stopped);
    while (!stopped.aborted) {
      creditBytes -= bytesPerMs > 0 ? manifestBytesOwed : 0;
      manifestBytesOwed = 0;
      if (bytesPerMs > 0 && creditBytes < slotBytes) {
        const now = clock.nowMs();
        if (adaptive !== undefined) {
          adaptive.update(now);
          bytesPerMs = adaptive.bitsPerSecond / 8000;
          burstBytes = Math.max(slotBytes * 4, bytesPerMs * 5);
        }
        creditBytes = Math.min(burstBytes, creditBytes + (now - refilledAtMs) * bytesPerMs);
        refilledAtMs = now;
        if (creditBytes < slotBytes) {
          // A slow rate waits long for the next packet's turn: a stop must not wait with it.
          await timers.sleep(Math.max(1, Math.ceil((slotBytes - creditBytes) / bytesPerMs)), stopped);
          batch = 0;
          continue;
        }
      }
      await waitForSlot(slot);
      if (stopped.aborted) {
        return;
      }
      let count = 0;
      const firstSequence = nextSequence;
      let ended = false;
      let notReady = false;
      let outOfEpochs: KeyEpochsExhausted | undefined;
      // An input that cannot be read or a refused seal fails the run, once what was made ready
      // before it (read and numbered) has been sent and counted, as it was one packet at a time.
      let failed: { error: unknown } | undefined;
      // Nothing is awaited from here until the burst is sent: a stop cannot fall between.
      do {
        const buffer = ring[slot] as Buffer;
        let length: number;
        try {
          length = input.read(buffer.subarray(headerBytes));
        } catch (error) {
          failed = { error };
          break;
        }
        if (length === inputEnded) {
          ended = true;
          break;
        }
        if (length === inputNotReady) {
          notReady = true;
          break;
        }
        writeHeaderFields(
          buffer,
          PacketType.data,
          sessionId,
          nextSequence,
          clock.wallUs(),
          0,
          length,
          incarnation,
        );
        let datagram = buffer;
        let datagramLength = headerBytes + length;
        let following: Buffer[] | undefined;
        if (protection !== undefined) {
          let datagrams: Buffer[];
          try {
            datagrams = protection.seal(
              buffer.subarray(0, headerBytes + length),
              clock.nowMs(),
              clock.wallUs(),
              sealedRing?.[slot],
            );
          } catch (error) {
            if (error instanceof KeyEpochsExhausted) {
              outOfEpochs = error; // this payload is not sent: the run ends before it, with END
              break;
            }
            failed = { error };
            break;
          }
          // The first is the DATA, sealed into this slot of the sealed ring; a manifest may follow.
          datagram = datagrams[0] as Buffer;
          datagramLength = datagram.length;
          following = datagrams.length > 1 ? datagrams : undefined;
        }
        const packet = burst[count] as BurstPacket;
        packet.slot = slot;
        packet.datagram = datagram;
        packet.length = datagramLength;
        packet.following = following;
        packet.payloadBytes = length;
        // The rate is counted on what goes on the wire: the DATA whole (a restricted run's with its
        // tag) and the manifests sent with it.
        let wireBytes = datagramLength;
        if (following !== undefined) {
          for (let extra = 1; extra < following.length; extra++) {
            wireBytes += (following[extra] as Buffer).length;
          }
        }
        packet.wireBytes = wireBytes;
        count++;
        slot = (slot + 1) % sendRingPacketsMax;
        nextSequence = sequenceAdd(nextSequence, 1);
        creditBytes -= wireBytes;
      } while (
        batch + count < sendBatchPacketsMax &&
        (bytesPerMs <= 0 || creditBytes >= slotBytes) &&
        inFlight + count < sendRingPacketsMax - 8 &&
        (slotSends[slot] ?? 0) === 0
      );
      sendBurst(count, firstSequence);
      if (failed !== undefined) {
        throw failed.error;
      }
      if (ended) {
        return;
      }
      if (outOfEpochs !== undefined) {
        endRun(outOfEpochs);
        return;
      }
      if (notReady) {
        await Promise.race([input.waitReadable(), aborted]);
        batch = 0;
        continue;
      }
      batch += count;
      if (batch >= sendBatchPacketsMax) {
        batch = 0;
        await timers.yield();
      }
    }
  }

  async function close(): Promise<void> {
    closed ??= (async () => {
      stopping.abort();
      timers.close();
      drained?.();
      await input.close();
      await socket?.close();
      await lastResort?.close();
    })();
    return closed;
  }

  return { stats, run, close, [Symbol.asyncDispose]: close };
}

/** One DATA packet of a burst, made ready before the burst is sent (source `pump`). */
interface BurstPacket {
  /** Its slot in the ring (held until the datagram has left). */
  slot: number;
  /** The datagram as it goes on the wire: the slot itself, or its sealed twin; undefined once sent. */
  datagram: Buffer | undefined;
  /** The datagram's length. */
  length: number;
  /** What the protection returned for it: the DATA, then the manifest it completed, if any. */
  following: Buffer[] | undefined;
  /** Its payload's length. */
  payloadBytes: number;
  /** The bytes it puts on the wire: the DATA as sent and the manifests that follow it. */
  wireBytes: number;
}

/** A signal that aborts when any of the given ones does. */
function anySignal(signals: ReadonlyArray<AbortSignal | undefined>): AbortSignal {
  return AbortSignal.any(signals.filter((signal): signal is AbortSignal => signal !== undefined));
}

/** A promise that resolves when the signal aborts. */
function abortPromise(signal: AbortSignal): Promise<void> {
  if (signal.aborted) {
    return Promise.resolve();
  }
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
