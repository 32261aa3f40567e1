import assert from 'node:assert/strict';
import {
  createCipheriv,
  createDecipheriv,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  scryptSync,
} from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildKeyMessage, ed25519Raw, generateSigningKey, issueGrant } from '../../src/crypto/authority.js';
import { TokenError, TokenRefused } from '../../src/crypto/errors.js';
import { deriveGroupKey, groupSeedBytes } from '../../src/crypto/group-key.js';
import {
  devicePrivateKeyAttributes,
  initPkcs11Token,
  openPkcs11Token,
} from '../../src/crypto/pkcs11-token.js';
import { initSoftwareToken, openSoftwareToken } from '../../src/crypto/software-token.js';
import { SuiteId } from '../../src/crypto/suites.js';
import type { Purse, PurseDebit, Token } from '../../src/crypto/token.js';
import { tokenReleasedKeysMax, tokenScryptCost } from '../../src/limits.js';
import { decodeGrant, decodeKey, PriceModel } from '../../src/protocol/restricted.js';
import { createRandom } from '../helpers/random.js';
import { createSoftHsm, type SoftHsm, softhsmMissing, softhsmModulePath } from '../helpers/softhsm.js';

const hour = 3_600_000;
const start = Date.UTC(2026, 11, 1);
const root = generateSigningKey();
const source = generateSigningKey();
const serviceKey = randomBytes(32);

/** A purse with a balance, recording what it debited. */
function balancePurse(balanceMinor: number): Purse & { debits: PurseDebit[]; balance: () => number } {
  let balance = balanceMinor;
  const debits: PurseDebit[] = [];
  return {
    debits,
    balance: () => balance,
    debit(debit) {
      if (balance < debit.amountMinor) {
        return Promise.resolve({ ok: false, reason: 'purse-empty', message: `purse empty: ${balance} left` });
      }
      balance -= debit.amountMinor;
      debits.push(debit);
      return Promise.resolve({ ok: true });
    },
  };
}

function grantFor(
  token: Token,
  overrides: Partial<Parameters<typeof issueGrant>[0]> = {},
  signer = root.privateKey,
): Buffer {
  return issueGrant(
    {
      devicePoint: token.devicePoint(),
      serviceKey,
      tier: 1,
      service: 'news',
      serviceEpoch: 1,
      notBeforeMs: start,
      notAfterMs: start + hour,
      priceModel: PriceModel.subscription,
      currency: 'EUR',
      priceMinor: 0,
      sourcePublicKey: ed25519Raw(source.publicKey),
      ...overrides,
    },
    signer,
  );
}

function keyMessage(options: {
  timeMs: number;
  keyEpoch?: number;
  tier?: number;
  signer?: typeof source.privateKey;
  trafficKey?: Buffer;
  service?: string;
  packetsPerGroup?: number;
}) {
  const trafficKey = options.trafficKey ?? randomBytes(32);
  const bytes = buildKeyMessage(
    {
      sessionId: 7,
      incarnation: 99,
      sequence: 0,
      timestampUs: options.timeMs * 1000,
      keyEpoch: options.keyEpoch ?? 1,
    },
    {
      suite: SuiteId.aes256Gcm,
      tier: options.tier ?? 1,
      serviceEpoch: 1,
      cryptoPeriodMs: 10_000,
      service: options.service ?? 'news',
      packetsPerGroup: options.packetsPerGroup,
    },
    serviceKey,
    trafficKey,
    options.signer ?? source.privateKey,
  );
  const decoded = decodeKey(bytes);
  assert.ok(decoded.ok);
  return { message: decoded.value, trafficKey, bytes };
}

async function refusal(promise: Promise<unknown>): Promise<TokenRefused> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof TokenRefused, String(error));
    return error;
  }
  assert.fail('the token released a key it should have refused');
}

