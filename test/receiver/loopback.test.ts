import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseGroup } from '../../src/net/address.js';
import { openReceiverSocket, type ReceiverSocketOptions } from '../../src/net/udp.js';
import { decodeHeader, encodeData, PacketType } from '../../src/protocol/packet.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { openFileInput, openTickerInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-test-'));
after(() => rmSync(directory, { recursive: true, force: true }));

function writeRandomFile(name: string, size: number): { path: string; sha256: string } {
  const path = join(directory, name);
  const bytes = randomBytes(size);
  writeFileSync(path, bytes);
  return { path, sha256: createHash('sha256').update(bytes).digest('hex') };
}

/** Opens a real receiver socket that hides the DATA packets whose sequence drop() selects. */
function lossySocket(drop: (sequence: number) => boolean) {
  return (options: ReceiverSocketOptions, onDatagram: (d: Buffer) => void) =>
    openReceiverSocket(options, (datagram) => {
      const header = decodeHeader(datagram);
      if (header.ok && header.value.type === PacketType.data && drop(header.value.sequence)) {
        return;
      }
      onDatagram(datagram);
    });
}

describe('source to receiver over loopback multicast', () => {
  it('delivers a file whole, across the sequence wrap, and checks its SHA-256', async () => {
    const { path, sha256 } = writeRandomFile('wrap.bin', 1_000_003);
    const group = parseGroup(`239.255.50.1:${freshPort()}`, 'group');
    const sink = memorySink();
    const receiver = createReceiver({ group, iface: loopbackIface, timeoutMs: 5000 }, { sink });
    const receiving = receiver.run();
    const source = createSource(
      {
        group,
        iface: loopbackIface,
        rateBitsPerSecond: 200_000_000,
        packetPayloadBytes: 1400,
        sessionName: 'wrap.bin',
        firstSequence: 0xffff_ff00,
      },
      { input: await openFileInput(path) },
    );
    const stats = await source.run();
    const summary = await receiving;
    assert.equal(summary.outcome, 'complete');
    assert.equal(summary.packetsMissing, 0);
    assert.equal(summary.packetsDelivered, stats.packetsSent);
    assert.equal(stats.packetsSent, Math.ceil(1_000_003 / 1400));
    assert.equal(createHash('sha256').update(sink.bytes()).digest('hex'), sha256);
    assert.equal(summary.sha256, sha256);
  });

  it('tells the truth about loss: counts every missing packet and exits incomplete', async () => {
    const { path } = writeRandomFile('lossy.bin', 140_000);
    const group = parseGroup(`239.255.50.2:${freshPort()}`, 'group');
    const dropped = new Set([1000, 1001, 1050, 1099]); // the last one is tail loss
    const receiver = createReceiver(
      { group, iface: loopbackIface, timeoutMs: 5000, endGraceMs: 100 },
      { sink: memorySink(), openSocket: lossySocket((sequence) => dropped.has(sequence)) },
    );
    const receiving = receiver.run();
    const source = createSource(
      {
        group,
        iface: loopbackIface,
        rateBitsPerSecond: 50_000_000,
        packetPayloadBytes: 1400,
        sessionName: 'lossy',
        firstSequence: 1000,
      },
      { input: await openFileInput(path) },
    );
    await source.run();
    const summary = await receiving;
    assert.equal(summary.outcome, 'incomplete');
    assert.equal(summary.packetsMissing, 4);
    assert.equal(summary.packetsDelivered, 96);
  });

  it('counts and drops malformed and foreign datagrams without losing the session', async () => {
    const group = parseGroup(`239.255.50.3:${freshPort()}`, 'group');
    const sink = memorySink();
    const receiver = createReceiver({ group, iface: loopbackIface, timeoutMs: 5000 }, { sink });
    const receiving = receiver.run();
    const noise = createSocket('udp4');
    noise.bind(0, loopbackIface);
    await new Promise((resolve) => noise.once('listening', resolve));
    noise.setMulticastInterface(loopbackIface);
    const source = createSource(
      { group, iface: loopbackIface, rateBitsPerSecond: 0, packetPayloadBytes: 200, sessionName: 'ticker' },
      { input: openTickerInput({ ticksPerSecond: 200, tickCount: 100 }) },
    );
    const running = source.run();
    const garbage = [
      Buffer.from('not gatecast at all'),
      Buffer.alloc(3),
      encodeData(
        { sessionId: 77, incarnation: 1, sequence: 1, timestampUs: 0 },
        Buffer.from('other session'),
      ),
    ];
    for (let i = 0; i < 30; i++) {
      noise.send(garbage[i % garbage.length] as Buffer, group.port, group.address);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await running;
    const summary = await receiving;
    noise.close();
    assert.equal(summary.outcome, 'complete');
    assert.equal(summary.packetsDelivered, 100);
    assert.equal((summary.malformed['bad-magic'] ?? 0) + (summary.malformed.truncated ?? 0), 20);
    assert.equal(summary.otherSession, 10);
    const ticks = sink
      .bytes()
      .toString('latin1')
      .trim()
      .split('\n')
      .map((line) => Number(line.split(' ')[0]));
    assert.deepEqual(
      ticks,
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
  });

  it('times out when the group is silent, saying nothing arrived', async () => {
    const group = parseGroup(`239.255.50.4:${freshPort()}`, 'group');
    const receiver = createReceiver({ group, iface: loopbackIface, timeoutMs: 300 }, { sink: memorySink() });
    const summary = await receiver.run();
    assert.equal(summary.outcome, 'timeout');
    assert.equal(summary.sessionId, undefined);
  });
});
