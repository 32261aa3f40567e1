/**
 * The packet AEAD engine: seals and opens one packet at a time under a key held as a context
 * (docs/security.md, "The packet engine").
 *
 * Two engines compute the same bytes:
 * - `openssl-evp`: the addon in native/ (built by `npm ci`), which calls OpenSSL's EVP AEAD on the
 *   OpenSSL node:crypto runs on, through one context per key that is re-initialised with each
 *   packet's nonce and writes into buffers the caller owns. About 1 µs of CPU for a 1,400-byte
 *   packet.
 * - `node:crypto`: a cipher object per packet (Node 20 cannot re-nonce one), about 8 µs and three
 *   buffers of garbage a packet. It is the reference the addon is checked against, and the engine
 *   whenever the addon is not built, fails its check, or GATECAST_AEAD_ENGINE=node:crypto.
 *
 * Before the addon is used its output is compared with node:crypto's for every suite (seal, open,
 * and a tampered tag refused); a difference leaves node:crypto in use and says why.
 *
 * Both pin the tag to 16 bytes and take a 12-byte nonce; nonce discipline (never random, never
 * reused) is the caller's (src/crypto/suites.ts, src/crypto/s2-seal.ts).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  createSecretKey,
  type KeyObject,
  verify,
} from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { offsetBodyLength, offsetIncarnation, offsetKeyEpoch, offsetSequence } from '../protocol/packet.js';
import { headerBytes } from '../protocol/sizes.js';
import { AeadEngineError, CipherError } from './errors.js';

/** The AEAD ciphers the engine knows (the suites of src/crypto/suites.ts). */
export type AeadName = 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';

/** AEAD tag length, pinned: shorter tags are refused (docs/security.md). suites.ts takes it from here. */
export const tagBytes = 16;
/** AEAD nonce length: 96 bits, the length all three suites are specified for. */
export const nonceBytes = 12;
/** Each suite's key length, in bytes. */
export const keyBytesOf: Readonly<Record<AeadName, 16 | 32>> = {
  'aes-128-gcm': 16,
  'aes-256-gcm': 32,
  'chacha20-poly1305': 32,
};

/** A DATA body's largest length: the header's length field is 16 bits. */
const bodyLengthFieldMax = 0xffff;

/**
 * A DATA packet's nonce from its header: incarnation (4 bytes) ‖ key epoch (2) ‖ 0 (2) ‖ sequence
 * (4), as writePacketNonce (src/crypto/suites.ts) writes it and the addon reads it (openPacket).
 */
function packetNonceOf(header: Buffer): Buffer {
  const nonce = Buffer.alloc(nonceBytes);
  header.copy(nonce, 0, offsetIncarnation, offsetIncarnation + 4);
  header.copy(nonce, 4, offsetKeyEpoch, offsetKeyEpoch + 2);
  header.copy(nonce, 8, offsetSequence, offsetSequence + 4);
  return nonce;
}

/** One key, ready to seal or open packets. */
export interface AeadContext {
  /** Seals `plain` into `out` (the same length) and writes the 16-byte tag into `tag`. */
  seal(nonce: Buffer, aad: Buffer, plain: Buffer, out: Buffer, tag: Buffer): void;
  /**
   * Opens `sealed` into `out` (the same length). False when the tag does not verify; `out` then
   * holds zeros, never unauthenticated plaintext.
   */
  open(nonce: Buffer, aad: Buffer, sealed: Buffer, tag: Buffer, out: Buffer): boolean;
  /**
   * Seals a whole datagram in one call. `out[0, aadBytes)` is the associated data: the caller has
   * written the sealed datagram's header there (in place, `out` is `plain`). `plain[aadBytes, n)`
   * is sealed into `out[aadBytes, n)` and the tag written to `out[n, n + 16)`, n = plain.length.
   * With `hashOut`, the first `hashLength` bytes of the SHA-256 of `out[0, n + 16)` (the datagram
   * as it travels) go into `hashOut` at `hashOffset`: a manifest's hash, taken while the datagram
   * is still in the cache.
   */
  sealDatagram(
    nonce: Buffer,
    plain: Buffer,
    out: Buffer,
    aadBytes: number,
    hashOut?: Buffer,
    hashOffset?: number,
    hashLength?: number,
  ): void;
  /**
   * Opens a whole sealed datagram: `sealed[0, aadBytes)` is the associated data, its last 16
   * bytes the tag, and the plaintext of what lies between goes into `out` at `outOffset` (in
   * place: `out` is `sealed`, `outOffset` is `aadBytes`). False when the tag does not verify; that
   * range of `out` then holds zeros.
   */
  openDatagram(nonce: Buffer, sealed: Buffer, aadBytes: number, out: Buffer, outOffset: number): boolean;
  /**
   * sealDatagram for a DATA datagram: its 32-byte header is the associated data and holds the
   * packet nonce's fields (writePacketNonce in src/crypto/suites.ts); it is copied into `out` with
   * the sealed body's length. `nonce` is the one the caller checked was never used: the header is
   * read once and the call refused (CipherError, nothing written) unless its fields make that
   * nonce, so memory another thread changes, or a view that reads differently to the caller's
   * checks, never seals under an unchecked nonce. The packet path's one call a packet at the source.
   */
  sealPacket(
    nonce: Buffer,
    plain: Buffer,
    out: Buffer,
    hashOut?: Buffer,
    hashOffset?: number,
    hashLength?: number,
  ): void;
  /**
   * Opens a sealed DATA datagram in place, the nonce taken from its header: on success the
   * header's body length is made the plaintext's and the plain datagram's length returned; -1
   * when the tag does not verify (the body then holds zeros). The receivers' one call a packet.
   * A datagram shorter than a header and a tag, or whose body is longer than the header's 16-bit
   * length names, is a CipherError and is not written.
   */
  openPacket(datagram: Buffer): number;
  /** Forgets the key now (a native context is freed and its key schedule wiped). */
  dispose(): void;
}

/** Which engine is in use, and why when it is not the addon. */
export interface AeadEngineInfo {
  readonly name: 'openssl-evp' | 'node:crypto';
  /** The OpenSSL the addon runs on (openssl-evp only). */
  readonly openssl?: string;
  /** Why node:crypto is in use (node:crypto only). */
  readonly reason?: string;
}

