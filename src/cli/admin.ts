/**
 * `gatecast admin`: the operator's command line over the subscription server's API — against a
 * running server (--server URL, a token from --token-file or GATECAST_TOKEN) or straight against
 * the store (--db URL, the API run in-process as the operator). Each command is one API request;
 * the answer is printed as JSON (CSV for export), a refusal as one line naming the reason.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { type TSchema, Type } from '@sinclair/typebox';
import { readSecretFile } from '../crypto/control-auth.js';
import { checkText, sendApi } from '../net/api-client.js';
import { FetchFailed } from '../net/http.js';
import {
  Balance,
  BillingRunResult,
  Charge,
  CheckResult,
  Entitlement,
  EntitlementList,
  Invoice,
  LedgerCsv,
  PartyCreated,
  Rates,
  Server,
  ServerList,
  ServiceList,
  Session,
  SessionList,
  TokenList,
  UsageEventList,
  Whoami,
} from '../protocol/api-subscription.js';
import { RevokedEntitlement } from '../protocol/api-tokens.js';
import { openStore } from '../store/database.js';
import { openSetupSender } from '../subscription/setup-sender.js';
import { orderAdminHelp, orderAnswerSchema, ordersCommand } from './admin-orders.js';
import { adminSettings } from './command-settings.js';
import { exitIncomplete, exitOk, UsageError } from './errors.js';
import { formatHelp, parseCommand, parseServerUrl } from './options.js';
import { buildServerApp as buildSubscriptionApp } from './server-app.js';
import { readToken } from './token.js';

/** The server refused a request or could not be reached. */
export class RequestError extends Error {
  readonly code = 'GATECAST_ERR_REQUEST';
}

const help = `${formatHelp(
  'gatecast admin (--server URL [--token-file FILE] | --db URL) COMMAND [ARGS] [options]',
  `The operator's command line for the subscription server and the ledger. Prints JSON.

commands:
  subscriber add NAME                       create a subscriber; prints its token once
  source add NAME                           create a source; prints its token once
  grant SUBSCRIBER SERVICE [--session ID] [--from ISO] [--to ISO] [--monthly MINOR]
  entitlements SUBSCRIBER                   list a subscriber's entitlements
  revoke ENTITLEMENT                        end an entitlement now; its tokens leave the member trees (rekeyed)
  check SUBSCRIBER SERVICE [--session ID]   may this subscriber have SERVICE now?
  server add retransmit|repair NAME ADDR:PORT
  servers                                   the registry of retransmit and repair servers
  session add NAME GROUP:PORT [--source ADDR] [--price free|subscription|pay-as-you-go]
                              [--repair] [--owner SOURCE]
  session end ID                            end a session (its repair is torn down and charged)
  sessions                                  list sessions
  rates [--set NAME=MINOR,...]              show (or set) the rate card
  usage ACCOUNT KIND QUANTITY --key KEY [--session ID] [--packets N]
                                            report usage (rated into a charge, once per KEY)
  events ACCOUNT YYYY-MM                    the usage events of an account in a month
  services                                  the services that can be granted
  balance ACCOUNT
  invoice ACCOUNT YYYY-MM
  bill YYYY-MM                              charge the subscriptions of a month (idempotent)
  export [--out FILE]                       the ledger as CSV
  tokens                                    every party's token: kind, name, created, revoked
  token revoke PARTY                        revoke a party's token (it no longer authenticates)
  whoami
${orderAdminHelp.trimEnd()}`,
  adminSettings,
)}
exit codes: 0 ok, 1 a billing run that refused an entitlement (named on standard error),
2 bad usage or a refused request, 70 internal error
`;

interface Answer {
  status: number;
  body: string;
}
type Send = (
  method: string,
  path: string,
  body?: unknown,
  headers?: Record<string, string>,
) => Promise<Answer>;

/** Runs `gatecast admin`. */
export async function runAdmin(argv: string[], out: NodeJS.WriteStream): Promise<number> {
  const { values, positionals } = parseCommand(argv, adminSettings);
  if (values.help === true || positionals.length === 0) {
    process.stdout.write(help);
    return values.help === true ? exitOk : 2;
  }
  if ((values.server === undefined) === (values.db === undefined)) {
    throw new UsageError('give one of --server URL (a running server) or --db URL (the store)');
  }
  const target = await connect(values);
  try {
    const answer = await command(positionals, values, target.send);
    // Every answer is checked against the contract the server answers with (src/protocol/api-*.ts).
    const checked = checkText(answer.status, answer.body, answerSchema(positionals));
    if (!checked.ok) {
      throw new RequestError(
        checked.error === 'invalid-answer' && answer.status >= 400
          ? `${answer.status} ${answer.body.trim().slice(0, 200)}`
          : `${answer.status} ${checked.error}: ${checked.message}`,
      );
    }
    const text =
      positionals[0] === 'export'
        ? answer.body
        : positionals[0] === 'token'
          ? `${JSON.stringify({ revoked: positionals[2] })}\n` // 204: revoked, nothing to show
          : `${JSON.stringify(checked.body, null, 2)}\n`;
    if (typeof values.out === 'string') {
      writeFileSync(values.out, text, { mode: 0o600 }); // the ledger: money, for the operator only
      chmodSync(values.out, 0o600);
    } else {
      out.write(text.endsWith('\n') ? text : `${text}\n`);
    }
    return billRefusals(positionals, checked.body);
  } finally {
    await target.close();
  }
}

