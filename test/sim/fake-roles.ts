/**
 * Two tiny roles that speak the data plane over a Runtime: a source that sends a payload as DATA
 * with DESCRIPTOR, HEARTBEAT and END, and a receiver that locks on the first DESCRIPTOR's run and
 * writes its DATA in order. They test the simulator itself (clock, network, adversary, replay)
 * independently of the real roles.
 */
import { createHash } from 'node:crypto';
import type { Endpoint } from '../../src/net/address.js';
import type { Runtime, Timer } from '../../src/net/runtime.js';
import {
  decodePacket,
  encodeData,
  encodeDescriptor,
  encodeProgress,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import { sequenceAdd, sequenceDistance } from '../../src/protocol/serial.js';
import { runKey } from './adversary.js';
import type { RoleKit } from './scenario.js';

/** What the fake source sends. */
export interface FakeSourceSettings {
  readonly group: Endpoint;
  readonly sessionId: number;
  readonly payload: Buffer;
  readonly packetBytes: number;
  readonly firstSequence: number;
  /** Gap between DATA packets. */
  readonly packetIntervalMs: number;
}

/** A running fake source. */
export interface FakeSource {
  readonly incarnation: number;
  /** Resolves after the last END. */
  readonly done: Promise<void>;
}

/** Starts a fake source. */
export async function startFakeSource(settings: FakeSourceSettings, runtime: Runtime): Promise<FakeSource> {
  const { clock } = runtime;
  const incarnation = runtime.randomId();
  const socket = await runtime.transport.openSender({ group: settings.group });
  const packetCount = Math.ceil(settings.payload.length / settings.packetBytes);
  let sent = 0;
  let bytes = 0;
  const next = () => sequenceAdd(settings.firstSequence, sent);
  const fields = () => ({
    sessionId: settings.sessionId,
    incarnation,
    sequence: next(),
    timestampUs: clock.wallUs(),
  });
  const send = (datagram: Buffer) => socket.send(datagram, datagram.length);
  const descriptor = () =>
    encodeDescriptor(fields(), {
      firstSequence: settings.firstSequence,
      packetPayloadBytes: settings.packetBytes,
      kind: SessionKind.file,
      totalBytes: settings.payload.length,
      rateBitsPerSecond: 0,
      sha256: createHash('sha256').update(settings.payload).digest(),
      name: 'fake',
    });
  const timers: Timer[] = [];
  // Like the real source: three DESCRIPTORs during the 200 ms start delay, then one a second.
  send(descriptor());
  clock.setTimeout(() => send(descriptor()), 66);
  clock.setTimeout(() => send(descriptor()), 133);
  timers.push(clock.setInterval(() => send(descriptor()), 1000));
  timers.push(
    clock.setInterval(
      () => send(encodeProgress(PacketType.heartbeat, fields(), { packetCount: sent, byteCount: bytes })),
      250,
    ),
  );
  const done = new Promise<void>((resolve) => {
    const sendEnd = (left: number) => {
      send(encodeProgress(PacketType.end, fields(), { packetCount: sent, byteCount: bytes }));
      if (left > 1) {
        clock.setTimeout(() => sendEnd(left - 1), 50);
      } else {
        resolve();
      }
    };
    const tick = () => {
      if (sent >= packetCount) {
        for (const timer of timers) {
          timer.cancel();
        }
        sendEnd(4);
        return;
      }
      const payload = settings.payload.subarray(
        sent * settings.packetBytes,
        (sent + 1) * settings.packetBytes,
      );
      send(encodeData(fields(), payload));
      sent++;
      bytes += payload.length;
      clock.setTimeout(tick, settings.packetIntervalMs);
    };
    clock.setTimeout(tick, 200);
  });
  return { incarnation, done };
}

/** What a fake receiver ends with. */
export interface FakeReceipt {
  outcome: 'complete' | 'incomplete' | 'timeout';
  run: { sessionId: number; incarnation: number } | undefined;
}

/** Receives one run from a group into write(); finishes at END (or after timeoutMs of silence). */
export async function runFakeReceiver(
  group: Endpoint,
  runtime: Runtime,
  write: (payload: Buffer) => void,
  timeoutMs = 5000,
): Promise<FakeReceipt> {
  const { clock } = runtime;
  const held = new Map<number, Buffer>();
  let run: FakeReceipt['run'];
  let nextSequence: number | undefined;
  let endSequence: number | undefined;
  let lastAtMs = clock.nowMs();
  let finish: (outcome: FakeReceipt['outcome']) => void = () => undefined;
  const outcome = new Promise<FakeReceipt['outcome']>((resolve) => {
    finish = resolve;
  });
  const drain = () => {
    while (nextSequence !== undefined) {
      const payload = held.get(nextSequence);
      if (payload === undefined) {
        break;
      }
      held.delete(nextSequence);
      write(payload);
      nextSequence = sequenceAdd(nextSequence, 1);
    }
    if (endSequence !== undefined && nextSequence === endSequence) {
      finish('complete');
    }
  };
  const socket = await runtime.transport.openReceiver({ group }, (datagram) => {
    const decoded = decodePacket(datagram);
    if (!decoded.ok) {
      return;
    }
    const packet = decoded.value;
    if (run === undefined && packet.type === PacketType.descriptor) {
      run = { sessionId: packet.sessionId, incarnation: packet.incarnation };
      nextSequence = packet.firstSequence;
    }
    if (run === undefined || packet.sessionId !== run.sessionId || packet.incarnation !== run.incarnation) {
      return;
    }
    lastAtMs = clock.nowMs();
    if (packet.type === PacketType.data && nextSequence !== undefined) {
      const distance = sequenceDistance(nextSequence, packet.sequence);
      if (distance >= 0 && distance < 1024) {
        held.set(packet.sequence, packet.payload);
      }
    } else if (packet.type === PacketType.end && endSequence === undefined) {
      endSequence = packet.sequence;
      clock.setTimeout(() => finish('incomplete'), 300);
    }
    drain();
  });
  const watchdog = clock.setInterval(() => {
    if (clock.nowMs() - lastAtMs > timeoutMs) {
      finish('timeout');
    }
  }, 250);
  const result = await outcome;
  watchdog.cancel();
  await socket.close();
  return { outcome: result, run };
}

/** The toy roles as a RoleKit: a source and receivers, no servers. */
export const fakeKit: RoleKit = {
  name: 'fake',
  async runSource(spec, runtime) {
    const source = await startFakeSource(
      {
        group: spec.group,
        sessionId: spec.sessionId,
        payload: spec.payload,
        packetBytes: spec.packetBytes,
        firstSequence: spec.firstSequence,
        packetIntervalMs: ((spec.packetBytes + 32) * 8 * 1000) / spec.rateBitsPerSecond,
      },
      runtime,
    );
    await source.done;
  },
  runReceiver(group, timeoutMs, write, runtime) {
    return {
      result: runFakeReceiver(group, runtime, write, timeoutMs).then((receipt) => ({
        outcome: receipt.outcome,
        run: receipt.run === undefined ? undefined : runKey(receipt.run.sessionId, receipt.run.incarnation),
      })),
    };
  },
};
