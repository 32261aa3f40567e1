/**
 * Join to first decoded packet, in virtual time (issue 12: a plain ticker's join p99 was 974 ms,
 * the DESCRIPTOR being repeated once a second): the real source and receiver on the simulator's
 * clean network, a receiver started at many points of a live plain stream, each timed from its
 * join to its first written packet. What a joiner waits for is the source's to fix, not the
 * machine's load: in virtual time the wait is the protocol's alone.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generateSigningKey } from '../../src/crypto/authority.js';
import { createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { descriptorIntervalMs, manifestFlushWaitMs, protectedControlIntervalMs } from '../../src/limits.js';
import type { Runtime } from '../../src/net/runtime.js';
import { SessionKind } from '../../src/protocol/packet.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { inputEnded, inputNotReady, type PayloadInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { cleanLink, SimNetwork } from './network.js';
import { SimRandom } from './random.js';
import { Scheduler } from './virtual-clock.js';

const group = { address: '239.1.2.9', port: 5009, family: 4 } as const;

/** A live quote stream on the runtime's clock: one 64-byte payload every intervalMs, count in all. */
function liveInput(runtime: Runtime, intervalMs: number, count: number): PayloadInput {
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

/**
 * Starts a live quote stream (200 a second for 12 s of virtual time), then 30 receivers one after
 * another, each at another phase of the source's repeats; returns each one's wait from its join to
 * its first written quote. `signed`: the source signs (manifests, control signatures) and each
 * receiver has a gate with the source's key, as `receive --source-public` does.
 */
async function joinWaits(signed: boolean): Promise<number[]> {
  const scheduler = new Scheduler();
  const network = new SimNetwork(scheduler, 41);
  network.setDefaultFaults({ ...cleanLink });
  const sourceHost = network.addHost('source', '10.9.0.1');
  const receiverHost = network.addHost('receiver', '10.9.0.2');
  const sourceRuntime = sourceHost.runtime(SimRandom.fork(41, 'source'));
  const sourceKey = generateSigningKey();
  const source = createSource(
    {
      group,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 64,
      sessionName: 'quotes',
      sessionId: 9,
      firstSequence: 1,
    },
    {
      input: liveInput(sourceRuntime, 5, 2400),
      runtime: sourceRuntime,
      ...(signed
        ? {
            protection: (run: { sessionId: number; incarnation: number }) =>
              createSignedSenderProtection(
                {
                  sourcePrivateKey: sourceKey.privateKey,
                  sourcePublicKey: sourceKey.publicKey,
                  manifestPackets: 64,
                },
                run,
              ),
          }
        : {}),
    },
  );
  const sending = source.run();
  await scheduler.run(1500);
  const waits: number[] = [];
  // Joins spread over seconds of the stream, each at another phase of the source's repeats: the
  // pause before a join (after the last one wrote) steps by 17 ms modulo 53.
  for (let index = 0; index < 30; index++) {
    await scheduler.run(scheduler.nowMs + 20 + ((index * 17) % 53));
    const stop = new AbortController();
    let joinedAtMs: number | undefined;
    let firstAtMs: number | undefined;
    const receiver = createReceiver(
      { group, timeoutMs: 5_000 },
      {
        sink: {
          write: () => {
            firstAtMs ??= scheduler.nowMs;
          },
          close: async () => undefined,
        },
        runtime: receiverHost.runtime(SimRandom.fork(41, `receiver ${index}`)),
        ...(signed ? { signed: createSignedSessionGate(sourceKey.publicKey) } : {}),
      },
    );
    const receiving = receiver.run({
      signal: stop.signal,
      onJoined: () => {
        joinedAtMs = scheduler.nowMs;
      },
    });
    await scheduler.run(scheduler.nowMs + 3_000, () => firstAtMs !== undefined);
    stop.abort();
    await scheduler.run(scheduler.nowMs + 10);
    await receiving;
    assert.ok(joinedAtMs !== undefined && firstAtMs !== undefined, `joiner ${index} wrote nothing`);
    waits.push(firstAtMs - joinedAtMs);
  }
  await scheduler.run(scheduler.nowMs + 20_000);
  await sending;
  return waits;
}

describe('join to first decoded packet of a live stream (virtual time)', () => {
  it(`plain: every joiner writes its first packet within one DESCRIPTOR interval (${descriptorIntervalMs} ms) of its join`, async () => {
    const waits = await joinWaits(false);
    // The DESCRIPTOR interval plus the network's delay and a quote's 5 ms is all a joiner waits for,
    // before the machine's load adds its share (at the 1000 ms interval of before, up to a second).
    assert.ok(Math.max(...waits) <= descriptorIntervalMs + 15, `waits ${waits.join(' ')} ms`);
  });

  it(`signed: every joiner writes its first packet within two control intervals (${protectedControlIntervalMs} ms) and a manifest's wait of its join`, async () => {
    const waits = await joinWaits(true);
    // A signed joiner needs the DESCRIPTOR (every control interval) naming where the stream is now,
    // and the manifest over its first packets (signed at a tick once they waited manifestFlushWaitMs).
    // A DESCRIPTOR naming an older sequence would have it wait for packets sent before it joined.
    const bound = 2 * protectedControlIntervalMs + manifestFlushWaitMs + 15;
    assert.ok(Math.max(...waits) <= bound, `waits ${waits.join(' ')} ms (bound ${bound})`);
  });
});
