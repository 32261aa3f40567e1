/**
 * Signed and restricted plans of the simulator (docs/protocol.md, "Signed sessions" and
 * "Restricted sessions"): the source's keys drawn from the seed, the source's protection, and for
 * each receiver a gate and (restricted) a real Token over an in-memory back end holding a grant.
 * Everything on the wire derives from the seed, so a seed still replays byte for byte.
 */
import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { ed25519Raw, issueGrant, p256FromPoint, p256Point, unwrapKey } from '../../src/crypto/authority.js';
import { cmacAes } from '../../src/crypto/group-key.js';
import {
  createReceiverProtection,
  createSenderProtection,
  createSignedSenderProtection,
  type ReceiverProtection,
  type SenderProtection,
} from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate, type SignedSessionGate } from '../../src/crypto/signed-session.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { Token, type TokenBackend, type TokenState } from '../../src/crypto/token.js';
import type { Grant } from '../../src/protocol/restricted.js';
import { PriceModel } from '../../src/protocol/restricted.js';
import { SimRandom } from './random.js';

/** What a protected plan is: signed only (readable, authentic) or signed and encrypted. */
export type ProtectionKind = 'signed' | 'restricted';

/** The crypto-period of restricted plans: short, so that keys rotate several times a session. */
export const simCryptoPeriodMs = 1000;

/** PKCS#8 DER prefix of an Ed25519 private key: the 32-byte seed follows (RFC 8410). */
const ed25519Pkcs8Prefix = Buffer.from('302e020100300506032b657004220420', 'hex');

