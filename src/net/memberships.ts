/**
 * The host's multicast group memberships, read from /proc/net/igmp and /proc/net/igmp6 (the
 * current network namespace's). The agent watches them to learn which sessions an application
 * joined, without the application's help.
 */
import { readFileSync } from 'node:fs';
import { readAddress } from '../protocol/address.js';

/** One group joined on one interface. */
export interface Membership {
  readonly iface: string;
  readonly group: string;
  /** Sockets on the host holding the membership. */
  readonly users: number;
}

/** Parses /proc/net/igmp: interface lines, then group lines with the address in host byte order. */
export function parseIgmp(text: string): Membership[] {
  const memberships: Membership[] = [];
  let iface: string | undefined;
  for (const line of text.split('\n').slice(1)) {
    const header = /^\d+\s+(\S+)\s*:/.exec(line);
    if (header) {
      iface = header[1];
      continue;
    }
    const group = /^\s+([0-9A-Fa-f]{8})\s+(\d+)/.exec(line);
    if (group && iface !== undefined) {
      const hex = group[1] ?? '';
      const bytes = [6, 4, 2, 0].map((at) => Number.parseInt(hex.slice(at, at + 2), 16));
      memberships.push({ iface, group: bytes.join('.'), users: Number(group[2]) });
    }
  }
  return memberships;
}

/** Parses /proc/net/igmp6: "index device group(32 hex) users flags timer". */
export function parseIgmp6(text: string): Membership[] {
  const memberships: Membership[] = [];
  for (const line of text.split('\n')) {
    const match = /^\s*\d+\s+(\S+)\s+([0-9a-f]{32})\s+(\d+)/.exec(line);
    if (!match) {
      continue;
    }
    const group = readAddress(Buffer.from(match[2] ?? '', 'hex'), 0, 6) ?? '';
    memberships.push({ iface: match[1] ?? '', group, users: Number(match[3]) });
  }
  return memberships;
}

/** Reads both files; a file that cannot be read (no IPv6, not Linux) contributes nothing. */
export function readMemberships(): Membership[] {
  const read = (path: string) => {
    try {
      return readFileSync(path, 'utf8');
    } catch {
      return '';
    }
  };
  return [...parseIgmp(read('/proc/net/igmp')), ...parseIgmp6(read('/proc/net/igmp6'))];
}
