/**
 * The simulator's own parts: the virtual clock's ordering, the in-memory network's sockets and
 * faults, and replay (the same seed gives the same event trace), tried with the fake roles.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Adversary, adversaryActions } from './adversary.js';
import { runFakeReceiver, startFakeSource } from './fake-roles.js';
import { cleanLink, SimNetwork } from './network.js';
import { SimRandom } from './random.js';
import { Scheduler } from './virtual-clock.js';

const group = { address: '239.1.2.3', port: 5000, family: 4 } as const;

async function toyRun(seed: number, lossRate: number) {
  const scheduler = new Scheduler();
  const network = new SimNetwork(scheduler, seed);
  network.setDefaultFaults({
    ...cleanLink,
    lossRate,
    reorderRate: 0.05,
    reorderDelayMsMax: 5,
    duplicateRate: 0.02,
  });
  const source = network.addHost('source', '10.9.0.1');
  const receiver = network.addHost('receiver', '10.9.0.2');
  const payload = SimRandom.fork(seed, 'payload').bytes(20_000);
  const written: Buffer[] = [];
  const receipt = runFakeReceiver(group, receiver.runtime(SimRandom.fork(seed, 'r')), (p) => written.push(p));
  await scheduler.run(10);
  await startFakeSource(
    { group, sessionId: 7, payload, packetBytes: 500, firstSequence: 0xffff_fff0, packetIntervalMs: 2 },
    source.runtime(SimRandom.fork(seed, 's')),
  );
  let settled = false;
  void receipt.then(() => {
    settled = true;
  });
  await scheduler.run(60_000, () => settled);
  return { digest: scheduler.traceDigest(), output: Buffer.concat(written), payload, receipt: await receipt };
}

describe('simulator harness', () => {
  it('replays a seed exactly: the same event trace twice, another for another seed', async () => {
    const a = await toyRun(11, 0.05);
    const b = await toyRun(11, 0.05);
    const c = await toyRun(12, 0.05);
    assert.equal(a.digest, b.digest);
    assert.notEqual(a.digest, c.digest);
  });

  it('delivers a whole payload over clean links, and only a prefix over lossy ones', async () => {
    const clean = await toyRun(3, 0);
    assert.equal(clean.receipt.outcome, 'complete');
    assert.ok(clean.output.equals(clean.payload));
    const lossy = await toyRun(3, 0.2);
    assert.notEqual(lossy.receipt.outcome, 'complete');
    assert.ok(lossy.payload.subarray(0, lossy.output.length).equals(lossy.output));
  });

  it('orders events by time then insertion; defer runs after what is already queued for now', async () => {
    const scheduler = new Scheduler();
    const network = new SimNetwork(scheduler, 1);
    const { clock } = network.addHost('h', '10.9.0.1');
    const order: string[] = [];
    clock.setTimeout(() => {
      order.push('t5a');
      clock.defer(() => order.push('defer'));
      clock.setTimeout(() => order.push('t6'), 1);
    }, 5);
    clock.setTimeout(() => order.push('t5b'), 5);
    clock.setTimeout(() => order.push('t0'), 0);
    const interval = clock.setInterval(() => {
      order.push('i');
      if (clock.nowMs() >= 1000 + 6) {
        interval.cancel();
      }
    }, 3);
    await scheduler.run(100);
    assert.deepEqual(order, ['t0', 'i', 't5a', 't5b', 'defer', 'i', 't6']);
    assert.equal(scheduler.nowMs, 100);
  });

  it('steps the wall clock without touching monotonic time', async () => {
    const scheduler = new Scheduler();
    const network = new SimNetwork(scheduler, 1);
    const host = network.addHost('h', '10.9.0.1', { wallOffsetMs: 120_000 });
    await scheduler.run(50);
    const mono = host.clock.nowMs();
    const wall = host.clock.wallUs();
    host.clock.stepWall(-240_000);
    assert.equal(host.clock.nowMs(), mono);
    assert.equal(host.clock.wallUs(), wall - 240_000_000);
  });

  it('closes sockets like udp.ts: nothing delivered after close or a crash, send a no-op', async () => {
    const scheduler = new Scheduler();
    const network = new SimNetwork(scheduler, 1);
    const a = network.addHost('a', '10.9.0.1');
    const b = network.addHost('b', '10.9.0.2');
    const got: string[] = [];
    const server = await b
      .transport()
      .openControl({ address: '10.9.0.2', port: 7000, family: 4 }, (d, remote) =>
        got.push(`${d.toString()} from ${remote.address}:${remote.port} ${remote.size}`),
      );
    const client = await a
      .transport()
      .openControl({ address: '0.0.0.0', port: 0, family: 4 }, () => undefined);
    client.send(Buffer.from('one'), 7000, '10.9.0.2');
    await scheduler.run(10);
    await assert.rejects(
      b.transport().openControl({ address: '10.9.0.2', port: 7000, family: 4 }, () => undefined),
    );
    network.inject(a, { address: '10.9.0.77', port: 1, family: 4 }, server.local, Buffer.from('spoofed'));
    await scheduler.run(20);
    await server.close();
    client.send(Buffer.from('two'), 7000, '10.9.0.2');
    await scheduler.run(30);
    assert.deepEqual(got, [`one from 10.9.0.1:${client.local.port} 3`, 'spoofed from 10.9.0.77:1 7']);
    assert.equal(client.bytesSent, 6);
    const joined: number[] = [];
    await b.transport().openReceiver({ group }, (d) => joined.push(d.length));
    const sender = await a.transport().openSender({ group });
    sender.send(Buffer.alloc(10), 4);
    await scheduler.run(40);
    b.kill();
    sender.send(Buffer.alloc(10), 5);
    await scheduler.run(50);
    assert.deepEqual(joined, [4]);
    await assert.rejects(b.transport().openReceiver({ group }, () => undefined));
  });
});

describe('simulator adversary', () => {
  it('sees the wire and injects every kind of attack from spoofed addresses', async () => {
    const scheduler = new Scheduler();
    const network = new SimNetwork(scheduler, 5);
    const source = network.addHost('source', '10.9.0.1');
    const server = network.addHost('server', '10.9.0.2');
    const attacker = network.addHost('adversary', '10.9.0.66');
    const adversary = new Adversary(network, attacker, 5, {
      servers: [{ address: server.address, port: 7000, family: 4 }],
      victims: [{ address: '10.9.0.99', port: 9, family: 4 }],
    });
    const seen: Array<{ spoofed: boolean; from: string }> = [];
    network.onSend((record) => seen.push({ spoofed: record.spoofed, from: record.from.address }));
    const control = await server
      .transport()
      .openControl({ address: server.address, port: 7000, family: 4 }, () => undefined);
    control.send(Buffer.alloc(80, 5), 7000, server.address);
    await startFakeSource(
      {
        group,
        sessionId: 7,
        payload: Buffer.alloc(3000, 1),
        packetBytes: 500,
        firstSequence: 0,
        packetIntervalMs: 1,
      },
      source.runtime(SimRandom.fork(5, 's')),
    );
    await scheduler.run(1000);
    seen.length = 0;
    for (const action of adversaryActions) {
      assert.match(adversary.act(action), new RegExp(action));
    }
    assert.ok(seen.length > adversaryActions.length);
    assert.ok(seen.every((record) => record.spoofed));
    assert.ok(seen.some((record) => record.from === '10.9.0.99'));
    assert.ok(seen.some((record) => record.from === source.address));
    assert.ok(adversary.phantomRuns.size > 0);
  });
});
