/**
 * `gatecast token`: make keys, initialize a token (software or PKCS#11), issue and install grants,
 * and show what a token is entitled to (docs/security.md, "Key hierarchy").
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Static, TObject, TSchema } from '@sinclair/typebox';
import { ed25519Raw, generateSigningKey, issueGrant } from '../crypto/authority.js';
import { initPkcs11Token } from '../crypto/pkcs11-token.js';
import { initSoftwareToken } from '../crypto/software-token.js';
import type { Token } from '../crypto/token.js';
import { receiptBatchMax, secretFileBytesMax } from '../limits.js';
import { type ApiAnswer, requestApi } from '../net/api-client.js';
import { readBoundedFile } from '../net/files.js';
import { FetchFailed } from '../net/http.js';
import { ReceiptBatchResult, TopUpResult } from '../protocol/api-receipts.js';
import { EnrollResult } from '../protocol/api-tokens.js';
import { decodeGrant, PriceModel, p256PointBytes } from '../protocol/restricted.js';
import { tokenCommandSettings } from './command-settings.js';
import { exitIncomplete, exitOk, exitUsage, UsageError } from './errors.js';
import {
  formatHelp,
  type OptionValues,
  optional,
  parseInteger,
  parseOptions,
  parseServerUrl,
  required,
} from './options.js';
import {
  openToken,
  readEd25519PublicFile,
  readHexFile,
  readPin,
  readSigningKey,
  tokenLocation,
} from './restricted.js';
import { readToken } from './token.js';

const usage = `usage: gatecast token <keys|init|grant|install|enroll|topup|receipts|show> [options]

  keys      make an operator root key and a source key (and a service key) in a directory
  init      initialize a token: --token FILE (software, encrypted under the PIN) or --token pkcs11:LABEL
  grant     issue a grant (the service key wrapped to one token, with its window and rate card)
  install   install a grant into a token
  enroll    register the token with the subscription server and install the grants it issues
            (and the token's place in each product's member tree, for rekeys on leave)
  topup     move money from the subscriber's account to the token's purse, and credit it
  receipts  report the purse's receipts to billing
  show      list a token's entitlements, member trees, its purse and its device public key
`;

/** What a subcommand does, from its line of the usage text. */
function subcommandLine(subcommand: string): string {
  const line = usage.split('\n').find((candidate) => candidate.startsWith(`  ${subcommand} `));
  return line === undefined ? '' : line.trim().slice(subcommand.length).trim();
}

function writeNew(path: string, text: string, mode = 0o600): void {
  if (existsSync(path)) {
    throw new UsageError(`--out: ${path} exists; it is never overwritten`);
  }
  writeFileSync(path, text, { mode, flag: 'wx' });
}

/**
 * An ISO 8601 date and time (2027-06-01T00:00:00Z, with seconds, fractions or an offset), or a
 * date alone (midnight UTC). Date.parse alone takes "Dec 25 2027" in local time, "0" as 2000 and
 * 2027-02-30 as 2 March: each is refused here, naming the field.
 */
function parseTime(text: string, field: string): number {
  const match =
    /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2}))?$/.exec(
      text,
    );
  // A time matches only with its zone (Z or an offset): without one it would be read in local time.
  const ms = match === null ? Number.NaN : Date.parse(text);
  const [year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0] = (match?.slice(1, 7) ?? []).map(
    (part) => (part === undefined ? 0 : Number(part)),
  );
  const real =
    month >= 1 &&
    month <= 12 &&
    day >= 1 &&
    day <= new Date(Date.UTC(year, month, 0)).getUTCDate() &&
    hour <= 23 &&
    minute <= 59 &&
    second <= 59;
  if (!Number.isFinite(ms) || ms < 0 || !real) {
    throw new UsageError(
      `${field}: "${text}" is not an ISO 8601 date and time with its zone (e.g. 2027-06-01T00:00:00Z, or a date: 2027-06-01)`,
    );
  }
  return ms;
}

function runKeys(argv: string[], out: NodeJS.WriteStream): number {
  const values = parseOptions(argv, tokenCommandSettings.keys);
  const directory = required(values, 'out');
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  for (const name of ['root', 'source']) {
    const pair = generateSigningKey();
    writeNew(
      join(directory, `${name}.pem`),
      pair.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    );
    writeNew(join(directory, `${name}.pub`), `${ed25519Raw(pair.publicKey).toString('hex')}\n`, 0o644);
  }
  const service = optional(values, 'service');
  if (service !== undefined) {
    writeNew(join(directory, `${service}.key`), `${randomBytes(32).toString('hex')}\n`);
  }
  out.write(
    `keys written to ${directory}: root.pem, root.pub, source.pem, source.pub${service === undefined ? '' : `, ${service}.key`}\n`,
  );
  return exitOk;
}

