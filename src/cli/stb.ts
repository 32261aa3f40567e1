/**
 * `gatecast stb`: the set-top box's side of flow D (docs/ordering.md). It orders a service over the
 * return network and, while it runs, renews the order the way a box does (a box that stops renewing
 * loses the order when its lease runs out); it cancels, renews or lists orders on request.
 */
import { type ApiAnswer, requestApi } from '../net/api-client.js';
import { FetchFailed } from '../net/http.js';
import { Order, OrderList } from '../protocol/api-order.js';
import { stbSettings } from './command-settings.js';
import { exitOk, exitUsage, UsageError } from './errors.js';
import { formatHelp, optional, parseOptions, parseSeconds, parseServerUrl } from './options.js';
import { readToken } from './token.js';

const usage =
  'gatecast stb order|renew|cancel|list --server URL (--token TOKEN | --token-file FILE) [--service NAME]';
const requestTimeoutMs = 10_000;

/** Runs `gatecast stb`. */
export async function runStb(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const [action, ...rest] = argv;
  if (action === undefined || action === '--help' || action === '-h') {
    process.stdout.write(
      formatHelp(
        usage,
        'A set-top box: orders a channel over the return network and renews it while it runs;\n' +
          'on SIGINT or SIGTERM it cancels the order (a box that is cut off simply stops renewing).',
        stbSettings,
      ),
    );
    return action === undefined ? exitUsage : exitOk;
  }
  const values = parseOptions(rest, stbSettings);
  const serverText = optional(values, 'server');
  if (serverText === undefined) {
    throw new UsageError('--server URL is required');
  }
  const server = parseServerUrl(serverText, '--server');
  const token = optional(values, 'token') ?? readToken(optional(values, 'token-file'));
  const call = <T extends typeof Order | typeof OrderList>(
    schema: T,
    method: string,
    path: string,
    body?: unknown,
  ) =>
    requestApi(`${server}${path}`, schema, { token, method, body, timeoutMs: requestTimeoutMs }).catch(
      (error: unknown) => {
        if (error instanceof FetchFailed) {
          throw new UsageError(`cannot reach ${server}: ${error.message}`);
        }
        throw error;
      },
    );
  const renewEveryMs = renewEvery(optional(values, 'renew-every'));
  const service = optional(values, 'service');
  const needService = () => {
    if (service === undefined) {
      throw new UsageError(`${action}: --service NAME is required`);
    }
    return service;
  };
  /** The id of --order, or of the active order of --service. */
  const orderId = async (): Promise<string> => {
    const given = optional(values, 'order');
    if (given !== undefined) {
      return given;
    }
    const name = needService();
    const listed = await call(OrderList, 'GET', `/v1/order/orders?service=${encodeURIComponent(name)}`);
    if (!listed.ok) {
      throw refused(listed);
    }
    const active = listed.body[0];
    if (active === undefined) {
      throw new UsageError(`${action}: this box holds no active order of ${name}`);
    }
    return active.id;
  };
  switch (action) {
    case 'list': {
      const listed = await call(OrderList, 'GET', '/v1/order/orders');
      if (!listed.ok) {
        throw refused(listed);
      }
      process.stdout.write(`${JSON.stringify(listed.body, null, 2)}\n`);
      return exitOk;
    }
    case 'renew':
    case 'cancel': {
      const id = await orderId();
      const answer =
        action === 'renew'
          ? await call(Order, 'POST', `/v1/order/orders/${encodeURIComponent(id)}/renew`)
          : await call(Order, 'DELETE', `/v1/order/orders/${encodeURIComponent(id)}`);
      if (!answer.ok) {
        throw refused(answer);
      }
      process.stdout.write(`${JSON.stringify(answer.body)}\n`);
      err.write(
        `stb: ${action === 'renew' ? 'renewed' : 'cancelled'} order ${id} of ${answer.body.service}\n`,
      );
      return exitOk;
    }
    case 'order':
      return runOrder(needService(), values, renewEveryMs, call, err);
    default:
      throw new UsageError(`unknown action "${action}" (${usage})`);
  }
}

