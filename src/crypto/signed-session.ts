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
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  offsetType,
  PacketType,
} from '../protocol/packet.js';
import { decodeKey, decodeSignature, manifestHashBytes, SignatureKind } from '../protocol/restricted.js';
import { sequenceAdd } from '../protocol/serial.js';
import { sha256Into } from './aead-engine.js';
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
}

/** Options of a gate. */
export interface SignedSessionGateOptions {
  /**
   * Told of every SIGNATURE and KEY datagram whose signature verified, when it first arrives (a
   * repair server forwards them on S2 so its receivers can authenticate what it re-emits).
   */
  readonly onAuthenticated?: (datagram: Buffer) => void;
}

interface Held {
  readonly datagram: Buffer;
  readonly pass: (datagram: Buffer) => void;
  readonly sessionId: number;
  readonly incarnation: number;
}

/** A verified manifest, kept once for all the hashes remembered from it. */
interface KeptManifest {
  /** The manifest datagram as the source sent it. */
  readonly datagram: Buffer;
  /** How many hashes it holds. */
  readonly hashesTotal: number;
  /** How many of them are remembered from it now (not known before it came, not evicted since). */
  hashesKept: number;
}

/** A packet hash a verified manifest holds for one run and sequence. */
interface VouchedHash {
  readonly sessionId: number;
  readonly incarnation: number;
  /** The verified manifest the hash came from. */
  readonly manifest: KeptManifest;
  /** Where the hash is in the manifest's datagram (manifestHashBytes of it). */
  readonly at: number;
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

/** Where hashMatches writes a datagram's hash (one check at a time: it is used and done at once). */
const hashScratch = Buffer.alloc(manifestHashBytes);

/** True when the first manifestHashBytes of the datagram's SHA-256 are the hash `vouched` names. */
function hashMatches(datagram: Buffer, vouched: VouchedHash): boolean {
  sha256Into(datagram, hashScratch, 0, manifestHashBytes);
  return hashScratch.compare(vouched.manifest.datagram, vouched.at, vouched.at + manifestHashBytes) === 0;
}

/** True when `hash` is the hash `vouched` names. */
function sameHash(hash: Buffer, vouched: VouchedHash): boolean {
  return hash.compare(vouched.manifest.datagram, vouched.at, vouched.at + manifestHashBytes) === 0;
}

/**
 * What a repeated offer or KEY stands for: its type, run and key epoch (a datagram of at least
 * headerBytes). The source signs it again with a later time every signedRepeatRefreshMs.
 */
function repeatSlotOf(datagram: Buffer): string {
  return `${datagram[offsetType]}/${datagram.readUInt32BE(offsetSessionId)}/${datagram.readUInt32BE(offsetIncarnation)}/${datagram.readUInt16BE(offsetKeyEpoch)}`;
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
  };
  /**
   * Packet hashes from verified manifests, by sequence (each with its run); insertion order is age.
   * `hashCount` counts the entries, the bound signedManifestHashesMax applies to.
   */
  const hashes = new Map<number, VouchedHash[]>();
  /** Its oldest first, in constant time (a full Map drops one for each new one; see OldestFirst). */
  const oldestHashes = new OldestFirst(hashes);
  let hashCount = 0;
  /** DATA waiting for its manifest, by sequence (a forgery may share a sequence, or be of another run). */
  const heldData = new Map<number, Held[]>();
  const oldestHeld = new OldestFirst(heldData);
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

  /** Passes held DATA whose manifest is known; false when no manifest vouches for its sequence yet. */
  const passData = (sequence: number, held: Held) => {
    const expected = ofRun(hashes.get(sequence), held.sessionId, held.incarnation);
    if (expected === undefined) {
      return false;
    }
    if (!hashMatches(held.datagram, expected)) {
      forged('hash-mismatch');
      return true;
    }
    stats.dataAuthenticated++;
    held.pass(held.datagram);
    return true;
  };

  const holdData = (sequence: number, held: Held) => {
    while (heldDataCount >= signedHeldPacketsMax) {
      const oldest = oldestHeld.shift();
      if (oldest === undefined) {
        break;
      }
      const dropped = oldest[1].length;
      heldDataCount -= dropped;
      stats.unauthenticated += dropped;
    }
    const list = heldData.get(sequence);
    if (list === undefined) {
      const fresh = [held];
      heldData.set(sequence, fresh);
      oldestHeld.added(sequence, fresh);
    } else {
      list.push(held);
    }
    heldDataCount++;
    updateHolding();
  };

