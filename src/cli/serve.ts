/** `gatecast serve`: the subscription server (and the ledger behind billing) over HTTP. */

import { registerConsole } from '../console/console.js';
import type { WatchedEndpoint } from '../console/live.js';
import { readSecretFile } from '../crypto/control-auth.js';
import {
  consoleStatusSourcesMax,
  consoleTableRowsMax,
  logEventPollIntervalMs,
  setupRefreshMsDefault,
  shutdownGraceMs,
} from '../limits.js';
import { formatEndpoint, parseEndpoint } from '../net/address.js';
import { SocketError } from '../net/errors.js';
import { boundPort, checkListenable } from '../net/http-server.js';
import type { EventLog } from '../net/log.js';
import { readTlsFiles } from '../net/tls.js';
import type { Store } from '../store/database.js';
import { openStore } from '../store/database.js';
import { StoreUrlError } from '../store/errors.js';
import { openSetupSender } from '../subscription/setup-sender.js';
import { closeWithin, endProcessSoon, eventLogFrom, logFormatOption } from './daemon.js';
import { exitOk, UsageError } from './errors.js';
import { formatHelp, type OptionSpecs, optional, parseOptions } from './options.js';
import { readOperatorAuthority } from './restricted.js';
import { metricsFor } from './role-metrics.js';
import { buildServerApp as buildSubscriptionApp, type ServeRole } from './server-app.js';

const serveOptions: OptionSpecs = {
  roles: {
    type: 'string',
    value: 'LIST',
    help: 'subscription (sessions, servers), billing (rates, usage, invoices, export), order (channel orders over one-way links); default subscription,billing',
  },
  'order-lease': {
    type: 'string',
    value: 'SECONDS',
    help: 'order role: how long an order lasts without a renewal (default 60)',
  },
  db: {
    type: 'string',
    value: 'URL',
    help: 'sqlite:PATH (default sqlite:./data/gatecast.db) or postgres://…',
  },
  listen: { type: 'string', value: 'ADDR:PORT', help: 'HTTP address (default 127.0.0.1:8080)' },
  'secret-file': {
    type: 'string',
    value: 'FILE',
    help: 'control secret to send SETUP to retransmit servers with (needed for sources to buy repair)',
  },
  currency: { type: 'string', value: 'CODE', help: 'ISO 4217 currency of new accounts (default EUR)' },
  'tls-cert': { type: 'string', value: 'FILE', help: 'serve HTTPS: PEM certificate chain (with --tls-key)' },
  'tls-key': { type: 'string', value: 'FILE', help: 'serve HTTPS: PEM private key of --tls-cert' },
  'root-key': {
    type: 'string',
    value: 'PEM',
    help: 'the operator root key (Ed25519): signs the grants of token enrollment and purse top-ups',
  },
  products: {
    type: 'string',
    value: 'FILE',
    help: 'with --root-key: the restricted products, a JSON array of {name, serviceKeyFile, sourcePublic, serviceEpoch?, tier?, pricePerPeriod?}',
  },
  'log-format': logFormatOption,
  watch: {
    type: 'string',
    value: 'NAME=URL[,...]',
    help: 'status endpoints of roles to show live in the console, e.g. repair1=http://127.0.0.1:9100/status',
  },
};

const knownRoles = new Set(['subscription', 'billing', 'order']);
/**
 * Logs each transfer posted to the ledger after the start (by this server or another on the same
 * store) as one `charge` event; returns the stop function.
 */
function logCharges(store: Store, log: EventLog): () => void {
  let after = new Date().toISOString();
  let seenAtAfter = new Set<string>();
  let reading = false;
  const read = async () => {
    const rows = await store.db
      .selectFrom('transfers')
      .selectAll()
      .where('created_at', '>=', after)
      .orderBy('created_at')
      .orderBy('id')
      .limit(consoleTableRowsMax)
      .execute();
    for (const row of rows) {
      if (seenAtAfter.has(row.id)) {
        continue;
      }
      log.event('charge', {
        transfer: row.id,
        key: row.idempotency_key,
        debit: row.debit_account,
        credit: row.credit_account,
        amount: Number(row.amount),
        currency: row.currency,
        memo: row.memo,
      });
      if (row.created_at !== after) {
        after = row.created_at;
        seenAtAfter = new Set();
      }
      seenAtAfter.add(row.id);
    }
  };
  const timer = setInterval(() => {
    if (!reading) {
      reading = true;
      read()
        .catch(() => undefined)
        .finally(() => {
          reading = false;
        });
    }
  }, logEventPollIntervalMs);
  return () => clearInterval(timer);
}

/** Parses --watch: NAME=URL pairs of http(s) status endpoints. */
export function parseWatch(text: string | undefined): WatchedEndpoint[] {
  if (text === undefined || text.trim() === '') {
    return [];
  }
  const parts = text.split(',').map((part) => part.trim());
  if (parts.length > consoleStatusSourcesMax) {
    throw new UsageError(`--watch: ${parts.length} endpoints, more than ${consoleStatusSourcesMax}`);
  }
  const names = new Set<string>();
  return parts.map((part) => {
    const at = part.indexOf('=');
    const name = part.slice(0, at);
    const url = part.slice(at + 1);
    if (at < 1 || !/^[A-Za-z0-9._-]{1,64}$/.test(name)) {
      throw new UsageError(`--watch: "${part}" is not NAME=URL (a name of letters, digits, . _ -)`);
    }
    if (!/^https?:\/\/[^/]+/.test(url) || !URL.canParse(url)) {
      throw new UsageError(`--watch: ${name}: "${url}" is not an http:// or https:// URL`);
    }
    if (names.has(name)) {
      throw new UsageError(`--watch: the name ${name} is given twice`);
    }
    names.add(name);
    return { name, url };
  });
}