function runInit(argv: string[], out: NodeJS.WriteStream): number {
  const values = parseOptions(argv, tokenCommandSettings.init);
  const location = tokenLocation(values);
  if (location === undefined) {
    throw new UsageError('--token FILE or --token pkcs11:LABEL is required');
  }
  // A root key no signer could hold would refuse every grant: said now, not at the first grant.
  const rootPublicKey = readEd25519PublicFile(required(values, 'root-public'), '--root-public');
  const pin = readPin(values);
  if (location.kind === 'software') {
    initSoftwareToken({ path: location.path, pin, rootPublicKey });
  } else {
    initPkcs11Token({ modulePath: location.modulePath, tokenLabel: location.label, pin }, rootPublicKey);
  }
  const token = openToken(location, pin);
  try {
    out.write(`${token.devicePoint().toString('hex')}\n`);
  } finally {
    token.close();
  }
  process.stderr.write(
    `token initialized (${location.kind}); its device public key is above: give it to the operator for grants\n`,
  );
  return exitOk;
}

function runGrant(argv: string[], out: NodeJS.WriteStream): number {
  const values = parseOptions(argv, tokenCommandSettings.grant);
  const root = readSigningKey(required(values, 'root-key'), '--root-key');
  const devicePoint = readHexFile(required(values, 'device'), '--device', p256PointBytes);
  const service = required(values, 'service');
  const serviceKey = readHexFile(required(values, 'service-key-file'), '--service-key-file', 32);
  const sourcePublicKey = readEd25519PublicFile(required(values, 'source-public'), '--source-public');
  const fromText = optional(values, 'from');
  const notBeforeMs = fromText === undefined ? Date.now() : parseTime(fromText, '--from');
  const notAfterMs = parseTime(required(values, 'until'), '--until');
  if (notAfterMs <= Date.now()) {
    throw new UsageError(
      `--until ${new Date(notAfterMs).toISOString()} has passed: the grant would open nothing (give a later --until)`,
    );
  }
  if (notAfterMs <= notBeforeMs) {
    throw new UsageError('--until must be after --from');
  }
  const priceText = optional(values, 'price-per-period');
  const priceMinor =
    priceText === undefined ? 0 : parseInteger(priceText, '--price-per-period', 0, Number.MAX_SAFE_INTEGER);
  const currency = required(values, 'currency');
  if (!/^[A-Z]{3}$/.test(currency)) {
    throw new UsageError('--currency: three capital letters (ISO 4217)');
  }
  const grant = issueGrant(
    {
      devicePoint,
      serviceKey,
      tier: parseInteger(required(values, 'tier'), '--tier', 0, 255),
      service,
      serviceEpoch: parseInteger(required(values, 'service-epoch'), '--service-epoch', 0, 0xffffffff),
      notBeforeMs,
      notAfterMs,
      priceModel: priceText === undefined ? PriceModel.subscription : PriceModel.perCryptoPeriod,
      currency,
      priceMinor,
      sourcePublicKey,
    },
    root.privateKey,
  );
  const path = required(values, 'out');
  writeNew(path, grant.toString('base64'), 0o644);
  out.write(
    `grant for ${service} written to ${path}: ${new Date(notBeforeMs).toISOString()} to ${new Date(notAfterMs).toISOString()}\n`,
  );
  return exitOk;
}

function runInstall(argv: string[], out: NodeJS.WriteStream): number {
  const values = parseOptions(argv, tokenCommandSettings.install);
  const location = tokenLocation(values);
  if (location === undefined) {
    throw new UsageError('--token FILE or --token pkcs11:LABEL is required');
  }
  const grantFile = required(values, 'grant');
  let grant: Buffer;
  try {
    grant = Buffer.from(readBoundedFile(grantFile, secretFileBytesMax).toString('utf8').trim(), 'base64');
  } catch (error) {
    throw new UsageError(`--grant: ${(error as Error).message}`);
  }
  // A grant that has ended would take the place of the token's grant for the same service and
  // epoch, which may still run: refused before the token is opened, nothing changed.
  const decoded = decodeGrant(grant);
  if (decoded.ok && decoded.value.notAfterMs <= Date.now()) {
    throw new UsageError(
      `--grant: this grant for ${decoded.value.service} ended at ${new Date(decoded.value.notAfterMs).toISOString()}: not installed (the token keeps what it holds)`,
    );
  }
  const token = openToken(location, readPin(values));
  try {
    // The token keeps one grant per service and epoch: a renewal that starts later would take the
    // running one's place now and leave the token without the service until it starts.
    const now = Date.now();
    const renewal = decoded.ok && decoded.value.notBeforeMs > now ? decoded.value : undefined;
    const running = renewal
      ? token
          .entitlements()
          .find(
            (held) =>
              held.service === renewal.service &&
              held.serviceEpoch === renewal.serviceEpoch &&
              held.notBeforeMs <= now &&
              now < held.notAfterMs,
          )
      : undefined;
    if (renewal !== undefined && running !== undefined) {
      throw new UsageError(
        `--grant: the token's grant for ${running.service} (epoch ${running.serviceEpoch}) runs until ${new Date(running.notAfterMs).toISOString()}, and this one starts at ${new Date(renewal.notBeforeMs).toISOString()}: installed now it would leave the token without ${running.service} until then; not installed (install it once the running one has ended)`,
      );
    }
    const entitlement = token.installGrant(grant);
    out.write(
      `installed: ${entitlement.service} (epoch ${entitlement.serviceEpoch}, tier ${entitlement.tier}) from ${new Date(entitlement.notBeforeMs).toISOString()} until ${new Date(entitlement.notAfterMs).toISOString()}\n`,
    );
  } finally {
    token.close();
  }
  return exitOk;
}

