/**
 * A throwaway SoftHSM2 for tests: its own config and token directory under a temp dir, tokens
 * made with softhsm2-util. Tests that need it skip with the reason when SoftHSM2 or the PKCS#11
 * binding is missing, and fail instead when GATECAST_REQUIRE_PACKAGES=1 (CI).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where Debian's softhsm2 package puts the module. */
export const softhsmModulePath = '/usr/lib/softhsm/libsofthsm2.so';

/** Undefined when SoftHSM2 tests can run; else why not (or throws under GATECAST_REQUIRE_PACKAGES=1). */
export function softhsmMissing(what: string): string | undefined {
  let reason: string | undefined;
  if (!existsSync(softhsmModulePath)) {
    reason = `needs SoftHSM2 (Debian package softhsm2: ${softhsmModulePath})`;
  } else {
    try {
      execFileSync('softhsm2-util', ['--version'], { stdio: 'ignore' });
      createRequire(import.meta.url)('pkcs11js');
    } catch (error) {
      reason = `needs softhsm2-util and the pkcs11js binding: ${(error as Error).message}`;
    }
  }
  if (reason !== undefined && process.env.GATECAST_REQUIRE_PACKAGES === '1') {
    throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but ${what} cannot run: ${reason}`);
  }
  return reason;
}

/** A SoftHSM2 home: SOFTHSM2_CONF is set for this process (the module reads it when initialized). */
export interface SoftHsm {
  readonly directory: string;
  readonly conf: string;
  /** Makes a token with this label and user PIN. */
  initToken(label: string, pin: string): void;
  remove(): void;
}

/** Creates a SoftHSM2 home and points this process (and its children) at it. */
export function createSoftHsm(): SoftHsm {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-softhsm-'));
  const tokens = join(directory, 'tokens');
  mkdirSync(tokens);
  const conf = join(directory, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = conf;
  return {
    directory,
    conf,
    initToken(label: string, pin: string) {
      execFileSync(
        'softhsm2-util',
        ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', `${pin}-so`],
        { stdio: 'ignore', env: { ...process.env, SOFTHSM2_CONF: conf } },
      );
    },
    remove() {
      rmSync(directory, { recursive: true, force: true });
    },
  };
}
