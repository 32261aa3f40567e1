import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp as buildSubscriptionApp } from '../../src/cli/server-app.js';
import { boundPort } from '../../src/net/http-server.js';
import { openStore, type Store } from '../../src/store/database.js';
import { waitUntil } from '../helpers/wait.js';

const operatorToken = 'operator-token-for-the-http-kit-test-01';
const requestTimeoutMs = 1_000;
const connectionsMax = 20;

/** Opens a connection that starts a POST and sends its body one byte at a time, slowly. */
function slowClient(port: number, intervalMs: number) {
  const socket: Socket = connect(port, '127.0.0.1');
  let connectedAt: number | undefined;
  let closedAt: number | undefined;
  socket.on('error', () => undefined);
  const connected = new Promise<void>((resolve) =>
    socket.once('connect', () => {
      connectedAt = performance.now();
      resolve();
    }),
  );
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closedAt = performance.now();
      resolve();
    }),
  );
  socket.write(
    `POST /v1/subscribers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${operatorToken}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n`,
  );
  const timer = setInterval(() => {
    if (!socket.destroyed) {
      socket.write('{');
    }
  }, intervalMs);
  return {
    connected,
    closed,
    isClosed: () => closedAt !== undefined,
    /** Milliseconds from connecting to being closed by the server. */
    openMs: () => (closedAt ?? Number.NaN) - (connectedAt ?? Number.NaN),
    destroy: () => {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

/** Resolves with `promise`, or rejects naming `what` when `timeoutMs` passes first. */
async function within<T>(what: string, promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('every HTTP server is bounded: request timeouts and a connection cap (the subscription server)', () => {
  let store: Store;
  let app: FastifyInstance;
  let port: number;
  let connectionsOpen = 0;
  before(async () => {
    store = await openStore('sqlite::memory:');
    app = await buildSubscriptionApp({
      store,
      operatorToken,
      httpLimits: { requestTimeoutMs, connectionsCheckIntervalMs: 100, connectionsMax },
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = boundPort(app, 0);
    // Counts the connections the server holds, as it sees them (the cap closes extra ones at once).
    app.server.on('connection', (socket: Socket) => {
      connectionsOpen++;
      socket.once('close', () => {
        connectionsOpen--;
      });
    });
  });
  after(async () => {
    await app?.close();
    await store?.close();
  });

  it('slow bodies (1 byte per 200 ms) are closed once the request timeout (1 s) passes; nothing is written', async () => {
    const clients = Array.from({ length: 10 }, () => slowClient(port, 200));
    try {
      await within('the slow clients to connect', Promise.all(clients.map((c) => c.connected)), 10_000);
      await within('the server to cut every slow body', Promise.all(clients.map((c) => c.closed)), 10_000);
      for (const client of clients) {
        // The server measures from the headers it read, after the client connected; timers may fire
        // a millisecond early, hence the small margin.
        assert.ok(
          client.openMs() >= requestTimeoutMs - 20,
          `cut after ${client.openMs()} ms, not before the timeout`,
        );
      }
      assert.equal(
        (await store.db.selectFrom('parties').select('id').execute()).length,
        1,
        'the operator only',
      );
    } finally {
      for (const client of clients) {
        client.destroy();
      }
    }
  });

  it('past the connection cap new connections are closed; once the slow ones are cut, requests are served again', async () => {
    const clients = Array.from({ length: connectionsMax }, () => slowClient(port, 200));
    try {
      await within('the slow clients to connect', Promise.all(clients.map((c) => c.connected)), 10_000);
      await waitUntil(
        'the server to hold every slow connection',
        () => connectionsOpen === connectionsMax,
        10_000,
      );
      const refused = slowClient(port, 200);
      await within('the connection past the cap to be closed', refused.closed, 10_000);
      refused.destroy();
      assert.equal(
        clients.filter((c) => c.isClosed()).length,
        0,
        'the connection past the cap was closed while the slow ones were still open',
      );
      await within('the server to cut every slow body', Promise.all(clients.map((c) => c.closed)), 10_000);
      const response = await fetch(`http://127.0.0.1:${port}/v1/whoami`, {
        headers: { authorization: `Bearer ${operatorToken}` },
      });
      assert.equal(response.status, 200, 'a legitimate request is served');
    } finally {
      for (const client of clients) {
        client.destroy();
      }
    }
  });
});
