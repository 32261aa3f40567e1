/**
 * What the subscription server's route modules share: the API context (src/api/context.ts) plus
 * the SETUP sender (flow B) and the billing role, which the CLI builds and hands in.
 */
import type { BillingService } from '../api/billing.js';
import type { ApiContext as SharedContext } from '../api/context.js';

export {
  allow,
  anyParty,
  badRequest,
  callerOf,
  ErrorBody,
  errorReplies,
  forbid,
  hashToken,
  Id,
  Name,
  newToken,
  notFound,
  type OperatorAuthority,
  operatorOnly,
  operatorOrSelf,
  type Party,
  type PartyKind,
  Period,
  periodBounds,
  presentEntitlement,
  revenueAccount,
  Timestamp,
} from '../api/context.js';
export type { Schema } from '../store/database.js';

/** Sends SETUP join/leave to retransmit servers (flow B); absent when no control secret is set. */
export interface SetupSender {
  send(
    action: 'join' | 'leave',
    session: { group: string; port: number; source: string | undefined },
    servers: readonly string[],
  ): Promise<void>;
}

/** Shared by the subscription role's route modules. */
export interface ApiContext extends SharedContext {
  readonly setup: SetupSender | undefined;
  readonly billing: BillingService;
  /** How often members no entitlement covers leave their trees (default treeSweepMs). */
  readonly treeSweepMs?: number | undefined;
}
