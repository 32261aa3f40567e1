/**
 * Wire formats of restricted and signed sessions (docs/protocol.md, "Restricted sessions"):
 * the KEY message (type 10, the ECM role), the SIGNATURE message (type 11: a manifest over the
 * hashes of up to 64 DATA packets, or the signed session offer), and the grant (the EMM role),
 * which travels over HTTP, not UDP. Pure codecs: signing and verifying are in src/crypto/.
 *
 * Every signed layout ends with a 64-byte Ed25519 signature over every byte before it (for the
 * UDP messages: the 32-byte header, then the body up to the signature).
 */

import { groupKeyPacketsMax } from '../limits.js';
import { type DecodeResult, invalid, ProtocolEncodeError, valid } from './errors.js';
import { decodeHeaderOf, type Header, type HeaderFields, PacketType, writeHeader } from './packet.js';
import { headerBytes } from './sizes.js';

/** Ed25519 signature length. */
export const signatureBytes = 64;
/** Ed25519 public key length (raw). */
export const ed25519PublicKeyBytes = 32;
/** Bytes of each packet hash in a manifest: the first 16 bytes of SHA-256 of the datagram. */
export const manifestHashBytes = 16;
/** Most packets one manifest covers: its datagram (manifestDatagramBytes) is then 1,124 bytes. */
export const manifestPacketsMax = 64;
/** Fewest packets a source's manifest covers when it signs one per N packets (`--manifest-packets`). */
export const manifestPacketsMin = 32;
/** A manifest's fixed bytes besides its hashes: the header, kind, count, hash bytes, reserved and the signature. */
const manifestFixedBytes = headerBytes + 4 + signatureBytes;

/** The size of a manifest datagram over `count` packets. */
export function manifestDatagramBytes(count: number): number {
  return manifestFixedBytes + count * manifestHashBytes;
}

/**
 * A source's default packets per manifest: the most whose manifest is no longer than the session's
 * largest DATA datagram (`dataDatagramBytes`), within manifestPacketsMin-manifestPacketsMax. Where
 * the session's DATA crosses the network (a path whose MTU the packet size was chosen for), so do
 * its manifests: 64 from a DATA datagram of 1,124 bytes on (the default 1,400-byte payload makes
 * 1,448), fewer for smaller packets, 32 at the least.
 */
export function manifestPacketsFor(dataDatagramBytes: number): number {
  const fits = Math.floor((dataDatagramBytes - manifestFixedBytes) / manifestHashBytes);
  return Math.min(manifestPacketsMax, Math.max(manifestPacketsMin, fits));
}
/** Longest service name, in UTF-8 bytes. */
export const serviceNameBytesMax = 64;
/** Most suites a session offer lists. */
export const offerSuitesMax = 8;
/** Wrapped key lengths AES key wrap (RFC 3394) yields for 16- and 32-byte keys. */
const wrappedKeyLengths = new Set([24, 40]);
/** A KEY's group part: packets per group (32 bits), in every-n-th-packet mode only. */
const keyGroupPartBytes = 4;
/** Bytes of the group seed at the start of a sealed DATA body in every-n-th-packet mode. */
export const groupSeedBytes = 16;

/** SIGNATURE kinds (first body byte). */
export const SignatureKind = { manifest: 1, session: 2, control: 3 } as const;

/** Bytes of the hash a control signature carries: the whole SHA-256 of the control datagram. */
export const controlHashBytes = 32;

/** Session offer flags. */
export const OfferFlag = { signed: 1, encrypted: 2 } as const;

/** A manifest: hashes of the DATA datagrams with sequences first .. first + count - 1. */
export interface ManifestMessage extends Header {
  readonly kind: typeof SignatureKind.manifest;
  /**
   * The hashes, sequences from the header's on (views of the datagram, made when first read: a
   * gate compares them in place, by hashCount and hashesAt).
   */
  readonly hashes: readonly Buffer[];
  /** How many hashes (1-manifestPacketsMax). */
  readonly hashCount: number;
  /** Where in the datagram the first hash starts; each is manifestHashBytes long, one after another. */
  readonly hashesAt: number;
  readonly signature: Buffer;
  /** Every byte the signature covers. */
  readonly signed: Buffer;
}

/**
 * A decoded manifest. One class, so every manifest has one hidden class: an object literal with a
 * getter of its own (a closure per manifest) got a hidden class of its own each time, made in V8's
 * old generation with its descriptors, about 1.7 KB there a manifest that only a full collection
 * frees (a verifying receiver at 100 Mbit/s ran one every 700 ms once its heap reached its limit).
 */
