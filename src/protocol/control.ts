/**
 * Control messages of the repair service (docs/protocol.md, "Control messages"): NACK, REPAIR,
 * ANNOUNCE, QUALITY and SETUP. Each body ends with a 36-byte authentication trailer:
 *
 *   0                   1                   2                   3
 *   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                            key id                             |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                           sender id                           |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                target id (0: not known yet)                   |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |         counter (64 bits, a count per sender, from 1)         |
 *  |                                                               |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |        HMAC-SHA-256 over everything before it, first 16 bytes |
 *  |                              ...                              |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * These codecs frame and parse; src/crypto/control-auth.ts stamps, seals and checks them.
 */
import { announceSessionsMax, nackRangePacketsMax, nackRangesMax } from '../limits.js';
import { readAddress, writeAddress } from './address.js';
import { type DecodeResult, invalid, valid } from './errors.js';
import {
  type DataPacket,
  decodeData,
  decodeEnd,
  decodeHeaderOf,
  type EndPacket,
  type Header,
  type HeaderFields,
  headerBytes,
  offsetType,
  PacketType,
  type PacketTypeCode,
  writeHeader,
} from './packet.js';
import { decodeSignature, SignatureKind } from './restricted.js';
import { authTrailerBytes } from './sizes.js';

/** Trailer layout. */
export { authTrailerBytes };
export const authOffsetKeyId = 0;
export const authOffsetSenderId = 4;
export const authOffsetTargetId = 8;
export const authOffsetCounter = 12;
export const authOffsetTag = 20;
export const authTagBytes = 16;

/** The trailer's fields as sent. */
export interface AuthTrailer {
  readonly keyId: number;
  /** Random per sending process (docs/protocol.md, "Authentication trailer"). */
  readonly senderId: number;
  /** The receiving process's sender id, or 0 while the sender does not know it. */
  readonly targetId: number;
  /** Strictly increasing per sender id: a count, not a time. */
  readonly counter: number;
}

/** A unicast address and port inside a control message (a NACK's reply, a SETUP's target). */
export interface PeerEndpoint {
  readonly address: string;
  readonly port: number;
}

/** Bytes of an endpoint in a body: family u8, reserved u8, port u16, address[16]. */
const endpointBytes = 20;

function writeEndpoint(out: Buffer, offset: number, endpoint: PeerEndpoint): void {
  out[offset] = writeAddress(out, offset + 4, endpoint.address);
  out[offset + 1] = 0;
  out.writeUInt16BE(endpoint.port, offset + 2);
}

/**
 * Reads an endpoint that must name one host: a port, and an address that is neither unspecified
 * (all zero) nor multicast. Undefined when it does not. The caller checks the reserved byte.
 */
function readUnicastEndpoint(buf: Buffer, offset: number): PeerEndpoint | undefined {
  const family = buf[offset] ?? 0;
  const address = readAddress(buf, offset + 4, family);
  const port = buf.readUInt16BE(offset + 2);
  const first = buf[offset + 4] ?? 0;
  const unspecified = buf.subarray(offset + 4, offset + 20).every((byte) => byte === 0);
  const multicast = family === 4 ? first >= 224 && first < 240 : first === 0xff;
  if (address === undefined || port === 0 || unspecified || multicast) {
    return undefined;
  }
  return { address, port };
}

/** A decoded control message: header, its own fields, the trailer. */
export type Control<T> = Header & T & { readonly auth: AuthTrailer };

/** Allocates a control packet of the given body size with a zeroed trailer. */
function frame(type: PacketTypeCode, fields: HeaderFields, bodyBytes: number): Buffer {
  const out = Buffer.alloc(headerBytes + bodyBytes + authTrailerBytes);
  writeHeader(out, type, fields, bodyBytes + authTrailerBytes);
  return out;
}

