/**
 * A role's local status endpoint: GET /status answers the role's state as JSON, GET /metrics its
 * Prometheus metrics, GET /health whether the process answers (liveness) and GET /ready whether
 * the role can do its work (readiness: 200, or 503 with the checks that failed). Bound to the
 * address given (loopback by default in the CLI), so it is not reachable from the network unless
 * asked for.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import {
  httpConnectionsCheckIntervalMs,
  httpConnectionsMax,
  httpKeepAliveTimeoutMs,
  httpRequestTimeoutMs,
} from '../limits.js';
import type { Endpoint } from './address.js';
import { SocketError } from './errors.js';
import type { HttpServerLimits } from './http-server.js';

/** A running status endpoint. */
export interface StatusServer extends AsyncDisposable {
  readonly port: number;
  close(): Promise<void>;
}

/** What GET /ready answers: ready only when every check holds; each failed check says why. */
export interface Readiness {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, { ok: boolean; detail?: string | undefined }>>;
}

/** What the endpoint serves besides /status. */
export interface StatusEndpoints {
  /** Renders the Prometheus text format (GET /metrics); without it, /metrics is a 404. */
  readonly metrics?: { readonly contentType: string; text(): Promise<string> } | undefined;
  /** Readiness (GET /ready); without it, ready while the endpoint serves. */
  readonly ready?: (() => Readiness | Promise<Readiness>) | undefined;
  /** Timeouts and the connection cap (default: the limits every HTTP server has, limits.ts). */
  readonly limits?: Partial<Omit<HttpServerLimits, 'bodyBytesMax'>> | undefined;
}

const paths = 'GET /status, /metrics, /health or /ready';

function json(response: ServerResponse, code: number, body: unknown): void {
  response.writeHead(code, { 'content-type': 'application/json' });
  response.end(`${JSON.stringify(body, null, 2)}\n`);
}

/** Serves status() as JSON on GET /status (and GET /), with /metrics, /health and /ready. */
export async function serveStatus(
  endpoint: Endpoint,
  status: () => unknown,
  endpoints: StatusEndpoints = {},
): Promise<StatusServer> {
  const handle = async (method: string | undefined, path: string, response: ServerResponse) => {
    if (method !== 'GET') {
      json(response, 405, { error: `method not allowed: use ${paths}` });
      return;
    }
    switch (path) {
      case '/':
      case '/status':
        json(response, 200, status());
        return;
      case '/health':
        json(response, 200, { status: 'ok' });
        return;
      case '/ready': {
        const readiness = (await endpoints.ready?.()) ?? { ready: true, checks: {} };
        json(response, readiness.ready ? 200 : 503, readiness);
        return;
      }
      case '/metrics':
        if (endpoints.metrics !== undefined) {
          const text = await endpoints.metrics.text();
          response.writeHead(200, { 'content-type': endpoints.metrics.contentType });
          response.end(text);
          return;
        }
        break;
    }
    json(response, 404, { error: `not found: use ${paths}` });
  };
  const limits = {
    requestTimeoutMs: httpRequestTimeoutMs,
    keepAliveTimeoutMs: httpKeepAliveTimeoutMs,
    connectionsCheckIntervalMs: httpConnectionsCheckIntervalMs,
    connectionsMax: httpConnectionsMax,
    ...endpoints.limits,
  };
  // Bounded like every HTTP server (docs/limits.md): a slow or idle client is cut after the request
  // timeout, and past the cap new connections are closed, so no client can hold the process's fds.
  const serverOptions = {
    requestTimeout: limits.requestTimeoutMs,
    headersTimeout: Math.min(limits.requestTimeoutMs, 60_000),
    connectionsCheckingInterval: limits.connectionsCheckIntervalMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
  };
  const server: Server = createServer(serverOptions, (request, response) => {
    const path = (request.url ?? '/').split('?')[0] ?? '/';
    handle(request.method, path, response).catch((error: Error) => {
      if (!response.headersSent) {
        json(response, 500, { error: `internal error: ${error.message}` });
      } else {
        response.destroy();
      }
    });
  });
  server.maxConnections = limits.connectionsMax;
  server.setTimeout(limits.requestTimeoutMs, (socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(new SocketError(`status endpoint ${endpoint.address}:${endpoint.port}: ${error.message}`)),
    );
    server.listen(endpoint.port, endpoint.address, resolve);
  });
  const address = server.address();
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    return closed;
  };
  return {
    port: typeof address === 'object' && address ? address.port : endpoint.port,
    close,
    [Symbol.asyncDispose]: close,
  };
}