const requestTimeoutMs = 10_000;

/** Opens the token of --token (required). */
function tokenOf(values: OptionValues): Token {
  const location = tokenLocation(values);
  if (location === undefined) {
    throw new UsageError('--token FILE or --token pkcs11:LABEL is required');
  }
  return openToken(location, readPin(values));
}

/** One request to the subscription server of --subscription, checked against the contract. */
function serverCall(values: OptionValues) {
  const server = parseServerUrl(required(values, 'subscription'), '--subscription');
  const bearer = readToken(optional(values, 'token-file'));
  return async <T extends TSchema>(schema: T, method: string, path: string, body?: unknown) => {
    let answer: ApiAnswer<Static<T>>;
    try {
      answer = await requestApi(`${server}${path}`, schema, {
        token: bearer,
        method,
        body,
        timeoutMs: requestTimeoutMs,
      });
    } catch (error) {
      if (error instanceof FetchFailed) {
        throw new UsageError(`--subscription: cannot reach ${server}: ${error.message}`);
      }
      throw error;
    }
    if (!answer.ok) {
      throw new UsageError(
        `the subscription server refused: ${answer.status} ${answer.error}: ${answer.message}`,
      );
    }
    return answer.body;
  };
}

async function runEnroll(argv: string[], out: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, tokenCommandSettings.enroll);
  const call = serverCall(values);
  const token = tokenOf(values);
  try {
    const enrollment = token.prepareEnrollment();
    const subscriber = optional(values, 'subscriber');
    const result = await call(EnrollResult, 'POST', '/v1/enrollments', {
      device: enrollment.device.toString('hex'),
      receiptKey: enrollment.receiptPublicKey.toString('base64url'),
      ...(subscriber === undefined ? {} : { subscriber }),
    });
    if (result.token !== token.tokenId) {
      throw new UsageError(`the subscription server enrolled token ${result.token}, not ${token.tokenId}`);
    }
    token.ensurePurse(result.currency);
    out.write(
      `enrolled token ${result.token} for subscriber ${result.subscriber} (purse account ${result.account}, ${result.currency})\n`,
    );
    for (const granted of result.grants) {
      const entitlement = token.installGrant(Buffer.from(granted.grant, 'base64'));
      const price =
        entitlement.priceModel === 'subscription'
          ? 'subscription'
          : `pay-as-you-go, ${entitlement.priceMinor} ${entitlement.currency} minor units per crypto-period`;
      out.write(
        `installed: ${entitlement.service} (epoch ${entitlement.serviceEpoch}, tier ${entitlement.tier}, ${price}) from ${new Date(entitlement.notBeforeMs).toISOString()} until ${new Date(entitlement.notAfterMs).toISOString()}\n`,
      );
      if (granted.membership !== undefined) {
        const member = token.installMembership(Buffer.from(granted.membership, 'base64'));
        out.write(
          `member of ${member.service}'s key tree ${member.treeId} (slot ${member.slot}, tree epoch ${member.treeEpoch})\n`,
        );
      }
    }
    if (result.grants.length === 0) {
      out.write('no grants: the subscriber holds no entitlement to a restricted product\n');
    }
  } finally {
    token.close();
  }
  return exitOk;
}

