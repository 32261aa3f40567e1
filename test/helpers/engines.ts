/**
 * Whether the native engines can be tested here. The addon (`npm ci` builds it) and libsodium
 * (Debian libsodium23) are packages a user would have: where one is missing a test says why and
 * skips; under GATECAST_REQUIRE_PACKAGES=1 (CI) it fails instead.
 */
import { aeadEngine, signatureEngineInfo } from '../../src/crypto/aead-engine.js';

/** Why the packet engine is not the addon here, or undefined; throws under GATECAST_REQUIRE_PACKAGES=1. */
export function addonMissing(): string | undefined {
  const engine = aeadEngine();
  const reason =
    engine.name === 'openssl-evp' ? undefined : `the packet engine is node:crypto: ${engine.reason}`;
  if (reason !== undefined && process.env.GATECAST_REQUIRE_PACKAGES === '1') {
    throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but the AEAD addon cannot be tested: ${reason}`);
  }
  return reason;
}

/** Why libsodium is not the signature engine here, or undefined; throws under GATECAST_REQUIRE_PACKAGES=1. */
export function sodiumMissing(): string | undefined {
  const engine = signatureEngineInfo();
  const reason =
    engine.name === 'libsodium' ? undefined : `signatures are checked with node:crypto: ${engine.reason}`;
  if (reason !== undefined && process.env.GATECAST_REQUIRE_PACKAGES === '1') {
    throw new Error(
      `GATECAST_REQUIRE_PACKAGES=1 but libsodium cannot be tested (apt-get install libsodium23): ${reason}`,
    );
  }
  return reason;
}
