/**
 * The receiver agent (the translator on the subscriber's host): joins the repaired group S2 and
 * hands each DATA payload to the local application exactly as it would have come on S1 — to S1's
 * group and port, datagram for datagram — so an unmodified UDP application keeps reading S1.
 *
 * Delivery is local only: the datagram goes out with TTL / hop limit 0 and multicast loopback on,
 * so the kernel loops it back to the host's own members of S1 on that interface and puts nothing
 * on the wire. The raw, lossy S1 from the network is kept away from the application by a firewall
 * rule that drops S1 datagrams whose source is not this host (docs/architecture.md, "Agent").
 *
 * When S2 is sealed (the repair controller's S2 always is; docs/protocol.md, "SEALED"), the agent
 * opens each envelope with the S2 key its grant carried and drops anything else on S2 — a plain
 * datagram there is not the repair server's. An envelope of an epoch it has no key for yet (the
 * controller rotated the key because someone left) is held, within bounds, while the agent asks
 * the controller again; the new grant's key opens what was held, in order, so nothing is lost.
 *
 * What S2 carries then goes through the source's protections as in `gatecast receive`: the signed
 * gate when the agent has the source key, and restricted sessions through the agent's token
 * (src/receiver/agent-restricted.ts): the application gets the plaintext the token's keys open,
 * or nothing of that session — never ciphertext.
 */

import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import { type S2Key, S2Opener } from '../crypto/s2-seal.js';
import { createSignedSessionGate, type SignedSessionStats } from '../crypto/signed-session.js';
import type { Token } from '../crypto/token.js';
import {
  agentKeyAskMsMin,
  agentKeyWaitBytesMax,
  agentKeyWaitPacketsMax,
  agentRefusalRetryMs,
  agentS2KeysMax,
} from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';
import { resolveInterface } from '../net/interfaces.js';
import { type Membership, readMemberships } from '../net/memberships.js';
import { openReceiverSocket, openSenderSocket, type ReceiverSocket, type SenderSocket } from '../net/udp.js';
import { decodeData, offsetType, PacketType } from '../protocol/packet.js';
import { sequenceDistance } from '../protocol/serial.js';
import {
  type AgentRestrictedEvent,
  type AgentRestrictedStatus,
  createAgentRestrictedFilter,
} from './agent-restricted.js';
import type { ControllerClient } from './controller-client.js';

export type { AgentRestrictedEvent } from './agent-restricted.js';

/**
 * What the agent decodes restricted and signed sessions with (`--token`, `--source-public`); the
 * same for every delivery of a watching agent. The caller owns the token and closes it.
 */
export interface AgentProtection {
  /** Restricted sessions are opened with the keys this token releases; without it none is delivered. */
  readonly token?: Token | undefined;
  /** Signed sessions: only what this source key vouches for is delivered. */
  readonly sourcePublicKey?: KeyObject | undefined;
  /** Told once per run that is not delivered: no token, or the token refused its keys. */
  readonly onRestricted?: ((event: AgentRestrictedEvent) => void) | undefined;
}

/** Settings of an agent. */
export interface AgentSettings {
  /** The repaired group S2. */
  readonly from: Endpoint;
  readonly fromIface?: string | undefined;
  /** S1's group and port, where the application listens. */
  readonly deliver: Endpoint;
  /** The interface the application joined S1 on. */
  readonly deliverIface?: string | undefined;
  /** S2 is sealed: open its envelopes with this key (later epochs come by addKey). */
  readonly s2Key?: S2Key | undefined;
  /** Told when an envelope of an epoch without a key arrives: ask the controller for it. */
  readonly onMissingKey?: ((epoch: number) => void) | undefined;
  readonly protection?: AgentProtection | undefined;
}

/** What the agent did. */
export interface AgentStatus extends AgentRestrictedStatus {
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
  /** True when S2 is sealed and opened with a grant's key. */
  sealed: boolean;
  /** The newest S2 key epoch held. */
  s2KeyEpoch: number | undefined;
  /** Envelopes opened. */
  opened: number;
  /** Envelopes whose tag did not verify (forged, altered, or under a key not ours): dropped. */
  badTag: number;
  /** Plain datagrams on a sealed S2: dropped (only the repair server's envelopes are believed). */
  unsealed: number;
  /** Envelopes held now for a key epoch not yet known. */
  keyWaiting: number;
  /** Envelopes dropped from that hold when it was full. */
  keyWaitDropped: number;
  /** With --source-public: what the source key vouched for and what it refused. */
  signed: Readonly<SignedSessionStats> | undefined;
}

/** A running agent. */
export interface Agent extends AsyncDisposable {
  status(): AgentStatus;
  /** Adds an S2 key epoch (from a renewed grant) and opens what was held for it. */
  addKey(key: S2Key): void;
  close(): Promise<void>;
}

