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
import { createCipheriv, createDecipheriv, createHash, createSecretKey, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { AeadEngineError, CipherError } from './errors.js';

/** The AEAD ciphers the engine knows (the suites of src/crypto/suites.ts). */
export type AeadName = 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';

const tagBytes = 16;
const nonceBytes = 12;
const keyBytesOf: Record<AeadName, number> = {
  'aes-128-gcm': 16,
  'aes-256-gcm': 32,
  'chacha20-poly1305': 32,
};

/** One key, ready to seal or open packets. */
export interface AeadContext {
  /** Seals `plain` into `out` (the same length) and writes the 16-byte tag into `tag`. */
  seal(nonce: Buffer, aad: Buffer, plain: Buffer, out: Buffer, tag: Buffer): void;
  /**
   * Opens `sealed` into `out` (the same length). False when the tag does not verify; `out` then
   * holds zeros, never unauthenticated plaintext.
   */
  open(nonce: Buffer, aad: Buffer, sealed: Buffer, tag: Buffer, out: Buffer): boolean;
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

interface NativeAead {
  create(name: string, key: Buffer, encrypt: boolean): unknown;
  seal(handle: unknown, nonce: Buffer, aad: Buffer, plain: Buffer, out: Buffer, tag: Buffer): void;
  open(handle: unknown, nonce: Buffer, aad: Buffer, sealed: Buffer, tag: Buffer, out: Buffer): boolean;
  dispose(handle: unknown): void;
  openssl: string;
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
    dispose() {
      secret = undefined; // a KeyObject cannot be zeroed; it is dropped here and collected
    },
  };
}

function nativeContext(addon: NativeAead, name: AeadName, key: Buffer, encrypt: boolean): AeadContext {
  const handle = addon.create(name, key, encrypt);
  return {
    seal(nonce, aad, plain, out, tag) {
      checkLengths(nonce, tag, plain, out);
      addon.seal(handle, nonce, aad, plain, out, tag);
    },
    open(nonce, aad, sealed, tag, out) {
      checkLengths(nonce, tag, sealed, out);
      return addon.open(handle, nonce, aad, sealed, tag, out);
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
    const missing = (['create', 'seal', 'open', 'dispose'] as const).filter(
      (name) => typeof addon[name] !== 'function',
    );
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

/** The node:crypto engine alone, whatever the process uses (tests, the benchmark's reference). */
export function createNodeCryptoAeadContext(name: AeadName, key: Buffer, encrypt: boolean): AeadContext {
  return nodeContext(name, key, encrypt);
}