/**
 * A billing run that refused an entitlement did not bill the month whole: each refusal is one line
 * on standard error and the exit is 1 (as `token receipts` when billing refuses a receipt).
 */
function billRefusals(positionals: readonly string[], body: unknown): number {
  const refused = positionals[0] === 'bill' ? (body as { refused?: unknown }).refused : undefined;
  if (!Array.isArray(refused) || refused.length === 0) {
    return exitOk;
  }
  for (const { entitlement, error, message } of refused as Array<Record<string, string>>) {
    process.stderr.write(`gatecast admin: bill: entitlement ${entitlement} refused: ${error}: ${message}\n`);
  }
  return exitIncomplete;
}

/** Opens the target: HTTP to a server, or the API in-process over the store. */
async function connect(values: Record<string, string | boolean | undefined>) {
  if (typeof values.server === 'string') {
    const base = parseServerUrl(values.server, '--server');
    const tokenFile = values['token-file'];
    const token = readToken(typeof tokenFile === 'string' ? tokenFile : undefined);
    // The one typed client of the API contract (src/net/api-client.ts): its transport here, its
    // check of the answer in runAdmin, against the schema of the command's route.
    const send: Send = async (method, path, body, headers = {}) => {
      try {
        const answer = await sendApi(`${base}${path}`, { token, method, body, headers, timeoutMs: 30_000 });
        if (answer.text === undefined) {
          throw new RequestError(`${answer.status}: the answer is larger than a client reads`);
        }
        return { status: answer.status, body: answer.text };
      } catch (error) {
        if (error instanceof FetchFailed) {
          throw new RequestError(`cannot reach ${base}: ${error.message}`);
        }
        throw error;
      }
    };
    return { send, close: async () => undefined };
  }
  const token = `gct_admin_${randomBytes(24).toString('base64url')}`;
  // The secret is read before anything opens: a missing or short --secret-file leaves nothing open.
  const secretFile = values['secret-file'];
  const secret = typeof secretFile === 'string' ? readSecretFile(secretFile) : undefined;
  const store = await openStore(String(values.db));
  let setup: Awaited<ReturnType<typeof openSetupSender>> | undefined;
  let app: Awaited<ReturnType<typeof buildSubscriptionApp>>;
  try {
    setup = secret === undefined ? undefined : await openSetupSender(secret);
    app = await buildSubscriptionApp({
      store,
      trustedOperatorToken: token,
      setup,
      roles: ['subscription', 'billing', 'order'],
      order: { background: false },
    });
  } catch (error) {
    // What was opened is closed, in reverse order, or the store's pool keeps the process alive.
    await setup?.[Symbol.asyncDispose]();
    await store.close();
    throw error;
  }
  const send: Send = async (method, path, body, headers = {}) => {
    const response = await app.inject({
      method: method as 'GET',
      url: path,
      headers: { authorization: `Bearer ${token}`, ...headers },
      ...(body === undefined ? {} : { payload: body as object }),
    });
    return { status: response.statusCode, body: response.body };
  };
  return {
    send,
    close: async () => {
      await app.close();
      await setup?.[Symbol.asyncDispose]();
      await store.close();
    },
  };
}

