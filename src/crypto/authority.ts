/**
 * The key hierarchy's signing and wrapping (docs/security.md, "Key hierarchy"):
 *
 *   operator root key (Ed25519)  signs grants
 *   device key (P-256, in a token, never leaves it)  receives service keys by ECDH + AES key wrap
 *   service key (AES-256, per product and epoch)  arrives in a grant (EMM role)
 *   traffic key (per crypto-period)  arrives in KEY messages (ECM role), AES key wrap under the
 *                                    service key, signed by the source key the grant names
 *
 * AES key wrap is RFC 3394 (`id-aes256-wrap` in node:crypto, byte-identical to PKCS#11
 * CKM_AES_KEY_WRAP). Every signed layout ends with a 64-byte Ed25519 signature over every byte
 * before it (src/protocol/restricted.ts).
 */
import * as nodeCrypto from 'node:crypto';
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from 'node:crypto';
import { decodeHeader, type HeaderFields } from '../protocol/packet.js';
import {
  encodeControlSignatureUnsigned,
  encodeGrantUnsigned,
  encodeKeyUnsigned,
  encodeManifestBlockUnsigned,
  encodeMembershipUnsigned,
  encodeSessionOfferUnsigned,
  type GrantBody,
  type KeyBody,
  type MembershipBody,
  manifestHashBytes,
  manifestPacketsMax,
  p256PointBytes,
  type SessionOfferBody,
  signatureBytes,
} from '../protocol/restricted.js';
import { type SodiumSigner, sha256Into, sodiumEd25519Signer, sodiumEd25519Verify } from './aead-engine.js';
import { CipherError } from './errors.js';

/** RFC 3394 default initial value. */
const keyWrapIv = Buffer.from('a6a6a6a6a6a6a6a6', 'hex');

/** Wraps a 16- or 32-byte key under a 32-byte key-encryption key (RFC 3394). */
export function wrapKey(kek: Buffer, key: Buffer): Buffer {
  if (kek.length !== 32 || (key.length !== 16 && key.length !== 32)) {
    throw new CipherError('AES key wrap takes a 32-byte KEK and a 16- or 32-byte key');
  }
  const cipher = createCipheriv('id-aes256-wrap', kek, keyWrapIv);
  return Buffer.concat([cipher.update(key), cipher.final()]);
}

/** Unwraps (RFC 3394); undefined when the integrity check fails (wrong KEK or altered bytes). */
export function unwrapKey(kek: Buffer, wrapped: Buffer): Buffer | undefined {
  try {
    const decipher = createDecipheriv('id-aes256-wrap', kek, keyWrapIv);
    return Buffer.concat([decipher.update(wrapped), decipher.final()]);
  } catch {
    return undefined;
  }
}

/** A fresh Ed25519 key pair (operator root or source key). */
export function generateSigningKey(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ed25519');
}

/** The raw 32-byte form of an Ed25519 public key. */
export function ed25519Raw(publicKey: KeyObject): Buffer {
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || jwk.x === undefined) {
    throw new CipherError('not an Ed25519 public key');
  }
  return Buffer.from(jwk.x, 'base64url');
}

/** An Ed25519 public key from its raw 32 bytes. */
export function ed25519FromRaw(raw: Buffer): KeyObject {
  return createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
    format: 'jwk',
  });
}

/** Ed25519's field prime, 2^255 - 19. */
const edP = 2n ** 255n - 19n;

function edPow(base: bigint, exponent: bigint): bigint {
  let result = 1n;
  let b = ((base % edP) + edP) % edP;
  for (let e = exponent; e > 0n; e >>= 1n) {
    if (e & 1n) {
      result = (result * b) % edP;
    }
    b = (b * b) % edP;
  }
  return result;
}

const edInverse = (value: bigint) => edPow(value, edP - 2n);
/** The curve constant d = -121665 / 121666. */
const edD = (((-121665n * edInverse(121666n)) % edP) + edP) % edP;
/** A square root of -1 mod p. */
const edSqrtMinusOne = edPow(2n, (edP - 1n) / 4n);

