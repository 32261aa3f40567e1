import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { ControlSealer, controlKey } from '../../src/crypto/control-auth.js';
import { parseGroup } from '../../src/net/address.js';
import { encodeNack } from '../../src/protocol/control.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openTickerInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('a retransmit server answers only repair servers it knows', () => {
  it('forged, replayed, unknown-key and malformed NACKs are counted and dropped; no byte goes back', async () => {
    const group = parseGroup(`239.255.80.1:${freshPort()}`, 'group');
    const server = await startRetransmitServer({
      joins: [{ group }],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 1 << 20,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [],
      peers: [],
    });
    const source = createSource(
      {
        group,
        iface: loopbackIface,
        rateBitsPerSecond: 0,
        packetPayloadBytes: 100,
        sessionName: 't',
        firstSequence: 100,
        startDelayMs: 0,
      },
      { input: openTickerInput({ ticksPerSecond: 1000, tickCount: 50 }) },
    );
    const stats = await source.run();
    await sleep(100);

    const attacker = createSocket('udp4');
    let bytesBack = 0;
    attacker.on('message', (message) => {
      bytesBack += message.length;
    });
    await new Promise<void>((resolve) => attacker.bind(0, '127.0.0.1', resolve));
    const send = (datagram: Buffer) => attacker.send(datagram, server.local.port, server.local.address);
    const nack = () =>
      encodeNack(
        { sessionId: stats.sessionId, incarnation: stats.incarnation, sequence: 100, timestampUs: 1 },
        { ranges: [{ start: 100, count: 40 }] },
      );

    const forged = new ControlSealer(key).seal(nack());
    forged[forged.length - 3] = (forged[forged.length - 3] ?? 0) ^ 0x10;
    send(forged);
    send(new ControlSealer(controlKey(Buffer.from('a guess at the secret, wrong'))).seal(nack()));
    send(nack()); // no tag at all
    send(Buffer.from('garbage that is not a packet'));
    const truncated = new ControlSealer(key).seal(nack()).subarray(0, 40);
    send(truncated);
    await sleep(200);
    assert.equal(bytesBack, 0, 'nothing is sent to an address that has not proven who it is');
    const dropped = server.status().dropped;
    assert.equal(dropped['nack-bad-tag'], 1, JSON.stringify(dropped));
    assert.equal(dropped['nack-unknown-key'], 2, JSON.stringify(dropped)); // a wrong secret, and no tag at all
    assert.equal(dropped['unexpected-type'], 1, JSON.stringify(dropped));
    assert.ok(
      (dropped['nack-length-mismatch'] ?? 0) + (dropped['nack-truncated'] ?? 0) >= 1,
      JSON.stringify(dropped),
    );
    assert.equal(server.status().repairsSent, 0);

    // A genuine NACK is answered; its replay is not.
    const genuine = new ControlSealer(key).seal(nack());
    send(genuine);
    await sleep(200);
    assert.equal(server.status().repairsSent, 40);
    const afterGenuine = bytesBack;
    assert.ok(afterGenuine > 40 * 100);
    send(genuine);
    await sleep(200);
    assert.equal(bytesBack, afterGenuine, 'a replayed NACK gets nothing');
    assert.equal(server.status().dropped['nack-replayed'], 1);
    attacker.close();
    await server.close();
  });
});

describe('SETUP', () => {
  it('an authenticated SETUP makes a retransmit server join and buffer a session; a forged one does nothing', async () => {
    const { encodeSetup, SetupAction } = await import('../../src/protocol/control.js');
    const group = parseGroup(`239.255.80.2:${freshPort()}`, 'group');
    const server = await startRetransmitServer({
      joins: [],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 1 << 20,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [],
      peers: [],
    });
    const controller = createSocket('udp4');
    await new Promise<void>((resolve) => controller.bind(0, '127.0.0.1', resolve));
    const setup = (sealer: ControlSealer) =>
      sealer.seal(
        encodeSetup(
          { sessionId: 0, sequence: 0, timestampUs: 1 },
          {
            action: SetupAction.join,
            group: group.address,
            port: group.port,
            source: undefined,
            bufferBytes: 0,
            bufferAgeMs: 0,
          },
        ),
      );
    const forged = setup(new ControlSealer(controlKey(Buffer.from('not the operator at all, really'))));
    controller.send(forged, server.local.port, '127.0.0.1');
    await sleep(100);
    assert.equal(server.status().sessions.length, 0);
    controller.send(setup(new ControlSealer(key)), server.local.port, '127.0.0.1');
    await sleep(200);
    assert.equal(server.status().sessions.length, 1);
    const source = createSource(
      {
        group,
        iface: loopbackIface,
        rateBitsPerSecond: 0,
        packetPayloadBytes: 100,
        sessionName: 's',
        startDelayMs: 0,
      },
      { input: openTickerInput({ ticksPerSecond: 1000, tickCount: 30 }) },
    );
    const stats = await source.run();
    await sleep(100);
    const session = server.status().sessions[0];
    assert.equal(session?.sessionId, stats.sessionId);
    assert.equal(session?.heldPackets, 30);
    controller.close();
    await server.close();
  });
});
