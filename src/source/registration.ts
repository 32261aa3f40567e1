/**
 * A source registering its session with the subscription server (flow B): before the first
 * packet it registers S1 (and buys repair, which makes the subscription server send SETUP to the
 * retransmit servers); after END it ends the session, which tears the retransmit servers down and
 * charges the source. Plain HTTP+JSON with the source's bearer token.
 */
import { type ApiAnswer, requestApi } from '../net/api-client.js';
import { Session } from '../protocol/api-subscription.js';

/** The subscription server refused or could not be reached; the message says which. */
export class RegistrationError extends Error {
  readonly code = 'GATECAST_ERR_REQUEST';
}

/** What the subscription server answered for the session. */
export interface RegisteredSession {
  readonly id: string;
  readonly setup: readonly string[];
}

/** The session's end: what the source was charged for repair, if it bought it. */
export interface EndedSession {
  readonly charge: { readonly amount: number; readonly transfer: string } | undefined;
}

async function call(url: string, token: string, method: string, body?: unknown): Promise<Session> {
  let answer: ApiAnswer<Session>;
  try {
    answer = await requestApi(url, Session, { token, method, body, timeoutMs: 10_000 });
  } catch (error) {
    throw new RegistrationError(
      `the subscription server at ${new URL(url).origin} cannot be reached: ${(error as Error).message}`,
    );
  }
  if (!answer.ok) {
    throw new RegistrationError(
      `the subscription server refused: ${answer.status} ${answer.error}: ${answer.message}`,
    );
  }
  return answer.body;
}

/** Registers S1 with the subscription server. */
export async function registerSession(
  server: string,
  token: string,
  session: { name: string; group: string; source?: string | undefined; repair: boolean },
): Promise<RegisteredSession> {
  const answer = await call(`${server.replace(/\/+$/, '')}/v1/sessions`, token, 'POST', {
    name: session.name,
    group: session.group,
    ...(session.source === undefined ? {} : { source: session.source }),
    repair: session.repair,
  });
  return { id: answer.id, setup: answer.setup };
}

/** Ends the session (idempotent on the server: ending twice charges once). */
export async function endSession(server: string, token: string, id: string): Promise<EndedSession> {
  const answer = await call(
    `${server.replace(/\/+$/, '')}/v1/sessions/${encodeURIComponent(id)}/end`,
    token,
    'POST',
  );
  return { charge: answer.charge };
}