/** Checks the header and type and splits off the trailer. */
function open(
  buf: Buffer,
  type: PacketTypeCode,
): DecodeResult<{ header: Header; body: Buffer; auth: AuthTrailer }> {
  const header = decodeHeaderOf(buf, type, String(type));
  if (!header.ok) {
    return header;
  }
  if (header.value.bodyLength < authTrailerBytes) {
    return invalid('truncated', 'control message without its authentication trailer');
  }
  const trailerAt = buf.length - authTrailerBytes;
  const high = buf.readUInt32BE(trailerAt + authOffsetCounter);
  if (high > 0x1f_ffff) {
    return invalid('bad-field', 'counter above 2^53');
  }
  return valid({
    header: header.value,
    body: buf.subarray(headerBytes, trailerAt),
    auth: {
      keyId: buf.readUInt32BE(trailerAt + authOffsetKeyId),
      senderId: buf.readUInt32BE(trailerAt + authOffsetSenderId),
      targetId: buf.readUInt32BE(trailerAt + authOffsetTargetId),
      counter: high * 0x1_0000_0000 + buf.readUInt32BE(trailerAt + authOffsetCounter + 4),
    },
  });
}

// ---------------------------------------------------------------------------------------------
// NACK: reply endpoint (family u8, reserved u8, port u16, address[16]), rangeCount u16,
// flags u16 (bit 0: peer fetch; bit 1: again; bit 2: signatures; the others reserved, zero), then per
// range: start u32, count u16, reserved u16.

/** NACK flag: sent by a retransmit server filling its own holes from a peer; never forwarded. */
export const nackFlagPeerFetch = 0x0001;

/**
 * NACK flag: every sequence named was asked for before by this requester (its NACK timed out or was
 * answered not held). Without it a NACK is a first request, which a retransmit server in
 * repair-group mode does not answer for a sequence it multicast lately (docs/protocol.md, "Repair
 * group: one multicast per lost packet").
 */
export const nackFlagAgain = 0x0002;

/**
 * NACK flag: a signed session's requester holds no verified manifest for some sequence it names, so
 * the answer sends what vouches for each held datagram ahead of its REPAIR — the manifest covering
 * a DATA sequence, the control signature of the run's END (docs/protocol.md, "REPAIR"). Without it
 * the answer carries the datagrams only.
 */
export const nackFlagSignatures = 0x0004;

/** A run of consecutive sequences. */
export interface SequenceRange {
  readonly start: number;
  readonly count: number;
}
export interface NackBody {
  /**
   * Where the requester takes REPAIRs: its own control address and port, under the tag. A
   * retransmit server answers only when the datagram came from exactly there (docs/protocol.md,
   * "NACK").
   */
  readonly replyTo: PeerEndpoint;
  readonly ranges: readonly SequenceRange[];
  /**
   * A retransmit server asks a peer for packets it missed (docs/protocol.md, "Peer fetch"): the
   * peer answers from its own buffer only and never fetches in turn. Absent: false.
   */
  readonly peerFetch?: boolean | undefined;
  /** Every sequence named was asked for before by this requester (nackFlagAgain). Absent: false. */
  readonly again?: boolean | undefined;
  /** The requester lacks what vouches for some sequences named (nackFlagSignatures). Absent: false. */
  readonly signatures?: boolean | undefined;
}
const nackFixedBytes = endpointBytes + 4;
const nackRangeBytes = 8;

/** Encodes a NACK (trailer to be sealed). */
export function encodeNack(fields: HeaderFields, body: NackBody): Buffer {
  const out = frame(PacketType.nack, fields, nackFixedBytes + body.ranges.length * nackRangeBytes);
  const b = out.subarray(headerBytes);
  writeEndpoint(b, 0, body.replyTo);
  b.writeUInt16BE(body.ranges.length, endpointBytes);
  const flags =
    (body.peerFetch === true ? nackFlagPeerFetch : 0) |
    (body.again === true ? nackFlagAgain : 0) |
    (body.signatures === true ? nackFlagSignatures : 0);
  b.writeUInt16BE(flags, endpointBytes + 2);
  body.ranges.forEach((range, i) => {
    b.writeUInt32BE(range.start >>> 0, nackFixedBytes + i * nackRangeBytes);
    b.writeUInt16BE(range.count, nackFixedBytes + i * nackRangeBytes + 4);
  });
  return out;
}

