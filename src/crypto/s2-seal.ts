/**
 * The sealed repaired group S2 (flow A; docs/protocol.md, "SEALED"; docs/security.md, "S2").
 *
 * A repair server that holds an S2 key puts every datagram it re-emits on S2 — DATA, and the
 * DESCRIPTOR, HEARTBEAT and END it relays — whole inside a SEALED envelope: a fresh 32-byte header
 * (type 12, the S2 key epoch, the envelope counter as its sequence, the server's sender id as its
 * incarnation) as associated data, then the datagram encrypted with AES-256-GCM and a 16-byte tag.
 * The nonce is never random and never reused:
 *
 *   nonce = sender id (32 bits) || S2 key epoch (16 bits) || 0 (16 bits) || envelope counter (32 bits)
 *
 * The sender id is drawn afresh every time a repair server starts, and the repair controller hands
 * every module it starts a fresh random key, so a restart uses a new key and nonce space; within
 * one key the counter only goes up and a sealer refuses to pass 2^32 - 1.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  decodeHeader,
  headerBytes,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  PacketType,
  writeHeaderFields,
} from '../protocol/packet.js';
import { sealedCarriedBytesMax, sealedTagBytes } from '../protocol/sizes.js';
import { type AeadContext, createAeadContext } from './aead-engine.js';
import { CipherError } from './errors.js';
import type { ReceiverProtection, ReceiverProtectionStats } from './restricted-session.js';
import { aeadNonceBytes, aeadTagBytes, writePacketNonce } from './suites.js';

/** The suite of S2: one, so an agent never negotiates. */
export const s2SuiteName = 'aes-256-gcm' as const;
/** Bytes of an S2 key. */
export const s2KeyBytes = 32;
/** Envelopes one key seals at most (the counter is 32 bits and never wraps). */
const envelopeCounterMax = 0xffff_ffff;

/** One generation of S2's key. */
export interface S2Key {
  /** 1-65535; the key of a later generation has another epoch. */
  readonly epoch: number;
  /** 32 bytes. */
  readonly key: Buffer;
}

/** A fresh random S2 key for an epoch. */
export function newS2Key(epoch: number): S2Key {
  return { epoch: checkEpoch(epoch), key: randomBytes(s2KeyBytes) };
}

/** The epoch after this one: 1-65535, then 1 again (the key is new each time). */
export function nextS2Epoch(epoch: number): number {
  return epoch >= 0xffff ? 1 : epoch + 1;
}

/** The key as the grant carries it: base64url of the 32 bytes. */
export function formatS2Secret(key: S2Key): string {
  return key.key.toString('base64url');
}

/** A key from a grant's fields; CipherError naming what is wrong. */
export function parseS2Key(epoch: number, secret: string, field: string): S2Key {
  const key = Buffer.from(secret, 'base64url');
  if (key.length !== s2KeyBytes || key.toString('base64url') !== secret) {
    throw new CipherError(`${field}: the S2 key is not ${s2KeyBytes} bytes of base64url`);
  }
  return { epoch: checkEpoch(epoch, field), key };
}

/**
 * Reads an S2 key file (`gatecast repair --s2-key-file`, `gatecast agent --s2-key-file`): one line,
 * `EPOCH:KEY` with KEY 64 hex digits, or KEY alone for epoch 1. CipherError names the file.
 */
export function readS2KeyFile(path: string, field: string): S2Key {
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (error) {
    throw new CipherError(`${field}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? error}`);
  }
  const match = /^(?:(\d{1,5}):)?([0-9a-fA-F]{64})$/.exec(text);
  if (match === null) {
    throw new CipherError(`${field}: ${path} does not hold EPOCH:KEY with KEY 64 hex digits (32 bytes)`);
  }
  return { epoch: checkEpoch(Number(match[1] ?? '1'), field), key: Buffer.from(match[2] ?? '', 'hex') };
}

