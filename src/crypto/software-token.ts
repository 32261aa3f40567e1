/**
 * The software token: a file holding the device key and the token state, encrypted at rest
 * under a PIN (docs/security.md, "Tokens").
 *
 * File (JSON): { format, version, salt, data } where salt (16 bytes) feeds scrypt(PIN) into a
 * 32-byte master key, and data is one AES-256-GCM box: a fresh 16-byte write salt, the ciphertext
 * and the 16-byte tag. Each write derives its own key with HKDF-SHA-256(master, write salt), so
 * the fixed all-zero nonce is never used twice under one key; the associated data is the format
 * name and version. A wrong PIN, or any altered byte, fails the tag and opens nothing.
 */
import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes,
  scryptSync,
} from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { secretFileBytesMax, tokenScryptCost } from '../limits.js';
import { readBoundedFile } from '../net/files.js';
import type { Grant } from '../protocol/restricted.js';
import {
  ed25519Raw,
  generateSigningKey,
  p256FromPoint,
  p256Point,
  signEd25519,
  unwrapKey,
} from './authority.js';
import { TokenError } from './errors.js';
import { type Cmac, createCmac } from './group-key.js';
import { type Purse, Token, type TokenBackend, type TokenState, tokenStateProblem } from './token.js';

const format = 'gatecast-software-token';
const version = 1;
const aad = Buffer.from(`${format} v${version}`);
const zeroNonce = Buffer.alloc(12);

interface Secrets {
  devicePrivateKey: string;
  /** The Ed25519 key that signs purse receipts (PKCS#8 DER, base64), made at enrollment. */
  receiptPrivateKey?: string | undefined;
  state: TokenState;
}

/**
 * The secrets a token file's sealed part holds, or why they are not: only the PIN's holder can
 * seal them, but secrets sealed by hand are refused with a reason rather than crash a command.
 */
function parseSecrets(plain: Buffer): Secrets | string {
  let value: unknown;
  try {
    value = JSON.parse(plain.toString('utf8'));
  } catch {
    return 'its sealed part is not JSON';
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return 'its sealed part is not an object';
  }
  const secrets = value as Record<string, unknown>;
  if (typeof secrets.devicePrivateKey !== 'string') {
    return 'its sealed part has no device key';
  }
  if (secrets.receiptPrivateKey !== undefined && typeof secrets.receiptPrivateKey !== 'string') {
    return 'its sealed part has a receipt key that is not a string';
  }
  const problem = tokenStateProblem(secrets.state);
  return problem === undefined ? (secrets as unknown as Secrets) : problem;
}

function masterKey(pin: string, salt: Buffer): Buffer {
  return scryptSync(pin, salt, 32, { N: tokenScryptCost, r: 8, p: 1, maxmem: 64 * 1024 * 1024 });
}

function seal(master: Buffer, plain: Buffer): string {
  const writeSalt = randomBytes(16);
  const key = Buffer.from(hkdfSync('sha256', master, writeSalt, aad, 32));
  const cipher = createCipheriv('aes-256-gcm', key, zeroNonce, { authTagLength: 16 });
  cipher.setAAD(aad);
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  return Buffer.concat([writeSalt, body, cipher.getAuthTag()]).toString('base64');
}

function open(master: Buffer, data: Buffer): Buffer | undefined {
  if (data.length < 32) {
    return undefined;
  }
  const key = Buffer.from(hkdfSync('sha256', master, data.subarray(0, 16), aad, 32));
  const decipher = createDecipheriv('aes-256-gcm', key, zeroNonce, { authTagLength: 16 });
  decipher.setAAD(aad);
  decipher.setAuthTag(data.subarray(data.length - 16));
  try {
    return Buffer.concat([decipher.update(data.subarray(16, data.length - 16)), decipher.final()]);
  } catch {
    return undefined;
  }
}

function checkPin(pin: string): void {
  if (pin.length < 4) {
    throw new TokenError('a token PIN has at least 4 characters');
  }
}

function writeAtomically(path: string, text: string): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode: 0o600 });
  renameSync(temporary, path);
}

class SoftwareBackend implements TokenBackend {
  readonly kind = 'software' as const;
  readonly #path: string;
  readonly #salt: Buffer;
  readonly #master: Buffer;
  readonly #device: KeyObject;
  readonly #point: Buffer;
  #receiptKey: KeyObject | undefined;
  #state: TokenState;