/** The addon's sealPacket, once its handle is given. */
type SealPacketCall = (
  nonce: Buffer,
  plain: Buffer,
  out: Buffer,
  hashOut: Buffer | null,
  hashOffset: number,
  hashLength: number,
) => void;

interface NativeAead {
  create(name: string, key: Buffer, encrypt: boolean): unknown;
  seal(handle: unknown, nonce: Buffer, aad: Buffer, plain: Buffer, out: Buffer, tag: Buffer): void;
  open(handle: unknown, nonce: Buffer, aad: Buffer, sealed: Buffer, tag: Buffer, out: Buffer): boolean;
  dispose(handle: unknown): void;
  digest(input: Buffer, out: Buffer, offset: number, length: number): void;
  digestEquals(input: Buffer, expected: Buffer, offset: number, length: number): boolean;
  sealDatagram(
    handle: unknown,
    nonce: Buffer,
    plain: Buffer,
    out: Buffer,
    aadBytes: number,
    hashOut: Buffer | null,
    hashOffset: number | undefined,
    hashLength: number | undefined,
  ): void;
  openDatagram(
    handle: unknown,
    nonce: Buffer,
    sealed: Buffer,
    aadBytes: number,
    out: Buffer,
    outOffset: number,
  ): boolean;
  sealPacket(handle: unknown, ...call: Parameters<SealPacketCall>): void;
  openPacket(handle: unknown, datagram: Buffer): number;
  /**
   * sealPacket bound to a handle made to seal: the call carries its context, and no handle is
   * checked. Absent from an addon built before it: the calls above are used then (a rebuild that
   * fails keeps the earlier addon in use).
   */
  sealPacketFunction?: (handle: unknown) => SealPacketCall;
  /** openPacket bound to a handle made to open (absent as sealPacketFunction). */
  openPacketFunction?: (handle: unknown) => (datagram: Buffer) => number;
  /**
   * How a handle's packets reach OpenSSL: "provider" (the cipher implementation's own functions)
   * or "evp" (absent from an addon built before it).
   */
  packetPath?: (handle: unknown) => 'provider' | 'evp';
  openssl: string;
  /** libsodium's Ed25519 check, when the addon found libsodium (see sodiumEd25519Verify). */
  ed25519Verify?: (signature: Buffer, message: Buffer, publicKey: Buffer) => boolean;
  /** A libsodium signing key from a 32-byte seed (its public key written to publicOut). */
  ed25519SigningKey?: (seed: Buffer, publicOut: Buffer) => object;
  /** libsodium's Ed25519 signature of message into out at offset. */
  ed25519Sign?: (key: object, message: Buffer, out: Buffer, offset: number) => void;
  /** libsodium's version, with ed25519Verify. */
  sodium?: string;
}

/** Where `npm ci` (scripts/build-native.mjs) leaves the addon, from src/crypto or dist/crypto. */
export const nativeAddonPath = new URL('../../native/build/Release/gatecast_aead.node', import.meta.url)
  .pathname;

/**
 * The SHA-256 of the addon as scripts/build-native.mjs built it (hex, one line). The addon is
 * loaded only when its bytes still hash to it: a truncated or damaged shared object can kill the
 * process inside dlopen (SIGBUS on a page past the end of the file), before any check could run.
 */
export const nativeAddonDigestPath = `${nativeAddonPath}.sha256`;

/** The values GATECAST_AEAD_ENGINE takes; unset or empty: the addon when it is usable, else node:crypto. */
const engineSettings = ['openssl-evp', 'node:crypto'] as const;

function checkLengths(nonce: Buffer, tag: Buffer, input: Buffer, out: Buffer): void {
  if (nonce.length !== nonceBytes || tag.length !== tagBytes || out.length !== input.length) {
    throw new CipherError(
      `AEAD: nonce ${nonce.length} bytes (12 needed), tag ${tag.length} (16), output ${out.length} for ${input.length}`,
    );
  }
}

/** True when two views share a byte of memory. */
function overlapping(a: Buffer, b: Buffer): boolean {
  return (
    a.length > 0 &&
    b.length > 0 &&
    a.buffer === b.buffer &&
    a.byteOffset < b.byteOffset + b.length &&
    b.byteOffset < a.byteOffset + a.length
  );
}

/** True when two views start at the same byte of memory (an in-place call). */
function sameStart(a: Buffer, b: Buffer): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset;
}

/**
 * A Buffer, or any other view, as a Buffer over the same bytes: typed arrays of any width count
 * in bytes and a detached buffer is empty, as the addon takes them. Anything else (a string, an
 * array, null) is a CipherError naming the argument, as the addon refuses it.
 */
