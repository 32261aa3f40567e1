/**
 * Packet protection suites (docs/protocol.md, "Restricted sessions"; docs/security.md).
 *
 * A restricted DATA packet is sealed with an AEAD — AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305,
 * through the packet engine (src/crypto/aead-engine.ts: OpenSSL's EVP by the addon in native/, or
 * node:crypto, the same bytes) — with the tag pinned to 16 bytes (Node accepts truncated GCM tags
 * unless told the length), the 32-byte gatecast header as associated data, and a 96-bit nonce
 * that is never random and never reused:
 *
 *   nonce = sender id (the run's incarnation, 32 bits) || packet counter (64 bits)
 *   packet counter = key epoch (16 bits) || 0 (16 bits) || sequence (32 bits)
 *
 * A source draws a fresh incarnation and fresh traffic keys every time it starts, so a restart
 * uses a new key and nonce space; within a run a sealer refuses to seal a sequence that is not
 * ahead of the last one it sealed under the same epoch, or that comes round the 32-bit sequence
 * space past the first one, so no (key, nonce) pair is used twice.
 */
import { randomBytes } from 'node:crypto';
import { groupKeysKept, groupNearPacketsMin, groupSeedTriesMax } from '../limits.js';
import {
  headerBytes,
  offsetBodyLength,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  offsetType,
  PacketType,
  uint16At,
  uint32At,
} from '../protocol/packet.js';
import { groupSeedBytes } from '../protocol/restricted.js';
import {
  type AeadContext,
  type AeadName,
  createAeadContext,
  keyBytesOf,
  nonceBytes,
  sealDatagramRefusal,
  tagBytes,
} from './aead-engine.js';
import { CipherError, SuiteRefused } from './errors.js';
import { type Cmac, createCmac, deriveGroupKeyWith, type GroupKeySource, groupOf } from './group-key.js';

/** AEAD tag length, pinned: shorter tags are refused (docs/security.md). The engine's, one number. */
export const aeadTagBytes = tagBytes;
/** AEAD nonce length (96 bits, as RFC 5116 recommends for GCM and RFC 8439 requires). */
export const aeadNonceBytes = nonceBytes;

/** Suite numbers as they travel in a session descriptor's offer. */
export const SuiteId = { aes128Gcm: 1, aes256Gcm: 2, chacha20Poly1305: 3 } as const;
export type SuiteIdCode = (typeof SuiteId)[keyof typeof SuiteId];

/** One AEAD suite. */
export interface Suite {
  readonly id: SuiteIdCode;
  /** The name used on the command line and in docs. */
  readonly name: AeadName;
  readonly keyBytes: 16 | 32;
}

/** Every suite gatecast speaks, in its default order of preference. */
export const suites: readonly Suite[] = [
  { id: SuiteId.aes256Gcm, name: 'aes-256-gcm', keyBytes: keyBytesOf['aes-256-gcm'] },
  { id: SuiteId.aes128Gcm, name: 'aes-128-gcm', keyBytes: keyBytesOf['aes-128-gcm'] },
  { id: SuiteId.chacha20Poly1305, name: 'chacha20-poly1305', keyBytes: keyBytesOf['chacha20-poly1305'] },
];

/** The only signature scheme accepted for manifests, descriptors, grants and KEY messages. */
export const signatureSchemeName = 'ed25519';

/**
 * Algorithms refused at configuration load, each with the reason a user reads. Matched against
 * the lower-cased name with '_' and ' ' read as '-'.
 */
