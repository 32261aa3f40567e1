/**
 * IP addresses in control messages: a family byte and 16 address bytes, an IPv4 address in the
 * first 4 with the rest zero (docs/protocol.md, "Addresses"). Pure functions, no I/O.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** Addresses written lately, as their 16 bytes and family: a NACK names the same few addresses. */
const written = new Map<string, { bytes: Buffer; family: 4 | 6 }>();
/** Bound of that memory; the oldest entry goes first. */
const writtenAddressesMax = 256;

/** Writes an address as 16 bytes at offset; returns its family (4 or 6). */
export function writeAddress(out: Buffer, offset: number, address: string): 4 | 6 {
  let known = written.get(address);
  if (known === undefined) {
    const bytes = Buffer.alloc(16);
    known = { bytes, family: parseAddressInto(bytes, address) };
    written.set(address, known);
    if (written.size > writtenAddressesMax) {
      const oldest = written.keys().next().value;
      if (oldest !== undefined) {
        written.delete(oldest);
      }
    }
  }
  known.bytes.copy(out, offset);
  return known.family;
}

/** Parses an address into 16 bytes at offset 0 of out; throws TypeError when it is not one. */
function parseAddressInto(out: Buffer, address: string): 4 | 6 {
  const offset = 0;
  out.fill(0, offset, offset + 16);
  if (isIPv4(address)) {
    const parts = address.split('.').map(Number);
    for (let i = 0; i < 4; i++) {
      out[offset + i] = parts[i] ?? 0;
    }
    return 4;
  }
  if (!isIPv6(address)) {
    throw new TypeError(`not an IP address: ${address}`);
  }
  const [head = '', tail = ''] = address.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === '' ? [] : tail.split(':');
  const groups = address.includes('::')
    ? [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups]
    : headGroups;
  for (let i = 0; i < 8; i++) {
    out.writeUInt16BE(Number.parseInt(groups[i] ?? '0', 16), offset + i * 2);
  }
  return 6;
}

/** Reads 16 address bytes of the given family; undefined when IPv4 has non-zero padding. */
export function readAddress(buf: Buffer, offset: number, family: number): string | undefined {
  if (family === 4) {
    for (let i = 4; i < 16; i++) {
      if (buf[offset + i] !== 0) {
        return undefined;
      }
    }
    return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
  }
  if (family === 6) {
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) {
      groups.push(buf.readUInt16BE(offset + i * 2).toString(16));
    }
    // Canonical enough for comparisons through node:net: collapse the longest zero run.
    const text = groups.join(':');
    const runs = [...text.matchAll(/(?:^|:)0(?::0)+(?::|$)/g)];
    const longest = runs.sort((a, b) => b[0].length - a[0].length)[0];
    if (longest === undefined) {
      return text;
    }
    return `${text.slice(0, longest.index)}::${text.slice((longest.index ?? 0) + longest[0].length)}`;
  }
  return undefined;
}

/**
 * The address n after the given one (n ≥ 0), counting in its last 32 bits; undefined when that
 * would carry beyond them. Used to hand out groups from a pool.
 */
export function addToAddress(address: string, n: number): string | undefined {
  const bytes = Buffer.alloc(16);
  const family = writeAddress(bytes, 0, address);
  const at = family === 4 ? 0 : 12;
  const sum = bytes.readUInt32BE(at) + n;
  if (!Number.isInteger(n) || n < 0 || sum > 0xffff_ffff) {
    return undefined;
  }
  bytes.writeUInt32BE(sum, at);
  return readAddress(bytes, 0, family);
}