/** The same behaviour for both back ends. */
function behaviour(name: string, make: (purse?: Purse) => { open: () => Token }) {
  describe(`${name} token`, () => {
    it('an entitled token releases the traffic key of a KEY message inside the window', async () => {
      const { open } = make();
      const token = open();
      token.installGrant(grantFor(token));
      const { message, trafficKey } = keyMessage({ timeMs: start + 1000 });
      assert.deepEqual(await token.releaseTrafficKey(message), trafficKey);
      token.close();
    });

    it('every-n-th-packet mode: group keys derived inside the token, never the traffic key; the checks and the debit as for a traffic key', async () => {
      const purse = balancePurse(25);
      const { open } = make(purse);
      const token = open();
      token.installGrant(grantFor(token, { priceModel: PriceModel.perCryptoPeriod, priceMinor: 10 }));
      const { message, trafficKey } = keyMessage({ timeMs: start + 1000, packetsPerGroup: 16 });
      const refused = await refusal(token.releaseTrafficKey(message));
      assert.equal(refused.reason, 'group-mode');
      assert.equal(purse.debits.length, 0, 'a refused traffic key is not charged');
      const groups = await token.releaseGroupKeys(message);
      assert.equal(groups.packetsPerGroup, 16);
      assert.equal(groups.keyBytes, 32);
      const context = { sessionId: 7, incarnation: 99, keyEpoch: 1, packetsPerGroup: 16 };
      for (const groupIndex of [0, 1, 2, 0xffff_ffff]) {
        const seed = randomBytes(groupSeedBytes);
        assert.deepEqual(
          groups.groupKey(groupIndex, seed),
          deriveGroupKey([trafficKey], seed, { ...context, groupIndex }, 32),
          `group ${groupIndex}`,
        );
      }
      assert.equal(token.groupKeysDerived, 4);
      // The KEY repeated: no second debit; the next epoch is charged; the one after finds the purse empty.
      await token.releaseGroupKeys(message);
      assert.equal(purse.debits.length, 1);
      await token.releaseGroupKeys(
        keyMessage({ timeMs: start + 2000, keyEpoch: 2, packetsPerGroup: 16 }).message,
      );
      assert.equal(purse.debits.length, 2);
      const empty = await refusal(
        token.releaseGroupKeys(
          keyMessage({ timeMs: start + 3000, keyEpoch: 3, packetsPerGroup: 16 }).message,
        ),
      );
      assert.equal(empty.reason, 'purse-empty');
      const late = await refusal(
        token.releaseGroupKeys(
          keyMessage({ timeMs: start + hour, keyEpoch: 4, packetsPerGroup: 16 }).message,
        ),
      );
      assert.equal(late.reason, 'expired');
      const plain = await refusal(
        token.releaseGroupKeys(keyMessage({ timeMs: start + 1000, keyEpoch: 5 }).message),
      );
      assert.equal(plain.reason, 'bad-key-message');
      token.close();
    });

    it('refuses without a grant, before and after the window, with the dates a user reads', async () => {
      const { open } = make();
      const token = open();
      const none = await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 1 }).message));
      assert.equal(none.reason, 'not-entitled');
      assert.equal(none.message, 'not entitled to news: this token holds no grant for it');
      token.installGrant(grantFor(token, { serviceEpoch: 2 }));
      const otherEpoch = await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 1 }).message));
      assert.equal(otherEpoch.reason, 'not-entitled');
      assert.equal(
        otherEpoch.message,
        "not entitled to news (service epoch 1): this token's grants are for service epoch 2",
      );
      token.installGrant(grantFor(token));
      const early = await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start - 1 }).message));
      assert.equal(early.reason, 'not-yet-valid');
      assert.match(early.message, /not entitled to news until 2026-12-01T00:00:00.000Z/);
      const late = await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + hour }).message));
      assert.equal(late.reason, 'expired');
      assert.equal(token.refusalFor('news', start + 5)?.reason, undefined);
      assert.equal(token.refusalFor('sport', start + 5)?.reason, 'not-entitled');
      token.close();
    });

    it('refuses a forged KEY message, a grant from another root and a grant for another token', async () => {
      const { open } = make();
      const token = open();
      const other = generateSigningKey();
      assert.throws(
        () => token.installGrant(grantFor(token, {}, other.privateKey)),
        (error) => error instanceof TokenRefused && error.reason === 'bad-signature',
      );
      const stranger = generateSigningKey();
      void stranger;
      token.installGrant(grantFor(token));
      const forged = await refusal(
        token.releaseTrafficKey(keyMessage({ timeMs: start + 1, signer: other.privateKey }).message),
      );
      assert.equal(forged.reason, 'bad-signature');
      const flipped = keyMessage({ timeMs: start + 2 });
      const bytes = Buffer.from(flipped.bytes);
      bytes[bytes.length - 70] = (bytes[bytes.length - 70] ?? 0) ^ 1; // a bit of the wrapped key
      const decoded = decodeKey(bytes);
      assert.ok(decoded.ok);
      assert.equal((await refusal(token.releaseTrafficKey(decoded.value))).reason, 'bad-signature');
      token.close();
    });

    it('refuses a KEY message older than the latest it accepted (replay or clock rollback), across a reopen', async () => {
      const { open } = make();
      let token = open();
      token.installGrant(grantFor(token));
      await token.releaseTrafficKey(keyMessage({ timeMs: start + 60_000, keyEpoch: 2 }).message);
      const replay = await refusal(
        token.releaseTrafficKey(keyMessage({ timeMs: start + 30_000, keyEpoch: 1 }).message),
      );
      assert.equal(replay.reason, 'rollback');
      token.close();
      token = open();
      assert.equal(token.highestStreamTimeUs, (start + 60_000) * 1000);
      assert.equal(
        (await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 30_000 }).message))).reason,
        'rollback',
      );
      // Within the tolerance (KEY messages repeat and reorder) is accepted.
      await token.releaseTrafficKey(keyMessage({ timeMs: start + 57_000, keyEpoch: 3 }).message);
      token.close();
    });

    it('refuses a tier the grant does not reach', async () => {
      const { open } = make();
      const token = open();
      token.installGrant(grantFor(token, { tier: 1 }));
      assert.equal(
        (await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 1, tier: 2 }).message))).reason,
        'tier',
      );
      token.close();
    });

    it('pay-as-you-go: no purse and an empty purse release nothing; a repeated KEY is charged once', async () => {
      const payg = { priceModel: PriceModel.perCryptoPeriod, priceMinor: 5 };
      {
        const { open } = make();
        const token = open();
        token.installGrant(grantFor(token, payg));
        assert.equal(
          (await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 1 }).message))).reason,
          'purse-unavailable',
        );
        token.close();
      }
      const empty = balancePurse(4);
      {
        const { open } = make(empty);
        const token = open();
        token.installGrant(grantFor(token, payg));
        const refused = await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 1 }).message));
        assert.equal(refused.reason, 'purse-empty');
        assert.match(refused.message, /purse empty/);
        token.close();
      }
      const purse = balancePurse(12);
      const { open } = make(purse);
      const token = open();
      token.installGrant(grantFor(token, payg));
      const first = keyMessage({ timeMs: start + 1, keyEpoch: 1 });
      await token.releaseTrafficKey(first.message);
      await token.releaseTrafficKey(first.message);
      await token.releaseTrafficKey(keyMessage({ timeMs: start + 2, keyEpoch: 2 }).message);
      assert.equal(purse.debits.length, 2);
      assert.equal(purse.balance(), 2);
      assert.equal(
        (await refusal(token.releaseTrafficKey(keyMessage({ timeMs: start + 3, keyEpoch: 3 }).message)))
          .reason,
        'purse-empty',
      );
      token.close();
    });

    it('one bounded memory of released keys for both modes: a remembered KEY is not charged again, a forgotten one is, and its group keys are gone', async () => {
      const purse = balancePurse(10_000);
      const { open } = make(purse);
      const token = open();
      token.installGrant(grantFor(token, { priceModel: PriceModel.perCryptoPeriod, priceMinor: 1 }));
      const half = tokenReleasedKeysMax / 2;
      /** Epochs 1..half seal every packet, the next half in groups of 16 (of one run: one memory). */
      const message = (keyEpoch: number) =>
        keyMessage({
          timeMs: start + keyEpoch * 10,
          keyEpoch,
          ...(keyEpoch > half && keyEpoch <= 2 * half ? { packetsPerGroup: 16 } : {}),
        }).message;
      const messages = new Map<number, ReturnType<typeof message>>();
      const release = async (keyEpoch: number) => {
        const known = messages.get(keyEpoch) ?? message(keyEpoch);
        messages.set(keyEpoch, known);
        return known.packetsPerGroup === undefined
          ? token.releaseTrafficKey(known)
          : token.releaseGroupKeys(known);
      };
      for (let epoch = 1; epoch <= 2 * half; epoch++) {
        await release(epoch);
      }
      const firstGroup = (await release(half + 1)) as Awaited<ReturnType<Token['releaseGroupKeys']>>;
      assert.equal(purse.debits.length, 2 * half, 'each KEY charged once, the repeats not');
      assert.equal(firstGroup.groupKey(0, randomBytes(groupSeedBytes)).length, 32);
      // One more KEY forgets the oldest (epoch 1): asked again, it is charged again.
      await release(2 * half + 1);
      assert.equal(purse.debits.length, 2 * half + 1);
      await release(2);
      assert.equal(purse.debits.length, 2 * half + 1, 'epoch 2 is still remembered');
      await release(1);
      assert.equal(purse.debits.length, 2 * half + 2, 'epoch 1 was forgotten: charged again');
      // Past as many more, the first group epoch's shares are forgotten: its source derives nothing.
      for (let epoch = 2 * half + 2; epoch <= 3 * half + 2; epoch++) {
        await release(epoch);
      }
      const forgotten = (() => {
        try {
          firstGroup.groupKey(1, randomBytes(groupSeedBytes));
        } catch (error) {
          return error;
        }
        return undefined;
      })();
      assert.ok(forgotten instanceof TokenRefused, 'a forgotten group source refuses');
      assert.equal(forgotten.reason, 'bad-key-message');
      token.close();
    });

    it('property: no key is released outside the window or after the counter moved past it', async () => {
      const random = createRandom(0x5eed12);
      const { open } = make();
      const token = open();
      token.installGrant(grantFor(token));
      let highestMs = 0;
      for (let step = 0; step < 60; step += 1) {
        const timeMs = start - hour / 2 + random.int(2 * hour);
        const inWindow = timeMs >= start && timeMs < start + hour;
        const rolledBack = timeMs < highestMs - 5000;
        const { message, trafficKey } = keyMessage({ timeMs, keyEpoch: 1 + (step % 60000) });
        try {
          assert.deepEqual(await token.releaseTrafficKey(message), trafficKey);
          assert.ok(inWindow && !rolledBack, `released at ${timeMs} (highest ${highestMs})`);
          highestMs = Math.max(highestMs, timeMs);
        } catch (error) {
          assert.ok(error instanceof TokenRefused);
          assert.ok(!inWindow || rolledBack, `refused at ${timeMs}: ${error.message}`);
        }
      }
      token.close();
    });
  });
}

