/**
 * Wire protocol v2: the fixed header and the bodies of DATA, HEARTBEAT, END and DESCRIPTOR.
 * docs/protocol.md is the normative description; offsets here are named after it.
 *
 * Fixed header (32 bytes, network byte order):
 *
 *   0                   1                   2                   3
 *   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |        magic 0x4743 "GC"      |  version = 2  |     type      |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |     flags     |  reserved = 0 |           key epoch           |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                          session id                           |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                           sequence                            |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |            timestamp, microseconds since 1970 (64 bits)       |
 *  |                                                               |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |         body length           |        reserved = 0           |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                          incarnation                          |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * A session run is named by (session id, incarnation): the source draws a fresh random
 * incarnation every time it starts, so a restart under the same session id is a new run
 * (docs/protocol.md, "Session identity").
 */
import { packetPayloadBytesMin, sessionNameBytesMax } from '../limits.js';
import {
  type DecodeError,
  type DecodeErrorReason,
  type DecodeResult,
  invalid,
  ProtocolEncodeError,
  valid,
} from './errors.js';
import { bodyBytesMax, dataPayloadBytesMax, headerBytes } from './sizes.js';

export { bodyBytesMax, dataPayloadBytesMax, headerBytes };

/** "GC" in ASCII. */
export const magic = 0x4743;
/** The only version this codec speaks (2: the header grew the incarnation). */
export const protocolVersion = 2;

/** Header field offsets (docs/protocol.md, "Fixed header"). */
export const offsetMagic = 0;
export const offsetVersion = 2;
export const offsetType = 3;
export const offsetFlags = 4;
export const offsetReserved1 = 5;
export const offsetKeyEpoch = 6;
export const offsetSessionId = 8;
export const offsetSequence = 12;
export const offsetTimestamp = 16;
export const offsetBodyLength = 24;
export const offsetReserved2 = 26;
export const offsetIncarnation = 28;

/** Message types (docs/protocol.md, "Messages"). Types above 14 are unassigned. */
export const PacketType = {
  data: 1,
  heartbeat: 2,
  end: 3,
  descriptor: 4,
  nack: 5,
  repair: 6,
  announce: 7,
  quality: 8,
  setup: 9,
  key: 10,
  signature: 11,
  /** A sealed S2 envelope: a whole datagram of the repaired copy, AEAD-encrypted (flow A). */
  sealed: 12,
  /** FEEDBACK: what a repair server's edge shows of one run, to an adapting source. */
  feedback: 13,
  /** REKEY: a member-tree rekey message, repeated in-band by a restricted run's source. */
  rekey: 14,
} as const;
export type PacketTypeCode = (typeof PacketType)[keyof typeof PacketType];

/** Types this version decodes; the other assigned codes are reserved and rejected as unsupported. */
const reservedTypeMax = PacketType.rekey;

/** Fields every packet carries in its fixed header. */
export interface Header {
  readonly type: number;
  readonly flags: number;
  readonly keyEpoch: number;
  readonly sessionId: number;
  /** DATA: the packet's own sequence; other types: the sequence the next DATA packet will carry. */
  readonly sequence: number;
  /** Microseconds since 1970-01-01T00:00:00Z, a safe integer. */
  readonly timestampUs: number;
  readonly bodyLength: number;
  /** The session run: random per source start, not 0 on the data plane; 0 in messages that name no run. */
  readonly incarnation: number;
}

/** A DATA packet: the body is a view into the datagram, not a copy. */
export interface DataPacket extends Header {
  readonly type: typeof PacketType.data;
  readonly payload: Buffer;
}

/** HEARTBEAT and END share one body: totals sent so far. */
export interface ProgressBody {
  /** DATA packets sent in the session so far. */
  readonly packetCount: number;
  /** Payload bytes sent in the session so far. */
  readonly byteCount: number;
}
export interface HeartbeatPacket extends Header, ProgressBody {
  readonly type: typeof PacketType.heartbeat;
}
export interface EndPacket extends Header, ProgressBody {
  readonly type: typeof PacketType.end;
}

/** What a session carries; tells a receiver how to treat a late join. */
export const SessionKind = { file: 1, stream: 2, ticker: 3, relay: 4 } as const;
export type SessionKindCode = (typeof SessionKind)[keyof typeof SessionKind];

