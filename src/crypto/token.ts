/**
 * Tokens: the decode module that holds a device key and the service keys, and releases a
 * short-lived traffic key only when the entitlement allows it (docs/security.md, "Tokens").
 *
 * One interface, two back ends: a software token (src/crypto/software-token.ts, a file encrypted
 * under a PIN) and a PKCS#11 token (src/crypto/pkcs11-token.ts, SoftHSM2 in tests). The back end
 * does the key operations; the checks are here, the same for both, because no token enforces
 * dates by itself (SoftHSM ignores CKA_END_DATE):
 *
 *  1. the KEY message is signed by the source key the service's grant names;
 *  2. its authenticated stream time (the header timestamp, under the signature) is inside the
 *     grant's window;
 *  3. that time is not earlier than the highest the token ever accepted, less
 *     keyTimeRollbackToleranceMs: the token keeps this monotonic counter in its own storage, so a
 *     replayed old KEY message (or a stream whose clock was rolled back) is refused;
 *  4. the grant's tier reaches the KEY message's tier;
 *  5. a pay-as-you-go grant debits the purse through the Purse interface before anything is
 *     unwrapped; no purse, or an empty one, is a refusal.
 */
import type { KeyObject } from 'node:crypto';
import {
  keyTimeRollbackToleranceMs,
  tokenCounterWriteStepMs,
  tokenReceiptsReportedKept,
  tokenReceiptsUnreportedMax,
  tokenReleasedKeysMax,
  tokenTreeGroupKeysKept,
  tokenTreeRekeysMax,
  tokenVerifiedGrantsKept,
} from '../limits.js';
import {
  decodeGrant,
  decodeMembership,
  type Grant,
  type KeyMessage,
  type Membership,
  PriceModel,
} from '../protocol/restricted.js';
import {
  deviceKeyId,
  ed25519FromRaw,
  ed25519PublicKeyProblem,
  joinShares,
  tokenIdOf,
  verifySignature,
} from './authority.js';
import { TokenError, TokenRefused } from './errors.js';
import { deriveGroupKeyWith, type GroupKeySource } from './group-key.js';
import { applyRekeyEntries, decodeRekey, type LkhRekey, LkhWrapping, lkhPath } from './lkh.js';
import {
  createPurse,
  createPurseState,
  PurseError,
  type Purse as PurseModule,
  parsePurseState,
  serializePurseState,
  tokenPurse,
} from './purse.js';
import type { Receipt } from './receipt.js';
import { decodeTopUp, verifyTopUp } from './top-up.js';

/** What a pay-as-you-go token asks its purse to debit, once per run and crypto-period. */
export interface PurseDebit {
  readonly service: string;
  readonly serviceEpoch: number;
  readonly sessionId: number;
  readonly incarnation: number;
  readonly keyEpoch: number;
  /** The KEY message's authenticated time, microseconds since 1970. */
  readonly streamTimeUs: number;
  readonly amountMinor: number;
  readonly currency: string;
}

/** A purse's answer: debited (and a receipt written by the purse), or a typed refusal. */
export type PurseAnswer =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: 'purse-empty' | 'purse-unavailable'; readonly message: string };

/**
 * The purse and receipt writer a token calls before unwrapping a pay-as-you-go key. The purse
 * keeps the balance and writes a signed, hash-chained receipt per debit; it must be idempotent
 * on (sessionId, incarnation, keyEpoch), because KEY messages repeat.
 */
export interface Purse {
  debit(debit: PurseDebit): Promise<PurseAnswer>;
}

/** The purse of a token that has none: every pay-as-you-go key is refused, clearly. */
export const noPurse: Purse = {
  debit: (debit) =>
    Promise.resolve({
      ok: false,
      reason: 'purse-unavailable',
      message: `purse unavailable: ${debit.service} is pay-as-you-go and this token has no purse`,
    }),
};

/** What a token keeps between runs (in its encrypted file or as a private token object). */
export interface TokenState {
  /** The operator root key (raw Ed25519, hex) whose signature a grant needs. */
  rootPublicKey: string;
  /** Installed grants, base64. */
  grants: string[];
  /** Highest authenticated stream time ever accepted, microseconds: the rollback counter. */
  highestStreamTimeUs: number;
  /** The purse, once the token is enrolled (src/crypto/purse.ts). */
  purse?: TokenPurseRecord | undefined;
  /** Memberships of member trees (LKH), with the rekey messages applied since each was issued. */
  memberships?: TokenMembershipRecord[] | undefined;
}

/**
 * A membership as a token keeps it: the membership as issued (its keys wrapped to the device key)
 * and every rekey message applied since, base64, oldest first. The keys themselves are never
 * stored: the token unwraps them inside itself again when it opens (for PKCS#11, as session
 * objects that never leave it), replaying the rekeys.
 */
export interface TokenMembershipRecord {
  membership: string;
  rekeys: string[];
}

/** A membership as `gatecast token show` shows it. */
export interface MembershipView {
  readonly service: string;
  readonly serviceEpoch: number;
  readonly treeId: number;
  readonly slot: number;
  /** The tree epoch the token has reached. */
  readonly treeEpoch: number;
  /** The tree epoch at which the token was removed, if it was. */
  readonly removedAt: number | undefined;
}

/** What applyRekey did with a rekey message. */
export type RekeyOutcome =
  | { readonly status: 'applied'; readonly treeEpoch: number; readonly removed: boolean }
  | {
      readonly status: 'stale' | 'gap' | 'other-tree' | 'bad-signature' | 'malformed';
      /** The epoch this token holds for the message's tree, when it is a member. */
      readonly treeEpoch: number | undefined;
    };

/** The purse as a token keeps it: the state, its monotonic counter and the receipts to report. */
export interface TokenPurseRecord {
  /** serializePurseState, as text. */
  state: string;
  /** The purse's monotonic counter (src/crypto/purse.ts, MonotonicCounter). */
  counter: number;
  /** Receipts billing has not taken yet, base64, oldest first. */
  unreported: string[];
  /** The last receipts billing took, base64, oldest first (at most tokenReceiptsReportedKept). */
  reported: string[];
}

