/**
 * Hand-made data-plane packets for integrity tests: a run (session id and incarnation) and the
 * DESCRIPTOR, DATA, HEARTBEAT and END an honest source — or a forger — would send for it.
 */
import { createHash } from 'node:crypto';
import type { Endpoint } from '../../src/net/address.js';
import { openSenderSocket } from '../../src/net/udp.js';
import {
  encodeData,
  encodeDescriptor,
  encodeProgress,
  PacketType,
  SessionKind,
  type SessionKindCode,
} from '../../src/protocol/packet.js';
import { loopbackIface } from './loopback.js';

/** A session run. */
export interface Run {
  readonly sessionId: number;
  readonly incarnation: number;
}

const fields = (run: Run, sequence: number) => ({ ...run, sequence, timestampUs: Date.now() * 1000 });

/** DATA of a run. */
export function data(run: Run, sequence: number, payload: Buffer): Buffer {
  return encodeData(fields(run, sequence), payload);
}

/** A DESCRIPTOR of a run: a file (with its SHA-256) or a live stream. */
export function descriptor(
  run: Run,
  options: { firstSequence: number; next: number; kind?: SessionKindCode; payload?: Buffer },
): Buffer {
  const kind = options.kind ?? SessionKind.file;
  const file = kind === SessionKind.file && options.payload !== undefined;
  return encodeDescriptor(fields(run, options.next), {
    firstSequence: options.firstSequence,
    packetPayloadBytes: 1400,
    kind,
    totalBytes: file ? options.payload?.length : undefined,
    rateBitsPerSecond: 0,
    sha256: file
      ? createHash('sha256')
          .update(options.payload ?? Buffer.alloc(0))
          .digest()
      : undefined,
    name: 'crafted',
  });
}

/** A HEARTBEAT claiming `next` as the next sequence. */
export function heartbeat(run: Run, next: number): Buffer {
  return encodeProgress(PacketType.heartbeat, fields(run, next), { packetCount: 0, byteCount: 0 });
}

/** An END at `next`. */
export function end(run: Run, next: number, packetCount: number): Buffer {
  return encodeProgress(PacketType.end, fields(run, next), { packetCount, byteCount: 0 });
}

/** A socket that sends crafted datagrams to a group over loopback. */
export async function crafter(
  group: Endpoint,
): Promise<{ send(...datagrams: Buffer[]): void; close(): Promise<void> }> {
  const socket = await openSenderSocket({ group, iface: loopbackIface });
  return {
    send(...datagrams) {
      for (const datagram of datagrams) {
        socket.send(datagram, datagram.length);
      }
    },
    close: () => socket.close(),
  };
}
