/**
 * A protected source repeats its DESCRIPTOR every protectedControlIntervalMs (50 ms), so a joiner
 * waits little; it sends the same DESCRIPTOR and control signature, byte for byte, until
 * signedRepeatRefreshMs has passed, then signs them anew, so neither it nor a verifying gate pays
 * an Ed25519 operation at every tick. A plain run's DESCRIPTOR carries no signature and is built at
 * each repeat.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createSenderProtection } from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { heartbeatIntervalMs, protectedControlIntervalMs, signedRepeatRefreshMs } from '../../src/limits.js';
import { parseGroup } from '../../src/net/address.js';
import { systemRuntime } from '../../src/net/runtime.js';
import { offsetType, PacketType, SessionKind } from '../../src/protocol/packet.js';
import { inputNotReady, type PayloadInput } from '../../src/source/inputs.js';
import { createSource, type SourceComponents } from '../../src/source/source.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { recordingSocket } from '../helpers/recording-socket.js';
import { restrictedKeys } from '../helpers/restricted-bed.js';

/** A live stream with nothing to send yet, open until closed. */
function idleInput(): PayloadInput & { closed: Promise<void> } {
  let closeInput: () => void = () => undefined;
  const closed = new Promise<void>((resolve) => {
    closeInput = resolve;
  });
  return {
    kind: SessionKind.stream,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    read: () => inputNotReady,
    waitReadable: () => closed,
    async close() {
      closeInput();
    },
    closed,
  };
}

/** Runs an idle source for `ms` of its manual clock; returns what it put on the wire. */
async function idleRun(ms: number, protection: SourceComponents['protection']): Promise<Buffer[]> {
  const clock = new ManualClock();
  const { socket, wire } = recordingSocket();
  const source = createSource(
    {
      group: parseGroup('239.255.64.20:5000', 'g'),
      rateBitsPerSecond: 0,
      packetPayloadBytes: 200,
      sessionName: 'descriptor-repeat',
      startDelayMs: 0,
    },
    {
      input: idleInput(),
      openSocket: async () => socket,
      runtime: { ...systemRuntime, clock },
      ...(protection === undefined ? {} : { protection }),
    },
  );
  const running = source.run().catch(() => undefined);
  // Each tick's timers run, then the sends they started complete (next turns).
  for (let elapsed = 0; elapsed < ms; elapsed += 10) {
    clock.advance(10);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await source.close();
  await running;
  return wire;
}

const restricted: SourceComponents['protection'] = (run) =>
  createSenderProtection(
    {
      suite: suiteByName('aes-128-gcm', 'test'),
      service: 'news',
      serviceEpoch: 1,
      serviceKey: restrictedKeys.serviceKey,
      sourcePrivateKey: restrictedKeys.source.privateKey,
      sourcePublicKey: restrictedKeys.source.publicKey,
      cryptoPeriodMs: 10_000,
      tier: 0,
      manifestPackets: 64,
    },
    run,
  );

const ofType = (wire: Buffer[], type: number) => wire.filter((datagram) => datagram[offsetType] === type);
const distinct = (datagrams: Buffer[]) => new Set(datagrams.map((datagram) => datagram.toString('hex'))).size;

describe('a protected source repeats its signed DESCRIPTOR unchanged for signedRepeatRefreshMs', () => {
  it('every 50 ms the same bytes and signature, signed anew each 500 ms; a verifying gate checks each signing once and passes every copy', async () => {
    const runMs = 2_000;
    const wire = await idleRun(runMs, restricted);
    const descriptors = ofType(wire, PacketType.descriptor);
    const ticks = runMs / protectedControlIntervalMs;
    assert.ok(descriptors.length >= ticks - 2, `${descriptors.length} DESCRIPTORs in ${runMs} ms`);
    const signings = runMs / signedRepeatRefreshMs;
    const kinds = distinct(descriptors);
    assert.ok(
      kinds >= signings - 1 && kinds <= signings + 1,
      `${kinds} distinct DESCRIPTORs, ${signings} signings expected`,
    );
    // Each DESCRIPTOR goes out just after its control signature, and a gate with the source's key
    // passes every copy while it verifies only the new signings (and the offer's and KEYs').
    const passed: Buffer[] = [];
    const gate = createSignedSessionGate(restrictedKeys.source.publicKey);
    for (const datagram of wire) {
      gate.filter(datagram, (authentic) => passed.push(authentic));
    }
    assert.equal(ofType(passed, PacketType.descriptor).length, descriptors.length, 'every copy passed');
    assert.ok(gate.stats.signedRepeats >= descriptors.length - kinds, JSON.stringify(gate.stats));
    assert.equal(gate.stats.forged['bad-signature'] ?? 0, 0);
    // Signed DESCRIPTORs at every tick would be 40 verifications alone.
    const heartbeats = runMs / heartbeatIntervalMs;
    assert.ok(
      gate.stats.signaturesVerified <= 4 * (signings + 1) + heartbeats + 1,
      `${gate.stats.signaturesVerified} verified: one offer, two KEYs and one DESCRIPTOR per signing, and each HEARTBEAT`,
    );
  });

  it('a plain source builds its DESCRIPTOR at each repeat, with no signature', async () => {
    const wire = await idleRun(1_000, undefined);
    const descriptors = ofType(wire, PacketType.descriptor);
    assert.ok(descriptors.length >= 3, `${descriptors.length} DESCRIPTORs`);
    assert.equal(distinct(descriptors), descriptors.length);
    assert.equal(ofType(wire, PacketType.signature).length, 0);
  });
});
