/**
 * An in-process bed for every-n-th-packet mode (src/crypto/group-key.ts): a source of "news" in
 * groups of `packetsPerGroup` and a receiver protection over an in-memory token whose calls are
 * counted, with no network between them.
 */
import { randomBytes } from 'node:crypto';
import { ed25519Raw, generateSigningKey } from '../../src/crypto/authority.js';
import type { TokenRefused } from '../../src/crypto/errors.js';
import {
  createReceiverProtection,
  createSenderProtection,
  type ReceiverProtection,
} from '../../src/crypto/restricted-session.js';
import type { Suite } from '../../src/crypto/suites.js';
import { Token } from '../../src/crypto/token.js';
import { headerBytes, PacketType, writeHeaderFields } from '../../src/protocol/packet.js';
import { MemoryBackend } from '../sim/protection.js';
import { issueNewsGrant } from './grant.js';

/** The run the bed's source sends. */
export const groupRun = { sessionId: 41, incarnation: 42 } as const;

/**
 * A source of "news" in groups of `packetsPerGroup` (1 s crypto-periods, `manifestPackets` from
 * options, none by default) and a receiver over a counted in-memory token holding a grant to it; the
 * receiver's clock is `options.nowMs` when given.
 */
export function createGroupBed(
  suite: Suite,
  packetsPerGroup: number,
  options: { manifestPackets?: number; nowMs?: () => number } = {},
) {
  const root = generateSigningKey();
  const source = generateSigningKey();
  const serviceKey = randomBytes(32);
  const backend = new MemoryBackend(ed25519Raw(root.publicKey));
  const token = new Token(backend);
  token.installGrant(issueNewsGrant(token, { root, source, serviceKey }));
  const refusals: TokenRefused[] = [];
  const protection: ReceiverProtection = createReceiverProtection(
    token,
    (refusal) => refusals.push(refusal),
    undefined,
    options.nowMs,
  );
  const sender = createSenderProtection(
    {
      suite,
      service: 'news',
      serviceEpoch: 1,
      serviceKey,
      sourcePrivateKey: source.privateKey,
      sourcePublicKey: source.publicKey,
      cryptoPeriodMs: 1_000,
      tier: 0,
      manifestPackets: options.manifestPackets ?? 0,
      packetsPerGroup,
    },
    groupRun,
  );
  return { backend, token, protection, sender, refusals };
}

/** What createGroupBed returns. */
export type GroupBed = ReturnType<typeof createGroupBed>;

/** A plain DATA of the bed's run at `sequence`, stamped `atUs`, carrying `payload`. */
export function plainData(sequence: number, atUs: number, payload: Buffer): Buffer {
  const plain = Buffer.alloc(headerBytes + payload.length);
  writeHeaderFields(
    plain,
    PacketType.data,
    groupRun.sessionId,
    sequence,
    atUs,
    0,
    payload.length,
    groupRun.incarnation,
  );
  payload.copy(plain, headerBytes);
  return plain;
}