async function runTopUp(argv: string[], out: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, tokenCommandSettings.topup);
  const amount = parseInteger(required(values, 'amount'), '--amount', 1, Number.MAX_SAFE_INTEGER);
  const call = serverCall(values);
  const token = tokenOf(values);
  try {
    const purse = token.purseView();
    if (purse === undefined) {
      throw new UsageError('the token has no purse: enroll it first (gatecast token enroll)');
    }
    const sequence = purse.topUps + 1;
    const result = await call(
      TopUpResult,
      'POST',
      `/v1/purses/${encodeURIComponent(token.tokenId)}/top-ups`,
      {
        sequence,
        amount,
      },
    );
    if (result.topUp === undefined) {
      throw new UsageError(
        `the ledger moved ${result.amount} to the purse (top-up ${sequence}), but the server holds no root key to sign it: the token cannot credit it`,
      );
    }
    const credited = await token.creditTopUp(Buffer.from(result.topUp, 'base64url'));
    const after = token.purseView();
    out.write(
      `${credited.credited ? 'credited' : 'already credited'}: top-up ${credited.sequence} of ${credited.amount} ${result.currency} minor units (ledger transfer ${result.transfer}); balance ${after?.balance ?? 0}\n`,
    );
  } finally {
    token.close();
  }
  return exitOk;
}

async function runReceipts(argv: string[], out: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, tokenCommandSettings.receipts);
  const call = serverCall(values);
  const token = tokenOf(values);
  let charged = 0;
  let replayed = 0;
  let refused = 0;
  const problems: string[] = [];
  try {
    const receipts = token.receiptsToReport(values.resend === true);
    for (let at = 0; at < receipts.length; at += receiptBatchMax) {
      const batch = receipts.slice(at, at + receiptBatchMax);
      const result = await call(ReceiptBatchResult, 'POST', '/v1/receipts/batch', {
        receipts: batch.map((bytes) => bytes.toString('base64url')),
      });
      charged += result.charged;
      replayed += result.replayed;
      refused += result.refused;
      const taken = batch.filter((_, index) => {
        const status = result.results[index]?.status;
        if (status !== 200 && status !== 201) {
          problems.push(result.results[index]?.message ?? `receipt ${at + index + 1}: status ${status}`);
          return false;
        }
        return true;
      });
      token.receiptsReported(taken);
    }
  } finally {
    token.close();
  }
  out.write(`receipts: ${charged} charged, ${replayed} charged before, ${refused} refused\n`);
  for (const problem of problems.slice(0, 10)) {
    process.stderr.write(`refused: ${problem}\n`);
  }
  return refused > 0 ? exitIncomplete : exitOk;
}

function runShow(argv: string[], out: NodeJS.WriteStream): number {
  const values = parseOptions(argv, tokenCommandSettings.show);
  const location = tokenLocation(values);
  if (location === undefined) {
    throw new UsageError('--token FILE or --token pkcs11:LABEL is required');
  }
  const token = openToken(location, readPin(values));
  try {
    const shown = {
      kind: token.kind,
      device: token.devicePoint().toString('hex'),
      token: token.tokenId,
      entitlements: token.entitlements(),
      // Stored grants that open nothing (edited, or not a grant): counted, so none vanishes unsaid.
      unusableGrants: token.unusableGrants(),
      memberships: token.memberships().map((member) => ({ ...member, removedAt: member.removedAt ?? null })),
      purse: token.purseView() ?? null,
      highestStreamTimeUs: token.highestStreamTimeUs,
    };
    out.write(`${JSON.stringify(shown, null, values.json === true ? 0 : 2)}\n`);
  } finally {
    token.close();
  }
  return exitOk;
}

/** Runs `gatecast token SUBCOMMAND`; returns the exit code. */
export async function runToken(argv: string[], out: NodeJS.WriteStream): Promise<number> {
  const [subcommand, ...rest] = argv;
  const schemas: Readonly<Record<string, TObject | undefined>> = tokenCommandSettings;
  // Only the table's own subcommands: `constructor` or `__proto__` is an unknown one, not Object's.
  const schema =
    subcommand !== undefined && Object.hasOwn(schemas, subcommand) ? schemas[subcommand] : undefined;
  if (schema !== undefined && (rest.includes('--help') || rest.includes('-h'))) {
    process.stdout.write(
      formatHelp(`gatecast token ${subcommand} [options]`, subcommandLine(subcommand ?? ''), schema),
    );
    return exitOk;
  }
  switch (subcommand) {
    case 'keys':
      return runKeys(rest, out);
    case 'init':
      return runInit(rest, out);
    case 'grant':
      return runGrant(rest, out);
    case 'install':
      return runInstall(rest, out);
    case 'enroll':
      return await runEnroll(rest, out);
    case 'topup':
      return await runTopUp(rest, out);
    case 'receipts':
      return await runReceipts(rest, out);
    case 'show':
      return runShow(rest, out);
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(usage);
      return subcommand === undefined ? exitUsage : exitOk;
    default:
      process.stderr.write(`gatecast token: unknown subcommand "${subcommand}"\n\n${usage}`);
      return exitUsage;
  }
}
