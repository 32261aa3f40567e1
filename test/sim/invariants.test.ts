/**
 * The invariant checker catches what it is there for: bytes of another run, a "complete" that is
 * not whole, a server answering an address that never proved itself, a packet given up while a
 * live server holds it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeNack, encodeRepair } from '../../src/protocol/control.js';
import { encodeData, encodeProgress, PacketType } from '../../src/protocol/packet.js';
import { runKey } from './adversary.js';
import { Invariants } from './invariants.js';
import { SimNetwork } from './network.js';
import { Scheduler } from './virtual-clock.js';

const s1 = { address: '239.1.2.3', port: 5000, family: 4 } as const;
const s2 = { address: '239.2.2.1', port: 6000, family: 4 } as const;

function world() {
  const scheduler = new Scheduler();
  const network = new SimNetwork(scheduler, 1);
  const invariants = new Invariants(network);
  const source = network.addHost('source', '10.9.0.1');
  const payload = Buffer.from('0123456789abcdefghij');
  invariants.watchSource(source, () => ({ payload, packetBytes: 4 }));
  return { scheduler, network, invariants, source, payload };
}

/** Read through a call, so that TypeScript does not narrow it between steps. */
const violationOf = (invariants: Invariants) => invariants.violation;

const data = (sequence: number, payload: Buffer, incarnation = 9) =>
  encodeData({ sessionId: 5, incarnation, sequence, timestampUs: 1 }, payload);

