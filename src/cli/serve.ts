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
import { closeWithin, endProcessSoon, eventLogFrom, type RoleStarter } from './daemon.js';
import { exitIncomplete, exitOk, UsageError } from './errors.js';
import { formatHelp, type OptionValues, optional, parseOptions, required } from './options.js';
import { readOperatorAuthority } from './restricted.js';
import { metricsFor } from './role-metrics.js';
import { roleSettingsByName, serveSettings } from './role-settings.js';
import { buildServerApp as buildSubscriptionApp, type ServeRole } from './server-app.js';

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
  const values = parseOptions(argv, serveSettings);
  if (values.help === true) {
    process.stdout.write(
      formatHelp(
        'gatecast serve [--roles subscription,billing,order] [--db URL] [--listen ADDR:PORT] [--secret-file FILE]',
        'The subscription server and ledger: HTTP+JSON, OpenAPI at GET /openapi.json.\n' +
          'The operator token comes from GATECAST_OPERATOR_TOKEN, or is made and printed once on a fresh store.',
        serveSettings,
      ),
    );
    return exitOk;
  }
  const start = await prepareServe(values);
  // Listen for the stop before saying we are up: a stop sent on that line is not lost.
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  const role = await start(err);
  await stopped;
  endProcessSoon(exitOk);
  // Bounded below endProcessSoon's deadline, so a stop that did not finish is said and not exit 0.
  const closed = await closeWithin(role.close(), 2 * shutdownGraceMs - 1_000);
  if (!closed.ok) {
    err.write(`serve: did not stop cleanly: ${closed.reason}\n`);
    return exitIncomplete;
  }
  err.write('stopped\n');
  return exitOk;
}

/**
 * Checks the subscription server's settings (and that its address is free); the starter opens
 * the store and listens. Its close stops taking requests, then closes the store.
 */
export async function prepareServe(values: OptionValues): Promise<RoleStarter> {
  const roles = required(values, 'roles')
    .split(',')
    .map((role) => role.trim());
  for (const role of roles) {
    if (!knownRoles.has(role)) {
      throw new UsageError(`--roles: "${role}" is not one of ${[...knownRoles].join(', ')}`);
    }
  }
  const leaseText = required(values, 'order-lease');
  if (!/^[1-9][0-9]{0,5}$/.test(leaseText)) {
    throw new UsageError(`--order-lease: "${leaseText}" is not a whole number of seconds from 1 to 999999`);
  }
  const listen = parseEndpoint(required(values, 'listen'), '--listen');
  const currency = required(values, 'currency');
  if (!/^[A-Z]{3}$/.test(currency)) {
    throw new UsageError(`--currency: "${currency}" is not an ISO 4217 code such as EUR`);
  }
  const tls = readTlsFiles(optional(values, 'tls-cert'), optional(values, 'tls-key'));
  const watch = parseWatch(optional(values, 'watch'));
  const authority = readOperatorAuthority(optional(values, 'root-key'), optional(values, 'products'));
  const log = eventLogFrom(values, 'serve');
  const secretFile = optional(values, 'secret-file');
  const secret = secretFile === undefined ? undefined : readSecretFile(secretFile);
  const dbUrl = required(values, 'db');
  if (!/^(sqlite:.+|postgres(ql)?:\/\/.+)$/.test(dbUrl)) {
    throw new StoreUrlError(`--db: "${dbUrl}" is neither sqlite:PATH nor postgres://…`);
  }
  // Everything is checked before anything is made: no store file, no token, for a port in use.
  await checkListenable(listen, '--listen');
  return async (err) => {
    const setup = secret === undefined ? undefined : await openSetupSender(secret);
    let store: Store | undefined;
    try {
      store = await openStore(dbUrl);
    } catch (error) {
      await setup?.[Symbol.asyncDispose]();
      throw error;
    }
    const opened = store;
    const app = await buildSubscriptionApp({
      store: opened,
      currency,
      setup,
      roles: roles as ServeRole[],
      order: {
        leaseMs: Number(leaseText) * 1000,
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
          store: opened,
          operatorOnly: auth.operatorOnly,
          watch,
          metrics: metricsFor('serve'),
          settingsSchemas: roleSettingsByName,
        }),
    }).catch(async (error: unknown) => {
      // What was opened is closed, in reverse order, or the store's pool keeps the process alive.
      await opened.close();
      await setup?.[Symbol.asyncDispose]();
      throw error;
    });
    try {
      await app.listen({ host: listen.address, port: listen.port });
    } catch (error) {
      await app.close();
      await opened.close();
      await setup?.[Symbol.asyncDispose]();
      throw new SocketError(
        `--listen: cannot listen on ${formatEndpoint(listen)}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
      );
    }
    const port = boundPort(app, listen.port);
    const url = `${tls === undefined ? 'http' : 'https'}://${listen.family === 6 ? `[${listen.address}]` : listen.address}:${port}`;
    err.write(`serve: ${roles.join(',')} on ${url} (${opened.dialect})\n`);
    err.write(`serve: console at ${url}/console/ (metrics at /metrics)\n`);
    log.event('start', { url, roles });
    const stopCharges = optional(values, 'log-format') === 'json' ? logCharges(opened, log) : undefined;
    let closing: Promise<void> | undefined;
    return {
      command: 'serve',
      logsItsOwnEvents: true,
      status: () => ({ url, roles, store: opened.dialect }),
      line: () => `serve: ${roles.join(',')} on ${url} (${opened.dialect})`,
      ready: async () => {
        try {
          await opened.db.selectFrom('rates').select('name').limit(1).execute();
          return { ok: true };
        } catch (error) {
          return { ok: false, detail: `the store does not answer: ${(error as Error).message}` };
        }
      },
      close: () => {
        closing ??= (async () => {
          stopCharges?.();
          log.event('stop', {});
          const appClosed = await closeWithin(app.close(), shutdownGraceMs);
          await opened.close();
          await setup?.[Symbol.asyncDispose]();
          if (!appClosed.ok) {
            throw new Error(`its HTTP server: ${appClosed.reason}`);
          }
        })();
        return closing;
      },
    };
  };
}
