/**
 * A retransmit server holding more sessions than one ANNOUNCE carries splits its announcements
 * (docs/protocol.md, "Size budgets"): it used to send ANNOUNCEs every decoder rejected past 64
 * sessions, and to crash in its tick with 2,800.
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { controlKey } from '../../src/crypto/control-auth.js';
import { announceSessionsMax } from '../../src/limits.js';
import { parseGroup } from '../../src/net/address.js';
import { decodeAnnounce, decodeQuality } from '../../src/protocol/control.js';
import { offsetType, PacketType } from '../../src/protocol/packet.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { crafter, data } from '../helpers/craft.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';

describe('a retransmit server with more sessions than one ANNOUNCE carries', () => {
  it('announces all 150 of its sessions in messages every decoder accepts', async () => {
    const key = controlKey(Buffer.from('many sessions test secret, not for use'));
    const listener = createSocket('udp4');
    const announced = new Map<number, number>();
    let rejected = 0;
    const qualities = new Set<number>();
    listener.on('message', (message) => {
      if (message[offsetType] === PacketType.quality) {
        const quality = decodeQuality(message);
        for (const session of quality.ok ? quality.value.sessions : []) {
          qualities.add(session.sessionId);
        }
        rejected += quality.ok ? 0 : 1;
        return;
      }
      const decoded = decodeAnnounce(message);
      if (!decoded.ok) {
        rejected++;
        return;
      }
      for (const session of decoded.value.sessions) {
        announced.set(session.sessionId, session.heldCount);
      }
    });
    await new Promise<void>((resolve) => listener.bind(0, '127.0.0.1', resolve));
    const groups = Array.from({ length: 150 }, (_, i) =>
      parseGroup(`239.255.73.${i + 1}:${freshPort()}`, 'g'),
    );
    const server = await startRetransmitServer({
      joins: groups.map((group) => ({ group })),
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 1 << 20,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [{ address: '127.0.0.1', port: listener.address().port, family: 4 }],
      peers: [{ address: '127.0.0.1', port: listener.address().port, family: 4 }],
      election: { lossMax: 0.5, bestCount: 3, periodMs: 200 },
    });
    try {
      for (const [i, group] of groups.entries()) {
        const out = await crafter(group);
        out.send(data({ sessionId: 1000 + i, incarnation: 1 }, 0, Buffer.from('held')));
        await out.close();
      }
      const deadline = performance.now() + 20_000;
      while (
        (announced.size < groups.length || qualities.size < groups.length) &&
        performance.now() < deadline
      ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(announced.size, groups.length, `announced ${announced.size} of ${groups.length}`);
      assert.ok(groups.length > 2 * announceSessionsMax);
      assert.equal(qualities.size, groups.length, 'QUALITY reports are split the same way');
      assert.equal(rejected, 0);
      assert.equal(server.status().dropped['tick-failed'], undefined);
    } finally {
      await server.close();
      listener.close();
    }
  });

  it('announces each run it holds of one group in an entry of its own (a restarted source: only the newest was announced)', async () => {
    const key = controlKey(Buffer.from('many sessions test secret, not for use'));
    const listener = createSocket('udp4');
    const announced = new Map<number, number>();
    listener.on('message', (message) => {
      const decoded = message[offsetType] === PacketType.announce ? decodeAnnounce(message) : undefined;
      for (const session of decoded?.ok === true ? decoded.value.sessions : []) {
        announced.set(session.incarnation, session.heldCount);
      }
    });
    await new Promise<void>((resolve) => listener.bind(0, '127.0.0.1', resolve));
    const group = parseGroup(`239.255.74.1:${freshPort()}`, 'g');
    const server = await startRetransmitServer({
      joins: [{ group }],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 1 << 20,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [{ address: '127.0.0.1', port: listener.address().port, family: 4 }],
      peers: [],
      election: { lossMax: 0.5, bestCount: 3, periodMs: 200 },
    });
    try {
      const out = await crafter(group);
      // Session 42 run 1, then the source restarted under the same id: run 2.
      for (let sequence = 0; sequence < 40; sequence++) {
        out.send(data({ sessionId: 42, incarnation: 1 }, sequence, Buffer.from('a')));
      }
      for (let sequence = 0; sequence < 40; sequence++) {
        out.send(data({ sessionId: 42, incarnation: 2 }, sequence, Buffer.from('b')));
      }
      await out.close();
      const deadline = performance.now() + 10_000;
      while ((announced.get(1) !== 40 || announced.get(2) !== 40) && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.deepEqual(
        [announced.get(1), announced.get(2)],
        [40, 40],
        'both runs announced with what each holds',
      );
    } finally {
      await server.close();
      listener.close();
    }
  });
});
