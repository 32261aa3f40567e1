/**
 * Restricted channels on the command line: the options `send` and `receive` share, the key files
 * they read, and the token a receiver opens (docs/security.md; README, "Restricted channels").
 *
 * Key files: an Ed25519 private key is PEM (PKCS#8); a public key is its 32 raw bytes in hex; a
 * service key is 32 bytes in hex. Secrets are read as bounded regular files.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import type { OperatorAuthority, RestrictedProduct } from '../api/context.js';
import { aeadEngine, signatureEngineInfo } from '../crypto/aead-engine.js';
import { ed25519FromRaw, ed25519PublicKeyProblem } from '../crypto/authority.js';
import { TokenError } from '../crypto/errors.js';
import { openPkcs11Token } from '../crypto/pkcs11-token.js';
import {
  createSenderProtection,
  createSignedSenderProtection,
  keyEpochMax,
  runSpan,
  type SenderProtection,
  type SourceTree,
  sealedOverheadBytes,
} from '../crypto/restricted-session.js';
import { openSoftwareToken } from '../crypto/software-token.js';
import { suiteByName } from '../crypto/suites.js';
import type { Token } from '../crypto/token.js';
import { groupKeyPacketsMax, lkhDepthMax, memberTreeDepthDefault, secretFileBytesMax } from '../limits.js';
import { readBoundedFile } from '../net/files.js';
import { manifestPacketsFor, manifestPacketsMax, manifestPacketsMin } from '../protocol/restricted.js';
import { headerBytes } from '../protocol/sizes.js';
import { pkcs11ModuleDefault } from './command-settings.js';
import { UsageError } from './errors.js';
import { type OptionValues, optional, parseInteger, parseSeconds, required } from './options.js';

/** The source key `--source-public` names, or undefined. */
export function sourcePublicKeyOption(values: OptionValues): KeyObject | undefined {
  const path = optional(values, 'source-public');
  if (path === undefined) {
    return undefined;
  }
  const raw = readEd25519PublicFile(path, '--source-public');
  try {
    return ed25519FromRaw(raw);
  } catch (error) {
    throw new UsageError(
      `--source-public: ${path} is not an Ed25519 public key: ${(error as Error).message}`,
    );
  }
}

function readSecret(path: string, field: string): string {
  try {
    return readBoundedFile(path, secretFileBytesMax).toString('utf8').trim();
  } catch (error) {
    throw new UsageError(`${field}: ${(error as Error).message}`);
  }
}

/** Reads an Ed25519 private key (PEM). */
export function readSigningKey(path: string, field: string): { privateKey: KeyObject; publicKey: KeyObject } {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(readSecret(path, field));
  } catch (error) {
    throw new UsageError(`${field}: ${path} is not a PEM private key: ${(error as Error).message}`);
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new UsageError(
      `${field}: ${path} holds a ${privateKey.asymmetricKeyType} key; Ed25519 is required`,
    );
  }
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

/** Reads a file of hex digits of an exact byte length. */
export function readHexFile(path: string, field: string, bytes: number): Buffer {
  const text = readSecret(path, field);
  if (!new RegExp(`^[0-9a-fA-F]{${bytes * 2}}$`).test(text)) {
    throw new UsageError(`${field}: ${path} must hold ${bytes * 2} hex digits`);
  }
  return Buffer.from(text, 'hex');
}

/**
 * Reads a raw Ed25519 public key (64 hex digits) that signatures will be checked against, refusing
 * one no signer could hold (small order, a second encoding: ed25519PublicKeyProblem) by its field:
 * every signature under it would be refused later, for a reason only the counts would show.
 */
export function readEd25519PublicFile(path: string, field: string): Buffer {
  const raw = readHexFile(path, field, 32);
  const problem = ed25519PublicKeyProblem(raw);
  if (problem !== undefined) {
    throw new UsageError(`${field}: ${path} is not a usable Ed25519 public key: ${problem}`);
  }
  return raw;
}

/** The token PIN: --pin-file, else $GATECAST_TOKEN_PIN. */
export function readPin(values: OptionValues): string {
  const file = optional(values, 'pin-file');
  if (file !== undefined) {
    return readSecret(file, '--pin-file');
  }
  const pin = process.env.GATECAST_TOKEN_PIN;
  if (pin === undefined || pin === '') {
    throw new UsageError('--pin-file FILE or GATECAST_TOKEN_PIN is required to open a token');
  }
  return pin;
}

