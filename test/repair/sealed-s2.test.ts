import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { controlKey } from '../../src/crypto/control-auth.js';
import { newS2Key } from '../../src/crypto/s2-seal.js';
import { parseGroup } from '../../src/net/address.js';
import { startAgent } from '../../src/receiver/agent.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { lossyS1Socket, startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openFileInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';
import { createRandom } from '../helpers/random.js';
import { waitUntil } from '../helpers/wait.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-sealed-s2-'));
after(() => rmSync(directory, { recursive: true, force: true }));
const controlSecret = controlKey(Buffer.from('sealed S2 loopback test secret'));
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** An unmodified application: a plain UDP socket on a group, keeping every datagram. */
async function application(group: ReturnType<typeof parseGroup>) {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  const got: Buffer[] = [];
  socket.on('message', (message) => got.push(message));
  await new Promise<void>((resolve) => socket.bind(group.port, group.address, resolve));
  socket.addMembership(group.address, loopbackIface);
  socket.setRecvBufferSize(8 * 1024 * 1024);
  return { got, close: () => socket.close() };
}

describe('sealed S2 on loopback: source -> lossy S1 -> repair server sealing S2 -> agents', () => {
  it('the entitled agent’s application gets the file whole across a key rotation; the departed agent and a plain receiver of S2 read nothing after it', async () => {
    const bytes = randomBytes(1_400 * 1_000);
    const path = join(directory, 'file.bin');
    writeFileSync(path, bytes);
    const s1 = parseGroup(`239.255.74.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.74.2:${freshPort()}`, 's2');
    const deliverStaying = parseGroup(`239.255.74.3:${freshPort()}`, 'app');
    const deliverDeparted = parseGroup(`239.255.74.4:${freshPort()}`, 'app');
    const retransmit = await startRetransmitServer({
      joins: [{ group: s1 }],
      iface: loopbackIface,
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [controlSecret],
      bufferBytesMax: 64 * 1024 * 1024,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 500_000_000,
      announceTo: [],
      peers: [],
    });
    const first = newS2Key(1);
    const random = createRandom(74);
    const repair = await startRepairServer(
      {
        group: s1,
        iface: loopbackIface,
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [controlSecret],
        retransmit: [retransmit.local],
        emit: s2,
        latencyMs: undefined,
        s2Key: first,
      },
      { openS1Socket: lossyS1Socket(() => random.int(100) < 5) },
    );
    const second = newS2Key(2);
    const stayingApp = await application(deliverStaying);
    const departedApp = await application(deliverDeparted);
    // The controller's answer to the staying agent's re-ask, a round trip later.
    const missing: number[] = [];
    const staying = await startAgent({
      from: s2,
      fromIface: loopbackIface,
      deliver: deliverStaying,
      deliverIface: loopbackIface,
      s2Key: first,
      onMissingKey: (epoch) => {
        missing.push(epoch);
        setTimeout(() => staying.addKey(second), 30);
      },
    });
    // The departed agent keeps listening with the key it had.
    const departed = await startAgent({
      from: s2,
      fromIface: loopbackIface,
      deliver: deliverDeparted,
      deliverIface: loopbackIface,
      s2Key: first,
    });
    // A host without the grant: gatecast receive on S2, and a raw capture of S2.
    const plainSink = memorySink();
    const plain = createReceiver({ group: s2, iface: loopbackIface, timeoutMs: 30_000 }, { sink: plainSink });
    const stopPlain = new AbortController();
    const plainRun = plain.run({ signal: stopPlain.signal });
    const capture = await application(s2);

    const source = createSource(
      {
        group: s1,
        iface: loopbackIface,
        rateBitsPerSecond: 40_000_000,
        packetPayloadBytes: 1400,
        sessionName: 'sealed.bin',
        firstSequence: 1,
      },
      { input: await openFileInput(path) },
    );
    const sending = source.run();
    await waitUntil('the staying agent delivering', () => staying.status().delivered >= 300, 20_000);
    repair.rotateS2Key?.(second); // someone left: the controller gave the module a new key
    const emittedUnderFirst = repair.status().emitted;
    await sending;
    await waitUntil(
      'the staying application getting every packet',
      () => stayingApp.got.length >= 1_000,
      30_000,
    );
    await waitUntil(
      'the departed agent seeing the new epoch',
      () => departed.status().keyWaiting > 0,
      10_000,
    );
    stopPlain.abort();
    const plainSummary = await plainRun;
    const status = { repair: repair.status(), staying: staying.status(), departed: departed.status() };
    for (const closable of [staying, departed, repair, retransmit]) {
      await closable.close();
    }
    stayingApp.close();
    departedApp.close();
    capture.close();

    const detail = JSON.stringify(status);
    assert.equal(
      sha256(Buffer.concat(stayingApp.got)),
      sha256(bytes),
      `whole across the rotation: ${detail}`,
    );
    assert.ok(status.repair.recovered > 0, 'S1 lost packets and the repair server recovered them');
    assert.equal(status.repair.s2KeyEpoch, 2);
    assert.ok(status.repair.sealed > 1_000, 'everything on S2 went out sealed');
    assert.deepEqual(missing, [2], 'the staying agent asked once for the new epoch');
    assert.equal(status.staying.badTag, 0);
    assert.equal(status.staying.keyWaitDropped, 0);
    // The departed agent: nothing under the new key, only what was sealed before the rotation.
    assert.ok(status.departed.delivered <= emittedUnderFirst, detail);
    assert.ok(status.departed.delivered < 1_000, detail);
    assert.equal(
      Buffer.concat(departedApp.got).length,
      status.departed.deliveredBytes,
      'its application got nothing else',
    );
    const sealedBefore = new Set<string>();
    for (let i = 0; i < emittedUnderFirst; i++) {
      sealedBefore.add(sha256(bytes.subarray(i * 1_400, (i + 1) * 1_400)));
    }
    assert.ok(departedApp.got.every((datagram) => sealedBefore.has(sha256(datagram))));
    // The host without the grant: no payload byte.
    assert.equal(plainSink.bytes().length, 0);
    assert.equal(plainSummary.packetsDelivered, 0);
    assert.ok((plainSummary.malformed['unsupported-type'] ?? 0) > 1_000, JSON.stringify(plainSummary));
    const wire = Buffer.concat(capture.got);
    assert.ok(wire.length > bytes.length, 'the capture holds the whole sealed stream');
    for (let offset = 0; offset + 16 <= bytes.length; offset += 1_400 * 7) {
      assert.equal(wire.includes(bytes.subarray(offset, offset + 16)), false, `plaintext at ${offset}`);
    }
  });

  it('a plain datagram or a forged envelope on a sealed S2 is counted and never delivered', async () => {
    const s2 = parseGroup(`239.255.75.2:${freshPort()}`, 's2');
    const deliver = parseGroup(`239.255.75.3:${freshPort()}`, 'app');
    const app = await application(deliver);
    const key = newS2Key(5);
    const agent = await startAgent({
      from: s2,
      fromIface: loopbackIface,
      deliver,
      deliverIface: loopbackIface,
      s2Key: key,
    });
    const { encodeData } = await import('../../src/protocol/packet.js');
    const { S2Sealer } = await import('../../src/crypto/s2-seal.js');
    const sender = createSocket('udp4');
    await new Promise<void>((resolve) => sender.bind(0, loopbackIface, resolve));
    sender.setMulticastInterface(loopbackIface);
    const plain = encodeData(
      { sessionId: 1, incarnation: 2, sequence: 1, timestampUs: 1 },
      Buffer.from('forged'),
    );
    const forged = new S2Sealer(3, { epoch: 5, key: randomBytes(32) }).seal(plain, 1);
    const genuine = new S2Sealer(4, key).seal(
      encodeData({ sessionId: 1, incarnation: 2, sequence: 2, timestampUs: 1 }, Buffer.from('genuine')),
      1,
    );
    for (const datagram of [plain, forged, genuine]) {
      sender.send(datagram, s2.port, s2.address);
    }
    await waitUntil('the genuine packet', () => app.got.length >= 1, 5_000);
    const status = agent.status();
    sender.close();
    app.close();
    await agent.close();
    assert.deepEqual(app.got, [Buffer.from('genuine')]);
    assert.equal(status.unsealed, 1);
    assert.equal(status.badTag, 1);
    assert.equal(status.opened, 1);
  });
});