/** Decodes a NACK, checking its reply endpoint, range count and sizes against the limits. */
export function decodeNack(buf: Buffer): DecodeResult<Control<NackBody>> {
  const opened = open(buf, PacketType.nack);
  if (!opened.ok) {
    return opened;
  }
  const { body } = opened.value;
  if (body.length < nackFixedBytes) {
    return invalid('truncated', `NACK body shorter than ${nackFixedBytes} bytes`);
  }
  if (body[1] !== 0) {
    return invalid('reserved-not-zero', 'NACK reply endpoint reserved field');
  }
  const replyTo = readUnicastEndpoint(body, 0);
  if (replyTo === undefined) {
    return invalid('bad-field', 'NACK reply endpoint is not one unicast address and port');
  }
  const rangeCount = body.readUInt16BE(endpointBytes);
  const flags = body.readUInt16BE(endpointBytes + 2);
  if ((flags & ~(nackFlagPeerFetch | nackFlagAgain | nackFlagSignatures)) !== 0) {
    return invalid('reserved-not-zero', `NACK flags 0x${flags.toString(16)} are not defined`);
  }
  if (rangeCount === 0 || rangeCount > nackRangesMax) {
    return invalid('bad-field', `NACK range count ${rangeCount} is outside 1-${nackRangesMax}`);
  }
  if (body.length !== nackFixedBytes + rangeCount * nackRangeBytes) {
    return invalid(
      'length-mismatch',
      `NACK of ${rangeCount} ranges must have ${nackFixedBytes + rangeCount * nackRangeBytes} body bytes`,
    );
  }
  const ranges: SequenceRange[] = [];
  for (let i = 0; i < rangeCount; i++) {
    const at = nackFixedBytes + i * nackRangeBytes;
    const count = body.readUInt16BE(at + 4);
    if (count === 0 || count > nackRangePacketsMax) {
      return invalid('bad-field', `NACK range of ${count} packets is outside 1-${nackRangePacketsMax}`);
    }
    if (body.readUInt16BE(at + 6) !== 0) {
      return invalid('reserved-not-zero', 'NACK range reserved field');
    }
    ranges.push({ start: body.readUInt32BE(at), count });
  }
  const peerFetch = (flags & nackFlagPeerFetch) !== 0;
  const again = (flags & nackFlagAgain) !== 0;
  const signatures = (flags & nackFlagSignatures) !== 0;
  return valid({
    ...opened.value.header,
    replyTo,
    ranges,
    peerFetch,
    again,
    signatures,
    auth: opened.value.auth,
  });
}

// ---------------------------------------------------------------------------------------------
// REPAIR: status u8, reserved u8, count u16, then (status held) the original DATA datagram, the
// run's END datagram when the NACK named the END's sequence, or, for a NACK with the signatures
// flag, a signed run's SIGNATURE datagram vouching for one of those: a manifest (kind 1) or the
// END's control signature (kind 3).

export const RepairStatus = { held: 0, notHeld: 1 } as const;
export interface RepairBody {
  /** Held: the original DATA packet; not held, or an END: undefined. */
  readonly data: DataPacket | undefined;
  /**
   * Held END: the run's END datagram, asked for by its sequence (one past the run's last DATA) by a
   * repair server that lost it on S1 (docs/protocol.md, "REPAIR"); otherwise undefined.
   */
  readonly end?: EndPacket | undefined;
  /**
   * Held SIGNATURE: the source's datagram vouching for what a NACK with the signatures flag named
   * (docs/protocol.md, "REPAIR"): a manifest (kind 1) whose first sequence is the header's, or an
   * END's control signature (kind 3) under the END's sequence. Its signature is for the gate to
   * verify. Otherwise undefined.
   */
  readonly signature?: Buffer | undefined;
  /** Not held: how many consecutive sequences from the header's sequence are not held. */
  readonly notHeldCount: number;
}

