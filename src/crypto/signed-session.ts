/**
 * Signed sessions (docs/protocol.md, "Signed sessions"): every datagram of a signed run is
 * authenticated against the source's Ed25519 key before a role keeps any state for it.
 *
 * - DATA: through the manifests (SIGNATURE kind 1); a DATA datagram passes once a verified manifest
 *   holds its hash, and is held (bounded) until then.
 * - HEARTBEAT, END, DESCRIPTOR: each through its own control signature (SIGNATURE kind 3) over the
 *   datagram's SHA-256; held (bounded) until the signature comes.
 * - KEY: its own signature.
 *
 * The gate holds no content key: retransmit and repair servers authenticate sealed datagrams
 * exactly as a receiver does.
 */
import type { KeyObject } from 'node:crypto';
import {
  signedHeldControlMax,
  signedHeldPacketsMax,
  signedManifestHashesMax,
  signedRepeatsKeptMax,
  signedVouchedControlMax,
} from '../limits.js';
import { OldestFirst } from '../oldest-first.js';
import {
  headerBytes,
  headerProblem,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  offsetType,
  PacketType,
  uint16At,
  uint32At,
} from '../protocol/packet.js';
import { decodeKey, decodeSignature, manifestHashBytes, SignatureKind } from '../protocol/restricted.js';
import { sequenceAdd } from '../protocol/serial.js';
import { sha256Equals } from './aead-engine.js';
import { sha256 as sha256Of, verifySignature } from './authority.js';

/** Counters of a gate: what it let through and what it refused. */
export interface SignedSessionStats {
  /** DATA datagrams a manifest vouched for, passed on. */
  dataAuthenticated: number;
  /** HEARTBEAT, END and DESCRIPTOR datagrams a control signature vouched for, passed on. */
  controlAuthenticated: number;
  /** Manifests, offers, control signatures and KEY messages whose signature verified. */
  signaturesVerified: number;
  /** Manifests received again (the source repeats them) and not verified twice. */
  manifestsRepeated: number;
  /**
   * Offers and KEY messages received again byte for byte (the source repeats each unchanged for a
   * while) and not verified twice; passed on as the first was.
   */
  signedRepeats: number;
  /**
   * Refused as forged, by reason: `bad-signature` (a SIGNATURE or KEY that does not verify),
   * `hash-mismatch` (DATA whose hash differs from the one a manifest holds for its sequence),
   * `malformed` (a SIGNATURE or KEY that does not decode).
   */
  forged: Record<string, number>;
  /** Datagrams dropped unauthenticated: held until the bound and nothing vouched for them. */
  unauthenticated: number;
  /** Datagrams held now, waiting for a manifest or a control signature. */
  holding: number;
  /**
   * Control datagrams of a type the role said it no longer needs (ignoreControl), and the control
   * signatures that vouch for that type: dropped unverified, nothing of them kept or passed on.
   */
  controlIgnored: number;
}

/** A gate in front of a role's handler. */
export interface SignedSessionGate {
  readonly stats: Readonly<SignedSessionStats>;
  /**
   * Takes every datagram. Authenticated DATA, HEARTBEAT, END, DESCRIPTOR and KEY go to `pass`
   * (now, or later when what vouches for them arrives); SIGNATURE messages are consumed; other
   * types (NACK, REPAIR, …: not the source's) go to `pass` unchanged.
   */
  filter(datagram: Buffer, pass: (datagram: Buffer) => void): void;
  /**
   * Checks a DATA datagram against the manifests verified so far, keeping nothing: `authentic`,
   * `forged` (a manifest holds another hash for its sequence; counted) or `unknown`.
   */
  check(datagram: Buffer): 'authentic' | 'forged' | 'unknown';
  /** True when a verified manifest holds a hash for the run's sequence. */
  vouches(sessionId: number, incarnation: number, sequence: number): boolean;
  /**
   * The verified SIGNATURE datagram (as the source sent it) that vouches for a datagram this gate
   * passed: the manifest covering a DATA sequence, the control signature of a HEARTBEAT, END or
   * DESCRIPTOR — while it is remembered. What a retransmit server sends ahead of a REPAIR to a
   * requester that lost every copy of it (docs/protocol.md, "REPAIR").
   */
  signatureFor(datagram: Buffer): Buffer | undefined;
  /**
   * From now on drops the control datagrams of `type` (a receiver past its first DESCRIPTOR has no
   * use for the next) and the control signatures that vouch for that type, without hashing or
   * verifying them; those held now go too. Each is counted `controlIgnored`.
   */
  ignoreControl(type: (typeof PacketType)['heartbeat' | 'end' | 'descriptor']): void;
}

