/**
 * The kernel's count of datagrams it dropped for one UDP socket (its receive buffer was full, or a
 * checksum failed): Linux reports it per socket in the `drops` column of /proc/net/udp and
 * /proc/net/udp6, keyed by the socket's inode, which /proc/self/fd/N names ("socket:[INODE]").
 * A retransmit server counts these as packets it missed (docs/architecture.md, "Quality meter"):
 * a gap that never shows in the sequence (the tail of a session, or everything while the process
 * was too slow) is still loss. Where the files are missing (not Linux) the count is undefined.
 */

import type { Socket } from 'node:dgram';
import { readFileSync, readlinkSync } from 'node:fs';

/** The file descriptor of a bound node:dgram socket, or undefined where Node does not show it. */
export function socketFd(socket: Socket): number | undefined {
  // The public API has no fd; the handle holds it. Found through its symbol rather than the
  // deprecated `_handle` accessor, which warns (DEP0112).
  const state = Object.getOwnPropertySymbols(socket)
    .filter((symbol) => symbol.description === 'state symbol')
    .map(
      (symbol) => (socket as unknown as Record<symbol, { handle?: { fd?: unknown } } | undefined>)[symbol],
    )[0];
  const fd = state?.handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** The inode of the socket behind a file descriptor of this process. */
export function socketInode(fd: number): number | undefined {
  try {
    const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    return match?.[1] === undefined ? undefined : Number(match[1]);
  } catch {
    return undefined;
  }
}

/**
 * Finds the drops of the socket with this inode in the text of /proc/net/udp or udp6: the inode
 * is the 10th column and drops the last, in both files. Undefined when the inode is not listed.
 */
export function dropsFromProcText(text: string, inode: number): number | undefined {
  const wanted = String(inode);
  const lines = text.split('\n');
  const header = lines[0]?.trim().split(/\s+/) ?? [];
  if (header.at(-1) !== 'drops') {
    return undefined; // a kernel whose table has another layout
  }
  for (const line of lines.slice(1)) {
    const columns = line.trim().split(/\s+/);
    if (columns[9] === wanted) {
      const drops = Number(columns.at(-1));
      return Number.isSafeInteger(drops) && drops >= 0 ? drops : undefined;
    }
  }
  return undefined;
}

/** The kernel's drop count for a socket of this process by inode, from either table. */
export function kernelDrops(inode: number): number | undefined {
  for (const path of ['/proc/net/udp', '/proc/net/udp6']) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      continue;
    }
    const drops = dropsFromProcText(text, inode);
    if (drops !== undefined) {
      return drops;
    }
  }
  return undefined;
}
