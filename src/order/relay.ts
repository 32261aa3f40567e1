/**
 * The relay router driver (docs/ordering.md): when a link has no multicast router, the order server
 * forwards each active service itself, group to group — it joins the service's group on the inbound
 * interface (source-specific when the service names its source) and sends every datagram, unchanged,
 * to the service's relay group on the link's interface.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { receiveBufferBytesDefault, sendBufferBytesDefault } from '../limits.js';
import { resolveInterface } from '../net/interfaces.js';
import type { RouteWanted } from './book.js';
import type { ReconcileReport, RouterDriver } from './driver.js';
import { groupAddress } from './smcroute.js';

/** Settings of a relay link. */
export interface RelaySettings {
  /** Interface addresses: where the channels arrive, and the link. */
  readonly inbound: string;
  readonly outbound: string;
  readonly ttl?: number | undefined;
}

/** Counters of a relay. */
export interface RelayCounters {
  received: number;
  sent: number;
  sendErrors: number;
}

interface Relay {
  readonly key: string;
  readonly input: Socket;
  readonly output: Socket;
}

/** Binds a socket; a failure rejects, naming what was bound, instead of going unheard. */
function bindSocket(socket: Socket, port: number, address: string, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (error: Error) => {
      reject(new Error(`binding the ${what} ${address}:${port}: ${error.message}`));
    };
    socket.once('error', fail);
    socket.bind(port, address, () => {
      socket.off('error', fail);
      resolve();
    });
  });
}

const portOf = (group: string) => Number(group.slice(group.lastIndexOf(':') + 1));

/** Builds the relay of one link. */
export function createRelayDriver(settings: RelaySettings): RouterDriver & { counters: RelayCounters } {
  const relays = new Map<string, Relay>();
  const counters: RelayCounters = { received: 0, sent: 0, sendErrors: 0 };
  const keyOf = (route: RouteWanted) =>
    `${route.source ?? '*'},${route.group}>${route.relayTo ?? route.group}`;

  const open = async (route: RouteWanted): Promise<Relay> => {
    const group = route.group;
    const family = isIPv6(group) ? 'udp6' : 'udp4';
    const toGroup = route.relayTo === null ? group : groupAddress(route.relayTo);
    const toPort = route.relayTo === null ? route.port : portOf(route.relayTo);
    // Large buffers: a relay is one event loop shared with the order API, and a burst of datagrams
    // that arrives while it answers a request must wait in the kernel, not be dropped there.
    const input = createSocket({ type: family, reuseAddr: true, recvBufferSize: receiveBufferBytesDefault });
    const output = createSocket({ type: family, sendBufferSize: sendBufferBytesDefault });
    try {
      // On the group address, not the wildcard: a wildcard socket gets every group joined on the
      // host on this port, and would relay another channel's datagrams onto this one's group.
      await bindSocket(input, route.port, group, 'inbound group');
      // A bind that fails (an address not on this host) is an 'error' event, never the callback:
      // unheard, it would leave this reconcile, and the server's driver pass, waiting for good.
      await bindSocket(output, 0, settings.outbound, 'outbound address');
    } catch (error) {
      input.close();
      output.close();
      throw error;
    }
    try {
      // IPv6 takes the interface as "::%name": node reads only the scope of an IPv6 address, so a
      // bare address joined and sent on whichever interface the kernel chose for the group.
      const inbound = resolveInterface(settings.inbound, family === 'udp6' ? 6 : 4).socketInterface;
      const outbound = resolveInterface(settings.outbound, family === 'udp6' ? 6 : 4).socketInterface;
      if (route.source === null) {
        input.addMembership(group, inbound);
      } else {
        input.addSourceSpecificMembership(route.source, group, inbound);
      }
      output.setMulticastInterface(outbound);
      output.setMulticastTTL(settings.ttl ?? 16);
      output.setMulticastLoopback(false);
    } catch (error) {
      input.close();
      output.close();
      throw error;
    }
    input.on('error', () => undefined);
    output.on('error', () => {
      counters.sendErrors += 1;
    });
    input.on('message', (datagram, remote) => {
      if (route.source !== null && remote.address !== route.source) {
        return;
      }
      counters.received += 1;
      output.send(datagram, toPort, toGroup, (error) => {
        if (error === null) {
          counters.sent += 1;
        } else {
          counters.sendErrors += 1;
        }
      });
    });
    return { key: keyOf(route), input, output };
  };
  const shut = (relay: Relay) => {
    relay.input.close();
    relay.output.close();
  };

  return {
    counters,
    async reconcile(wanted) {
      const report: ReconcileReport = { added: [], removed: [], errors: [] };
      const desired = new Map(wanted.map((route) => [keyOf(route), route]));
      for (const [key, relay] of relays) {
        if (!desired.has(key)) {
          shut(relay);
          relays.delete(key);
          report.removed.push(key);
        }
      }
      for (const [key, route] of desired) {
        if (relays.has(key)) {
          continue;
        }
        try {
          relays.set(key, await open(route));
          report.added.push(key);
        } catch (error) {
          report.errors.push(`relay ${key}: ${(error as Error).message}`);
        }
      }
      return report;
    },
    async close() {
      for (const relay of relays.values()) {
        shut(relay);
      }
      relays.clear();
    },
  };
}
