/**
 * Interface selection by name or address. Node wants an IPv4 interface as its address and an
 * IPv6 interface as "::%name" (measured; a bare name gives EINVAL).
 */

import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Family } from './address.js';
import { UnknownInterfaceError } from './errors.js';

/** An interface resolved for one family. */
export interface ResolvedInterface {
  /** Interface name, e.g. "eth0". */
  readonly name: string;
  /** The interface's own address of the family (IPv6: link-local preferred for scope). */
  readonly address: string;
  /** The value node:dgram takes for setMulticastInterface and addMembership. */
  readonly socketInterface: string;
}

/**
 * Resolves --iface (a name like "eth0" or an address on this host) for the given family.
 * Throws UnknownInterfaceError naming the value and the interfaces that exist.
 */
export function resolveInterface(spec: string, family: Family): ResolvedInterface {
  const all = networkInterfaces();
  const wanted = family === 4 ? 'IPv4' : 'IPv6';
  const specFamily = isIP(spec);
  if (specFamily !== 0 && specFamily !== family) {
    // An address picks the interface and its address of that family: an IPv4 address cannot
    // say which IPv6 address (or scope) an IPv6 group is used with, nor the reverse.
    throw new UnknownInterfaceError(
      `interface address ${spec} is IPv${specFamily} but the group is IPv${family}: give the interface's name or one of its ${wanted} addresses`,
    );
  }
  for (const [name, addresses] of Object.entries(all)) {
    const list = addresses ?? [];
    const matchesName = name === spec;
    const matchesAddress = specFamily !== 0 && list.some((entry) => entry.address === spec);
    if (!matchesName && !matchesAddress) {
      continue;
    }
    const ofFamily = list.filter((entry) => entry.family === wanted);
    const own = ofFamily.find((entry) => entry.address === spec) ?? ofFamily[0];
    if (own === undefined) {
      throw new UnknownInterfaceError(`interface ${spec} (${name}) has no ${wanted} address`);
    }
    return {
      name,
      address: own.address,
      socketInterface: family === 4 ? own.address : `::%${name}`,
    };
  }
  const known = Object.keys(all).sort().join(', ');
  throw new UnknownInterfaceError(`unknown interface "${spec}" (this host has: ${known || 'none'})`);
}
