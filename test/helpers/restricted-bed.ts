/**
 * A restricted session on loopback for tests of what decodes it (the agent, on the library and
 * on the command line): the operator's root key, a source key and the service key of "news"; a
 * software token with a subscription grant; a restricted ticker that keeps the plaintext it sent;
 * an unmodified application socket.
 */
import { type KeyObject, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { ed25519Raw, generateSigningKey } from '../../src/crypto/authority.js';
import { createSenderProtection } from '../../src/crypto/restricted-session.js';
import { initSoftwareToken, openSoftwareToken } from '../../src/crypto/software-token.js';
import { suiteByName } from '../../src/crypto/suites.js';
import type { Token } from '../../src/crypto/token.js';
import type { Endpoint } from '../../src/net/address.js';
import { openTickerInput, type PayloadInput } from '../../src/source/inputs.js';
import { createSource, type SourceComponents } from '../../src/source/source.js';
import { issueNewsGrant } from './grant.js';
import { loopbackIface } from './loopback.js';

/** The operator root key, the source key and the service key of "news", for one test file. */
export const restrictedKeys = {
  root: generateSigningKey(),
  source: generateSigningKey(),
  serviceKey: randomBytes(32),
};

/** The PIN of the tokens makeToken creates. */
export const tokenPin = '2468';

/** A grant: the service and its window. */
export interface TestGrant {
  readonly service: string;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
}

/**
 * Creates a software token at `path` holding a subscription grant for `grant` (or none), and
 * returns it open and prepared; the caller closes it.
 */
export function makeToken(path: string, grant: TestGrant | undefined): Token {
  const { root } = restrictedKeys;
  initSoftwareToken({ path, pin: tokenPin, rootPublicKey: ed25519Raw(root.publicKey) });
  const token = openSoftwareToken(path, tokenPin);
  if (grant !== undefined) {
    token.installGrant(
      issueNewsGrant(token, restrictedKeys, {
        service: grant.service,
        notBeforeMs: grant.notBeforeMs,
        notAfterMs: grant.notAfterMs,
      }),
    );
  }
  token.prepare(Date.now());
  return token;
}

/** A grant of "news" from a minute ago for an hour. */
export function newsGrant(): TestGrant {
  return { service: 'news', notBeforeMs: Date.now() - 60_000, notAfterMs: Date.now() + 3_600_000 };
}

/** The ticker input, keeping a copy of every payload it hands the source (the plaintext sent). */
function recordingTicker(sent: Buffer[], ticks: number): PayloadInput {
  const ticker = openTickerInput({ ticksPerSecond: 500, tickCount: ticks });
  return {
    get kind() {
      return ticker.kind;
    },
    get totalBytes() {
      return ticker.totalBytes;
    },
    get sha256() {
      return ticker.sha256;
    },
    get droppedCount() {
      return ticker.droppedCount;
    },
    read(out) {
      const length = ticker.read(out);
      if (length >= 0) {
        sent.push(Buffer.from(out.subarray(0, length)));
      }
      return length;
    },
    waitReadable: () => ticker.waitReadable(),
    close: () => ticker.close(),
  };
}

/**
 * The protection of a restricted run of "news" under `serviceKey`, signed with `source` (AES-256-GCM,
 * service epoch 1, 10 s crypto-periods, tier 0, a manifest per 32 packets): what a test's source is
 * given as its `protection`.
 */
export function newsProtection(
  serviceKey: Buffer,
  source: { privateKey: KeyObject; publicKey: KeyObject },
): NonNullable<SourceComponents['protection']> {
  return (identity) =>
    createSenderProtection(
      {
        suite: suiteByName('aes-256-gcm', 'test'),
        service: 'news',
        serviceEpoch: 1,
        serviceKey,
        sourcePrivateKey: source.privateKey,
        sourcePublicKey: source.publicKey,
        cryptoPeriodMs: 10_000,
        tier: 0,
        manifestPackets: 32,
      },
      identity,
    );
}

/**
 * A restricted ticker "ticker" of the service "news" on `group`, `ticks` quotes at 500 a second;
 * resolves to the payloads it sent once it has ended.
 */
export async function restrictedTicker(group: Endpoint, sessionId: number, ticks: number): Promise<Buffer[]> {
  const { source, serviceKey } = restrictedKeys;
  const sent: Buffer[] = [];
  await createSource(
    {
      group,
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 64,
      sessionName: 'ticker',
      sessionId,
      incarnation: sessionId * 3,
      firstSequence: 1000,
      startDelayMs: 50,
    },
    {
      input: recordingTicker(sent, ticks),
      protection: newsProtection(serviceKey, source),
    },
  ).run();
  return sent;
}

/**
 * The unmodified application: a plain UDP socket on `group`, joined on loopback; what it reads
 * goes into the array returned. Its close goes into `closers`.
 */
export async function application(
  group: Endpoint,
  closers: Array<() => Promise<void> | void>,
): Promise<Buffer[]> {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  const got: Buffer[] = [];
  socket.on('message', (message) => got.push(message));
  await new Promise<void>((resolve) => socket.bind(group.port, group.address, resolve));
  socket.addMembership(group.address, loopbackIface);
  socket.setRecvBufferSize(4 * 1024 * 1024);
  closers.push(() => {
    socket.close();
  });
  return got;
}