/** Encodes a REPAIR carrying the original DATA datagram. */
export function encodeRepair(fields: HeaderFields, original: Buffer): Buffer {
  const out = frame(PacketType.repair, fields, 4 + original.length);
  out[headerBytes] = RepairStatus.held;
  out.writeUInt16BE(1, headerBytes + 2);
  original.copy(out, headerBytes + 4);
  return out;
}

/** Encodes a REPAIR saying the server does not hold count sequences from fields.sequence. */
export function encodeRepairNotHeld(fields: HeaderFields, count: number): Buffer {
  const out = frame(PacketType.repair, fields, 4);
  out[headerBytes] = RepairStatus.notHeld;
  out.writeUInt16BE(count, headerBytes + 2);
  return out;
}

/**
 * Decodes a REPAIR; a held one must carry a valid DATA or END packet (or a SIGNATURE) of the same
 * run (session id and incarnation) and sequence.
 */
export function decodeRepair(buf: Buffer): DecodeResult<Control<RepairBody>> {
  const opened = open(buf, PacketType.repair);
  if (!opened.ok) {
    return opened;
  }
  const { header, body, auth } = opened.value;
  if (body.length < 4) {
    return invalid('truncated', 'REPAIR body shorter than 4 bytes');
  }
  const status = body[0];
  const count = body.readUInt16BE(2);
  if (body[1] !== 0) {
    return invalid('reserved-not-zero', 'REPAIR reserved field');
  }
  if (status === RepairStatus.notHeld) {
    if (body.length !== 4 || count === 0) {
      return invalid('bad-field', 'a not-held REPAIR has a count and no data');
    }
    return valid({ ...header, data: undefined, notHeldCount: count, auth });
  }
  if (status !== RepairStatus.held || count !== 1) {
    return invalid('bad-field', `REPAIR status ${status} with count ${count}`);
  }
  if (body.length > 4 + offsetType && body[4 + offsetType] === PacketType.signature) {
    return decodeRepairedSignature(header, body.subarray(4), auth);
  }
  if (body.length > 4 + offsetType && body[4 + offsetType] === PacketType.end) {
    const end = decodeEnd(body.subarray(4));
    if (!end.ok) {
      return invalid(end.reason, `REPAIR carries a bad END packet: ${end.detail}`);
    }
    if (
      end.value.sessionId !== header.sessionId ||
      end.value.incarnation !== header.incarnation ||
      end.value.sequence !== header.sequence
    ) {
      return invalid('bad-field', 'REPAIR header and carried END disagree on run or sequence');
    }
    return valid({ ...header, data: undefined, end: end.value, notHeldCount: 0, auth });
  }
  const data = decodeData(body.subarray(4));
  if (!data.ok) {
    return invalid(data.reason, `REPAIR carries a bad DATA packet: ${data.detail}`);
  }
  if (
    data.value.sessionId !== header.sessionId ||
    data.value.incarnation !== header.incarnation ||
    data.value.sequence !== header.sequence
  ) {
    return invalid('bad-field', 'REPAIR header and carried DATA disagree on run or sequence');
  }
  return valid({ ...header, data: data.value, notHeldCount: 0, auth });
}

/**
 * A held REPAIR carrying a SIGNATURE datagram (checked as on S1: counts, sizes, reserved bytes): a
 * manifest, or the control signature of an END, whose session, incarnation and sequence are the
 * header's. The signature itself is the gate's to verify (src/crypto/signed-session.ts).
 */
function decodeRepairedSignature(
  header: Header,
  carried: Buffer,
  auth: AuthTrailer,
): DecodeResult<Control<RepairBody>> {
  const decoded = decodeSignature(carried);
  if (!decoded.ok) {
    return invalid(decoded.reason, `REPAIR carries a bad SIGNATURE: ${decoded.detail}`);
  }
  const message = decoded.value;
  const vouchesEnd = message.kind === SignatureKind.control && message.controlType === PacketType.end;
  if (message.kind !== SignatureKind.manifest && !vouchesEnd) {
    return invalid('bad-field', "a REPAIR carries only a manifest or an END's control signature");
  }
  const { sessionId, incarnation, sequence } = message;
  if (sessionId !== header.sessionId || incarnation !== header.incarnation || sequence !== header.sequence) {
    return invalid('bad-field', 'REPAIR header and carried SIGNATURE disagree on run or sequence');
  }
  return valid({ ...header, data: undefined, signature: carried, notHeldCount: 0, auth });
}

