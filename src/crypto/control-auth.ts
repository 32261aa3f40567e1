/**
 * Authentication of control messages between an operator's servers (docs/protocol.md,
 * "Authentication trailer" and "Freshness, replay and binding"): HMAC-SHA-256 truncated to 128
 * bits over the whole packet before the tag; the header's timestamp, checked against our wall
 * clock read afresh (freshness survives clock steps); a per-sender count checked against a replay
 * window (a clock step never looks like a replay); a target id that binds a message to one process
 * of one server (a capture replayed to another server, or to the same one after its restart, is
 * refused); and, for a NACK, the requester's own address under the tag (answers go only there).
 *
 * The roles use ControlChannel; ControlSealer and ControlVerifier are its parts.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac, randomInt, timingSafeEqual } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';
import {
  controlPeerSilenceMsMax,
  replayFreshnessMs,
  replayPeersMax,
  replayWindowCountersMax,
  secretFileBytesMax,
} from '../limits.js';
import { systemTime, type TimeSource } from '../net/clock.js';
import { readBoundedFile } from '../net/files.js';
import { writeAddress } from '../protocol/address.js';
import {
  type AuthTrailer,
  authOffsetCounter,
  authOffsetKeyId,
  authOffsetSenderId,
  authOffsetTag,
  authOffsetTargetId,
  authTagBytes,
  authTrailerBytes,
  encodeAnnounce,
  type PeerEndpoint,
} from '../protocol/control.js';
import type { DecodeResult } from '../protocol/errors.js';
import { type Header, headerBytes, offsetTimestamp, PacketType } from '../protocol/packet.js';

/** Shortest secret accepted: 128 bits. */
export const secretBytesMin = 16;

/** A secret could not be loaded or is too weak; names the file. */
export class SecretError extends Error {
  readonly code = 'GATECAST_ERR_SECRET';
}

/** An HMAC key and the id it travels under. */
export interface ControlKey {
  readonly keyId: number;
  readonly key: Buffer;
}

/** Derives the key id: the first 32 bits of SHA-256("gatecast-key-id" || key). */
export function controlKey(key: Buffer): ControlKey {
  const digest = createHash('sha256').update('gatecast-key-id').update(key).digest();
  return { keyId: digest.readUInt32BE(0), key };
}

/** Reads a --secret-file: its trimmed contents are the key, at least 16 bytes. */
export function readSecretFile(path: string, field = '--secret-file'): ControlKey {
  let text: Buffer;
  try {
    text = readBoundedFile(path, secretFileBytesMax); // a regular file of bounded size, or refused
  } catch (error) {
    throw new SecretError(`${field}: ${(error as Error).message}`);
  }
  const key = Buffer.from(text.toString('utf8').trim(), 'utf8');
  if (key.length < secretBytesMin) {
    throw new SecretError(
      `${field}: ${path} holds ${key.length} bytes; a secret needs at least ${secretBytesMin}`,
    );
  }
  return controlKey(key);
}

function tag(key: Buffer, packet: Buffer): Buffer {
  return createHmac('sha256', key)
    .update(packet.subarray(0, packet.length - authTagBytes))
    .digest()
    .subarray(0, authTagBytes);
}

/** A random 32-bit id that is not 0 (0 means "not known" in a trailer's target id). */
function randomSenderId(): number {
  return randomInt(1, 0xffff_ffff);
}

/**
 * Seals control packets as one sender: stamps the header's timestamp with the wall clock (read
 * now), and fills the trailer — key id, sender id, target id, the next count — and the tag.
 */
export class ControlSealer {
  readonly senderId: number;
  readonly #key: ControlKey;
  readonly #clock: Pick<TimeSource, 'wallUs'>;
  #counter = 0;

  constructor(key: ControlKey, options: { senderId?: number; clock?: Pick<TimeSource, 'wallUs'> } = {}) {
    this.#key = key;
    this.senderId = options.senderId ?? randomSenderId();
    assert.ok(this.senderId > 0 && this.senderId <= 0xffff_ffff);
    this.#clock = options.clock ?? systemTime;
  }