describe('simulator invariants', () => {
  it('prefix: bytes that are not the next bytes of the run fail at once', async () => {
    const { scheduler, invariants, source, payload } = world();
    const sender = await source.transport().openSender({ group: s1 });
    sender.send(data(0, payload.subarray(0, 10)), 42);
    await scheduler.run(5);
    const receiver = invariants.watchReceiver('r');
    receiver.write(payload.subarray(0, 4));
    assert.equal(invariants.violation, undefined);
    receiver.write(payload.subarray(12, 16));
    assert.equal(violationOf(invariants), undefined, 'a packet left out is not a violation in itself');
    receiver.write(Buffer.from('XXXX'));
    assert.equal(violationOf(invariants)?.invariant, 'prefix');
  });

  it('hidden-loss: packets left out must be counted missing', async () => {
    const { scheduler, invariants, source, payload } = world();
    const sender = await source.transport().openSender({ group: s1 });
    sender.send(data(0, payload), 52);
    await scheduler.run(5);
    const receiver = invariants.watchReceiver('r');
    receiver.write(payload.subarray(0, 4));
    receiver.write(payload.subarray(8, 12));
    invariants.receiverFinished(receiver, 'incomplete', runKey(5, 9), 0);
    assert.equal(violationOf(invariants)?.invariant, 'hidden-loss');
  });

  it('whole: "complete" with a short output fails', async () => {
    const { scheduler, invariants, source, payload } = world();
    const sender = await source.transport().openSender({ group: s1 });
    sender.send(data(0, payload), 52);
    await scheduler.run(5);
    const receiver = invariants.watchReceiver('r');
    receiver.write(payload.subarray(0, 4));
    receiver.write(payload.subarray(4, 8));
    invariants.receiverFinished(receiver, 'complete', runKey(5, 9));
    assert.equal(violationOf(invariants)?.invariant, 'whole');
  });

  it('authenticated-destination: a server may answer proven and configured peers only', async () => {
    const { scheduler, network, invariants } = world();
    const server = network.addHost('retransmit0', '10.9.0.2');
    const repair = network.addHost('repair0', '10.9.0.3');
    invariants.watchServer('retransmit0', server, []);
    const serverSocket = await server
      .transport()
      .openControl({ address: server.address, port: 7000, family: 4 }, () => undefined);
    const repairSocket = await repair
      .transport()
      .openControl({ address: repair.address, port: 7000, family: 4 }, () => undefined);
    repairSocket.send(Buffer.alloc(40), 7000, server.address);
    await scheduler.run(5);
    serverSocket.send(Buffer.alloc(40), 7000, repair.address);
    assert.equal(invariants.violation, undefined);
    server.restart();
    const again = await server
      .transport()
      .openControl({ address: server.address, port: 7000, family: 4 }, () => undefined);
    again.send(Buffer.alloc(40), 7000, repair.address);
    assert.equal(violationOf(invariants)?.invariant, 'authenticated-destination');
  });

  it('held-not-unrecoverable: a reliable repair server skipping a held packet fails', async () => {
    const { scheduler, network, invariants, source, payload } = world();
    const server = network.addHost('retransmit0', '10.9.0.2');
    const repair = network.addHost('repair0', '10.9.0.3');
    invariants.watchRetransmit(server, 60_000);
    invariants.watchRepairEmitter(repair, s2, true);
    await server.transport().openReceiver({ group: s1 }, () => undefined);
    const sender = await source.transport().openSender({ group: s1 });
    for (let sequence = 0; sequence < 3; sequence++) {
      sender.send(data(sequence, payload.subarray(sequence, sequence + 1)), 33);
    }
    await scheduler.run(5);
    const emitter = await repair.transport().openSender({ group: s2 });
    emitter.send(data(0, payload.subarray(0, 1)), 33);
    emitter.send(data(2, payload.subarray(2, 3)), 33);
    assert.equal(violationOf(invariants)?.invariant, 'held-not-unrecoverable');
    assert.match(violationOf(invariants)?.details ?? '', /sequence 1\b/);
  });

  it('a run ended by END restarts the emitter state', async () => {
    const { scheduler, network, invariants, source } = world();
    const repair = network.addHost('repair0', '10.9.0.3');
    invariants.watchRepairEmitter(repair, s2, true);
    await source.transport().openSender({ group: s1 });
    const emitter = await repair.transport().openSender({ group: s2 });
    const end = encodeProgress(
      PacketType.end,
      { sessionId: 5, incarnation: 9, sequence: 1, timestampUs: 1 },
      {
        packetCount: 1,
        byteCount: 1,
      },
    );
    emitter.send(data(0, Buffer.from('a')), 33);
    emitter.send(end, end.length);
    emitter.send(data(7, Buffer.from('b'), 10), 33);
    await scheduler.run(5);
    assert.equal(invariants.violation, undefined);
  });

  it('served-genuine: a REPAIR must carry the DATA the source sent for its run and sequence', async () => {
    const { scheduler, network, invariants, source, payload } = world();
    const server = network.addHost('retransmit0', '10.9.0.2');
    invariants.watchRetransmit(server, 60_000);
    const sender = await source.transport().openSender({ group: s1 });
    const genuine = data(0, payload.subarray(0, 4));
    sender.send(genuine, genuine.length);
    await scheduler.run(5);
    const control = await server
      .transport()
      .openControl({ address: server.address, port: 7000, family: 4 }, () => undefined);
    const fields = { sessionId: 5, incarnation: 9, sequence: 0, timestampUs: 1 };
    control.send(encodeRepair(fields, genuine), 7000, '10.9.0.3');
    assert.equal(violationOf(invariants), undefined);
    control.send(encodeRepair(fields, data(0, payload.subarray(0, 4), 10)), 7000, '10.9.0.3');
    assert.equal(violationOf(invariants)?.invariant, 'served-genuine');
  });

  it('held-answered: a NACK for a held packet must be answered with it', async () => {
    const { scheduler, network, invariants, source, payload } = world();
    const server = network.addHost('retransmit0', '10.9.0.2');
    const repair = network.addHost('repair0', '10.9.0.3');
    invariants.watchRetransmit(server, 60_000);
    invariants.watchRepairEmitter(repair, s2, true);
    await server.transport().openReceiver({ group: s1 }, () => undefined);
    await server.transport().openControl({ address: server.address, port: 7000, family: 4 }, () => undefined);
    const repairSocket = await repair
      .transport()
      .openControl({ address: repair.address, port: 7000, family: 4 }, () => undefined);
    const sender = await source.transport().openSender({ group: s1 });
    const genuine = data(0, payload.subarray(0, 4));
    sender.send(genuine, genuine.length);
    await scheduler.run(4000);
    const nack = encodeNack(
      { sessionId: 5, incarnation: 9, sequence: 0, timestampUs: 1 },
      { replyTo: { address: repair.address, port: 7000 }, ranges: [{ start: 0, count: 1 }] },
    );
    repairSocket.send(nack, 7000, server.address);
    await scheduler.run(4050);
    invariants.step(scheduler.nowMs, []);
    assert.equal(violationOf(invariants), undefined);
    await scheduler.run(4200);
    invariants.step(scheduler.nowMs, []);
    assert.equal(violationOf(invariants)?.invariant, 'held-answered');
  });
});