/** Maps a command line to one API request. */
async function command(
  words: string[],
  values: Record<string, string | boolean | undefined>,
  send: Send,
): Promise<Answer> {
  const [verb, ...args] = words;
  const arg = (index: number, name: string) => {
    const value = args[index];
    if (value === undefined) {
      throw new UsageError(`${verb}: ${name} is missing (gatecast admin --help)`);
    }
    return value;
  };
  const text = (name: string) => (typeof values[name] === 'string' ? (values[name] as string) : undefined);
  const integer = (name: string, value: string | undefined) => {
    if (value === undefined) {
      return undefined;
    }
    if (!/^\d+$/.test(value)) {
      throw new UsageError(`--${name}: "${value}" is not a whole number`);
    }
    return Number(value);
  };
  const query = (entries: Record<string, string | undefined>) =>
    new URLSearchParams(
      Object.entries(entries).filter((entry): entry is [string, string] => entry[1] !== undefined),
    ).toString();
  switch (verb) {
    case 'subscriber':
    case 'source':
      if (arg(0, 'add') !== 'add') {
        throw new UsageError(`${verb}: only "add NAME"`);
      }
      return send('POST', `/v1/${verb}s`, { name: arg(1, 'NAME') });
    case 'grant':
      return send('POST', '/v1/entitlements', {
        subscriber: arg(0, 'SUBSCRIBER'),
        service: arg(1, 'SERVICE'),
        session: text('session'),
        from: text('from'),
        to: text('to'),
        monthly: integer('monthly', text('monthly')),
      });

    case 'entitlements':
      return send('GET', `/v1/entitlements?${query({ subscriber: arg(0, 'SUBSCRIBER') })}`);
    case 'revoke':
      return send('DELETE', `/v1/entitlements/${encodeURIComponent(arg(0, 'ENTITLEMENT'))}`);
    case 'check':
      return send(
        'GET',
        `/v1/entitlements/check?${query({ subscriber: arg(0, 'SUBSCRIBER'), service: arg(1, 'SERVICE'), session: text('session') })}`,
      );

    case 'server':
      if (arg(0, 'add') !== 'add') {
        throw new UsageError('server: only "add KIND NAME ADDR:PORT"');
      }
      return send('POST', '/v1/servers', {
        kind: arg(1, 'KIND'),
        name: arg(2, 'NAME'),
        address: arg(3, 'ADDR:PORT'),
      });

    case 'servers':
      return send('GET', '/v1/servers');
    case 'session': {
      const action = arg(0, 'add or end');
      if (action === 'end') {
        return send('POST', `/v1/sessions/${encodeURIComponent(arg(1, 'ID'))}/end`);
      }
      if (action !== 'add') {
        throw new UsageError('session: "add NAME GROUP:PORT" or "end ID"');
      }
      return send('POST', '/v1/sessions', {
        name: arg(1, 'NAME'),
        group: arg(2, 'GROUP:PORT'),
        source: text('source'),
        price: text('price'),
        repair: values.repair === true ? true : undefined,
        owner: text('owner'),
      });
    }
    case 'sessions':
      return send('GET', '/v1/sessions');
    case 'rates': {
      const set = text('set');
      if (set === undefined) {
        return send('GET', '/v1/rates');
      }
      const update: Record<string, number> = {};
      for (const pair of set.split(',')) {
        const [name, value, extra] = pair.split('=');
        if (name === undefined || value === undefined || extra !== undefined) {
          throw new UsageError(`--set: "${pair}" is not NAME=MINOR`);
        }
        update[name.trim()] = integer('set', value.trim()) as number;
      }
      return send('PUT', '/v1/rates', update);
    }
    case 'usage': {
      const key = text('key');
      if (key === undefined) {
        throw new UsageError('usage: --key KEY is required (the idempotency key)');
      }
      return send(
        'POST',
        '/v1/usage',
        {
          account: arg(0, 'ACCOUNT'),
          kind: arg(1, 'KIND'),
          quantity: integer('quantity', arg(2, 'QUANTITY')),
          session: text('session'),
          packets: integer('packets', text('packets')),
        },
        { 'idempotency-key': key },
      );
    }
    case 'events':
      return send('GET', `/v1/usage?${query({ account: arg(0, 'ACCOUNT'), period: arg(1, 'YYYY-MM') })}`);

    case 'services':
      return send('GET', '/v1/services');
    case 'balance':
      return send('GET', `/v1/accounts/${encodeURIComponent(arg(0, 'ACCOUNT'))}/balance`);
    case 'invoice':
      return send('GET', `/v1/invoices?${query({ account: arg(0, 'ACCOUNT'), period: arg(1, 'YYYY-MM') })}`);

    case 'bill':
      return send('POST', '/v1/billing/run', { period: arg(0, 'YYYY-MM') });
    case 'export':
      return send('GET', '/v1/ledger.csv');
    case 'whoami':
      return send('GET', '/v1/whoami');
    case 'orders':
      return ordersCommand(args, values, send);
    case 'tokens':
      return send('GET', '/v1/tokens');
    case 'token': {
      if (arg(0, 'revoke') !== 'revoke') {
        throw new UsageError('token: only "revoke PARTY"');
      }
      return send('DELETE', `/v1/tokens/${encodeURIComponent(arg(1, 'PARTY'))}`);
    }
    default:
      throw new UsageError(`unknown command "${verb}" (gatecast admin --help)`);
  }
}

/** The contract's schema of a command's answer (src/protocol/api-*.ts): the one its route answers with. */
function answerSchema(words: readonly string[]): TSchema {
  const [verb, action] = words;
  switch (verb) {
    case 'subscriber':
    case 'source':
      return PartyCreated;
    case 'grant':
      return Entitlement;
    case 'entitlements':
      return EntitlementList;
    case 'revoke':
      return RevokedEntitlement;
    case 'check':
      return CheckResult;
    case 'server':
      return Server;
    case 'servers':
      return ServerList;
    case 'session':
      return Session;
    case 'sessions':
      return SessionList;
    case 'rates':
      return Rates;
    case 'usage':
      return Charge;
    case 'events':
      return UsageEventList;
    case 'services':
      return ServiceList;
    case 'balance':
      return Balance;
    case 'invoice':
      return Invoice;
    case 'bill':
      return BillingRunResult;
    case 'export':
      return LedgerCsv;
    case 'whoami':
      return Whoami;
    case 'tokens':
      return TokenList;
    case 'token':
      return Type.Null(); // 204, no body
    case 'orders':
      return orderAnswerSchema(action ?? 'list');
    default:
      throw new UsageError(`unknown command "${verb}" (gatecast admin --help)`);
  }
}