describe('tokens', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-token-'));
  after(() => rmSync(directory, { recursive: true, force: true }));
  let files = 0;

  behaviour('software', (purse) => {
    files += 1;
    const path = join(directory, `token-${files}.json`);
    initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
    return { open: () => openSoftwareToken(path, '2468', purse) };
  });

  describe('software token file', () => {
    // What someone holding the PIN can read and write: the file's own format, sealed with the PIN.
    const fileKey = (salt: Buffer, writeSalt: Buffer) => {
      const master = scryptSync('2468', salt, 32, {
        N: tokenScryptCost,
        r: 8,
        p: 1,
        maxmem: 64 * 1024 * 1024,
      });
      return Buffer.from(
        hkdfSync('sha256', master, writeSalt, Buffer.from('gatecast-software-token v1'), 32),
      );
    };
    const sealedFile = (secrets: string) => {
      const salt = randomBytes(16);
      const writeSalt = randomBytes(16);
      const cipher = createCipheriv('aes-256-gcm', fileKey(salt, writeSalt), Buffer.alloc(12), {
        authTagLength: 16,
      });
      cipher.setAAD(Buffer.from('gatecast-software-token v1'));
      const body = Buffer.concat([cipher.update(secrets), cipher.final()]);
      const data = Buffer.concat([writeSalt, body, cipher.getAuthTag()]).toString('base64');
      return JSON.stringify({
        format: 'gatecast-software-token',
        version: 1,
        salt: salt.toString('base64'),
        data,
      });
    };
    const openedSecrets = (path: string) => {
      const file = JSON.parse(readFileSync(path, 'utf8')) as { salt: string; data: string };
      const data = Buffer.from(file.data, 'base64');
      const decipher = createDecipheriv(
        'aes-256-gcm',
        fileKey(Buffer.from(file.salt, 'base64'), data.subarray(0, 16)),
        Buffer.alloc(12),
        { authTagLength: 16 },
      );
      decipher.setAAD(Buffer.from('gatecast-software-token v1'));
      decipher.setAuthTag(data.subarray(data.length - 16));
      const plain = Buffer.concat([decipher.update(data.subarray(16, data.length - 16)), decipher.final()]);
      return JSON.parse(plain.toString('utf8')) as { state: { grants: string[] } };
    };

    it('a wrong PIN or an altered file opens nothing; the file holds no key in clear', () => {
      const path = join(directory, 'pin.json');
      initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
      assert.throws(
        () => openSoftwareToken(path, '1357'),
        (error) => error instanceof TokenError && /wrong PIN/.test(error.message),
      );
      const token = openSoftwareToken(path, '2468');
      token.installGrant(grantFor(token));
      token.close();
      const text = readFileSync(path, 'utf8');
      assert.ok(!text.includes('news'), 'the grant is not readable in the file');
      assert.ok(!text.includes(ed25519Raw(root.publicKey).toString('hex')));
      const file = JSON.parse(text) as { data: string };
      const data = Buffer.from(file.data, 'base64');
      data[20] = (data[20] ?? 0) ^ 1;
      writeFileSync(path, JSON.stringify({ ...file, data: data.toString('base64') }));
      assert.throws(() => openSoftwareToken(path, '2468'), TokenError);
      assert.throws(
        () => initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) }),
        TokenError,
      );
    });

    it('a grant edited in the stored state (its window moved) opens nothing: stored grants are checked against the root key when read', () => {
      const path = join(directory, 'edited.json');
      initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
      const token = openSoftwareToken(path, '2468');
      token.installGrant(grantFor(token, { notAfterMs: start + 1000 }));
      assert.equal(token.entitlements().length, 1);
      token.close();
      const secrets = openedSecrets(path);
      const grant = Buffer.from(secrets.state.grants[0] as string, 'base64');
      grant.writeBigUInt64BE(BigInt(start + 365 * 24 * hour), 20); // the end of its window, a year on
      const moved = decodeGrant(grant);
      assert.ok(moved.ok && moved.value.notAfterMs === start + 365 * 24 * hour, 'the window did move');
      secrets.state.grants[0] = grant.toString('base64');
      writeFileSync(path, sealedFile(JSON.stringify(secrets)));
      const edited = openSoftwareToken(path, '2468');
      assert.deepEqual(edited.entitlements(), [], 'an edited grant is no entitlement');
      assert.equal(edited.unusableGrants(), 1);
      assert.match(
        edited.refusalFor('news', start + 2000)?.message ?? '',
        /holds no grant for it \(1 stored grant fails its check against the root key and this token's device/,
      );
      edited.close();
    });

    it('a file that is JSON but no token file, or secrets sealed by hand under the PIN that are no token state, is refused with the reason (never a crash)', () => {
      const path = join(directory, 'shapes.json');
      for (const text of ['null', '0', '"token"', '[]', '[1,2]', 'true', '{}', '{"format":null}']) {
        writeFileSync(path, text);
        assert.throws(
          () => openSoftwareToken(path, '2468'),
          (error) =>
            error instanceof TokenError &&
            /not a gatecast-software-token version 1 file|not JSON/.test(error.message),
          text,
        );
      }
      const state = {
        rootPublicKey: ed25519Raw(root.publicKey).toString('hex'),
        grants: [],
        highestStreamTimeUs: 0,
      };
      const device = { devicePrivateKey: 'AAAA' };
      const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
        format: 'der',
        type: 'pkcs8',
      });
      const edwards = generateKeyPairSync('ed25519').privateKey.export({ format: 'der', type: 'pkcs8' });
      const usable = { devicePrivateKey: p256.toString('base64') };
      const refused: Array<[string, RegExp]> = [
        ['null', /not an object/],
        ['[1]', /not an object/],
        ['not json', /not JSON/],
        ['{}', /no device key/],
        [JSON.stringify({ ...device, state: null }), /state is not an object/],
        [JSON.stringify({ ...device, state: { ...state, grants: 'x' } }), /state\.grants/],
        [JSON.stringify({ ...device, state: { ...state, highestStreamTimeUs: -1 } }), /highestStreamTimeUs/],
        [JSON.stringify({ ...device, state: { ...state, purse: 5 } }), /state\.purse is not an object/],
        [
          JSON.stringify({
            ...device,
            state: { ...state, purse: { state: '{}', counter: 0, unreported: null, reported: [] } },
          }),
          /unreported/,
        ],
        [JSON.stringify({ ...device, state: { ...state, memberships: [null] } }), /memberships\[0\]/],
        [JSON.stringify({ ...device, receiptPrivateKey: 7, state }), /receipt key/],
        [JSON.stringify({ ...device, state: { ...state, rootPublicKey: 'zz' } }), /state\.rootPublicKey/],
        [JSON.stringify({ ...device, state: { ...state, rootPublicKey: '' } }), /state\.rootPublicKey/],
        [
          JSON.stringify({
            ...device,
            state: { ...state, purse: { state: 'garbage', counter: 0, unreported: [], reported: [] } },
          }),
          /state\.purse\.state: purse state: not JSON/,
        ],
        [
          JSON.stringify({ devicePrivateKey: '!!!', state }),
          /its device key is not a private key \(PKCS#8\)/,
        ],
        [JSON.stringify({ devicePrivateKey: '', state }), /its device key is not a private key/],
        [
          JSON.stringify({ devicePrivateKey: edwards.toString('base64'), state }),
          /its device key is ed25519, not P-256/,
        ],
        [
          JSON.stringify({ ...usable, receiptPrivateKey: 'garbage', state }),
          /its receipt key is not a private key \(PKCS#8\)/,
        ],
        [
          JSON.stringify({ ...usable, receiptPrivateKey: p256.toString('base64'), state }),
          /its receipt key is ec, not Ed25519/,
        ],
        [
          JSON.stringify({ ...device, state: { ...state, rootPublicKey: 'ff'.repeat(32) } }),
          /state\.rootPublicKey is not a usable Ed25519 public key/,
        ],
        [
          JSON.stringify({ ...device, state: { ...state, rootPublicKey: '00'.repeat(32) } }),
          /state\.rootPublicKey is not a usable Ed25519 public key: it is a point of small order/,
        ],
      ];
      writeFileSync(path, sealedFile(JSON.stringify({ ...usable, state })));
      openSoftwareToken(path, '2468').close(); // the shape this checks for opens
      for (const [secrets, reason] of refused) {
        writeFileSync(path, sealedFile(secrets));
        assert.throws(
          () => openSoftwareToken(path, '2468'),
          (error) => error instanceof TokenError && reason.test(error.message),
          secrets,
        );
      }
    });
  });
});