describe('simulator invariants of signed and restricted plans', () => {
  it('forged-moved-state: a gate passing on a datagram the source never sent fails at once', async () => {
    const { scheduler, invariants, source, payload } = world();
    invariants.watchProtection(0);
    const sender = await source.transport().openSender({ group: s1 });
    const genuine = data(0, payload.subarray(0, 10));
    sender.send(genuine, genuine.length);
    await scheduler.run(5);
    invariants.passedOn('r', genuine);
    assert.equal(invariants.violation, undefined);
    invariants.passedOn(
      'r',
      encodeProgress(
        PacketType.heartbeat,
        { sessionId: 5, incarnation: 9, sequence: 65_000, timestampUs: 1 },
        { packetCount: 1, byteCount: 1 },
      ),
    );
    assert.equal(violationOf(invariants)?.invariant, 'forged-moved-state');
  });

  it('key-epochs: a restricted source going back to an earlier key epoch, or reusing a nonce, fails', async () => {
    for (const second of [
      { epoch: 1, sequence: 1, payload: 'b' }, // (epoch 1, sequence 1) again with other bytes
      { epoch: 1, sequence: 3, payload: 'c' }, // back from epoch 2 to 1
    ]) {
      const { scheduler, invariants, source } = world();
      invariants.watchProtection(1000);
      const sender = await source.transport().openSender({ group: s1 });
      const sealed = (epoch: number, sequence: number, text: string) =>
        encodeData(
          { sessionId: 5, incarnation: 9, sequence, timestampUs: 1, keyEpoch: epoch },
          Buffer.from(text),
        );
      const first = sealed(1, 1, 'a');
      sender.send(first, first.length);
      const next = sealed(2, 2, 'x');
      sender.send(next, next.length);
      await scheduler.run(5);
      assert.equal(invariants.violation, undefined);
      const bad = sealed(second.epoch, second.sequence, second.payload);
      sender.send(bad, bad.length);
      await scheduler.run(10);
      assert.equal(violationOf(invariants)?.invariant, 'key-epochs', JSON.stringify(second));
    }
  });

  it('key-epochs: one epoch used longer than the crypto-period fails', async () => {
    const { scheduler, invariants, source } = world();
    invariants.watchProtection(1000);
    const sender = await source.transport().openSender({ group: s1 });
    const sealed = (sequence: number) =>
      encodeData({ sessionId: 5, incarnation: 9, sequence, timestampUs: 1, keyEpoch: 1 }, Buffer.from('p'));
    for (const [atMs, sequence] of [
      [0, 1],
      [1000, 2],
      [1300, 3],
    ] as const) {
      scheduler.schedule(atMs, 'send', () => sender.send(sealed(sequence), sealed(sequence).length));
    }
    await scheduler.run(1050);
    assert.equal(invariants.violation, undefined, 'within the period and its slack');
    await scheduler.run(1400);
    assert.equal(violationOf(invariants)?.invariant, 'key-epochs');
  });
});
