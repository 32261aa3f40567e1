/**
 * Authenticity of the repair controller's answers: the agent proves who it is with its bearer
 * token, and the controller tags its grant with HMAC-SHA-256 under a key derived from that same
 * token, so an answer cannot be forged or altered by anyone who does not hold the token.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

const derive = (token: string) =>
  createHmac('sha256', 'gatecast controller answer v1').update(token).digest();

/** The tag of an answer's fields. */
export function answerTag(token: string, fields: readonly string[]): string {
  return createHmac('sha256', derive(token)).update(fields.join('\n')).digest('base64url');
}

/** True when the tag matches the fields under the token's key. */
export function verifyAnswerTag(token: string, fields: readonly string[], tag: string): boolean {
  const expected = Buffer.from(answerTag(token, fields));
  const given = Buffer.from(tag);
  return expected.length === given.length && timingSafeEqual(expected, given);
}
