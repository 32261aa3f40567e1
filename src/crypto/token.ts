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
import { keyTimeRollbackToleranceMs, tokenReleasedKeysMax } from '../limits.js';
import { decodeGrant, type Grant, type KeyMessage, PriceModel } from '../protocol/restricted.js';
import { deviceKeyId, ed25519FromRaw, verifySignature } from './authority.js';
import { TokenError, TokenRefused } from './errors.js';

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
  /** Unwraps a traffic key under a service key and releases it; undefined if it fails. */
  unwrapTrafficKey(serviceKey: ServiceKeyHandle, wrapped: Buffer): Buffer | undefined;
  close(): void;
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
  readonly #purse: Purse;
  #state: TokenState;
  readonly #serviceKeys = new Map<string, ServiceKeyHandle>();
  readonly #released = new Map<string, Buffer>();
  #closed = false;

  constructor(backend: TokenBackend, purse: Purse = noPurse) {
    this.#backend = backend;
    this.#purse = purse;
    this.#state = backend.loadState();
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
   * Why this token cannot decode `service` at `nowMs`, or undefined when a grant covers it. Used
   * by the CLI to refuse early with the message a user reads.
   */
  refusalFor(service: string, nowMs: number): TokenRefused | undefined {
    const grants = this.#grants().filter((grant) => grant.service === service);
    if (grants.length === 0) {
      return new TokenRefused('not-entitled', `not entitled to ${service}: this token holds no grant for it`);
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
    return new TokenRefused('expired', `not entitled to ${service}: the entitlement ended at ${iso(last)}`);
  }

  /**
   * Releases the traffic key of a decoded KEY message, after every check of the
   * module comment; throws TokenRefused with the reason otherwise. A key already released for
   * the same run and epoch is returned again without a second debit.
   */
  async releaseTrafficKey(key: KeyMessage): Promise<Buffer> {
    this.#assertOpen();
    const id = `${key.sessionId}/${key.incarnation}/${key.keyEpoch}/${key.service}`;
    const grants = this.#grants().filter(
      (grant) => grant.service === key.service && grant.serviceEpoch === key.serviceEpoch,
    );
    if (grants.length === 0) {
      throw new TokenRefused(
        'not-entitled',
        `not entitled to ${key.service} (service epoch ${key.serviceEpoch}): no grant`,
      );
    }
    const signed = grants.filter((grant) =>
      verifySignature(key.signed, key.signature, ed25519FromRaw(grant.sourcePublicKey)),
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
    const cached = this.#released.get(id);
    if (cached !== undefined) {
      this.#advance(key.timestampUs);
      return Buffer.from(cached);
    }
    if (grant.priceModel === PriceModel.perCryptoPeriod && grant.priceMinor > 0) {
      const answer = await this.#purse.debit({
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
    const traffic = this.#backend.unwrapTrafficKey(this.#serviceKey(grant), key.wrappedKey);
    if (traffic === undefined) {
      throw new TokenRefused(
        'bad-key-message',
        `KEY message for ${key.service} does not unwrap under the service key`,
      );
    }
    this.#advance(key.timestampUs);
    if (this.#released.size >= tokenReleasedKeysMax) {
      const oldest = this.#released.keys().next().value;
      if (oldest !== undefined) {
        this.#released.get(oldest)?.fill(0);
        this.#released.delete(oldest);
      }
    }
    this.#released.set(id, Buffer.from(traffic));
    return traffic;
  }

  /** Closes the back end; idempotent. */
  close(): void {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    for (const key of this.#released.values()) {
      key.fill(0);
    }
    this.#released.clear();
    this.#serviceKeys.clear();
    this.#backend.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #assertOpen(): void {
    if (this.#closed) {
      throw new TokenError('the token is closed');
    }
  }

  #advance(timestampUs: number): void {
    if (timestampUs > this.#state.highestStreamTimeUs) {
      this.#state = { ...this.#state, highestStreamTimeUs: timestampUs };
      this.#backend.saveState(this.#state);
    }
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

  #grants(): Grant[] {
    const grants: Grant[] = [];
    for (const stored of this.#state.grants) {
      const decoded = decodeGrant(Buffer.from(stored, 'base64'));
      if (decoded.ok) {
        grants.push(decoded.value);
      }
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