/** Descriptor body fields. */
export interface DescriptorBody {
  readonly firstSequence: number;
  readonly packetPayloadBytes: number;
  readonly kind: SessionKindCode;
  /** Total payload bytes, when known (files). */
  readonly totalBytes: number | undefined;
  readonly rateBitsPerSecond: number;
  /** SHA-256 of the whole payload, when known (files). */
  readonly sha256: Buffer | undefined;
  readonly name: string;
}
export interface DescriptorPacket extends Header, DescriptorBody {
  readonly type: typeof PacketType.descriptor;
}

export type Packet = DataPacket | HeartbeatPacket | EndPacket | DescriptorPacket;

/** Progress body layout: packet count u64 at 0, byte count u64 at 8. */
export const progressBodyBytes = 16;

/**
 * Descriptor body layout (docs/protocol.md, "DESCRIPTOR"):
 * first sequence u32 @0, packet payload bytes u16 @4, kind u8 @6, descriptor flags u8 @7,
 * total bytes u64 @8, rate bit/s u64 @16, SHA-256 [32] @24, name length u8 @56, name @57.
 */
const descOffsetFirstSequence = 0;
const descOffsetPacketPayloadBytes = 4;
const descOffsetKind = 6;
const descOffsetFlags = 7;
const descOffsetTotalBytes = 8;
const descOffsetRate = 16;
const descOffsetSha256 = 24;
const descOffsetNameLength = 56;
const descOffsetName = 57;
export const descriptorFixedBytes = descOffsetName;
const descFlagSizeKnown = 0x01;
const descFlagSha256Known = 0x02;
const sha256Bytes = 32;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The big-endian 16-bit field at `at`, read by index: the caller has checked that the bytes are
 * there. In optimized code a method of a Buffer (`readUInt16BE`, `readUInt32BE`) is reached through
 * a generic property load on every call, which costs more than the read itself on a per-packet
 * path; an index into the bytes is a plain load (docs/benchmarks.md, "Restricted channels").
 */
export function uint16At(bytes: Uint8Array, at: number): number {
  return ((bytes[at] as number) << 8) | (bytes[at + 1] as number);
}

/** The big-endian 32-bit field at `at`, read by index (see uint16At): an unsigned 32-bit number. */
export function uint32At(bytes: Uint8Array, at: number): number {
  return (
    (((bytes[at] as number) << 24) |
      ((bytes[at + 1] as number) << 16) |
      ((bytes[at + 2] as number) << 8) |
      (bytes[at + 3] as number)) >>>
    0
  );
}

/** Reads an unsigned 64-bit big-endian field as a safe integer, or undefined when above 2^53 - 1. */
function readSafeUint64(buf: Buffer, offset: number): number | undefined {
  const high = buf.readUInt32BE(offset);
  if (high > 0x1f_ffff) {
    return undefined;
  }
  return high * 0x1_0000_0000 + buf.readUInt32BE(offset + 4);
}

/** Writes a safe non-negative integer as an unsigned 64-bit big-endian field. */
function writeSafeUint64(buf: Buffer, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ProtocolEncodeError(`not a safe unsigned integer: ${value}`);
  }
  buf.writeUInt32BE(Math.floor(value / 0x1_0000_0000), offset);
  buf.writeUInt32BE(value >>> 0, offset + 4);
}

/** Fields an encoder needs for the fixed header. */
export interface HeaderFields {
  readonly sessionId: number;
  readonly sequence: number;
  readonly timestampUs: number;
  readonly keyEpoch?: number;
  /** The session run (default 0: a control message that names no run). */
  readonly incarnation?: number;
}

/**
 * Writes the fixed header into out at offset 0. Used on the hot path with a preallocated
 * buffer whose body the caller fills in place.
 */
export function writeHeader(
  out: Buffer,
  type: PacketTypeCode,
  fields: HeaderFields,
  bodyLength: number,
): void {
  writeHeaderFields(
    out,
    type,
    fields.sessionId,
    fields.sequence,
    fields.timestampUs,
    fields.keyEpoch ?? 0,
    bodyLength,
    fields.incarnation ?? 0,
  );
}