/** Adds two points of the curve (affine coordinates; the law is complete for Ed25519). */
function edAdd(a: readonly [bigint, bigint], b: readonly [bigint, bigint]): [bigint, bigint] {
  const [x1, y1] = a;
  const [x2, y2] = b;
  const t = (edD * ((x1 * x2) % edP) * ((y1 * y2) % edP)) % edP;
  const x = ((x1 * y2 + y1 * x2) % edP) * edInverse(1n + t);
  const y = ((y1 * y2 + x1 * x2) % edP) * edInverse((1n - t + edP) % edP);
  return [x % edP, y % edP];
}

/**
 * Why 32 bytes are not an Ed25519 public key any signer could hold, or undefined when they are: a
 * y coordinate that is not below the field prime (a second encoding of a point), no point of the
 * curve, x = 0 with its sign bit set, or a point of small order (8P is the neutral point: under
 * such a key one signature may verify for every message). libsodium refuses signatures under such
 * keys; verifySignature refuses them under node:crypto too, so both engines answer alike. Checked
 * once per key, where a key comes in (BigInt arithmetic, about a millisecond).
 */
export function ed25519PublicKeyProblem(raw: Buffer): string | undefined {
  if (raw.length !== 32) {
    return `${raw.length} bytes, not 32`;
  }
  const bytes = Buffer.from(raw).reverse(); // little-endian
  const sign = (bytes[0] ?? 0) >> 7;
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  const y = BigInt(`0x${bytes.toString('hex')}`);
  if (y >= edP) {
    return 'its y coordinate is not below 2^255 - 19 (a second encoding of a point)';
  }
  const y2 = (y * y) % edP;
  const u = (y2 - 1n + edP) % edP;
  const v = (edD * y2 + 1n) % edP;
  // x = sqrt(u / v), RFC 8032 section 5.1.3.
  let x = (u * edPow(v, 3n) * edPow(u * edPow(v, 7n), (edP - 5n) / 8n)) % edP;
  const check = (v * x * x) % edP;
  if (check !== u) {
    if (check === (edP - u) % edP) {
      x = (x * edSqrtMinusOne) % edP;
    } else {
      return 'it is no point of the curve';
    }
  }
  if (x === 0n && sign === 1) {
    return 'x is 0 with its sign bit set (a second encoding of a point)';
  }
  if (Number(x & 1n) !== sign) {
    x = edP - x;
  }
  let point: [bigint, bigint] = [x, y];
  for (let doubling = 0; doubling < 3; doubling++) {
    point = edAdd(point, point);
  }
  if (point[0] === 0n && point[1] === 1n) {
    return 'it is a point of small order (one signature could verify for any message)';
  }
  return undefined;
}

/** The uncompressed point (0x04 || X || Y) of a P-256 public key. */
export function p256Point(publicKey: KeyObject): Buffer {
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.crv !== 'P-256' || jwk.x === undefined || jwk.y === undefined) {
    throw new CipherError('not a P-256 public key');
  }
  return Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
}

/** A P-256 public key from its uncompressed point. */
export function p256FromPoint(point: Buffer): KeyObject {
  if (point.length !== p256PointBytes || point[0] !== 4) {
    throw new CipherError('not an uncompressed P-256 point');
  }
  return createPublicKey({
    key: {
      kty: 'EC',
      crv: 'P-256',
      x: point.subarray(1, 33).toString('base64url'),
      y: point.subarray(33, 65).toString('base64url'),
    },
    format: 'jwk',
  });
}

/** The id a grant names a token by: SHA-256 of the device public key's uncompressed point. */
export function deviceKeyId(devicePoint: Buffer): Buffer {
  return createHash('sha256').update('gatecast-device').update(devicePoint).digest();
}

/**
 * The name of a token in receipts, purses and the ledger: "gc-" and the first 16 bytes of its
 * device key id in hex. The token and the subscription server derive it alike from the device key.
 */
export function tokenIdOf(devicePoint: Buffer): string {
  return `gc-${deviceKeyId(devicePoint).subarray(0, 16).toString('hex')}`;
}

/** What an Ed25519 private key's PKCS#8 DER holds before its 32-byte seed (RFC 8410). */
const ed25519Pkcs8Prefix = Buffer.from('302e020100300506032b657004220420', 'hex');