  /** Seals the packet in place for the process whose sender id is targetId (0: not known). */
  seal(packet: Buffer, targetId = 0): Buffer {
    assert.ok(packet.length >= headerBytes + authTrailerBytes);
    const timestampUs = this.#clock.wallUs();
    packet.writeUInt32BE(Math.floor(timestampUs / 0x1_0000_0000), offsetTimestamp);
    packet.writeUInt32BE(timestampUs >>> 0, offsetTimestamp + 4);
    // A count, not a time: a step of the sender's clock can never make it repeat (issue 9, item 6).
    this.#counter++;
    const at = packet.length - authTrailerBytes;
    packet.writeUInt32BE(this.#key.keyId, at + authOffsetKeyId);
    packet.writeUInt32BE(this.senderId, at + authOffsetSenderId);
    packet.writeUInt32BE(targetId >>> 0, at + authOffsetTargetId);
    packet.writeUInt32BE(Math.floor(this.#counter / 0x1_0000_0000), at + authOffsetCounter);
    packet.writeUInt32BE(this.#counter >>> 0, at + authOffsetCounter + 4);
    tag(this.#key.key, packet).copy(packet, at + authOffsetTag);
    return packet;
  }
}

/** Why a control message was not accepted; counted as `${label}-${reason}`. */
export type AuthFailure =
  | 'unknown-key'
  | 'bad-tag'
  | 'wrong-target'
  | 'stale'
  | 'before-start'
  | 'replayed'
  | 'reply-mismatch'
  | 'wrong-endpoint'
  | 'own-message';

/**
 * The counters accepted from one sender on one path: the highest, and a bitmap of the window below
 * it kept as a ring of 32-bit words (RFC 4303, section 3.4.3; RFC 6479). Bounded: a counter more
 * than replayWindowCountersMax below the highest is refused.
 */
class ReplayWindow {
  highest = 0;
  readonly #bits = new Uint32Array(replayWindowCountersMax / 32);

  seen(counter: number): boolean {
    if (counter > this.highest) {
      return false;
    }
    return this.highest - counter >= replayWindowCountersMax || this.#bit(counter);
  }

  accept(counter: number): void {
    if (counter > this.highest) {
      const advance = counter - this.highest;
      if (advance >= replayWindowCountersMax) {
        this.#bits.fill(0);
      } else {
        for (let entering = this.highest + 1; entering < counter; entering++) {
          this.#set(entering, false); // counters skipped over enter the window unseen
        }
      }
      this.highest = counter;
    }
    this.#set(counter, true);
  }

  #bit(counter: number): boolean {
    const index = counter % replayWindowCountersMax;
    return (((this.#bits[index >>> 5] ?? 0) >>> (index & 31)) & 1) === 1;
  }

  #set(counter: number, on: boolean): void {
    const index = counter % replayWindowCountersMax;
    const word = index >>> 5;
    const mask = 1 << (index & 31);
    this.#bits[word] = on ? (this.#bits[word] ?? 0) | mask : (this.#bits[word] ?? 0) & ~mask;
  }
}

/**
 * What is kept of one sender: a replay window per path — messages sealed for no one in particular
 * (target 0: multicast, or before the sender knew us) and messages sealed for this process — and
 * the highest timestamp, for when the sender is forgotten. One counter runs through everything a
 * sender seals, for every peer and group; a path is read in order, but two paths (a group socket
 * and the control socket) interleave at the reader however the event loop takes them, so each
 * path is judged on its own (docs/protocol.md, "Freshness, replay and binding").
 */
class PeerWindows {
  readonly open = new ReplayWindow();
  readonly direct = new ReplayWindow();
  highestTimestampUs = 0;

  of(auth: AuthTrailer): ReplayWindow {
    return auth.targetId === 0 ? this.open : this.direct;
  }
}

/** The message fields verification reads: the header's timestamp and the trailer. */
export interface Stamped {
  readonly timestampUs: number;
  readonly auth: AuthTrailer;
}

/**
 * Verifies control packets addressed to one process (docs/protocol.md, "Freshness, replay and
 * binding"). check() keeps no state; commit() records an accepted message. In order: key, tag
 * (nothing is learned from a packet that fails it), target id, freshness, start, replay window.
 */
export class ControlVerifier {
  /** This process's own sender id: the target id that peers who know us write. */
  readonly ownId: number;
  readonly #keys = new Map<number, Buffer>();
  readonly #peers = new Map<number, PeerWindows>();
  readonly #clock: TimeSource;
  readonly #startMs: number;
  /** Highest timestamp of any sender whose window was forgotten (the table was full). */
  #forgottenUpToUs = 0;

  constructor(keys: readonly ControlKey[], options: { ownId: number; clock?: TimeSource }) {
    for (const key of keys) {
      this.#keys.set(key.keyId, key.key);
    }
    this.ownId = options.ownId;
    this.#clock = options.clock ?? systemTime;
    this.#startMs = this.#clock.nowMs();
  }

  /** Senders whose replay windows are kept. */
  get peerCount(): number {
    return this.#peers.size;
  }

  /**
   * When this process started, on the wall clock as it reads now: now minus the monotonic time
   * since the start, so a correction of the clock moves both alike.
   */
  startWallUs(): number {
    return this.#clock.wallUs() - Math.round((this.#clock.nowMs() - this.#startMs) * 1000);
  }

  /** Checks a packet whose header and trailer decoded as message; undefined when acceptable. */
  check(packet: Buffer, message: Stamped): AuthFailure | undefined {
    const { auth, timestampUs } = message;
    const key = this.#keys.get(auth.keyId);
    if (key === undefined) {
      return 'unknown-key';
    }
    const actual = packet.subarray(packet.length - authTagBytes);
    if (actual.length !== authTagBytes || !timingSafeEqual(tag(key, packet), actual)) {
      return 'bad-tag';
    }
    if (auth.targetId !== 0 && auth.targetId !== this.ownId) {
      return 'wrong-target'; // meant for another server, or for this one before a restart
    }
    if (auth.senderId === this.ownId) {
      return 'own-message'; // our own message sent back to us (looped, or replayed): never answered
    }
    const nowUs = this.#clock.wallUs();
    if (Math.abs(timestampUs - nowUs) > replayFreshnessMs * 1000) {
      return 'stale';
    }
    if (auth.targetId === 0 && timestampUs < this.startWallUs()) {
      return 'before-start'; // sent before this process existed: a capture from an earlier life
    }
    const peer = this.#peers.get(auth.senderId);
    if (peer === undefined ? timestampUs <= this.#forgottenUpToUs : peer.of(auth).seen(auth.counter)) {
      return 'replayed';
    }
    return undefined;
  }

  /** Records a message that check() accepted: its counter enters its sender's window. */
  commit(message: Stamped): void {
    const senderId = message.auth.senderId;
    const peer = this.#peers.get(senderId) ?? new PeerWindows();
    peer.of(message.auth).accept(message.auth.counter);
    peer.highestTimestampUs = Math.max(peer.highestTimestampUs, message.timestampUs);
    this.#peers.delete(senderId);
    this.#peers.set(senderId, peer);
    if (this.#peers.size > replayPeersMax) {
      const [oldestId, oldest] = this.#peers.entries().next().value as [number, PeerWindows];
      this.#peers.delete(oldestId);
      // Its messages up to here could be replayed to us now: refuse them from unknown senders.
      this.#forgottenUpToUs = Math.max(this.#forgottenUpToUs, oldest.highestTimestampUs);
    }
  }

  /** check() and, when it passes, commit(). */
  verify(packet: Buffer, message: Stamped): AuthFailure | undefined {
    const failure = this.check(packet, message);
    if (failure === undefined) {
      this.commit(message);
    }
    return failure;
  }
}

/**
 * addressKey() of the addresses seen lately: every NACK, REPAIR and seal looks its peer up, and
 * the peers are few, so the parse runs once per address instead of once per packet. Bounded by
 * replayPeersMax (the oldest entry goes first), like the peers it serves.
 */
const addressKeys = new Map<string, string | undefined>();

/** An IP address as comparable text (family, 16 bytes in hex); an IPv4-mapped IPv6 one as IPv4. */
function addressKey(address: string): string | undefined {
  if (addressKeys.has(address)) {
    return addressKeys.get(address);
  }
  const key = parseAddressKey(address);
  addressKeys.set(address, key);
  if (addressKeys.size > replayPeersMax) {
    const oldest = addressKeys.keys().next().value;
    if (oldest !== undefined) {
      addressKeys.delete(oldest);
    }
  }
  return key;
}

function parseAddressKey(address: string): string | undefined {
  const plain = address.replace(/%.*$/, ''); // an IPv6 zone names the interface, not the host
  const text = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(plain)?.[1] ?? plain; // as a dual-stack socket reports it
  if (!isIPv4(text) && !isIPv6(text)) {
    return undefined;
  }
  const bytes = Buffer.alloc(16);
  let family = writeAddress(bytes, 0, text);
  if (
    family === 6 &&
    bytes.subarray(0, 10).every((byte) => byte === 0) &&
    bytes.readUInt16BE(10) === 0xffff
  ) {
    bytes.copy(bytes, 0, 12, 16); // ::ffff:102:304 is 1.2.3.4 too
    bytes.fill(0, 4);
    family = 4;
  }
  return `${family}/${bytes.toString('hex')}`;
}

/** True when two endpoints name the same address and port, however the addresses are written. */
export function sameEndpoint(a: PeerEndpoint, b: PeerEndpoint): boolean {
  const key = addressKey(a.address);
  return a.port === b.port && key !== undefined && key === addressKey(b.address);
}

function endpointKey(endpoint: PeerEndpoint): string | undefined {
  const key = addressKey(endpoint.address);
  return key === undefined ? undefined : `${key}/${endpoint.port}`;
}

function isWildcard(address: string): boolean {
  return address === '0.0.0.0' || address === '::';
}

/** Addresses of this host's interfaces, for a socket bound to a wildcard address. */
function hostAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((entry) => entry.address));
}

/** A control message as the channel sees it: its header, its trailer, the fields it binds. */
export type Sealed = Header & {
  readonly auth: AuthTrailer;
  /** NACK: where the requester takes REPAIRs. */
  readonly replyTo?: PeerEndpoint;
  /** SETUP: the server it is for. */
  readonly target?: PeerEndpoint;
  /** ANNOUNCE: where the announcing server takes NACKs (with port). */
  readonly address?: string;
  /** ANNOUNCE: the port it takes NACKs at; SETUP: the group's port. */
  readonly port?: number;
};

interface LearnedPeer {
  senderId: number;
  timestampUs: number;
  heardAtMs: number;
}

/** Settings of a control channel. */
export interface ControlChannelOptions {
  /** This process's sender id (random when not given; tests pin it). */
  readonly senderId?: number;
  readonly clock?: TimeSource;
  /**
   * The endpoints peers reach this process at: its control socket and the address it announces.
   * A SETUP must name one of them; a wildcard address stands for any address of this host. The
   * first is the one an introduction announces.
   */
  readonly self?: () => readonly PeerEndpoint[];
}

/**
 * One process's end of the authenticated control plane (docs/protocol.md, "Freshness, replay and
 * binding"). It seals each message for the peer it goes to, naming that peer's sender id as the
 * target once learned; it accepts a message only when it is authentic, fresh, not replayed, meant
 * for this process, and — NACK — sent from the address it asks to be answered at, or — SETUP —
 * naming this server. It learns peers' sender ids from the messages it accepts.
 */
export class ControlChannel {
  readonly senderId: number;
  readonly #sealer: ControlSealer;
  readonly #verifier: ControlVerifier;
  readonly #clock: TimeSource;
  readonly #self: () => readonly PeerEndpoint[];
  readonly #learned = new Map<string, LearnedPeer>();

  constructor(keys: readonly ControlKey[], options: ControlChannelOptions = {}) {
    const [sealingKey] = keys;
    assert.ok(sealingKey !== undefined, 'a control channel needs a key');
    this.#clock = options.clock ?? systemTime;
    this.#sealer = new ControlSealer(sealingKey, {
      clock: this.#clock,
      ...(options.senderId === undefined ? {} : { senderId: options.senderId }),
    });
    this.senderId = this.#sealer.senderId;
    this.#verifier = new ControlVerifier(keys, { ownId: this.senderId, clock: this.#clock });
    this.#self = options.self ?? (() => []);
  }

  /**
   * The sender id learned for a peer's endpoint; 0 when not known, or when the peer has not been
   * heard from for controlPeerSilenceMsMax (it may have restarted under a new id, which a message
   * naming the old one would never reach).
   */
  targetIdOf(peer: PeerEndpoint): number {
    const key = endpointKey(peer);
    const known = key === undefined ? undefined : this.#learned.get(key);
    if (known === undefined || this.#clock.nowMs() - known.heardAtMs > controlPeerSilenceMsMax) {
      return 0;
    }
    return known.senderId;
  }

  /**
   * Seals a packet in place for the peer at `to` (its learned sender id as the target), or for
   * no one in particular (target 0) when `to` is undefined: a multicast.
   */
  seal(packet: Buffer, to?: PeerEndpoint): Buffer {
    return this.#sealer.seal(packet, to === undefined ? 0 : this.targetIdOf(to));
  }

  /** Seals an answer to a message this channel accepted: for the process that sent it. */
  sealReply(packet: Buffer, request: Sealed): Buffer {
    return this.#sealer.seal(packet, request.auth.senderId);
  }

  /**
   * Decodes and verifies a datagram that came from `remote`. On any failure the reason is counted
   * as `${label}-${reason}` and undefined comes back: nothing is kept and nothing is answered.
   */
  accept<T extends Sealed>(
    datagram: Buffer,
    remote: PeerEndpoint,
    decode: (datagram: Buffer) => DecodeResult<T>,
    label: string,
    drop: (reason: string) => void,
  ): T | undefined {
    const decoded = decode(datagram);
    if (!decoded.ok) {
      drop(`${label}-${decoded.reason}`);
      return undefined;
    }
    const message = decoded.value;
    const failure = this.#verifier.check(datagram, message) ?? this.#checkBinding(message, remote);
    if (failure !== undefined) {
      drop(`${label}-${failure}`);
      return undefined;
    }
    this.#verifier.commit(message);
    this.#learn(remote, message);
    if (message.type === PacketType.announce && message.address !== undefined && message.port !== undefined) {
      this.#learn({ address: message.address, port: message.port }, message);
    }
    return message;
  }

  /**
   * What a retransmit server sends a requester whose NACK did not name it (target id 0): an
   * ANNOUNCE of no sessions, sealed for the requester, so it learns our sender id. At 92 bytes it
   * is smaller than any NACK (100 bytes at least): an unproven request is never amplified.
   */
  introduction(request: Sealed): Buffer {
    const [announced] = this.#self();
    assert.ok(announced !== undefined, 'an introduction needs the announced endpoint');
    const packet = encodeAnnounce(
      { sessionId: 0, sequence: 0, timestampUs: 0 },
      { address: announced.address, port: announced.port, sessions: [] },
    );
    return this.sealReply(packet, request);
  }

  #checkBinding(message: Sealed, remote: PeerEndpoint): AuthFailure | undefined {
    if (
      message.type === PacketType.nack &&
      (message.replyTo === undefined || !sameEndpoint(message.replyTo, remote))
    ) {
      return 'reply-mismatch'; // answers go only to the address that signed the request
    }
    if (
      message.type === PacketType.setup &&
      (message.target === undefined || !this.#isSelf(message.target))
    ) {
      return 'wrong-endpoint';
    }
    return undefined;
  }

  #isSelf(target: PeerEndpoint): boolean {
    return this.#self().some(
      (own) =>
        own.port === target.port &&
        (sameEndpoint(own, target) ||
          (isWildcard(own.address) &&
            hostAddresses().some((address) => sameEndpoint({ address, port: own.port }, target)))),
    );
  }

