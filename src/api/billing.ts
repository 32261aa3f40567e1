/**
 * The billing role's interface, as the subscription role sees it (it may not import the billing
 * role): the rate card's shape, one usage charge, and the routes billing serves. The CLI builds the
 * billing role and hands it to the subscription app.
 */
import type { FastifyInstance } from 'fastify';
import type { UsageBody } from '../protocol/api-subscription.js';
import type { ApiContext } from './context.js';

/** Rating rules: minor units per unit of usage. */
export interface RateCard {
  /** Per 10^9 bytes repaired for a subscriber. */
  readonly repairPerGigabyte: number;
  /** Per 10^6 bytes of a pay-as-you-go stream. */
  readonly payAsYouGoPerMegabyte: number;
  /** Per minute of a pay-as-you-go stream. */
  readonly payAsYouGoPerMinute: number;
  /** Per hour of a source's repaired session. */
  readonly sourceRepairPerHour: number;
  /** Per channel order of a service priced per order (flow D). */
  readonly channelOrderPerOrder: number;
  /** Per hour a channel order of a service priced per hour was held (flow D). */
  readonly channelOrderPerHour: number;
}

/** One charge as the billing role answers it. */
export interface ChargeOutcome {
  readonly id: string;
  readonly amount: number;
  readonly replayed: boolean;
}

/** How one charge is rated. */
export interface ChargeOptions {
  /**
   * The price per unit of the usage's kind, in minor units, instead of the rate card's now: the
   * price a charge was agreed at (a channel order keeps its rate card's price from its admission).
   */
  readonly price?: number | undefined;
}

/** What the subscription role calls billing for. */
export interface BillingService {
  /**
   * Rates and charges one usage event under an idempotency key that covers `fingerprint` (the
   * client's request). Throws the ledger's refusal (LedgerError) when it is refused.
   */
  chargeUsage(
    key: string,
    usage: UsageBody,
    fingerprint?: unknown,
    options?: ChargeOptions,
  ): Promise<ChargeOutcome>;
  /** The rate card in force (the defaults, overridden by what the operator stored). */
  currentRates(): Promise<RateCard>;
  /**
   * Registers a token's purse (its owner, its receipt key, its ledger account); idempotent for the
   * same owner and key, a conflict for another.
   */
  registerPurse(
    tokenId: string,
    registration: { subscriber: string; publicKey: string },
  ): Promise<
    | { readonly ok: true; readonly account: string; readonly created: boolean }
    | { readonly ok: false; readonly status: 400 | 404 | 409; readonly message: string }
  >;
  /** Serves the billing routes (rates, usage, billing runs, invoices, the export) on the app. */
  register(app: FastifyInstance): void;
}

/** Builds the billing role over the API context, with the default rates. */
export type BillingFactory = (context: ApiContext, defaults?: RateCard) => BillingService;