/** Where a --token points. */
export type TokenLocation =
  | { readonly kind: 'software'; readonly path: string }
  | { readonly kind: 'pkcs11'; readonly label: string; readonly modulePath: string };

/** Parses --token (and --pkcs11-module). */
export function tokenLocation(values: OptionValues): TokenLocation | undefined {
  const text = optional(values, 'token');
  if (text === undefined) {
    if (optional(values, 'pkcs11-module') !== undefined) {
      throw new UsageError('--pkcs11-module needs --token pkcs11:LABEL');
    }
    return undefined;
  }
  if (text.startsWith('pkcs11:')) {
    const label = text.slice('pkcs11:'.length);
    if (label === '') {
      throw new UsageError('--token pkcs11:LABEL needs the token label');
    }
    return { kind: 'pkcs11', label, modulePath: optional(values, 'pkcs11-module') ?? pkcs11ModuleDefault };
  }
  return { kind: 'software', path: text };
}

/** Opens the token a --token names. */
export function openToken(location: TokenLocation, pin: string): Token {
  try {
    return location.kind === 'software'
      ? openSoftwareToken(location.path, pin)
      : openPkcs11Token({ modulePath: location.modulePath, tokenLabel: location.label, pin });
  } catch (error) {
    if (error instanceof TokenError) {
      throw new TokenError(`--token: ${error.message}`);
    }
    throw error;
  }
}

/**
 * What opens the token `--token` (with `--pkcs11-module` and `--pin-file`) names, or undefined
 * without --token: what `receive` and `agent` decode a restricted session with. The options and the
 * PIN are checked now; the opener opens the token and prepares it: the service keys unwrapped and
 * the source keys imported before the join, not at the first KEY message.
 */
export function tokenOpener(values: OptionValues): (() => Token) | undefined {
  const location = tokenLocation(values);
  if (location === undefined) {
    return undefined;
  }
  const pin = readPin(values);
  return () => {
    const token = openToken(location, pin);
    token.prepare(Date.now());
    return token;
  };
}

/** The token --token names, opened and prepared (tokenOpener), or undefined. */
export function tokenOption(values: OptionValues): Token | undefined {
  return tokenOpener(values)?.();
}

/** A run's protection, made for each run, and the packets a manifest covers (0: none). */
export type SenderProtectionFactory = ((
  run: { sessionId: number; incarnation: number },
  tree?: SourceTree,
) => SenderProtection) & { readonly manifestPackets: number };

/**
 * The source's protection from `send`'s options, or undefined for a plain session. Refused
 * suites and missing keys are errors naming the option, before anything is sent; so is a
 * `--duration` (`durationMs`) longer than a restricted run's 65,535 crypto-periods.
 * `packetPayloadBytes` (--packet-size) sizes the default manifest to the session's DATA datagrams.
 */