// ---------------------------------------------------------------------------------------------
// ANNOUNCE: family u8, reserved u8, port u16, address[16], session count u16, reserved u16,
// then per run (28 bytes): session id u32, incarnation u32, first held u32, last held u32,
// held count u32, loss ppm u32, state u8, reserved[3].

/**
 * Election state of a retransmit server for one session. A source that keeps its own session
 * (`send --retransmit-listen`) announces lastResort: repair servers ask it after every listening
 * retransmit server (docs/protocol.md, "ANNOUNCE"); it takes no part in the election.
 */
export const ListenState = { listening: 1, withdrawn: 2, lastResort: 3 } as const;
export type ListenStateCode = (typeof ListenState)[keyof typeof ListenState];

/** What a server holds of one run (docs/protocol.md, "ANNOUNCE"). */
export interface AnnouncedSession {
  readonly sessionId: number;
  /**
   * The run the entry speaks of, not 0: what a server held of another run of the same session id
   * (a source restarted under it) is no fact about this one (docs/protocol.md, "Session identity").
   */
  readonly incarnation: number;
  readonly firstHeld: number;
  readonly lastHeld: number;
  readonly heldCount: number;
  /** Loss measured on the server's own reception, parts per million. */
  readonly lossPpm: number;
  readonly state: ListenStateCode;
}
export interface AnnounceBody {
  /** Where the server takes NACKs. */
  readonly address: string;
  readonly port: number;
  readonly sessions: readonly AnnouncedSession[];
}
const announceFixedBytes = 24;
/** Bytes of one run in an ANNOUNCE. */
export const announceSessionBytes = 28;

/** Encodes an ANNOUNCE. */
export function encodeAnnounce(fields: HeaderFields, body: AnnounceBody): Buffer {
  const out = frame(
    PacketType.announce,
    fields,
    announceFixedBytes + body.sessions.length * announceSessionBytes,
  );
  const b = out.subarray(headerBytes);
  b[0] = writeAddress(b, 4, body.address);
  b.writeUInt16BE(body.port, 2);
  b.writeUInt16BE(body.sessions.length, 20);
  body.sessions.forEach((session, i) => {
    const at = announceFixedBytes + i * announceSessionBytes;
    b.writeUInt32BE(session.sessionId >>> 0, at);
    b.writeUInt32BE(session.incarnation >>> 0, at + 4);
    b.writeUInt32BE(session.firstHeld >>> 0, at + 8);
    b.writeUInt32BE(session.lastHeld >>> 0, at + 12);
    b.writeUInt32BE(session.heldCount >>> 0, at + 16);
    b.writeUInt32BE(Math.min(1_000_000, Math.round(session.lossPpm)), at + 20);
    b[at + 24] = session.state;
  });
  return out;
}