  constructor(path: string, salt: Buffer, master: Buffer, secrets: Secrets) {
    this.#path = path;
    this.#salt = salt;
    this.#master = master;
    const privateKey = (base64: string, what: string, type: 'ec' | 'ed25519') => {
      let key: KeyObject;
      try {
        key = createPrivateKey({ key: Buffer.from(base64, 'base64'), format: 'der', type: 'pkcs8' });
      } catch (error) {
        throw new TokenError(`its ${what} is not a private key (PKCS#8): ${(error as Error).message}`);
      }
      if (key.asymmetricKeyType !== type) {
        throw new TokenError(
          `its ${what} is ${key.asymmetricKeyType ?? 'of no known type'}, not ${type === 'ec' ? 'P-256' : 'Ed25519'}`,
        );
      }
      return key;
    };
    this.#device = privateKey(secrets.devicePrivateKey, 'device key', 'ec');
    try {
      this.#point = p256Point(createPublicKey(this.#device));
    } catch (error) {
      throw new TokenError(`its device key is not P-256: ${(error as Error).message}`);
    }
    this.#receiptKey =
      secrets.receiptPrivateKey === undefined
        ? undefined
        : privateKey(secrets.receiptPrivateKey, 'receipt key', 'ed25519');
    this.#state = secrets.state;
  }

