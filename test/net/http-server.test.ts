import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp as buildSubscriptionApp } from '../../src/cli/server-app.js';
import { boundPort } from '../../src/net/http-server.js';
import { openStore, type Store } from '../../src/store/database.js';

const operatorToken = 'operator-token-for-the-http-kit-test-01';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Opens a connection that starts a POST and sends its body one byte at a time, slowly. */
function slowClient(port: number, intervalMs: number) {
  const socket: Socket = connect(port, '127.0.0.1');
  let closedAt: number | undefined;
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closedAt = Date.now();
  });
  socket.write(
    `POST /v1/subscribers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${operatorToken}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n`,
  );
  const timer = setInterval(() => {
    if (!socket.destroyed) {
      socket.write('{');
    }
  }, intervalMs);
  return {
    closed: () => closedAt !== undefined,
    destroy: () => {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

describe('every HTTP server is bounded: request timeouts and a connection cap (the subscription server)', () => {
  let store: Store;
  let app: FastifyInstance;
  let port: number;
  before(async () => {
    store = await openStore('sqlite::memory:');
    app = await buildSubscriptionApp({
      store,
      operatorToken,
      httpLimits: { requestTimeoutMs: 600, connectionsCheckIntervalMs: 100, connectionsMax: 20 },
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = boundPort(app, 0);
  });
  after(async () => {
    await app?.close();
    await store?.close();
  });

  it('slow bodies (1 byte per 200 ms) are closed once the request timeout passes; nothing is written', async () => {
    const clients = Array.from({ length: 10 }, () => slowClient(port, 200));
    try {
      await sleep(300);
      assert.equal(clients.filter((c) => c.closed()).length, 0, 'still within the timeout');
      await sleep(1_000);
      assert.equal(clients.filter((c) => c.closed()).length, 10, 'every slow body was cut');
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
    const clients = Array.from({ length: 20 }, () => slowClient(port, 200));
    try {
      await sleep(150);
      const refused = slowClient(port, 200);
      await sleep(150);
      assert.equal(refused.closed(), true, 'the 21st connection is closed at once');
      refused.destroy();
      await sleep(1_200);
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
