/**
 * Typed decode failures of the wire protocol. A decoder never throws: it returns one of these
 * reasons, which a socket handler counts and drops (docs/protocol.md, "Validation").
 */

/** Why a datagram was rejected. Stable strings: they appear in counters and docs/errors.md. */
export type DecodeErrorReason =
  | 'truncated'
  | 'bad-magic'
  | 'bad-version'
  | 'unknown-type'
  | 'unsupported-type'
  | 'bad-flags'
  | 'reserved-not-zero'
  | 'length-mismatch'
  | 'bad-field';

/** A decode failure: the reason and a short human-readable detail. */
export interface DecodeError {
  readonly ok: false;
  readonly reason: DecodeErrorReason;
  readonly detail: string;
}

/** A decode success. */
export interface DecodeOk<T> {
  readonly ok: true;
  readonly value: T;
}

/** What every decoder returns. */
export type DecodeResult<T> = DecodeOk<T> | DecodeError;

/** Builds a failure. */
export function invalid(reason: DecodeErrorReason, detail: string): DecodeError {
  return { ok: false, reason, detail };
}

/** Builds a success. */
export function valid<T>(value: T): DecodeOk<T> {
  return { ok: true, value };
}

/** An encoder was handed a message that cannot be encoded: a bug in the caller. */
export class ProtocolEncodeError extends Error {
  readonly code = 'GATECAST_ERR_PROTOCOL_ENCODE';
}