/** An Ed25519 key pair from a 32-byte seed (so a simulated key replays with its seed). */
export function ed25519FromSeed(seed: Buffer): { privateKey: KeyObject; publicKey: KeyObject } {
  const privateKey = createPrivateKey({
    key: Buffer.concat([ed25519Pkcs8Prefix, seed]),
    format: 'der',
    type: 'pkcs8',
  });
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

/** The keys of one protected plan. */
export interface PlanKeys {
  readonly kind: ProtectionKind;
  readonly source: { privateKey: KeyObject; publicKey: KeyObject };
  readonly root: { privateKey: KeyObject; publicKey: KeyObject };
  readonly serviceKey: Buffer;
  /** Seeded bytes for the source's traffic keys (one stream per source boot). */
  readonly trafficKeys: (boot: number) => (bytes: number) => Buffer;
}

/** Draws a protected plan's keys from the seed. */
export function planKeys(seed: number, kind: ProtectionKind): PlanKeys {
  const r = SimRandom.fork(seed, 'protection');
  return {
    kind,
    source: ed25519FromSeed(r.bytes(32)),
    root: ed25519FromSeed(r.bytes(32)),
    serviceKey: r.bytes(32),
    trafficKeys: (boot) => {
      const stream = SimRandom.fork(seed, `protection/traffic/${boot}`);
      return (bytes) => stream.bytes(bytes);
    },
  };
}

/** The source side of one run. */
export function sourceProtection(
  keys: PlanKeys,
  boot: number,
): (run: { sessionId: number; incarnation: number }) => SenderProtection {
  const trafficKeys = keys.trafficKeys(boot);
  return (run) =>
    keys.kind === 'signed'
      ? createSignedSenderProtection(
          {
            sourcePrivateKey: keys.source.privateKey,
            sourcePublicKey: keys.source.publicKey,
            manifestPackets: 32,
          },
          run,
        )
      : createSenderProtection(
          {
            suite: suiteByName('aes-128-gcm', 'sim suite'),
            service: 'sim',
            serviceEpoch: 1,
            serviceKey: keys.serviceKey,
            sourcePrivateKey: keys.source.privateKey,
            sourcePublicKey: keys.source.publicKey,
            cryptoPeriodMs: simCryptoPeriodMs,
            tier: 0,
            manifestPackets: 32,
            randomBytes: trafficKeys,
          },
          run,
        );
}

/** A token back end that keeps its device key and state in memory (the checks are the real Token's). */
export class MemoryBackend implements TokenBackend {
  readonly kind = 'software' as const;
  readonly #device = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  #state: TokenState;

  constructor(rootPublicKey: Buffer) {
    this.#state = { rootPublicKey: rootPublicKey.toString('hex'), grants: [], highestStreamTimeUs: 0 };
  }

  devicePoint(): Buffer {
    return p256Point(this.#device.publicKey);
  }

  loadState(): TokenState {
    return structuredClone(this.#state);
  }

  saveState(state: TokenState): void {
    this.#state = structuredClone(state);
  }

  unwrapServiceKey(grant: Grant): Buffer | undefined {
    const kek = diffieHellman({
      privateKey: this.#device.privateKey,
      publicKey: p256FromPoint(grant.ephemeralPublicKey),
    });
    return unwrapKey(kek, grant.wrappedServiceKey);
  }

  unwrapTrafficKey(serviceKey: unknown, wrapped: Buffer): Buffer | undefined {
    return unwrapKey(serviceKey as Buffer, wrapped);
  }

  unwrapTreeKeys(ephemeralPublicKey: Buffer, wrapped: readonly Buffer[]): Buffer[] | undefined {
    const kek = diffieHellman({
      privateKey: this.#device.privateKey,
      publicKey: p256FromPoint(ephemeralPublicKey),
    });
    const keys = wrapped.map((one) => unwrapKey(kek, one));
    return keys.every((key) => key !== undefined) ? (keys as Buffer[]) : undefined;
  }

  unwrapTreeKey(kek: unknown, wrapped: Buffer): Buffer | undefined {
    return unwrapKey(kek as Buffer, wrapped);
  }

  /** Wipes a key used no more (as the software token does): a key wiped too early fails the tests. */
  forgetTreeKey(key: unknown): void {
    (key as Buffer).fill(0);
  }

  /** Shares unwrapped for group keys, and how often a group key block was asked of them. */
  readonly groupShares: Buffer[] = [];
  cmacCalls = 0;

  unwrapGroupShare(kek: unknown, wrapped: Buffer): Buffer | undefined {
    const share = unwrapKey(kek as Buffer, wrapped);
    if (share !== undefined) {
      this.groupShares.push(share);
    }
    return share;
  }

  cmac(share: unknown, message: Buffer): Buffer {
    this.cmacCalls++;
    return cmacAes(share as Buffer, message);
  }

  /** Everything this token holds in the clear, as one who dumped it would see it. */
  dump(): { state: TokenState; devicePrivateKey: KeyObject } {
    return { state: structuredClone(this.#state), devicePrivateKey: this.#device.privateKey };
  }

  receiptPublicKey(): Buffer | undefined {
    return undefined;
  }

  signReceipt(): Buffer {
    throw new Error('the simulated token signs no receipts');
  }

  close(): void {}
}

/** What a receiver of a protected plan runs with. */
export interface ReceiverGuard {
  readonly signed: SignedSessionGate;
  readonly protection: ReceiverProtection | undefined;
  readonly token: Token | undefined;
}

/**
 * A receiver's gate (every datagram it passes on is shown to `passedOn`) and, in a restricted
 * plan, its token (granted the service for all time) and the protection that opens DATA.
 */
export function receiverGuard(keys: PlanKeys, passedOn: (datagram: Buffer) => void): ReceiverGuard {
  const gate = createSignedSessionGate(keys.source.publicKey);
  const signed: SignedSessionGate = {
    stats: gate.stats,
    check: (datagram) => gate.check(datagram),
    vouches: (sessionId, incarnation, sequence) => gate.vouches(sessionId, incarnation, sequence),
    signatureFor: (datagram) => gate.signatureFor(datagram),
    ignoreControl: (type) => gate.ignoreControl(type),
    filter: (datagram, pass) =>
      gate.filter(datagram, (authenticated) => {
        passedOn(authenticated);
        pass(authenticated);
      }),
  };
  if (keys.kind === 'signed') {
    return { signed, protection: undefined, token: undefined };
  }
  const token = new Token(new MemoryBackend(ed25519Raw(keys.root.publicKey)));
  token.installGrant(
    issueGrant(
      {
        devicePoint: token.devicePoint(),
        serviceKey: keys.serviceKey,
        tier: 0,
        service: 'sim',
        serviceEpoch: 1,
        notBeforeMs: 0,
        notAfterMs: Number.MAX_SAFE_INTEGER,
        priceModel: PriceModel.subscription,
        currency: 'EUR',
        priceMinor: 0,
        sourcePublicKey: ed25519Raw(keys.source.publicKey),
      },
      keys.root.privateKey,
    ),
  );
  // A refusal (a rolled-back clock in a chaos plan) only stops decoding: the invariants judge the rest.
  const protection = createReceiverProtection(token, () => undefined);
  return { signed, protection, token };
}
