/**
 * The repair controller's answer to an agent (flow A, docs/protocol.md "Repair controller"): what
 * the agent needs to receive the repaired copy of S1, and the fields the answer's tag covers.
 */

/** An agent's request: repair S1 for me (the bearer token says who "me" is). */
export interface RepairRequest {
  /** S1 as GROUP:PORT ([GROUP]:PORT for IPv6). */
  readonly group: string;
  /** S1's sender, for a source-specific join. */
  readonly source?: string | undefined;
}

/** The controller's grant. */
export interface RepairGrant {
  /** S1, as asked. */
  readonly session: string;
  /** The repaired group S2 to join, GROUP:PORT. */
  readonly s2: string;
  /** The subscriber the grant is for. */
  readonly subscriber: string;
  /** Renew (ask again) before this many seconds pass, or the grant lapses. */
  readonly leaseSeconds: number;
  /** S2's key (S2 is sealed), or null when the controller's S2 is plain. */
  readonly key: { readonly suite: string; readonly epoch: number; readonly secret: string } | null;
  /** HMAC-SHA-256 over answerFields(), keyed from the subscriber's token (base64url). */
  readonly tag: string;
}

/** The fields of a grant its tag covers, in a fixed order. */
export function answerFields(grant: Omit<RepairGrant, 'tag'>): string[] {
  return [
    'gatecast-repair-grant-v1',
    grant.session,
    grant.s2,
    grant.subscriber,
    String(grant.leaseSeconds),
    grant.key === null ? '' : `${grant.key.suite}:${grant.key.epoch}:${grant.key.secret}`,
  ];
}
