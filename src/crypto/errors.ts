/**
 * Typed failures of the crypto layer: suites refused at configuration load, and the reasons a
 * token refuses to unwrap a key (docs/security.md, "What is refused and why").
 */

/** An algorithm or suite that gatecast refuses; the message names the algorithm and why. */
export class SuiteRefused extends Error {
  readonly code = 'GATECAST_ERR_SUITE_REFUSED';
}

/** Why a token refused to unwrap a service or traffic key. Stable strings: counted and documented. */
export type TokenRefusalReason =
  | 'not-entitled'
  | 'not-yet-valid'
  | 'expired'
  | 'rollback'
  | 'tier'
  | 'purse-empty'
  | 'purse-unavailable'
  | 'bad-signature'
  | 'bad-grant'
  | 'bad-key-message'
  /** The KEY is of a member-tree epoch this token has not reached yet: a REKEY it needs is due. */
  | 'rekey-missing'
  /** The token was removed from the service's member tree (a leave): it gets no later key. */
  | 'removed'
  /** The token holds no membership of the service's member tree: enroll it (again). */
  | 'not-a-member'
  /** The KEY seals its packets in groups (every-n-th-packet mode): the token gives group keys, never its traffic key. */
  | 'group-mode'
  /** The token itself failed (its own state or device, not the KEY): the message says what. */
  | 'token-failed';

/**
 * A token refused to release a key. `reason` is what a caller matches on; the message is what a
 * user reads ("not entitled to news until 2026-12-01T00:00:00.000Z", "purse empty").
 */
export class TokenRefused extends Error {
  readonly code = 'GATECAST_ERR_TOKEN_REFUSED';
  constructor(
    readonly reason: TokenRefusalReason,
    message: string,
  ) {
    super(message);
  }
}

/** A token cannot be opened or written: wrong PIN, unreadable file, missing PKCS#11 module or slot. */
export class TokenError extends Error {
  readonly code = 'GATECAST_ERR_TOKEN';
}

/** A packet's key material is not usable: a sealer asked to reuse a nonce, a key of the wrong size. */
export class CipherError extends Error {
  readonly code = 'GATECAST_ERR_CIPHER';
}

/**
 * A restricted run has sealed under all 65,535 key epochs its header can name (65,535
 * crypto-periods): it ends, and the session is started again as a new run.
 */
export class KeyEpochsExhausted extends Error {
  readonly code = 'GATECAST_ERR_KEY_EPOCHS';
}

/**
 * GATECAST_AEAD_ENGINE names no engine, or names the addon when it cannot be used; the message
 * names the variable, the value and what is accepted (docs/security.md, "The packet engine").
 */
export class AeadEngineError extends Error {
  readonly code = 'GATECAST_ERR_AEAD_ENGINE';
}
