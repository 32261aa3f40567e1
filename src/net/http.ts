/**
 * What the HTTP servers and clients share: bearer tokens in, fetch failures out. Requests go through
 * the one typed client (api-client.ts), which checks every answer against the contract.
 */

const bearerPattern = /^Bearer ([A-Za-z0-9_\-.]{8,200})$/;

/** The token of an `Authorization: Bearer …` header, or undefined when absent or malformed. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  return typeof header === 'string' ? bearerPattern.exec(header)?.[1] : undefined;
}

/** Why a fetch failed, as short as the error allows: ECONNREFUSED, a certificate error, … */
export function fetchFailure(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message;
}

/** No answer came (refused, reset, timed out, a certificate error); the message says why. */
export class FetchFailed extends Error {}
