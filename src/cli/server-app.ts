/**
 * The subscription server as `gatecast serve` and `gatecast admin --db` run it: the subscription
 * role with the billing role handed in (roles do not import each other; the CLI composes them).
 */
import { createBilling } from '../billing/billing.js';
import { buildSubscriptionApp, type SubscriptionAppOptions } from '../subscription/app.js';

/** Builds the subscription app with the billing role (not listening). */
export function buildServerApp(options: Omit<SubscriptionAppOptions, 'billing'>) {
  return buildSubscriptionApp({ ...options, billing: createBilling });
}
