/**
 * Authentication of control messages between an operator's servers (docs/protocol.md,
 * "Authentication"): HMAC-SHA-256 truncated to 128 bits over the whole packet before the tag, a
 * per-sender counter in microseconds that must be fresh and never repeat (replay window), and
 * keys named by a 32-bit key id derived from the key itself.
 */
import { createHash, createHmac, randomInt, timingSafeEqual } from 'node:crypto';
import { replayFreshnessMs, replayPeersMax, replayWindowCountersMax, secretFileBytesMax } from '../limits.js';
import { nowMicroseconds } from '../net/clock.js';
import { readBoundedFile } from '../net/files.js';
import {
  type AuthTrailer,
  authOffsetCounter,
  authOffsetKeyId,
  authOffsetSenderId,
  authOffsetTag,
  authTagBytes,
  authTrailerBytes,
} from '../protocol/control.js';
import type { DecodeResult } from '../protocol/errors.js';

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

/** Seals control packets as one sender: fills the trailer and computes the tag in place. */
export class ControlSealer {
  readonly senderId: number;
  readonly #key: ControlKey;
  readonly #clockUs: () => number;
  #lastCounter = 0;

  constructor(key: ControlKey, options: { senderId?: number; clockUs?: () => number } = {}) {
    this.#key = key;
    this.senderId = options.senderId ?? randomInt(1, 0xffff_ffff);
    this.#clockUs = options.clockUs ?? nowMicroseconds;
  }

  /** Writes key id, sender id, a fresh counter and the tag into the packet's trailer. */
  seal(packet: Buffer): Buffer {
    const at = packet.length - authTrailerBytes;
    const counter = Math.max(this.#clockUs(), this.#lastCounter + 1);
    this.#lastCounter = counter;
    packet.writeUInt32BE(this.#key.keyId, at + authOffsetKeyId);
    packet.writeUInt32BE(this.senderId, at + authOffsetSenderId);
    packet.writeUInt32BE(Math.floor(counter / 0x1_0000_0000), at + authOffsetCounter);
    packet.writeUInt32BE(counter >>> 0, at + authOffsetCounter + 4);
    tag(this.#key.key, packet).copy(packet, at + authOffsetTag);
    return packet;
  }
}

/** Why a control message was not accepted. */
export type AuthFailure = 'unknown-key' | 'bad-tag' | 'stale' | 'replayed';

interface ReplayState {
  highest: number;
  recent: number[];
}

/**
 * Verifies control packets: the tag first (no state is kept for a sender that fails it), then
 * freshness against our clock, then the per-sender replay window.
 */
export class ControlVerifier {
  readonly #keys = new Map<number, Buffer>();
  readonly #peers = new Map<number, ReplayState>();
  readonly #clockUs: () => number;

  constructor(keys: readonly ControlKey[], options: { clockUs?: () => number } = {}) {
    for (const key of keys) {
      this.#keys.set(key.keyId, key.key);
    }
    this.#clockUs = options.clockUs ?? nowMicroseconds;
  }

  /** Senders whose replay windows are kept. */
  get peerCount(): number {
    return this.#peers.size;
  }

  /** Checks a packet whose trailer decoded as auth; undefined when accepted. */
  verify(packet: Buffer, auth: AuthTrailer): AuthFailure | undefined {
    const key = this.#keys.get(auth.keyId);
    if (key === undefined) {
      return 'unknown-key';
    }
    const expected = tag(key, packet);
    const actual = packet.subarray(packet.length - authTagBytes);
    if (actual.length !== authTagBytes || !timingSafeEqual(expected, actual)) {
      return 'bad-tag';
    }
    if (Math.abs(auth.counter - this.#clockUs()) > replayFreshnessMs * 1000) {
      return 'stale';
    }
    const state = this.#peers.get(auth.senderId);
    if (state === undefined) {
      this.#remember(auth.senderId, { highest: auth.counter, recent: [auth.counter] });
      return undefined;
    }
    const floor = state.recent.length >= replayWindowCountersMax ? (state.recent[0] ?? 0) : 0;
    if (auth.counter <= floor || state.recent.includes(auth.counter)) {
      return 'replayed';
    }
    state.recent.push(auth.counter);
    state.recent.sort((a, b) => a - b);
    if (state.recent.length > replayWindowCountersMax) {
      state.recent.shift();
    }
    state.highest = Math.max(state.highest, auth.counter);
    this.#remember(auth.senderId, state);
    return undefined;
  }

  #remember(senderId: number, state: ReplayState): void {
    this.#peers.delete(senderId);
    this.#peers.set(senderId, state);
    if (this.#peers.size > replayPeersMax) {
      const oldest = this.#peers.keys().next().value;
      if (oldest !== undefined) {
        this.#peers.delete(oldest);
      }
    }
  }
}

/**
 * Decodes a control message and verifies its trailer. On either failure the reason is counted as
 * `${label}-${reason}` and undefined comes back: nothing is kept and nothing is answered.
 */
export function acceptControl<T extends { readonly auth: AuthTrailer }>(
  datagram: Buffer,
  decode: (datagram: Buffer) => DecodeResult<T>,
  verifier: ControlVerifier,
  label: string,
  drop: (reason: string) => void,
): T | undefined {
  const decoded = decode(datagram);
  if (!decoded.ok) {
    drop(`${label}-${decoded.reason}`);
    return undefined;
  }
  const failure = verifier.verify(datagram, decoded.value.auth);
  if (failure !== undefined) {
    drop(`${label}-${failure}`);
    return undefined;
  }
  return decoded.value;
}