/** libsodium signing keys of the Ed25519 KeyObjects signed with (null: node:crypto signs with it). */
const sodiumSigningKeys = new WeakMap<KeyObject, object | null>();

/** The libsodium signing key for an Ed25519 private key, made once; undefined when node:crypto signs. */
function sodiumKeyOf(privateKey: KeyObject): { signer: SodiumSigner; key: object } | undefined {
  const signer =
    privateKey.type === 'private' && privateKey.asymmetricKeyType === 'ed25519'
      ? sodiumEd25519Signer()
      : undefined;
  if (signer === undefined) {
    return undefined;
  }
  let key = sodiumSigningKeys.get(privateKey);
  if (key === undefined) {
    // The seed is read from the key's PKCS#8 DER, a Buffer wiped below: a JWK would leave it in a
    // string (its `d`) that nothing can wipe.
    const der = privateKey.export({ format: 'der', type: 'pkcs8' });
    const publicOut = Buffer.alloc(32);
    try {
      key =
        der.length === ed25519Pkcs8Prefix.length + 32 &&
        der.subarray(0, ed25519Pkcs8Prefix.length).equals(ed25519Pkcs8Prefix)
          ? signer.key(der.subarray(ed25519Pkcs8Prefix.length), publicOut)
          : null;
    } finally {
      der.fill(0);
    }
    // The key libsodium derived must be the KeyObject's own, or node:crypto goes on signing with it.
    if (key !== null && !publicOut.equals(ed25519Raw(createPublicKey(privateKey)))) {
      key = null;
    }
    sodiumSigningKeys.set(privateKey, key);
  }
  return key === null ? undefined : { signer, key };
}

/**
 * Writes the Ed25519 signature of `message` into `out` at `offset` (64 bytes, not over the
 * message): libsodium signs when it is the signature engine (src/crypto/aead-engine.ts), else
 * node:crypto; both give the same bytes (Ed25519 is deterministic).
 */
export function signEd25519Into(message: Buffer, privateKey: KeyObject, out: Buffer, offset: number): void {
  // Both engines refuse alike: a place outside `out`, or over the message (the addon checks it
  // again; node:crypto's copy would cut the signature short or write it over the message).
  if (!Number.isInteger(offset) || offset < 0 || offset > out.length - signatureBytes) {
    throw new CipherError(`ed25519Sign: 64 bytes at ${offset} do not fit an output of ${out.length}`);
  }
  if (
    message.length > 0 &&
    message.buffer === out.buffer &&
    message.byteOffset < out.byteOffset + offset + signatureBytes &&
    out.byteOffset + offset < message.byteOffset + message.length
  ) {
    throw new CipherError('ed25519Sign: the signature would overlap the message');
  }
  const sodium = sodiumKeyOf(privateKey);
  if (sodium === undefined) {
    sign(null, message, privateKey).copy(out, offset);
    return;
  }
  sodium.signer.sign(sodium.key, message, out, offset);
}

/** The Ed25519 signature of `message` (64 bytes), as signEd25519Into makes it. */
export function signEd25519(message: Buffer, privateKey: KeyObject): Buffer {
  if (sodiumKeyOf(privateKey) === undefined) {
    return sign(null, message, privateKey);
  }
  const out = Buffer.alloc(signatureBytes);
  signEd25519Into(message, privateKey, out, 0);
  return out;
}

/** Signs a buffer encoded with a zeroed 64-byte signature slot at its end, in place. */
export function signInPlace(unsigned: Buffer, privateKey: KeyObject): Buffer {
  const at = unsigned.length - signatureBytes;
  signEd25519Into(unsigned.subarray(0, at), privateKey, unsigned, at);
  return unsigned;
}

/** Raw 32-byte Ed25519 public keys of the KeyObjects checked against (for libsodium). */
/** Raw 32-byte Ed25519 public keys checked against, and undefined for one that is no signer's (ed25519PublicKeyProblem). */
const rawPublicKeys = new WeakMap<KeyObject, Buffer | undefined>();
/**
 * The verdicts of ed25519PublicKeyProblem by raw key (hex): a key made again from its bytes for each
 * check (a token's root key) is not checked again; the oldest verdicts go first past the bound.
 */
