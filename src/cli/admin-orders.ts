/**
 * `gatecast admin orders …`: the operator's commands of the order role (flow D, docs/ordering.md),
 * each one request to the order API: links, services, who ordered what, the report, and cancels.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { TSchema } from '@sinclair/typebox';
import { canonicalAddress } from '../net/address.js';
import {
  Link,
  LinkList,
  Order,
  OrderList,
  OrderReport,
  OrderServiceList,
  OrderServiceSaved,
} from '../protocol/api-order.js';
import { UsageError } from './errors.js';

export const orderAdminHelp = `  orders [list] [--box ID] [--service NAME] [--state active|cancelled|expired|preempted|all]
                                            who ordered what, since when (default: active)
  orders report                             boxes per active service, links' capacity in use, totals
  orders cancel ORDER                       end an order (its route goes when it was the last)
  orders links                              the transmission links, their capacity, use and driver
  orders link NAME --capacity BITS --router smcroute:SOCKET:IN:OUT|nftables:IN:OUT[:TABLE]|relay:INADDR:OUTADDR
                   (IPv6 in brackets: relay:[fd00::1]:[fd00:1::1])
                   [--policy reject|preempt]  define (or change) a link
  orders services                           the orderable services and how many boxes hold each
  orders service NAME --link LINK --group GROUP:PORT --rate BITS [--source ADDR]
                   [--priority N] [--price per-order|per-hour|subscription] [--relay-to GROUP:PORT]
`;

type Send = (method: string, path: string, body?: unknown) => Promise<{ status: number; body: string }>;

/**
 * Parses 10M, 500k, 1G or a plain number of bit/s, exactly (decimal digits, no floating point): a
 * value that is no whole number of bit/s is refused, not rounded into another rate.
 */
export function parseBits(text: string, field: string): number {
  const match = /^([0-9]+)(?:\.([0-9]+))?([kMG]?)$/.exec(text);
  if (match === null) {
    throw new UsageError(`${field}: "${text}" is not a bit rate such as 4M, 500k or 1G`);
  }
  const fraction = (match[2] ?? '').replace(/0+$/, '');
  const zeros = { '': 0, k: 3, M: 6, G: 9 }[match[3] as '' | 'k' | 'M' | 'G'] - fraction.length;
  if (zeros < 0) {
    throw new UsageError(`${field}: "${text}" is not a whole number of bit/s`);
  }
  const value = Number(BigInt(`${match[1]}${fraction}`) * 10n ** BigInt(zeros));
  if (value < 1) {
    throw new UsageError(`${field}: "${text}" is below 1 bit/s`);
  }
  return value;
}

const routerForms =
  'smcroute:SOCKET:IN:OUT, nftables:IN:OUT[:TABLE] or relay:INADDR:OUTADDR (IPv6 as [ADDR], e.g. relay:[fd00::1]:[fd00:1::1])';

/** One relay address of --router: IPv4 as it is, IPv6 in brackets (as in [ADDR]:PORT elsewhere). */
function relayAddress(token: string, text: string, which: string): string {
  const bracketed = /^\[([^\]]*)\]$/.exec(token);
  const address = bracketed === null ? token : (bracketed[1] as string);
  if (bracketed !== null ? isIPv6(address) && !address.includes('%') : isIPv4(address)) {
    return canonicalAddress(address);
  }
  throw new UsageError(
    `--router: ${which} "${token}" in "${text}" is not an IPv4 address or an IPv6 address in brackets; write ${routerForms}`,
  );
}

/**
 * Parses --router. A socket path may hold colons (an interface name cannot: the last two fields
 * are the interfaces); a relay's IPv6 addresses are written in brackets, so the colons between the
 * fields stay unambiguous.
 */