/**
 * Why a token's stored state (the software token's sealed secrets, a PKCS#11 token's state object)
 * is not a TokenState, or undefined when it is one. Only the token's holder can write it, but a
 * state written by hand must be refused with a reason, not crash the next command that reads it.
 */
export function tokenStateProblem(value: unknown): string | undefined {
  const isObject = (item: unknown): item is Record<string, unknown> =>
    item !== null && typeof item === 'object' && !Array.isArray(item);
  const strings = (item: unknown) => Array.isArray(item) && item.every((entry) => typeof entry === 'string');
  const count = (item: unknown) => typeof item === 'number' && Number.isSafeInteger(item) && item >= 0;
  if (!isObject(value)) {
    return 'the state is not an object';
  }
  if (typeof value.rootPublicKey !== 'string' || !/^[0-9a-f]{64}$/i.test(value.rootPublicKey)) {
    return 'state.rootPublicKey is not an Ed25519 public key (64 hex digits)';
  }
  const rootProblem = ed25519PublicKeyProblem(Buffer.from(value.rootPublicKey, 'hex'));
  if (rootProblem !== undefined) {
    return `state.rootPublicKey is not a usable Ed25519 public key: ${rootProblem}`;
  }
  if (!strings(value.grants)) {
    return 'state.grants is not a list of strings';
  }
  if (!count(value.highestStreamTimeUs)) {
    return 'state.highestStreamTimeUs is not a non-negative integer';
  }
  const purse = value.purse;
  if (purse !== undefined) {
    if (!isObject(purse)) {
      return 'state.purse is not an object';
    }
    if (typeof purse.state !== 'string' || !count(purse.counter)) {
      return 'state.purse has no state text or counter';
    }
    if (!strings(purse.unreported) || !strings(purse.reported)) {
      return 'state.purse.unreported and state.purse.reported are not lists of strings';
    }
    try {
      parsePurseState(Buffer.from(purse.state));
    } catch (error) {
      return `state.purse.state: ${(error as Error).message}`;
    }
  }
  const memberships = value.memberships;
  if (memberships !== undefined) {
    if (!Array.isArray(memberships)) {
      return 'state.memberships is not a list';
    }
    for (const [index, entry] of memberships.entries()) {
      if (!isObject(entry) || typeof entry.membership !== 'string' || !strings(entry.rekeys)) {
        return `state.memberships[${index}] is not a membership and its rekeys`;
      }
    }
  }
  return undefined;
}

/** A purse as `gatecast token show` shows it. */
export interface PurseView {
  readonly tokenId: string;
  readonly currency: string;
  readonly balance: number;
  readonly topUps: number;
  readonly receipts: number;
  readonly unreported: number;
}

/** A service key inside the token, usable only to unwrap traffic keys. */
export type ServiceKeyHandle = unknown;

/** The key operations a token back end performs inside itself. */
export interface TokenBackend {
  readonly kind: 'software' | 'pkcs11';
  /** The device public key as an uncompressed P-256 point. */
  devicePoint(): Buffer;
  loadState(): TokenState;
  saveState(state: TokenState): void;
  /** ECDH with the grant's ephemeral key, then unwraps the service key; undefined if it fails. */
  unwrapServiceKey(grant: Grant): ServiceKeyHandle | undefined;
  /** Unwraps a traffic key (or a KEY's tree share) under a service or group key and releases it; undefined if it fails. */
  unwrapTrafficKey(serviceKey: ServiceKeyHandle, wrapped: Buffer): Buffer | undefined;
  /**
   * ECDH with a membership's ephemeral key, then unwraps each of its 32-byte tree keys into a key
   * that stays inside the token and can only unwrap; undefined if any fails.
   */
  unwrapTreeKeys(ephemeralPublicKey: Buffer, wrapped: readonly Buffer[]): ServiceKeyHandle[] | undefined;
  /** Unwraps a 32-byte tree key under another (a rekey entry), inside the token; undefined if it fails. */
  unwrapTreeKey(kek: ServiceKeyHandle, wrapped: Buffer): ServiceKeyHandle | undefined;
  /** Forgets a tree key used no more: replaced by a rekey, or unwrapped only to test one (a PKCS#11 session object is destroyed). */
  forgetTreeKey?(key: ServiceKeyHandle): void;
  /**
   * Every-n-th-packet mode: unwraps a KEY's share (the traffic key, or one of its two shares)
   * under a service or tree group key into an AES key that stays inside the token and can only
   * compute AES-CMAC; undefined if it fails. Forgotten with forgetTreeKey.
   */
  unwrapGroupShare(kek: ServiceKeyHandle, wrapped: Buffer): ServiceKeyHandle | undefined;
  /** AES-CMAC (16 bytes) of `message` under such a share, inside the token. */
  cmac(share: ServiceKeyHandle, message: Buffer): Buffer;
  /**
   * The raw Ed25519 public key of the token's receipt key, made inside the token when `create`
   * and there is none yet; undefined when there is none.
   */
  receiptPublicKey(create: boolean): Buffer | undefined;
  /** Signs a receipt's signed bytes with the receipt key, inside the token. */
  signReceipt(signed: Buffer): Buffer;
  close(): void;
}

/** What a token released for one KEY (Token.#released): a traffic key, or group-key shares. */
type Released =
  | { readonly traffic: Buffer; readonly group?: undefined }
  | {
      readonly traffic?: undefined;
      readonly group: { readonly shares: ServiceKeyHandle[]; readonly source: GroupKeySource };
    };

/**
 * What a KEY is remembered by: its run, epoch and service, and its tree epoch (the source replaces
 * a period's key when the tree changes before the period starts, and the replacement is another key).
 */
function keyIdOf(key: KeyMessage): string {
  return `${key.sessionId}/${key.incarnation}/${key.keyEpoch}/${key.service}/${key.tree?.treeEpoch ?? ''}/${key.packetsPerGroup ?? ''}`;
}

