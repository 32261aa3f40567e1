/**
 * A role's local status endpoint: GET /status answers the role's state as JSON. Bound to the
 * address given (loopback by default in the CLI), so it is not reachable from the network unless
 * asked for.
 */
import { createServer, type Server } from 'node:http';
import type { Endpoint } from './address.js';
import { SocketError } from './errors.js';

/** A running status endpoint. */
export interface StatusServer extends AsyncDisposable {
  readonly port: number;
  close(): Promise<void>;
}

/** Serves status() as JSON on GET /status (and GET /). */
export async function serveStatus(endpoint: Endpoint, status: () => unknown): Promise<StatusServer> {
  const server: Server = createServer((request, response) => {
    if (request.method !== 'GET' || (request.url !== '/status' && request.url !== '/')) {
      response.writeHead(404, { 'content-type': 'application/json' });
      response.end('{"error":"not found: use GET /status"}\n');
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(`${JSON.stringify(status(), null, 2)}\n`);
  });
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