/** writeHeader with the fields as arguments, so the per-packet path allocates nothing. */
export function writeHeaderFields(
  out: Buffer,
  type: PacketTypeCode,
  sessionId: number,
  sequence: number,
  timestampUs: number,
  keyEpoch: number,
  bodyLength: number,
  incarnation: number,
): void {
  if (bodyLength < 0 || bodyLength > bodyBytesMax || out.length < headerBytes + bodyLength) {
    throw new ProtocolEncodeError(`body length ${bodyLength} does not fit`);
  }
  out.writeUInt16BE(magic, offsetMagic);
  out[offsetVersion] = protocolVersion;
  out[offsetType] = type;
  out[offsetFlags] = 0;
  out[offsetReserved1] = 0;
  out.writeUInt16BE(keyEpoch, offsetKeyEpoch);
  out.writeUInt32BE(sessionId >>> 0, offsetSessionId);
  out.writeUInt32BE(sequence >>> 0, offsetSequence);
  writeSafeUint64(out, offsetTimestamp, timestampUs);
  out.writeUInt16BE(bodyLength, offsetBodyLength);
  out.writeUInt16BE(0, offsetReserved2);
  out.writeUInt32BE(incarnation >>> 0, offsetIncarnation);
}

/** Encodes a DATA packet into a new buffer (the source's hot path writes in place instead). */
export function encodeData(fields: HeaderFields, payload: Uint8Array): Buffer {
  if (payload.length > dataPayloadBytesMax) {
    throw new ProtocolEncodeError(`DATA payload of ${payload.length} bytes does not fit a REPAIR`);
  }
  const out = Buffer.allocUnsafe(headerBytes + payload.length);
  writeHeader(out, PacketType.data, fields, payload.length);
  out.set(payload, headerBytes);
  return out;
}

/** Encodes a HEARTBEAT or END packet. */
export function encodeProgress(
  type: typeof PacketType.heartbeat | typeof PacketType.end,
  fields: HeaderFields,
  body: ProgressBody,
): Buffer {
  const out = Buffer.alloc(headerBytes + progressBodyBytes);
  writeHeader(out, type, fields, progressBodyBytes);
  writeSafeUint64(out, headerBytes, body.packetCount);
  writeSafeUint64(out, headerBytes + 8, body.byteCount);
  return out;
}

/** Encodes a DESCRIPTOR packet. */
export function encodeDescriptor(fields: HeaderFields, body: DescriptorBody): Buffer {
  const name = Buffer.from(body.name, 'utf8');
  if (name.length > sessionNameBytesMax) {
    throw new ProtocolEncodeError(`session name longer than ${sessionNameBytesMax} bytes`);
  }
  if (body.sha256 !== undefined && body.sha256.length !== sha256Bytes) {
    throw new ProtocolEncodeError('SHA-256 must be 32 bytes');
  }
  const bodyLength = descriptorFixedBytes + name.length;
  const out = Buffer.alloc(headerBytes + bodyLength);
  writeHeader(out, PacketType.descriptor, fields, bodyLength);
  const b = out.subarray(headerBytes);
  b.writeUInt32BE(body.firstSequence >>> 0, descOffsetFirstSequence);
  b.writeUInt16BE(body.packetPayloadBytes, descOffsetPacketPayloadBytes);
  b[descOffsetKind] = body.kind;
  b[descOffsetFlags] =
    (body.totalBytes === undefined ? 0 : descFlagSizeKnown) |
    (body.sha256 === undefined ? 0 : descFlagSha256Known);
  writeSafeUint64(b, descOffsetTotalBytes, body.totalBytes ?? 0);
  writeSafeUint64(b, descOffsetRate, body.rateBitsPerSecond);
  body.sha256?.copy(b, descOffsetSha256);
  b[descOffsetNameLength] = name.length;
  name.copy(b, descOffsetName);
  return out;
}

/**
 * Validates and decodes the fixed header: length, magic, version, type, reserved bytes, and the
 * declared body length against the bytes present (docs/protocol.md, "Validation").
 */
export function decodeHeader(buf: Buffer): DecodeResult<Header> {
  const error = checkHeader(buf);
  if (error !== undefined) {
    return error;
  }
  return valid(readHeader(buf));
}

/** Decodes the header of a message that must be of `type` (named `name` in the error). */
export function decodeHeaderOf(buf: Buffer, type: PacketTypeCode, name: string): DecodeResult<Header> {
  const header = decodeHeader(buf);
  if (header.ok && header.value.type !== type) {
    return invalid('bad-field', `type ${header.value.type} is not ${name}`);
  }
  return header;
}

