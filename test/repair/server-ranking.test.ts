import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nackTimeoutMsInitial, nackTimeoutMsMax, nackTimeoutMsMin } from '../../src/limits.js';
import { ServerRanking } from '../../src/repair/server-ranking.js';

const at = (port: number) => ({ address: '10.0.0.1', port, family: 4 as const });

describe('the retransmit servers a repair server asks, best first', () => {
  it('keeps one entry per endpoint, configured ones in their order, announced ones after', () => {
    const servers = new ServerRanking();
    const b = servers.add(at(2), 1);
    const a = servers.add(at(1), 0);
    const announced = servers.add(at(3));
    assert.equal(servers.add(at(1), 7), a, 'the same endpoint is the same server');
    assert.equal(servers.size, 3);
    assert.deepEqual(
      servers.ranked().map((s) => s.key),
      [a.key, b.key, announced.key],
    );
  });

  it('answering before timing out, listening before withdrawn, lower loss before higher', () => {
    const servers = new ServerRanking();
    const first = servers.add(at(1), 0);
    const second = servers.add(at(2), 1);
    const third = servers.add(at(3), 2);
    third.lossPpm = 1000;
    second.lossPpm = 10;
    assert.deepEqual(
      servers.ranked().map((s) => s.endpoint.port),
      [1, 2, 3],
    );
    first.listening = false;
    assert.deepEqual(
      servers.ranked().map((s) => s.endpoint.port),
      [2, 3, 1],
    );
    second.consecutiveTimeouts = 5;
    assert.deepEqual(
      servers.ranked().map((s) => s.endpoint.port),
      [3, 1, 2],
    );
    servers.answered(second);
    assert.equal(servers.ranked()[0], second);
  });

  it('times out from the measured round trip (RFC 6298), backs off per round, within the limits', () => {
    const servers = new ServerRanking();
    const server = servers.add(at(1), 0);
    assert.equal(servers.timeoutFor(server, 0), nackTimeoutMsInitial);
    servers.sampleRoundTrip(server, 4);
    // srtt 4, rttvar 2: 2 x 4 + 4 x 2 = 16, below the floor.
    assert.equal(servers.timeoutFor(server, 0), nackTimeoutMsMin);
    servers.sampleRoundTrip(server, 100);
    const base = 2 * (server.srttMs ?? 0) + 4 * server.rttvarMs;
    assert.ok(base > nackTimeoutMsMin);
    assert.equal(servers.timeoutFor(server, 0), base);
    assert.equal(servers.timeoutFor(server, 1), 2 * base, 'one server: every attempt is a round');
    assert.equal(servers.timeoutFor(server, 3), Math.min(nackTimeoutMsMax, 8 * base));
    assert.equal(servers.timeoutFor(server, 100), Math.min(nackTimeoutMsMax, 16 * base), 'at most 16 times');
    servers.add(at(2), 1);
    assert.equal(servers.timeoutFor(server, 1), base, 'two servers: a round is two attempts');
    servers.sampleRoundTrip(server, 60_000);
    assert.equal(servers.timeoutFor(server, 0), nackTimeoutMsMax, 'never above the ceiling');
  });
});