const keyVerdicts = new Map<string, boolean>();
const keyVerdictsMax = 1024;

/** The raw form of an Ed25519 public key, or undefined when no signer could hold it; checked once. */
function usableRawKey(publicKey: KeyObject): Buffer | undefined {
  if (rawPublicKeys.has(publicKey)) {
    return rawPublicKeys.get(publicKey);
  }
  const raw = ed25519Raw(publicKey);
  const hex = raw.toString('hex');
  let usable = keyVerdicts.get(hex);
  if (usable === undefined) {
    usable = ed25519PublicKeyProblem(raw) === undefined;
    keyVerdicts.set(hex, usable);
    if (keyVerdicts.size > keyVerdictsMax) {
      keyVerdicts.delete(keyVerdicts.keys().next().value as string);
    }
  }
  const answer = usable ? raw : undefined;
  rawPublicKeys.set(publicKey, answer);
  return answer;
}

/**
 * The encodings of the points of small order, with the sign bit (bit 255) clear: 0, 1, the two y
 * of order 8, p - 1, and the second encodings p and p + 1 (libsodium's list). A signature whose R
 * is one of them is refused before either engine sees it: libsodium refuses it, and OpenSSL would
 * accept one that the key's holder made so (S = h·a), so receivers would differ by their engine.
 */
const smallOrderEncodings = [
  `00${'00'.repeat(31)}`,
  `01${'00'.repeat(31)}`,
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  `ec${'ff'.repeat(30)}7f`,
  `ed${'ff'.repeat(30)}7f`,
  `ee${'ff'.repeat(30)}7f`,
].map((hex) => Buffer.from(hex, 'hex'));

/** True when a signature's R (its first 32 bytes, the sign bit aside) is a point of small order. */
export function smallOrderR(signature: Buffer): boolean {
  if (signature.length < 32) {
    return false;
  }
  for (const encoding of smallOrderEncodings) {
    if (
      signature[0] === encoding[0] &&
      ((signature[31] ?? 0) & 0x7f) === encoding[31] &&
      signature.compare(encoding, 1, 31, 1, 31) === 0
    ) {
      return true;
    }
  }
  return false;
}

/**
 * Checks an Ed25519 signature; false for any failure, never throws. libsodium checks it when it is
 * the signature engine (src/crypto/aead-engine.ts, signatureEngineInfo), else node:crypto; under
 * a public key no signer could hold (ed25519PublicKeyProblem), or with an R of small order
 * (smallOrderR), nothing verifies, in either.
 */
export function verifySignature(signed: Buffer, signature: Buffer, publicKey: KeyObject): boolean {
  try {
    if (publicKey.type !== 'public' || publicKey.asymmetricKeyType !== 'ed25519') {
      return verify(null, signed, publicKey, signature);
    }
    // A key no signer could hold (small order, a second encoding) vouches for nothing, in either engine.
    const raw = usableRawKey(publicKey);
    if (raw === undefined || signature.length !== signatureBytes || smallOrderR(signature)) {
      return false;
    }
    const sodium = sodiumEd25519Verify();
    return sodium === undefined ? verify(null, signed, publicKey, signature) : sodium(signature, signed, raw);
  } catch {
    return false;
  }
}

/** What the operator needs to issue a grant to one token. */
export interface GrantRequest
  extends Omit<GrantBody, 'deviceKeyId' | 'ephemeralPublicKey' | 'wrappedServiceKey'> {
  /** The token's device public key, as its uncompressed P-256 point. */
  readonly devicePoint: Buffer;
  /** The 32-byte service key of this product and epoch. */
  readonly serviceKey: Buffer;
}

/**
 * Issues a grant (EMM): the service key wrapped to one token — ECDH of a fresh ephemeral P-256
 * key with the device key, the shared X coordinate as the key-encryption key (the derivation
 * SoftHSM performs inside the token with CKM_ECDH1_DERIVE and the null KDF) — signed by the root.
 */
