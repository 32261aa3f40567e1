/**
 * A restricted session on the wire (docs/protocol.md, "Restricted sessions"): the source side
 * seals DATA under a traffic key that changes every crypto-period and repeats signed KEY
 * messages (the ECM role) and the signed session offer in-band; the receiver side hands KEY
 * messages to its token, opens DATA with the keys the token released, and counts everything it
 * drops. Neither side ever holds the service key in the clear except the source, which issues it.
 */
import { type KeyObject, randomBytes } from 'node:crypto';
import {
  groupKeyAsksPerSecondMax,
  groupKeySuspectAsksPerSecondMax,
  keyTimeRollbackToleranceMs,
  manifestFlushWaitMs,
  manifestRepeatsMax,
  manifestSendCount,
  protectedControlIntervalMs,
  rekeyChecksPerSecondMax,
  rekeyGapsFatal,
  rekeyGapsFatalMs,
  rekeyOpeningChecksPerSecondMax,
  restrictedHeldPacketsMax,
  restrictedKeyRecheckMs,
  restrictedPendingKeysMax,
  signedRepeatRefreshMs,
  tokenTreeGroupKeysKept,
  treeRekeyLeadMs,
  treeRekeyRepeatMs,
} from '../limits.js';
import type { DecodeErrorReason } from '../protocol/errors.js';
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
import {
  decodeKey,
  decodeRekeyDatagram,
  encodeRekeyDatagram,
  groupSeedBytes,
  type KeyMessage,
  manifestHashBytes,
  OfferFlag,
} from '../protocol/restricted.js';
import {
  buildControlSignature,
  buildKeyMessage,
  buildSessionOffer,
  ed25519Raw,
  joinShares,
  ManifestBuilder,
  type TreeGroupKey,
} from './authority.js';
import { KeyEpochsExhausted, TokenRefused } from './errors.js';
import { type GroupKeySource, groupKeyModeProblem } from './group-key.js';
import { rekeyEpochOf, rekeyTreeIdOf } from './lkh.js';
import {
  aeadTagBytes,
  type GroupAskKind,
  negotiateSuite,
  PacketOpener,
  PacketSealer,
  type Suite,
  suites,
} from './suites.js';
import type { Token } from './token.js';

/** What a restricted source needs. */
export interface RestrictedSenderSettings {
  readonly suite: Suite;
  readonly service: string;
  readonly serviceEpoch: number;
  /** The 32-byte service key of this product and epoch (the operator's, never sent in clear). */
  readonly serviceKey: Buffer;
  /** The source key that signs KEY messages, offers and manifests (the grant names it). */
  readonly sourcePrivateKey: KeyObject;
  readonly sourcePublicKey: KeyObject;
  readonly cryptoPeriodMs: number;
  readonly tier: number;
  /** Sign a manifest over every this many DATA packets (32-64); 0 sends no manifests. */
  readonly manifestPackets: number;
  /**
   * Where fresh traffic keys come from (default: node:crypto randomBytes). The deterministic
   * simulator (test/sim/) gives a seeded source so that a seed replays byte for byte.
   */
  readonly randomBytes?: (bytes: number) => Buffer;
  /**
   * The product's member tree as the source last fetched it from the key server: each period's
   * traffic key is then split, one share under the service key, one under the tree's group key,
   * and the tree's rekey messages are repeated in-band. Absent: the service key alone.
   */
  readonly tree?: SourceTree | undefined;
  /**
   * Every-n-th-packet mode (src/crypto/group-key.ts): seal each period's packets in groups of this
   * many, each under a group key a receiver's token derives once per group; the KEY says so, and a
   * token then never releases the traffic key. Absent: every packet under the traffic key.
   */
  readonly packetsPerGroup?: number | undefined;
}

/** A member tree as a source sees it (src/cli/member-tree.ts fetches it). */
export interface SourceTree {
  /** The newest tree epoch known and its group key; undefined before the first fetch. */
  current(): TreeGroupKey | undefined;
  /** The group key of a recent tree epoch, if still known. */
  groupKey(treeEpoch: number): TreeGroupKey | undefined;
  /** The newest rekey messages, oldest first: repeated in-band. */
  rekeys(): readonly Buffer[];
}

/** Bytes sealing adds to a DATA payload: the tag, and in every-n-th-packet mode the group's seed. */
export function sealedOverheadBytes(packetsPerGroup: number | undefined): number {
  return aeadTagBytes + (packetsPerGroup === undefined ? 0 : groupSeedBytes);
}

/** The source side: what the source role calls (src/source/source.ts). */
export interface SenderProtection {
  /** Bytes a sealed DATA packet adds to its payload. */
  readonly overheadBytes: number;
  /**
   * Seals a plain DATA datagram; returns what to send: the sealed DATA, then a manifest when one is
   * full. `into`, when given, is where the sealed DATA may be written (at least the plain length
   * plus overheadBytes, not overlapping `plain`), so that a packet allocates nothing.
   */
  seal(plain: Buffer, nowMs: number, wallUs: number, into?: Buffer): Buffer[];
  /**
   * The in-band messages of a control tick: the manifests due again, the pending manifest once its
   * oldest packet has waited, the signed offer and KEY for the current and next crypto-period (each
   * the same bytes from tick to tick until it is signed again: SignedRepeats).
   */
  control(
    run: { sessionId: number; incarnation: number; sequence: number },
    nowMs: number,
    wallUs: number,
  ): Buffer[];
  /** What is left to send at END: the last manifest. */
  finish(wallUs: number): Buffer[];
  /**
   * The manifest over the DATA sent since the last one, if any: sent before a HEARTBEAT, so that
   * no HEARTBEAT claims a sequence no manifest vouches for yet.
   */
  flush(wallUs: number): Buffer[];
  /**
   * The control signature (SIGNATURE kind 3) that vouches for a HEARTBEAT, END or DESCRIPTOR
   * datagram, sent just before it (docs/protocol.md, "Signed sessions").
   */
  signControl(control: Buffer): Buffer;
}

/**
 * The manifests of a run and their repeats: each is sent at once, then again at the next control
 * ticks (manifestSendCount in all), so one lost on the way costs no DATA its authentication. A
 * repair server repeats the manifests it forwards on S2 the same way.
 */