class DecodedManifest implements ManifestMessage {
  readonly type: number;
  readonly flags: number;
  readonly keyEpoch: number;
  readonly sessionId: number;
  readonly sequence: number;
  readonly timestampUs: number;
  readonly bodyLength: number;
  readonly incarnation: number;
  readonly kind = SignatureKind.manifest;
  readonly hashCount: number;
  readonly hashesAt = headerBytes + 4;
  readonly signature: Buffer;
  readonly signed: Buffer;
  readonly #body: Buffer;
  #hashes: Buffer[] | undefined;

  constructor(header: Header, body: Buffer, count: number, signature: Buffer, signed: Buffer) {
    this.type = header.type;
    this.flags = header.flags;
    this.keyEpoch = header.keyEpoch;
    this.sessionId = header.sessionId;
    this.sequence = header.sequence;
    this.timestampUs = header.timestampUs;
    this.bodyLength = header.bodyLength;
    this.incarnation = header.incarnation;
    this.hashCount = count;
    this.signature = signature;
    this.signed = signed;
    this.#body = body;
  }

  /** The hashes as views of the datagram, made when first read (a gate reads them in place). */
  get hashes(): readonly Buffer[] {
    this.#hashes ??= Array.from({ length: this.hashCount }, (_, index) =>
      this.#body.subarray(4 + index * manifestHashBytes, 4 + (index + 1) * manifestHashBytes),
    );
    return this.#hashes;
  }
}

/** The signed session offer: what a restricted or signed run is and which suites it offers. */
export interface SessionOfferBody {
  readonly flags: number;
  /** Tier a grant must reach to decode (0 = any). */
  readonly tier: number;
  /** Suites offered, in the source's order of preference (docs/protocol.md: the receiver takes the first it supports). */
  readonly suites: readonly number[];
  readonly cryptoPeriodMs: number;
  readonly service: string;
  /** The source's Ed25519 public key (raw, 32 bytes) that signs manifests and KEY messages. */
  readonly sourcePublicKey: Buffer;
  /** SHA-256 of the run's DESCRIPTOR datagram: the offer vouches for it. */
  readonly descriptorSha256: Buffer;
}
export interface SessionOfferMessage extends Header, SessionOfferBody {
  readonly kind: typeof SignatureKind.session;
  readonly signature: Buffer;
  readonly signed: Buffer;
}

/**
 * A control signature: the source's signature over the SHA-256 of one HEARTBEAT, END or DESCRIPTOR
 * datagram of a signed run (docs/protocol.md, "Signed sessions"). It travels just before the
 * datagram it vouches for; the header names the same run and sequence.
 */
export interface ControlSignatureMessage extends Header {
  readonly kind: typeof SignatureKind.control;
  /** The vouched datagram's type: HEARTBEAT, END or DESCRIPTOR. */
  readonly controlType: number;
  readonly controlSha256: Buffer;
  readonly signature: Buffer;
  readonly signed: Buffer;
}

export type SignatureMessage = ManifestMessage | SessionOfferMessage | ControlSignatureMessage;

/** Types a control signature may vouch for. */
const signableControlTypes = new Set<number>([PacketType.heartbeat, PacketType.end, PacketType.descriptor]);

/** Body length of a control signature: kind, type, reserved u16, hash, signature. */
const controlSignatureBodyBytes = 4 + controlHashBytes + signatureBytes;

/**
 * Encodes a control signature without its signature (see encodeManifestUnsigned).
 *
 * Body: kind u8 = 3 @0, control type u8 @1, reserved u16 = 0 @2, SHA-256 of the datagram [32] @4,
 * signature [64] @36.
 */
export function encodeControlSignatureUnsigned(
  fields: HeaderFields,
  controlType: number,
  controlSha256: Buffer,
): Buffer {
  if (!signableControlTypes.has(controlType)) {
    throw new ProtocolEncodeError(`type ${controlType} is not HEARTBEAT, END or DESCRIPTOR`);
  }
  if (controlSha256.length !== controlHashBytes) {
    throw new ProtocolEncodeError('a control signature carries a 32-byte SHA-256');
  }
  const out = Buffer.alloc(headerBytes + controlSignatureBodyBytes);
  writeHeader(out, PacketType.signature, fields, controlSignatureBodyBytes);
  out[headerBytes] = SignatureKind.control;
  out[headerBytes + 1] = controlType;
  controlSha256.copy(out, headerBytes + 4);
  return out;
}

function decodeControlSignature(
  header: Header,
  body: Buffer,
  signature: Buffer,
  signed: Buffer,
): DecodeResult<ControlSignatureMessage> {
  if (body.length !== controlSignatureBodyBytes) {
    return invalid('length-mismatch', `control signature of ${body.length} body bytes`);
  }
  const controlType = body[1] ?? 0;
  if (!signableControlTypes.has(controlType) || body.readUInt16BE(2) !== 0) {
    return invalid('bad-field', 'control signature type or reserved bytes');
  }
  return valid({
    ...header,
    kind: SignatureKind.control,
    controlType,
    controlSha256: body.subarray(4, 4 + controlHashBytes),
    signature,
    signed,
  });
}

