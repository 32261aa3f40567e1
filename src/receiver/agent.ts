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
import { resolveInterface } from '../net/interfaces.js';
import { type Membership, readMemberships } from '../net/memberships.js';
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

/** One session the watching agent may repair: the application's S1 and its repaired S2. */
export interface AgentMapping {
  readonly s1: Endpoint;
  readonly s2: Endpoint;
}

/** Settings of an agent that follows the host's group memberships. */
export interface WatchingAgentSettings {
  readonly mappings: readonly AgentMapping[];
  readonly fromIface?: string | undefined;
  /** The interface applications join S1 on; any interface when absent. */
  readonly deliverIface?: string | undefined;
  readonly pollMs?: number | undefined;
  /** Called when delivery for a mapping starts or stops. */
  readonly onChange?: ((mapping: AgentMapping, active: boolean, iface: string) => void) | undefined;
  readonly readMemberships?: () => Membership[];
}

/** What a watching agent reports. */
export interface WatchingAgentStatus {
  role: 'agent';
  mode: 'watch';
  sessions: Array<{ s1: string; s2: string; active: boolean; delivery: AgentStatus | undefined }>;
}

/**
 * Starts an agent that watches the host's memberships (/proc/net/igmp, /proc/net/igmp6): when an
 * application joins a mapped S1, it starts delivering that session from S2; when the last member
 * leaves, it stops. The application needs no change and no restart.
 */
export async function startWatchingAgent(
  settings: WatchingAgentSettings,
): Promise<{ status(): WatchingAgentStatus; close(): Promise<void> } & AsyncDisposable> {
  const read = settings.readMemberships ?? readMemberships;
  const active = new Map<AgentMapping, { agent: Agent; iface: string }>();
  const ifaceName = (family: 4 | 6) =>
    settings.deliverIface === undefined ? undefined : resolveInterface(settings.deliverIface, family).name;
  let busy = false;
  const poll = async () => {
    if (busy) {
      return;
    }
    busy = true;
    try {
      const memberships = read();
      for (const mapping of settings.mappings) {
        const wanted = ifaceName(mapping.s1.family);
        const member = memberships.find(
          (m) => m.group === mapping.s1.address && (wanted === undefined || m.iface === wanted),
        );
        const current = active.get(mapping);
        if (member !== undefined && current === undefined) {
          const agent = await startAgent({
            from: mapping.s2,
            fromIface: settings.fromIface,
            deliver: mapping.s1,
            deliverIface: settings.deliverIface ?? member.iface,
          });
          active.set(mapping, { agent, iface: member.iface });
          settings.onChange?.(mapping, true, member.iface);
        } else if (member === undefined && current !== undefined) {
          active.delete(mapping);
          await current.agent.close();
          settings.onChange?.(mapping, false, current.iface);
        }
      }
    } finally {
      busy = false;
    }
  };
  await poll();
  const timer = setInterval(() => void poll(), settings.pollMs ?? 500);
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      clearInterval(timer);
      for (const { agent } of active.values()) {
        await agent.close();
      }
      active.clear();
    })();
    return closed;
  };
  return {
    status: () => ({
      role: 'agent',
      mode: 'watch',
      sessions: settings.mappings.map((mapping) => ({
        s1: `${mapping.s1.address}:${mapping.s1.port}`,
        s2: `${mapping.s2.address}:${mapping.s2.port}`,
        active: active.has(mapping),
        delivery: active.get(mapping)?.agent.status(),
      })),
    }),
    close,
    [Symbol.asyncDispose]: close,
  };
}