export class ManifestRepeats {
  readonly #recent: Array<{ datagram: Buffer; sends: number }> = [];

  /** Notes a manifest just sent once. */
  sent(manifest: Buffer): void {
    this.#recent.push({ datagram: manifest, sends: 1 });
    if (this.#recent.length > manifestRepeatsMax) {
      this.#recent.shift();
    }
  }

  /** The manifests to send again at this tick. */
  due(): Buffer[] {
    const out: Buffer[] = [];
    for (const entry of this.#recent) {
      out.push(entry.datagram);
      entry.sends++;
    }
    while ((this.#recent[0]?.sends ?? 0) >= manifestSendCount) {
      this.#recent.shift();
    }
    return out;
  }
}

/**
 * A run's manifests as its source sends them (none when `builder` is undefined): each one after
 * the DATA that completes it, again at the next control ticks (ManifestRepeats), and the last one
 * twice when the run ends.
 */
class ManifestSender {
  readonly #builder: ManifestBuilder | undefined;
  readonly #repeats = new ManifestRepeats();
  /**
   * When the oldest packet collected now was added, on the monotonic clock (nowMs): a wall clock
   * stepped back must not hold a slow stream's DATA until the HEARTBEAT (flushWaited).
   */
  #oldestAtMs: number | undefined;

  constructor(builder: ManifestBuilder | undefined) {
    this.#builder = builder;
  }

  /** The DATA packet as it goes out, followed by the manifest it completes, if it completes one. */
  afterData(packet: Buffer, nowMs: number, wallUs: number): Buffer[] {
    this.#collecting(nowMs);
    return this.#after(packet, this.#builder?.add(packet, uint32At(packet, offsetSequence), wallUs));
  }

  /**
   * afterData for a DATA packet sealed with its hash written at the builder's hashOffset of its
   * hashBlock (sealDatagram hashes while sealing).
   */
  afterSealed(packet: Buffer, nowMs: number, wallUs: number): Buffer[] {
    this.#collecting(nowMs);
    return this.#after(packet, this.#builder?.addHashed(uint32At(packet, offsetSequence), wallUs));
  }

  /** Notes when the first packet of a manifest is added (before the builder takes it). */
  #collecting(nowMs: number): void {
    if (this.#builder?.hashOffset === 0) {
      this.#oldestAtMs = nowMs;
    }
  }

  /** Where a sealer writes the next packet's hash, or undefined when this run has no manifests. */
  get builder(): ManifestBuilder | undefined {
    return this.#builder;
  }

  #after(packet: Buffer, manifest: Buffer | undefined): Buffer[] {
    if (manifest === undefined) {
      return [packet];
    }
    this.#oldestAtMs = undefined;
    this.#repeats.sent(manifest);
    return [packet, manifest];
  }

  /** The manifests to send again at this control tick. */
  due(): Buffer[] {
    return this.#repeats.due();
  }

  /**
   * At a control tick: the manifest over the DATA no manifest covers yet, when its oldest packet
   * has waited manifestFlushWaitMs on the monotonic clock; a younger one is left to fill (a fast
   * stream then signs no partial manifests).
   */
  flushWaited(nowMs: number, wallUs: number): Buffer | undefined {
    const oldestAtMs = this.#oldestAtMs;
    return oldestAtMs !== undefined && nowMs - oldestAtMs >= manifestFlushWaitMs
      ? this.flush(wallUs)
      : undefined;
  }

  /** The manifest over the DATA no manifest covers yet, if there is any, noted as sent. */
  flush(wallUs: number): Buffer | undefined {
    this.#oldestAtMs = undefined;
    const manifest = this.#builder?.flush(wallUs);
    if (manifest !== undefined) {
      this.#repeats.sent(manifest);
    }
    return manifest;
  }

  /** What the end of the run sends: the repeats due, and the last manifest twice. */
  finish(wallUs: number): Buffer[] {
    this.#oldestAtMs = undefined;
    const manifest = this.#builder?.flush(wallUs);
    return [...this.#repeats.due(), ...(manifest === undefined ? [] : [manifest, manifest])];
  }
}

/**
 * Signed messages a source repeats at every control tick whose content does not change (the offer
 * for a run, a KEY for its epoch): each is signed once and sent again byte for byte until
 * signedRepeatRefreshMs has passed, then built and signed again with a fresh header. A gate knows
 * such a repeat by its bytes and verifies it once (docs/protocol.md, "Signed sessions").
 */
class SignedRepeats {
  readonly #built = new Map<number, { datagram: Buffer; builtAtMs: number }>();

  /** The datagram for `key` (the offer 0, a KEY its epoch), built again when it is due. */
  get(key: number, nowMs: number, build: () => Buffer): Buffer {
    const known = this.#built.get(key);
    if (known !== undefined && nowMs - known.builtAtMs < signedRepeatRefreshMs && nowMs >= known.builtAtMs) {
      return known.datagram;
    }
    const datagram = build();
    this.#built.set(key, { datagram, builtAtMs: nowMs });
    return datagram;
  }

  /** Forgets one key: it is built again at its next use. */
  forget(key: number): void {
    this.#built.delete(key);
  }

  /** Forgets every key but these (the epochs announced now, and the offer). */
  keepOnly(keys: readonly number[]): void {
    for (const key of this.#built.keys()) {
      if (!keys.includes(key)) {
        this.#built.delete(key);
      }
    }
  }
}

/** The key of the signed offer in SignedRepeats (a KEY's is its epoch, never 0). */
const offerRepeatKey = 0;

/** What a signed-only source needs (readable, authentic: `gatecast send --signed`). */
export interface SignedSenderSettings {
  readonly sourcePrivateKey: KeyObject;
  readonly sourcePublicKey: KeyObject;
  /** Sign a manifest over every this many DATA packets (32-64). */
  readonly manifestPackets: number;
}

/**
 * Builds the source side of a signed-only run: DATA stays readable, every DATA is covered by a
 * manifest, every HEARTBEAT, END and DESCRIPTOR by a control signature, and the signed offer
 * (flags: signed) names the source key.
 */
