import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { type StatusServer, serveStatus } from '../../src/net/status-http.js';
import { eventually } from '../helpers/wait.js';

const requestTimeoutMs = 2_000;

/** A client that sends its request headers one byte at a time, slowly (never finishing them). */
function slowClient(port: number, intervalMs: number) {
  const socket: Socket = connect(port, '127.0.0.1');
  const openedAt = performance.now();
  let closedAt: number | undefined;
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closedAt = performance.now();
  });
  const connected = new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  socket.write('GET /status HTTP/1.1\r\nhost: x\r\nx-slow: ');
  const timer = setInterval(() => {
    if (!socket.destroyed) {
      socket.write('a');
    }
  }, intervalMs);
  return {
    connected,
    closed: () => closedAt !== undefined,
    openMs: () => (closedAt ?? performance.now()) - openedAt,
    destroy: () => {
      clearInterval(timer);
      socket.destroy();
    },
  };
}

describe('a role’s status endpoint is bounded like every HTTP server: request timeout and connection cap', () => {
  let server: StatusServer;
  before(async () => {
    server = await serveStatus({ address: '127.0.0.1', port: 0, family: 4 }, () => ({ role: 'test' }), {
      limits: { requestTimeoutMs, connectionsCheckIntervalMs: 100, connectionsMax: 20 },
    });
  });
  after(async () => {
    await server?.close();
  });

  it('slow headers (1 byte per 200 ms) are cut once the 2 s request timeout passes, not before', async () => {
    const clients = Array.from({ length: 10 }, () => slowClient(server.port, 200));
    try {
      assert.ok(
        await eventually(() => clients.every((c) => c.closed()), 20_000),
        'every slow client was cut',
      );
      for (const client of clients) {
        assert.ok(
          client.openMs() >= requestTimeoutMs - 50,
          `cut after ${client.openMs()} ms, not before the timeout`,
        );
      }
      const response = await fetch(`http://127.0.0.1:${server.port}/health`);
      assert.equal(response.status, 200, 'a legitimate request is served');
    } finally {
      for (const client of clients) {
        client.destroy();
      }
    }
  });

  it('past the connection cap a new connection is closed; once the slow ones are cut, requests are served again', async () => {
    const clients = Array.from({ length: 20 }, () => slowClient(server.port, 200));
    try {
      await Promise.all(clients.map((c) => c.connected));
      const refused = slowClient(server.port, 200);
      assert.ok(await eventually(() => refused.closed(), 10_000), 'the 21st connection is closed');
      assert.ok(refused.openMs() < requestTimeoutMs, 'closed for the cap, not by the request timeout');
      refused.destroy();
      assert.ok(await eventually(() => clients.every((c) => c.closed()), 20_000), 'the slow ones were cut');
      const response = await fetch(`http://127.0.0.1:${server.port}/health`);
      assert.equal(response.status, 200, 'a legitimate request is served');
    } finally {
      for (const client of clients) {
        client.destroy();
      }
    }
  });
});
