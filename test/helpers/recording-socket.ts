/** A fake sender socket for source tests: it keeps what it was handed and completes each send on the next turn. */
import type { SenderSocket } from '../../src/net/udp.js';

/**
 * A socket that keeps a copy of every datagram handed to it (`wire`, in order) and completes each
 * send on the next turn; `onSend` sees each copy as it is handed over.
 */
export function recordingSocket(onSend?: (datagram: Buffer) => void): {
  socket: SenderSocket;
  wire: Buffer[];
} {
  const wire: Buffer[] = [];
  const socket: SenderSocket = {
    iface: undefined,
    send(buffer, length, done) {
      const datagram = Buffer.from(buffer.subarray(0, length));
      wire.push(datagram);
      onSend?.(datagram);
      setImmediate(() => done?.(null));
    },
    async close() {},
    async [Symbol.asyncDispose]() {},
  };
  return { socket, wire };
}