export function createSignedSenderProtection(
  settings: SignedSenderSettings,
  run: { sessionId: number; incarnation: number },
): SenderProtection {
  const manifests = new ManifestSender(
    new ManifestBuilder(run, settings.sourcePrivateKey, settings.manifestPackets),
  );
  const sourcePublicKey = ed25519Raw(settings.sourcePublicKey);
  const repeats = new SignedRepeats();
  return {
    overheadBytes: 0,
    seal(plain, nowMs, wallUs) {
      return manifests.afterData(plain, nowMs, wallUs);
    },
    control(header, nowMs, wallUs) {
      const again = manifests.due();
      const pending = manifests.flushWaited(nowMs, wallUs);
      const offer = repeats.get(offerRepeatKey, nowMs, () =>
        buildSessionOffer(
          { ...header, timestampUs: wallUs },
          {
            flags: OfferFlag.signed,
            tier: 0,
            suites: [suites[0]?.id ?? 1],
            cryptoPeriodMs: 0,
            service: 'signed',
            sourcePublicKey,
            descriptorSha256: Buffer.alloc(32),
          },
          settings.sourcePrivateKey,
        ),
      );
      return [offer, ...again, ...(pending === undefined ? [] : [pending])];
    },
    finish(wallUs) {
      return manifests.finish(wallUs);
    },
    flush(wallUs) {
      const manifest = manifests.flush(wallUs);
      return manifest === undefined ? [] : [manifest];
    },
    signControl(control) {
      return buildControlSignature(control, settings.sourcePrivateKey);
    },
  };
}

/** Key epochs a run has: 1-65535 (16 bits in the header; 0 is never used). */
export const keyEpochMax = 0xffff;

/** How long a run's key epochs last at a crypto-period, for people ("7.6 days"). */
export function runSpan(cryptoPeriodMs: number): string {
  const hours = (keyEpochMax * cryptoPeriodMs) / 3_600_000;
  return hours < 48 ? `${hours.toFixed(1)} hours` : `${(hours / 24).toFixed(1)} days`;
}

/**
 * Builds the source side for one run. Traffic keys are fresh random keys, one per crypto-period
 * (key epochs 1, 2, …); the epoch changes at the first packet after a period ends, and the next
 * period's KEY message is repeated ahead of it, so receivers hold the key before it is used.
 */