/** Decodes an ANNOUNCE. */
export function decodeAnnounce(buf: Buffer): DecodeResult<Control<AnnounceBody>> {
  const opened = open(buf, PacketType.announce);
  if (!opened.ok) {
    return opened;
  }
  const { body } = opened.value;
  if (body.length < announceFixedBytes) {
    return invalid('truncated', 'ANNOUNCE body too short');
  }
  const address = readAddress(body, 4, body[0] ?? 0);
  if (address === undefined || body[1] !== 0 || body.readUInt16BE(22) !== 0) {
    return invalid('bad-field', 'ANNOUNCE address or reserved field');
  }
  const port = body.readUInt16BE(2);
  const count = body.readUInt16BE(20);
  if (port === 0 || count > announceSessionsMax) {
    return invalid('bad-field', `ANNOUNCE port ${port} or ${count} sessions`);
  }
  if (body.length !== announceFixedBytes + count * announceSessionBytes) {
    return invalid('length-mismatch', `ANNOUNCE of ${count} sessions has ${body.length} body bytes`);
  }
  const sessions: AnnouncedSession[] = [];
  for (let i = 0; i < count; i++) {
    const at = announceFixedBytes + i * announceSessionBytes;
    const state = body[at + 24] ?? 0;
    const lossPpm = body.readUInt32BE(at + 20);
    const incarnation = body.readUInt32BE(at + 4);
    const known =
      state === ListenState.listening || state === ListenState.withdrawn || state === ListenState.lastResort;
    if (!known || lossPpm > 1_000_000) {
      return invalid('bad-field', `ANNOUNCE session state ${state} or loss ${lossPpm} ppm`);
    }
    if (incarnation === 0) {
      return invalid('bad-field', 'ANNOUNCE session entry names no run (incarnation 0)');
    }
    if (body[at + 25] !== 0 || body[at + 26] !== 0 || body[at + 27] !== 0) {
      return invalid('reserved-not-zero', 'ANNOUNCE session reserved field');
    }
    sessions.push({
      sessionId: body.readUInt32BE(at),
      incarnation,
      firstHeld: body.readUInt32BE(at + 8),
      lastHeld: body.readUInt32BE(at + 12),
      heldCount: body.readUInt32BE(at + 16),
      lossPpm,
      state: state as ListenStateCode,
    });
  }
  return valid({ ...opened.value.header, address, port, sessions, auth: opened.value.auth });
}

// ---------------------------------------------------------------------------------------------
// QUALITY: session count u16, reserved u16, then per run (28 bytes): session id u32,
// incarnation u32, received u32, missing u32, loss ppm u32, jitter us u32, state u8, reserved[3].

/** What a server measured of one run in its last period (docs/protocol.md, "QUALITY"). */
export interface SessionQuality {
  readonly sessionId: number;
  /** The run measured, not 0: peers compare only reports of the same run. */
  readonly incarnation: number;
  /** DATA packets received in the measuring period. */
  readonly received: number;
  /** Sequences in the period that did not arrive. */
  readonly missing: number;
  readonly lossPpm: number;
  /** Interarrival jitter (RFC 3550 section 6.4.1 estimator), microseconds. */
  readonly jitterUs: number;
  readonly state: ListenStateCode;
}
export interface QualityBody {
  readonly sessions: readonly SessionQuality[];
}
/** Bytes of one run in a QUALITY. */
export const qualitySessionBytes = 28;

/** Encodes a QUALITY report. */
export function encodeQuality(fields: HeaderFields, body: QualityBody): Buffer {
  const out = frame(PacketType.quality, fields, 4 + body.sessions.length * qualitySessionBytes);
  const b = out.subarray(headerBytes);
  b.writeUInt16BE(body.sessions.length, 0);
  body.sessions.forEach((session, i) => {
    const at = 4 + i * qualitySessionBytes;
    b.writeUInt32BE(session.sessionId >>> 0, at);
    b.writeUInt32BE(session.incarnation >>> 0, at + 4);
    b.writeUInt32BE(Math.min(0xffffffff, session.received), at + 8);
    b.writeUInt32BE(Math.min(0xffffffff, session.missing), at + 12);
    b.writeUInt32BE(Math.min(1_000_000, Math.round(session.lossPpm)), at + 16);
    b.writeUInt32BE(Math.min(0xffffffff, Math.round(session.jitterUs)), at + 20);
    b[at + 24] = session.state;
  });
  return out;
}