type Call = <T extends typeof Order | typeof OrderList>(
  schema: T,
  method: string,
  path: string,
  body?: unknown,
) => Promise<ApiAnswer<import('@sinclair/typebox').Static<T>>>;

/** A refusal as one line naming the server's code. */
function refused(answer: { status: number; error: string; message: string }): UsageError {
  return new UsageError(`the order server refused: ${answer.status} ${answer.error}: ${answer.message}`);
}

/**
 * --renew-every in ms (undefined: a third of the lease), checked before any request: 0 would renew
 * in a loop without pause, and past what a timer can wait Node fires at once.
 */
function renewEvery(text: string | undefined): number | undefined {
  if (text === undefined) {
    return undefined;
  }
  const ms = parseSeconds(text, '--renew-every');
  if (ms < 1000) {
    throw new UsageError(`--renew-every: ${text} is shorter than 1 second`);
  }
  return ms;
}

/**
 * How often a box renews: as asked, or a third of the lease, so that two renewals may be lost before
 * it lapses (at least every 100 ms: a lease of a second is renewed well within it).
 */
export function renewPeriodMs(leaseMs: number, renewEveryMs: number | undefined): number {
  return renewEveryMs ?? Math.max(100, Math.floor(leaseMs / 3));
}

/** Orders, then renews until stopped; cancels on SIGINT or SIGTERM. */
async function runOrder(
  service: string,
  values: Record<string, string | boolean | undefined>,
  renewEveryMs: number | undefined,
  call: Call,
  err: NodeJS.WriteStream,
): Promise<number> {
  const ordered = await call(Order, 'POST', '/v1/order/orders', { service });
  if (!ordered.ok) {
    throw refused(ordered);
  }
  let order = ordered.body;
  process.stdout.write(`${JSON.stringify(order)}\n`);
  const leaseMs = Date.parse(order.expiresAt) - Date.parse(order.renewedAt);
  const everyMs = renewPeriodMs(leaseMs, renewEveryMs);
  if (everyMs >= leaseMs) {
    err.write(
      `stb: renewing every ${everyMs / 1000} s, not within the order's lease of ${leaseMs / 1000} s: the order lapses between renewals\n`,
    );
  }
  err.write(
    `stb: ordered ${service} (order ${order.id}${ordered.status === 200 ? ', already held' : ''}), lease until ${order.expiresAt}\n`,
  );
  if (values.once === true) {
    return exitOk;
  }
  err.write(`stb: renewing every ${(everyMs / 1000).toFixed(1)} s until stopped\n`);
  let stopping = false;
  let wake: () => void = () => undefined;
  const stop = () => {
    stopping = true;
    wake();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  while (!stopping) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, everyMs);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    if (stopping) {
      break;
    }
    try {
      const renewed = await call(Order, 'POST', `/v1/order/orders/${encodeURIComponent(order.id)}/renew`);
      if (renewed.ok) {
        order = renewed.body;
        continue;
      }
      // The order ended (it expired while the server was unreachable, or was pre-empted): order again.
      err.write(
        `stb: renewal refused (${renewed.status} ${renewed.error}: ${renewed.message}); ordering again\n`,
      );
      const again = await call(Order, 'POST', '/v1/order/orders', { service });
      if (again.ok) {
        order = again.body;
        err.write(`stb: ordered ${service} again (order ${order.id})\n`);
      } else {
        err.write(`stb: order refused: ${again.status} ${again.error}: ${again.message}\n`);
      }
    } catch (error) {
      err.write(`stb: ${(error as Error).message}; retrying\n`);
    }
  }
  const cancelled = await call(Order, 'DELETE', `/v1/order/orders/${encodeURIComponent(order.id)}`).catch(
    (error: Error) => ({ ok: false as const, status: 0, error: 'unreachable', message: error.message }),
  );
  if (!cancelled.ok) {
    err.write(`stb: could not cancel order ${order.id}: ${cancelled.error}: ${cancelled.message}\n`);
    return exitUsage;
  }
  err.write(`stb: cancelled order ${order.id} of ${service}\n`);
  return exitOk;
}