export function createSenderProtection(
  settings: RestrictedSenderSettings,
  run: { sessionId: number; incarnation: number },
): SenderProtection {
  const groupProblem =
    settings.packetsPerGroup === undefined
      ? undefined
      : groupKeyModeProblem({ packetsPerGroup: settings.packetsPerGroup, encrypt: 'all' });
  if (groupProblem !== undefined) {
    throw new RangeError(groupProblem);
  }
  const sealer = new PacketSealer(settings.suite, run.incarnation, settings.randomBytes);
  const keys = new Map<number, Buffer>();
  /**
   * Each period's tree share (with a member tree): one per key, kept while the key is, so that every
   * KEY built for the period (signed again, or announced under a newer tree epoch) carries the same
   * two shares, which the group keys of every-n-th-packet mode derive from.
   */
  const treeShares = new Map<number, Buffer>();
  /** The tree epoch each period's key was announced under (with a member tree). */
  const keyTreeEpochs = new Map<number, number>();
  const freshKey = (epoch: number): Buffer => {
    const key = (settings.randomBytes ?? randomBytes)(settings.suite.keyBytes);
    keys.set(epoch, key);
    treeShares.get(epoch)?.fill(0);
    treeShares.set(epoch, (settings.randomBytes ?? randomBytes)(settings.suite.keyBytes));
    const tree = settings.tree?.current();
    if (tree !== undefined) {
      keyTreeEpochs.set(epoch, tree.treeEpoch);
    }
    return key;
  };
  const keyFor = (epoch: number): Buffer => {
    let key = keys.get(epoch);
    if (key === undefined) {
      key = freshKey(epoch);
      keys.delete(epoch - 2);
      treeShares.get(epoch - 2)?.fill(0);
      treeShares.delete(epoch - 2);
      keyTreeEpochs.delete(epoch - 2);
      sealer.dropKey(epoch - 2);
    }
    return key;
  };
  /**
   * The sealer gets a period's key only when its first packet is sealed: until then the key may
   * still be replaced (the tree changed), and once it sealed a packet it never is.
   */
  let sealerEpoch = 0;
  const sealing = (epoch: number) => {
    if (epoch !== sealerEpoch) {
      const key = keyFor(epoch);
      if (settings.packetsPerGroup === undefined) {
        sealer.setKey(epoch, key);
      } else {
        // The group keys derive from the KEY's shares: the traffic key, or with a member tree the
        // share under the service key (the key XOR the tree share) and the tree share.
        const treeShare = keyTreeEpochs.has(epoch) ? treeShares.get(epoch) : undefined;
        const shares = treeShare === undefined ? [key] : [joinShares(key, treeShare) as Buffer, treeShare];
        sealer.setGroupShares(epoch, shares, settings.packetsPerGroup);
        if (shares.length === 2) {
          shares[0]?.fill(0);
        }
      }
      sealerEpoch = epoch;
    }
  };
  /**
   * When the tree moved on (a member left) before the next period starts, that period gets a new
   * key announced under the new group key: a member removed never holds it. Too close to the
   * period's start (treeRekeyLeadMs), receivers might not hold the new KEY in time, and the change
   * waits for the period after.
   *
   * A key that is not replaced (the period being sealed, or the next one too close to its start)
   * is announced again, the same key, under the newest group key once the tree moved on by
   * tokenTreeGroupKeysKept epochs: a token keeps the group keys of its last ones only, so after a
   * burst of leaves the members that stay could no longer open it under the tree epoch it was
   * first announced under, and would lose that period. Those removed gain nothing: they could
   * open the first announcement already.
   */
  const followTree = (keyEpoch: number, nowMs: number) => {
    const tree = settings.tree?.current();
    if (tree === undefined) {
      return;
    }
    const leadLeft = (periodStartMs ?? nowMs) + settings.cryptoPeriodMs - nowMs >= treeRekeyLeadMs;
    for (const epoch of [keyEpoch, keyEpoch + 1]) {
      if (epoch > keyEpochMax || !keys.has(epoch) || keyTreeEpochs.get(epoch) === tree.treeEpoch) {
        continue;
      }
      if (epoch === keyEpoch + 1 && epoch !== sealerEpoch && leadLeft) {
        keys.get(epoch)?.fill(0);
        freshKey(epoch);
        repeats.forget(epoch);
        continue;
      }
      const announced = keyTreeEpochs.get(epoch);
      if (announced === undefined && settings.packetsPerGroup !== undefined && epoch <= sealerEpoch) {
        // Every-n-th-packet mode: the period is sealed under group keys of its traffic key alone
        // (the tree came after its first packet); a KEY with a tree part would give its receivers
        // group keys of two other shares, which open none of its packets.
        continue;
      }
      if (
        announced === undefined ||
        announced > tree.treeEpoch ||
        tree.treeEpoch - announced >= tokenTreeGroupKeysKept ||
        settings.tree?.groupKey(announced) === undefined
      ) {
        // Announced again only once tokens that follow the tree no longer hold its group key: until
        // then the first announcement serves them, and members slow to apply the REKEY as well.
        keyTreeEpochs.set(epoch, tree.treeEpoch);
        repeats.forget(epoch);
      }
    }
  };
  /**
   * The rekey messages to send at this tick: every one each treeRekeyRepeatMs, and each new one (all
   * of a burst of leaves, not only the newest) at every tick for that long first. Those the source
   * held when it started are not new.
   */
  let rekeysAllAtMs: number | undefined;
  /** When each rekey message (by tree id and epoch) was first seen. */
  let rekeysSeen: Map<string, number> | undefined;
  const rekeyName = (rekey: Buffer) =>
    rekey.length < 16 ? rekey.toString('hex') : `${rekeyTreeIdOf(rekey)}/${rekeyEpochOf(rekey)}`;
  const rekeysDue = (nowMs: number): readonly Buffer[] => {
    const rekeys = settings.tree?.rekeys() ?? [];
    if (rekeys.length === 0) {
      return [];
    }
    const first = rekeysSeen === undefined;
    const seen = new Map<string, number>();
    for (const rekey of rekeys) {
      const name = rekeyName(rekey);
      seen.set(name, rekeysSeen?.get(name) ?? (first ? Number.NEGATIVE_INFINITY : nowMs));
    }
    rekeysSeen = seen;
    if (rekeysAllAtMs === undefined || nowMs - rekeysAllAtMs >= treeRekeyRepeatMs || nowMs < rekeysAllAtMs) {
      rekeysAllAtMs = nowMs;
      return rekeys;
    }
    return rekeys.filter((rekey) => nowMs - (seen.get(rekeyName(rekey)) ?? 0) < treeRekeyRepeatMs);
  };
  let epoch = 1;
  let periodStartMs: number | undefined;
  const manifests = new ManifestSender(
    settings.manifestPackets > 0
      ? new ManifestBuilder(
          { sessionId: run.sessionId, incarnation: run.incarnation },
          settings.sourcePrivateKey,
          settings.manifestPackets,
        )
      : undefined,
  );
  const currentEpoch = (nowMs: number): number => {
    periodStartMs ??= nowMs;
    if (nowMs - periodStartMs >= settings.cryptoPeriodMs) {
      if (epoch >= keyEpochMax) {
        // The header has 16 bits for the epoch and no epoch is given a second key: the run ends
        // here, clearly, rather than seal under a key receivers already hold another for.
        throw new KeyEpochsExhausted(
          `the run has used all ${keyEpochMax} key epochs (${keyEpochMax} crypto-periods of ${settings.cryptoPeriodMs / 1000} s, ${runSpan(settings.cryptoPeriodMs)}); start the session again (a new run has new epochs), with a longer --crypto-period to run longer`,
        );
      }
      epoch += 1;
      periodStartMs = nowMs;
    }
    return epoch;
  };
  const sourcePublicKey = ed25519Raw(settings.sourcePublicKey);
  const repeats = new SignedRepeats();
  /** The group key a period's KEY is wrapped under; a tree whose epoch is no longer known: the newest. */
  const treeOf = (epoch: number): TreeGroupKey | undefined => {
    const treeEpoch = keyTreeEpochs.get(epoch);
    if (treeEpoch === undefined) {
      return undefined;
    }
    // A group key forgotten (the tree moved far on): the newest, never no tree part at all, which
    // a removed member's service key would open.
    return settings.tree?.groupKey(treeEpoch) ?? settings.tree?.current();
  };
  return {
    overheadBytes: sealedOverheadBytes(settings.packetsPerGroup),
    seal(plain, nowMs, wallUs, into) {
      const keyEpoch = currentEpoch(nowMs);
      sealing(keyEpoch);
      plain.writeUInt16BE(keyEpoch, offsetKeyEpoch);
      const builder = manifests.builder;
      if (builder === undefined) {
        return [sealer.seal(plain, into)];
      }
      // The manifest's hash of the sealed datagram is taken in the same engine call that seals it.
      const sealed = sealer.seal(plain, into, builder.hashBlock, builder.hashOffset, manifestHashBytes);
      return manifests.afterSealed(sealed, nowMs, wallUs);
    },
    control(header, nowMs, wallUs) {
      const keyEpoch = currentEpoch(nowMs);
      keyFor(keyEpoch);
      if (keyEpoch < keyEpochMax) {
        keyFor(keyEpoch + 1);
      }
      followTree(keyEpoch, nowMs);
      const out: Buffer[] = [...manifests.due()];
      for (const rekey of rekeysDue(nowMs)) {
        out.push(encodeRekeyDatagram({ ...header, timestampUs: wallUs }, rekey));
      }
      const pending = manifests.flushWaited(nowMs, wallUs);
      if (pending !== undefined) {
        out.push(pending);
      }
      out.push(
        repeats.get(offerRepeatKey, nowMs, () =>
          buildSessionOffer(
            { ...header, timestampUs: wallUs },
            {
              flags: OfferFlag.signed | OfferFlag.encrypted,
              tier: settings.tier,
              suites: [settings.suite.id],
              cryptoPeriodMs: settings.cryptoPeriodMs,
              service: settings.service,
              sourcePublicKey,
              descriptorSha256: Buffer.alloc(32),
            },
            settings.sourcePrivateKey,
          ),
        ),
      );
      const announced = keyEpoch < keyEpochMax ? [keyEpoch, keyEpoch + 1] : [keyEpoch];
      for (const epoch of announced) {
        out.push(
          repeats.get(epoch, nowMs, () =>
            buildKeyMessage(
              { ...header, keyEpoch: epoch, timestampUs: wallUs },
              {
                suite: settings.suite.id,
                tier: settings.tier,
                serviceEpoch: settings.serviceEpoch,
                cryptoPeriodMs: settings.cryptoPeriodMs,
                service: settings.service,
                packetsPerGroup: settings.packetsPerGroup,
              },
              settings.serviceKey,
              keyFor(epoch),
              settings.sourcePrivateKey,
              treeOf(epoch),
              treeShares.get(epoch),
            ),
          ),
        );
      }
      repeats.keepOnly([offerRepeatKey, ...announced]);
      return out;
    },
    finish(wallUs) {
      return manifests.finish(wallUs);
    },
    flush(wallUs) {
      const manifest = manifests.flush(wallUs);
      return manifest === undefined ? [] : [manifest];
    },
    signControl(control) {
      return buildControlSignature(control, settings.sourcePrivateKey);
    },
  };
}