/** KEY body: a traffic key for the header's key epoch, wrapped under the service key. */
export interface KeyBody {
  readonly suite: number;
  readonly tier: number;
  readonly serviceEpoch: number;
  readonly cryptoPeriodMs: number;
  readonly service: string;
  /**
   * AES key wrap (RFC 3394) of the traffic key under the service key: 24 or 40 bytes. With a tree
   * part, what it wraps is the traffic key XOR the tree part's share.
   */
  readonly wrappedKey: Buffer;
  /** Present when the service has a member tree (LKH, docs/protocol.md "Member trees"). */
  readonly tree?: KeyTreePart | undefined;
  /**
   * Every-n-th-packet mode (docs/protocol.md, "Group keys"): the period's packets are sealed in
   * groups of this many under group keys, each derived inside a token from the KEY's shares and
   * the group's seed; a token never releases the traffic key of such a KEY. Absent: the traffic
   * key seals every packet of the period.
   */
  readonly packetsPerGroup?: number | undefined;
}

/**
 * The member-tree part of a KEY: a share as long as the traffic key, wrapped under the group key
 * of the tree at `treeEpoch`. The traffic key is the service-key share XOR this one, so a token
 * needs both its grant's service key and the tree's current group key: a member removed from the
 * tree holds the first and not the second.
 */
export interface KeyTreePart {
  readonly treeId: number;
  readonly treeEpoch: number;
  /** AES key wrap of the share under the group key; as long as wrappedKey. */
  readonly wrappedShare: Buffer;
}
export interface KeyMessage extends Header, KeyBody {
  readonly type: typeof PacketType.key;
  readonly signature: Buffer;
  readonly signed: Buffer;
}

function nameBytes(name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  if (bytes.length === 0 || bytes.length > serviceNameBytesMax) {
    throw new ProtocolEncodeError(`service name must be 1-${serviceNameBytesMax} bytes`);
  }
  return bytes;
}

/**
 * Encodes a manifest without its signature: the returned buffer's last 64 bytes are zero and
 * are filled by the signer (src/crypto/authority.ts) over every byte before them.
 *
 * Body: kind u8 = 1 @0, count u8 @1, hash bytes u8 = 16 @2, reserved u8 @3, hashes @4, signature.
 */
export function encodeManifestUnsigned(fields: HeaderFields, hashes: readonly Buffer[]): Buffer {
  if (hashes.length < 1 || hashes.length > manifestPacketsMax) {
    throw new ProtocolEncodeError(`a manifest covers 1-${manifestPacketsMax} packets`);
  }
  const block = Buffer.alloc(hashes.length * manifestHashBytes);
  hashes.forEach((hash, index) => {
    if (hash.length < manifestHashBytes) {
      throw new ProtocolEncodeError('manifest hash shorter than 16 bytes');
    }
    hash.copy(block, index * manifestHashBytes, 0, manifestHashBytes);
  });
  return encodeManifestBlockUnsigned(fields, block);
}

/**
 * encodeManifestUnsigned with the hashes given as one block: `block` holds them end to end,
 * manifestHashBytes each (what a source collects them into, one packet at a time).
 */
export function encodeManifestBlockUnsigned(fields: HeaderFields, block: Buffer): Buffer {
  const count = block.length / manifestHashBytes;
  if (!Number.isInteger(count) || count < 1 || count > manifestPacketsMax) {
    throw new ProtocolEncodeError(
      `a manifest covers 1-${manifestPacketsMax} packets of ${manifestHashBytes}-byte hashes, not ${block.length} bytes`,
    );
  }
  const bodyLength = 4 + block.length + signatureBytes;
  const out = Buffer.alloc(headerBytes + bodyLength);
  writeHeader(out, PacketType.signature, fields, bodyLength);
  out[headerBytes] = SignatureKind.manifest;
  out[headerBytes + 1] = count;
  out[headerBytes + 2] = manifestHashBytes;
  block.copy(out, headerBytes + 4);
  return out;
}

/**
 * Encodes a session offer without its signature (see encodeManifestUnsigned).
 *
 * Body: kind u8 = 2 @0, flags u8 @1, tier u8 @2, suite count u8 @3, crypto-period ms u32 @4,
 * source public key [32] @8, descriptor SHA-256 [32] @40, service length u8 @72, reserved u8 @73,
 * suites [count] @74, service name, signature [64].
 */
