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

/**
 * The body of an answer as text, or undefined when it is longer than `bytesMax`: a declared
 * Content-Length past it is refused before a byte is read, and a body that streams past it is
 * cancelled there, so a server that sends without end is never held in memory.
 */
export async function readBodyBounded(response: Response, bytesMax: number): Promise<string | undefined> {
  const declared = Number(response.headers.get('content-length') ?? Number.NaN);
  if (Number.isFinite(declared) && declared > bytesMax) {
    await response.body?.cancel();
    return undefined;
  }
  if (response.body === null) {
    return '';
  }
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      break;
    }
    bytes += value.byteLength;
    if (bytes > bytesMax) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}
