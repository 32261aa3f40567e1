/**
 * The one Fastify kit every gatecast HTTP server is built with (subscription server, repair
 * controller, later the order server and the console): schema validation without coercion, an error
 * handler whose every answer carries a documented code (src/protocol/api-errors.ts), a not-found
 * answer of the same shape, request and body timeouts (a slow body is cut), a keep-alive bound and a
 * cap on open connections, so slow or idle clients cannot hold the server's file descriptors.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createTcpServer } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import {
  httpConnectionsCheckIntervalMs,
  httpConnectionsMax,
  httpKeepAliveTimeoutMs,
  httpRequestTimeoutMs,
} from '../limits.js';
import { type ApiErrorCode, apiErrorStatus, errorCodeForStatus } from '../protocol/api-errors.js';
import { type Endpoint, formatEndpoint } from './address.js';
import { SocketError } from './errors.js';
import type { TlsFiles } from './tls.js';

/** Bounds of one HTTP server. */
export interface HttpServerLimits {
  /** Headers and body must arrive within this. */
  readonly requestTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  /** How often the request timeout is checked. */
  readonly connectionsCheckIntervalMs: number;
  /** Open connections at once; more are closed as they arrive. */
  readonly connectionsMax: number;
  readonly bodyBytesMax: number;
}

/** Options of the kit. */
export interface HttpAppOptions {
  readonly tls?: TlsFiles | undefined;
  readonly limits?: Partial<HttpServerLimits> | undefined;
  readonly bodyBytesMax: number;
  /** Told of every internal error (a 500), e.g. to log it. */
  readonly onInternalError?: ((error: Error) => void) | undefined;
}

/** An error an API handler throws to answer with a documented code. */
export class ApiError extends Error {
  readonly error: ApiErrorCode;
  readonly status: number;
  constructor(error: ApiErrorCode, message: string) {
    super(message);
    this.error = error;
    this.status = apiErrorStatus[error];
  }
}

/** Answers with a documented error code. */
export const sendError = (reply: FastifyReply, error: ApiErrorCode, message: string) =>
  reply.code(apiErrorStatus[error]).send({ error, message });

/** Builds a Fastify app (not listening) with the kit's handlers, timeouts and caps. */
export function createHttpApp(options: HttpAppOptions): FastifyInstance {
  const limits: HttpServerLimits = {
    requestTimeoutMs: httpRequestTimeoutMs,
    keepAliveTimeoutMs: httpKeepAliveTimeoutMs,
    connectionsCheckIntervalMs: httpConnectionsCheckIntervalMs,
    connectionsMax: httpConnectionsMax,
    bodyBytesMax: options.bodyBytesMax,
    ...options.limits,
  };
  const app = Fastify({
    logger: false,
    bodyLimit: limits.bodyBytesMax,
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    serverFactory: (handler: (request: IncomingMessage, response: ServerResponse) => void) => {
      const serverOptions = {
        requestTimeout: limits.requestTimeoutMs,
        headersTimeout: Math.min(limits.requestTimeoutMs, 60_000),
        connectionsCheckingInterval: limits.connectionsCheckIntervalMs,
        keepAliveTimeout: limits.keepAliveTimeoutMs,
      };
      const server =
        options.tls === undefined
          ? createHttpServer(serverOptions, handler)
          : createHttpsServer({ ...serverOptions, ...options.tls }, handler);
      server.keepAliveTimeout = limits.keepAliveTimeoutMs;
      server.maxConnections = limits.connectionsMax;
      // A connection with nothing sent at all is idle, not slow: cut it after the request timeout too.
      server.setTimeout(limits.requestTimeoutMs, (socket) => socket.destroy());
      return server;
    },
  }) as unknown as FastifyInstance;
  app.setErrorHandler(
    (error: Error & { validation?: unknown; statusCode?: number; code?: string }, _request, reply) => {
      if (error instanceof ApiError) {
        return sendError(reply, error.error, error.message);
      }
      if (error.validation !== undefined) {
        return sendError(reply, 'invalid-request', error.message);
      }
      const status = error.statusCode ?? 500;
      if (status >= 500) {
        options.onInternalError?.(error); // the operator sees what went wrong; the client sees a 500
        return sendError(reply, 'internal', 'internal error');
      }
      return sendError(reply, errorCodeForStatus(status), error.message);
    },
  );
  // PostgreSQL's text holds no NUL character: one in a path, query or body field was a 500 there
  // (and a name SQLite kept but no terminal shows). Refused for every route, naming the field.
  app.addHook('preValidation', async (request, reply) => {
    const field =
      fieldWithNul(request.params, 'params') ??
      fieldWithNul(request.query, 'querystring') ??
      fieldWithNul(request.body, 'body');
    if (field !== undefined) {
      return sendError(reply, 'invalid-request', `${field}: a NUL character (U+0000) is not accepted`);
    }
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, 'not-found', `no route ${request.method} ${request.url.split('?')[0]}`),
  );
  return app;
}

/** The path of the first string (key or value) holding U+0000 in a parsed request part, if any. */
function fieldWithNul(root: unknown, rootPath: string): string | undefined {
  // Iterative, not recursive: a 16 KiB body can nest thousands of arrays deep. Bodies are
  // bounded (bodyLimit), so the walk is too.
  const pending: Array<[unknown, string]> = [[root, rootPath]];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [value, path] = next;
    if (typeof value === 'string') {
      if (value.includes('\u0000')) {
        return path;
      }
    } else if (typeof value === 'object' && value !== null) {
      for (const [key, child] of Object.entries(value)) {
        const childPath = `${path}/${key.replaceAll('\u0000', '\\u0000')}`;
        if (key.includes('\u0000')) {
          return childPath;
        }
        pending.push([child, childPath]);
      }
    }
  }
  return undefined;
}

/** The port a listening app is bound to. */
export function boundPort(app: FastifyInstance, fallback: number): number {
  const bound = app.server.address();
  return typeof bound === 'object' && bound !== null ? bound.port : fallback;
}

/**
 * Checks that a server could listen at the endpoint, before a command creates anything (a store, a
 * token): a port in use is one line and exit 2, not a half-made start. Throws SocketError.
 */
export async function checkListenable(endpoint: Endpoint, field: string): Promise<void> {
  const probe = createTcpServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new SocketError(
          `${field}: cannot listen on ${formatEndpoint(endpoint)}: ${error.code ?? error.message}`,
        ),
      ),
    );
    probe.listen({ host: endpoint.address, port: endpoint.port, exclusive: true }, () => resolve());
  });
  await new Promise<void>((resolve) => probe.close(() => resolve()));
}
