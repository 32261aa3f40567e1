import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Type } from '@sinclair/typebox';
import { apiAnswerBytesMax } from '../../src/limits.js';
import { requestApi, sendApi } from '../../src/net/api-client.js';
import { eventually } from '../helpers/wait.js';

/** Far longer than any answer a client may hold: the server sends until the client hangs up. */
const endlessBytes = apiAnswerBytesMax * 64;
const requestTimeoutMs = 60_000;

/** A server whose answer never ends (or declares `declaredBytes`), counting what it wrote. */
function streamingServer(declaredBytes?: number) {
  const state = { written: 0, hungUp: false };
  const server = createServer((_request, response) => {
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    response.writeHead(200, {
      'content-type': 'application/json',
      ...(declaredBytes === undefined ? {} : { 'content-length': String(declaredBytes) }),
    });
    response.on('error', () => undefined);
    response.on('close', () => {
      state.hungUp = true;
    });
    const more = () => {
      while (state.written < endlessBytes && !response.destroyed) {
        state.written += chunk.length;
        if (!response.write(chunk)) {
          response.once('drain', more);
          return;
        }
      }
    };
    more();
  });
  return { server, state };
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function shut(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

describe('an API answer longer than apiAnswerBytesMax is refused as it streams, not read whole', () => {
  for (const declared of [undefined, endlessBytes]) {
    const how = declared === undefined ? 'no length given' : 'length declared';
    it(`is invalid-answer and the client hangs up near the limit (${how})`, async () => {
      const { server, state } = streamingServer(declared);
      const base = await listen(server);
      try {
        const answer = await requestApi(`${base}/v1/x`, Type.Object({}), {
          token: 'gct_test_token',
          timeoutMs: requestTimeoutMs,
        });
        assert.equal(answer.ok, false);
        assert.equal(answer.ok ? undefined : answer.error, 'invalid-answer');
        assert.match(answer.ok ? '' : answer.message, /larger than a client reads/);
        assert.ok(await eventually(() => state.hungUp, 10_000), 'the client hung up');
        // What the server got out before the hang-up: the limit plus what socket buffers hold,
        // never the whole (endless) answer.
        const bytesAllowed = declared === undefined ? apiAnswerBytesMax + 8 * 1024 * 1024 : 8 * 1024 * 1024;
        assert.ok(state.written < bytesAllowed, `${state.written} bytes written before the hang-up`);
      } finally {
        await shut(server);
      }
    });
  }

  let server: Server;
  let base: string;
  before(async () => {
    server = createServer((_request, response) => {
      const body = JSON.stringify({ padding: 'x'.repeat(1024 * 1024) });
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(body);
    });
    base = await listen(server);
  });
  after(() => shut(server));

  it('an answer within the limit is read whole', async () => {
    const answer = await sendApi(`${base}/v1/x`, { token: 'gct_test_token', timeoutMs: requestTimeoutMs });
    assert.equal(answer.status, 200);
    assert.equal((JSON.parse(answer.text ?? '{}') as { padding?: string }).padding?.length, 1024 * 1024);
  });
});

describe('a server that takes the request and never answers (or stops half-way) costs the timeout, then says so', () => {
  const sockets = new Set<import('node:net').Socket>();
  let silent: Server;
  let base: string;
  before(async () => {
    // Takes the request and answers nothing, or sends the headers and part of the body, then nothing.
    silent = createServer((request, response) => {
      sockets.add(request.socket);
      if (request.url === '/v1/half') {
        response.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' });
        response.write('{"answer": ');
      }
    });
    base = await listen(silent);
  });
  after(async () => {
    for (const socket of sockets) {
      socket.destroy();
    }
    await shut(silent);
  });

  for (const path of ['/v1/silent', '/v1/half']) {
    it(`${path}: FetchFailed within the bound, naming the request and the time waited`, async () => {
      const startedMs = performance.now();
      await assert.rejects(
        requestApi(`${base}${path}`, Type.Object({}), {
          token: 'gct_test_token',
          method: 'POST',
          body: {},
          timeoutMs: 500,
        }),
        (error: Error) => {
          assert.equal(error.constructor.name, 'FetchFailed');
          assert.equal(error.message, `no answer to POST ${path} within 0.5 s`);
          return true;
        },
      );
      const waitedMs = performance.now() - startedMs;
      assert.ok(waitedMs >= 450 && waitedMs < 15_000, `waited ${waitedMs} ms`);
    });
  }

  it("a caller's own abort is not reported as a timeout", async () => {
    const controller = new AbortController();
    const sending = sendApi(`${base}/v1/silent`, {
      token: 'gct_test_token',
      timeoutMs: 60_000,
      signal: controller.signal,
    });
    controller.abort();
    await assert.rejects(sending, (error: Error) => !error.message.includes('no answer'));
  });
});
