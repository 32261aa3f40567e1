/**
 * The receiver agent (the translator on the subscriber's host): joins the repaired group S2 and
 * hands each DATA payload to the local application exactly as it would have come on S1 — to S1's
 * group and port, datagram for datagram — so an unmodified UDP application keeps reading S1.
 *
 * Delivery is local only: the datagram goes out with TTL / hop limit 0 and multicast loopback on,
 * so the kernel loops it back to the host's own members of S1 on that interface and puts nothing
 * on the wire. The raw, lossy S1 from the network is kept away from the application by a firewall
 * rule that drops S1 datagrams whose source is not this host (docs/architecture.md, "Agent").
 */
import type { Endpoint } from '../net/address.js';
import { openReceiverSocket, openSenderSocket, type ReceiverSocket, type SenderSocket } from '../net/udp.js';
import { decodeData, offsetType, PacketType } from '../protocol/packet.js';
import { sequenceDistance } from '../protocol/serial.js';

/** Settings of an agent. */
export interface AgentSettings {
  /** The repaired group S2. */
  readonly from: Endpoint;
  readonly fromIface?: string | undefined;
  /** S1's group and port, where the application listens. */
  readonly deliver: Endpoint;
  /** The interface the application joined S1 on. */
  readonly deliverIface?: string | undefined;
}

/** What the agent did. */
export interface AgentStatus {
  role: 'agent';
  from: string;
  deliver: string;
  sessionId: number | undefined;
  delivered: number;
  deliveredBytes: number;
  duplicates: number;
  gapsSeen: number;
  ignored: number;
  malformed: number;
}

/** A running agent. */
export interface Agent extends AsyncDisposable {
  status(): AgentStatus;
  close(): Promise<void>;
}

/** Starts an agent. */
export async function startAgent(settings: AgentSettings): Promise<Agent> {
  const counters = { delivered: 0, deliveredBytes: 0, duplicates: 0, gapsSeen: 0, ignored: 0, malformed: 0 };
  let sessionId: number | undefined;
  let lastSequence: number | undefined;
  const out: SenderSocket = await openSenderSocket({
    group: settings.deliver,
    iface: settings.deliverIface,
    ttl: 0,
    loopback: true,
  });
  const onDatagram = (datagram: Buffer) => {
    if (datagram.length <= offsetType || datagram[offsetType] !== PacketType.data) {
      counters.ignored++;
      return;
    }
    const decoded = decodeData(datagram);
    if (!decoded.ok) {
      counters.malformed++;
      return;
    }
    const packet = decoded.value;
    if (packet.sessionId !== sessionId) {
      sessionId = packet.sessionId;
      lastSequence = undefined;
    }
    if (lastSequence !== undefined) {
      const distance = sequenceDistance(lastSequence, packet.sequence);
      if (distance <= 0) {
        counters.duplicates++;
        return;
      }
      if (distance > 1) {
        counters.gapsSeen += distance - 1;
      }
    }
    lastSequence = packet.sequence;
    // The payload is a view into the datagram, which nobody reuses: sent as it is, no copy.
    out.send(packet.payload, packet.payload.length);
    counters.delivered++;
    counters.deliveredBytes += packet.payload.length;
  };
  const socket: ReceiverSocket = await openReceiverSocket(
    { group: settings.from, iface: settings.fromIface },
    onDatagram,
  );
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      await socket.close();
      await out.close();
    })();
    return closed;
  };
  return {
    status: () => ({
      role: 'agent',
      from: `${settings.from.address}:${settings.from.port}`,
      deliver: `${settings.deliver.address}:${settings.deliver.port}`,
      sessionId,
      ...counters,
    }),
    close,
    [Symbol.asyncDispose]: close,
  };
}