/** Options of a gate. */
export interface SignedSessionGateOptions {
  /**
   * Told of every SIGNATURE and KEY datagram whose signature verified, when it first arrives (a
   * repair server forwards them on S2 so its receivers can authenticate what it re-emits).
   */
  readonly onAuthenticated?: (datagram: Buffer) => void;
}

/** A DATA datagram waiting for its manifest. */
interface Held {
  /** The datagram; undefined once it was passed on or dropped (nothing keeps it then). */
  datagram: Buffer | undefined;
  /**
   * Where it goes once vouched for; undefined once passed on or dropped, with the datagram: a
   * role's callback may hold the envelope the datagram came in (a repair server's, the REPAIR),
   * and a Held stays in heldOrder a while after it is done.
   */
  pass: ((datagram: Buffer) => void) | undefined;
  readonly sessionId: number;
  readonly incarnation: number;
  readonly sequence: number;
}

/**
 * The DATA held at one sequence when more than one waits there (a forgery sharing a genuine
 * packet's sequence, a copy, another run's). One taken out is only marked done (its datagram
 * undefined) and the list is compacted once the done outnumber the waiting, so a forger who piles
 * thousands at one sequence makes the drop of each, and the manifest that releases them, cost no
 * walk over all the others.
 */
interface HeldTogether {
  list: Held[];
  /** How many of the list still wait. */
  waiting: number;
}

/**
 * A verified manifest, kept once for all the hashes remembered from it: the gate's Map of hashes
 * points each sequence at the manifest that vouches for it, and the hash is read in place, so a
 * packet's hash costs no object of its own (they lived for 65,536 packets, long enough for the
 * garbage collector to move each one twice).
 */
interface KeptManifest {
  /** The manifest datagram as the source sent it (a copy). */
  readonly datagram: Buffer;
  readonly sessionId: number;
  readonly incarnation: number;
  /** The sequence of its first hash. */
  readonly firstSequence: number;
  /** Where its first hash is in the datagram. */
  readonly hashesAt: number;
  /** How many hashes it holds. */
  readonly hashesTotal: number;
  /** How many of them are remembered from it now (not known before it came, not evicted since). */
  hashesKept: number;
}

/** What the Map of hashes holds under a sequence: its manifest, or those of the (rare) runs sharing it. */
type KeptAtSequence = KeptManifest | KeptManifest[];

/** The manifest of a run under one sequence, if one vouches for it. */
function manifestOfRun(
  kept: KeptAtSequence | undefined,
  sessionId: number,
  incarnation: number,
): KeptManifest | undefined {
  if (kept === undefined || Array.isArray(kept)) {
    return ofRun(kept, sessionId, incarnation);
  }
  return kept.sessionId === sessionId && kept.incarnation === incarnation ? kept : undefined;
}

/**
 * Values by 32-bit sequence, for the gate's hashes: a ring indexed by the sequence's low bits, with
 * at least twice as many slots as sequences are kept, so the consecutive sequences of a run never
 * share a slot; a sequence whose slot another holds (a run far apart) goes to a Map. The packet
 * path then reads an array where it looked up a Map of 65,536 entries several times a packet.
 */
export class BySequence<T> {
  readonly #sequences: Uint32Array;
  readonly #values: Array<T | undefined>;
  readonly #mask: number;
  readonly #overflow = new Map<number, T>();

  /** `slots` must be a power of two. */
  constructor(slots: number) {
    if (!Number.isInteger(slots) || slots < 1 || (slots & (slots - 1)) !== 0 || slots > 2 ** 30) {
      throw new RangeError(`slots must be a power of two up to 2^30, not ${slots}`);
    }
    this.#sequences = new Uint32Array(slots);
    this.#values = new Array<T | undefined>(slots).fill(undefined);
    this.#mask = slots - 1;
  }

  /** How many sequences went to the Map (their slot was another's). */
  get overflowing(): number {
    return this.#overflow.size;
  }

