/**
 * Where a link's router keeps its routes, so that two configurations can be told to be one place
 * (docs/ordering.md): one smcrouted daemon and inbound interface (the driver keeps every route of
 * that interface equal to its link's), or one nftables table. A relay has no place shared with
 * another: its sockets are its own.
 */
import { posix } from 'node:path';
import type { LinkRouter } from '../protocol/api-order.js';
import { nftablesTableName } from './nftables.js';

/** The place of a router, or undefined when it shares none (a relay). */
export function routerPlace(router: LinkRouter): string | undefined {
  switch (router.kind) {
    case 'smcroute':
      return `smcroute ${posix.normalize(router.socket)} ${router.inbound}`;
    case 'nftables':
      return `nftables ${router.table ?? nftablesTableName(router.inbound, router.outbound)}`;
    default:
      return undefined;
  }
}