  const onData = (datagram: Buffer, pass: (datagram: Buffer) => void) => {
    if (datagram.length < headerBytes) {
      pass(datagram); // malformed: the role counts it, and keeps nothing
      return;
    }
    const sequence = datagram.readUInt32BE(offsetSequence);
    const held: Held = {
      datagram,
      pass,
      sessionId: datagram.readUInt32BE(offsetSessionId),
      incarnation: datagram.readUInt32BE(offsetIncarnation),
    };
    if (!passData(sequence, held)) {
      holdData(sequence, held);
    }
  };

  const remember = (
    sessionId: number,
    incarnation: number,
    sequence: number,
    manifest: KeptManifest,
    at: number,
  ) => {
    const list = hashes.get(sequence);
    if (ofRun(list, sessionId, incarnation) !== undefined) {
      return;
    }
    const entry: VouchedHash = { sessionId, incarnation, manifest, at };
    manifest.hashesKept++;
    if (list === undefined) {
      const fresh = [entry];
      hashes.set(sequence, fresh);
      oldestHashes.added(sequence, fresh);
    } else {
      list.push(entry);
    }
    hashCount++;
    while (hashCount > signedManifestHashesMax) {
      const oldest = oldestHashes.shift();
      if (oldest === undefined) {
        break;
      }
      for (const evicted of oldest[1]) {
        evicted.manifest.hashesKept--;
        hashCount--;
      }
    }
  };

  const onManifest = (
    datagram: Buffer,
    run: { sessionId: number; incarnation: number; sequence: number },
    manifest: readonly Buffer[],
    verify: () => boolean,
  ) => {
    const { sessionId, incarnation } = run;
    const known = (hash: Buffer, index: number) => {
      const vouched = ofRun(hashes.get(sequenceAdd(run.sequence, index)), sessionId, incarnation);
      return vouched !== undefined && sameHash(hash, vouched);
    };
    if (manifest.every(known)) {
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
      hashesTotal: manifest.length,
      hashesKept: 0,
    };
    manifest.forEach((hash, index) => {
      const sequence = sequenceAdd(run.sequence, index);
      const at = hash.byteOffset - datagram.byteOffset; // the decoder's hashes are views of the datagram
      remember(sessionId, incarnation, sequence, kept, at);
      const waiting = heldData.get(sequence);
      if (waiting === undefined) {
        return;
      }
      const only = waiting.length === 1 ? (waiting[0] as Held) : undefined;
      if (only !== undefined && only.sessionId === sessionId && only.incarnation === incarnation) {
        // The usual case: one DATA of this run waited for this sequence.
        heldData.delete(sequence);
        heldDataCount--;
        passData(sequence, only);
        return;
      }
      const mine = waiting.filter((held) => held.sessionId === sessionId && held.incarnation === incarnation);
      if (mine.length === waiting.length) {
        heldData.delete(sequence);
      } else {
        // In place, not a set of a new list: the sequence keeps its age (see OldestFirst).
        const others = waiting.filter(
          (held) => held.sessionId !== sessionId || held.incarnation !== incarnation,
        );
        waiting.length = 0;
        waiting.push(...others);
      }
      heldDataCount -= mine.length;
      for (const held of mine) {
        passData(sequence, held);
      }
    });
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
    const kept = ofRun(
      hashes.get(datagram.readUInt32BE(offsetSequence)),
      datagram.readUInt32BE(offsetSessionId),
      datagram.readUInt32BE(offsetIncarnation),
    )?.manifest;
    return kept !== undefined && kept.hashesKept === kept.hashesTotal && kept.datagram.equals(datagram);
  };

  const onSignature = (datagram: Buffer) => {
    if (repeatOfVerifiedManifest(datagram)) {
      stats.manifestsRepeated++;
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
      onManifest(datagram, message, message.hashes, verify);
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
    vouches(sessionId, incarnation, sequence) {
      return ofRun(hashes.get(sequence), sessionId, incarnation) !== undefined;
    },
    signatureFor(datagram) {
      if (datagram.length < headerBytes) {
        return undefined;
      }
      if (datagram[offsetType] === PacketType.data) {
        return ofRun(
          hashes.get(datagram.readUInt32BE(offsetSequence)),
          datagram.readUInt32BE(offsetSessionId),
          datagram.readUInt32BE(offsetIncarnation),
        )?.manifest.datagram;
      }
      return vouched.get(sha256Of(datagram).toString('hex'));
    },
    check(datagram) {
      if (datagram.length < headerBytes || datagram[offsetType] !== PacketType.data) {
        return 'unknown';
      }
      const expected = ofRun(
        hashes.get(datagram.readUInt32BE(offsetSequence)),
        datagram.readUInt32BE(offsetSessionId),
        datagram.readUInt32BE(offsetIncarnation),
      );
      if (expected === undefined) {
        return 'unknown';
      }
      if (!hashMatches(datagram, expected)) {
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
