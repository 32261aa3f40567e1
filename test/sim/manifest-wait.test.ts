/**
 * How long a signed source's DATA waits for its manifest, in virtual time (docs/protocol.md,
 * "SIGNATURE"): at most protectedControlIntervalMs plus manifestFlushWaitMs at a control tick, for
 * a slow stream too, and when the source's wall clock steps back or forward meanwhile (a control
 * tick measured the wait on the wall clock: a step back held a slow stream's DATA until the
 * HEARTBEAT, 250 ms). A verifying receiver writes nothing that waits for its manifest longer.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generateSigningKey } from '../../src/crypto/authority.js';
import { createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { manifestFlushWaitMs, protectedControlIntervalMs } from '../../src/limits.js';
import type { Runtime } from '../../src/net/runtime.js';
import {
  headerBytes,
  offsetSequence,
  offsetType,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import { SignatureKind } from '../../src/protocol/restricted.js';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { inputEnded, inputNotReady, type PayloadInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { cleanLink, SimNetwork } from './network.js';
import { SimRandom } from './random.js';
import { Scheduler } from './virtual-clock.js';

const group = { address: '239.1.2.10', port: 5010, family: 4 } as const;

/** One 64-byte quote every intervalMs of the runtime's clock, count in all. */
function slowInput(runtime: Runtime, intervalMs: number, count: number): PayloadInput {
  const startMs = runtime.clock.nowMs();
  let sent = 0;
  return {
    kind: SessionKind.ticker,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    read(out) {
      if (sent >= count) {
        return inputEnded;
      }
      if (runtime.clock.nowMs() < startMs + sent * intervalMs) {
        return inputNotReady;
      }
      sent++;
      return out.write(`${sent} quote\n`.padEnd(64, '.'), 0, 'latin1');
    },
    waitReadable: () =>
      new Promise((resolve) => {
        runtime.clock.setTimeout(resolve, Math.max(0, startMs + sent * intervalMs - runtime.clock.nowMs()));
      }),
    close: async () => undefined,
  };
}

describe('a signed slow stream: each DATA waits for its manifest at most a control interval and the flush wait (virtual time)', () => {
  it(`within ${protectedControlIntervalMs + manifestFlushWaitMs} ms, while the source's wall clock steps back an hour and then forward two`, async () => {
    const scheduler = new Scheduler();
    const network = new SimNetwork(scheduler, 43);
    network.setDefaultFaults({ ...cleanLink });
    const sourceHost = network.addHost('source', '10.9.1.1');
    const sourceRuntime = sourceHost.runtime(SimRandom.fork(43, 'source'));
    const key = generateSigningKey();
    const sentAtMs = new Map<number, number>();
    const waitsMs = new Map<number, number>();
    network.onSend((record) => {
      const datagram = record.datagram;
      if (datagram.length <= headerBytes) {
        return;
      }
      const sequence = datagram.readUInt32BE(offsetSequence);
      if (datagram[offsetType] === PacketType.data) {
        sentAtMs.set(sequence, record.atMs);
      } else if (
        datagram[offsetType] === PacketType.signature &&
        datagram[headerBytes] === SignatureKind.manifest
      ) {
        const count = datagram[headerBytes + 1] ?? 0;
        for (let index = 0; index < count; index++) {
          const covered = sequenceAdd(sequence, index);
          const sent = sentAtMs.get(covered);
          if (sent !== undefined && !waitsMs.has(covered)) {
            waitsMs.set(covered, record.atMs - sent);
          }
        }
      }
    });
    const source = createSource(
      {
        group,
        rateBitsPerSecond: 0,
        packetPayloadBytes: 64,
        sessionName: 'quotes',
        sessionId: 10,
        firstSequence: 1,
      },
      {
        // A quote every 37 ms: at every phase of the 50 ms control ticks.
        input: slowInput(sourceRuntime, 37, 120),
        runtime: sourceRuntime,
        protection: (run) =>
          createSignedSenderProtection(
            { sourcePrivateKey: key.privateKey, sourcePublicKey: key.publicKey, manifestPackets: 64 },
            run,
          ),
      },
    );
    const sending = source.run();
    // Each step comes just after a DATA went out, while it waits for its manifest.
    await scheduler.run(scheduler.nowMs + 5_000, () => sentAtMs.size >= 40);
    sourceHost.clock.stepWall(-3_600_000);
    await scheduler.run(scheduler.nowMs + 5_000, () => sentAtMs.size >= 80);
    sourceHost.clock.stepWall(7_200_000);
    await scheduler.run(scheduler.nowMs + 10_000);
    await sending;
    assert.equal(sentAtMs.size, 120);
    assert.equal(waitsMs.size, 120, 'every DATA has its manifest');
    const longest = Math.max(...waitsMs.values());
    assert.ok(
      longest <= protectedControlIntervalMs + manifestFlushWaitMs,
      `the longest wait ${longest} ms (sequence ${[...waitsMs].find(([, wait]) => wait === longest)?.[0]})`,
    );
  });
});