/** Reads the header fields of a buffer checkHeader() accepted. */
function readHeader(buf: Buffer): Header {
  return {
    type: buf[offsetType] ?? 0,
    flags: buf[offsetFlags] ?? 0,
    keyEpoch: buf.readUInt16BE(offsetKeyEpoch),
    sessionId: buf.readUInt32BE(offsetSessionId),
    sequence: buf.readUInt32BE(offsetSequence),
    timestampUs: readSafeUint64(buf, offsetTimestamp) ?? 0,
    bodyLength: buf.readUInt16BE(offsetBodyLength),
    incarnation: buf.readUInt32BE(offsetIncarnation),
  };
}

/** Why a datagram's header fails the checks of docs/protocol.md, "Validation"; undefined when it passes. */
export function headerProblem(buf: Buffer): DecodeErrorReason | undefined {
  return checkHeader(buf)?.reason;
}

/** The header checks of docs/protocol.md, "Validation"; undefined when the header is valid. */
function checkHeader(buf: Buffer): DecodeError | undefined {
  if (buf.length < headerBytes) {
    return invalid(
      'truncated',
      `datagram of ${buf.length} bytes is shorter than the ${headerBytes}-byte header`,
    );
  }
  if (buf.readUInt16BE(offsetMagic) !== magic) {
    return invalid('bad-magic', 'not a gatecast packet');
  }
  const version = buf[offsetVersion];
  if (version !== protocolVersion) {
    return invalid('bad-version', `version ${version} is not ${protocolVersion}`);
  }
  const type = buf[offsetType] ?? 0;
  if (type === 0 || type > reservedTypeMax) {
    return invalid('unknown-type', `type ${type} is not assigned`);
  }
  if (buf[offsetReserved1] !== 0 || buf.readUInt16BE(offsetReserved2) !== 0) {
    return invalid('reserved-not-zero', 'a reserved header field is not zero');
  }
  const flags = buf[offsetFlags] ?? 0;
  if (flags !== 0) {
    return invalid('bad-flags', `flags 0x${flags.toString(16)} are not defined in version 2`);
  }
  const bodyLength = buf.readUInt16BE(offsetBodyLength);
  if (bodyLength !== buf.length - headerBytes) {
    return invalid(
      'length-mismatch',
      `body length ${bodyLength} but ${buf.length - headerBytes} bytes follow`,
    );
  }
  if (readSafeUint64(buf, offsetTimestamp) === undefined) {
    return invalid('bad-field', 'timestamp above 2^53 microseconds');
  }
  if (type <= PacketType.descriptor && buf.readUInt32BE(offsetIncarnation) === 0) {
    return invalid('bad-field', 'a data-plane packet must name its incarnation (not 0)');
  }
  return undefined;
}

/** Decodes a DATA packet; the payload is a view into buf. */
export function decodeData(buf: Buffer): DecodeResult<DataPacket> {
  const error = checkHeader(buf);
  if (error !== undefined) {
    return error;
  }
  if (buf[offsetType] !== PacketType.data) {
    return invalid('bad-field', `type ${buf[offsetType]} is not DATA`);
  }
  if (buf.length - headerBytes > dataPayloadBytesMax) {
    return invalid('bad-field', `DATA payload above ${dataPayloadBytesMax} bytes would not fit a REPAIR`);
  }
  // Built in one literal: this is the per-packet path of every receiver.
  return valid({
    type: PacketType.data,
    flags: 0,
    keyEpoch: buf.readUInt16BE(offsetKeyEpoch),
    sessionId: buf.readUInt32BE(offsetSessionId),
    sequence: buf.readUInt32BE(offsetSequence),
    timestampUs: readSafeUint64(buf, offsetTimestamp) ?? 0,
    bodyLength: buf.length - headerBytes,
    incarnation: buf.readUInt32BE(offsetIncarnation),
    payload: buf.subarray(headerBytes),
  });
}

/** Decodes the body shared by HEARTBEAT and END. */
function decodeProgressBody(buf: Buffer, header: Header): DecodeResult<ProgressBody> {
  if (header.bodyLength !== progressBodyBytes) {
    return invalid(
      'length-mismatch',
      `progress body must be ${progressBodyBytes} bytes, not ${header.bodyLength}`,
    );
  }
  const packetCount = readSafeUint64(buf, headerBytes);
  const byteCount = readSafeUint64(buf, headerBytes + 8);
  if (packetCount === undefined || byteCount === undefined) {
    return invalid('bad-field', 'count above 2^53');
  }
  return valid({ packetCount, byteCount });
}