export function encodeSessionOfferUnsigned(fields: HeaderFields, body: SessionOfferBody): Buffer {
  const service = nameBytes(body.service);
  if (body.suites.length < 1 || body.suites.length > offerSuitesMax) {
    throw new ProtocolEncodeError(`an offer lists 1-${offerSuitesMax} suites`);
  }
  if (body.sourcePublicKey.length !== ed25519PublicKeyBytes || body.descriptorSha256.length !== 32) {
    throw new ProtocolEncodeError('offer keys and hashes must be 32 bytes');
  }
  const bodyLength = 74 + body.suites.length + service.length + signatureBytes;
  const out = Buffer.alloc(headerBytes + bodyLength);
  writeHeader(out, PacketType.signature, fields, bodyLength);
  const b = out.subarray(headerBytes);
  b[0] = SignatureKind.session;
  b[1] = body.flags;
  b[2] = body.tier;
  b[3] = body.suites.length;
  b.writeUInt32BE(body.cryptoPeriodMs >>> 0, 4);
  body.sourcePublicKey.copy(b, 8);
  body.descriptorSha256.copy(b, 40);
  b[72] = service.length;
  body.suites.forEach((suite, index) => {
    b[74 + index] = suite;
  });
  service.copy(b, 74 + body.suites.length);
  return out;
}

/** Decodes a SIGNATURE message (manifest or session offer); the signature is not checked here. */
export function decodeSignature(buf: Buffer): DecodeResult<SignatureMessage> {
  const header = decodeHeaderOf(buf, PacketType.signature, 'SIGNATURE');
  if (!header.ok) {
    return header;
  }
  if (header.value.incarnation === 0) {
    return invalid('bad-field', 'a SIGNATURE names a run (incarnation not 0)');
  }
  const body = buf.subarray(headerBytes);
  if (body.length < 4 + signatureBytes) {
    return invalid('truncated', 'SIGNATURE body too short');
  }
  const signatureAt = buf.length - signatureBytes;
  const signature = buf.subarray(signatureAt);
  const signed = buf.subarray(0, signatureAt);
  if (body[0] === SignatureKind.manifest) {
    const count = body[1] ?? 0;
    if (count < 1 || count > manifestPacketsMax || body[2] !== manifestHashBytes || body[3] !== 0) {
      return invalid('bad-field', 'manifest count, hash size or reserved byte');
    }
    if (body.length !== 4 + count * manifestHashBytes + signatureBytes) {
      return invalid('length-mismatch', `manifest of ${count} hashes has ${body.length} body bytes`);
    }
    return valid(new DecodedManifest(header.value, body, count, signature, signed));
  }
  if (body[0] === SignatureKind.session) {
    return decodeOffer(header.value, body, signature, signed);
  }
  if (body[0] === SignatureKind.control) {
    return decodeControlSignature(header.value, body, signature, signed);
  }
  return invalid('bad-field', `SIGNATURE kind ${body[0]} is unknown`);
}

function decodeOffer(
  header: Header,
  body: Buffer,
  signature: Buffer,
  signed: Buffer,
): DecodeResult<SessionOfferMessage> {
  if (body.length < 74 + signatureBytes) {
    return invalid('truncated', 'session offer too short');
  }
  const flags = body[1] ?? 0;
  const count = body[3] ?? 0;
  const serviceLength = body[72] ?? 0;
  if ((flags & ~(OfferFlag.signed | OfferFlag.encrypted)) !== 0 || (flags & OfferFlag.signed) === 0) {
    return invalid('bad-flags', `offer flags ${flags}: a session offer is always signed`);
  }
  if (count < 1 || count > offerSuitesMax || body[73] !== 0) {
    return invalid('bad-field', 'offer suite count or reserved byte');
  }
  if (serviceLength < 1 || serviceLength > serviceNameBytesMax) {
    return invalid('bad-field', 'offer service name length');
  }
  if (body.length !== 74 + count + serviceLength + signatureBytes) {
    return invalid('length-mismatch', 'offer body length does not match its counts');
  }
  const suites = [...body.subarray(74, 74 + count)];
  const service = body.subarray(74 + count, 74 + count + serviceLength).toString('utf8');
  return valid({
    ...header,
    kind: SignatureKind.session,
    flags,
    tier: body[2] ?? 0,
    suites,
    cryptoPeriodMs: body.readUInt32BE(4),
    sourcePublicKey: body.subarray(8, 40),
    descriptorSha256: body.subarray(40, 72),
    service,
    signature,
    signed,
  });
}

/**
 * Encodes a KEY message without its signature (see encodeManifestUnsigned). The header's key
 * epoch is the traffic key's epoch; its timestamp is the stream's authenticated time.
 *
 * Body: suite u8 @0, tier u8 @1, service length u8 @2, wrapped length u8 @3, service epoch u32 @4,
 * crypto-period ms u32 @8, service name @12, wrapped key, signature [64].
 */