export function parseRouter(text: string) {
  const colon = text.indexOf(':');
  const kind = colon < 0 ? text : text.slice(0, colon);
  const rest = colon < 0 ? '' : text.slice(colon + 1);
  if (kind === 'smcroute') {
    const fields = rest.split(':');
    const [inbound, outbound] = fields.slice(-2);
    const socket = fields.slice(0, -2).join(':');
    if (fields.length >= 3 && socket !== '' && inbound !== '' && outbound !== '') {
      return { kind, socket, inbound, outbound };
    }
  }
  if (kind === 'nftables') {
    const fields = rest.split(':');
    const [inbound, outbound, table] = fields;
    if ((fields.length === 2 || fields.length === 3) && inbound !== '' && outbound !== '' && table !== '') {
      return table === undefined ? { kind, inbound, outbound } : { kind, inbound, outbound, table };
    }
  }
  if (kind === 'relay') {
    const match = /^(\[[^\]]*\]|[^:[\]]*):(\[[^\]]*\]|[^:[\]]*)$/.exec(rest);
    if (match !== null) {
      return {
        kind,
        inbound: relayAddress(match[1] as string, text, 'INADDR'),
        outbound: relayAddress(match[2] as string, text, 'OUTADDR'),
      };
    }
  }
  throw new UsageError(`--router: "${text}" is not ${routerForms}`);
}

/** Maps `orders …` to one request. */
export function ordersCommand(
  args: readonly string[],
  values: Record<string, string | boolean | undefined>,
  send: Send,
): Promise<{ status: number; body: string }> {
  const text = (name: string) => (typeof values[name] === 'string' ? (values[name] as string) : undefined);
  const need = (name: string) => {
    const value = text(name);
    if (value === undefined) {
      throw new UsageError(`orders ${args[0]}: --${name} is required (gatecast admin --help)`);
    }
    return value;
  };
  const name = (index: number, what: string) => {
    const value = args[index];
    if (value === undefined) {
      throw new UsageError(`orders ${args[0]}: ${what} is missing (gatecast admin --help)`);
    }
    return encodeURIComponent(value);
  };
  const [action = 'list'] = args;
  switch (action) {
    case 'list': {
      const query = new URLSearchParams(
        Object.entries({
          box: text('box'),
          service: text('service'),
          state: text('state'),
          limit: text('limit'),
        }).filter((entry): entry is [string, string] => entry[1] !== undefined),
      ).toString();
      return send('GET', `/v1/order/orders${query === '' ? '' : `?${query}`}`);
    }
    case 'report':
      return send('GET', '/v1/order/report');
    case 'cancel':
      return send('DELETE', `/v1/order/orders/${name(1, 'ORDER')}`);
    case 'links':
      return send('GET', '/v1/order/links');
    case 'services':
      return send('GET', '/v1/order/services');
    case 'link':
      return send('PUT', `/v1/order/links/${name(1, 'NAME')}`, {
        capacity: parseBits(need('capacity'), '--capacity'),
        router: parseRouter(need('router')),
        policy: text('policy'),
      });
    case 'service': {
      const priority = text('priority');
      if (priority !== undefined && !/^[0-9]{1,4}$/.test(priority)) {
        throw new UsageError(`--priority: "${priority}" is not a whole number`);
      }
      return send('PUT', `/v1/order/services/${name(1, 'NAME')}`, {
        link: need('link'),
        group: need('group'),
        bitRate: parseBits(need('rate'), '--rate'),
        source: text('source'),
        priority: priority === undefined ? undefined : Number(priority),
        price: text('price'),
        relayTo: text('relay-to'),
      });
    }
    default:
      throw new UsageError(`orders: unknown action "${action}" (gatecast admin --help)`);
  }
}

/** The contract's schema of an `orders` action's answer (src/protocol/api-order.ts). */
export function orderAnswerSchema(action: string): TSchema {
  switch (action) {
    case 'list':
      return OrderList;
    case 'report':
      return OrderReport;
    case 'cancel':
      return Order;
    case 'links':
      return LinkList;
    case 'services':
      return OrderServiceList;
    case 'link':
      return Link;
    case 'service':
      return OrderServiceSaved;
    default:
      throw new UsageError(`orders: unknown action "${action}" (gatecast admin --help)`);
  }
}