export function issueGrant(request: GrantRequest, rootPrivateKey: KeyObject): Buffer {
  const ephemeral = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kek = diffieHellman({
    privateKey: ephemeral.privateKey,
    publicKey: p256FromPoint(request.devicePoint),
  });
  const unsigned = encodeGrantUnsigned({
    tier: request.tier,
    deviceKeyId: deviceKeyId(request.devicePoint),
    service: request.service,
    serviceEpoch: request.serviceEpoch,
    notBeforeMs: request.notBeforeMs,
    notAfterMs: request.notAfterMs,
    priceModel: request.priceModel,
    currency: request.currency,
    priceMinor: request.priceMinor,
    sourcePublicKey: request.sourcePublicKey,
    ephemeralPublicKey: p256Point(ephemeral.publicKey),
    wrappedServiceKey: wrapKey(kek, request.serviceKey),
  });
  kek.fill(0);
  return signInPlace(unsigned, rootPrivateKey);
}

/** What a membership is issued for: one token's slot in a service's member tree. */
export interface MembershipRequest
  extends Omit<MembershipBody, 'deviceKeyId' | 'ephemeralPublicKey' | 'wrappedKeys'> {
  readonly devicePoint: Buffer;
  /** The 32-byte keys of the slot's path, leaf first (src/crypto/lkh.ts, lkhPath). */
  readonly pathKeys: readonly Buffer[];
}

/**
 * Issues a membership: the keys of a token's path in the member tree, each wrapped to the token's
 * device key the way a grant's service key is (ECDH of a fresh ephemeral P-256 key, the shared X
 * coordinate as the key-encryption key), signed by the root.
 */
export function issueMembership(request: MembershipRequest, rootPrivateKey: KeyObject): Buffer {
  const ephemeral = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kek = diffieHellman({
    privateKey: ephemeral.privateKey,
    publicKey: p256FromPoint(request.devicePoint),
  });
  const unsigned = encodeMembershipUnsigned({
    depth: request.depth,
    service: request.service,
    serviceEpoch: request.serviceEpoch,
    treeId: request.treeId,
    treeEpoch: request.treeEpoch,
    slot: request.slot,
    deviceKeyId: deviceKeyId(request.devicePoint),
    ephemeralPublicKey: p256Point(ephemeral.publicKey),
    wrappedKeys: request.pathKeys.map((key) => wrapKey(kek, key)),
  });
  kek.fill(0);
  return signInPlace(unsigned, rootPrivateKey);
}

/** The member-tree group key a KEY's share is wrapped under, and the tree it is of. */
export interface TreeGroupKey {
  readonly treeId: number;
  readonly treeEpoch: number;
  /** The 32-byte group key (the tree root's). */
  readonly groupKey: Buffer;
}

/**
 * Builds a signed KEY message (ECM): the traffic key wrapped under the service key; with `tree`,
 * split in two shares, one wrapped under the service key and one under the tree's group key. The
 * tree share is fresh random unless `treeShare` is given: a source in every-n-th-packet mode keeps
 * one per period, since its group keys derive from the two shares (src/crypto/group-key.ts).
 */
export function buildKeyMessage(
  fields: HeaderFields,
  body: Omit<KeyBody, 'wrappedKey' | 'tree'>,
  serviceKey: Buffer,
  trafficKey: Buffer,
  sourcePrivateKey: KeyObject,
  tree?: TreeGroupKey,
  treeShare?: Buffer,
): Buffer {
  if (tree === undefined) {
    const unsigned = encodeKeyUnsigned(fields, { ...body, wrappedKey: wrapKey(serviceKey, trafficKey) });
    return signInPlace(unsigned, sourcePrivateKey);
  }
  if (treeShare !== undefined && treeShare.length !== trafficKey.length) {
    throw new RangeError(
      `a tree share is as long as the traffic key (${trafficKey.length} bytes), not ${treeShare.length}`,
    );
  }
  const share = treeShare === undefined ? nodeCrypto.randomBytes(trafficKey.length) : Buffer.from(treeShare);
  const rest = joinShares(trafficKey, share) as Buffer; // same length: never undefined
  const unsigned = encodeKeyUnsigned(fields, {
    ...body,
    wrappedKey: wrapKey(serviceKey, rest),
    tree: { treeId: tree.treeId, treeEpoch: tree.treeEpoch, wrappedShare: wrapKey(tree.groupKey, share) },
  });
  share.fill(0);
  rest.fill(0);
  return signInPlace(unsigned, sourcePrivateKey);
}