const refusals: readonly { readonly pattern: RegExp; readonly why: string }[] = [
  { pattern: /md5/, why: 'MD5 collisions are practical; it authenticates nothing' },
  {
    pattern: /(^|-)sha-?1($|-)|hmac-sha-?1|ecdsa-with-sha1/,
    why: 'SHA-1 collisions are practical; it is refused for signatures and MACs',
  },
  { pattern: /rc4|arcfour/, why: 'RC4 keystream biases leak plaintext' },
  {
    pattern: /3des|des-ede|tripledes|triple-des/,
    why: '3DES has a 64-bit block (Sweet32) and no authentication',
  },
  { pattern: /(^|-)des($|-)/, why: 'DES has a 56-bit key and a 64-bit block' },
  { pattern: /-ecb$|(^|-)ecb($|-)/, why: 'ECB leaks equal plaintext blocks and authenticates nothing' },
  {
    pattern: /-cbc($|-)|(^|-)cbc($|-)/,
    why: 'CBC without authentication lets anyone flip plaintext bits and opens padding oracles',
  },
  { pattern: /-ctr($|-)|(^|-)ctr($|-)/, why: 'CTR without authentication lets anyone flip plaintext bits' },
  {
    pattern: /-ofb($|-)|-cfb\d*($|-)/,
    why: 'OFB and CFB without authentication let anyone flip plaintext bits',
  },
];

/** Why an algorithm name is refused, or undefined when gatecast does not refuse it outright. */
export function refusalReason(name: string): string | undefined {
  const normal = name
    .trim()
    .toLowerCase()
    .replace(/[_\s]+/g, '-');
  for (const refusal of refusals) {
    if (refusal.pattern.test(normal)) {
      return refusal.why;
    }
  }
  const tag = /^(aes-(?:128|192|256)-gcm|chacha20-poly1305)[-/](\d+)$/.exec(normal);
  if (tag !== null) {
    const bits = Number(tag[2]);
    if (bits !== aeadTagBytes * 8 && bits !== aeadTagBytes) {
      return `a ${bits}-bit tag is too short to stop forgeries; the tag is pinned to ${aeadTagBytes * 8} bits`;
    }
  }
  return undefined;
}

/**
 * Looks a suite up by name for a configuration field. A refused algorithm raises SuiteRefused
 * naming the field, the algorithm and why; an unknown one names the suites that exist.
 */
export function suiteByName(name: string, field: string): Suite {
  const why = refusalReason(name);
  if (why !== undefined) {
    throw new SuiteRefused(`${field}: ${name} is refused: ${why}`);
  }
  const normal = name
    .trim()
    .toLowerCase()
    .replace(/[_\s]+/g, '-');
  const bare = normal.replace(/[-/](128|16)$/, '');
  const suite = suites.find((candidate) => candidate.name === bare);
  if (suite === undefined) {
    throw new SuiteRefused(
      `${field}: ${name} is not a suite gatecast speaks (${suites.map((s) => s.name).join(', ')})`,
    );
  }
  return suite;
}

/** Checks a signature scheme named in configuration: only Ed25519 is accepted. */
export function checkSignatureScheme(name: string, field: string): void {
  const why = refusalReason(name);
  if (why !== undefined) {
    throw new SuiteRefused(`${field}: ${name} is refused: ${why}`);
  }
  if (name.trim().toLowerCase() !== signatureSchemeName) {
    throw new SuiteRefused(`${field}: ${name} is not a signature scheme gatecast speaks (ed25519)`);
  }
}

/** The suite with this wire number, or undefined. */
export function suiteById(id: number): Suite | undefined {
  return suites.find((suite) => suite.id === id);
}

/**
 * The seed's negotiation: the receiver takes the first suite of the source's offer that it
 * supports. Undefined when none fits (the receiver then says so and decodes nothing).
 */
export function negotiateSuite(
  offered: readonly number[],
  supported: readonly Suite[] = suites,
): Suite | undefined {
  for (const id of offered) {
    const suite = supported.find((candidate) => candidate.id === id);
    if (suite !== undefined) {
      return suite;
    }
  }
  return undefined;
}

/** Writes the nonce of a packet (module comment) into `out` (12 bytes). */
export function writePacketNonce(
  out: Buffer,
  incarnation: number,
  keyEpoch: number,
  sequence: number,
): Buffer {
  out.writeUInt32BE(incarnation >>> 0, 0);
  out.writeUInt16BE(keyEpoch, 4);
  out.writeUInt16BE(0, 6);
  out.writeUInt32BE(sequence >>> 0, 8);
  return out;
}