/** Starts an agent. */
export async function startAgent(settings: AgentSettings): Promise<Agent> {
  const counters = {
    delivered: 0,
    deliveredBytes: 0,
    duplicates: 0,
    gapsSeen: 0,
    ignored: 0,
    malformed: 0,
    opened: 0,
    badTag: 0,
    unsealed: 0,
    keyWaitDropped: 0,
  };
  const opener = settings.s2Key === undefined ? undefined : new S2Opener(agentS2KeysMax);
  let s2KeyEpoch = settings.s2Key?.epoch;
  if (settings.s2Key !== undefined) {
    opener?.setKey(settings.s2Key);
  }
  /** When each missing epoch was last told of (bounded: forged envelopes may name any epoch). */
  const told = new Map<number, number>();
  const toldEpochsMax = 64;
  /** Envelopes waiting for their epoch's key, oldest first, and their bytes. */
  let waiting: Buffer[] = [];
  let waitingBytes = 0;
  let sessionId: number | undefined;
  let lastSequence: number | undefined;
  const protection = settings.protection;
  // Signed sessions first (authentic or nothing), then restricted ones (opened or nothing).
  const gate =
    protection?.sourcePublicKey === undefined
      ? undefined
      : createSignedSessionGate(protection.sourcePublicKey);
  const restricted = createAgentRestrictedFilter(protection?.token, protection?.onRestricted, (datagram) =>
    deliverDatagram(datagram),
  );
  /** A datagram of the run: S2's as it came, or what an S2 envelope held. */
  const onRunDatagram = (datagram: Buffer) => {
    if (gate === undefined) {
      restricted.filter(datagram);
    } else {
      gate.filter(datagram, restricted.filter);
    }
  };
  const out: SenderSocket = await openSenderSocket({
    group: settings.deliver,
    iface: settings.deliverIface,
    ttl: 0,
    loopback: true,
  });
  /** Holds an envelope until its epoch's key comes; the oldest go when the hold is full. */
  const hold = (envelope: Buffer, epoch: number, tell: boolean) => {
    waiting.push(envelope);
    waitingBytes += envelope.length;
    while (waiting.length > agentKeyWaitPacketsMax || waitingBytes > agentKeyWaitBytesMax) {
      const oldest = waiting.shift();
      waitingBytes -= oldest?.length ?? 0;
      counters.keyWaitDropped++;
    }
    // Told once per epoch, again only after agentKeyAskMsMin (a lost answer is asked for again).
    const now = Date.now();
    if (tell && now - (told.get(epoch) ?? Number.NEGATIVE_INFINITY) >= agentKeyAskMsMin) {
      told.delete(epoch);
      told.set(epoch, now);
      if (told.size > toldEpochsMax) {
        told.delete(told.keys().next().value ?? epoch);
      }
      settings.onMissingKey?.(epoch);
    }
  };
  /** Opens an envelope and delivers what it carries; holds it when its key is not here yet. */
  const openEnvelope = (envelope: Buffer, tell: boolean) => {
    const inner = opener?.open(envelope) ?? 'no-key';
    if (inner === 'malformed') {
      counters.malformed++;
    } else if (inner === 'bad-tag') {
      counters.badTag++;
    } else if (inner === 'no-key') {
      hold(envelope, S2Opener.epochOf(envelope) ?? 0, tell);
    } else {
      counters.opened++;
      onRunDatagram(inner);
    }
  };
  const onDatagram = (datagram: Buffer) => {
    if (opener === undefined) {
      onRunDatagram(datagram);
    } else if (datagram.length > offsetType && datagram[offsetType] === PacketType.sealed) {
      openEnvelope(datagram, true);
    } else {
      counters.unsealed++;
    }
  };
  const addKey = (key: S2Key) => {
    assert.ok(opener !== undefined, 'S2 is plain: an agent started without an S2 key takes no other');
    if (opener.hasKey(key.epoch)) {
      return;
    }
    opener.setKey(key);
    s2KeyEpoch = key.epoch;
    const held = waiting;
    waiting = [];
    waitingBytes = 0;
    for (const envelope of held) {
      openEnvelope(envelope, false);
    }
  };
  const deliverDatagram = (datagram: Buffer) => {
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
      sealed: opener !== undefined,
      s2KeyEpoch,
      keyWaiting: waiting.length,
      ...restricted.status(),
      signed: gate?.stats,
    }),
    addKey,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** One session the watching agent may repair: the application's S1 and its repaired S2. */
