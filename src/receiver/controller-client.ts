/**
 * The agent's side of flow A: asks the repair controller to repair S1 with the subscriber's bearer
 * token, checks the answer against the contract (src/protocol/api-repair.ts), the grant's tag
 * (keyed from that token) and its fields, and releases the grant when the application leaves. Any
 * answer that fails a check is a refusal with the reason.
 */
import { verifyAnswerTag } from '../crypto/answer-auth.js';
import { parseS2Key, type S2Key } from '../crypto/s2-seal.js';
import { type Endpoint, formatEndpoint, parseGroup } from '../net/address.js';
import { type ApiAnswer, NoContent, requestApi } from '../net/api-client.js';
import { RepairGrantBody } from '../protocol/api-repair.js';
import { answerFields } from '../protocol/controller.js';

/** The controller's answer as the agent uses it. */
export type Resolution =
  | {
      readonly granted: true;
      readonly s2: Endpoint;
      readonly leaseMs: number;
      /** S2's key when S2 is sealed; undefined when the controller's S2 is plain. */
      readonly key?: S2Key | undefined;
    }
  | { readonly granted: false; readonly reason: string };

/** A client of one controller for one subscriber. */
export interface ControllerClient {
  /** Asks for S2; an aborted request is a refusal that says so (the grant, if any, lapses). */
  resolve(s1: Endpoint, source?: string, options?: { signal?: AbortSignal | undefined }): Promise<Resolution>;
  release(s1: Endpoint): Promise<void>;
}

/** Makes a client; the token is the subscriber's. */
export function controllerClient(url: string, token: string): ControllerClient {
  const base = url.replace(/\/+$/, '');
  return {
    async resolve(s1, source, options) {
      let answer: ApiAnswer<RepairGrantBody>;
      try {
        answer = await requestApi(`${base}/v1/repair`, RepairGrantBody, {
          token,
          method: 'POST',
          body: { group: formatEndpoint(s1), ...(source === undefined ? {} : { source }) },
          timeoutMs: 10_000,
          signal: options?.signal,
        });
      } catch (error) {
        return {
          granted: false,
          reason: `the repair controller at ${base} cannot be reached: ${(error as Error).message}`,
        };
      }
      if (!answer.ok) {
        return {
          granted: false,
          reason:
            answer.error === 'invalid-answer'
              ? `${answer.status} the controller’s answer is not a grant: ${answer.message}`
              : `${answer.status} ${answer.message}`,
        };
      }
      const grant = answer.body;
      if (grant.session !== formatEndpoint(s1) || !verifyAnswerTag(token, answerFields(grant), grant.tag)) {
        return { granted: false, reason: 'the controller’s answer failed its authenticity check' };
      }
      let s2: Endpoint;
      try {
        s2 = parseGroup(grant.s2, 's2');
      } catch {
        return { granted: false, reason: `the controller granted an unusable S2 "${grant.s2}"` };
      }
      let key: S2Key | undefined;
      try {
        key = grant.key === null ? undefined : parseS2Key(grant.key.epoch, grant.key.secret, 'key');
      } catch (error) {
        return {
          granted: false,
          reason: `the controller granted an unusable S2 key: ${(error as Error).message}`,
        };
      }
      return { granted: true, s2, leaseMs: grant.leaseSeconds * 1000, ...(key === undefined ? {} : { key }) };
    },
    async release(s1) {
      await requestApi(`${base}/v1/repair`, NoContent, {
        token,
        method: 'DELETE',
        body: { group: formatEndpoint(s1) },
        timeoutMs: 5_000,
      }).catch(() => undefined); // the lease lapses on its own
    },
  };
}