/** Decodes a QUALITY report. */
export function decodeQuality(buf: Buffer): DecodeResult<Control<QualityBody>> {
  const opened = open(buf, PacketType.quality);
  if (!opened.ok) {
    return opened;
  }
  const { body } = opened.value;
  if (body.length < 4) {
    return invalid('truncated', 'QUALITY body too short');
  }
  const count = body.readUInt16BE(0);
  if (body.readUInt16BE(2) !== 0) {
    return invalid('reserved-not-zero', 'QUALITY reserved field');
  }
  if (count > announceSessionsMax) {
    return invalid('bad-field', `QUALITY of ${count} sessions`);
  }
  if (body.length !== 4 + count * qualitySessionBytes) {
    return invalid('length-mismatch', `QUALITY of ${count} sessions has ${body.length} body bytes`);
  }
  const sessions: SessionQuality[] = [];
  for (let i = 0; i < count; i++) {
    const at = 4 + i * qualitySessionBytes;
    const state = body[at + 24] ?? 0;
    const lossPpm = body.readUInt32BE(at + 16);
    const incarnation = body.readUInt32BE(at + 4);
    if ((state !== ListenState.listening && state !== ListenState.withdrawn) || lossPpm > 1_000_000) {
      return invalid('bad-field', `QUALITY session state ${state} or loss ${lossPpm} ppm`);
    }
    if (incarnation === 0) {
      return invalid('bad-field', 'QUALITY session entry names no run (incarnation 0)');
    }
    if (body[at + 25] !== 0 || body[at + 26] !== 0 || body[at + 27] !== 0) {
      return invalid('reserved-not-zero', 'QUALITY session reserved field');
    }
    sessions.push({
      sessionId: body.readUInt32BE(at),
      incarnation,
      received: body.readUInt32BE(at + 8),
      missing: body.readUInt32BE(at + 12),
      lossPpm,
      jitterUs: body.readUInt32BE(at + 20),
      state: state as ListenStateCode,
    });
  }
  return valid({ ...opened.value.header, sessions, auth: opened.value.auth });
}

// ---------------------------------------------------------------------------------------------
// SETUP: action u8, family u8, port u16, group[16], source[16] (zero: any source),
// buffer bytes u64 (0: default), buffer age ms u32 (0: default), then the target endpoint:
// family u8, reserved u8, port u16, address[16].

export const SetupAction = { join: 1, leave: 2 } as const;
export type SetupActionCode = (typeof SetupAction)[keyof typeof SetupAction];
export interface SetupBody {
  readonly action: SetupActionCode;
  readonly group: string;
  readonly port: number;
  readonly source: string | undefined;
  readonly bufferBytes: number;
  readonly bufferAgeMs: number;
  /**
   * The retransmit server this SETUP is for: its control address and port as the subscription
   * server registered it. A server refuses a SETUP naming another (docs/protocol.md, "SETUP").
   */
  readonly target: PeerEndpoint;
}
const setupTargetAt = 48;
const setupBytes = setupTargetAt + endpointBytes;

/** Encodes a SETUP. */
export function encodeSetup(fields: HeaderFields, body: SetupBody): Buffer {
  const out = frame(PacketType.setup, fields, setupBytes);
  const b = out.subarray(headerBytes);
  b[0] = body.action;
  b[1] = writeAddress(b, 4, body.group);
  b.writeUInt16BE(body.port, 2);
  if (body.source !== undefined) {
    writeAddress(b, 20, body.source);
  }
  b.writeUInt32BE(Math.floor(body.bufferBytes / 0x1_0000_0000), 36);
  b.writeUInt32BE(body.bufferBytes >>> 0, 40);
  b.writeUInt32BE(body.bufferAgeMs, 44);
  writeEndpoint(b, setupTargetAt, body.target);
  return out;
}