/** An entitlement as a user sees it. */
export interface Entitlement {
  readonly service: string;
  readonly serviceEpoch: number;
  readonly tier: number;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  readonly priceModel: 'subscription' | 'per-crypto-period';
  readonly priceMinor: number;
  readonly currency: string;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** A token: the checks above over one back end. Close it when done. */
export class Token {
  readonly #backend: TokenBackend;
  #purse: Purse | undefined;
  #purseModule: PurseModule | undefined;
  #state: TokenState;
  readonly #serviceKeys = new Map<string, ServiceKeyHandle>();
  /** Stored grants found to verify, by root key and stored text (#grants). */
  readonly #verifiedGrants = new Map<string, Grant>();
  /**
   * What each KEY admitted released, by run and epoch (keyIdOf), the oldest forgotten first past
   * tokenReleasedKeysMax: its traffic key, or in every-n-th-packet mode the shares it unwrapped
   * (inside the token) and what derives its group keys.
   */
  readonly #released = new Map<string, Released>();
  #groupKeysDerived = 0;
  /** Source public keys of the grants, as KeyObjects, by their raw hex (imported once, not per KEY). */
  readonly #sourceKeys = new Map<string, KeyObject>();
  /** Member trees as unwrapped inside the token, by tree id (built from the state when first needed). */
  readonly #trees = new Map<number, LiveTree>();
  /** The rollback counter moved in memory and is not written yet (#advance). */
  #counterUnsaved = false;
  /** A write of the rollback counter is scheduled. */
  #counterWriteDue = false;
  /** The rollback counter as last read from or written to the token's storage. */
  #counterWrittenUs: number;
  #closed = false;

  /** Without `purse`, the token uses its own (once enrolled), or none. */
  constructor(backend: TokenBackend, purse?: Purse) {
    this.#backend = backend;
    this.#purse = purse;
    this.#state = backend.loadState();
    this.#counterWrittenUs = this.#state.highestStreamTimeUs;
  }

  /** The token's name in receipts, purses and the ledger (derived from the device key). */
  get tokenId(): string {
    return tokenIdOf(this.#backend.devicePoint());
  }

  /**
   * Readies the token for enrollment: makes its receipt key inside the token if it has none.
   * Returns what the subscription server registers.
   */
  prepareEnrollment(): { tokenId: string; device: Buffer; receiptPublicKey: Buffer } {
    this.#assertOpen();
    const receiptPublicKey = this.#backend.receiptPublicKey(true);
    if (receiptPublicKey === undefined) {
      throw new TokenError('the token could not make its receipt key');
    }
    return { tokenId: this.tokenId, device: this.devicePoint(), receiptPublicKey };
  }

  /** Opens an empty purse in `currency` (the server's) if the token has none; refuses another currency. */
  ensurePurse(currency: string): void {
    this.#assertOpen();
    this.#refresh();
    const record = this.#state.purse;
    if (record === undefined) {
      this.#savePurse({
        state: serializePurseState(createPurseState(this.tokenId, currency)).toString('utf8'),
        counter: 0,
        unreported: [],
        reported: [],
      });
      return;
    }
    const held = parsePurseState(Buffer.from(record.state)).currency;
    if (held !== currency) {
      throw new TokenError(`the token's purse holds ${held}; the subscription server bills in ${currency}`);
    }
  }

