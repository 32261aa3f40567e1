import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { newS2Key, S2Sealer } from '../../src/crypto/s2-seal.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import { encodeData } from '../../src/protocol/packet.js';
import { startWatchingAgent } from '../../src/receiver/agent.js';
import type { Resolution } from '../../src/receiver/controller-client.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { eventually, waitUntil } from '../helpers/wait.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('the agent follows the host’s group memberships', () => {
  it('starts delivering when an application joins S1, datagram for datagram, and stops when it leaves', async () => {
    const s1 = parseGroup(`239.255.92.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.92.2:${freshPort()}`, 's2');
    const changes: string[] = [];
    const agent = await startWatchingAgent({
      mappings: [{ s1, s2 }],
      fromIface: loopbackIface,
      deliverIface: loopbackIface,
      pollMs: 50,
      onChange: (_, active) => changes.push(active ? 'start' : 'stop'),
    });
    assert.equal(agent.status().sessions[0]?.active, false);

    // The unmodified application: a plain UDP socket on S1's group and port.
    const app = createSocket({ type: 'udp4', reuseAddr: true });
    const got: Buffer[] = [];
    app.on('message', (message) => got.push(message));
    await new Promise<void>((resolve) => app.bind(s1.port, s1.address, resolve));
    app.addMembership(s1.address, loopbackIface);
    await sleep(300);
    assert.equal(agent.status().sessions[0]?.active, true);

    // The repaired session arrives on S2 as gatecast DATA.
    const repairer = createSocket('udp4');
    await new Promise<void>((resolve) => repairer.bind(0, loopbackIface, resolve));
    repairer.setMulticastInterface(loopbackIface);
    const payloads = [
      Buffer.from('first datagram'),
      Buffer.from('second, longer datagram'),
      Buffer.alloc(1316, 7),
    ];
    for (const [i, payload] of payloads.entries()) {
      repairer.send(
        encodeData({ sessionId: 9, incarnation: 1, sequence: 100 + i, timestampUs: 1 }, payload),
        s2.port,
        s2.address,
      );
      await sleep(10);
    }
    await sleep(200);
    assert.deepEqual(got, payloads);
    assert.equal(agent.status().sessions[0]?.delivery?.delivered, 3);

    app.close();
    await sleep(300);
    assert.equal(agent.status().sessions[0]?.active, false);
    assert.deepEqual(changes, ['start', 'stop']);
    repairer.close();
    await agent.close();
  });
});

describe('the agent delivers to an application on a group of its own', () => {
  it('follows that group’s memberships, asks the controller for S1 and hands S2 to that group, never to S1', async () => {
    const s1 = parseGroup(`239.255.95.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.95.2:${freshPort()}`, 's2');
    const local = parseGroup(`239.255.95.3:${freshPort()}`, 'application');
    const asked: string[] = [];
    const agent = await startWatchingAgent({
      mappings: [{ s1, deliver: local }],
      fromIface: loopbackIface,
      deliverIface: loopbackIface,
      pollMs: 20,
      controller: {
        resolve: async (group) => {
          asked.push(`${group.address}:${group.port}`);
          return { granted: true, s2, leaseMs: 60_000 };
        },
        release: async () => undefined,
      },
    });
    // A member of S1 itself (here: someone else on the host) does not start the delivery.
    const onS1 = createSocket({ type: 'udp4', reuseAddr: true });
    const gotOnS1: Buffer[] = [];
    onS1.on('message', (message) => gotOnS1.push(message));
    await new Promise<void>((resolve) => onS1.bind(s1.port, s1.address, resolve));
    onS1.addMembership(s1.address, loopbackIface);
    // The application joins its own group and port.
    const app = createSocket({ type: 'udp4', reuseAddr: true });
    const got: Buffer[] = [];
    app.on('message', (message) => got.push(message));
    await new Promise<void>((resolve) => app.bind(local.port, local.address, resolve));
    app.addMembership(local.address, loopbackIface);
    await waitUntil('the agent delivering', () => agent.status().sessions[0]?.active === true, 10_000);
    assert.deepEqual(asked, [`${s1.address}:${s1.port}`], 'the controller is asked for S1');

    const repairer = createSocket('udp4');
    await new Promise<void>((resolve) => repairer.bind(0, loopbackIface, resolve));
    repairer.setMulticastInterface(loopbackIface);
    const payloads = [Buffer.from('one'), Buffer.from('two'), Buffer.alloc(1316, 3)];
    for (const [i, payload] of payloads.entries()) {
      repairer.send(
        encodeData({ sessionId: 11, incarnation: 1, sequence: 500 + i, timestampUs: 1 }, payload),
        s2.port,
        s2.address,
      );
    }
    await waitUntil('three datagrams at the application', () => got.length >= 3, 10_000);
    assert.deepEqual(got, payloads);
    assert.deepEqual(gotOnS1, [], 'nothing is handed to S1');
    app.close();
    await waitUntil('the delivery stopping', () => agent.status().sessions[0]?.active === false, 10_000);
    onS1.close();
    repairer.close();
    await agent.close();
  });
});