function bytesOf(value: unknown, what: string): Buffer {
  if (!ArrayBuffer.isView(value)) {
    throw new CipherError(`AEAD: ${what} must be a Buffer`);
  }
  // A view of its own even for a Buffer, its bounds read once: a getter of the caller's view (a
  // `length` that reads one number to the checks and another after) is never read again between
  // the checks and the writes, as the addon reads a view's bounds once.
  return value.byteLength === 0
    ? Buffer.alloc(0)
    : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

/** A whole number in [0, max]. */
function isIndex(value: number | undefined, max: number): value is number {
  return value !== undefined && Number.isInteger(value) && value >= 0 && value <= max;
}

/** True when out[outStart, outStart + outLength) and a view share a byte of memory (no view made). */
function overlapsRange(view: Buffer, out: Buffer, outStart: number, outLength: number): boolean {
  if (view.length === 0 || outLength === 0 || view.buffer !== out.buffer) {
    return false;
  }
  const start = out.byteOffset + outStart;
  return view.byteOffset < start + outLength && start < view.byteOffset + view.length;
}

/**
 * Why sealDatagram refuses these ranges, or undefined when it takes them (the addon makes the
 * same checks in C; a caller that writes into `out` before the call asks first, so a refused
 * packet leaves its slot and its plaintext as they were): every range inside its buffer, the
 * output the plaintext itself or apart from it, the hash apart from the sealed datagram. Makes
 * no view: a packet's checks cost no allocation.
 */
export function sealDatagramRefusal(
  plain: Buffer,
  out: Buffer,
  aadBytes: number,
  hashOut: Buffer | undefined,
  hashOffset: number | undefined,
  hashLength: number | undefined,
): string | undefined {
  const sealedLength = plain.length + tagBytes;
  if (!isIndex(aadBytes, plain.length) || out.length < sealedLength) {
    return `AEAD: ${aadBytes} bytes of associated data in a ${plain.length}-byte datagram, sealed into ${out.length} bytes`;
  }
  if (!sameStart(out, plain) && overlapsRange(plain, out, 0, sealedLength)) {
    return 'AEAD: the sealed datagram partly overlaps the plaintext';
  }
  if (hashOut === undefined) {
    return undefined;
  }
  if (
    !isIndex(hashLength, sha256Bytes) ||
    hashLength < 1 ||
    !isIndex(hashOffset, hashOut.length - hashLength)
  ) {
    return `SHA-256: ${hashLength} bytes at ${hashOffset} do not fit an output of ${hashOut.length}`;
  }
  if (
    hashOut.buffer === out.buffer &&
    hashOut.byteOffset + hashOffset < out.byteOffset + sealedLength &&
    out.byteOffset < hashOut.byteOffset + hashOffset + hashLength
  ) {
    return 'AEAD: the hash would be written over the sealed datagram';
  }
  return undefined;
}

/** sealDatagram's checks, for the node:crypto engine: the nonce 12 bytes, then sealDatagramRefusal. */
function checkSealDatagram(
  nonce: Buffer,
  plain: Buffer,
  out: Buffer,
  aadBytes: number,
  hashOut: Buffer | undefined,
  hashOffset: number | undefined,
  hashLength: number | undefined,
): void {
  if (nonce.length !== nonceBytes) {
    throw new CipherError(`AEAD: nonce ${nonce.length} bytes (12 needed)`);
  }
  const refusal = sealDatagramRefusal(plain, out, aadBytes, hashOut, hashOffset, hashLength);
  if (refusal !== undefined) {
    throw new CipherError(refusal);
  }
}

/** openDatagram's checks (as checkSealDatagram); returns where the plaintext goes. */
function checkOpenDatagram(
  nonce: Buffer,
  sealed: Buffer,
  aadBytes: number,
  out: Buffer,
  outOffset: number,
): Buffer {
  if (nonce.length !== nonceBytes) {
    throw new CipherError(`AEAD: nonce ${nonce.length} bytes (12 needed)`);
  }
  if (!isIndex(aadBytes, sealed.length - tagBytes)) {
    throw new CipherError(
      `AEAD: a ${sealed.length}-byte datagram holds no ${aadBytes} bytes of associated data and a tag`,
    );
  }
  const bodyLength = sealed.length - tagBytes - aadBytes;
  if (!isIndex(outOffset, out.length - bodyLength)) {
    throw new CipherError(
      `AEAD: ${bodyLength} bytes of plaintext do not fit ${out.length} bytes at ${outOffset}`,
    );
  }
  const target = out.subarray(outOffset, outOffset + bodyLength);
  if (!sameStart(target, sealed.subarray(aadBytes)) && overlapping(target, sealed)) {
    throw new CipherError('AEAD: the plaintext would be written over the sealed datagram');
  }
  return target;
}

/** The addon's error (code GATECAST_ERR_CIPHER) as the CipherError callers expect. */
function asCipherError(error: unknown): Error {
  return error instanceof Error && !(error instanceof CipherError)
    ? new CipherError(`AEAD: ${error.message}`)
    : (error as Error);
}

/** The node:crypto engine: a cipher object per packet. */
function nodeContext(name: AeadName, key: Buffer, encrypt: boolean): AeadContext {
  let secret: KeyObject | undefined = createSecretKey(Buffer.from(key));
  const options = { authTagLength: tagBytes } as const;
  const held = (): KeyObject => {
    if (secret === undefined) {
      throw new CipherError('the AEAD key was disposed');
    }
    return secret;
  };
  return {
    seal(nonce, aad, plain, out, tag) {
      if (!encrypt) {
        throw new CipherError('a context made to open cannot seal');
      }
      checkLengths(nonce, tag, plain, out);
      const cipher = createCipheriv(name as 'aes-256-gcm', held(), nonce, options);
      cipher.setAAD(aad);
      const written = cipher.update(plain).copy(out, 0);
      cipher.final().copy(out, written);
      cipher.getAuthTag().copy(tag, 0);
    },
    open(nonce, aad, sealed, tag, out) {
      if (encrypt) {
        throw new CipherError('a context made to seal cannot open');
      }
      checkLengths(nonce, tag, sealed, out);
      const decipher = createDecipheriv(name as 'aes-256-gcm', held(), nonce, options);
      decipher.setAAD(aad);
      decipher.setAuthTag(tag);
      try {
        const written = decipher.update(sealed).copy(out, 0);
        decipher.final().copy(out, written);
        return true;
      } catch {
        out.fill(0);
        return false;
      }
    },
    sealDatagram(nonceView, plainView, outView, aadBytes, hashView, hashOffset, hashLength) {
      // Arguments as the addon takes them: views by their bytes, no hash for null as for undefined.
      const nonce = bytesOf(nonceView, 'the nonce');
      const plain = bytesOf(plainView, 'the plaintext');
      const out = bytesOf(outView, 'the output');
      const hashOut =
        (hashView as Buffer | null | undefined) == null ? undefined : bytesOf(hashView, 'hashOut');
      checkSealDatagram(nonce, plain, out, aadBytes, hashOut, hashOffset, hashLength);
      const end = plain.length;
      this.seal(
        nonce,
        out.subarray(0, aadBytes),
        plain.subarray(aadBytes),
        out.subarray(aadBytes, end),
        out.subarray(end, end + tagBytes),
      );
      if (hashOut !== undefined) {
        createHash('sha256')
          .update(out.subarray(0, end + tagBytes))
          .digest()
          .copy(hashOut, hashOffset, 0, hashLength);
      }
    },
    openDatagram(nonceView, sealedView, aadBytes, outView, outOffset) {
      const nonce = bytesOf(nonceView, 'the nonce');
      const sealed = bytesOf(sealedView, 'the sealed datagram');
      const out = bytesOf(outView, 'the output');
      const target = checkOpenDatagram(nonce, sealed, aadBytes, out, outOffset);
      const end = sealed.length - tagBytes;
      return this.open(
        nonce,
        sealed.subarray(0, aadBytes),
        sealed.subarray(aadBytes, end),
        sealed.subarray(end),
        target,
      );
    },
    sealPacket(nonceView, plainView, outView, hashView, hashOffset, hashLength) {
      if (!encrypt) {
        throw new CipherError('a context made to open cannot seal');
      }
      // Arguments as the addon takes them: views by their bytes, no hash for null as for undefined.
      const nonce = bytesOf(nonceView, 'the nonce');
      if (nonce.length !== nonceBytes) {
        throw new CipherError(`AEAD: nonce ${nonce.length} bytes (12 needed)`);
      }
      const plain = bytesOf(plainView, 'the plaintext');
      const out = bytesOf(outView, 'the output');
      const hashOut =
        (hashView as Buffer | null | undefined) == null ? undefined : bytesOf(hashView, 'hashOut');
      const sealedLength = plain.length + tagBytes;
      if (plain.length < headerBytes || plain.length - headerBytes + tagBytes > bodyLengthFieldMax) {
        throw new CipherError(`AEAD: a ${plain.length}-byte DATA datagram cannot be sealed`);
      }
      const refusal = sealDatagramRefusal(plain, out, headerBytes, hashOut, hashOffset, hashLength);
      if (refusal !== undefined) {
        throw new CipherError(refusal);
      }
      // The header read once, into a copy of this call's own: the nonce sealed under is the one given.
      const header = Buffer.from(plain.subarray(0, headerBytes));
      if (!packetNonceOf(header).equals(nonce)) {
        throw new CipherError('AEAD: the header names another nonce than the one the sealer checked');
      }
      header.writeUInt16BE(sealedLength - headerBytes, offsetBodyLength);
      // A disposed key is refused before the header is written, as the addon refuses it: asked
      // here, after the arguments' getters ran (one of them may have disposed it), not before.
      held();
      header.copy(out, 0);
      this.sealDatagram(nonce, plain, out, headerBytes, hashOut, hashOffset, hashLength);
    },
    openPacket(datagramView) {
      const datagram = bytesOf(datagramView, 'the sealed datagram');
      if (datagram.length < headerBytes + tagBytes) {
        throw new CipherError(`AEAD: a ${datagram.length}-byte datagram holds no header and tag`);
      }
      if (datagram.length - headerBytes > bodyLengthFieldMax) {
        // No header names such a body (sealPacket seals none): refused before it is opened, as in the addon.
        throw new CipherError(
          `AEAD: a ${datagram.length}-byte datagram has a body longer than its header names`,
        );
      }
      if (!this.openDatagram(packetNonceOf(datagram), datagram, headerBytes, datagram, headerBytes)) {
        return -1;
      }
      const plainLength = datagram.length - tagBytes;
      datagram.writeUInt16BE(plainLength - headerBytes, offsetBodyLength);
      return plainLength;
    },
    dispose() {
      secret = undefined; // a KeyObject cannot be zeroed; it is dropped here and collected
    },
  };
}

function nativeContext(addon: NativeAead, name: AeadName, key: Buffer, encrypt: boolean): AeadContext {
  const handle = addon.create(name, key, encrypt);
  // The packet path's one call, chosen once: bound to this context where the addon can, else the
  // call that checks the handle (an earlier addon; the other direction keeps the addon's refusal).
  const sealPacketCall: SealPacketCall =
    (encrypt ? addon.sealPacketFunction?.(handle) : undefined) ??
    ((...call) => addon.sealPacket(handle, ...call));
  const openPacketCall: (datagram: Buffer) => number =
    (encrypt ? undefined : addon.openPacketFunction?.(handle)) ??
    ((datagram) => addon.openPacket(handle, datagram));
  return {
    seal(nonce, aad, plain, out, tag) {
      checkLengths(nonce, tag, plain, out);
      addon.seal(handle, nonce, aad, plain, out, tag);
    },
    open(nonce, aad, sealed, tag, out) {
      checkLengths(nonce, tag, sealed, out);
      return addon.open(handle, nonce, aad, sealed, tag, out);
    },
    // No checks here: the addon makes them all (every length, range and overlap) and throws; a
    // packet costs one call and no view.
    sealDatagram(nonce, plain, out, aadBytes, hashOut, hashOffset, hashLength) {
      try {
        addon.sealDatagram(
          handle,
          nonce,
          plain,
          out,
          aadBytes,
          hashOut ?? null,
          hashOffset ?? 0,
          hashLength ?? 0,
        );
      } catch (error) {
        throw asCipherError(error);
      }
    },
    openDatagram(nonce, sealed, aadBytes, out, outOffset) {
      try {
        return addon.openDatagram(handle, nonce, sealed, aadBytes, out, outOffset);
      } catch (error) {
        throw asCipherError(error);
      }
    },
    sealPacket(nonce, plain, out, hashOut, hashOffset, hashLength) {
      try {
        sealPacketCall(nonce, plain, out, hashOut ?? null, hashOffset ?? 0, hashLength ?? 0);
      } catch (error) {
        throw asCipherError(error);
      }
    },
    openPacket(datagram) {
      try {
        return openPacketCall(datagram);
      } catch (error) {
        throw asCipherError(error);
      }
    },
    dispose() {
      addon.dispose(handle);
    },
  };
}

/**
 * Known-answer check of the addon against node:crypto, for every suite: the same ciphertext and
 * tag, each engine opens the other's packet, and a flipped tag bit is refused with the output
 * zeroed. Returns what differed, or undefined.
 */
function checkAddon(addon: NativeAead): string | undefined {
  for (const name of Object.keys(keyBytesOf) as AeadName[]) {
    const key = Buffer.alloc(keyBytesOf[name], 0x5a);
    const nonce = Buffer.from('000102030405060708090a0b', 'hex');
    const aad = Buffer.alloc(32, 0xa5);
    const plain = Buffer.alloc(1400);
    for (let index = 0; index < plain.length; index++) {
      plain[index] = (index * 7) & 0xff;
    }
    const reference = { out: Buffer.alloc(plain.length), tag: Buffer.alloc(tagBytes) };
    const candidate = { out: Buffer.alloc(plain.length), tag: Buffer.alloc(tagBytes) };
    nodeContext(name, key, true).seal(nonce, aad, plain, reference.out, reference.tag);
    const sealer = nativeContext(addon, name, key, true);
    sealer.seal(nonce, aad, plain, candidate.out, candidate.tag);
    sealer.dispose();
    if (!candidate.out.equals(reference.out) || !candidate.tag.equals(reference.tag)) {
      return `${name}: the addon sealed other bytes than node:crypto`;
    }
    const opener = nativeContext(addon, name, key, false);
    const opened = Buffer.alloc(plain.length);
    if (!opener.open(nonce, aad, reference.out, reference.tag, opened) || !opened.equals(plain)) {
      return `${name}: the addon did not open what node:crypto sealed`;
    }
    // In place, as receivers open DATA (the plaintext written over the ciphertext).
    const inPlace = Buffer.from(reference.out);
    if (!opener.open(nonce, aad, inPlace, reference.tag, inPlace) || !inPlace.equals(plain)) {
      return `${name}: the addon did not open node:crypto's packet in place`;
    }
    const forged = Buffer.from(reference.tag);
    forged[0] = (forged[0] ?? 0) ^ 1;
    if (opener.open(nonce, aad, reference.out, forged, opened) || opened.some((byte) => byte !== 0)) {
      return `${name}: the addon opened a packet with a flipped tag bit`;
    }
    opener.dispose();
    const back = Buffer.alloc(plain.length);
    if (
      !nodeContext(name, key, false).open(nonce, aad, candidate.out, candidate.tag, back) ||
      !back.equals(plain)
    ) {
      return `${name}: node:crypto did not open what the addon sealed`;
    }
    const differs = checkDatagramCalls(addon, name, key, nonce, Buffer.concat([aad, plain]), aad.length);
    if (differs !== undefined) {
      return `${name}: ${differs}`;
    }
  }
  // SHA-256, whole and cut, at an offset, of an empty input and of one a block long.
  for (const input of [Buffer.alloc(0), Buffer.alloc(64, 0x61), Buffer.alloc(1440, 0x3c)]) {
    const reference = createHash('sha256').update(input).digest();
    for (const [offset, length] of [
      [0, 32],
      [16, 16],
      [5, 1],
    ] as const) {
      const out = Buffer.alloc(offset + length + 3, 0xee);
      addon.digest(input, out, offset, length);
      const expected = Buffer.concat([
        Buffer.alloc(offset, 0xee),
        reference.subarray(0, length),
        Buffer.alloc(3, 0xee),
      ]);
      if (!out.equals(expected)) {
        return `the addon's SHA-256 of ${input.length} bytes differs from node:crypto's`;
      }
      const wrong = Buffer.from(expected);
      wrong[offset + length - 1] = (wrong[offset + length - 1] ?? 0) ^ 1;
      if (
        !addon.digestEquals(input, expected, offset, length) ||
        addon.digestEquals(input, wrong, offset, length)
      ) {
        return `the addon's comparison with a SHA-256 of ${input.length} bytes is wrong`;
      }
    }
  }
  return undefined;
}

/**
 * sealDatagram and openDatagram of the addon against node:crypto's: the same sealed datagram and
 * hash, apart and in place; opened apart and in place; a flipped tag bit refused with zeros left.
 */
function checkDatagramCalls(
  addon: NativeAead,
  name: AeadName,
  key: Buffer,
  nonce: Buffer,
  datagram: Buffer,
  aadBytes: number,
): string | undefined {
  const reference = nodeContext(name, key, true);
  const sealer = nativeContext(addon, name, key, true);
  const opener = nativeContext(addon, name, key, false);
  try {
    const expected = Buffer.alloc(datagram.length + tagBytes);
    const expectedHash = Buffer.alloc(20);
    datagram.copy(expected, 0, 0, aadBytes);
    reference.sealDatagram(nonce, datagram, expected, aadBytes, expectedHash, 4, 16);
    const apart = Buffer.alloc(datagram.length + tagBytes);
    const hash = Buffer.alloc(20);
    datagram.copy(apart, 0, 0, aadBytes);
    sealer.sealDatagram(nonce, datagram, apart, aadBytes, hash, 4, 16);
    const inPlace = Buffer.alloc(datagram.length + tagBytes);
    datagram.copy(inPlace);
    sealer.sealDatagram(nonce, inPlace.subarray(0, datagram.length), inPlace, aadBytes);
    if (!apart.equals(expected) || !inPlace.equals(expected) || !hash.equals(expectedHash)) {
      return 'the addon sealed another datagram or hash than node:crypto';
    }
    if (!expectedHash.subarray(4).equals(createHash('sha256').update(expected).digest().subarray(0, 16))) {
      return "node:crypto's datagram hash is not the SHA-256 of the sealed datagram";
    }
    const opened = Buffer.alloc(datagram.length - aadBytes);
    if (
      !opener.openDatagram(nonce, expected, aadBytes, opened, 0) ||
      !opened.equals(datagram.subarray(aadBytes))
    ) {
      return 'the addon did not open the datagram node:crypto sealed';
    }
    if (
      !opener.openDatagram(nonce, inPlace, aadBytes, inPlace, aadBytes) ||
      !inPlace.subarray(aadBytes, datagram.length).equals(datagram.subarray(aadBytes))
    ) {
      return 'the addon did not open the datagram in place';
    }
    const forged = Buffer.from(expected);
    forged[forged.length - 1] = (forged[forged.length - 1] ?? 0) ^ 1;
    if (opener.openDatagram(nonce, forged, aadBytes, opened, 0) || opened.some((byte) => byte !== 0)) {
      return 'the addon opened a datagram with a flipped tag bit';
    }
    return checkPacketCalls(reference, sealer, opener, datagram);
  } finally {
    sealer.dispose();
    opener.dispose();
  }
}

/**
 * sealPacket and openPacket of the addon against node:crypto's, on a DATA datagram whose header
 * names the nonce: the same sealed datagram and hash, apart and in place (so the addon reads the
 * nonce's fields and writes the body length where the protocol has them); opened in place to
 * the plain datagram; a flipped tag bit refused with the body zeroed.
 */
function checkPacketCalls(
  reference: AeadContext,
  sealer: AeadContext,
  opener: AeadContext,
  datagram: Buffer,
): string | undefined {
  const plain = Buffer.from(datagram);
  plain.writeUInt32BE(0x0102_0304, offsetIncarnation);
  plain.writeUInt16BE(0x0506, offsetKeyEpoch);
  plain.writeUInt32BE(0x0708_090a, offsetSequence);
  plain.writeUInt16BE(plain.length - headerBytes, offsetBodyLength);
  // The header's fields below, as writePacketNonce lays them out: incarnation ‖ epoch ‖ 0 ‖ sequence.
  const nonce = Buffer.from('01020304050600000708090a', 'hex');
  const expected = Buffer.alloc(plain.length + tagBytes);
  const expectedHash = Buffer.alloc(20);
  reference.sealPacket(nonce, plain, expected, expectedHash, 4, 16);
  const apart = Buffer.alloc(plain.length + tagBytes, 0xee);
  const hash = Buffer.alloc(20);
  sealer.sealPacket(nonce, plain, apart, hash, 4, 16);
  const inPlace = Buffer.alloc(plain.length + tagBytes);
  plain.copy(inPlace);
  sealer.sealPacket(nonce, inPlace.subarray(0, plain.length), inPlace);
  if (!apart.equals(expected) || !inPlace.equals(expected) || !hash.equals(expectedHash)) {
    return 'the addon sealed another DATA datagram than node:crypto';
  }
  if (expected.readUInt16BE(offsetBodyLength) !== expected.length - headerBytes) {
    return "node:crypto's sealed DATA has another body length than its own";
  }
  if (opener.openPacket(apart) !== plain.length || !apart.subarray(0, plain.length).equals(plain)) {
    return 'the addon did not open the DATA datagram node:crypto sealed';
  }
  const forged = Buffer.from(expected);
  forged[forged.length - 1] = (forged[forged.length - 1] ?? 0) ^ 1;
  if (
    opener.openPacket(forged) !== -1 ||
    forged.subarray(headerBytes, forged.length - tagBytes).some((byte) => byte !== 0)
  ) {
    return 'the addon opened a DATA datagram with a flipped tag bit';
  }
  const otherNonce = Buffer.from(expected);
  otherNonce.writeUInt32BE(0x0708_090b, offsetSequence);
  if (opener.openPacket(otherNonce) !== -1) {
    return "the addon opened a DATA datagram under another header's nonce";
  }
  // Each field of the nonce held to the header's (incarnation, epoch, the zeros, sequence), apart
  // and in place: an addon that compared the sequence alone sealed under an unchecked incarnation.
  for (const field of [0, 4, 6, 11]) {
    const other = Buffer.from(nonce);
    other[field] = (other[field] ?? 0) ^ 1;
    const refusal = packetRefusal(sealer, other, plain);
    if (refusal !== undefined) {
      return `${refusal} (nonce byte ${field})`;
    }
  }
  return undefined;
}

/** Why sealPacket under a nonce the header does not name was not refused with nothing written. */
function packetRefusal(sealer: AeadContext, nonce: Buffer, plain: Buffer): string | undefined {
  const unchecked = Buffer.alloc(plain.length + tagBytes);
  const inPlace = Buffer.alloc(plain.length + tagBytes);
  plain.copy(inPlace);
  for (const [from, out] of [
    [plain, unchecked],
    [inPlace.subarray(0, plain.length), inPlace],
  ] as const) {
    try {
      sealer.sealPacket(nonce, from, out);
      return 'the addon sealed under a nonce its header does not name';
    } catch {
      // Refused, as it must be: what it left is checked below.
    }
  }
  if (unchecked.some((byte) => byte !== 0) || !inPlace.subarray(0, plain.length).equals(plain)) {
    return 'the addon wrote a packet whose header names another nonce before refusing it';
  }
  return undefined;
}

let engine: { info: AeadEngineInfo; addon: NativeAead | undefined } | undefined;

/** GATECAST_AEAD_ENGINE, checked: undefined when unset or empty. */
function engineSetting(): (typeof engineSettings)[number] | undefined {
  const asked = process.env.GATECAST_AEAD_ENGINE;
  if (asked === undefined || asked === '') {
    return undefined;
  }
  const known = engineSettings.find((name) => name === asked);
  if (known === undefined) {
    throw new AeadEngineError(
      `GATECAST_AEAD_ENGINE: ${JSON.stringify(asked)} is not an engine (${engineSettings.join(' or ')}, or unset)`,
    );
  }
  return known;
}

/** Why the addon cannot be loaded without risk, or undefined when its bytes are the ones built. */
function addonUnusable(): string | undefined {
  if (!existsSync(nativeAddonPath)) {
    return `the addon is not built (${nativeAddonPath}): npm run build:native`;
  }
  let expected: string;
  try {
    expected = readFileSync(nativeAddonDigestPath, 'utf8').trim();
  } catch {
    return `the addon has no digest from its build (${nativeAddonDigestPath}): npm run build:native`;
  }
  const actual = createHash('sha256').update(readFileSync(nativeAddonPath)).digest('hex');
  return actual === expected
    ? undefined
    : `the addon is not the file its build made (SHA-256 differs from ${nativeAddonDigestPath}): npm run build:native`;
}

/** The addon loaded and known-answer checked, or why node:crypto is used instead. */
function loadAddon(): { info: AeadEngineInfo; addon: NativeAead | undefined } {
  const unusable = addonUnusable();
  if (unusable !== undefined) {
    return { info: { name: 'node:crypto', reason: unusable }, addon: undefined };
  }
  try {
    const addon = createRequire(import.meta.url)(nativeAddonPath) as Partial<NativeAead>;
    const missing = (
      [
        'create',
        'seal',
        'open',
        'dispose',
        'digest',
        'digestEquals',
        'sealDatagram',
        'openDatagram',
        'sealPacket',
        'openPacket',
      ] as const
    ).filter((name) => typeof addon[name] !== 'function');
    if (missing.length > 0 || typeof addon.openssl !== 'string') {
      return {
        info: {
          name: 'node:crypto',
          reason: `the addon is not the packet engine (no ${missing.join(', ') || 'openssl'})`,
        },
        addon: undefined,
      };
    }
    const differed = checkAddon(addon as NativeAead);
    return differed === undefined
      ? { info: { name: 'openssl-evp', openssl: addon.openssl }, addon: addon as NativeAead }
      : {
          info: { name: 'node:crypto', reason: `the addon failed its check: ${differed}` },
          addon: undefined,
        };
  } catch (error) {
    return {
      info: { name: 'node:crypto', reason: `the addon did not load: ${(error as Error).message}` },
      addon: undefined,
    };
  }
}

/**
 * Loads and checks the addon once; decides the engine for the life of the process. Throws
 * AeadEngineError (each time, nothing is decided) when GATECAST_AEAD_ENGINE is not a known engine,
 * or is openssl-evp and the addon cannot be used.
 */
function loadEngine(): { info: AeadEngineInfo; addon: NativeAead | undefined } {
  if (engine !== undefined) {
    return engine;
  }
  const asked = engineSetting();
  if (asked === 'node:crypto') {
    engine = { info: { name: 'node:crypto', reason: 'GATECAST_AEAD_ENGINE=node:crypto' }, addon: undefined };
    return engine;
  }
  const loaded = loadAddon();
  if (asked === 'openssl-evp' && loaded.addon === undefined) {
    throw new AeadEngineError(
      `GATECAST_AEAD_ENGINE=openssl-evp, but ${loaded.info.reason ?? 'the addon is not usable'}`,
    );
  }
  engine = loaded;
  return engine;
}

/**
 * The engine packets are sealed and opened with in this process. Throws AeadEngineError for a
 * GATECAST_AEAD_ENGINE that cannot be followed (the CLI asks before a command runs: exit 2).
 */
export function aeadEngine(): AeadEngineInfo {
  return loadEngine().info;
}

/** Makes a context for one key: `encrypt` to seal, else to open. */
export function createAeadContext(name: AeadName, key: Buffer, encrypt: boolean): AeadContext {
  if (key.length !== keyBytesOf[name]) {
    throw new CipherError(`${name} takes a ${keyBytesOf[name]}-byte key, not ${key.length} bytes`);
  }
  const { addon } = loadEngine();
  return addon === undefined ? nodeContext(name, key, encrypt) : nativeContext(addon, name, key, encrypt);
}

/** The bytes of one SHA-256. */
export const sha256Bytes = 32;

/** True when 1-32 bytes of a SHA-256 at `offset` fit a buffer of `size` bytes (whole numbers only). */
function hashRangeFits(offset: number, length: number, size: number): boolean {
  return (
    Number.isInteger(offset) &&
    Number.isInteger(length) &&
    length >= 1 &&
    length <= sha256Bytes &&
    offset >= 0 &&
    offset + length <= size
  );
}

/**
 * Writes the first `length` (1-32) bytes of the SHA-256 of `input` into `out` at `offset` (a
 * manifest's packet hash), through the addon when it is the engine (no Hash object, no buffer
 * made), else node:crypto. `out` may be `input` itself. A range outside `out` is a CipherError.
 */
export function sha256Into(input: Buffer, out: Buffer, offset: number, length: number): void {
  // Either engine takes the same arguments: views by their bytes, nothing else (not a string).
  const { addon } = loadEngine();
  if (addon !== undefined) {
    // The addon reads each view's bounds once and checks every range itself: no view is made
    // here, on the packet path of a signed source.
    try {
      addon.digest(input, out, offset, length);
    } catch (error) {
      throw asCipherError(error);
    }
    return;
  }
  const bytes = bytesOf(input, 'the input');
  const target = bytesOf(out, 'the output');
  if (!hashRangeFits(offset, length, target.length)) {
    throw new CipherError(`SHA-256: ${length} bytes at ${offset} do not fit an output of ${target.length}`);
  }
  createHash('sha256').update(bytes).digest().copy(target, offset, 0, length);
}

/**
 * True when the first `length` (1-32) bytes of the SHA-256 of `input` are `expected[offset,
 * offset + length)`: a DATA checked against its manifest's hash where the manifest holds it, in
 * one call through the addon when it is the engine (no hash written anywhere), else node:crypto.
 * A range outside `expected` is a CipherError.
 */
export function sha256Equals(input: Buffer, expected: Buffer, offset: number, length: number): boolean {
  const { addon } = loadEngine();
  if (addon !== undefined) {
    // As sha256Into: the addon checks the views and the range, and no view is made on the packet
    // path of a verifying gate.
    try {
      return addon.digestEquals(input, expected, offset, length);
    } catch (error) {
      throw asCipherError(error);
    }
  }
  const bytes = bytesOf(input, 'the input');
  const against = bytesOf(expected, 'the expected hash');
  if (!hashRangeFits(offset, length, against.length)) {
    throw new CipherError(`SHA-256: ${length} bytes at ${offset} do not fit ${against.length}`);
  }
  return (
    createHash('sha256')
      .update(bytes)
      .digest()
      .compare(against, offset, offset + length, 0, length) === 0
  );
}

/** The node:crypto engine alone, whatever the process uses (tests, the benchmark's reference). */
export function createNodeCryptoAeadContext(name: AeadName, key: Buffer, encrypt: boolean): AeadContext {
  return nodeContext(name, key, encrypt);
}

/** Which code checks Ed25519 signatures in this process, and why when it is not libsodium. */
export interface SignatureEngineInfo {
  readonly name: 'libsodium' | 'node:crypto';
  /** libsodium's version (libsodium only). */
  readonly sodium?: string;
  /** Why node:crypto checks signatures (node:crypto only). */
  readonly reason?: string;
}

/** The values GATECAST_SIGNATURE_ENGINE takes; unset or empty: libsodium when the addon found it. */
const signatureEngineSettings = ['libsodium', 'node:crypto'] as const;

/** RFC 8032, section 7.1, TEST 2: a one-byte message (0x72). */
const rfc8032Test2 = {
  publicKey: Buffer.from('3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c', 'hex'),
  message: Buffer.from('72', 'hex'),
  signature: Buffer.from(
    '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
    'hex',
  ),
};

/**
 * Known-answer check of libsodium's Ed25519 against node:crypto: RFC 8032's TEST 2 holds, and a
 * flipped bit in the signature, the message or the key is refused by both alike.
 */
function checkSodium(
  check: (signature: Buffer, message: Buffer, publicKey: Buffer) => boolean,
): string | undefined {
  const { publicKey, message, signature } = rfc8032Test2;
  const key = createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: publicKey.toString('base64url') },
    format: 'jwk',
  });
  const cases: Array<[string, Buffer, Buffer, Buffer]> = [['RFC 8032 TEST 2', signature, message, publicKey]];
  for (const [what, bytes] of [
    ['signature', signature],
    ['message', message],
    ['key', publicKey],
  ] as const) {
    const flipped = Buffer.from(bytes);
    flipped[0] = (flipped[0] ?? 0) ^ 1;
    cases.push([
      `a flipped bit in the ${what}`,
      what === 'signature' ? flipped : signature,
      what === 'message' ? flipped : message,
      what === 'key' ? flipped : publicKey,
    ]);
  }
  for (const [what, sig, msg, raw] of cases) {
    let expected: boolean;
    try {
      const against =
        raw === publicKey
          ? key
          : createPublicKey({
              key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
              format: 'jwk',
            });
      expected = verify(null, msg, against, sig);
    } catch {
      expected = false;
    }
    if (check(sig, msg, raw) !== expected) {
      return `libsodium and node:crypto differ on ${what}`;
    }
  }
  return check(signature, message, publicKey) ? undefined : 'libsodium refused RFC 8032 TEST 2';
}