export function encodeKeyUnsigned(fields: HeaderFields, body: KeyBody): Buffer {
  const service = nameBytes(body.service);
  if (!wrappedKeyLengths.has(body.wrappedKey.length)) {
    throw new ProtocolEncodeError('a wrapped traffic key is 24 or 40 bytes');
  }
  if ((fields.keyEpoch ?? 0) === 0) {
    throw new ProtocolEncodeError('a KEY names a key epoch other than 0');
  }
  const tree = body.tree;
  if (tree !== undefined && tree.wrappedShare.length !== body.wrappedKey.length) {
    throw new ProtocolEncodeError('a KEY tree share is wrapped to the length of the traffic key');
  }
  const treeBytes = tree === undefined ? 0 : 8 + tree.wrappedShare.length;
  const group = body.packetsPerGroup;
  if (group !== undefined && (!Number.isSafeInteger(group) || group < 1 || group > groupKeyPacketsMax)) {
    throw new ProtocolEncodeError(`a KEY's packets per group is 1-${groupKeyPacketsMax}`);
  }
  const groupBytes = group === undefined ? 0 : keyGroupPartBytes;
  const bodyLength = 12 + service.length + body.wrappedKey.length + treeBytes + groupBytes + signatureBytes;
  const out = Buffer.alloc(headerBytes + bodyLength);
  writeHeader(out, PacketType.key, fields, bodyLength);
  const b = out.subarray(headerBytes);
  b[0] = body.suite;
  b[1] = body.tier;
  b[2] = service.length;
  b[3] = body.wrappedKey.length;
  b.writeUInt32BE(body.serviceEpoch >>> 0, 4);
  b.writeUInt32BE(body.cryptoPeriodMs >>> 0, 8);
  service.copy(b, 12);
  const wrappedAt = 12 + service.length;
  body.wrappedKey.copy(b, wrappedAt);
  if (tree !== undefined) {
    const treeAt = wrappedAt + body.wrappedKey.length;
    b.writeUInt32BE(tree.treeId >>> 0, treeAt);
    b.writeUInt32BE(tree.treeEpoch >>> 0, treeAt + 4);
    tree.wrappedShare.copy(b, treeAt + 8);
  }
  if (group !== undefined) {
    b.writeUInt32BE(group, wrappedAt + body.wrappedKey.length + treeBytes);
  }
  return out;
}

/** Decodes a KEY message; the signature is not checked here. */
export function decodeKey(buf: Buffer): DecodeResult<KeyMessage> {
  const header = decodeHeaderOf(buf, PacketType.key, 'KEY');
  if (!header.ok) {
    return header;
  }
  if (header.value.incarnation === 0 || header.value.keyEpoch === 0) {
    return invalid('bad-field', 'a KEY names a run and a key epoch (neither 0)');
  }
  const b = buf.subarray(headerBytes);
  if (b.length < 12 + 1 + 24 + signatureBytes) {
    return invalid('truncated', 'KEY body too short');
  }
  const serviceLength = b[2] ?? 0;
  const wrappedLength = b[3] ?? 0;
  if (serviceLength < 1 || serviceLength > serviceNameBytesMax || !wrappedKeyLengths.has(wrappedLength)) {
    return invalid('bad-field', 'KEY service name or wrapped key length');
  }
  // Without a tree part, or with one (tree id, tree epoch, a share wrapped to the same length);
  // then, in every-n-th-packet mode, a group part (4 bytes). The four lengths differ: 8 + w > 4.
  const plainLength = 12 + serviceLength + wrappedLength + signatureBytes;
  const optional = b.length - plainLength;
  const treeBytes = 8 + wrappedLength;
  if (
    optional !== 0 &&
    optional !== treeBytes &&
    optional !== keyGroupPartBytes &&
    optional !== treeBytes + keyGroupPartBytes
  ) {
    return invalid('length-mismatch', 'KEY body length does not match its lengths');
  }
  const hasTree = optional >= treeBytes;
  const treeAt = 12 + serviceLength + wrappedLength;
  let packetsPerGroup: number | undefined;
  if (optional === keyGroupPartBytes || optional === treeBytes + keyGroupPartBytes) {
    packetsPerGroup = b.readUInt32BE(treeAt + (hasTree ? treeBytes : 0));
    if (packetsPerGroup < 1 || packetsPerGroup > groupKeyPacketsMax) {
      return invalid('bad-field', `KEY packets per group ${packetsPerGroup} is not 1-${groupKeyPacketsMax}`);
    }
  }
  const tree = !hasTree
    ? undefined
    : {
        treeId: b.readUInt32BE(treeAt),
        treeEpoch: b.readUInt32BE(treeAt + 4),
        wrappedShare: b.subarray(treeAt + 8, treeAt + 8 + wrappedLength),
      };
  const signatureAt = buf.length - signatureBytes;
  return valid({
    ...header.value,
    type: PacketType.key,
    suite: b[0] ?? 0,
    tier: b[1] ?? 0,
    serviceEpoch: b.readUInt32BE(4),
    cryptoPeriodMs: b.readUInt32BE(8),
    service: b.subarray(12, 12 + serviceLength).toString('utf8'),
    wrappedKey: b.subarray(12 + serviceLength, treeAt),
    tree,
    ...(packetsPerGroup === undefined ? {} : { packetsPerGroup }),
    signature: buf.subarray(signatureAt),
    signed: buf.subarray(0, signatureAt),
  });
}