export interface AgentMapping {
  readonly s1: Endpoint;
  /** Fixed by configuration; when absent, asked of the repair controller when S1 is joined. */
  readonly s2?: Endpoint | undefined;
  /** With a configured S2: the key it is sealed under (`--s2-key-file`); plain when absent. */
  readonly s2Key?: S2Key | undefined;
  /**
   * Where the application listens when it does not join S1 itself (a local group and port kept
   * apart from the network's S1): the agent follows this group's memberships and delivers to it.
   * Absent: S1.
   */
  readonly deliver?: Endpoint | undefined;
}

/** Settings of an agent that follows the host's group memberships. */
export interface WatchingAgentSettings {
  readonly mappings: readonly AgentMapping[];
  readonly fromIface?: string | undefined;
  /** The interface applications join S1 on; any interface when absent. */
  readonly deliverIface?: string | undefined;
  readonly pollMs?: number | undefined;
  /** Flow A: the repair controller that grants S2 for mappings without one. */
  readonly controller?: ControllerClient | undefined;
  /** After a refusal, ask again no sooner than this (a leave and re-join asks at once). */
  readonly refusalRetryMs?: number | undefined;
  /** Called when delivery for a mapping starts or stops. */
  readonly onChange?:
    | ((mapping: AgentMapping, active: boolean, iface: string, s2: Endpoint) => void)
    | undefined;
  /** Called when the controller refuses (the application keeps its plain S1). */
  readonly onRefused?: ((mapping: AgentMapping, reason: string) => void) | undefined;
  /** Told of a poll that failed (a socket that would not open); the next poll tries again. */
  readonly onError?: ((error: Error) => void) | undefined;
  readonly readMemberships?: () => Membership[];
  /** Restricted and signed sessions, for every delivery. */
  readonly protection?: AgentProtection | undefined;
}

/** What a watching agent reports. */
export interface WatchingAgentStatus {
  role: 'agent';
  mode: 'watch';
  sessions: Array<{
    s1: string;
    s2: string | undefined;
    active: boolean;
    refused: string | undefined;
    delivery: AgentStatus | undefined;
  }>;
}

interface Delivery {
  agent: Agent;
  iface: string;
  s2: Endpoint;
  /** When to renew the controller's lease; undefined for a configured S2. */
  renewAt: number | undefined;
  /** When the agent last asked early for a missing S2 key epoch. */
  keyAskedAt: number;
}

/**
 * Starts an agent that watches the host's memberships (/proc/net/igmp, /proc/net/igmp6): when an
 * application joins a mapped S1, it starts delivering that session from S2 (asking the repair
 * controller for S2 first when none is configured); when the last member leaves, it stops and
 * releases the grant. The application needs no change and no restart.
 */