function checkKey(suite: Suite, key: Buffer): void {
  if (key.length !== suite.keyBytes) {
    throw new CipherError(`${suite.name} takes a ${suite.keyBytes}-byte key, not ${key.length} bytes`);
  }
}

/**
 * Seals DATA datagrams of one run under one traffic key per key epoch. Refuses (CipherError) to
 * seal a sequence that is not ahead of the last one sealed under the same epoch, or that comes
 * round past the epoch's first: a nonce is never reused, even by a caller that resends.
 */
export class PacketSealer {
  readonly #suite: Suite;
  readonly #incarnation: number;
  readonly #keys = new Map<
    number,
    {
      key: AeadContext | undefined;
      /** The epoch's first sequence sealed: sequences run on from it and never come round to it. */
      firstSequence: number | undefined;
      lastSequence: number | undefined;
      count: number;
      /** Every-n-th-packet mode: the KEY's shares, and the group being sealed. */
      group?: GroupSealing | undefined;
    }
  >();
  readonly #nonce = Buffer.alloc(aeadNonceBytes);
  readonly #randomBytes: (bytes: number) => Buffer;

  constructor(suite: Suite, incarnation: number, random: (bytes: number) => Buffer = randomBytes) {
    this.#randomBytes = random;
    // 1 to 2^32 - 1, as the nonce holds it: 2^32 would be written as 0, and 2^32 + 7 as run 7's.
    if (!Number.isInteger(incarnation) || incarnation < 1 || incarnation > 0xffff_ffff) {
      throw new CipherError(
        `a sealer needs the run incarnation (1 to 2^32 - 1) for its nonces, not ${incarnation}`,
      );
    }
    this.#suite = suite;
    this.#incarnation = incarnation >>> 0;
  }

  /** Installs the traffic key of an epoch (1-65535); a key epoch is never given a second key. */
  setKey(keyEpoch: number, key: Buffer): void {
    checkKey(this.#suite, key);
    this.#checkNewEpoch(keyEpoch);
    this.#keys.set(keyEpoch, {
      key: createAeadContext(this.#suite.name, key, true),
      firstSequence: undefined,
      lastSequence: undefined,
      count: 0,
    });
  }