  get(sequence: number): T | undefined {
    const slot = sequence & this.#mask;
    const value = this.#values[slot];
    if (value !== undefined && this.#sequences[slot] === sequence) {
      return value;
    }
    return this.#overflow.size === 0 ? undefined : this.#overflow.get(sequence);
  }

  set(sequence: number, value: T): void {
    const slot = sequence & this.#mask;
    const occupant = this.#values[slot];
    if (occupant === undefined || this.#sequences[slot] === sequence) {
      this.#sequences[slot] = sequence;
      this.#values[slot] = value;
      if (occupant === undefined && this.#overflow.size > 0) {
        this.#overflow.delete(sequence); // it waited there while its slot was another's
      }
      return;
    }
    this.#overflow.set(sequence, value);
  }

  delete(sequence: number): void {
    const slot = sequence & this.#mask;
    if (this.#values[slot] !== undefined && this.#sequences[slot] === sequence) {
      this.#values[slot] = undefined;
      return;
    }
    if (this.#overflow.size > 0) {
      this.#overflow.delete(sequence);
    }
  }
}

/** Where a kept manifest holds the hash of `sequence` (one of its sequences) in its datagram. */
function hashOffset(manifest: KeptManifest, sequence: number): number {
  return manifest.hashesAt + ((sequence - manifest.firstSequence) >>> 0) * manifestHashBytes;
}

/** True for a single held DATA, false for those held together at one sequence. */
function isHeld(at: Held | HeldTogether): at is Held {
  return 'sequence' in at;
}

const vouchedTypes = new Set<number>([PacketType.heartbeat, PacketType.end, PacketType.descriptor]);

/**
 * The entry of a run in a list kept under one sequence. Maps are keyed by the 32-bit sequence and
 * hold the (rarely more than one) runs that share it, so the per-packet path builds no string key.
 */
function ofRun<T extends { sessionId: number; incarnation: number }>(
  list: readonly T[] | undefined,
  sessionId: number,
  incarnation: number,
): T | undefined {
  if (list === undefined) {
    return undefined;
  }
  for (const item of list) {
    if (item.sessionId === sessionId && item.incarnation === incarnation) {
      return item;
    }
  }
  return undefined;
}

/** True when the manifestHashBytes of `bytes` at `at` are the hash the kept manifest holds for `sequence`. */
function sameHashAt(bytes: Buffer, at: number, manifest: KeptManifest, sequence: number): boolean {
  const keptAt = hashOffset(manifest, sequence);
  return (
    bytes.compare(manifest.datagram, keptAt, keptAt + manifestHashBytes, at, at + manifestHashBytes) === 0
  );
}

/** True when the first manifestHashBytes of the datagram's SHA-256 are the manifest's hash for `sequence`. */
function hashMatches(datagram: Buffer, manifest: KeptManifest, sequence: number): boolean {
  return sha256Equals(datagram, manifest.datagram, hashOffset(manifest, sequence), manifestHashBytes);
}

/**
 * What a repeated offer or KEY stands for: its type, run and key epoch (a datagram of at least
 * headerBytes). The source signs it again with a later time every signedRepeatRefreshMs.
 */
function repeatSlotOf(datagram: Buffer): string {
  return `${datagram[offsetType]}/${uint32At(datagram, offsetSessionId)}/${uint32At(datagram, offsetIncarnation)}/${uint16At(datagram, offsetKeyEpoch)}`;
}

