/**
 * The signed-session test bed on loopback (docs/protocol.md, "Signed sessions"): a retransmit server
 * and a repair server that both hold the source's public key, a receiver of S2 and one of S1 that
 * each verify through their own gate, and a signed ticker source (on the loopback ticker that
 * unsigned tests use as it is).
 */
import type { KeyObject } from 'node:crypto';
import type { ControlKey } from '../../src/crypto/control-auth.js';
import { createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate, type SignedSessionGate } from '../../src/crypto/signed-session.js';
import type { Endpoint } from '../../src/net/address.js';
import { type RepairServer, startRepairServer } from '../../src/repair/repair.js';
import { type RetransmitServer, startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openTickerInput } from '../../src/source/inputs.js';
import { createSource, type Source, type SourceComponents } from '../../src/source/source.js';
import type { Run } from './craft.js';
import { type LoopbackReceiver, loopbackIface, loopbackReceiver } from './loopback.js';

/** A source's Ed25519 signing key pair. */
export interface SourceKeys {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

const listen = { address: '127.0.0.1', port: 0, family: 4 as const };

/**
 * Starts a retransmit server joined to `s1` and a repair server of `repairGroup` (S1, or a relay of
 * it) that asks it and emits on `s2`; both check the run against `source`'s public key. Each one's
 * close goes into `closers` as soon as it is up.
 */
export async function startSignedServers(
  options: {
    key: ControlKey;
    source: SourceKeys;
    s1: Endpoint;
    repairGroup: Endpoint;
    s2: Endpoint;
    /** The repair server's latency; undefined for reliable. */
    latencyMs: number | undefined;
  },
  closers: Array<() => Promise<void>>,
): Promise<{ retransmit: RetransmitServer; repair: RepairServer }> {
  const retransmit = await startRetransmitServer({
    joins: [{ group: options.s1 }],
    iface: loopbackIface,
    listen,
    keys: [options.key],
    bufferBytesMax: 64 * 1024 * 1024,
    bufferAgeMs: 60_000,
    repairRateBitsPerSecond: 500_000_000,
    announceTo: [],
    peers: [],
    sourcePublicKey: options.source.publicKey,
  });
  closers.push(() => retransmit.close());
  const repair = await startRepairServer({
    group: options.repairGroup,
    iface: loopbackIface,
    listen,
    keys: [options.key],
    retransmit: [retransmit.local],
    emit: options.s2,
    latencyMs: options.latencyMs,
    sourcePublicKey: options.source.publicKey,
  });
  closers.push(() => repair.close());
  return { retransmit, repair };
}

/**
 * A receiver of the repaired `s2` and one of the original `s1`, each through its own gate on
 * `sourcePublicKey`, both joined; `receiverGate` is the S2 receiver's.
 */
export async function signedReceivers(
  s2: Endpoint,
  s1: Endpoint,
  sourcePublicKey: KeyObject,
  timeoutMs: number,
): Promise<{ rx: LoopbackReceiver; direct: LoopbackReceiver; receiverGate: SignedSessionGate }> {
  const receiverGate = createSignedSessionGate(sourcePublicKey);
  const rx = loopbackReceiver(s2, { timeoutMs, signed: receiverGate });
  const direct = loopbackReceiver(s1, { timeoutMs, signed: createSignedSessionGate(sourcePublicKey) });
  await Promise.all([rx.ready, direct.ready]);
  return { rx, direct, receiverGate };
}

/**
 * A ticker on `s1`: 600 ticks of 64 bytes at 500 a second from sequence 1000, protected by
 * `protection` when given.
 */
export function loopbackTicker(s1: Endpoint, run: Run, protection?: SourceComponents['protection']): Source {
  return createSource(
    {
      group: s1,
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 64,
      sessionName: 'ticker',
      sessionId: run.sessionId,
      incarnation: run.incarnation,
      firstSequence: 1000,
      startDelayMs: 50,
    },
    {
      input: openTickerInput({ ticksPerSecond: 500, tickCount: 600 }),
      ...(protection === undefined ? {} : { protection }),
    },
  );
}

/** A signed ticker on `s1` (loopbackTicker), a manifest over every 32 packets. */
export function signedTicker(s1: Endpoint, source: SourceKeys, run: Run): Source {
  return loopbackTicker(s1, run, (identity) =>
    createSignedSenderProtection(
      { sourcePrivateKey: source.privateKey, sourcePublicKey: source.publicKey, manifestPackets: 32 },
      identity,
    ),
  );
}