describe('PKCS#11 tokens (SoftHSM2)', { skip: softhsmMissing('the PKCS#11 token test') }, () => {
  let hsm: SoftHsm;
  let tokens = 0;
  // SoftHSM lists its tokens when the module is initialized: make them all before the first use.
  before(() => {
    hsm = createSoftHsm();
    for (let index = 1; index <= 12; index += 1) {
      hsm.initToken(`gatecast-${index}`, '2468');
    }
    hsm.initToken('gatecast-attributes', '2468');
  });
  after(() => hsm.remove());

  behaviour('PKCS#11', (purse) => {
    tokens += 1;
    const location = { modulePath: softhsmModulePath, tokenLabel: `gatecast-${tokens}`, pin: '2468' };
    initPkcs11Token(location, ed25519Raw(root.publicKey));
    return { open: () => openPkcs11Token(location, purse) };
  });

  it('the device key is sensitive and not extractable; a wrong PIN or a second init is refused', () => {
    const location = { modulePath: softhsmModulePath, tokenLabel: 'gatecast-attributes', pin: '2468' };
    initPkcs11Token(location, ed25519Raw(root.publicKey));
    assert.deepEqual(devicePrivateKeyAttributes(location), {
      sensitive: true,
      extractable: false,
      valueReadable: false,
    });
    assert.throws(
      () => openPkcs11Token({ ...location, pin: '1357' }),
      (error) => error instanceof TokenError && /wrong PIN/.test(error.message),
    );
    assert.throws(() => initPkcs11Token(location, ed25519Raw(root.publicKey)), /already holds/);
    assert.throws(() => openPkcs11Token({ ...location, tokenLabel: 'no-such-token' }), /no token labelled/);
  });
});