/** Builds a gate that authenticates against one source key. */
export function createSignedSessionGate(
  sourcePublicKey: KeyObject,
  options: SignedSessionGateOptions = {},
): SignedSessionGate {
  const stats: SignedSessionStats = {
    dataAuthenticated: 0,
    controlAuthenticated: 0,
    signaturesVerified: 0,
    manifestsRepeated: 0,
    signedRepeats: 0,
    forged: {},
    unauthenticated: 0,
    holding: 0,
    controlIgnored: 0,
  };
  /** The control types dropped unverified (ignoreControl). */
  const ignoredControl = new Set<number>();
  /**
   * Packet hashes from verified manifests: each sequence points at the manifest of each run that
   * vouches for it. `hashCount` counts the sequences so pointed at, the bound
   * signedManifestHashesMax applies to; past it the manifests kept longest are forgotten first,
   * each whole (keptOrder, from keptHead on).
   */
  const hashes = new BySequence<KeptAtSequence>(2 ** Math.ceil(Math.log2(2 * signedManifestHashesMax)));
  let hashCount = 0;
  let keptOrder: KeptManifest[] = [];
  let keptHead = 0;
  /** DATA waiting for its manifest, by sequence (a forgery may share a sequence, or be of another run). */
  const heldData = new BySequence<Held | HeldTogether>(2 ** Math.ceil(Math.log2(2 * signedHeldPacketsMax)));
  /** The held DATA in the order it came (from heldHead on), the oldest dropped first past the bound. */
  let heldOrder: Held[] = [];
  let heldHead = 0;
  let heldDataCount = 0;
  /** SHA-256 (hex) of control datagrams vouched for by verified control signatures → that signature. */
  const vouched = new Map<string, Buffer>();
  const oldestVouched = new OldestFirst(vouched);
  const heldControl: Array<{
    readonly datagram: Buffer;
    readonly pass: (datagram: Buffer) => void;
    readonly sha256: string;
  }> = [];

  /**
   * The offers and KEY messages whose signature verified, one per slot (the offer of a run, the KEY
   * of a run's epoch: repeatSlotOf), the latest signing of each, least recently repeated first. A
   * source repeats each unchanged at every control tick (docs/protocol.md, "Signed sessions"), and a
   * datagram equal to its slot's byte for byte is authentic without another Ed25519 check. A slot
   * takes a signing older than the one it holds only at its second copy in a row (a source whose
   * wall clock stepped back), so old copies replayed among the repeats cost the current one at
   * most a verification per two of theirs; and the slots of several runs of one source (a
   * retransmit server's) do not push each other out as a list of the last few datagrams would.
   */
  const verifiedRepeatable = new Map<
    string,
    {
      readonly datagram: Buffer;
      readonly timestampUs: number;
      /** The last older signing verified for the slot since. */
      older?: Buffer;
    }
  >();
  const isVerifiedRepeat = (datagram: Buffer): boolean => {
    if (datagram.length < headerBytes) {
      return false;
    }
    const slot = repeatSlotOf(datagram);
    const kept = verifiedRepeatable.get(slot);
    if (kept === undefined || !kept.datagram.equals(datagram)) {
      return false;
    }
    verifiedRepeatable.delete(slot); // most recently repeated last
    verifiedRepeatable.set(slot, kept);
    stats.signedRepeats++;
    return true;
  };
  const noteVerifiedRepeatable = (datagram: Buffer, timestampUs: number) => {
    const slot = repeatSlotOf(datagram);
    const kept = verifiedRepeatable.get(slot);
    if (kept !== undefined && timestampUs < kept.timestampUs && kept.older?.equals(datagram) !== true) {
      // An older signing: a replay, or a source whose wall clock stepped back. The slot takes it
      // at its second copy in a row, which a replay buys with two verifications of its own.
      kept.older = Buffer.from(datagram);
      return;
    }
    verifiedRepeatable.delete(slot);
    verifiedRepeatable.set(slot, { datagram: Buffer.from(datagram), timestampUs });
    for (const oldest of verifiedRepeatable.keys()) {
      if (verifiedRepeatable.size <= signedRepeatsKeptMax) {
        break;
      }
      verifiedRepeatable.delete(oldest);
    }
  };

  const forged = (reason: string) => {
    stats.forged[reason] = (stats.forged[reason] ?? 0) + 1;
  };
  const updateHolding = () => {
    stats.holding = heldDataCount + heldControl.length;
  };

  /** Passes DATA whose manifest is known; false when no manifest vouches for its sequence yet. */
  const passData = (
    sequence: number,
    sessionId: number,
    incarnation: number,
    datagram: Buffer,
    pass: (datagram: Buffer) => void,
  ) => {
    const expected = manifestOfRun(hashes.get(sequence), sessionId, incarnation);
    if (expected === undefined) {
      return false;
    }
    if (!hashMatches(datagram, expected, sequence)) {
      forged('hash-mismatch');
      return true;
    }
    stats.dataAuthenticated++;
    pass(datagram);
    return true;
  };

  /**
   * Takes a held DATA out (it was passed on or dropped) and lets go of it; returns its datagram, or
   * undefined when it was taken out before. Where it was to go is the caller's to read first.
   */
  const unhold = (held: Held): Buffer | undefined => {
    const datagram = held.datagram;
    if (datagram === undefined || held.pass === undefined) {
      return undefined;
    }
    held.datagram = undefined;
    held.pass = undefined;
    heldDataCount--;
    const at = heldData.get(held.sequence);
    if (at === held) {
      heldData.delete(held.sequence);
    } else if (at !== undefined && !isHeld(at)) {
      at.waiting--;
      if (at.waiting === 0) {
        heldData.delete(held.sequence);
      } else if (at.list.length > 2 * at.waiting) {
        at.list = at.list.filter((other) => other.datagram !== undefined);
      }
    }
    return datagram;
  };

  const holdData = (held: Held) => {
    while (heldDataCount >= signedHeldPacketsMax && heldHead < heldOrder.length) {
      const oldest = heldOrder[heldHead] as Held;
      heldOrder[heldHead] = undefined as unknown as Held;
      heldHead++;
      if (unhold(oldest) !== undefined) {
        stats.unauthenticated++;
      }
    }
    const at = heldData.get(held.sequence);
    if (at === undefined) {
      heldData.set(held.sequence, held);
    } else if (isHeld(at)) {
      heldData.set(held.sequence, { list: [at, held], waiting: 2 });
    } else {
      at.list.push(held);
      at.waiting++;
    }
    heldOrder.push(held);
    heldDataCount++;
    if (heldOrder.length - heldHead > 2 * heldDataCount + 1024) {
      // Mostly DATA passed on since: keep the order of what still waits (once per 1,024 held at least).
      heldOrder = heldOrder.slice(heldHead).filter((waiting) => waiting.datagram !== undefined);
      heldHead = 0;
    }
    updateHolding();
  };

  const onData = (datagram: Buffer, pass: (datagram: Buffer) => void) => {
    if (headerProblem(datagram) !== undefined) {
      // Malformed (short, a body length that does not hold, …): no source sends it, and every
      // role's decoder refuses it the same way; the role counts it by its reason and keeps nothing.
      pass(datagram);
      return;
    }
    const sequence = uint32At(datagram, offsetSequence);
    const sessionId = uint32At(datagram, offsetSessionId);
    const incarnation = uint32At(datagram, offsetIncarnation);
    if (!passData(sequence, sessionId, incarnation, datagram, pass)) {
      holdData({ datagram, pass, sessionId, incarnation, sequence });
    }
  };

  /** Points `sequence` at the manifest, unless a manifest of its run vouches for it already. */
  const remember = (sequence: number, manifest: KeptManifest) => {
    const kept = hashes.get(sequence);
    if (kept === undefined) {
      hashes.set(sequence, manifest);
    } else if (manifestOfRun(kept, manifest.sessionId, manifest.incarnation) !== undefined) {
      return;
    } else if (Array.isArray(kept)) {
      kept.push(manifest);
    } else {
      hashes.set(sequence, [kept, manifest]);
    }
    manifest.hashesKept++;
    hashCount++;
  };

  /** Forgets every sequence the manifest still vouches for. */
  const forget = (manifest: KeptManifest) => {
    for (let index = 0; index < manifest.hashesTotal && manifest.hashesKept > 0; index++) {
      const sequence = sequenceAdd(manifest.firstSequence, index);
      const kept = hashes.get(sequence);
      if (kept === manifest) {
        hashes.delete(sequence);
      } else if (Array.isArray(kept) && kept.includes(manifest)) {
        const others = kept.filter((other) => other !== manifest);
        hashes.set(sequence, others.length === 1 ? (others[0] as KeptManifest) : others);
      } else {
        continue;
      }
      manifest.hashesKept--;
      hashCount--;
    }
  };

  /** Forgets the manifests kept longest, each whole, until the hashes are within their bound. */
  const evictOldest = () => {
    while (hashCount > signedManifestHashesMax && keptHead < keptOrder.length) {
      const oldest = keptOrder[keptHead] as KeptManifest;
      keptOrder[keptHead] = undefined as unknown as KeptManifest; // let its datagram go
      keptHead++;
      forget(oldest);
    }
    if (keptHead >= 1024 && keptHead * 2 >= keptOrder.length) {
      keptOrder = keptOrder.slice(keptHead);
      keptHead = 0;
    }
  };

  const onManifest = (
    datagram: Buffer,
    run: { sessionId: number; incarnation: number; sequence: number; hashCount: number; hashesAt: number },
    verify: () => boolean,
  ) => {
    const { sessionId, incarnation, hashCount: count, hashesAt } = run;
    /** True when a verified manifest of the run holds the same hash for the index-th sequence. */
    const known = (index: number) => {
      const sequence = sequenceAdd(run.sequence, index);
      const vouched = manifestOfRun(hashes.get(sequence), sessionId, incarnation);
      const at = hashesAt + index * manifestHashBytes;
      return vouched !== undefined && sameHashAt(datagram, at, vouched, sequence);
    };
    let allKnown = true;
    for (let index = 0; index < count && allKnown; index++) {
      allKnown = known(index);
    }
    if (allKnown) {
      stats.manifestsRepeated++; // a repeat of one already verified: nothing new in it
      return;
    }
    if (!verify()) {
      forged('bad-signature');
      return;
    }
    stats.signaturesVerified++;
    options.onAuthenticated?.(datagram);
    // One copy of the datagram, kept whole (it may be served ahead of a REPAIR); its hashes are read in place.
    const kept: KeptManifest = {
      datagram: Buffer.from(datagram),
      sessionId,
      incarnation,
      firstSequence: run.sequence,
      hashesAt,
      hashesTotal: count,
      hashesKept: 0,
    };
    for (let index = 0; index < count; index++) {
      remember(sequenceAdd(run.sequence, index), kept);
    }
    if (kept.hashesKept > 0) {
      keptOrder.push(kept);
    }
    /** Passes on (or refuses) a DATA of this run that waited for this manifest. */
    const release = (held: Held) => {
      if (held.sessionId === sessionId && held.incarnation === incarnation) {
        const pass = held.pass;
        const datagram = unhold(held);
        if (datagram !== undefined && pass !== undefined) {
          passData(held.sequence, sessionId, incarnation, datagram, pass);
        }
      }
    };
    for (let index = 0; index < count; index++) {
      // Usually one DATA of this run waited for each sequence; a forgery of another run may too.
      const waiting = heldData.get(sequenceAdd(run.sequence, index));
      if (waiting === undefined) {
        continue;
      }
      if (isHeld(waiting)) {
        release(waiting);
      } else {
        for (const held of waiting.list) {
          // The list is replaced, never changed in place, when compacted: this walk sees it whole.
          release(held);
        }
      }
    }
    evictOldest();
    updateHolding();
  };

  const onControlSignature = (datagram: Buffer, sha256: Buffer) => {
    const hex = sha256.toString('hex');
    const known = vouched.has(hex);
    if (!known) {
      const copy = Buffer.from(datagram);
      vouched.set(hex, copy);
      oldestVouched.added(hex, copy);
      if (vouched.size > signedVouchedControlMax) {
        oldestVouched.shift();
      }
    }
    options.onAuthenticated?.(datagram);
    for (let index = 0; index < heldControl.length; ) {
      const held = heldControl[index] as (typeof heldControl)[number];
      if (held.sha256 === hex) {
        heldControl.splice(index, 1);
        stats.controlAuthenticated++;
        held.pass(held.datagram);
      } else {
        index++;
      }
    }
    updateHolding();
  };

  /**
   * True when the datagram is, byte for byte, the verified manifest that vouched for its first
   * sequence, and every hash of it is still remembered from it: a source sends each manifest three
   * times (ManifestRepeats), and the copies need no decoding, no lookup of each hash and no
   * signature check. Anything else takes the full path, which learns again what was evicted.
   */
  const repeatOfVerifiedManifest = (datagram: Buffer): boolean => {
    if (datagram.length <= headerBytes || datagram[headerBytes] !== SignatureKind.manifest) {
      return false;
    }
    const kept = manifestOfRun(
      hashes.get(uint32At(datagram, offsetSequence)),
      uint32At(datagram, offsetSessionId),
      uint32At(datagram, offsetIncarnation),
    );
    return kept !== undefined && kept.hashesKept === kept.hashesTotal && kept.datagram.equals(datagram);
  };

  const onSignature = (datagram: Buffer) => {
    if (repeatOfVerifiedManifest(datagram)) {
      stats.manifestsRepeated++;
      return;
    }
    if (
      ignoredControl.size > 0 &&
      datagram.length > headerBytes + 1 &&
      datagram[headerBytes] === SignatureKind.control &&
      ignoredControl.has(datagram[headerBytes + 1] as number)
    ) {
      stats.controlIgnored++; // vouches for a type the role drops: not verified, nothing kept
      return;
    }
    const offer = datagram.length > headerBytes && datagram[headerBytes] === SignatureKind.session;
    if (offer && isVerifiedRepeat(datagram)) {
      options.onAuthenticated?.(datagram);
      return;
    }
    const decoded = decodeSignature(datagram);
    if (!decoded.ok) {
      forged('malformed');
      return;
    }
    const message = decoded.value;
    const verify = () => verifySignature(message.signed, message.signature, sourcePublicKey);
    if (message.kind === SignatureKind.manifest) {
      onManifest(datagram, message, verify);
      return;
    }
    if (!verify()) {
      forged('bad-signature');
      return;
    }
    stats.signaturesVerified++;
    if (message.kind === SignatureKind.control) {
      onControlSignature(datagram, message.controlSha256);
    } else {
      if (offer) {
        noteVerifiedRepeatable(datagram, message.timestampUs);
      }
      options.onAuthenticated?.(datagram);
    }
  };

  const onControl = (datagram: Buffer, pass: (datagram: Buffer) => void) => {
    if (ignoredControl.has(datagram[offsetType] as number)) {
      stats.controlIgnored++;
      return;
    }
    const sha256 = sha256Of(datagram).toString('hex');
    if (vouched.has(sha256)) {
      stats.controlAuthenticated++;
      pass(datagram);
      return;
    }
    if (heldControl.length >= signedHeldControlMax) {
      heldControl.shift();
      stats.unauthenticated++;
    }
    heldControl.push({ datagram, pass, sha256 });
    updateHolding();
  };

  const onKey = (datagram: Buffer, pass: (datagram: Buffer) => void) => {
    if (isVerifiedRepeat(datagram)) {
      options.onAuthenticated?.(datagram);
      pass(datagram);
      return;
    }
    const decoded = decodeKey(datagram);
    if (!decoded.ok) {
      forged('malformed');
      return;
    }
    if (!verifySignature(decoded.value.signed, decoded.value.signature, sourcePublicKey)) {
      forged('bad-signature');
      return;
    }
    stats.signaturesVerified++;
    noteVerifiedRepeatable(datagram, decoded.value.timestampUs);
    options.onAuthenticated?.(datagram);
    pass(datagram);
  };

  return {
    stats,
    ignoreControl(type) {
      ignoredControl.add(type);
      for (let index = 0; index < heldControl.length; ) {
        if ((heldControl[index] as (typeof heldControl)[number]).datagram[offsetType] === type) {
          heldControl.splice(index, 1);
          stats.controlIgnored++;
        } else {
          index++;
        }
      }
      updateHolding();
    },
    vouches(sessionId, incarnation, sequence) {
      return manifestOfRun(hashes.get(sequence), sessionId, incarnation) !== undefined;
    },
    signatureFor(datagram) {
      if (datagram.length < headerBytes) {
        return undefined;
      }
      if (datagram[offsetType] === PacketType.data) {
        return manifestOfRun(
          hashes.get(uint32At(datagram, offsetSequence)),
          uint32At(datagram, offsetSessionId),
          uint32At(datagram, offsetIncarnation),
        )?.datagram;
      }
      return vouched.get(sha256Of(datagram).toString('hex'));
    },
    check(datagram) {
      if (datagram.length < headerBytes || datagram[offsetType] !== PacketType.data) {
        return 'unknown';
      }
      const sequence = uint32At(datagram, offsetSequence);
      const expected = manifestOfRun(
        hashes.get(sequence),
        uint32At(datagram, offsetSessionId),
        uint32At(datagram, offsetIncarnation),
      );
      if (expected === undefined) {
        return 'unknown';
      }
      if (!hashMatches(datagram, expected, sequence)) {
        forged('hash-mismatch');
        return 'forged';
      }
      return 'authentic';
    },
    filter(datagram, pass) {
      const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
      if (type === PacketType.data) {
        onData(datagram, pass);
      } else if (type === PacketType.signature) {
        onSignature(datagram);
      } else if (type === PacketType.key) {
        onKey(datagram, pass);
      } else if (type !== undefined && vouchedTypes.has(type)) {
        onControl(datagram, pass);
      } else {
        pass(datagram);
      }
    },
  };
}
