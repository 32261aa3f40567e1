/**
 * `--socket-buffer BYTES`, shared by every command that moves datagrams: the receive and send
 * buffer each of its sockets asks for, and the line that says what the kernel granted.
 */
import { socketBufferBytesMax, socketBufferBytesMin } from '../limits.js';
import { InvalidArgumentError } from '../net/errors.js';
import { type SocketBufferGrant, setSocketBufferBytes, socketBufferReport } from '../net/udp.js';
import type { OptionValues } from './options.js';
import { optional } from './options.js';

const binaryMultipliers: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** Parses "8388608", "8192K", "8M" or "1G" (binary multiples) within the socket buffer limits. */
export function parseSocketBufferBytes(text: string, field = '--socket-buffer'): number {
  const match = /^(\d+)([kKmMgG]?)$/.exec(text.trim());
  const multiplier = binaryMultipliers[(match?.[2] ?? '').toLowerCase()];
  if (match === null || multiplier === undefined) {
    throw new InvalidArgumentError(field, `"${text}" is not a size in bytes (e.g. 4194304, 4096K, 8M)`);
  }
  const bytes = Number(match[1]) * multiplier;
  if (bytes < socketBufferBytesMin || bytes > socketBufferBytesMax) {
    throw new InvalidArgumentError(
      field,
      `${text} is out of range (${socketBufferBytesMin / 1024}K-${socketBufferBytesMax / 1024 ** 3}G)`,
    );
  }
  return bytes;
}

/** Applies --socket-buffer when given (or by its default); call before the command opens its sockets. */
export function applySocketBuffer(values: OptionValues): void {
  const text = optional(values, 'socket-buffer');
  if (text !== undefined) {
    setSocketBufferBytes(parseSocketBufferBytes(text));
  }
}

const mebibytes = (bytes: number) =>
  bytes >= 1024 ** 2 ? `${+(bytes / 1024 ** 2).toFixed(2)} MiB` : `${+(bytes / 1024).toFixed(1)} KiB`;

/**
 * One line on what the kernel granted, e.g. "socket buffers: receive asked 4 MiB, granted 8 MiB
 * (the kernel reports twice what it allows for data) on 2 sockets; ...", naming the sysctl that
 * capped a request.
 */
export function describeSocketBuffers(grants: readonly SocketBufferGrant[] = socketBufferReport()): string {
  const parts: string[] = [];
  for (const kind of ['receive', 'send'] as const) {
    const ofKind = grants.filter((grant) => grant.kind === kind);
    if (ofKind.length === 0) {
      continue;
    }
    const asked = Math.max(...ofKind.map((grant) => grant.askedBytes));
    const granted = Math.min(...ofKind.map((grant) => grant.grantedBytes));
    const capped = ofKind.find((grant) => grant.capped);
    const sysctl = kind === 'receive' ? 'net.core.rmem_max' : 'net.core.wmem_max';
    parts.push(
      `${kind} asked ${mebibytes(asked)}, granted ${mebibytes(granted)} on ${ofKind.length} socket${ofKind.length === 1 ? '' : 's'}${
        capped === undefined
          ? ''
          : ` (CAPPED by ${sysctl} = ${capped.capBytes}: raise it with sysctl -w ${sysctl}=${capped.askedBytes})`
      }`,
    );
  }
  return `socket buffers: ${parts.length === 0 ? 'none opened' : parts.join('; ')} (Linux reports twice the size it allows for data)`;
}