/** RFC 8032 TEST 2's secret key (the seed): Ed25519 signing is deterministic, so the signature is known. */
const rfc8032Test2Seed = Buffer.from(
  '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
  'hex',
);

/** Known-answer check of libsodium's signing: RFC 8032 TEST 2, its public key and signature exactly. */
function checkSodiumSigner(signer: SodiumSigner): string | undefined {
  const publicKey = Buffer.alloc(32);
  const key = signer.key(Buffer.from(rfc8032Test2Seed), publicKey);
  if (!publicKey.equals(rfc8032Test2.publicKey)) {
    return 'libsodium derived another public key from RFC 8032 TEST 2';
  }
  const out = Buffer.alloc(70, 0xee);
  signer.sign(key, rfc8032Test2.message, out, 3);
  if (!out.subarray(3, 67).equals(rfc8032Test2.signature) || out[2] !== 0xee || out[67] !== 0xee) {
    return 'libsodium signed RFC 8032 TEST 2 otherwise';
  }
  return undefined;
}

/** libsodium's Ed25519 signing, through the addon. */
export interface SodiumSigner {
  /** A signing key from a 32-byte seed, held by the addon; its public key goes into `publicOut`. */
  key(seed: Buffer, publicOut: Buffer): object;
  /** Writes the 64-byte signature of `message` into `out` at `offset`. */
  sign(key: object, message: Buffer, out: Buffer, offset: number): void;
}