function checkEpoch(epoch: number, field = 'S2 key epoch'): number {
  if (!Number.isInteger(epoch) || epoch < 1 || epoch > 0xffff) {
    throw new CipherError(`${field}: key epoch ${epoch} is not 1-65535`);
  }
  return epoch;
}

function checkKey(key: S2Key): void {
  if (key.key.length !== s2KeyBytes) {
    throw new CipherError(`an S2 key is ${s2KeyBytes} bytes, not ${key.key.length}`);
  }
  checkEpoch(key.epoch);
}

// The envelope's tag is the suites' pinned tag.
assert.equal(sealedTagBytes, aeadTagBytes);

/**
 * Seals datagrams for S2 under the current key. `rotate` installs the next key: every envelope
 * sealed after it is under the new epoch only.
 */
export class S2Sealer {
  readonly #senderId: number;
  #key: { epoch: number; context: AeadContext };
  #counter = 0;
  readonly #nonce = Buffer.alloc(aeadNonceBytes);

  constructor(senderId: number, key: S2Key) {
    // 1 to 2^32 - 1, as the nonce holds it: 2^32 would be written as 0, and 2^32 + 7 as sender 7's.
    if (!Number.isInteger(senderId) || senderId < 1 || senderId > 0xffff_ffff) {
      throw new CipherError(`an S2 sealer needs a sender id (1 to 2^32 - 1) for its nonces, not ${senderId}`);
    }
    checkKey(key);
    this.#senderId = senderId >>> 0;
    this.#key = { epoch: key.epoch, context: createAeadContext(s2SuiteName, key.key, true) };
  }

  /** The epoch envelopes are sealed under now. */
  get epoch(): number {
    return this.#key.epoch;
  }

  /** Installs a new key under another epoch; the old key is wiped. */
  rotate(key: S2Key): void {
    checkKey(key);
    if (key.epoch === this.#key.epoch) {
      throw new CipherError(`S2 key epoch ${key.epoch} is in use; a new key needs a new epoch`);
    }
    this.#key.context.dispose();
    this.#key = { epoch: key.epoch, context: createAeadContext(s2SuiteName, key.key, true) };
    this.#counter = 0;
  }

  /**
   * Seals one datagram into a new SEALED envelope stamped with nowUs. Throws CipherError when the
   * datagram is too large or the key has sealed 2^32 - 1 envelopes (a new epoch is needed).
   */
  seal(datagram: Buffer, nowUs: number): Buffer {
    // One seal at a time: a getter or method of the datagram that seals again from inside this
    // call would move the counter and the nonce this call then seals under to the inner one's.
    if (this.#sealing) {
      throw new CipherError(
        'an S2 sealer seals one envelope at a time: seal was called again from inside seal',
      );
    }
    this.#sealing = true;
    try {
      return this.#sealOne(datagram, nowUs);
    } finally {
      this.#sealing = false;
    }
  }
  #sealing = false;

  #sealOne(datagram: Buffer, nowUs: number): Buffer {
    if (datagram.length > sealedCarriedBytesMax) {
      throw new CipherError(`a datagram of ${datagram.length} bytes does not fit a SEALED envelope`);
    }
    if (this.#counter >= envelopeCounterMax) {
      throw new CipherError(`S2 key epoch ${this.#key.epoch} has sealed 2^32 - 1 envelopes`);
    }
    this.#counter++;
    const sessionId = datagram.length >= headerBytes ? datagram.readUInt32BE(offsetSessionId) : 0;
    const bodyLength = datagram.length + sealedTagBytes;
    const out = Buffer.allocUnsafe(headerBytes + bodyLength);
    writeHeaderFields(
      out,
      PacketType.sealed,
      sessionId,
      this.#counter,
      nowUs,
      this.#key.epoch,
      bodyLength,
      this.#senderId,
    );
    writePacketNonce(this.#nonce, this.#senderId, this.#key.epoch, this.#counter);
    this.#key.context.seal(
      this.#nonce,
      out.subarray(0, headerBytes),
      datagram,
      out.subarray(headerBytes, headerBytes + datagram.length),
      out.subarray(headerBytes + datagram.length),
    );
    return out;
  }
}

