/**
 * The subscription server as `gatecast serve` and `gatecast admin --db` run it: the subscription
 * role with the billing role handed in, and the order role on the same app when asked for (roles do
 * not import each other; the CLI composes them).
 */
import { createBilling } from '../billing/billing.js';
import { type OrderRole, type OrderRoleOptions, registerOrderRole } from '../order/app.js';
import { buildSubscriptionApp, type SubscriptionAppOptions } from '../subscription/app.js';

/** A role `gatecast serve --roles` takes. */
export type ServeRole = 'subscription' | 'billing' | 'order';

/** Options of the composed server. */
export interface ServerAppOptions extends Omit<SubscriptionAppOptions, 'billing' | 'roles' | 'plugins'> {
  /** Default: subscription and billing (and order, which `gatecast admin --db` adds without its background work). */
  readonly roles?: readonly ServeRole[] | undefined;
  /** Settings of the order role, when it runs. */
  readonly order?: (OrderRoleOptions & { readonly onStarted?: (role: OrderRole) => void }) | undefined;
}

/** Builds the subscription app with the billing role, and the order role if asked (not listening). */
export function buildServerApp(options: ServerAppOptions) {
  const roles = options.roles ?? ['subscription', 'billing'];
  const { order, ...rest } = options;
  return buildSubscriptionApp({
    ...rest,
    roles: roles.filter((role): role is 'subscription' | 'billing' => role !== 'order'),
    billing: createBilling,
    plugins: roles.includes('order')
      ? [
          (app, context) => {
            const role = registerOrderRole(app, context, {
              ...order,
              onInternalError: options.onInternalError,
            });
            order?.onStarted?.(role);
          },
        ]
      : [],
  });
}
