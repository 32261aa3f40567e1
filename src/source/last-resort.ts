/**
 * The source as the retransmit server of last resort (`send --retransmit-listen`, docs/architecture.md,
 * "Retransmit server of last resort"): the source keeps what it sent in a bounded buffer, announces
 * itself to repair servers (and retransmit servers, which fetch from it) with the state lastResort,
 * so they ask it after every listening retransmit server, and answers authenticated NACKs by the
 * same rules as a retransmit server (src/net/nack-answerer.ts). A file's delivery then never
 * depends on one server having heard everything.
 */
import { ControlChannel, type ControlKey } from '../crypto/control-auth.js';
import { announceIntervalMsDefault, announceSessionsMax } from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { type NackAnswerCounters, NackAnswerer } from '../net/nack-answerer.js';
import { OwnedTimers, type Runtime } from '../net/runtime.js';
import type { ControlSocket, SenderSocket } from '../net/udp.js';
import {
  decodeFeedback,
  decodeNack,
  encodeAnnounce,
  type FeedbackBody,
  ListenState,
  type PeerEndpoint,
} from '../protocol/control.js';
import { headerBytes, offsetSequence, offsetType, PacketType } from '../protocol/packet.js';
import { SequenceRing, sequenceRingSpanMax } from '../protocol/sequence-ring.js';
import { sequenceAdd, sequenceDistance } from '../protocol/serial.js';

/** Settings of the last-resort answerer. */
export interface LastResortSettings {
  /** Where NACKs arrive. */
  readonly listen: Endpoint;
  /** The address announced for NACKs (default: the listen address, which must then not be a wildcard). */
  readonly announceAddress?: string | undefined;
  readonly keys: readonly ControlKey[];
  /** Bytes of DATA kept; the oldest go first. */
  readonly bufferBytesMax: number;
  readonly repairRateBitsPerSecond: number;
  /**
   * A ceiling on the repair rate that follows the edge: the adaptive rate, which the repair
   * servers' FEEDBACK sets (docs/architecture.md, "Pacing repairs").
   */
  readonly repairRateCapBitsPerSecond?: (() => number) | undefined;
  /** Repair (and retransmit) servers to announce to by unicast. */
  readonly announceTo: readonly Endpoint[];
  /** Announce by multicast on this group too. */
  readonly announceGroup?: Endpoint | undefined;
  readonly iface?: string | undefined;
  readonly periodMs?: number | undefined;
}

/** Counters of the last-resort answerer. */
export interface LastResortStats extends NackAnswerCounters {
  listen: string;
  heldPackets: number;
  heldBytes: number;
  evicted: number;
  /** Sequences a manifest is kept for: at most those held, and the last manifest's not yet sent. */
  manifestSequences: number;
  /** FEEDBACK of this run taken from repair servers (authenticated), for the adaptive rate. */
  feedbackReceived: number;
  dropped: Record<string, number>;
}

/** A running last-resort answerer of one session run. */
export interface LastResort {
  /** Keeps a copy of a DATA datagram just sent (the source reuses its buffers). */
  keep(sequence: number, datagram: Buffer): void;
  /**
   * A signed run: keeps a manifest just sent (repeats are ignored), sent ahead of the REPAIRs of
   * the packets it covers to a NACK with the signatures flag (docs/protocol.md, "REPAIR").
   */
  keepManifest(manifest: Buffer): void;
  /**
   * Keeps the run's END (the first copy sent), answered like a held packet to a NACK for its
   * sequence: a repair server that lost every copy of it at a lossy edge asks for it by its
   * sequence (a tail probe), and without it its run could only end as silent, incomplete. A
   * signed run's END comes with its SIGNATURE, answered to a NACK with the signatures flag.
   */
  keepEnd(sequence: number, datagram: Buffer, signature?: Buffer | undefined): void;
  /** Monotonic time of the last NACK accepted (or of the start). */
  lastNackAtMs(): number;
  stats(): LastResortStats;
  close(): Promise<void>;
}

