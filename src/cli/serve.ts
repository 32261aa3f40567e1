/** `gatecast serve`: the subscription server (and the ledger behind billing) over HTTP. */
import { parseEndpoint } from '../net/address.js';
import { openStore } from '../store/database.js';
import { buildSubscriptionApp } from '../subscription/app.js';
import { exitOk, UsageError } from './errors.js';
import { formatHelp, type OptionSpecs, optional, parseOptions } from './options.js';

const serveOptions: OptionSpecs = {
  roles: { type: 'string', value: 'LIST', help: 'roles to run: subscription,billing (default both)' },
  db: {
    type: 'string',
    value: 'URL',
    help: 'sqlite:PATH (default sqlite:./data/gatecast.db) or postgres://…',
  },
  listen: { type: 'string', value: 'ADDR:PORT', help: 'HTTP address (default 127.0.0.1:8080)' },
};

const knownRoles = new Set(['subscription', 'billing']);

/** Runs `gatecast serve` until SIGINT or SIGTERM. */
export async function runServe(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, serveOptions);
  if (values.help === true) {
    process.stdout.write(
      formatHelp(
        'gatecast serve [--roles subscription,billing] [--db URL] [--listen ADDR:PORT]',
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
  const listen = parseEndpoint(optional(values, 'listen') ?? '127.0.0.1:8080', '--listen');
  const store = await openStore(optional(values, 'db') ?? 'sqlite:./data/gatecast.db');
  const app = await buildSubscriptionApp({
    store,
    operatorToken: process.env.GATECAST_OPERATOR_TOKEN,
    onOperatorTokenCreated: (token) => err.write(`serve: operator token (shown once, keep it): ${token}\n`),
  });
  await app.listen({ host: listen.address, port: listen.port });
  err.write(
    `serve: ${roles.join(',')} on http://${listen.family === 6 ? `[${listen.address}]` : listen.address}:${listen.port} (${store.dialect})\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await app.close();
  await store.close();
  err.write('stopped\n');
  return exitOk;
}
