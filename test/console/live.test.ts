/** The console's live figures, derived from the roles' own counters (src/console/live.ts). */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { LiveView, livePoint } from '../../src/console/live.js';
import { consoleStatusBytesMax } from '../../src/limits.js';

describe('live points', () => {
  it('a repair server: loss before repair counts the recovered and the given-up, after only the given-up', () => {
    const point = livePoint(
      'repair',
      { emitted: 100, recovered: 5, unrecoverable: 0 },
      { emitted: 290, recovered: 14, unrecoverable: 10 },
      2000,
      1000,
    );
    assert.equal(point.lossBeforePercent, 9.5);
    assert.equal(point.lossAfterPercent, 5);
  });

  it('an agent: datagrams per second and the gaps it saw, its own or summed over a watching agent’s sessions', () => {
    const single = livePoint(
      'agent',
      { delivered: 100, gapsSeen: 0 },
      { delivered: 298, gapsSeen: 2 },
      0,
      2000,
    );
    assert.equal(single.deliveredPerSecond, 99);
    assert.equal(single.lossAfterPercent, 1);
    const watching = (a: number, b: number, gaps: number) => ({
      sessions: [
        { s1: '239.1.1.1:5000', delivery: { delivered: a, gapsSeen: gaps } },
        { s1: '239.1.1.2:5000', delivery: { delivered: b, gapsSeen: 0 } },
        { s1: '239.1.1.3:5000', delivery: undefined },
      ],
    });
    const summed = livePoint('agent', watching(10, 10, 0), watching(60, 110, 3), 0, 1000);
    assert.equal(summed.deliveredPerSecond, 150);
    assert.equal(summed.lossAfterPercent, 1.961);
    // A delivery that restarted (its counters from zero) counts what it delivered since, nothing negative.
    assert.equal(livePoint('agent', watching(500, 0, 9), watching(20, 0, 0), 0, 1000).deliveredPerSecond, 20);
  });

  it('a watching agent whose delivery stopped or restarted: the others’ figures still count, each per session', () => {
    const a = '239.1.1.1:5000';
    const b = '239.1.1.2:5000';
    const session = (s1: string, delivered: number, gapsSeen = 0) => ({
      s1,
      delivery: { delivered, gapsSeen },
    });
    // A delivered 1000 then stopped (its delivery gone); B went 10 → 20 in one second.
    const stopped = livePoint(
      'agent',
      { sessions: [session(a, 1000), session(b, 10)] },
      { sessions: [{ s1: a, delivery: undefined }, session(b, 20)] },
      0,
      1000,
    );
    assert.equal(stopped.deliveredPerSecond, 10);
    // A restarted on renewal (1000 → 5, 1 gap since), B 20 → 70: 5 + 50 delivered, 1 gap.
    const restarted = livePoint(
      'agent',
      { sessions: [session(a, 1000, 7), session(b, 20)] },
      { sessions: [session(a, 5, 1), session(b, 70)] },
      0,
      1000,
    );
    assert.equal(restarted.deliveredPerSecond, 55);
    assert.equal(restarted.lossAfterPercent, 1.786);
    // A session that started in the interval counts all it delivered; the order in the list does not matter.
    const started = livePoint(
      'agent',
      { sessions: [session(b, 70)] },
      { sessions: [session(b, 80), session(a, 30)] },
      0,
      1000,
    );
    assert.equal(started.deliveredPerSecond, 40);
    // A renewal that moved A to another S2 is a new delivery: all it delivered since counts.
    const from = (s2: string, delivered: number) => ({
      s1: a,
      delivery: { from: s2, delivered, gapsSeen: 0 },
    });
    const moved = livePoint(
      'agent',
      { sessions: [from('239.2.2.1:6000', 100)] },
      { sessions: [from('239.2.2.2:6000', 300)] },
      0,
      1000,
    );
    assert.equal(moved.deliveredPerSecond, 300);
  });

  it('a repair server that restarted (its counters from zero) shows the loss since the restart', () => {
    const point = livePoint(
      'repair',
      { emitted: 5000, recovered: 50, unrecoverable: 5 },
      { emitted: 190, recovered: 10, unrecoverable: 10 },
      0,
      1000,
    );
    assert.equal(point.lossBeforePercent, 10);
    assert.equal(point.lossAfterPercent, 5);
  });
});

describe('a watched endpoint whose status is malformed', () => {
  // A status from another version, or from a process that is not a gatecast role, must not stop
  // the console: entries that are not objects count nothing, the others count as usual.
  const hostileSessions: unknown[] = [null, 7, 'x', [], { delivery: null }, { delivery: 5 }];

  it('an agent with sessions that are not objects: the valid ones are summed, the others count nothing', () => {
    const status = (delivered: number) => ({
      sessions: [...hostileSessions, { s1: '239.1.1.1:5000', delivery: { delivered, gapsSeen: 0 } }],
    });
    const point = livePoint('agent', status(10), status(110), 0, 1000);
    assert.equal(point.deliveredPerSecond, 100);
    assert.equal(point.lossAfterPercent, 0);
  });

  it('a retransmit server with sessions that are not objects: only the valid ones are graphed', () => {
    const point = livePoint(
      'retransmit',
      undefined,
      { sessions: [...hostileSessions, { group: '239.1.1.1:5000', lossPercent: 2.5 }] },
      0,
      1000,
    );
    assert.deepEqual(point.sessionLossPercent, { '239.1.1.1:5000': 2.5 });
  });

  it('the LiveView reads such an endpoint without failing the poll', async () => {
    const server = createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ role: 'retransmit', sessions: [null] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const view = new LiveView([{ name: 'odd', url: `http://127.0.0.1:${port}/status` }]);
      await view.poll();
      await view.poll();
      const [endpoint] = view.endpoints;
      assert.equal(endpoint?.reachable, true);
      assert.equal(endpoint?.history.length, 2);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('a watched endpoint whose answer is too long', () => {
  for (const chunked of [false, true]) {
    it(`is shown as failing, read no further than consoleStatusBytesMax (${chunked ? 'no length given' : 'length declared'})`, async () => {
      let written = 0;
      const server = createServer((_request, response) => {
        const chunk = Buffer.alloc(64 * 1024, 0x20);
        const total = consoleStatusBytesMax * 4;
        response.writeHead(200, {
          'content-type': 'application/json',
          ...(chunked ? {} : { 'content-length': String(total) }),
        });
        const more = () => {
          while (written < total && !response.destroyed) {
            written += chunk.length;
            if (!response.write(chunk)) {
              response.once('drain', more);
              return;
            }
          }
          response.end();
        };
        response.on('error', () => undefined);
        more();
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const { port } = server.address() as AddressInfo;
        const view = new LiveView([{ name: 'long', url: `http://127.0.0.1:${port}/status` }]);
        await view.poll();
        const [endpoint] = view.endpoints;
        assert.equal(endpoint?.reachable, false);
        assert.match(endpoint?.error ?? '', /longer than \d+ bytes/);
        assert.equal(endpoint?.history.length, 0);
      } finally {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      }
    });
  }
});
