import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { createRelayDriver } from '../../src/order/relay.js';

/** Polls until the check holds (bounded). */
async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

// Each relay's socket was bound to the wildcard address on its group's port: the kernel hands such
// a socket every group joined on the host on that port, so a channel's datagrams went out on the
// relay group of every other active channel of the same port too (a box that ordered one channel
// was sent another's).
describe('relay driver over loopback', () => {
  it('forwards a channel only onto its own relay group when two channels share a port', async () => {
    const relay = createRelayDriver({ inbound: '127.0.0.1', outbound: '127.0.0.1' });
    const sender = createSocket('udp4');
    try {
      const report = await relay.reconcile([
        { service: 'news', group: '239.82.0.1', port: 5180, source: null, relayTo: '239.82.1.1:5181' },
        { service: 'film', group: '239.82.0.2', port: 5180, source: null, relayTo: '239.82.1.2:5181' },
      ]);
      assert.deepEqual(report.errors, []);
      await new Promise<void>((resolve) => sender.bind(0, '127.0.0.1', () => resolve()));
      sender.setMulticastInterface('127.0.0.1');
      // news only; then a marker on film's group, which its relay must see once as well.
      for (let i = 0; i < 20; i += 1) {
        await new Promise((resolve) => sender.send(Buffer.from(`news ${i}`), 5180, '239.82.0.1', resolve));
      }
      await new Promise((resolve) => sender.send(Buffer.from('film'), 5180, '239.82.0.2', resolve));
      await until('the 21 datagrams relayed', () => relay.counters.received >= 21);
      // Wait for any copy still on its way: a further datagram to news must be the only one after.
      await new Promise((resolve) => sender.send(Buffer.from('news last'), 5180, '239.82.0.1', resolve));
      await until('the last datagram relayed', () => relay.counters.received >= 22);
      assert.equal(relay.counters.received, 22);
      assert.equal(relay.counters.sent, 22);
    } finally {
      sender.close();
      await relay.close();
    }
  });
});

// A relay link whose outbound address is not on the host: the output socket's bind failed with
// EADDRNOTAVAIL as an 'error' event nobody waited for, so the reconcile never resolved and the
// server's one driver pass (every link's routes, every lease refresh) hung behind it for good.
describe('relay driver with an address not on the host', () => {
  it('reports the failing bind and goes on instead of hanging', async () => {
    const relay = createRelayDriver({ inbound: '127.0.0.1', outbound: '192.0.2.77' });
    try {
      const outcome = await Promise.race([
        relay.reconcile([{ service: 'news', group: '239.82.0.9', port: 5182, source: null, relayTo: null }]),
        new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 5_000).unref()),
      ]);
      assert.notEqual(outcome, 'hung');
      if (outcome !== 'hung') {
        assert.deepEqual(outcome.added, []);
        assert.equal(outcome.errors.length, 1);
        assert.match(outcome.errors[0] ?? '', /192\.0\.2\.77/);
      }
    } finally {
      await relay.close();
    }
  });
});
