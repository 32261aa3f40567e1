/**
 * Objects a role touches once a packet keep V8's fast properties. A getter written in an object
 * literal puts the object in dictionary mode, and a getter added to each new object with
 * Object.defineProperty puts every object after the first there; optimized code then reads and
 * writes every property of it through a generic lookup: two calls a packet for one counter, seen
 * in `perf` profiles of a receiver's packet path. (The repair server's run tracker is probed in
 * test/repair/run-tracker.test.ts.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { controlKey } from '../src/crypto/control-auth.js';
import { systemRuntime } from '../src/net/runtime.js';
import { openControlSocket } from '../src/net/udp.js';
import { openRelayInput } from '../src/source/inputs.js';
import { startLastResort } from '../src/source/last-resort.js';
import { hasFastProperties } from './helpers/fast-properties.js';
import { planKeys, receiverGuard } from './sim/protection.js';

const loopback = { address: '127.0.0.1', port: 0, family: 4 } as const;

describe('objects touched once a packet keep fast properties, every one made', () => {
  it('the probe tells a slow object from a fast one (a getter per object made)', () => {
    const made = [1, 2].map((count) =>
      Object.defineProperty({ opened: 0 }, 'asked', { get: () => count, enumerable: true }),
    );
    assert.equal(hasFastProperties(made[0] as object), true);
    assert.equal(hasFastProperties(made[1] as object), false);
    assert.equal(hasFastProperties({ opened: 0, asked: 0 }), true);
  });

  it("a receiver's protection counters (written for every packet opened)", () => {
    for (const seed of [3, 4]) {
      const { protection } = receiverGuard(planKeys(seed, 'restricted'), () => undefined);
      assert.ok(protection !== undefined);
      assert.equal(hasFastProperties(protection.stats), true);
      assert.equal(protection.stats.groupKeysAsked, 0);
      assert.ok(Object.keys(protection.stats).includes('groupKeysAsked'));
    }
  });

  it('a relay input (read once a packet), whose counts are still shown', async () => {
    for (let made = 0; made < 2; made++) {
      const input = await openRelayInput(loopback, { payloadBytesMax: 1200 });
      try {
        assert.equal(hasFastProperties(input), true);
        assert.equal(input.droppedCount, 0);
        assert.equal(input.droppedTooLargeCount, 0);
      } finally {
        await input.close();
      }
    }
  });

  it("the source's last-resort buffer (keeps every packet sent)", async () => {
    for (let made = 0; made < 2; made++) {
      const lastResort = await startLastResort(
        {
          listen: loopback,
          keys: [controlKey(Buffer.from('the operator secret shared by servers'))],
          bufferBytesMax: 1_000_000,
          repairRateBitsPerSecond: 100_000_000,
          announceTo: [],
        },
        { sessionId: 1, incarnation: 2 },
        systemRuntime,
      );
      try {
        assert.equal(hasFastProperties(lastResort), true);
        assert.equal(typeof lastResort.lastNackAtMs(), 'number');
      } finally {
        await lastResort.close();
      }
    }
  });

  it('a control socket (answers NACKs packet by packet), which still counts what it sent', async () => {
    for (let made = 0; made < 2; made++) {
      const socket = await openControlSocket(loopback, () => undefined);
      try {
        assert.equal(hasFastProperties(socket), true);
        socket.send(Buffer.alloc(3), socket.local.port, '127.0.0.1');
        socket.send(Buffer.alloc(4), socket.local.port, '127.0.0.1');
        assert.equal(socket.bytesSent, 7);
      } finally {
        await socket.close();
      }
    }
  });
});