/** Decodes a SETUP. */
export function decodeSetup(buf: Buffer): DecodeResult<Control<SetupBody>> {
  const opened = open(buf, PacketType.setup);
  if (!opened.ok) {
    return opened;
  }
  const { body } = opened.value;
  if (body.length !== setupBytes) {
    return invalid('length-mismatch', `SETUP body must be ${setupBytes} bytes`);
  }
  const action = body[0];
  if (action !== SetupAction.join && action !== SetupAction.leave) {
    return invalid('bad-field', `SETUP action ${action}`);
  }
  const family = body[1] ?? 0;
  const group = readAddress(body, 4, family);
  const sourceIsAny = body.subarray(20, 36).every((byte) => byte === 0);
  const source = sourceIsAny ? undefined : readAddress(body, 20, family);
  const port = body.readUInt16BE(2);
  const high = body.readUInt32BE(36);
  if (group === undefined || (!sourceIsAny && source === undefined) || port === 0 || high > 0x1f_ffff) {
    return invalid('bad-field', 'SETUP group, source, port or buffer size');
  }
  if (body[setupTargetAt + 1] !== 0) {
    return invalid('reserved-not-zero', 'SETUP target reserved field');
  }
  const target = readUnicastEndpoint(body, setupTargetAt);
  if (target === undefined) {
    return invalid('bad-field', 'SETUP target is not one unicast address and port');
  }
  return valid({
    ...opened.value.header,
    action,
    group,
    port,
    source,
    bufferBytes: high * 0x1_0000_0000 + body.readUInt32BE(40),
    bufferAgeMs: body.readUInt32BE(44),
    target,
    auth: opened.value.auth,
  });
}

// ---------------------------------------------------------------------------------------------
// FEEDBACK: what a repair server's edge shows of one run (docs/protocol.md, "FEEDBACK"), six
// u32 fields: missing now, holding, unrecoverable, socket drops, received, NACKed packets.

/** What a repair server reports of the run it repairs, for the source's adaptive rate. */
export interface FeedbackBody {
  /** Gaps it is repairing now: its backlog of NACKs. */
  readonly missing: number;
  /** Packets held behind the oldest gap, not yet re-emitted. */
  readonly holding: number;
  /** Packets given up since it started (a count that grows when the edge loses data). */
  readonly unrecoverable: number;
  /** Datagrams the kernel dropped for its S1 socket since it started (0 where Linux does not tell). */
  readonly socketDrops: number;
  /** DATA it received on S1 since it started. */
  readonly received: number;
  /** Packets it NACKed since it started. */
  readonly nacked: number;
}
/** Bytes of a FEEDBACK body before the trailer. */
export const feedbackBodyBytes = 24;
const feedbackFields = ['missing', 'holding', 'unrecoverable', 'socketDrops', 'received', 'nacked'] as const;

/** The running counts of a FEEDBACK, sent modulo 2^32: the source reads their differences. */
const feedbackRunningCounts: ReadonlySet<string> = new Set(['received', 'nacked']);

/**
 * Encodes a FEEDBACK (trailer to be sealed). received and NACKed are sent modulo 2^32 (a source
 * reads how much they grew, in serial arithmetic, and a long-running server passes 2^32); the
 * other counts above 2^32 - 1 are sent as 2^32 - 1.
 */
export function encodeFeedback(fields: HeaderFields, body: FeedbackBody): Buffer {
  const out = frame(PacketType.feedback, fields, feedbackBodyBytes);
  const b = out.subarray(headerBytes);
  feedbackFields.forEach((name, i) => {
    const count = Math.max(0, Math.floor(body[name]));
    b.writeUInt32BE(feedbackRunningCounts.has(name) ? count % 2 ** 32 : Math.min(0xffffffff, count), i * 4);
  });
  return out;
}

/** Decodes a FEEDBACK: a run named by session id and incarnation, and exactly six counts. */
export function decodeFeedback(buf: Buffer): DecodeResult<Control<FeedbackBody>> {
  const opened = open(buf, PacketType.feedback);
  if (!opened.ok) {
    return opened;
  }
  const { header, body } = opened.value;
  if (body.length !== feedbackBodyBytes) {
    return invalid('length-mismatch', `FEEDBACK body must be ${feedbackBodyBytes} bytes, not ${body.length}`);
  }
  if (header.incarnation === 0) {
    return invalid('bad-field', 'FEEDBACK must name the run it reports on (incarnation 0)');
  }
  return valid({
    ...header,
    missing: body.readUInt32BE(0),
    holding: body.readUInt32BE(4),
    unrecoverable: body.readUInt32BE(8),
    socketDrops: body.readUInt32BE(12),
    received: body.readUInt32BE(16),
    nacked: body.readUInt32BE(20),
    auth: opened.value.auth,
  });
}
