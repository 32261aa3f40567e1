/** Helpers for tests that multicast over loopback (no root needed). */
import type { PayloadSink } from '../../src/receiver/receiver.js';

/** Interface for loopback multicast. */
export const loopbackIface = '127.0.0.1';

let nextPort = 40_000 + (process.pid % 5_000) * 4;

/** A port no other test in this run uses. */
export function freshPort(): number {
  nextPort += 2;
  return nextPort;
}

/** A sink that keeps every payload. */
export function memorySink(): PayloadSink & { chunks: Buffer[]; bytes(): Buffer } {
  const chunks: Buffer[] = [];
  return {
    chunks,
    write(payload) {
      chunks.push(Buffer.from(payload));
    },
    bytes: () => Buffer.concat(chunks),
    async close() {},
  };
}