/** Runs `gatecast serve` until SIGINT or SIGTERM. */
export async function runServe(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, serveOptions);
  if (values.help === true) {
    process.stdout.write(
      formatHelp(
        'gatecast serve [--roles subscription,billing,order] [--db URL] [--listen ADDR:PORT] [--secret-file FILE]',
        'The subscription server and ledger: HTTP+JSON, OpenAPI at GET /openapi.json.\n' +
          'The operator token comes from GATECAST_OPERATOR_TOKEN, or is made and printed once on a fresh store.',
        serveOptions,
      ),
    );
    return exitOk;
  }
  const roles = (optional(values, 'roles') ?? 'subscription,billing').split(',').map((role) => role.trim());
  for (const role of roles) {
    if (!knownRoles.has(role)) {
      throw new UsageError(`--roles: "${role}" is not one of ${[...knownRoles].join(', ')}`);
    }
  }
  const leaseText = optional(values, 'order-lease');
  if (leaseText !== undefined && !/^[1-9][0-9]{0,5}$/.test(leaseText)) {
    throw new UsageError(`--order-lease: "${leaseText}" is not a whole number of seconds from 1 to 999999`);
  }
  const listen = parseEndpoint(optional(values, 'listen') ?? '127.0.0.1:8080', '--listen');
  const currency = optional(values, 'currency') ?? 'EUR';
  if (!/^[A-Z]{3}$/.test(currency)) {
    throw new UsageError(`--currency: "${currency}" is not an ISO 4217 code such as EUR`);
  }
  const tls = readTlsFiles(optional(values, 'tls-cert'), optional(values, 'tls-key'));
  const watch = parseWatch(optional(values, 'watch'));
  const authority = readOperatorAuthority(optional(values, 'root-key'), optional(values, 'products'));
  const log = eventLogFrom(values, 'serve');
  const secretFile = optional(values, 'secret-file');
  const secret = secretFile === undefined ? undefined : readSecretFile(secretFile);
  const dbUrl = optional(values, 'db') ?? 'sqlite:./data/gatecast.db';
  if (!/^(sqlite:.+|postgres(ql)?:\/\/.+)$/.test(dbUrl)) {
    throw new StoreUrlError(`--db: "${dbUrl}" is neither sqlite:PATH nor postgres://…`);
  }
  // Everything is checked before anything is made: no store file, no token, for a port in use.
  await checkListenable(listen, '--listen');
  const setup = secret === undefined ? undefined : await openSetupSender(secret);
  const store = await openStore(dbUrl);
  const app = await buildSubscriptionApp({
    store,
    currency,
    setup,
    roles: roles as ServeRole[],
    order: {
      leaseMs: leaseText === undefined ? undefined : Number(leaseText) * 1000,
      onRouterReport: (link, report) => {
        for (const route of report.added) {
          err.write(`serve: order: link ${link}: routed ${route}\n`);
        }
        for (const route of report.removed) {
          err.write(`serve: order: link ${link}: unrouted ${route}\n`);
        }
        for (const error of report.errors) {
          err.write(`serve: order: link ${link}: ${error}\n`);
        }
      },
    },
    setupRefreshMs: setupRefreshMsDefault,
    authority,
    tls,
    onInternalError: (error) => err.write(`serve: internal error: ${error.stack ?? error.message}\n`),
    operatorToken: process.env.GATECAST_OPERATOR_TOKEN,
    onOperatorTokenCreated: (token) => err.write(`serve: operator token (shown once, keep it): ${token}\n`),
    extend: (app, auth) =>
      registerConsole(app, {
        store,
        operatorOnly: auth.operatorOnly,
        watch,
        metrics: metricsFor('serve'),
      }),
  });
  try {
    await app.listen({ host: listen.address, port: listen.port });
  } catch (error) {
    await app.close();
    await store.close();
    await setup?.[Symbol.asyncDispose]();
    throw new SocketError(
      `--listen: cannot listen on ${formatEndpoint(listen)}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  const port = boundPort(app, listen.port);
  // Listen for the stop before saying we are up: a stop sent on that line is not lost.
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  err.write(
    `serve: ${roles.join(',')} on ${tls === undefined ? 'http' : 'https'}://${listen.family === 6 ? `[${listen.address}]` : listen.address}:${port} (${store.dialect})\n`,
  );
  err.write(
    `serve: console at ${tls === undefined ? 'http' : 'https'}://${listen.family === 6 ? `[${listen.address}]` : listen.address}:${port}/console/ (metrics at /metrics)\n`,
  );
  log.event('start', {
    url: `${tls === undefined ? 'http' : 'https'}://${formatEndpoint({ ...listen, port })}`,
    roles,
  });
  const stopCharges = optional(values, 'log-format') === 'json' ? logCharges(store, log) : undefined;
  await stopped;
  stopCharges?.();
  log.event('stop', {});
  endProcessSoon(exitOk);
  await closeWithin(app.close(), shutdownGraceMs);
  await store.close();
  await setup?.[Symbol.asyncDispose]();
  err.write('stopped\n');
  return exitOk;
}