/**
 * Told of every authenticated FEEDBACK of the run (docs/protocol.md, "FEEDBACK"): the repair
 * server's sender id and what it reported.
 */
export type FeedbackListener = (reporterId: number, report: FeedbackBody) => void;

/** Starts answering NACKs for one run of a source (and taking its repair servers' FEEDBACK). */
export async function startLastResort(
  settings: LastResortSettings,
  run: { sessionId: number; incarnation: number },
  runtime: Runtime,
  onFeedback?: FeedbackListener,
): Promise<LastResort> {
  const { clock, transport } = runtime;
  const timers = new OwnedTimers(clock);
  /**
   * The DATA kept, by sequence. The run's DATA come in sequence order and leave oldest first, so
   * the oldest is `first`: rings, not Maps. A Map used so was walked from its front over the slots
   * of every packet deleted since its table was last rebuilt, for every packet once the buffer was
   * full (3.5 µs a packet at 256 MB), and rebuilt its table in V8's old generation (SequenceRing).
   */
  const held = new SequenceRing<Buffer>(sequenceRingSpanMax);
  /** The run's END, once sent (never evicted: one datagram). */
  let end: { sequence: number; datagram: Buffer; signature: Buffer | undefined } | undefined;
  /** A signed run: the manifest covering each held sequence (one copy shared by its sequences). */
  const manifestOf = new SequenceRing<Buffer>(sequenceRingSpanMax);
  let heldBytes = 0;
  let evicted = 0;
  let feedbackReceived = 0;
  let first: number | undefined;
  let last: number | undefined;
  let lastNackAtMs = clock.nowMs();
  const dropped: Record<string, number> = {};
  const drop = (reason: string) => {
    dropped[reason] = (dropped[reason] ?? 0) + 1;
  };
  const announced = (): PeerEndpoint => ({
    address: settings.announceAddress ?? control.local.address,
    port: control.local.port,
  });
  const channel = new ControlChannel(settings.keys, {
    clock,
    senderId: runtime.randomId(),
    self: () => [announced(), control.local],
  });
  const sendTo = (datagram: Buffer, to: PeerEndpoint) => control.send(datagram, to.port, to.address);
  const answerer = new NackAnswerer({
    clock,
    timers,
    channel,
    sockets: { sendTo },
    repairRateBitsPerSecond: settings.repairRateBitsPerSecond,
    repairRateCapBitsPerSecond: settings.repairRateCapBitsPerSecond,
    lookup: (sessionId, incarnation, sequence) =>
      sessionId !== run.sessionId || incarnation !== run.incarnation
        ? undefined
        : (held.get(sequence) ?? (end?.sequence === sequence ? end.datagram : undefined)),
    signatureFor: (original) =>
      original === end?.datagram ? end.signature : manifestOf.get(original.readUInt32BE(offsetSequence)),
    drop,
  });
  const onControl = (datagram: Buffer, remote: PeerEndpoint) => {
    if (datagram.length > offsetType && datagram[offsetType] === PacketType.feedback) {
      const feedback = channel.accept(datagram, remote, decodeFeedback, 'feedback', drop);
      if (feedback === undefined) {
        return;
      }
      if (feedback.sessionId !== run.sessionId || feedback.incarnation !== run.incarnation) {
        drop('feedback-other-run'); // another run's edge says nothing of this one
        return;
      }
      feedbackReceived++;
      onFeedback?.(feedback.auth.senderId, feedback);
      return;
    }
    if (datagram.length <= offsetType || datagram[offsetType] !== PacketType.nack) {
      drop('unexpected-type'); // REPAIR, ANNOUNCE, QUALITY and SETUP are not for a source
      return;
    }
    const nack = channel.accept(datagram, remote, decodeNack, 'nack', drop);
    if (nack !== undefined) {
      lastNackAtMs = clock.nowMs();
      answerer.answer(nack, remote);
    }
  };
  const control: ControlSocket = await transport.openControl(settings.listen, onControl);
  let announceSender: SenderSocket | undefined;
  try {
    announceSender =
      settings.announceGroup === undefined
        ? undefined
        : await transport.openSender({ group: settings.announceGroup, iface: settings.iface });
  } catch (error) {
    await control.close();
    throw error;
  }

  /** ANNOUNCE of the run, state lastResort (docs/protocol.md, "ANNOUNCE"). */
  const announce = () => {
    const own = announced();
    const body = {
      address: own.address,
      port: own.port,
      sessions: [
        {
          sessionId: run.sessionId,
          incarnation: run.incarnation,
          firstHeld: first ?? 0,
          lastHeld: last ?? 0,
          heldCount: held.size,
          lossPpm: 0,
          state: ListenState.lastResort,
        },
      ].slice(0, announceSessionsMax),
    };
    const header = () => ({ sessionId: 0, sequence: 0, timestampUs: clock.wallUs() });
    for (const target of settings.announceTo) {
      sendTo(channel.seal(encodeAnnounce(header(), body), target), target);
    }
    if (announceSender !== undefined) {
      const datagram = channel.seal(encodeAnnounce(header(), body));
      announceSender.send(datagram, datagram.length);
    }
  };
  announce();
  timers.setInterval(announce, settings.periodMs ?? announceIntervalMsDefault);

  const keepManifest = (manifest: Buffer) => {
    const firstSequence = manifest.readUInt32BE(offsetSequence);
    const count = manifest[headerBytes + 1] ?? 0;
    if (manifestOf.get(firstSequence)?.equals(manifest) === true) {
      return; // a repeat
    }
    const copy = Buffer.from(manifest);
    // Kept for the sequences it covers that are held, or not kept yet (the last one comes just
    // after this call); each leaves manifestOf when it leaves the buffer. A repeat sent after its
    // packets left the buffer keeps nothing: they would never leave manifestOf.
    for (let index = 0; index < count; index++) {
      const sequence = sequenceAdd(firstSequence, index);
      if (held.has(sequence) || last === undefined || sequenceDistance(last, sequence) > 0) {
        manifestOf.set(sequence, copy);
      }
    }
  };

  const keep = (sequence: number, datagram: Buffer) => {
    if (held.has(sequence)) {
      return;
    }
    if (first !== undefined && sequenceDistance(first, sequence) < 0) {
      return; // older than the oldest kept: the buffer has moved past it
    }
    const copy = Buffer.from(datagram);
    held.set(sequence, copy);
    heldBytes += copy.length;
    first ??= sequence;
    if (last === undefined || sequenceDistance(last, sequence) > 0) {
      last = sequence;
    }
    // Oldest first, from `first` on; every sequence held is between first and last, so this ends.
    while (heldBytes > settings.bufferBytesMax && sequenceDistance(first, last) >= 0) {
      const oldest: number = first;
      const buffer = held.get(oldest);
      manifestOf.delete(oldest);
      first = sequenceAdd(oldest, 1);
      if (buffer !== undefined) {
        held.delete(oldest);
        heldBytes -= buffer.length;
        evicted++;
      }
    }
  };

  const keepEnd = (sequence: number, datagram: Buffer, signature?: Buffer | undefined) => {
    end ??= {
      sequence,
      datagram: Buffer.from(datagram),
      signature: signature === undefined ? undefined : Buffer.from(signature),
    };
  };

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      timers.close();
      answerer.close();
      await control.close();
      await announceSender?.close();
    })();
    return closed;
  };
  return {
    keep,
    keepManifest,
    keepEnd,
    // A method, not a getter: a getter in this literal would put the object, whose keep() is
    // called once a packet, in V8's dictionary mode (every call a generic property lookup).
    lastNackAtMs: () => lastNackAtMs,
    stats: () => ({
      listen: formatEndpoint(control.local),
      ...answerer.counters,
      heldPackets: held.size,
      heldBytes,
      evicted,
      manifestSequences: manifestOf.size,
      feedbackReceived,
      dropped: { ...dropped },
    }),
    close,
  };
}