/** XOR of two equal-length keys into a new buffer (the two shares of a KEY with a tree part). */
export function joinShares(a: Buffer, b: Buffer): Buffer | undefined {
  if (a.length !== b.length) {
    return undefined;
  }
  const out = Buffer.alloc(a.length);
  for (let index = 0; index < out.length; index++) {
    out[index] = (a[index] as number) ^ (b[index] as number);
  }
  return out;
}

/**
 * Hands a tree's group key to a source over HTTP without it appearing in clear on the way: the
 * source sends a fresh X25519 public key; the server answers with its own ephemeral X25519 key and
 * the group key wrapped under HKDF-SHA-256 of the shared secret.
 */
export function sealGroupKeyFor(
  recipientX25519: Buffer,
  groupKey: Buffer,
): { ephemeral: Buffer; wrapped: Buffer } {
  const ephemeral = generateKeyPairSync('x25519');
  const recipient = x25519FromRaw(recipientX25519);
  const kek = groupKeyTransportKek(diffieHellman({ privateKey: ephemeral.privateKey, publicKey: recipient }));
  const wrapped = wrapKey(kek, groupKey);
  kek.fill(0);
  return { ephemeral: x25519Raw(ephemeral.publicKey), wrapped };
}

/**
 * Whether a raw X25519 public key can take part in sealGroupKeyFor: not a low-order point, with
 * which there is no shared secret (node:crypto refuses it).
 */
export function x25519Usable(raw: Buffer): boolean {
  try {
    diffieHellman({ privateKey: generateKeyPairSync('x25519').privateKey, publicKey: x25519FromRaw(raw) });
    return true;
  } catch {
    return false;
  }
}

/** The source's side of sealGroupKeyFor; undefined when it does not unwrap. */
export function openGroupKey(privateKey: KeyObject, ephemeral: Buffer, wrapped: Buffer): Buffer | undefined {
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey, publicKey: x25519FromRaw(ephemeral) });
  } catch {
    return undefined;
  }
  const kek = groupKeyTransportKek(shared);
  const key = unwrapKey(kek, wrapped);
  kek.fill(0);
  return key;
}

function groupKeyTransportKek(shared: Buffer): Buffer {
  const kek = Buffer.from(
    nodeCrypto.hkdfSync('sha256', shared, Buffer.alloc(0), 'gatecast group key transport v1', 32),
  );
  shared.fill(0);
  return kek;
}

/** The raw 32 bytes of an X25519 public key. */
export function x25519Raw(publicKey: KeyObject): Buffer {
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.crv !== 'X25519' || jwk.x === undefined) {
    throw new CipherError('not an X25519 public key');
  }
  return Buffer.from(jwk.x, 'base64url');
}

/** An X25519 public key from its raw 32 bytes. */
export function x25519FromRaw(raw: Buffer): KeyObject {
  if (raw.length !== 32) {
    throw new CipherError('an X25519 public key is 32 bytes');
  }
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' });
}

/** Builds the signed session offer of a run. */
export function buildSessionOffer(
  fields: HeaderFields,
  body: SessionOfferBody,
  sourcePrivateKey: KeyObject,
): Buffer {
  return signInPlace(encodeSessionOfferUnsigned(fields, body), sourcePrivateKey);
}

/**
 * Builds the signed control signature that vouches for one HEARTBEAT, END or DESCRIPTOR datagram
 * of a signed run (docs/protocol.md, "Signed sessions"): the header repeats the datagram's run and
 * sequence, the body carries its type and SHA-256.
 */
export function buildControlSignature(control: Buffer, sourcePrivateKey: KeyObject): Buffer {
  const header = decodeHeader(control);
  if (!header.ok) {
    throw new CipherError(`cannot sign a malformed control datagram: ${header.detail}`);
  }
  const { sessionId, incarnation, sequence, timestampUs, type } = header.value;
  const unsigned = encodeControlSignatureUnsigned(
    { sessionId, incarnation, sequence, timestampUs },
    type,
    sha256(control),
  );
  return signInPlace(unsigned, sourcePrivateKey);
}

