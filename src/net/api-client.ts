/**
 * The one typed client of gatecast's HTTP APIs: a JSON request under a bearer token, bounded in
 * time, whose answer is checked against the same schema the server answers with. An answer that
 * does not fit (null, a wrong type, a missing field, an undocumented error) is a refusal with the
 * reason, never a crash further on.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { FormatRegistry, type Static, type TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { apiAnswerBytesMax } from '../limits.js';
import { ErrorBody } from '../protocol/api-errors.js';
import { FetchFailed, fetchFailure, readBodyBounded } from './http.js';

if (!FormatRegistry.Has('ipv4')) {
  FormatRegistry.Set('ipv4', (value) => isIPv4(value));
  FormatRegistry.Set('ipv6', (value) => isIPv6(value));
}
if (!FormatRegistry.Has('date-time')) {
  FormatRegistry.Set('date-time', (value) => !Number.isNaN(Date.parse(value)));
}

/** An answer: the body the schema promised, or a refusal with its documented code. */
export type ApiAnswer<T> =
  | { readonly ok: true; readonly status: number; readonly body: T }
  | { readonly ok: false; readonly status: number; readonly error: string; readonly message: string };

/** Options of one request. */
export interface ApiRequest {
  readonly token: string;
  readonly method?: string;
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
}

/** An answer as it came: its status and its body's text (undefined: past apiAnswerBytesMax). */
export interface RawAnswer {
  readonly status: number;
  readonly text: string | undefined;
}

/**
 * Sends one request and reads its answer as text, for a caller that checks it itself with
 * checkText (an answer that is not JSON, say). An answer longer than apiAnswerBytesMax is cancelled
 * as soon as it is past it and comes back with text undefined. Throws FetchFailed when no answer
 * came (refused, reset, a certificate error), or when the whole answer, body included, did not come
 * within `timeoutMs` ("no answer to POST /v1/enrollments within 10 s").
 */
export async function sendApi(url: string, options: ApiRequest): Promise<RawAnswer> {
  const timeout = AbortSignal.timeout(options.timeoutMs);
  try {
    const response = await fetch(url, {
      method: options.method ?? 'GET',
      headers: {
        authorization: `Bearer ${options.token}`,
        ...(options.body === undefined ? {} : { 'content-type': 'application/json' }),
        ...options.headers,
      },
      ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
      signal: options.signal === undefined ? timeout : AbortSignal.any([timeout, options.signal]),
    });
    return { status: response.status, text: await readBodyBounded(response, apiAnswerBytesMax) };
  } catch (error) {
    if (timeout.aborted && options.signal?.aborted !== true) {
      // Say what was waited for: a server that took the connection and never answered (or stopped
      // half-way through its answer) is told from one that refused it.
      throw new FetchFailed(
        `no answer to ${options.method ?? 'GET'} ${new URL(url).pathname} within ${formatSeconds(options.timeoutMs)}`,
      );
    }
    throw new FetchFailed(fetchFailure(error));
  }
}

function formatSeconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}

/**
 * Sends one request; a 2xx answer must match `schema`, any other one the error body. Throws
 * FetchFailed when no answer came (refused, reset, timed out, a certificate error).
 */
export async function requestApi<T extends TSchema>(
  url: string,
  schema: T,
  options: ApiRequest,
): Promise<ApiAnswer<Static<T>>> {
  const { status, text } = await sendApi(url, options);
  return checkText(status, text, schema);
}

/**
 * Checks an answer's text against the contract: JSON that fits `schema` (or, where the schema is a
 * string, the text itself: the CSV export), or a documented error body.
 */
export function checkText<T extends TSchema>(
  status: number,
  text: string | undefined,
  schema: T,
): ApiAnswer<Static<T>> {
  if (text === undefined) {
    return {
      ok: false,
      status,
      error: 'invalid-answer',
      message: 'the answer is larger than a client reads',
    };
  }
  let body: unknown;
  try {
    body = text === '' ? null : JSON.parse(text);
  } catch {
    body = status >= 200 && status < 300 && schema.type === 'string' ? text : undefined;
  }
  return checkAnswer(status, body, schema);
}

/** Checks an answer already received (an in-process `inject`, say) against the contract. */
export function checkAnswer<T extends TSchema>(
  status: number,
  body: unknown,
  schema: T,
): ApiAnswer<Static<T>> {
  if (status >= 200 && status < 300) {
    if (Value.Check(schema, body)) {
      return { ok: true, status, body: body as Static<T> };
    }
    const first = Value.Errors(schema, body).First();
    return {
      ok: false,
      status,
      error: 'invalid-answer',
      message: `the answer does not fit the contract${first === undefined ? '' : ` at "${first.path || '/'}": ${first.message}`}`,
    };
  }
  if (Value.Check(ErrorBody, body)) {
    return { ok: false, status, error: body.error, message: body.message };
  }
  return { ok: false, status, error: 'invalid-answer', message: `an undocumented ${status} answer` };
}

/** A 204 answer: no body. */
export const NoContent = Type.Union([Type.Null(), Type.Unknown()]);
