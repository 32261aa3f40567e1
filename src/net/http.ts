/** What the HTTP servers and clients share: bearer tokens in, fetch failures out. */

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

/** The answer to a JSON request: its status and its body (an empty object when not JSON). */
export interface JsonAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** One JSON request under a bearer token, bounded in time; throws FetchFailed when no answer came. */
export async function requestJson(
  url: string,
  options: {
    readonly token: string;
    readonly method?: string;
    readonly body?: unknown;
    readonly headers?: Record<string, string>;
    readonly timeoutMs: number;
  },
): Promise<JsonAnswer> {
  let response: Response;
  try {
    response = await fetch(url, {
      method: options.method ?? 'GET',
      headers: {
        authorization: `Bearer ${options.token}`,
        ...(options.body === undefined ? {} : { 'content-type': 'application/json' }),
        ...options.headers,
      },
      ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
      signal: AbortSignal.timeout(options.timeoutMs),
    });
  } catch (error) {
    throw new FetchFailed(fetchFailure(error));
  }
  const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  return { status: response.status, body };
}