/**
 * Budgets a second, by kind: the returned function is true, and counts one, while `kind` has some
 * left in the current second of `nowMs` (a clock that went back starts a new second).
 */
function perSecondBudgets<Kind extends string>(
  limits: Readonly<Record<Kind, number>>,
  nowMs: () => number,
): (kind: Kind) => boolean {
  const used = new Map<Kind, number>();
  let since = nowMs();
  return (kind) => {
    const now = nowMs();
    if (now - since >= 1000 || now < since) {
      used.clear();
      since = now;
    }
    const count = used.get(kind) ?? 0;
    if (count >= limits[kind]) {
      return false;
    }
    used.set(kind, count + 1);
    return true;
  };
}

/** Counters of the receiving side (shown by `gatecast receive` and checked by tests). */
export interface ReceiverProtectionStats {
  keysAccepted: number;
  /** KEY messages repeated for an epoch already held (normal: they repeat in-band). */
  keysRepeated: number;
  /** KEY messages refused, by the token's reason or `malformed` / `other-run`. */
  keysRejected: Record<string, number>;
  /** What the token said of the last KEY it refused, by reason. */
  keysRejectedWhy: Record<string, string>;
  packetsOpened: number;
  /** Sealed DATA whose tag failed: forged or altered; nothing of it is delivered. */
  packetsBadTag: number;
  /** Sealed DATA held until its epoch's key arrived. */
  packetsHeld: number;
  /** Sealed DATA dropped: no key came for it within the bound. */
  packetsDropped: number;
  /** DATA sent in clear (key epoch 0): a restricted receiver never writes it. */
  packetsClear: number;
  /** DATA whose header fails the protocol's checks (docs/protocol.md, "Validation"): never opened. */
  packetsMalformed: number;
  /** Every-n-th-packet mode: group keys asked of the token (one per group of packets). */
  groupKeysAsked: number;
  /** Every-n-th-packet mode: packets (not keys) whose group key was not asked (over a budget, GroupAskKind, or refused). */
  groupKeysNotAsked: number;
  /**
   * SIGNATURE datagrams (manifests, the signed offer, control signatures) that reached this
   * filter unchecked: no source key was given (`--source-public`) to check them against. The
   * token checks KEY messages itself; what they vouch for is only counted here.
   */
  signaturesUnchecked: number;
  /** REKEY messages the token applied (member-tree leaves). */
  rekeysApplied: number;
  /** REKEY messages not applied, by reason: `stale` (held already: normal, they repeat), `gap`, `bad-signature`, `rate`, … */
  rekeysIgnored: Record<string, number>;
}

/** The receiver side: what the receiver role calls (src/receiver/receiver.ts). */
export interface ReceiverProtection {
  readonly stats: Readonly<ReceiverProtectionStats>;
  /**
   * Takes every datagram; passes on what the receiver may process (opened DATA, plain control).
   * A sealed DATA datagram becomes the filter's: it is opened in place (the plaintext written over
   * the ciphertext, the body wiped when its tag fails), so a caller keeps no other use of it.
   */
  filter(
    datagram: Buffer,
    pass: (datagram: Buffer) => void,
    malformed?: (reason: DecodeErrorReason) => void,
  ): void;
}

/** A run's name in the receiver's maps of KEYs and DATA epochs. */
function runSlot(sessionId: number, incarnation: number): string {
  return `${sessionId}/${incarnation}`;
}

/** A run's key epoch, named in those maps. */
function keySlot(sessionId: number, incarnation: number, keyEpoch: number): string {
  return `${sessionId}/${incarnation}/${keyEpoch}`;
}

/**
 * Builds the receiver side over a token. `onRefused` is told when the token refuses the run's
 * keys for a reason no later KEY message will change (not entitled, purse empty, …), so the
 * caller can stop and say why.
 */
