/** Helpers for tests that multicast over loopback (no root needed). */
import type { SignedSessionGate } from '../../src/crypto/signed-session.js';
import type { Endpoint } from '../../src/net/address.js';
import { createReceiver, type PayloadSink, type ReceiveSummary } from '../../src/receiver/receiver.js';

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

/** A receiver on loopback as a test holds it: what it wrote, when it joined, and how it ended. */
export interface LoopbackReceiver {
  sink: ReturnType<typeof memorySink>;
  /** Settles once the receiver has joined its group. */
  ready: Promise<void>;
  done: Promise<ReceiveSummary>;
}

/** Runs a receiver of `group` on loopback into a memory sink (through `signed`'s gate, if given). */
export function loopbackReceiver(
  group: Endpoint,
  options: { timeoutMs: number; signed?: SignedSessionGate | undefined },
): LoopbackReceiver {
  const sink = memorySink();
  const receiver = createReceiver(
    { group, iface: loopbackIface, timeoutMs: options.timeoutMs },
    { sink, signed: options.signed },
  );
  let joined: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    joined = resolve;
  });
  const done = receiver.run({ onJoined: () => joined() });
  return { sink, ready, done };
}