describe('the agent asks the repair controller (flow A)', () => {
  it('asks when S1 is joined, delivers the granted S2, renews, stops on a refused renewal, releases on leave', async () => {
    const s1 = parseGroup(`239.255.93.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.93.2:${freshPort()}`, 's2');
    let joined = false;
    let entitled = true;
    const calls: string[] = [];
    const events: string[] = [];
    const agent = await startWatchingAgent({
      mappings: [{ s1 }],
      fromIface: loopbackIface,
      deliverIface: loopbackIface,
      pollMs: 20,
      refusalRetryMs: 60_000,
      readMemberships: () => (joined ? [{ group: s1.address, iface: 'lo', users: 1 }] : []),
      controller: {
        resolve: async () => {
          calls.push('resolve');
          return entitled
            ? { granted: true, s2, leaseMs: 300 }
            : { granted: false, reason: '403 no repair entitlement' };
        },
        release: async () => {
          calls.push('release');
        },
      },
      onChange: (_, active, __, granted) => events.push(`${active ? 'start' : 'stop'} ${granted.address}`),
      onRefused: (_, reason) => events.push(`refused ${reason}`),
    });
    await sleep(100);
    assert.deepEqual(calls, [], 'nothing is asked before an application joins');
    joined = true;
    await sleep(400);
    assert.equal(agent.status().sessions[0]?.active, true);
    assert.equal(agent.status().sessions[0]?.s2, `${s2.address}:${s2.port}`);
    assert.ok(calls.filter((c) => c === 'resolve').length >= 3, `renewed every third of the lease: ${calls}`);
    entitled = false;
    await sleep(300);
    assert.equal(agent.status().sessions[0]?.active, false, 'a refused renewal stops delivery');
    assert.equal(agent.status().sessions[0]?.refused, '403 no repair entitlement');
    const asked = calls.length;
    await sleep(200);
    assert.equal(calls.length, asked, 'after a refusal it does not ask again before the retry time');
    joined = false;
    await sleep(100);
    joined = true;
    entitled = true;
    await sleep(200);
    assert.equal(agent.status().sessions[0]?.active, true, 'a new join asks again at once');
    joined = false;
    await sleep(200);
    assert.equal(calls.at(-1), 'release', 'leaving releases the grant');
    assert.deepEqual(events.slice(0, 3), [
      `start ${s2.address}`,
      `stop ${s2.address}`,
      'refused 403 no repair entitlement',
    ]);
    await agent.close();
  });
});

describe('the agent on a sealed S2 (flow A)', () => {
  it('opens S2 with the grant’s key; on an envelope of a new epoch it asks the controller at once and loses nothing', async () => {
    const s1 = parseGroup(`239.255.94.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.94.2:${freshPort()}`, 's2');
    const keys = [newS2Key(1), newS2Key(2)];
    let current = keys[0];
    let resolves = 0;
    const agent = await startWatchingAgent({
      mappings: [{ s1 }],
      fromIface: loopbackIface,
      deliverIface: loopbackIface,
      pollMs: 20,
      readMemberships: () => [{ group: s1.address, iface: 'lo', users: 1 }],
      controller: {
        resolve: async () => {
          resolves++;
          return { granted: true, s2, leaseMs: 600_000, key: current };
        },
        release: async () => undefined,
      },
    });
    const app = createSocket({ type: 'udp4', reuseAddr: true });
    const got: Buffer[] = [];
    app.on('message', (message) => got.push(message));
    await new Promise<void>((resolve) => app.bind(s1.port, s1.address, resolve));
    app.addMembership(s1.address, loopbackIface);
    await waitUntil('delivery', () => agent.status().sessions[0]?.active === true, 5_000);
    const repairer = createSocket('udp4');
    await new Promise<void>((resolve) => repairer.bind(0, loopbackIface, resolve));
    repairer.setMulticastInterface(loopbackIface);
    const sealer = new S2Sealer(0x5eed, keys[0] ?? newS2Key(1));
    const payloads = Array.from({ length: 40 }, (_, i) => Buffer.alloc(200, i));
    for (const [i, payload] of payloads.entries()) {
      if (i === 20) {
        current = keys[1]; // someone left: the controller rotated S2's key
        sealer.rotate(keys[1] ?? newS2Key(2));
      }
      const datagram = encodeData(
        { sessionId: 9, incarnation: 1, sequence: 100 + i, timestampUs: 1 },
        payload,
      );
      repairer.send(sealer.seal(datagram, 1), s2.port, s2.address);
    }
    await waitUntil('every payload', () => got.length >= payloads.length, 5_000);
    const delivery = agent.status().sessions[0]?.delivery;
    repairer.close();
    app.close();
    await agent.close();
    assert.deepEqual(got, payloads, 'in order, none lost across the rotation');
    assert.equal(resolves, 2, 'the grant, and one early renewal for the new epoch');
    assert.equal(delivery?.s2KeyEpoch, 2);
    assert.equal(delivery?.keyWaitDropped, 0);
  });
});