export function createReceiverProtection(
  token: Token,
  onRefused: (refusal: TokenRefused) => void,
  supported: readonly Suite[] = suites,
  nowMs: () => number = () => performance.now(),
): ReceiverProtection {
  const stats: ReceiverProtectionStats = {
    keysAccepted: 0,
    keysRepeated: 0,
    keysRejected: {},
    keysRejectedWhy: {},
    packetsOpened: 0,
    packetsBadTag: 0,
    packetsHeld: 0,
    packetsDropped: 0,
    packetsClear: 0,
    packetsMalformed: 0,
    // Counted by the opener, into this object. Every field is a plain one: a getter written in
    // this literal would put the object in V8's dictionary mode, and each count made once a packet
    // (packetsOpened) would cost two generic property lookups (seen in profiles of the packet path).
    groupKeysAsked: 0,
    groupKeysNotAsked: 0,
    signaturesUnchecked: 0,
    rekeysApplied: 0,
    rekeysIgnored: {},
  };
  let run: { sessionId: number; incarnation: number; opener: PacketOpener } | undefined;
  /** Sealed DATA waiting for its key, in arrival order, bounded. */
  const held: Buffer[] = [];
  let pass: ((datagram: Buffer) => void) | undefined;
  const reject = (reason: string) => {
    stats.keysRejected[reason] = (stats.keysRejected[reason] ?? 0) + 1;
  };

  const openAndPass = (sealed: Buffer) => {
    // In place: the datagram is this filter's from here on (see filter), so opening it allocates nothing.
    const opened = run?.opener.open(sealed, true);
    if (typeof opened === 'object') {
      // Opened (the common case, tested first: one type check instead of a string compare per reason).
      stats.packetsOpened++;
      pass?.(opened);
      return;
    }
    if (opened === undefined || opened === 'no-key') {
      if (held.length >= restrictedHeldPacketsMax) {
        held.shift();
        stats.packetsDropped++;
      }
      held.push(sealed);
      stats.packetsHeld++;
      return;
    }
    if (opened === 'bad-tag' || opened === 'truncated' || opened === 'bad-seed') {
      stats.packetsBadTag++;
      return;
    }
    if (opened === 'no-group-key') {
      stats.groupKeysNotAsked++;
      stats.packetsDropped++;
      return;
    }
    // Every OpenFailure is counted above: one added to the type and not here fails to compile.
    const uncounted: never = opened;
    return uncounted;
  };

  const releaseHeld = () => {
    const waiting = held.splice(0);
    for (const sealed of waiting) {
      if (run?.opener.hasKey(uint16At(sealed, offsetKeyEpoch))) {
        openAndPass(sealed);
      } else {
        held.push(sealed);
      }
    }
  };

  /**
   * Every-n-th-packet mode: the token is asked for at most groupKeyAsksPerSecondMax group keys a
   * second for the stream, and groupKeySuspectAsksPerSecondMax for suspect asks (GroupAskKind: a
   * far-off group, or one many seeds came for). A genuine stream needs one per group; a flood of
   * forged DATA with made-up seeds costs no more than that, and uses up the stream's budget only
   * with a few seeds per group next to the stream.
   */
  const mayAskGroupKey = perSecondBudgets<GroupAskKind>(
    { stream: groupKeyAsksPerSecondMax, suspect: groupKeySuspectAsksPerSecondMax },
    nowMs,
  );

  /**
   * The source repeats the next crypto-period's KEY ahead of its first packet. A key is asked of
   * the token only once DATA of its epoch (or a later one) arrived, so a pay-as-you-go purse pays
   * for the periods this receiver read, not for one announced after the session's last packet.
   */
  /**
   * The highest key epoch of DATA seen, per run (`runSlot`; the last restrictedPendingKeysMax runs):
   * a KEY waits for DATA of its own run, so DATA of another run neither holds it back nor lets it
   * go. The run of the last DATA, and its epoch, are kept apart: the packet path compares numbers.
   */
  const dataEpochs = new Map<string, number>();
  let lastDataSession = -1;
  let lastDataIncarnation = -1;
  let lastDataEpoch = 0;
  /**
   * Per run and epoch announced ahead (`keySlot`): its KEY message, and the datagram it came in.
   * The source repeats the same bytes every control tick for signedRepeatRefreshMs; a copy equal
   * to them byte for byte is that KEY again, skipped without decoding it.
   */
  const pending = new Map<string, { key: KeyMessage; datagram: Buffer }>();
  const askedEpochs = new Set<string>();
  /** True while the token answers the KEY that is to fix the run; the KEYs released meanwhile wait in `deferred`. */
  let fixing = false;
  const deferred = new Map<string, KeyMessage>();
  /**
   * Per key epoch held: the wrapped key the token released it from, and the stream time of the
   * last KEY message asked of the token. The source repeats each KEY every control tick; a repeat
   * carrying the same wrapped key for the same run and epoch can only yield the key already held,
   * so it is asked of the token again only once restrictedKeyRecheckMs of stream time has passed
   * (the token then checks the window, the tier and its rollback counter again). Asking it at
   * every repeat cost a token operation and a write of its state 40 times a second.
   */
  /**
   * `repeat`: the last KEY datagram found to be a repeat of the epoch (below). The source sends the
   * same bytes for signedRepeatRefreshMs, and a copy equal to it byte for byte is the same repeat
   * again, counted without decoding it.
   */
  const heldKeys = new Map<number, { wrappedKey: Buffer; askedAtUs: number; repeat?: Buffer }>();

  /**
   * The held key's record when `key` can only yield that key again: same run's epoch held, same
   * wrapped key, and less than restrictedKeyRecheckMs of stream time since the token last vouched.
   */
  const heldRepeat = (key: KeyMessage) => {
    const held = heldKeys.get(key.keyEpoch);
    return held !== undefined &&
      run?.opener.hasKey(key.keyEpoch) === true &&
      held.wrappedKey.equals(key.wrappedKey) &&
      key.timestampUs - held.askedAtUs < restrictedKeyRecheckMs * 1000
      ? held
      : undefined;
  };

  const onKey = (datagram: Buffer) => {
    const epochOfDatagram = datagram.length >= headerBytes ? uint16At(datagram, offsetKeyEpoch) : 0;
    if (
      heldKeys.get(epochOfDatagram)?.repeat?.equals(datagram) === true &&
      run?.opener.hasKey(epochOfDatagram) === true
    ) {
      stats.keysRepeated++;
      return;
    }
    if (datagram.length >= headerBytes) {
      const sessionId = uint32At(datagram, offsetSessionId);
      const incarnation = uint32At(datagram, offsetIncarnation);
      if (
        (run === undefined
          ? dataEpochs.has(runSlot(sessionId, incarnation))
          : sessionId === run.sessionId && incarnation === run.incarnation) &&
        pending.get(keySlot(sessionId, incarnation, epochOfDatagram))?.datagram.equals(datagram) === true
      ) {
        return; // the KEY announced ahead, again: it waits for its epoch's DATA as it did
      }
    }
    const decoded = decodeKey(datagram);
    if (!decoded.ok) {
      reject('malformed');
      return;
    }
    const key = decoded.value;
    if (run !== undefined && (key.sessionId !== run.sessionId || key.incarnation !== run.incarnation)) {
      reject('other-run');
      return;
    }
    const known = heldKeys.get(key.keyEpoch);
    if (
      known !== undefined &&
      run?.opener.hasKey(key.keyEpoch) === true &&
      key.timestampUs < known.askedAtUs - keyTimeRollbackToleranceMs * 1000
    ) {
      // Older than the copy of this epoch's KEY the token vouched for, by more than the token
      // forgives: replayed (the token would refuse it the same way, at the cost of an operation).
      reject('rollback');
      return;
    }
    const held = heldRepeat(key);
    if (held !== undefined) {
      stats.keysRepeated++;
      // Its copies are the same repeat (askedAtUs only grows) until the source signs the KEY
      // again, with a later time: those bytes are new, and decoded and checked as above.
      held.repeat = Buffer.from(datagram);
      return;
    }
    const slot = keySlot(key.sessionId, key.incarnation, key.keyEpoch);
    const reached = dataEpochs.get(runSlot(key.sessionId, key.incarnation)) ?? 0;
    if (key.keyEpoch > reached && !askedEpochs.has(slot) && !holdsDataFor(key)) {
      pending.set(slot, { key, datagram: Buffer.from(datagram) });
      for (const oldest of pending.keys()) {
        if (pending.size <= restrictedPendingKeysMax) {
          break;
        }
        pending.delete(oldest); // the oldest first: a later one is what the next DATA needs
      }
      return;
    }
    release(key);
  };

  /**
   * True when sealed DATA of the KEY's run and epoch (or a later one) waits here for a key: DATA of
   * many other runs (forged headers, before the run was fixed) may have pushed that run's epoch out
   * of dataEpochs, and its KEY must not then wait for DATA that already came.
   */
  const holdsDataFor = (key: KeyMessage): boolean => {
    for (const sealed of held) {
      if (
        uint32At(sealed, offsetSessionId) === key.sessionId &&
        uint32At(sealed, offsetIncarnation) === key.incarnation &&
        uint16At(sealed, offsetKeyEpoch) >= key.keyEpoch
      ) {
        return true;
      }
    }
    return false;
  };

  /** DATA of `epoch` of the run in its header: that run's KEYs waiting for it go to the token. */
  const onDataEpoch = (epoch: number, sessionId: number, incarnation: number) => {
    if (sessionId === lastDataSession && incarnation === lastDataIncarnation && epoch <= lastDataEpoch) {
      return;
    }
    if (run !== undefined && (sessionId !== run.sessionId || incarnation !== run.incarnation)) {
      // Once the run is fixed only its own DATA counts (another run's KEYs are refused anyway), so
      // DATA naming other runs cannot push the run's own epoch out of dataEpochs.
      return;
    }
    const runKey = runSlot(sessionId, incarnation);
    const reached = Math.max(epoch, dataEpochs.get(runKey) ?? 0);
    lastDataSession = sessionId;
    lastDataIncarnation = incarnation;
    lastDataEpoch = reached;
    if (dataEpochs.get(runKey) === reached) {
      return;
    }
    dataEpochs.delete(runKey);
    dataEpochs.set(runKey, reached);
    for (const oldest of dataEpochs.keys()) {
      if (dataEpochs.size <= restrictedPendingKeysMax) {
        break;
      }
      dataEpochs.delete(oldest);
    }
    for (const [slot, { key }] of pending) {
      if (key.sessionId === sessionId && key.incarnation === incarnation && key.keyEpoch <= reached) {
        pending.delete(slot);
        release(key);
      }
    }
  };

  /** True when a grant covers the stream once the source signs this KEY again (a repeat's lag). */
  const grantStartsWithinRepeat = (key: KeyMessage) =>
    token.refusalFor(
      key.service,
      Math.floor(key.timestampUs / 1000) + signedRepeatRefreshMs + protectedControlIntervalMs,
    ) === undefined;

  const release = (key: KeyMessage) => {
    if (run === undefined && fixing) {
      // The first key the token releases fixes the run: until it has answered, the token is asked
      // nothing else, so no KEY of another run reaches it (or a purse) meanwhile.
      const slot = keySlot(key.sessionId, key.incarnation, key.keyEpoch);
      deferred.delete(slot);
      deferred.set(slot, key);
      for (const oldest of deferred.keys()) {
        if (deferred.size <= restrictedPendingKeysMax) {
          break;
        }
        deferred.delete(oldest);
      }
      return;
    }
    if (run !== undefined && (key.sessionId !== run.sessionId || key.incarnation !== run.incarnation)) {
      // Another run's KEY that waited from before this receiver's run was fixed: not the token's.
      reject('other-run');
      return;
    }
    if (heldRepeat(key) !== undefined) {
      stats.keysRepeated++; // a copy that waited while the token answered the first: held already
      return;
    }
    const first = run === undefined;
    fixing ||= first;
    if (askedEpochs.size >= restrictedPendingKeysMax * 4) {
      askedEpochs.clear();
    }
    askedEpochs.add(keySlot(key.sessionId, key.incarnation, key.keyEpoch));
    // Every-n-th-packet mode: the token keeps the KEY's shares and derives a key per group.
    const asked: Promise<
      { traffic: Buffer; groups?: undefined } | { traffic?: undefined; groups: GroupKeySource }
    > =
      key.packetsPerGroup === undefined
        ? token.releaseTrafficKey(key).then((traffic) => ({ traffic }))
        : token.releaseGroupKeys(key).then((groups) => ({ groups }));
    const answered = asked.then(
      ({ traffic, groups }) => {
        const keyBytes = traffic?.length ?? groups?.keyBytes;
        if (run === undefined) {
          const suite = negotiateSuite([key.suite], supported);
          if (suite === undefined || suite.keyBytes !== keyBytes) {
            reject('suite');
            return;
          }
          run = {
            sessionId: key.sessionId,
            incarnation: key.incarnation,
            opener: new PacketOpener(suite, stats),
          };
        }
        if (key.sessionId !== run.sessionId || key.incarnation !== run.incarnation) {
          reject('other-run');
          return;
        }
        if (run.opener.hasKey(key.keyEpoch)) {
          stats.keysRepeated++;
          const held = heldKeys.get(key.keyEpoch);
          if (held?.wrappedKey.equals(key.wrappedKey) === true) {
            // The token vouched for this time (signature, window, counter): the next ask is due later.
            held.askedAtUs = Math.max(held.askedAtUs, key.timestampUs);
          }
          return;
        }
        if (traffic !== undefined) {
          run.opener.setKey(key.keyEpoch, traffic);
          traffic.fill(0);
        } else if (groups !== undefined) {
          if (groups.keyBytes !== run.opener.suite.keyBytes) {
            reject('suite');
            return;
          }
          run.opener.setGroupKeys(key.keyEpoch, groups, mayAskGroupKey);
        }
        stats.keysAccepted++;
        heldKeys.set(key.keyEpoch, { wrappedKey: Buffer.from(key.wrappedKey), askedAtUs: key.timestampUs });
        run.opener.dropKey(key.keyEpoch - 3);
        heldKeys.delete(key.keyEpoch - 3);
        releaseHeld();
      },
      (error: unknown) => {
        if (!(error instanceof TokenRefused)) {
          reject('token-error');
          // The token failed in itself (no receipt key, its device gone, …): no later KEY changes
          // that, and the run stops saying what it was.
          onRefused(
            new TokenRefused(
              'token-failed',
              `the token failed: ${error instanceof Error ? error.message : String(error)}`,
            ),
          );
          return;
        }
        reject(error.reason);
        stats.keysRejectedWhy[error.reason] = error.message;
        // A forged, replayed or altered KEY message is only counted; a refusal about this
        // token's entitlement ends the run for it, but for a grant that starts before the next
        // signing of this KEY: the source repeats a KEY unchanged for signedRepeatRefreshMs, so its
        // time may lag a start the stream has passed, and the copy signed next is asked.
        if (
          !['bad-signature', 'rollback', 'bad-key-message', 'rekey-missing'].includes(error.reason) &&
          !(error.reason === 'not-yet-valid' && grantStartsWithinRepeat(key))
        ) {
          onRefused(error);
        }
      },
    );
    if (first) {
      // Answered (the run fixed, or not when the token refused): the KEYs that waited go on.
      const next = () => {
        fixing = false;
        const waiting = [...deferred.values()];
        deferred.clear();
        for (const later of waiting) {
          release(later);
        }
      };
      answered.then(next, next);
    }
  };

  /**
   * REKEY messages: a repeat of one applied costs a decode and a compare (`stale`); a new one a
   * signature check inside the token, at most rekeyChecksPerSecondMax a second (a flood of forged
   * ones costs no more). A token that keeps seeing genuine rekeys past the next one it needs
   * (`gap`, rekeyGapsFatal in a row over rekeyGapsFatalMs of stream time) missed more than the source
   * repeats: it is told to enroll again.
   */
  /**
   * Two budgets of signature checks: one for messages that open a key of the token's path under
   * a key it holds (Token.rekeyOpens: every genuine leave it stays through), one for the others
   * (its own removal, or forgeries): a flood of forged REKEYs, which open nothing, uses up only the second.
   */
  const mayCheckRekey = perSecondBudgets(
    { opening: rekeyOpeningChecksPerSecondMax, other: rekeyChecksPerSecondMax },
    nowMs,
  );
  let gapsInARow = 0;
  /** The stream time of the first of those gaps. */
  let firstGapUs: number | undefined;
  const ignoreRekey = (reason: string) => {
    stats.rekeysIgnored[reason] = (stats.rekeysIgnored[reason] ?? 0) + 1;
  };
  const onRekey = (datagram: Buffer) => {
    const decoded = decodeRekeyDatagram(datagram);
    if (!decoded.ok) {
      ignoreRekey('malformed');
      return;
    }
    const rekey = decoded.value;
    if (run !== undefined && (rekey.sessionId !== run.sessionId || rekey.incarnation !== run.incarnation)) {
      ignoreRekey('other-run');
      return;
    }
    const treeEpoch = token.treeEpochOf(rekeyTreeIdOf(rekey.rekey));
    if (treeEpoch === undefined) {
      ignoreRekey('other-tree');
      return;
    }
    if (rekeyEpochOf(rekey.rekey) <= treeEpoch) {
      ignoreRekey('stale');
      return;
    }
    if (!mayCheckRekey(token.rekeyOpens(rekey.rekey) === true ? 'opening' : 'other')) {
      ignoreRekey('rate');
      return;
    }
    const outcome = token.applyRekey(rekey.rekey);
    if (outcome.status === 'applied') {
      stats.rekeysApplied++;
      gapsInARow = 0;
      firstGapUs = undefined;
      return;
    }
    ignoreRekey(outcome.status);
    if (outcome.status !== 'gap') {
      return;
    }
    // A burst of leaves is many REKEYs a tick: one of them lost makes all the later ones gaps until
    // the source's next full repeat brings it. Only gaps through several repeats mean it is gone.
    gapsInARow++;
    firstGapUs = Math.min(firstGapUs ?? rekey.timestampUs, rekey.timestampUs);
    if (gapsInARow >= rekeyGapsFatal && rekey.timestampUs - firstGapUs >= rekeyGapsFatalMs * 1000) {
      onRefused(
        new TokenRefused(
          'rekey-missing',
          `this token's key tree is at epoch ${outcome.treeEpoch}, and the source repeats only later rekeys: enroll the token again (gatecast token enroll) to bring it up to date`,
        ),
      );
    }
  };

  return {
    stats,
    filter(datagram, onPass, onMalformed) {
      pass = onPass;
      const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
      if (type === PacketType.key) {
        onKey(datagram);
        return;
      }
      if (type === PacketType.rekey) {
        onRekey(datagram);
        return;
      }
      if (type === PacketType.signature) {
        // Offers, manifests and control signatures: a gate with the source key checks them before
        // this filter (and passes none on); here there is none, and they are not needed to decrypt.
        stats.signaturesUnchecked++;
        return;
      }
      if (type === PacketType.data) {
        // The header first (its body length above all): a DATA that fails it is malformed, not
        // forged, and is never opened.
        const problem = headerProblem(datagram);
        if (problem !== undefined) {
          stats.packetsMalformed++;
          onMalformed?.(problem);
          return;
        }
        const epoch = uint16At(datagram, offsetKeyEpoch);
        if (epoch === 0) {
          stats.packetsClear++; // plain DATA in a restricted session is never written
          return;
        }
        openAndPass(datagram);
        onDataEpoch(epoch, uint32At(datagram, offsetSessionId), uint32At(datagram, offsetIncarnation));
        return;
      }
      onPass(datagram);
    },
  };
}