/**
 * A REKEY datagram (type 14): a member-tree rekey message (src/crypto/lkh.ts, "GCLK", signed by
 * the operator root key) carried in-band by the source of a run of the service, repeated so that
 * members that were offline for a while catch up. The header names the run; the body is the
 * rekey message whole. Its own signature is checked by the token, not here.
 */
export interface RekeyDatagram extends Header {
  readonly type: typeof PacketType.rekey;
  readonly rekey: Buffer;
}

/** Encodes a REKEY datagram around a rekey message. */
export function encodeRekeyDatagram(fields: HeaderFields, rekey: Buffer): Buffer {
  if (rekey.length < rekeyBytesMin || rekey.length > rekeyBytesMax) {
    throw new ProtocolEncodeError(`a rekey message is ${rekeyBytesMin}-${rekeyBytesMax} bytes`);
  }
  const out = Buffer.alloc(headerBytes + rekey.length);
  writeHeader(out, PacketType.rekey, { ...fields, keyEpoch: 0 }, rekey.length);
  rekey.copy(out, headerBytes);
  return out;
}

/** Decodes a REKEY datagram: the header and the rekey message's length bounds. */
export function decodeRekeyDatagram(buf: Buffer): DecodeResult<RekeyDatagram> {
  const header = decodeHeaderOf(buf, PacketType.rekey, 'REKEY');
  if (!header.ok) {
    return header;
  }
  const body = buf.subarray(headerBytes);
  if (body.length < rekeyBytesMin || body.length > rekeyBytesMax) {
    return invalid('bad-field', `REKEY of ${body.length} body bytes`);
  }
  return valid({ ...header.value, type: PacketType.rekey, rekey: body });
}

/** Shortest and longest rekey message (src/crypto/lkh.ts: header, entries of 44 bytes, signature). */
const rekeyBytesMin = 16 + 64;
const rekeyBytesMax = 16 + (2 * 22 + 1) * 44 + 64;

/** Membership magic "GCLM" and version. */
const membershipMagic = 0x47434c4d;
const membershipVersion = 1;
/** Bytes of one wrapped tree key (a 32-byte key under AES key wrap). */
export const treeWrappedKeyBytes = 40;
const membershipFixedBytes = 121;

/**
 * A membership (sent with a grant over HTTP): the keys of one token's path in a service's member
 * tree, leaf first, each wrapped to the token's device key as a grant's service key is.
 */
export interface MembershipBody {
  readonly depth: number;
  readonly service: string;
  readonly serviceEpoch: number;
  readonly treeId: number;
  /** The tree's epoch the keys are of. */
  readonly treeEpoch: number;
  readonly slot: number;
  readonly deviceKeyId: Buffer;
  readonly ephemeralPublicKey: Buffer;
  /** depth + 1 keys, 40 bytes each: the leaf's first, the group key (the root's) last. */
  readonly wrappedKeys: readonly Buffer[];
}
export interface Membership extends MembershipBody {
  readonly signature: Buffer;
  readonly signed: Buffer;
}

/**
 * Encodes a membership without its signature. Layout: magic u32 "GCLM" @0, version u8 @4,
 * depth u8 @5, service length u8 @6, reserved u8 @7, service epoch u32 @8, tree id u32 @12,
 * tree epoch u32 @16, slot u32 @20, device key id [32] @24, ephemeral public key [65] @56,
 * service name @121, wrapped keys [(depth + 1) × 40], signature [64].
 */
