/**
 * Parsing of endpoints given as ADDR:PORT (IPv6 as [ADDR]:PORT) and checks that a group is
 * multicast. Errors name the option the value came from.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { InvalidArgumentError } from './errors.js';

/** IP family of an endpoint. */
export type Family = 4 | 6;

/** A parsed ADDR:PORT. */
export interface Endpoint {
  readonly address: string;
  readonly port: number;
  readonly family: Family;
}

/** Parses "239.1.2.3:5000" or "[ff3e::1]:5000". Throws InvalidArgumentError naming field. */
export function parseEndpoint(text: string, field: string): Endpoint {
  let host: string;
  let portText: string;
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) {
    host = bracketed[1] ?? '';
    portText = bracketed[2] ?? '';
  } else {
    const colon = text.lastIndexOf(':');
    if (colon <= 0 || text.indexOf(':') !== colon) {
      throw new InvalidArgumentError(
        field,
        `"${text}" is not ADDR:PORT (write IPv6 as [ADDR]:PORT, e.g. [ff3e::1]:5000)`,
      );
    }
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
  }
  const port = parsePort(portText, field);
  if (isIPv4(host)) {
    return { address: host, port, family: 4 };
  }
  if (host.includes('%')) {
    throw new InvalidArgumentError(
      field,
      `"${host}": give the interface with its own option (e.g. --iface eth0), not as a %zone`,
    );
  }
  if (isIPv6(host)) {
    return { address: canonicalIpv6(host), port, family: 6 };
  }
  throw new InvalidArgumentError(field, `"${host}" is not an IPv4 or IPv6 address`);
}

/** An IP address in its one text form: IPv4 as written (node:net refuses leading zeros), IPv6 per RFC 5952. */
export function canonicalAddress(address: string): string {
  return isIPv6(address) ? canonicalIpv6(address) : address;
}

/**
 * The one text form of an IPv6 address (RFC 5952: lower case, no leading zeros, the longest run
 * of zero groups as "::"), so that "[FF3E:0::1]" and "[ff3e::1]" are one group wherever endpoints
 * are compared or stored: the S1 of a session, the key of a repair module.
 */
function canonicalIpv6(address: string): string {
  // The WHATWG URL serializer writes IPv6 hosts in exactly this form.
  return new URL(`http://[${address}]/`).hostname.slice(1, -1);
}

/** Parses a UDP port, 1-65535. */
export function parsePort(text: string, field: string): number {
  if (!/^\d+$/.test(text)) {
    throw new InvalidArgumentError(field, `port "${text}" is not a number`);
  }
  const port = Number(text);
  if (port < 1 || port > 65535) {
    throw new InvalidArgumentError(field, `port ${port} is out of range (1-65535)`);
  }
  return port;
}

/** The first 16 bits of an IPv6 address ("ff02::1" -> 0xff02, "::1" -> 0). */
function firstHextet(address: string): number {
  const head = address.split(':')[0] ?? '';
  return head === '' ? 0 : Number.parseInt(head, 16);
}

/** True for 224.0.0.0/4 and ff00::/8. */
export function isMulticast(address: string): boolean {
  if (isIPv4(address)) {
    const first = Number(address.split('.')[0]);
    return first >= 224 && first <= 239;
  }
  return isIPv6(address) && (firstHextet(address) & 0xff00) === 0xff00;
}

/**
 * The scope of an IPv6 multicast address (RFC 4291 section 2.7): 1 interface-local, 2
 * link-local, 5 site-local, 8 organization-local, 14 global. Undefined for IPv4.
 */
export function multicastScope(address: string): number | undefined {
  return isIPv6(address) && isMulticast(address) ? firstHextet(address) & 0x000f : undefined;
}

/** The largest IPv6 multicast scope whose addresses are ambiguous without an interface. */
export const scopedGroupScopeMax = 2;

/**
 * True for an IPv6 group that exists once per link (ff02::/16, ff12::/16, ..., any scope up to 2):
 * it can only be bound, joined or sent to on a named interface (the zone, "ff02::1%eth0").
 */
export function isScopedGroup(endpoint: Endpoint): boolean {
  const scope = multicastScope(endpoint.address);
  return scope !== undefined && scope <= scopedGroupScopeMax;
}

/** Parses a group endpoint and checks that the address is multicast. */
export function parseGroup(text: string, field: string): Endpoint {
  const endpoint = parseEndpoint(text, field);
  if (!isMulticast(endpoint.address)) {
    throw new InvalidArgumentError(
      field,
      `${endpoint.address} is not a multicast group (IPv4 224.0.0.0/4, IPv6 ff00::/8)`,
    );
  }
  return endpoint;
}

/** Formats an endpoint back as ADDR:PORT. */
export function formatEndpoint(endpoint: Endpoint): string {
  return endpoint.family === 6
    ? `[${endpoint.address}]:${endpoint.port}`
    : `${endpoint.address}:${endpoint.port}`;
}