  /**
   * Remembers which sender id speaks for an endpoint. Another id replaces the one known only when
   * its message is newer, or when the known one has been silent for the freshness window — so a
   * replayed message of a server's earlier life cannot undo what its current one taught us — or
   * when the known one is silent past controlPeerSilenceMsMax (we name no target and ask for an
   * introduction) and the message is sealed for us: it comes from the peer's present life, even if
   * the old one stamped later times (its clock was ahead before a restart; test/sim/found.md #7).
   */
  #learn(endpoint: PeerEndpoint, message: Sealed): void {
    const key = endpointKey(endpoint);
    if (key === undefined || isWildcard(endpoint.address)) {
      return;
    }
    const nowMs = this.#clock.nowMs();
    const known = this.#learned.get(key);
    const { senderId } = message.auth;
    if (known !== undefined && known.senderId === senderId) {
      known.timestampUs = Math.max(known.timestampUs, message.timestampUs);
      known.heardAtMs = nowMs;
    } else if (
      known === undefined ||
      message.timestampUs > known.timestampUs ||
      nowMs - known.heardAtMs > replayFreshnessMs ||
      (message.auth.targetId === this.senderId && nowMs - known.heardAtMs > controlPeerSilenceMsMax)
    ) {
      this.#learned.set(key, { senderId, timestampUs: message.timestampUs, heardAtMs: nowMs });
    }
    const entry = this.#learned.get(key);
    this.#learned.delete(key);
    if (entry !== undefined) {
      this.#learned.set(key, entry);
    }
    if (this.#learned.size > replayPeersMax) {
      const oldest = this.#learned.keys().next().value;
      if (oldest !== undefined) {
        this.#learned.delete(oldest);
      }
    }
  }
}
