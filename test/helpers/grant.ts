/**
 * Grants for tests: a subscription to "news" issued by hand (src/crypto/authority.ts issueGrant),
 * the way the subscription server issues one when a token enrolls.
 */
import type { KeyObject } from 'node:crypto';
import { ed25519Raw, type GrantRequest, issueGrant } from '../../src/crypto/authority.js';
import { PriceModel } from '../../src/protocol/restricted.js';

/** The keys a grant is made from: the operator's root key, the source's key and the service key. */
export interface GrantKeys {
  readonly root: { readonly privateKey: KeyObject };
  readonly source: { readonly publicKey: KeyObject };
  readonly serviceKey: Buffer;
}

/**
 * A grant to `token` of "news" (tier 0, service epoch 1, a free subscription in
 * EUR) from a minute ago for an hour, signed by the root key; `overrides` replaces any field.
 */
export function issueNewsGrant(
  token: { devicePoint(): Buffer },
  keys: GrantKeys,
  overrides: Partial<Omit<GrantRequest, 'devicePoint' | 'serviceKey'>> = {},
): Buffer {
  return issueGrant(
    {
      devicePoint: token.devicePoint(),
      serviceKey: keys.serviceKey,
      tier: 0,
      service: 'news',
      serviceEpoch: 1,
      notBeforeMs: Date.now() - 60_000,
      notAfterMs: Date.now() + 3_600_000,
      priceModel: PriceModel.subscription,
      currency: 'EUR',
      priceMinor: 0,
      sourcePublicKey: ed25519Raw(keys.source.publicKey),
      ...overrides,
    },
    keys.root.privateKey,
  );
}