export function encodeMembershipUnsigned(body: MembershipBody): Buffer {
  const service = nameBytes(body.service);
  if (
    !Number.isInteger(body.depth) ||
    body.depth < 1 ||
    body.depth > 22 ||
    body.wrappedKeys.length !== body.depth + 1 ||
    body.wrappedKeys.some((key) => key.length !== treeWrappedKeyBytes) ||
    body.deviceKeyId.length !== 32 ||
    body.ephemeralPublicKey.length !== p256PointBytes ||
    !Number.isInteger(body.slot) ||
    body.slot < 0 ||
    body.slot >= 2 ** body.depth
  ) {
    throw new ProtocolEncodeError('membership field of the wrong size');
  }
  const keysAt = membershipFixedBytes + service.length;
  const out = Buffer.alloc(keysAt + body.wrappedKeys.length * treeWrappedKeyBytes + signatureBytes);
  out.writeUInt32BE(membershipMagic, 0);
  out[4] = membershipVersion;
  out[5] = body.depth;
  out[6] = service.length;
  out.writeUInt32BE(body.serviceEpoch >>> 0, 8);
  out.writeUInt32BE(body.treeId >>> 0, 12);
  out.writeUInt32BE(body.treeEpoch >>> 0, 16);
  out.writeUInt32BE(body.slot >>> 0, 20);
  body.deviceKeyId.copy(out, 24);
  body.ephemeralPublicKey.copy(out, 56);
  service.copy(out, membershipFixedBytes);
  body.wrappedKeys.forEach((key, index) => {
    key.copy(out, keysAt + index * treeWrappedKeyBytes);
  });
  return out;
}

/** Decodes a membership; the signature is not checked here. */
export function decodeMembership(buf: Buffer): DecodeResult<Membership> {
  if (buf.length < membershipFixedBytes + 1 + 2 * treeWrappedKeyBytes + signatureBytes) {
    return invalid('truncated', 'membership too short');
  }
  if (buf.readUInt32BE(0) !== membershipMagic) {
    return invalid('bad-magic', 'not a membership');
  }
  if (buf[4] !== membershipVersion) {
    return invalid('bad-version', `membership version ${buf[4]}`);
  }
  const depth = buf[5] ?? 0;
  const serviceLength = buf[6] ?? 0;
  if (depth < 1 || depth > 22 || serviceLength < 1 || serviceLength > serviceNameBytesMax || buf[7] !== 0) {
    return invalid('bad-field', 'membership depth, service length or reserved byte');
  }
  const keysAt = membershipFixedBytes + serviceLength;
  if (buf.length !== keysAt + (depth + 1) * treeWrappedKeyBytes + signatureBytes) {
    return invalid('length-mismatch', 'membership length does not match its depth and service name');
  }
  const slot = buf.readUInt32BE(20);
  if (slot >= 2 ** depth || buf[56] !== 0x04) {
    return invalid('bad-field', 'membership slot out of the tree or ephemeral key not a P-256 point');
  }
  const wrappedKeys: Buffer[] = [];
  for (let index = 0; index <= depth; index++) {
    const at = keysAt + index * treeWrappedKeyBytes;
    wrappedKeys.push(buf.subarray(at, at + treeWrappedKeyBytes));
  }
  const signatureAt = buf.length - signatureBytes;
  return valid({
    depth,
    serviceEpoch: buf.readUInt32BE(8),
    treeId: buf.readUInt32BE(12),
    treeEpoch: buf.readUInt32BE(16),
    slot,
    deviceKeyId: buf.subarray(24, 56),
    ephemeralPublicKey: buf.subarray(56, 121),
    service: buf.subarray(membershipFixedBytes, keysAt).toString('utf8'),
    wrappedKeys,
    signature: buf.subarray(signatureAt),
    signed: buf.subarray(0, signatureAt),
  });
}

/** Grant magic "GCGR" and version. */
const grantMagic = 0x47434752;
const grantVersion = 1;
/** P-256 uncompressed point length (0x04 || X || Y). */
export const p256PointBytes = 65;

/** Price models of a rate card (docs/protocol.md, "Grant"). */
export const PriceModel = { subscription: 0, perCryptoPeriod: 1 } as const;

/** The grant (EMM role): a service key for one token, with the window and the rate card. */
export interface GrantBody {
  readonly tier: number;
  /** SHA-256 of the token's device public key (SPKI DER): the grant is for that token only. */
  readonly deviceKeyId: Buffer;
  readonly service: string;
  readonly serviceEpoch: number;
  /** Validity window, milliseconds since 1970: notBeforeMs <= stream time < notAfterMs. */
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  readonly priceModel: number;
  /** ISO 4217 code, three ASCII letters. */
  readonly currency: string;
  /** Price per unit of the model, integer minor units. */
  readonly priceMinor: number;
  /** The source key whose KEY messages, offers and manifests this service trusts. */
  readonly sourcePublicKey: Buffer;
  /** Ephemeral P-256 public key (uncompressed) of the ECDH with the device key. */
  readonly ephemeralPublicKey: Buffer;
  /** AES key wrap of the 32-byte service key under the ECDH secret: 40 bytes. */
  readonly wrappedServiceKey: Buffer;
}
export interface Grant extends GrantBody {
  readonly signature: Buffer;
  readonly signed: Buffer;
}