export async function startWatchingAgent(
  settings: WatchingAgentSettings,
): Promise<{ status(): WatchingAgentStatus; close(): Promise<void> } & AsyncDisposable> {
  const read = settings.readMemberships ?? readMemberships;
  const active = new Map<AgentMapping, Delivery>();
  const refused = new Map<AgentMapping, { until: number; reason: string }>();
  const retryMs = settings.refusalRetryMs ?? agentRefusalRetryMs;
  const ifaceName = (family: 4 | 6) =>
    settings.deliverIface === undefined ? undefined : resolveInterface(settings.deliverIface, family).name;

  const deliver = async (
    mapping: AgentMapping,
    s2: Endpoint,
    iface: string,
    renewAt: number | undefined,
    s2Key?: S2Key | undefined,
  ) => {
    const agent = await startAgent({
      from: s2,
      fromIface: settings.fromIface,
      deliver: mapping.deliver ?? mapping.s1,
      deliverIface: settings.deliverIface ?? iface,
      s2Key,
      onMissingKey: () => askKey(mapping),
      protection: settings.protection,
    });
    if (closing) {
      // close() came while the sockets opened: this delivery never starts, its grant is given back.
      await agent.close();
      if (mapping.s2 === undefined) {
        await settings.controller?.release(mapping.s1);
      }
      return;
    }
    active.set(mapping, { agent, iface, s2, renewAt, keyAskedAt: 0 });
    settings.onChange?.(mapping, true, iface, s2);
  };
  const stopDelivery = async (mapping: AgentMapping, current: Delivery) => {
    active.delete(mapping);
    await current.agent.close();
    settings.onChange?.(mapping, false, current.iface, current.s2);
  };
  /**
   * An envelope of an S2 key epoch without a key came: renew the grant now (at the next poll,
   * which comes at once when none is running), at most every agentKeyAskMsMin.
   */
  const askKey = (mapping: AgentMapping) => {
    const current = active.get(mapping);
    const now = Date.now();
    if (current?.renewAt === undefined || now - current.keyAskedAt < agentKeyAskMsMin) {
      return;
    }
    current.keyAskedAt = now;
    current.renewAt = 0;
    setImmediate(() => {
      poll().catch((error: Error) => settings.onError?.(error));
    });
  };
  const refuse = (mapping: AgentMapping, reason: string) => {
    refused.set(mapping, { until: Date.now() + retryMs, reason });
    settings.onRefused?.(mapping, reason);
  };

  /** Set by close(): a poll stops at its next step and starts nothing more. */
  let closing = false;
  /** Aborts a controller request in flight when the agent closes. */
  const closeController = new AbortController();
  /** The poll running now, which close() waits for (it may be adding a delivery). */
  let polling: Promise<void> | undefined;
  const poll = () => {
    if (closing || polling !== undefined) {
      return Promise.resolve();
    }
    polling = pollOnce().finally(() => {
      polling = undefined;
    });
    return polling;
  };
  /**
   * Asks the controller for S1's S2; undefined when the agent closed meanwhile (what it may have
   * granted is released: nothing would deliver it).
   */
  const resolve = async (mapping: AgentMapping, controller: ControllerClient) => {
    const resolution = await controller.resolve(mapping.s1, undefined, { signal: closeController.signal });
    if (closing) {
      await controller.release(mapping.s1);
      return undefined;
    }
    return resolution;
  };
  const pollOnce = async () => {
    const memberships = read();
    for (const mapping of settings.mappings) {
      if (closing) {
        return; // close() stops what is in `active`
      }
      const application = mapping.deliver ?? mapping.s1;
      const wanted = ifaceName(application.family);
      const member = memberships.find(
        (m) => m.group === application.address && (wanted === undefined || m.iface === wanted),
      );
      const current = active.get(mapping);
      const now = Date.now();
      if (member === undefined) {
        refused.delete(mapping); // a later join asks again at once
        if (current !== undefined) {
          await stopDelivery(mapping, current);
          if (mapping.s2 === undefined) {
            await settings.controller?.release(mapping.s1);
          }
        }
        continue;
      }
      if (current === undefined) {
        if (mapping.s2 !== undefined) {
          await deliver(mapping, mapping.s2, member.iface, undefined, mapping.s2Key);
          continue;
        }
        const refusal = refused.get(mapping);
        if (settings.controller === undefined || (refusal !== undefined && now < refusal.until)) {
          continue;
        }
        const resolution = await resolve(mapping, settings.controller);
        if (resolution === undefined) {
          return;
        }
        if (!resolution.granted) {
          refuse(mapping, resolution.reason);
          continue;
        }
        refused.delete(mapping);
        await deliver(mapping, resolution.s2, member.iface, now + resolution.leaseMs / 3, resolution.key);
        continue;
      }
      if (current.renewAt !== undefined && now >= current.renewAt && settings.controller !== undefined) {
        const resolution = await settings.controller.resolve(mapping.s1, undefined, {
          signal: closeController.signal,
        });
        if (closing) {
          return; // close() stops this delivery and releases its grant
        }
        if (!resolution.granted) {
          await stopDelivery(mapping, current);
          refuse(mapping, resolution.reason);
        } else if (
          formatEndpoint(resolution.s2) !== formatEndpoint(current.s2) ||
          current.agent.status().sealed !== (resolution.key !== undefined)
        ) {
          await stopDelivery(mapping, current);
          await deliver(mapping, resolution.s2, member.iface, now + resolution.leaseMs / 3, resolution.key);
        } else {
          if (resolution.key !== undefined) {
            current.agent.addKey(resolution.key); // the controller rotated S2's key
          }
          current.renewAt = now + resolution.leaseMs / 3;
        }
      }
    }
  };
  let timer: NodeJS.Timeout | undefined;
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      closing = true;
      clearInterval(timer);
      closeController.abort();
      // The poll in flight may be opening a delivery: wait for it, then close all there is.
      await polling?.catch(() => undefined);
      for (const [mapping, { agent }] of active) {
        await agent.close();
        if (mapping.s2 === undefined) {
          await settings.controller?.release(mapping.s1);
        }
      }
      active.clear();
    })();
    return closed;
  };
  try {
    await poll();
  } catch (error) {
    await close(); // what the first poll started before it failed
    throw error;
  }
  // A failed poll is reported, never an unhandled rejection that would end the agent.
  timer = setInterval(() => {
    poll().catch((error: Error) => settings.onError?.(error));
  }, settings.pollMs ?? 500);
  return {
    status: () => ({
      role: 'agent',
      mode: 'watch',
      sessions: settings.mappings.map((mapping) => {
        const current = active.get(mapping);
        const s2 = current?.s2 ?? mapping.s2;
        return {
          s1: formatEndpoint(mapping.s1),
          s2: s2 === undefined ? undefined : formatEndpoint(s2),
          active: current !== undefined,
          refused: refused.get(mapping)?.reason,
          delivery: current?.agent.status(),
        };
      }),
    }),
    close,
    [Symbol.asyncDispose]: close,
  };
}