  receiptPublicKey(create: boolean): Buffer | undefined {
    if (this.#receiptKey === undefined && create) {
      this.#receiptKey = generateSigningKey().privateKey;
      this.saveState(this.#state);
    }
    return this.#receiptKey === undefined ? undefined : ed25519Raw(createPublicKey(this.#receiptKey));
  }

  signReceipt(signed: Buffer): Buffer {
    if (this.#receiptKey === undefined) {
      throw new TokenError('the token has no receipt key: enroll it with gatecast token enroll');
    }
    return signEd25519(signed, this.#receiptKey);
  }

  devicePoint(): Buffer {
    return Buffer.from(this.#point);
  }

  /** Reads the file again, so a purse change another process wrote is not overwritten. */
  loadState(): TokenState {
    try {
      const file = JSON.parse(readBoundedFile(this.#path, secretFileBytesMax).toString('utf8')) as {
        data?: unknown;
      };
      const plain =
        typeof file.data === 'string' ? open(this.#master, Buffer.from(file.data, 'base64')) : undefined;
      const secrets = plain === undefined ? undefined : parseSecrets(plain);
      plain?.fill(0);
      if (secrets !== undefined && typeof secrets !== 'string') {
        this.#state = secrets.state;
        // A receipt key another process made is kept: every write carries it on.
        if (this.#receiptKey === undefined && secrets.receiptPrivateKey !== undefined) {
          this.#receiptKey = createPrivateKey({
            key: Buffer.from(secrets.receiptPrivateKey, 'base64'),
            format: 'der',
            type: 'pkcs8',
          });
        }
      }
    } catch {
      // The file went away or was replaced by another token's: keep what this process holds.
    }
    return structuredClone(this.#state);
  }

  saveState(state: TokenState): void {
    this.#state = structuredClone(state);
    const devicePrivateKey = this.#device.export({ format: 'der', type: 'pkcs8' }).toString('base64');
    const receiptPrivateKey = this.#receiptKey?.export({ format: 'der', type: 'pkcs8' }).toString('base64');
    writeTokenFile(this.#path, this.#salt, this.#master, { devicePrivateKey, receiptPrivateKey, state });
  }

  unwrapServiceKey(grant: Grant): Buffer | undefined {
    return this.unwrapTreeKeys(grant.ephemeralPublicKey, [grant.wrappedServiceKey])?.[0];
  }

  unwrapTrafficKey(serviceKey: unknown, wrapped: Buffer): Buffer | undefined {
    return unwrapKey(serviceKey as Buffer, wrapped);
  }

  unwrapTreeKeys(ephemeralPublicKey: Buffer, wrapped: readonly Buffer[]): Buffer[] | undefined {
    let kek: Buffer;
    try {
      kek = diffieHellman({ privateKey: this.#device, publicKey: p256FromPoint(ephemeralPublicKey) });
    } catch {
      return undefined;
    }
    const keys: Buffer[] = [];
    for (const one of wrapped) {
      const key = unwrapKey(kek, one);
      if (key === undefined || key.length !== 32) {
        kek.fill(0);
        return undefined;
      }
      keys.push(key);
    }
    kek.fill(0);
    return keys;
  }

  unwrapTreeKey(kek: unknown, wrapped: Buffer): Buffer | undefined {
    const key = unwrapKey(kek as Buffer, wrapped);
    return key?.length === 32 ? key : undefined;
  }

  forgetTreeKey(key: unknown): void {
    (key as Buffer).fill(0);
  }

  unwrapGroupShare(kek: unknown, wrapped: Buffer): Buffer | undefined {
    const share = unwrapKey(kek as Buffer, wrapped);
    return share?.length === 16 || share?.length === 32 ? share : undefined;
  }

  /** The AES-CMAC of each share, made at its first use (one cipher and two subkeys per share, not per call). */
  readonly #cmacs = new WeakMap<Buffer, Cmac>();

  cmac(share: unknown, message: Buffer): Buffer {
    let cmac = this.#cmacs.get(share as Buffer);
    if (cmac === undefined) {
      cmac = createCmac(share as Buffer);
      this.#cmacs.set(share as Buffer, cmac);
    }
    return cmac(message);
  }

  close(): void {
    this.#master.fill(0);
  }
}

function writeTokenFile(path: string, salt: Buffer, master: Buffer, secrets: Secrets): void {
  const data = seal(master, Buffer.from(JSON.stringify(secrets)));
  writeAtomically(path, `${JSON.stringify({ format, version, salt: salt.toString('base64'), data })}\n`);
}

/** Options of a new software token. */
export interface SoftwareTokenInit {
  readonly path: string;
  readonly pin: string;
  /** The operator root key (raw Ed25519, 32 bytes) grants must be signed by. */
  readonly rootPublicKey: Buffer;
}

/** Creates a software token file with a fresh device key; refuses to overwrite one. */
export function initSoftwareToken(init: SoftwareTokenInit): void {
  checkPin(init.pin);
  if (init.rootPublicKey.length !== 32) {
    throw new TokenError('the operator root public key is 32 bytes (raw Ed25519)');
  }
  const salt = randomBytes(16);
  const master = masterKey(init.pin, salt);
  const device = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const secrets: Secrets = {
    devicePrivateKey: device.privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
    state: { rootPublicKey: init.rootPublicKey.toString('hex'), grants: [], highestStreamTimeUs: 0 },
  };
  const data = seal(master, Buffer.from(JSON.stringify(secrets)));
  try {
    writeFileSync(
      init.path,
      `${JSON.stringify({ format, version, salt: salt.toString('base64'), data })}\n`,
      {
        mode: 0o600,
        flag: 'wx',
      },
    );
  } catch (error) {
    throw new TokenError(`token file ${init.path}: ${(error as Error).message}`);
  }
  master.fill(0);
}

/** Opens a software token file with its PIN. A wrong PIN or an altered file is a TokenError. */
export function openSoftwareToken(path: string, pin: string, purse?: Purse): Token {
  let text: string;
  try {
    text = readBoundedFile(path, secretFileBytesMax).toString('utf8');
  } catch (error) {
    throw new TokenError(`token file ${path}: ${(error as Error).message}`);
  }
  let file: { format?: unknown; version?: unknown; salt?: unknown; data?: unknown };
  try {
    file = JSON.parse(text) as typeof file;
  } catch {
    throw new TokenError(`token file ${path}: not JSON`);
  }
  if (
    file === null ||
    typeof file !== 'object' ||
    file.format !== format ||
    file.version !== version ||
    typeof file.salt !== 'string' ||
    typeof file.data !== 'string'
  ) {
    throw new TokenError(`token file ${path}: not a ${format} version ${version} file`);
  }
  const salt = Buffer.from(file.salt, 'base64');
  const master = masterKey(pin, salt);
  const plain = open(master, Buffer.from(file.data, 'base64'));
  if (plain === undefined) {
    master.fill(0);
    throw new TokenError(`token file ${path}: wrong PIN, or the file was altered`);
  }
  const secrets = parseSecrets(plain);
  plain.fill(0);
  if (typeof secrets === 'string') {
    master.fill(0);
    throw new TokenError(`token file ${path}: ${secrets}`);
  }
  let backend: SoftwareBackend;
  try {
    backend = new SoftwareBackend(path, salt, master, secrets);
  } catch (error) {
    master.fill(0);
    throw new TokenError(
      `token file ${path}: ${error instanceof TokenError ? error.message : `its sealed keys are not usable: ${(error as Error).message}`}`,
    );
  }
  return new Token(backend, purse);
}