/**
 * Encodes a grant without its signature. Layout: magic u32 "GCGR" @0, version u8 @4, tier u8 @5,
 * price model u8 @6, service length u8 @7, service epoch u32 @8, not before ms u64 @12,
 * not after ms u64 @20, price minor u64 @28, currency [3] @36, reserved u8 @39,
 * device key id [32] @40, source public key [32] @72, ephemeral public key [65] @104,
 * wrapped service key [40] @169, service name @209, signature [64].
 */
export function encodeGrantUnsigned(body: GrantBody): Buffer {
  const service = nameBytes(body.service);
  if (
    body.deviceKeyId.length !== 32 ||
    body.sourcePublicKey.length !== ed25519PublicKeyBytes ||
    body.ephemeralPublicKey.length !== p256PointBytes ||
    body.wrappedServiceKey.length !== 40 ||
    !/^[A-Z]{3}$/.test(body.currency)
  ) {
    throw new ProtocolEncodeError('grant field of the wrong size or currency not three capitals');
  }
  for (const value of [body.notBeforeMs, body.notAfterMs, body.priceMinor]) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new ProtocolEncodeError('grant times and prices are non-negative safe integers');
    }
  }
  const out = Buffer.alloc(grantFixedBytes + service.length + signatureBytes);
  out.writeUInt32BE(grantMagic, 0);
  out[4] = grantVersion;
  out[5] = body.tier;
  out[6] = body.priceModel;
  out[7] = service.length;
  out.writeUInt32BE(body.serviceEpoch >>> 0, 8);
  out.writeBigUInt64BE(BigInt(body.notBeforeMs), 12);
  out.writeBigUInt64BE(BigInt(body.notAfterMs), 20);
  out.writeBigUInt64BE(BigInt(body.priceMinor), 28);
  out.write(body.currency, 36, 'ascii');
  body.deviceKeyId.copy(out, 40);
  body.sourcePublicKey.copy(out, 72);
  body.ephemeralPublicKey.copy(out, 104);
  body.wrappedServiceKey.copy(out, 169);
  service.copy(out, grantFixedBytes);
  return out;
}

const grantFixedBytes = 209;

function readSafe(buf: Buffer, offset: number): number | undefined {
  const value = buf.readBigUInt64BE(offset);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined;
}

/** Decodes a grant; the signature is not checked here. */
export function decodeGrant(buf: Buffer): DecodeResult<Grant> {
  if (buf.length < grantFixedBytes + 1 + signatureBytes) {
    return invalid('truncated', 'grant too short');
  }
  if (buf.readUInt32BE(0) !== grantMagic) {
    return invalid('bad-magic', 'not a grant');
  }
  if (buf[4] !== grantVersion) {
    return invalid('bad-version', `grant version ${buf[4]}`);
  }
  const serviceLength = buf[7] ?? 0;
  if (serviceLength < 1 || serviceLength > serviceNameBytesMax || buf[39] !== 0) {
    return invalid('bad-field', 'grant service length or reserved byte');
  }
  if (buf.length !== grantFixedBytes + serviceLength + signatureBytes) {
    return invalid('length-mismatch', 'grant length does not match its service name');
  }
  const priceModel = buf[6] ?? 0;
  if (priceModel !== PriceModel.subscription && priceModel !== PriceModel.perCryptoPeriod) {
    return invalid('bad-field', `grant price model ${priceModel}`);
  }
  const notBeforeMs = readSafe(buf, 12);
  const notAfterMs = readSafe(buf, 20);
  const priceMinor = readSafe(buf, 28);
  const currency = buf.subarray(36, 39).toString('latin1');
  if (
    notBeforeMs === undefined ||
    notAfterMs === undefined ||
    priceMinor === undefined ||
    !/^[A-Z]{3}$/.test(currency)
  ) {
    return invalid('bad-field', 'grant time, price or currency out of range');
  }
  if (buf[104] !== 0x04) {
    return invalid('bad-field', 'grant ephemeral key is not an uncompressed P-256 point');
  }
  const signatureAt = buf.length - signatureBytes;
  return valid({
    tier: buf[5] ?? 0,
    priceModel,
    serviceEpoch: buf.readUInt32BE(8),
    notBeforeMs,
    notAfterMs,
    priceMinor,
    currency,
    deviceKeyId: buf.subarray(40, 72),
    sourcePublicKey: buf.subarray(72, 104),
    ephemeralPublicKey: buf.subarray(104, 169),
    wrappedServiceKey: buf.subarray(169, 209),
    service: buf.subarray(grantFixedBytes, grantFixedBytes + serviceLength).toString('utf8'),
    signature: buf.subarray(signatureAt),
    signed: buf.subarray(0, signatureAt),
  });
}