  /**
   * Credits a top-up signed by the operator root key (src/crypto/top-up.ts) once: a top-up whose
   * sequence was credited already is answered `credited: false` and changes nothing. Throws
   * TokenRefused for a top-up not signed by the root or made for another token, and PurseError
   * for one out of sequence or in another currency.
   */
  async creditTopUp(bytes: Buffer): Promise<{ credited: boolean; sequence: number; amount: number }> {
    this.#assertOpen();
    const decoded = decodeTopUp(bytes);
    if (!decoded.ok) {
      throw new TokenRefused('bad-grant', `not a top-up: ${decoded.detail}`);
    }
    const topUp = decoded.value;
    this.#refresh();
    if (!verifyTopUp(topUp, ed25519FromRaw(Buffer.from(this.#state.rootPublicKey, 'hex')))) {
      throw new TokenRefused('bad-signature', 'the top-up is not signed by the operator root key');
    }
    if (topUp.tokenId !== this.tokenId) {
      throw new TokenRefused('bad-grant', `the top-up is for token ${topUp.tokenId}, not ${this.tokenId}`);
    }
    const purse = this.#ownPurse();
    const status = await purse.status();
    if (topUp.sequence <= status.topUps) {
      return { credited: false, sequence: topUp.sequence, amount: topUp.amount };
    }
    await purse.topUp({ sequence: topUp.sequence, amount: topUp.amount, currency: topUp.currency });
    return { credited: true, sequence: topUp.sequence, amount: topUp.amount };
  }

  /** The purse, or undefined when the token was never enrolled. */
  purseView(): PurseView | undefined {
    this.#refresh();
    const record = this.#state.purse;
    if (record === undefined) {
      return undefined;
    }
    const state = parsePurseState(Buffer.from(record.state));
    return {
      tokenId: state.tokenId,
      currency: state.currency,
      balance: state.balance,
      topUps: state.topUps,
      receipts: state.counter,
      unreported: record.unreported.length,
    };
  }

  /** Receipts to report to billing, oldest first: those not taken yet, or with `resend` the kept ones too. */
  receiptsToReport(resend = false): Buffer[] {
    this.#refresh();
    const record = this.#state.purse;
    if (record === undefined) {
      return [];
    }
    return [...(resend ? record.reported : []), ...record.unreported].map((text) =>
      Buffer.from(text, 'base64'),
    );
  }

  /** Marks receipts billing took (charged now or before) as reported. */
  receiptsReported(taken: readonly Buffer[]): void {
    this.#refresh();
    const record = this.#state.purse;
    if (record === undefined || taken.length === 0) {
      return;
    }
    const done = new Set(taken.map((bytes) => bytes.toString('base64')));
    const moved = record.unreported.filter((text) => done.has(text));
    this.#savePurse({
      ...record,
      unreported: record.unreported.filter((text) => !done.has(text)),
      reported: [...record.reported, ...moved].slice(-tokenReceiptsReportedKept),
    });
  }

  /** software or pkcs11. */
  get kind(): 'software' | 'pkcs11' {
    return this.#backend.kind;
  }

  /** The device public key (uncompressed P-256 point) the subscription server wraps grants to. */
  devicePoint(): Buffer {
    return this.#backend.devicePoint();
  }

  /** The rollback counter: the highest stream time accepted so far, microseconds. */
  get highestStreamTimeUs(): number {
    return this.#state.highestStreamTimeUs;
  }

  /** Installs a grant after checking the root's signature and that it names this token. */
  installGrant(bytes: Buffer): Entitlement {
    const grant = this.#checkGrant(bytes);
    this.#refresh();
    const others = this.#state.grants.filter((stored) => {
      const old = decodeGrant(Buffer.from(stored, 'base64'));
      return !old.ok || old.value.service !== grant.service || old.value.serviceEpoch !== grant.serviceEpoch;
    });
    this.#state = { ...this.#state, grants: [...others, bytes.toString('base64')] };
    this.#backend.saveState(this.#state);
    return entitlementOf(grant);
  }

  /** The grants installed, as entitlements. */
  entitlements(): Entitlement[] {
    return this.#grants().map(entitlementOf);
  }

  /**
   * Stored grants that open nothing: not a grant, not signed by the token's root key, or issued
   * to another token (edited in the stored state, or stored by hand).
   */
  unusableGrants(): number {
    return this.#state.grants.length - this.#grants().length;
  }

  /** "this token holds no grant for it", and the stored grants that fail their check, if any. */
  #noGrant(service: string): string {
    const unusable = this.unusableGrants();
    return `not entitled to ${service}: this token holds no grant for it${unusable === 0 ? '' : ` (${unusable} stored ${unusable === 1 ? 'grant fails its' : 'grants fail their'} check against the root key and this token's device: edited or not a grant)`}`;
  }

  /**
   * Why this token cannot decode `service` at `nowMs`, or undefined when a grant covers it. Used
   * by the CLI to refuse early with the message a user reads.
   */
  refusalFor(service: string, nowMs: number): TokenRefused | undefined {
    const grants = this.#grants().filter((grant) => grant.service === service);
    if (grants.length === 0) {
      return new TokenRefused('not-entitled', this.#noGrant(service));
    }
    if (grants.some((grant) => grant.notBeforeMs <= nowMs && nowMs < grant.notAfterMs)) {
      return undefined;
    }
    const next = grants
      .filter((grant) => grant.notBeforeMs > nowMs)
      .sort((a, b) => a.notBeforeMs - b.notBeforeMs)[0];
    if (next !== undefined) {
      return new TokenRefused('not-yet-valid', `not entitled to ${service} until ${iso(next.notBeforeMs)}`);
    }
    const last = Math.max(...grants.map((grant) => grant.notAfterMs));
    return new TokenRefused(
      'expired',
      `not entitled to ${service} since ${iso(last)}, when the entitlement ended`,
    );
  }

  /**
   * Releases the traffic key of a decoded KEY message, after every check of the
   * module comment; throws TokenRefused with the reason otherwise. A key already released for
   * the same run and epoch is returned again without a second debit.
   */
  async releaseTrafficKey(key: KeyMessage): Promise<Buffer> {
    this.#assertOpen();
    if (key.packetsPerGroup !== undefined) {
      throw new TokenRefused(
        'group-mode',
        `the KEY for ${key.service} seals its packets in groups of ${key.packetsPerGroup}: this token gives their group keys, never the traffic key`,
      );
    }
    const id = keyIdOf(key);
    const cached = this.#released.get(id)?.traffic;
    const { grant, treeKey } = await this.#admit(key, cached !== undefined);
    if (cached !== undefined) {
      this.#advance(key.timestampUs);
      return Buffer.from(cached);
    }
    const traffic = this.#unwrapTraffic(key, grant, treeKey);
    if (traffic === undefined) {
      throw new TokenRefused(
        'bad-key-message',
        `KEY message for ${key.service} does not unwrap under the service key`,
      );
    }
    this.#advance(key.timestampUs);
    this.#remember(id, { traffic: Buffer.from(traffic) });
    return traffic;
  }

  /**
   * Every-n-th-packet mode (src/crypto/group-key.ts): after the same checks and debit as
   * releaseTrafficKey, unwraps the KEY's shares into keys that stay inside the token and can only
   * derive group keys, and returns what derives them, once per group. The traffic key itself is
   * never released. A KEY already admitted for the same run and epoch is not charged again.
   */
  async releaseGroupKeys(key: KeyMessage): Promise<GroupKeySource> {
    this.#assertOpen();
    const packetsPerGroup = key.packetsPerGroup;
    if (packetsPerGroup === undefined) {
      throw new TokenRefused(
        'bad-key-message',
        `the KEY for ${key.service} seals every packet under its traffic key: it has no group keys`,
      );
    }
    const id = keyIdOf(key);
    const known = this.#released.get(id)?.group;
    const { grant, treeKey } = await this.#admit(key, known !== undefined);
    if (known !== undefined) {
      this.#advance(key.timestampUs);
      return known.source;
    }
    const shares: ServiceKeyHandle[] = [];
    const serviceShare = this.#backend.unwrapGroupShare(this.#serviceKey(grant), key.wrappedKey);
    if (serviceShare !== undefined) {
      shares.push(serviceShare);
    }
    if (key.tree !== undefined && serviceShare !== undefined) {
      const treeShare = this.#backend.unwrapGroupShare(treeKey, key.tree.wrappedShare);
      if (treeShare !== undefined) {
        shares.push(treeShare);
      }
    }
    if (shares.length !== (key.tree === undefined ? 1 : 2)) {
      for (const share of shares) {
        this.#backend.forgetTreeKey?.(share);
      }
      throw new TokenRefused(
        'bad-key-message',
        `KEY message for ${key.service} does not unwrap under the service key`,
      );
    }
    this.#advance(key.timestampUs);
    const backend = this.#backend;
    const prfs = shares.map((share) => (message: Buffer) => backend.cmac(share, message));
    const keyBytes = key.wrappedKey.length - 8;
    const context = {
      sessionId: key.sessionId,
      incarnation: key.incarnation,
      keyEpoch: key.keyEpoch,
      packetsPerGroup,
    };
    const source: GroupKeySource = {
      packetsPerGroup,
      keyBytes,
      groupKey: (groupIndex, seed) => {
        this.#assertOpen();
        if (this.#released.get(id)?.group?.source !== source) {
          throw new TokenRefused(
            'bad-key-message',
            `the group keys of ${key.service}'s key epoch ${key.keyEpoch} are forgotten: its KEY is asked again`,
          );
        }
        this.#groupKeysDerived++;
        return deriveGroupKeyWith(prfs, seed, { ...context, groupIndex }, keyBytes);
      },
    };
    this.#remember(id, { group: { shares, source } });
    return source;
  }

  /** Keeps what a KEY released, forgetting (and wiping) the oldest past tokenReleasedKeysMax. */
  #remember(id: string, released: Released): void {
    this.#forgetReleased(id);
    while (this.#released.size >= tokenReleasedKeysMax) {
      const oldest = this.#released.keys().next().value;
      if (oldest === undefined) {
        break;
      }
      this.#forgetReleased(oldest);
    }
    this.#released.set(id, released);
  }

  /** Wipes what one KEY released: its traffic key, or its shares inside the token. */
  #forgetReleased(id: string): void {
    const released = this.#released.get(id);
    if (released === undefined) {
      return;
    }
    this.#released.delete(id);
    released.traffic?.fill(0);
    // A software token's shares are the traffic keys themselves: wiped, not left to the collector.
    for (const share of released.group?.shares ?? []) {
      this.#backend.forgetTreeKey?.(share);
    }
  }

  /** Group keys this token derived since it was opened (every-n-th-packet mode). */
  get groupKeysDerived(): number {
    return this.#groupKeysDerived;
  }

  /**
   * The checks of releaseTrafficKey, in order (grant, source signature, window, rollback, tier,
   * tree membership), then the debit of a pay-as-you-go grant unless the KEY was admitted before.
   * Returns the grant and the tree's group key of the KEY's tree epoch (with a tree part).
   */
  async #admit(
    key: KeyMessage,
    admittedBefore: boolean,
  ): Promise<{ grant: Grant; treeKey: ServiceKeyHandle | undefined }> {
    const grants = this.#grants().filter(
      (grant) => grant.service === key.service && grant.serviceEpoch === key.serviceEpoch,
    );
    if (grants.length === 0) {
      const epochs = [
        ...new Set(
          this.#grants()
            .filter((grant) => grant.service === key.service)
            .map((grant) => grant.serviceEpoch),
        ),
      ].sort((a, b) => a - b);
      throw new TokenRefused(
        'not-entitled',
        epochs.length === 0
          ? this.#noGrant(key.service)
          : `not entitled to ${key.service} (service epoch ${key.serviceEpoch}): this token's grants are for service epoch ${epochs.join(', ')}`,
      );
    }
    const signed = grants.filter((grant) =>
      verifySignature(key.signed, key.signature, this.#sourceKey(grant.sourcePublicKey)),
    );
    if (signed.length === 0) {
      throw new TokenRefused(
        'bad-signature',
        `KEY message for ${key.service} is not signed by the service's source key`,
      );
    }
    const streamMs = Math.floor(key.timestampUs / 1000);
    const grant = signed.find(
      (candidate) => candidate.notBeforeMs <= streamMs && streamMs < candidate.notAfterMs,
    );
    if (grant === undefined) {
      const refusal = this.refusalFor(key.service, streamMs);
      throw refusal ?? new TokenRefused('expired', `not entitled to ${key.service} at ${iso(streamMs)}`);
    }
    if (key.timestampUs < this.#state.highestStreamTimeUs - keyTimeRollbackToleranceMs * 1000) {
      throw new TokenRefused(
        'rollback',
        `KEY message time ${iso(streamMs)} is before ${iso(Math.floor(this.#state.highestStreamTimeUs / 1000))}, the latest this token accepted: replayed or rolled back`,
      );
    }
    if (key.tier > grant.tier) {
      throw new TokenRefused(
        'tier',
        `${key.service} needs tier ${key.tier}; the grant gives tier ${grant.tier}`,
      );
    }
    // Before any debit: a token removed from the tree, or not yet at the KEY's tree epoch, pays nothing.
    const treeKey = key.tree === undefined ? undefined : this.#groupKeyFor(key);
    if (!admittedBefore && grant.priceModel === PriceModel.perCryptoPeriod && grant.priceMinor > 0) {
      const answer = await (this.#purse ?? this.#tokenPurse()).debit({
        service: key.service,
        serviceEpoch: key.serviceEpoch,
        sessionId: key.sessionId,
        incarnation: key.incarnation,
        keyEpoch: key.keyEpoch,
        streamTimeUs: key.timestampUs,
        amountMinor: grant.priceMinor,
        currency: grant.currency,
      });
      if (!answer.ok) {
        throw new TokenRefused(answer.reason, answer.message);
      }
    }
    return { grant, treeKey };
  }

  /**
   * Installs a membership of a service's member tree (issued with a grant at enrollment) after
   * checking the root's signature and that it names this token. It replaces an earlier membership
   * of the same tree or of the same service and epoch, with the rekeys applied to it.
   */
  installMembership(bytes: Buffer): MembershipView {
    this.#assertOpen();
    const decoded = decodeMembership(bytes);
    if (!decoded.ok) {
      throw new TokenRefused('bad-grant', `not a membership: ${decoded.detail}`);
    }
    const membership = decoded.value;
    this.#refresh();
    const root = ed25519FromRaw(Buffer.from(this.#state.rootPublicKey, 'hex'));
    if (!verifySignature(membership.signed, membership.signature, root)) {
      throw new TokenRefused(
        'bad-signature',
        `the membership of ${membership.service} is not signed by the operator root key`,
      );
    }
    if (!membership.deviceKeyId.equals(deviceKeyId(this.#backend.devicePoint()))) {
      throw new TokenRefused(
        'bad-grant',
        `the membership of ${membership.service} was issued to another token`,
      );
    }
    const others = (this.#state.memberships ?? []).filter((record) => {
      const old = decodeMembership(Buffer.from(record.membership, 'base64'));
      return (
        old.ok &&
        old.value.treeId !== membership.treeId &&
        (old.value.service !== membership.service || old.value.serviceEpoch !== membership.serviceEpoch)
      );
    });
    this.#state = {
      ...this.#state,
      memberships: [...others, { membership: bytes.toString('base64'), rekeys: [] }],
    };
    this.#backend.saveState(this.#state);
    this.#trees.delete(membership.treeId);
    return viewOf(membership, membership.treeEpoch, undefined);
  }

  /**
   * The memberships installed, with the tree epoch each has reached and the one it was removed at:
   * each is unwrapped inside the token with its rekeys replayed (a token opened again, as by
   * `gatecast token show`, knows only then whether a rekey removed it).
   */
  memberships(): MembershipView[] {
    this.#assertOpen();
    const views: MembershipView[] = [];
    for (const record of this.#state.memberships ?? []) {
      const decoded = decodeMembership(Buffer.from(record.membership, 'base64'));
      if (!decoded.ok) {
        continue;
      }
      // Unwrapped inside the token and its rekeys replayed: whether one removed it shows only so.
      const live = this.#closed
        ? this.#trees.get(decoded.value.treeId)
        : this.#liveTree(decoded.value.treeId);
      let epoch = decoded.value.treeEpoch;
      for (const text of record.rekeys) {
        const rekey = decodeRekey(Buffer.from(text, 'base64'));
        epoch = rekey.ok ? rekey.value.epoch : epoch;
      }
      views.push(viewOf(decoded.value, live?.epoch ?? epoch, live?.removedAt));
    }
    return views;
  }

  /** The tree epoch this token holds for a tree, or undefined when it is no member of it. */
  treeEpochOf(treeId: number): number | undefined {
    return this.#liveTree(treeId)?.epoch;
  }

  /**
   * Whether a rekey message of a later tree epoch opens a key of this token's path under a key it
   * holds now, without its signature: one AES key unwrap inside the token (RFC 3394's integrity
   * check), for the lowest entry on the path wrapped under a key held. Every genuine leave opens one
   * for each member it keeps; one made without a key of the tree opens none, so a flood of forged
   * REKEYs cannot use up the signature checks a member has for the genuine one. Undefined when the
   * message is malformed or this token is no member of its tree.
   */
  rekeyOpens(bytes: Buffer): boolean | undefined {
    this.#assertOpen();
    const decoded = decodeRekey(bytes);
    if (!decoded.ok) {
      return undefined;
    }
    const tree = this.#liveTree(decoded.value.treeId);
    if (tree === undefined || tree.membership.depth !== decoded.value.depth) {
      return undefined;
    }
    for (const entry of decoded.value.entries) {
      if (!tree.path.has(entry.target)) {
        continue;
      }
      const kekNode =
        entry.wrapping === LkhWrapping.previous ? entry.target : 2 * entry.target + entry.wrapping;
      const kek = tree.keys.get(kekNode);
      if (kek === undefined) {
        continue;
      }
      const key = this.#backend.unwrapTreeKey(kek, entry.wrapped);
      if (key === undefined) {
        return false;
      }
      this.#backend.forgetTreeKey?.(key);
      return true;
    }
    return false;
  }

  /**
   * Applies a rekey message (a REKEY datagram's body) to the membership of its tree, inside the
   * token: checked cheaply first (tree, epoch), then the root's signature, then the next epoch
   * only. A message that leaves the group key unchanged means this token was removed.
   */
  applyRekey(bytes: Buffer): RekeyOutcome {
    this.#assertOpen();
    const decoded = decodeRekey(bytes);
    if (!decoded.ok) {
      return { status: 'malformed', treeEpoch: undefined };
    }
    const rekey = decoded.value;
    const tree = this.#liveTree(rekey.treeId);
    if (tree === undefined || tree.membership.depth !== rekey.depth) {
      return { status: 'other-tree', treeEpoch: undefined };
    }
    if (rekey.epoch <= tree.epoch) {
      return { status: 'stale', treeEpoch: tree.epoch };
    }
    const root = ed25519FromRaw(Buffer.from(this.#state.rootPublicKey, 'hex'));
    if (!verifySignature(rekey.signed, rekey.signature, root)) {
      return { status: 'bad-signature', treeEpoch: tree.epoch };
    }
    if (rekey.epoch !== tree.epoch + 1 || tree.rekeys >= tokenTreeRekeysMax) {
      return { status: 'gap', treeEpoch: tree.epoch };
    }
    this.#applyTo(tree, rekey);
    this.#refresh();
    const memberships = (this.#state.memberships ?? []).map((record) =>
      record.membership === tree.record
        ? { membership: record.membership, rekeys: [...record.rekeys, bytes.toString('base64')] }
        : record,
    );
    this.#state = { ...this.#state, memberships };
    this.#backend.saveState(this.#state);
    return { status: 'applied', treeEpoch: tree.epoch, removed: tree.removedAt !== undefined };
  }

  /**
   * Does ahead of a session what the first KEY message would otherwise wait for: unwraps the
   * service key of every grant in its window at `nowMs` inside the token and imports the source
   * keys the grants name. Grants that do not unwrap are left for releaseTrafficKey to refuse.
   */
  prepare(nowMs: number): void {
    this.#assertOpen();
    for (const grant of this.#grants()) {
      if (grant.notBeforeMs <= nowMs && nowMs < grant.notAfterMs) {
        try {
          this.#sourceKey(grant.sourcePublicKey);
          this.#serviceKey(grant);
        } catch {
          // refused with its reason when a KEY message needs it
        }
      }
    }
  }

  /** Closes the back end, after writing the rollback counter if it moved; idempotent. */
  close(): void {
    if (this.#closed) {
      return;
    }
    this.#saveCounter();
    this.#closed = true;
    for (const id of [...this.#released.keys()]) {
      this.#forgetReleased(id);
    }
    this.#serviceKeys.clear();
    this.#sourceKeys.clear();
    this.#trees.clear();
    this.#backend.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Reads the token's state again before a change (another command may have changed the purse
   * since, e.g. a top-up during a receive); the rollback counter never moves back.
   */
  #refresh(): void {
    const fresh = this.#backend.loadState();
    this.#state = {
      ...fresh,
      highestStreamTimeUs: Math.max(fresh.highestStreamTimeUs, this.#state.highestStreamTimeUs),
    };
  }

  #savePurse(record: TokenPurseRecord): void {
    this.#state = { ...this.#state, purse: record };
    this.#backend.saveState(this.#state);
  }

  /** The purse module over the token's own storage, counter and receipt key. */
  #ownPurse(): PurseModule {
    if (this.#state.purse === undefined) {
      throw new PurseError(
        'GATECAST_ERR_PURSE_INVALID',
        'purse unavailable: this token has no purse; enroll it with gatecast token enroll',
      );
    }
    this.#purseModule ??= createPurse({
      storage: {
        load: async () => {
          this.#refresh();
          return parsePurseState(Buffer.from(this.#record().state));
        },
        save: async (state, receipt?: Receipt) => {
          const record = this.#record();
          this.#savePurse({
            ...record,
            state: serializePurseState(state).toString('utf8'),
            unreported:
              receipt === undefined
                ? record.unreported
                : [...record.unreported, receipt.bytes.toString('base64')],
          });
        },
      },
      counter: {
        read: async () => this.#record().counter,
        advance: async (to) => {
          const record = this.#record();
          if (to > record.counter) {
            this.#savePurse({ ...record, counter: to });
          }
        },
      },
      signer: (signed) => this.#backend.signReceipt(signed),
    });
    return this.#purseModule;
  }

  #record(): TokenPurseRecord {
    const record = this.#state.purse;
    if (record === undefined) {
      throw new PurseError('GATECAST_ERR_PURSE_INVALID', 'purse unavailable: this token has no purse');
    }
    return record;
  }

  /** The Purse a pay-as-you-go key debits: the token's own, or none before enrollment. */
  #tokenPurse(): Purse {
    if (this.#state.purse === undefined) {
      this.#refresh();
    }
    if (this.#state.purse === undefined) {
      return noPurse;
    }
    const debit = tokenPurse(this.#ownPurse(), () => undefined).debit;
    return {
      debit: async (request) => {
        const waiting = this.#record().unreported.length;
        if (waiting >= tokenReceiptsUnreportedMax) {
          return {
            ok: false,
            reason: 'purse-unavailable',
            message: `purse unavailable: ${waiting} receipts not yet reported to billing; run gatecast token receipts`,
          };
        }
        return debit(request);
      },
    };
  }

  #assertOpen(): void {
    if (this.#closed) {
      throw new TokenError('the token is closed');
    }
  }

  /**
   * Moves the rollback counter at once in memory (every check reads it there) and writes it to the
   * token's storage just after the caller got its key (setImmediate), not before: a join does not
   * wait for a file or token write. It is written once it is tokenCounterWriteStepMs ahead of what
   * the storage holds, not at every advance: a receiver's token is asked again every second, and
   * each write read, re-encrypted and replaced the token's state. A crash loses less than that
   * step, which keyTimeRollbackToleranceMs covers. close() writes what is still unwritten.
   */
  #advance(timestampUs: number): void {
    if (timestampUs > this.#state.highestStreamTimeUs) {
      this.#state = { ...this.#state, highestStreamTimeUs: timestampUs };
      this.#counterUnsaved = true;
      if (!this.#counterWriteDue && timestampUs - this.#counterWrittenUs >= tokenCounterWriteStepMs * 1000) {
        this.#counterWriteDue = true;
        setImmediate(() => this.#saveCounter()).unref();
      }
    }
  }

  /** Writes the rollback counter if it moved since the last write (reading the storage first). */
  #saveCounter(): void {
    this.#counterWriteDue = false;
    if (!this.#counterUnsaved || this.#closed) {
      return;
    }
    this.#counterUnsaved = false;
    this.#refresh();
    this.#backend.saveState(this.#state);
    this.#counterWrittenUs = this.#state.highestStreamTimeUs;
  }

  /** The KeyObject of a raw Ed25519 source key, imported once. */
  #sourceKey(raw: Buffer): KeyObject {
    const id = raw.toString('hex');
    let key = this.#sourceKeys.get(id);
    if (key === undefined) {
      key = ed25519FromRaw(raw);
      this.#sourceKeys.set(id, key);
    }
    return key;
  }

  /** The membership of a tree as unwrapped inside the token, its rekeys replayed; undefined if none. */
  #liveTree(treeId: number): LiveTree | undefined {
    const known = this.#trees.get(treeId);
    if (known !== undefined) {
      return known;
    }
    for (const record of this.#state.memberships ?? []) {
      const decoded = decodeMembership(Buffer.from(record.membership, 'base64'));
      if (!decoded.ok || decoded.value.treeId !== treeId) {
        continue;
      }
      const membership = decoded.value;
      const path = lkhPath(membership.depth, membership.slot);
      const handles = this.#backend.unwrapTreeKeys(membership.ephemeralPublicKey, membership.wrappedKeys);
      if (handles === undefined || handles.length !== path.length) {
        return undefined;
      }
      const tree: LiveTree = {
        membership,
        record: record.membership,
        path: new Set(path),
        keys: new Map(path.map((node, index) => [node, handles[index]])),
        epoch: membership.treeEpoch,
        groupKeys: new Map([[membership.treeEpoch, handles[handles.length - 1]]]),
        removedAt: undefined,
        rekeys: 0,
      };
      for (const text of record.rekeys) {
        const rekey = decodeRekey(Buffer.from(text, 'base64'));
        if (rekey.ok && rekey.value.epoch === tree.epoch + 1) {
          this.#applyTo(tree, rekey.value);
        }
      }
      this.#trees.set(treeId, tree);
      return tree;
    }
    return undefined;
  }

  /** Applies a checked rekey to a live tree: new keys inside the token, the group key kept by epoch. */
  #applyTo(tree: LiveTree, rekey: LkhRekey): void {
    const held = new Map(tree.keys);
    const before = tree.keys.get(1);
    applyRekeyEntries(tree.path, tree.keys, rekey, (kek, wrapped) =>
      this.#backend.unwrapTreeKey(kek, wrapped),
    );
    tree.epoch = rekey.epoch;
    tree.rekeys++;
    const after = tree.keys.get(1);
    if (after === before) {
      // Every key of a departed member's path is replaced, the root's too, and wrapped only for
      // the others: a member that learns no new group key was removed.
      tree.removedAt ??= rekey.epoch;
      return;
    }
    tree.groupKeys.set(rekey.epoch, after);
    for (const epoch of tree.groupKeys.keys()) {
      if (tree.groupKeys.size <= tokenTreeGroupKeysKept) {
        break;
      }
      const dropped = tree.groupKeys.get(epoch);
      tree.groupKeys.delete(epoch);
      if (dropped !== undefined && tree.keys.get(1) !== dropped) {
        this.#backend.forgetTreeKey?.(dropped);
      }
    }
    // Keys the rekey replaced are used no more (a PKCS#11 token destroys their objects), but for
    // the group keys still kept for KEYs of recent tree epochs.
    const kept = new Set(tree.groupKeys.values());
    for (const [node, key] of held) {
      if (tree.keys.get(node) !== key && !kept.has(key)) {
        this.#backend.forgetTreeKey?.(key);
      }
    }
  }

  /** The group key a KEY's tree share is wrapped under, or the refusal that says why there is none. */
  #groupKeyFor(key: KeyMessage): ServiceKeyHandle {
    const part = key.tree;
    if (part === undefined) {
      throw new TokenRefused('bad-key-message', 'the KEY has no tree part');
    }
    const tree = this.#liveTree(part.treeId);
    if (
      tree === undefined ||
      tree.membership.service !== key.service ||
      tree.membership.serviceEpoch !== key.serviceEpoch
    ) {
      throw new TokenRefused(
        'not-a-member',
        `not a member of ${key.service}'s key tree (${part.treeId}): enroll the token again (gatecast token enroll)`,
      );
    }
    if (tree.removedAt !== undefined && part.treeEpoch >= tree.removedAt) {
      throw new TokenRefused(
        'removed',
        `removed from ${key.service}'s members (key tree epoch ${tree.removedAt}): the entitlement ended or was revoked`,
      );
    }
    if (part.treeEpoch > tree.epoch) {
      throw new TokenRefused(
        'rekey-missing',
        `the KEY for ${key.service} is of key tree epoch ${part.treeEpoch}; this token holds ${tree.epoch} until the REKEY arrives`,
      );
    }
    const groupKey = tree.groupKeys.get(part.treeEpoch);
    if (groupKey === undefined) {
      throw new TokenRefused(
        'rekey-missing',
        `the KEY for ${key.service} is of key tree epoch ${part.treeEpoch}, older than this token's ${tree.epoch}: the source sends a newer one`,
      );
    }
    return groupKey;
  }

  /** The traffic key of a KEY: under the service key alone, or its two shares joined. */
  #unwrapTraffic(key: KeyMessage, grant: Grant, groupKey: ServiceKeyHandle | undefined): Buffer | undefined {
    const serviceShare = this.#backend.unwrapTrafficKey(this.#serviceKey(grant), key.wrappedKey);
    if (key.tree === undefined || serviceShare === undefined) {
      return serviceShare;
    }
    const treeShare = this.#backend.unwrapTrafficKey(groupKey, key.tree.wrappedShare);
    const traffic = treeShare === undefined ? undefined : joinShares(serviceShare, treeShare);
    serviceShare.fill(0);
    treeShare?.fill(0);
    return traffic;
  }

  #serviceKey(grant: Grant): ServiceKeyHandle {
    const id = grant.signature.toString('hex');
    let handle = this.#serviceKeys.get(id);
    if (handle === undefined) {
      handle = this.#backend.unwrapServiceKey(grant);
      if (handle === undefined) {
        throw new TokenRefused(
          'bad-grant',
          `the grant for ${grant.service} does not unwrap with this token's device key`,
        );
      }
      this.#serviceKeys.set(id, handle);
    }
    return handle;
  }

  /**
   * The grants installed that still verify: signed by the root key and issued to this token,
   * checked again whenever the state is read (a grant edited in the stored state, its window
   * moved, opens nothing), each stored text checked once per root key.
   */
  #grants(): Grant[] {
    const grants: Grant[] = [];
    for (const stored of this.#state.grants) {
      const key = `${this.#state.rootPublicKey}:${stored}`;
      let grant = this.#verifiedGrants.get(key);
      if (grant === undefined) {
        try {
          grant = this.#checkGrant(Buffer.from(stored, 'base64'));
        } catch {
          continue; // not a grant, or not one of the root's for this token: it opens nothing
        }
        if (this.#verifiedGrants.size >= tokenVerifiedGrantsKept) {
          this.#verifiedGrants.clear();
        }
        this.#verifiedGrants.set(key, grant);
      }
      grants.push(grant);
    }
    return grants;
  }

  #checkGrant(bytes: Buffer): Grant {
    const decoded = decodeGrant(bytes);
    if (!decoded.ok) {
      throw new TokenRefused('bad-grant', `not a grant: ${decoded.detail}`);
    }
    const grant = decoded.value;
    const root = ed25519FromRaw(Buffer.from(this.#state.rootPublicKey, 'hex'));
    if (!verifySignature(grant.signed, grant.signature, root)) {
      throw new TokenRefused(
        'bad-signature',
        `the grant for ${grant.service} is not signed by the operator root key`,
      );
    }
    if (!grant.deviceKeyId.equals(deviceKeyId(this.#backend.devicePoint()))) {
      throw new TokenRefused('bad-grant', `the grant for ${grant.service} was issued to another token`);
    }
    return grant;
  }
}

/** A membership unwrapped inside the token. */
interface LiveTree {
  readonly membership: Membership;
  /** The stored membership (base64): which record its rekeys are appended to. */
  readonly record: string;
  readonly path: ReadonlySet<number>;
  readonly keys: Map<number, ServiceKeyHandle>;
  epoch: number;
  /** The group key of each recent tree epoch, oldest first. */
  readonly groupKeys: Map<number, ServiceKeyHandle>;
  removedAt: number | undefined;
  /** Rekeys applied since the membership was issued. */
  rekeys: number;
}

function viewOf(membership: Membership, treeEpoch: number, removedAt: number | undefined): MembershipView {
  return {
    service: membership.service,
    serviceEpoch: membership.serviceEpoch,
    treeId: membership.treeId,
    slot: membership.slot,
    treeEpoch,
    removedAt,
  };
}

function entitlementOf(grant: Grant): Entitlement {
  return {
    service: grant.service,
    serviceEpoch: grant.serviceEpoch,
    tier: grant.tier,
    notBeforeMs: grant.notBeforeMs,
    notAfterMs: grant.notAfterMs,
    priceModel: grant.priceModel === PriceModel.perCryptoPeriod ? 'per-crypto-period' : 'subscription',
    priceMinor: grant.priceMinor,
    currency: grant.currency,
  };
}