  /**
   * Every-n-th-packet mode: the epoch's packets are sealed in groups of `packetsPerGroup`
   * (by sequence), each under a group key derived from the KEY's shares (the traffic key, or its
   * two shares with a member tree) and a fresh seed drawn when the group's first packet is sealed
   * (src/crypto/group-key.ts). The seed travels in clear at the start of each packet's body.
   */
  setGroupShares(keyEpoch: number, shares: readonly Buffer[], packetsPerGroup: number): void {
    for (const share of shares) {
      checkKey(this.#suite, share);
    }
    if (shares.length < 1 || shares.length > 2) {
      throw new CipherError(`a group key is derived from 1 or 2 shares, not ${shares.length}`);
    }
    if (!Number.isSafeInteger(packetsPerGroup) || packetsPerGroup < 1) {
      throw new CipherError(`packets per group ${packetsPerGroup} is not a positive integer`);
    }
    this.#checkNewEpoch(keyEpoch);
    this.#keys.set(keyEpoch, {
      key: undefined,
      firstSequence: undefined,
      lastSequence: undefined,
      count: 0,
      group: { prfs: shares.map((share) => createCmac(share)), packetsPerGroup, current: undefined },
    });
  }

  /** An epoch is 1-65535 and is given a key once (setKey, setGroupShares). */
  #checkNewEpoch(keyEpoch: number): void {
    if (keyEpoch < 1 || keyEpoch > 0xffff || !Number.isInteger(keyEpoch)) {
      throw new CipherError(`key epoch ${keyEpoch} is not 1-65535`);
    }
    if (this.#keys.has(keyEpoch)) {
      throw new CipherError(`key epoch ${keyEpoch} already has a key; a new key needs a new epoch`);
    }
  }

  /**
   * A fresh group seed: drawn 256 at a time (one call of the CSPRNG costs about as much as
   * sealing four packets), each handed out once.
   */
  #freshSeed(): Buffer {
    if (this.#seedAt + groupSeedBytes > this.#seeds.length) {
      this.#seeds = this.#randomBytes(groupSeedBytes * 256);
      this.#seedAt = 0;
    }
    const seed = Buffer.from(this.#seeds.subarray(this.#seedAt, this.#seedAt + groupSeedBytes));
    this.#seeds.fill(0, this.#seedAt, this.#seedAt + groupSeedBytes);
    this.#seedAt += groupSeedBytes;
    return seed;
  }
  #seeds: Buffer = Buffer.alloc(0);
  #seedAt = 0;

  /** Forgets an epoch's key (after its crypto-period and grace); its epoch is never reused. */
  dropKey(keyEpoch: number): void {
    const entry = this.#keys.get(keyEpoch);
    if (entry !== undefined) {
      entry.key?.dispose();
      entry.key = undefined; // the epoch stays known, so it is never given a second key
      if (entry.group !== undefined) {
        entry.group.current?.key.dispose();
        entry.group = undefined;
      }
    }
  }

  /**
   * Seals a plain DATA datagram whose header names this run and an epoch with a key. Returns the
   * sealed datagram: the same header with the body length grown by the tag, then ciphertext and
   * tag. It is written into `into` when given (at least the plain length plus the tag, not
   * overlapping `plain`; the source passes a slot of its send ring), else into a new buffer.
   * With `hashOut`, the first `hashLength` bytes of the sealed datagram's SHA-256 are written
   * there at `hashOffset` in the same call (a manifest's hash: ManifestBuilder.hashBlock). A refused
   * call writes nothing, neither into `into` nor into `plain`, and uses no nonce.
   */
  seal(plain: Buffer, into?: Buffer, hashOut?: Buffer, hashOffset?: number, hashLength?: number): Buffer {
    // One seal at a time: a getter or method of an argument that seals again from inside this call
    // would seal the sequence checked here before this call records it, and this call would then
    // seal it a second time under the same nonce.
    if (this.#sealing) {
      throw new CipherError('a sealer seals one packet at a time: seal was called again from inside seal');
    }
    this.#sealing = true;
    try {
      return this.#sealOne(plain, into, hashOut, hashOffset, hashLength);
    } finally {
      this.#sealing = false;
    }
  }
  #sealing = false;

  #sealOne(
    plain: Buffer,
    into: Buffer | undefined,
    hashOut: Buffer | undefined,
    hashOffset: number | undefined,
    hashLength: number | undefined,
  ): Buffer {
    if (plain.length < headerBytes || plain[offsetType] !== PacketType.data) {
      throw new CipherError('only DATA datagrams are sealed');
    }
    const incarnation = uint32At(plain, offsetIncarnation);
    if (incarnation !== this.#incarnation) {
      throw new CipherError(`datagram of incarnation ${incarnation}, sealer of ${this.#incarnation}`);
    }
    const keyEpoch = uint16At(plain, offsetKeyEpoch);
    const entry = this.#keys.get(keyEpoch);
    if (entry === undefined || (entry.key === undefined && entry.group === undefined)) {
      throw new CipherError(`no traffic key for key epoch ${keyEpoch}`);
    }
    // As the 32-bit number the nonce holds, once: a view whose read gave -0.5 and then 0.5 passed
    // the checks as two sequences and sealed both under the nonce of sequence 0 (uint32At gives an
    // unsigned 32-bit integer, whatever its bytes read as).
    const sequence = uint32At(plain, offsetSequence);
    if (entry.lastSequence !== undefined) {
      const ahead = (sequence - entry.lastSequence) >>> 0;
      if (ahead === 0 || ahead >= 0x8000_0000) {
        throw new CipherError(
          `sequence ${sequence} is not ahead of ${entry.lastSequence} in key epoch ${keyEpoch}: its nonce was used`,
        );
      }
      // Steps each ahead of the last can still come round the 32-bit space (0, 2^31 - 1, 2^32 - 2,
      // 0): a sequence is also past the last when counted from the epoch's first.
      const first = entry.firstSequence ?? entry.lastSequence;
      if ((sequence - first) >>> 0 <= (entry.lastSequence - first) >>> 0) {
        throw new CipherError(
          `sequence ${sequence} lies between ${first} and ${entry.lastSequence}, sealed first and last in key epoch ${keyEpoch} (the sequences came round the 32-bit space): its nonce was used`,
        );
      }
    }
    if (entry.count >= 0x7fff_ffff) {
      throw new CipherError(`key epoch ${keyEpoch} has sealed 2^31 - 1 packets; start a new epoch`);
    }
    if (entry.group !== undefined) {
      return this.#sealInGroup(
        entry,
        entry.group,
        plain,
        keyEpoch,
        sequence,
        into,
        hashOut,
        hashOffset,
        hashLength,
      );
    }
    const key = entry.key as AeadContext;
    const sealedLength = plain.length + aeadTagBytes;
    if (into !== undefined && into.length < sealedLength) {
      throw new CipherError(`a sealed datagram of ${sealedLength} bytes does not fit ${into.length}`);
    }
    const out = into ?? Buffer.allocUnsafe(sealedLength);
    // One engine call: the header read once and held to the nonce checked above (this run, this
    // epoch, a sequence ahead), copied with its new body length, the body sealed, the hash taken.
    // It checks every range before it writes: a refused packet leaves `into` and `plain` untouched.
    writePacketNonce(this.#nonce, this.#incarnation, keyEpoch, sequence);
    key.sealPacket(this.#nonce, plain, out, hashOut, hashOffset, hashLength);
    // Counted once the packet is sealed: a refused call (a bad hash range) used no nonce.
    entry.firstSequence ??= sequence;
    entry.lastSequence = sequence;
    entry.count += 1;
    return out.length === sealedLength ? out : out.subarray(0, sealedLength);
  }

  /**
   * Every-n-th-packet mode: header ‖ group seed ‖ ciphertext ‖ tag, the header and the seed as
   * associated data, under the group's key (a new group draws a seed and derives its key first).
   */
  #sealInGroup(
    entry: { firstSequence: number | undefined; lastSequence: number | undefined; count: number },
    group: GroupSealing,
    plain: Buffer,
    keyEpoch: number,
    sequence: number,
    into: Buffer | undefined,
    hashOut: Buffer | undefined,
    hashOffset: number | undefined,
    hashLength: number | undefined,
  ): Buffer {
    const sealedLength = plain.length + groupSeedBytes + aeadTagBytes;
    if (into !== undefined && into.length < sealedLength) {
      throw new CipherError(`a sealed datagram of ${sealedLength} bytes does not fit ${into.length}`);
    }
    const bodyBytes = plain.length - headerBytes + groupSeedBytes + aeadTagBytes;
    if (bodyBytes > 0xffff) {
      throw new CipherError(`a sealed body of ${bodyBytes} bytes does not fit the header's 16-bit length`);
    }
    const out = into ?? Buffer.allocUnsafe(sealedLength);
    if (
      out.buffer === plain.buffer &&
      out.byteOffset < plain.byteOffset + plain.length &&
      plain.byteOffset < out.byteOffset + sealedLength
    ) {
      throw new CipherError('AEAD: the sealed datagram overlaps the plaintext');
    }
    // The engine seals in place: header ‖ seed ‖ payload laid out in `out` first.
    const inPlace = out.subarray(0, plain.length + groupSeedBytes);
    const refusal = sealDatagramRefusal(
      inPlace,
      out,
      headerBytes + groupSeedBytes,
      hashOut,
      hashOffset,
      hashLength,
    );
    if (refusal !== undefined) {
      throw new CipherError(refusal);
    }
    const groupIndex = groupOf(sequence, group.packetsPerGroup);
    if (group.current === undefined || group.current.index !== groupIndex) {
      const seed = this.#freshSeed();
      const key = deriveGroupKeyWith(
        group.prfs,
        seed,
        {
          sessionId: uint32At(plain, offsetSessionId),
          incarnation: this.#incarnation,
          keyEpoch,
          packetsPerGroup: group.packetsPerGroup,
          groupIndex,
        },
        this.#suite.keyBytes,
      );
      group.current?.key.dispose();
      group.current = { index: groupIndex, seed, key: createAeadContext(this.#suite.name, key, true) };
      key.fill(0);
    }
    plain.copy(out, 0, 0, headerBytes);
    out.writeUInt16BE(bodyBytes, offsetBodyLength);
    group.current.seed.copy(out, headerBytes);
    plain.copy(out, headerBytes + groupSeedBytes, headerBytes);
    writePacketNonce(this.#nonce, this.#incarnation, keyEpoch, sequence);
    group.current.key.sealDatagram(
      this.#nonce,
      inPlace,
      out,
      headerBytes + groupSeedBytes,
      hashOut,
      hashOffset,
      hashLength,
    );
    entry.firstSequence ??= sequence;
    entry.lastSequence = sequence;
    entry.count += 1;
    return out.length === sealedLength ? out : out.subarray(0, sealedLength);
  }
}

/** A sealer's every-n-th-packet state for one key epoch. */
interface GroupSealing {
  /** AES-CMAC under each of the KEY's shares, made once per epoch. */
  readonly prfs: Cmac[];
  readonly packetsPerGroup: number;
  current: { index: number; seed: Buffer; key: AeadContext } | undefined;
}

/**
 * Why a sealed packet was not opened; counted per reason by the receiver. Every-n-th-packet mode
 * adds `bad-seed` (a seed other than the one that opened its group: forged) and `no-group-key`
 * (the token was not asked: over the stream's or the suspect budget, or it refused).
 */
export type OpenFailure = 'no-key' | 'bad-tag' | 'truncated' | 'bad-seed' | 'no-group-key';

/**
 * Which budget a group key's ask draws on: `stream` for a group near the newest packet opened
 * under a group key (within groupKeysKept groups or groupNearPacketsMin packets, in this epoch or
 * an earlier one, or none opened yet) and within its first groupSeedTriesMax seeds; `suspect` for
 * the others (a far-off group, or a group that several made-up seeds came for). A flood of far-off
 * forgeries uses up the suspect budget, never the stream's; and a group that forged seeds reached
 * first is still asked about, so a forger cannot shut it for good.
 */
export type GroupAskKind = 'stream' | 'suspect';

interface GroupOpening {
  readonly asker: GroupKeySource;
  /** True when the token may be asked now (the receiver's budgets). */
  readonly mayAsk: (kind: GroupAskKind) => boolean;
  readonly groups: Map<number, { seed: Buffer; key: AeadContext; confirmed: boolean; tries: number }>;
}

/** Opens sealed DATA datagrams under the traffic keys a token released. */
export class PacketOpener {
  readonly #suite: Suite;
  readonly #keys = new Map<number, AeadContext>();
  readonly #groups = new Map<number, GroupOpening>();
  readonly #nonce = Buffer.alloc(aeadNonceBytes);
  /** Every-n-th-packet mode: where the group keys asked of the token are counted. */
  readonly #counters: { groupKeysAsked: number };
  /**
   * Every-n-th-packet mode: the newest sequence opened under a group key, in any epoch (sequences
   * run on across epochs, so a new epoch's first groups are near it too).
   */
  #newestGrouped: number | undefined;

  /**
   * `counters`: where to count the group keys asked (a receiver's own counters, so they are plain
   * fields it shows as they are, with no getter: see ReceiverProtectionStats).
   */
  constructor(suite: Suite, counters: { groupKeysAsked: number } = { groupKeysAsked: 0 }) {
    this.#suite = suite;
    this.#counters = counters;
  }

  /** Every-n-th-packet mode: group keys asked of the token. */
  get groupKeysAsked(): number {
    return this.#counters.groupKeysAsked;
  }

  /**
   * Every-n-th-packet mode: the epoch's packets carry a group seed and open under group keys,
   * each asked of the token (through `asker`) once, when the first packet of its group arrives,
   * if `mayAsk` allows. A seed other than the one that opened a group is dropped unasked.
   */
  setGroupKeys(keyEpoch: number, asker: GroupKeySource, mayAsk: (kind: GroupAskKind) => boolean): void {
    if (asker.keyBytes !== this.#suite.keyBytes) {
      throw new CipherError(
        `${this.#suite.name} takes ${this.#suite.keyBytes}-byte keys, not ${asker.keyBytes}-byte group keys`,
      );
    }
    this.dropKey(keyEpoch);
    this.#groups.set(keyEpoch, { asker, mayAsk, groups: new Map() });
  }

  /** The suite in use. */
  get suite(): Suite {
    return this.#suite;
  }

  /** Installs the traffic key of an epoch. */
  setKey(keyEpoch: number, key: Buffer): void {
    checkKey(this.#suite, key);
    this.#keys.get(keyEpoch)?.dispose();
    this.#keys.set(keyEpoch, createAeadContext(this.#suite.name, key, false));
  }

  /** True when the epoch's key (or its group keys' asker) is held. */
  hasKey(keyEpoch: number): boolean {
    return this.#keys.has(keyEpoch) || this.#groups.has(keyEpoch);
  }

  /** Forgets an epoch's key. */
  dropKey(keyEpoch: number): void {
    this.#keys.get(keyEpoch)?.dispose();
    this.#keys.delete(keyEpoch);
    for (const group of this.#groups.get(keyEpoch)?.groups.values() ?? []) {
      group.key.dispose();
    }
    this.#groups.delete(keyEpoch);
  }

  /**
   * Opens a sealed DATA datagram: on success a plain DATA datagram (header with the body length
   * of the plaintext, key epoch kept), else the reason. Nothing of a packet that fails is returned.
   *
   * `inPlace`: the plaintext is written over the ciphertext in `sealed` itself and the result is a
   * view of it (no allocation); for a caller that owns the datagram and keeps no other reference
   * to it. A packet that fails then has its body wiped in `sealed`.
   */
  open(sealed: Buffer, inPlace = false): Buffer | OpenFailure {
    if (sealed.length < headerBytes + aeadTagBytes) {
      return 'truncated';
    }
    const keyEpoch = uint16At(sealed, offsetKeyEpoch);
    const grouped = this.#groups.get(keyEpoch);
    if (grouped !== undefined) {
      return this.#openInGroup(grouped, sealed, keyEpoch, inPlace);
    }
    const key = this.#keys.get(keyEpoch);
    if (key === undefined) {
      return 'no-key';
    }
    if (inPlace) {
      // One engine call: the nonce from the header, opened over itself, the body length set.
      const plainLength = key.openPacket(sealed);
      return plainLength < 0 ? 'bad-tag' : sealed.subarray(0, plainLength);
    }
    const incarnation = uint32At(sealed, offsetIncarnation);
    const sequence = uint32At(sealed, offsetSequence);
    writePacketNonce(this.#nonce, incarnation, keyEpoch, sequence);
    const bodyEnd = sealed.length - aeadTagBytes;
    const out = inPlace ? sealed : Buffer.allocUnsafe(bodyEnd);
    if (!key.openDatagram(this.#nonce, sealed, headerBytes, out, headerBytes)) {
      out.fill(0, inPlace ? headerBytes : 0, bodyEnd);
      return 'bad-tag';
    }
    if (!inPlace) {
      sealed.copy(out, 0, 0, headerBytes);
    }
    out.writeUInt16BE(bodyEnd - headerBytes, offsetBodyLength);
    return inPlace ? sealed.subarray(0, bodyEnd) : out;
  }

  /** open() for an epoch in every-n-th-packet mode: header ‖ seed ‖ ciphertext ‖ tag. */
  #openInGroup(
    grouped: GroupOpening,
    sealed: Buffer,
    keyEpoch: number,
    inPlace: boolean,
  ): Buffer | OpenFailure {
    const aadBytes = headerBytes + groupSeedBytes;
    if (sealed.length < aadBytes + aeadTagBytes) {
      return 'truncated';
    }
    const sequence = uint32At(sealed, offsetSequence);
    const groupIndex = groupOf(sequence, grouped.asker.packetsPerGroup);
    const seed = sealed.subarray(headerBytes, aadBytes);
    let group = grouped.groups.get(groupIndex);
    if (group === undefined || !group.seed.equals(seed)) {
      // A group opened under one seed has no other: a second seed is forged, and costs no token call.
      if (group?.confirmed === true) {
        return 'bad-seed';
      }
      // A group not opened yet is never shut: made-up seeds sent ahead of its packets would
      // otherwise drop them all as forged. Past a few seeds it is asked from the suspect budget.
      const kind =
        (group?.tries ?? 0) < groupSeedTriesMax &&
        isNearSequence(sequence, this.#newestGrouped, grouped.asker.packetsPerGroup)
          ? 'stream'
          : 'suspect';
      if (!grouped.mayAsk(kind)) {
        return 'no-group-key';
      }
      let raw: Buffer;
      try {
        raw = grouped.asker.groupKey(groupIndex, Buffer.from(seed));
      } catch {
        return 'no-group-key';
      }
      this.#counters.groupKeysAsked++;
      const tries = (group?.tries ?? 0) + 1;
      group?.key.dispose();
      group = {
        seed: Buffer.from(seed),
        key: createAeadContext(this.#suite.name, raw, false),
        confirmed: false,
        tries,
      };
      raw.fill(0);
      grouped.groups.delete(groupIndex);
      grouped.groups.set(groupIndex, group);
      while (grouped.groups.size > groupKeysKept) {
        const [oldest, kept] = grouped.groups.entries().next().value as [number, { key: AeadContext }];
        kept.key.dispose();
        grouped.groups.delete(oldest);
      }
    }
    writePacketNonce(this.#nonce, uint32At(sealed, offsetIncarnation), keyEpoch, sequence);
    const bodyEnd = sealed.length - aeadTagBytes;
    const plainLength = bodyEnd - groupSeedBytes;
    const out = inPlace ? sealed : Buffer.allocUnsafe(plainLength);
    if (!group.key.openDatagram(this.#nonce, sealed, aadBytes, out, inPlace ? aadBytes : headerBytes)) {
      out.fill(0, inPlace ? aadBytes : 0, inPlace ? bodyEnd : plainLength);
      return 'bad-tag';
    }
    group.confirmed = true;
    const ahead = (sequence - (this.#newestGrouped ?? sequence)) >>> 0;
    if (this.#newestGrouped === undefined || (ahead > 0 && ahead < 0x8000_0000)) {
      this.#newestGrouped = sequence;
    }
    if (inPlace) {
      sealed.copyWithin(headerBytes, aadBytes, bodyEnd);
    } else {
      sealed.copy(out, 0, 0, headerBytes);
    }
    out.writeUInt16BE(plainLength - headerBytes, offsetBodyLength);
    return inPlace ? sealed.subarray(0, plainLength) : out;
  }
}

/**
 * True when a sequence lies within groupKeysKept groups (groupNearPacketsMin at least) of the
 * newest opened, either way, or none is.
 */
function isNearSequence(sequence: number, newest: number | undefined, packetsPerGroup: number): boolean {
  if (newest === undefined) {
    return true;
  }
  const ahead = (sequence - newest) >>> 0;
  const near = Math.max(groupKeysKept * packetsPerGroup, groupNearPacketsMin);
  return ahead <= near || 0x1_0000_0000 - ahead <= near;
}