export function senderProtectionOptions(
  values: OptionValues,
  durationMs: number | undefined,
  packetPayloadBytes: number,
): SenderProtectionFactory | undefined {
  const restrictedOnly = [
    'service',
    'service-key-file',
    'service-epoch',
    'suite',
    'crypto-period',
    'tier',
    'manifest-packets',
    'group-packets',
  ];
  if (values.restricted !== true) {
    const stray = restrictedOnly.filter(
      (name) => values[name] !== undefined && !(name === 'manifest-packets' && values.signed === true),
    );
    if (stray.length === 1 && stray[0] === 'manifest-packets') {
      throw new UsageError('--manifest-packets needs --restricted or --signed');
    }
    if (stray.length > 0) {
      throw new UsageError(
        `${stray.map((name) => `--${name}`).join(', ')} ${stray.length === 1 ? 'needs' : 'need'} --restricted`,
      );
    }
    return values.signed === true ? signedProtectionOptions(values, packetPayloadBytes) : undefined;
  }
  const service = optional(values, 'service');
  const serviceKeyFile = optional(values, 'service-key-file');
  const sourceKeyFile = optional(values, 'source-key');
  if (service === undefined || serviceKeyFile === undefined || sourceKeyFile === undefined) {
    throw new UsageError('--restricted needs --service NAME, --service-key-file FILE and --source-key PEM');
  }
  if (Buffer.byteLength(service) < 1 || Buffer.byteLength(service) > 64) {
    throw new UsageError('--service: a service name is 1-64 bytes');
  }
  const suite = suiteByName(required(values, 'suite'), '--suite');
  const serviceKey = readHexFile(serviceKeyFile, '--service-key-file', 32);
  const source = readSigningKey(sourceKeyFile, '--source-key');
  const serviceEpoch = parseInteger(required(values, 'service-epoch'), '--service-epoch', 0, 0xffffffff);
  const cryptoPeriodMs = parseSeconds(required(values, 'crypto-period'), '--crypto-period');
  if (cryptoPeriodMs < 1000 || cryptoPeriodMs > 86_400_000) {
    throw new UsageError('--crypto-period: between 1 second and 1 day');
  }
  if (durationMs !== undefined && durationMs > keyEpochMax * cryptoPeriodMs) {
    // The run would end with GATECAST_ERR_KEY_EPOCHS before the duration asked for: said now.
    throw new UsageError(
      `--duration: ${durationMs / 1000} s is longer than a restricted run lasts at --crypto-period ${cryptoPeriodMs / 1000} (${keyEpochMax} crypto-periods, ${runSpan(cryptoPeriodMs)}); give a longer --crypto-period or a shorter --duration`,
    );
  }
  const tier = parseInteger(required(values, 'tier'), '--tier', 0, 255);
  const groupText = optional(values, 'group-packets');
  const packetsPerGroup =
    groupText === undefined ? undefined : parseInteger(groupText, '--group-packets', 1, groupKeyPacketsMax);
  const manifestPackets = manifestPacketsOption(
    values,
    0,
    headerBytes + packetPayloadBytes + sealedOverheadBytes(packetsPerGroup),
  );
  const factory = (run: { sessionId: number; incarnation: number }, tree?: SourceTree) =>
    createSenderProtection(
      {
        suite,
        service,
        serviceEpoch,
        serviceKey,
        sourcePrivateKey: source.privateKey,
        sourcePublicKey: source.publicKey,
        cryptoPeriodMs,
        tier,
        manifestPackets,
        tree,
        packetsPerGroup,
      },
      run,
    );
  return Object.assign(factory, { manifestPackets });
}

/**
 * The operator authority of `serve --root-key PEM --products FILE`: the root key that signs grants
 * and top-ups, and the restricted products, a JSON array of
 * `{ "name", "serviceKeyFile", "sourcePublic", "serviceEpoch"?, "tier"?, "pricePerPeriod"?, "treeDepth"? }`
 * (key paths relative to the file). Every problem names the option and the field.
 */
export function readOperatorAuthority(
  rootKeyPath: string | undefined,
  productsPath: string | undefined,
): OperatorAuthority | undefined {
  if (rootKeyPath === undefined) {
    if (productsPath !== undefined) {
      throw new UsageError('--products needs --root-key PEM (the operator root key that signs the grants)');
    }
    return undefined;
  }
  const root = readSigningKey(rootKeyPath, '--root-key');
  if (productsPath === undefined) {
    return { rootPrivateKey: root.privateKey, products: [] };
  }
  let list: unknown;
  try {
    list = JSON.parse(readSecret(productsPath, '--products'));
  } catch (error) {
    throw error instanceof UsageError ? error : new UsageError(`--products: ${productsPath} is not JSON`);
  }
  if (!Array.isArray(list)) {
    throw new UsageError('--products: a JSON array of products');
  }
  const base = dirname(productsPath);
  const names = new Set<string>();
  const products = list.map((entry: unknown, index): RestrictedProduct => {
    const field = (name: string) => `--products: [${index}].${name}`;
    if (entry === null || typeof entry !== 'object') {
      throw new UsageError(`--products: [${index}] is not an object`);
    }
    const item = entry as Record<string, unknown>;
    for (const key of Object.keys(item)) {
      if (
        ![
          'name',
          'serviceKeyFile',
          'sourcePublic',
          'serviceEpoch',
          'tier',
          'pricePerPeriod',
          'treeDepth',
        ].includes(key)
      ) {
        throw new UsageError(`${field(key)}: unknown field`);
      }
    }
    const text = (name: string) => {
      const value = item[name];
      if (typeof value !== 'string' || value === '') {
        throw new UsageError(`${field(name)}: a non-empty string is required`);
      }
      return value;
    };
    const integer = (name: string, fallback: number, max: number) => {
      const value = item[name] ?? fallback;
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > max) {
        throw new UsageError(`${field(name)}: an integer from 0 to ${max}`);
      }
      return value;
    };
    const name = text('name');
    if (!/^[A-Za-z0-9._:@-]{1,64}$/.test(name) || names.has(name)) {
      throw new UsageError(`${field('name')}: "${name}" is not a new name of 1-64 of A-Z a-z 0-9 . _ : @ -`);
    }
    names.add(name);
    return {
      name,
      serviceKey: readHexFile(resolve(base, text('serviceKeyFile')), field('serviceKeyFile'), 32),
      sourcePublicKey: readEd25519PublicFile(resolve(base, text('sourcePublic')), field('sourcePublic')),
      serviceEpoch: integer('serviceEpoch', 1, 0xffffffff),
      tier: integer('tier', 0, 255),
      pricePerPeriod: integer('pricePerPeriod', 0, Number.MAX_SAFE_INTEGER),
      treeDepth: (() => {
        const depth = integer('treeDepth', memberTreeDepthDefault, lkhDepthMax);
        if (depth < 1) {
          throw new UsageError(`${field('treeDepth')}: an integer from 1 to ${lkhDepthMax}`);
        }
        return depth;
      })(),
    };
  });
  return { rootPrivateKey: root.privateKey, products };
}