/** The signature engine chosen: libsodium's check and signing, or undefined for node:crypto. */
interface SignatureEngine {
  readonly info: SignatureEngineInfo;
  readonly verify: ((signature: Buffer, message: Buffer, publicKey: Buffer) => boolean) | undefined;
  readonly signer: SodiumSigner | undefined;
}

let signatureEngine: SignatureEngine | undefined;

/**
 * Loads the signature engine once: libsodium's Ed25519 through the addon (about two thirds of
 * OpenSSL 3.0's CPU a check), when the addon is the packet engine, found libsodium and passes the
 * known-answer check, unless GATECAST_SIGNATURE_ENGINE=node:crypto. Throws AeadEngineError for a
 * GATECAST_SIGNATURE_ENGINE that names no engine, or names libsodium when it cannot be used.
 */
function loadSignatureEngine(): SignatureEngine {
  if (signatureEngine !== undefined) {
    return signatureEngine;
  }
  const asked = process.env.GATECAST_SIGNATURE_ENGINE ?? '';
  const known = signatureEngineSettings.find((name) => name === asked);
  if (asked !== '' && known === undefined) {
    throw new AeadEngineError(
      `GATECAST_SIGNATURE_ENGINE: ${JSON.stringify(asked)} is not an engine (${signatureEngineSettings.join(' or ')}, or unset)`,
    );
  }
  const chosen = ((): SignatureEngine => {
    const nodeCrypto = (reason: string): SignatureEngine => ({
      info: { name: 'node:crypto', reason },
      verify: undefined,
      signer: undefined,
    });
    if (known === 'node:crypto') {
      return nodeCrypto('GATECAST_SIGNATURE_ENGINE=node:crypto');
    }
    const { addon, info } = loadEngine();
    if (addon === undefined) {
      return nodeCrypto(info.reason ?? 'the addon is not in use');
    }
    const { ed25519Verify: native, ed25519SigningKey: makeKey, ed25519Sign: nativeSign } = addon;
    if (
      typeof native !== 'function' ||
      typeof makeKey !== 'function' ||
      typeof nativeSign !== 'function' ||
      typeof addon.sodium !== 'string'
    ) {
      return nodeCrypto('the addon found no libsodium (libsodium.so.23, libsodium.so.26 or libsodium.so)');
    }
    const check = (signature: Buffer, message: Buffer, publicKey: Buffer) =>
      native.call(addon, signature, message, publicKey);
    const signer: SodiumSigner = {
      key: (seed, publicOut) => makeKey.call(addon, seed, publicOut),
      sign: (key, message, out, offset) => nativeSign.call(addon, key, message, out, offset),
    };
    const differed = checkSodium(check) ?? checkSodiumSigner(signer);
    return differed === undefined
      ? { info: { name: 'libsodium', sodium: addon.sodium }, verify: check, signer }
      : nodeCrypto(`libsodium failed its check: ${differed}`);
  })();
  if (known === 'libsodium' && chosen.verify === undefined) {
    throw new AeadEngineError(
      `GATECAST_SIGNATURE_ENGINE=libsodium, but ${chosen.info.reason ?? 'it is not usable'}`,
    );
  }
  signatureEngine = chosen;
  return chosen;
}

/**
 * The code that checks Ed25519 signatures in this process. Throws AeadEngineError for a
 * GATECAST_SIGNATURE_ENGINE that cannot be followed (the CLI asks before a command runs: exit 2).
 */
export function signatureEngineInfo(): SignatureEngineInfo {
  return loadSignatureEngine().info;
}

/**
 * libsodium's Ed25519 check (signature, message, raw 32-byte public key) when it is the signature
 * engine, else undefined (the caller checks with node:crypto). A signature that is not 64 bytes
 * or a key that is not 32 is the caller's to refuse first.
 */
export function sodiumEd25519Verify():
  | ((signature: Buffer, message: Buffer, publicKey: Buffer) => boolean)
  | undefined {
  return loadSignatureEngine().verify;
}

/** libsodium's Ed25519 signing when it is the signature engine, else undefined (node:crypto signs). */
export function sodiumEd25519Signer(): SodiumSigner | undefined {
  return loadSignatureEngine().signer;
}