/** Decodes a HEARTBEAT packet. */
export function decodeHeartbeat(buf: Buffer): DecodeResult<HeartbeatPacket> {
  const header = decodeHeaderOf(buf, PacketType.heartbeat, 'HEARTBEAT');
  if (!header.ok) {
    return header;
  }
  const body = decodeProgressBody(buf, header.value);
  return body.ok ? valid({ ...header.value, ...body.value, type: PacketType.heartbeat }) : body;
}

/** Decodes an END packet. */
export function decodeEnd(buf: Buffer): DecodeResult<EndPacket> {
  const header = decodeHeaderOf(buf, PacketType.end, 'END');
  if (!header.ok) {
    return header;
  }
  const body = decodeProgressBody(buf, header.value);
  return body.ok ? valid({ ...header.value, ...body.value, type: PacketType.end }) : body;
}

/** Decodes a DESCRIPTOR packet, checking every field and the name's length and encoding. */
export function decodeDescriptor(buf: Buffer): DecodeResult<DescriptorPacket> {
  const header = decodeHeaderOf(buf, PacketType.descriptor, 'DESCRIPTOR');
  if (!header.ok) {
    return header;
  }
  const b = buf.subarray(headerBytes);
  if (b.length < descriptorFixedBytes) {
    return invalid(
      'truncated',
      `descriptor body of ${b.length} bytes is shorter than ${descriptorFixedBytes}`,
    );
  }
  const nameLength = b[descOffsetNameLength] ?? 0;
  if (b.length !== descriptorFixedBytes + nameLength) {
    return invalid('length-mismatch', `name length ${nameLength} does not match the body`);
  }
  const kind = b[descOffsetKind] ?? 0;
  if (kind < SessionKind.file || kind > SessionKind.relay) {
    return invalid('bad-field', `session kind ${kind} is not defined`);
  }
  const flags = b[descOffsetFlags] ?? 0;
  if ((flags & ~(descFlagSizeKnown | descFlagSha256Known)) !== 0) {
    return invalid('bad-flags', `descriptor flags 0x${flags.toString(16)} are not defined`);
  }
  const packetPayloadBytes = b.readUInt16BE(descOffsetPacketPayloadBytes);
  if (packetPayloadBytes < packetPayloadBytesMin || packetPayloadBytes > dataPayloadBytesMax) {
    return invalid('bad-field', `packet payload size ${packetPayloadBytes} is out of range`);
  }
  const totalBytes = readSafeUint64(b, descOffsetTotalBytes);
  const rateBitsPerSecond = readSafeUint64(b, descOffsetRate);
  if (totalBytes === undefined || rateBitsPerSecond === undefined) {
    return invalid('bad-field', 'size or rate above 2^53');
  }
  if ((flags & descFlagSizeKnown) === 0 && totalBytes !== 0) {
    return invalid('bad-field', 'total bytes set although the size is flagged unknown');
  }
  const sha256 = b.subarray(descOffsetSha256, descOffsetSha256 + sha256Bytes);
  const sha256Known = (flags & descFlagSha256Known) !== 0;
  if (!sha256Known && sha256.some((byte) => byte !== 0)) {
    return invalid('bad-field', 'SHA-256 set although flagged unknown');
  }
  let name: string;
  try {
    name = utf8.decode(b.subarray(descOffsetName));
  } catch {
    return invalid('bad-field', 'session name is not valid UTF-8');
  }
  return valid({
    ...header.value,
    type: PacketType.descriptor,
    firstSequence: b.readUInt32BE(descOffsetFirstSequence),
    packetPayloadBytes,
    kind: kind as SessionKindCode,
    totalBytes: (flags & descFlagSizeKnown) === 0 ? undefined : totalBytes,
    rateBitsPerSecond,
    sha256: sha256Known ? Buffer.from(sha256) : undefined,
    name,
  });
}

/** Decodes any packet this version speaks, dispatching on the type byte. */
export function decodePacket(buf: Buffer): DecodeResult<Packet> {
  const type = buf.length > offsetType ? buf[offsetType] : undefined;
  switch (type) {
    case PacketType.data:
      return decodeData(buf);
    case PacketType.heartbeat:
      return decodeHeartbeat(buf);
    case PacketType.end:
      return decodeEnd(buf);
    case PacketType.descriptor:
      return decodeDescriptor(buf);
    default: {
      const header = decodeHeader(buf);
      if (!header.ok) {
        return header;
      }
      return invalid('unsupported-type', `type ${header.value.type} is reserved for a later version`);
    }
  }
}