/** An application on S1 that counts what reaches it, and a sender of DATA on S2. */
async function applicationAndRepairer(s1: Endpoint, s2: Endpoint) {
  const app = createSocket({ type: 'udp4', reuseAddr: true });
  const got: Buffer[] = [];
  app.on('message', (message) => got.push(message));
  await new Promise<void>((resolve) => app.bind(s1.port, s1.address, resolve));
  app.addMembership(s1.address, loopbackIface);
  const repairer = createSocket('udp4');
  await new Promise<void>((resolve) => repairer.bind(0, loopbackIface, resolve));
  repairer.setMulticastInterface(loopbackIface);
  let sequence = 100;
  return {
    got,
    /** Sends DATA on S2 every 50 ms for windowMs; true when the application got any of it. */
    async delivers(windowMs: number): Promise<boolean> {
      const timer = setInterval(() => {
        const datagram = encodeData(
          { sessionId: 9, incarnation: 1, sequence: sequence++, timestampUs: 1 },
          Buffer.from('x'),
        );
        repairer.send(datagram, s2.port, s2.address);
      }, 50);
      try {
        return await eventually(() => got.length > 0, windowMs);
      } finally {
        clearInterval(timer);
      }
    },
    close() {
      app.close();
      repairer.close();
    },
  };
}

describe('the agent starts nothing after close()', () => {
  it('a grant that comes back while close() runs opens no delivery and is released', async () => {
    const s1 = parseGroup(`239.255.95.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.95.2:${freshPort()}`, 's2');
    let joined = false;
    let asked: () => void = () => undefined;
    const askedOnce = new Promise<void>((resolve) => {
      asked = resolve;
    });
    let answer: (resolution: Resolution) => void = () => undefined;
    const answered = new Promise<Resolution>((resolve) => {
      answer = resolve;
    });
    let granted = 0;
    let released = 0;
    const changes: string[] = [];
    const agent = await startWatchingAgent({
      mappings: [{ s1 }],
      fromIface: loopbackIface,
      deliverIface: loopbackIface,
      pollMs: 20,
      readMemberships: () => (joined ? [{ group: s1.address, iface: 'lo', users: 1 }] : []),
      controller: {
        // A controller that grants, slowly: the grant is made whatever the agent does meanwhile.
        resolve: async () => {
          asked();
          const resolution = await answered;
          granted++;
          return resolution;
        },
        release: async () => {
          released++;
        },
      },
      onChange: (_, active) => changes.push(active ? 'start' : 'stop'),
    });
    const bed = await applicationAndRepairer(s1, s2);
    try {
      joined = true;
      await askedOnce;
      const closing = agent.close();
      answer({ granted: true, s2, leaseMs: 60_000 });
      await closing;
      assert.equal(await bed.delivers(1_000), false, 'nothing from S2 reaches the application after close()');
      assert.deepEqual(changes, [], 'no delivery started');
      assert.equal(granted, 1);
      assert.equal(released, granted, 'the grant that came back is released');
      assert.equal(agent.status().sessions[0]?.active, false);
    } finally {
      bed.close();
      await agent.close();
    }
  });

  it('a start whose first poll fails closes the deliveries that poll had opened', async () => {
    const s1 = parseGroup(`239.255.96.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.96.2:${freshPort()}`, 's2');
    const other = parseGroup(`239.255.96.3:${freshPort()}`, 's1');
    const bed = await applicationAndRepairer(s1, s2);
    try {
      await assert.rejects(
        startWatchingAgent({
          // The first mapping starts (a configured S2); the second's controller fails.
          mappings: [{ s1, s2 }, { s1: other }],
          fromIface: loopbackIface,
          deliverIface: loopbackIface,
          readMemberships: () => [
            { group: s1.address, iface: 'lo', users: 1 },
            { group: other.address, iface: 'lo', users: 1 },
          ],
          controller: {
            resolve: async () => {
              throw new Error('controller exploded');
            },
            release: async () => undefined,
          },
        }),
        /controller exploded/,
      );
      assert.equal(await bed.delivers(1_000), false, 'the first mapping’s delivery was closed');
    } finally {
      bed.close();
    }
  });
});
