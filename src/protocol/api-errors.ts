/**
 * The error answers of gatecast's HTTP APIs (docs/api.md, "Errors"): every error body is
 * `{"error": CODE, "message"}` with one of these codes. Servers answer with them; clients match on
 * them. Pure data, no I/O.
 */
import { Type } from '@sinclair/typebox';

/** Every error code an HTTP API answers with, and its status. */
export const apiErrorStatus = {
  'invalid-request': 400,
  unauthorized: 401,
  forbidden: 403,
  'not-entitled': 403,
  'not-found': 404,
  'request-timeout': 408,
  conflict: 409,
  'capacity-full': 409,
  'payload-too-large': 413,
  'unsupported-media-type': 415,
  'limit-exceeded': 422,
  'too-many-requests': 429,
  internal: 500,
  unavailable: 503,
} as const;

/** A documented error code. */
export type ApiErrorCode = keyof typeof apiErrorStatus;

/** The code a status maps to when nothing more specific is known. */
export function errorCodeForStatus(status: number): ApiErrorCode {
  switch (status) {
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not-found';
    case 408:
      return 'request-timeout';
    case 409:
      return 'conflict';
    case 413:
      return 'payload-too-large';
    case 415:
      return 'unsupported-media-type';
    case 422:
      return 'limit-exceeded';
    case 429:
      return 'too-many-requests';
    case 503:
      return 'unavailable';
    default:
      return status >= 500 ? 'internal' : 'invalid-request';
  }
}

/** The body of every error answer. */
export const ErrorBody = Type.Object({
  error: Type.Union(Object.keys(apiErrorStatus).map((code) => Type.Literal(code as ApiErrorCode))),
  message: Type.String(),
});