/**
 * SHA-256 of one buffer. Node's one-shot `crypto.hash` (20.12 and later) skips the Hash object a
 * packet would otherwise build: about two thirds of the time for a 1,400-byte datagram
 * (docs/benchmarks.md, "Restricted channels"); older Node 20 builds the object.
 */
export const sha256: (data: Buffer) => Buffer = (() => {
  // Looked up on the module, not imported by name: a named import of it fails to link before 20.12.
  const oneShot = (nodeCrypto as { hash?: typeof nodeCrypto.hash }).hash;
  return oneShot === undefined
    ? (data: Buffer) => createHash('sha256').update(data).digest()
    : (data: Buffer) => oneShot('sha256', data, 'buffer');
})();

/** The manifest hash of a datagram as it travels: the first 16 bytes of its SHA-256. */
export function manifestHash(datagram: Buffer): Buffer {
  const hash = Buffer.allocUnsafe(manifestHashBytes);
  sha256Into(datagram, hash, 0, manifestHashBytes);
  return hash;
}

/**
 * Collects the hashes of consecutive DATA datagrams at the source and signs one manifest per
 * `packetsPerManifest` of them (32-64), so receivers verify every packet for one signature. The
 * hashes are written straight into one block (sha256Into): a packet costs its SHA-256, no buffer.
 */
export class ManifestBuilder {
  readonly #block: Buffer;
  #count = 0;
  #firstSequence = 0;
  #fields: Omit<HeaderFields, 'sequence' | 'timestampUs'>;

  constructor(
    fields: Omit<HeaderFields, 'sequence' | 'timestampUs'>,
    private readonly sourcePrivateKey: KeyObject,
    private readonly packetsPerManifest = 32,
  ) {
    if (
      !Number.isInteger(packetsPerManifest) ||
      packetsPerManifest < 1 ||
      packetsPerManifest > manifestPacketsMax
    ) {
      throw new CipherError(`a manifest covers 1-${manifestPacketsMax} packets`);
    }
    this.#fields = fields;
    this.#block = Buffer.alloc(packetsPerManifest * manifestHashBytes);
  }

  /** Adds a sent DATA datagram; returns a signed manifest when one is full, else undefined. */
  add(datagram: Buffer, sequence: number, timestampUs: number): Buffer | undefined {
    sha256Into(datagram, this.#block, this.hashOffset, manifestHashBytes);
    return this.addHashed(sequence, timestampUs);
  }

  /** The block the next packet's hash goes into, at hashOffset (a sealer writes it there: addHashed). */
  get hashBlock(): Buffer {
    return this.#block;
  }

  /** Where in hashBlock the next packet's hash goes (manifestHashBytes of it). */
  get hashOffset(): number {
    return this.#count * manifestHashBytes;
  }

  /**
   * Adds a sent DATA datagram whose hash is already at hashOffset of hashBlock (written as it was
   * sealed); returns a signed manifest when one is full, else undefined.
   */
  addHashed(sequence: number, timestampUs: number): Buffer | undefined {
    if (this.#count === 0) {
      this.#firstSequence = sequence;
    } else if ((this.#firstSequence + this.#count) >>> 0 !== sequence >>> 0) {
      throw new CipherError('manifest packets must be consecutive');
    }
    this.#count++;
    return this.#count >= this.packetsPerManifest ? this.flush(timestampUs) : undefined;
  }

  /** Signs what is collected (at END, or before a pause); undefined when nothing is. */
  flush(timestampUs: number): Buffer | undefined {
    if (this.#count === 0) {
      return undefined;
    }
    const unsigned = encodeManifestBlockUnsigned(
      { ...this.#fields, sequence: this.#firstSequence, timestampUs },
      this.#block.subarray(0, this.#count * manifestHashBytes),
    );
    this.#count = 0;
    return signInPlace(unsigned, this.sourcePrivateKey);
  }
}