/** Why an envelope was not opened; counted per reason by the agent. */
export type S2OpenFailure = 'malformed' | 'no-key' | 'bad-tag';

/** Opens SEALED envelopes under the S2 keys a grant gave; keeps the latest few epochs. */
export class S2Opener {
  readonly #keys = new Map<number, AeadContext>();
  readonly #keysMax: number;
  readonly #nonce = Buffer.alloc(aeadNonceBytes);

  /** keysMax: epochs held at once (the oldest is wiped when a newer one comes). */
  constructor(keysMax = 4) {
    this.#keysMax = keysMax;
  }

  /** Installs an epoch's key (again: no change). */
  setKey(key: S2Key): void {
    checkKey(key);
    this.#keys.get(key.epoch)?.dispose();
    this.#keys.delete(key.epoch);
    this.#keys.set(key.epoch, createAeadContext(s2SuiteName, key.key, false));
    while (this.#keys.size > this.#keysMax) {
      const oldest = this.#keys.keys().next().value;
      if (oldest === undefined) {
        break;
      }
      this.#keys.get(oldest)?.dispose();
      this.#keys.delete(oldest);
    }
  }

  /** True when the epoch's key is held. */
  hasKey(epoch: number): boolean {
    return this.#keys.has(epoch);
  }

  /** The epoch an envelope is sealed under, or undefined when it is not a well-formed envelope. */
  static epochOf(envelope: Buffer): number | undefined {
    const header = decodeHeader(envelope);
    if (!header.ok || header.value.type !== PacketType.sealed) {
      return undefined;
    }
    return envelope.length < headerBytes + sealedTagBytes + headerBytes
      ? undefined
      : envelope.readUInt16BE(offsetKeyEpoch);
  }

  /** Opens an envelope: the datagram it carries (a copy), or why not. Nothing of a failure is returned. */
  open(envelope: Buffer): Buffer | S2OpenFailure {
    const epoch = S2Opener.epochOf(envelope);
    if (epoch === undefined) {
      return 'malformed';
    }
    const key = this.#keys.get(epoch);
    if (key === undefined) {
      return 'no-key';
    }
    const header = envelope.subarray(0, headerBytes);
    writePacketNonce(
      this.#nonce,
      header.readUInt32BE(offsetIncarnation),
      epoch,
      header.readUInt32BE(offsetSequence),
    );
    const bodyEnd = envelope.length - sealedTagBytes;
    const body = Buffer.allocUnsafe(bodyEnd - headerBytes);
    if (
      !key.open(
        this.#nonce,
        header,
        envelope.subarray(headerBytes, bodyEnd),
        envelope.subarray(bodyEnd),
        body,
      )
    ) {
      return 'bad-tag';
    }
    return body;
  }
}

/**
 * A receiver's filter for a sealed S2 (the demo's receiver of the repaired copy): opens each
 * envelope under the key and passes on what it carries; anything else is dropped and counted.
 */
export function s2ReceiverProtection(key: S2Key): ReceiverProtection {
  const opener = new S2Opener();
  opener.setKey(key);
  const stats: ReceiverProtectionStats = {
    keysAccepted: 1,
    keysRepeated: 0,
    keysRejected: {},
    keysRejectedWhy: {},
    packetsOpened: 0,
    packetsBadTag: 0,
    packetsHeld: 0,
    packetsDropped: 0,
    packetsClear: 0,
    packetsMalformed: 0,
    groupKeysAsked: 0,
    groupKeysNotAsked: 0,
    signaturesUnchecked: 0,
    rekeysApplied: 0,
    rekeysIgnored: {},
  };
  return {
    stats,
    filter(datagram, pass) {
      const opened = opener.open(datagram);
      if (Buffer.isBuffer(opened)) {
        stats.packetsOpened++;
        pass(opened);
      } else if (opened === 'bad-tag') {
        stats.packetsBadTag++;
      } else {
        stats.packetsDropped++;
      }
    },
  };
}