/**
 * --manifest-packets: manifestPacketsMin-manifestPacketsMax, or (when `none` is 0) 0 for none.
 * Without it, as many as keep a manifest within the session's DATA datagrams of `dataDatagramBytes`
 * (manifestPacketsFor).
 */
function manifestPacketsOption(
  values: OptionValues,
  none: number | undefined,
  dataDatagramBytes: number,
): number {
  const text = optional(values, 'manifest-packets');
  if (text === undefined) {
    return manifestPacketsFor(dataDatagramBytes);
  }
  const range = `${manifestPacketsMin}-${manifestPacketsMax}`;
  const allowed = none === 0 ? `${range}, or 0 for none` : `${range} for a signed session`;
  if (!/^\d+$/.test(text)) {
    throw new UsageError(`--manifest-packets: "${text}" is not a whole number of packets (${allowed})`);
  }
  const packets = Number(text);
  if (packets === 0 && none === 0) {
    return 0;
  }
  if (packets < manifestPacketsMin || packets > manifestPacketsMax) {
    throw new UsageError(`--manifest-packets: ${text} is out of range (${allowed})`);
  }
  return packets;
}

/** `send --signed`: a readable session whose every datagram the source key vouches for. */
function signedProtectionOptions(values: OptionValues, packetPayloadBytes: number): SenderProtectionFactory {
  const sourceKeyFile = optional(values, 'source-key');
  if (sourceKeyFile === undefined) {
    throw new UsageError('--signed needs --source-key PEM');
  }
  const source = readSigningKey(sourceKeyFile, '--source-key');
  const manifestPackets = manifestPacketsOption(values, undefined, headerBytes + packetPayloadBytes);
  const factory = (run: { sessionId: number; incarnation: number }) =>
    createSignedSenderProtection(
      { sourcePrivateKey: source.privateKey, sourcePublicKey: source.publicKey, manifestPackets },
      run,
    );
  return Object.assign(factory, { manifestPackets });
}

/**
 * The packet engine in use, for the line `send --restricted`, `receive --token` and `agent
 * --token` print at start: the addon (and the OpenSSL it runs on) or node:crypto and why.
 */
export function describeAeadEngine(): string {
  const engine = aeadEngine();
  return `${
    engine.name === 'openssl-evp'
      ? `packets sealed and opened with OpenSSL's EVP AEAD (${engine.openssl}, the addon in native/)`
      : `packets sealed and opened with node:crypto, about 8 times the CPU a packet: ${engine.reason}`
  }; ${describeSignatureEngine()}`;
}

/** The signature engine in use (docs/security.md, "The signature engine"), for the same lines and `--signed`. */
export function describeSignatureEngine(): string {
  const signatures = signatureEngineInfo();
  return signatures.name === 'libsodium'
    ? `Ed25519 signatures made and checked with libsodium ${signatures.sodium}`
    : `Ed25519 signatures made and checked with node:crypto (${signatures.reason})`;
}
