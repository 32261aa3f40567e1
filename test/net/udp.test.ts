import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { describe, it } from 'node:test';
import { parseGroup } from '../../src/net/address.js';
import { SocketError } from '../../src/net/errors.js';
import { openControlSocket, openReceiverSocket, openSenderSocket } from '../../src/net/udp.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';

/** An up interface with the multicast flag and an IPv6 address: where a link-local group can live. */
function ipv6MulticastInterface(): string | undefined {
  for (const [name, addresses] of Object.entries(networkInterfaces())) {
    try {
      const flags = Number(readFileSync(`/sys/class/net/${name}/flags`, 'utf8'));
      // IFF_UP 0x1, IFF_MULTICAST 0x1000
      if ((flags & 0x1001) === 0x1001 && (addresses ?? []).some((entry) => entry.family === 'IPv6')) {
        return name;
      }
    } catch {
      // not Linux, or gone meanwhile
    }
  }
  return undefined;
}

const sent = (send: (done: (error: Error | null) => void) => void) =>
  new Promise<Error | null>((resolve) => send(resolve));

describe('a send after close is dropped and counted, never thrown (the END repeats of npm start)', () => {
  it('on a sender socket, the callback gets the error once', async () => {
    const socket = await openSenderSocket({
      group: parseGroup(`239.255.63.1:${freshPort()}`, 'g'),
      iface: loopbackIface,
    });
    const datagram = Buffer.from('hello');
    assert.equal(await sent((done) => socket.send(datagram, datagram.length, done)), null);
    await socket.close();
    await socket.close();
    const error = await sent((done) => socket.send(datagram, datagram.length, done));
    assert.ok(error instanceof SocketError);
    assert.doesNotThrow(() => socket.send(datagram, datagram.length));
    assert.deepEqual(socket.sendCounters, { afterClose: 2, failed: 0 });
  });

  it('on a control socket', async () => {
    const socket = await openControlSocket({ address: '127.0.0.1', port: 0, family: 4 }, () => undefined);
    await socket.close();
    assert.doesNotThrow(() => socket.send(Buffer.from('x'), 9, '127.0.0.1'));
    assert.equal(socket.sendCounters?.afterClose, 1);
    assert.equal(socket.bytesSent, 0);
  });

  it('a send node:dgram refuses at once is counted and handed to the callback', async () => {
    const socket = await openSenderSocket({
      group: parseGroup(`239.255.63.1:${freshPort()}`, 'g'),
      iface: loopbackIface,
    });
    try {
      const error = await sent((done) => socket.send(Buffer.alloc(4), 99, done));
      assert.ok(error instanceof Error);
      assert.equal(socket.sendCounters?.failed, 1);
    } finally {
      await socket.close();
    }
  });
});

describe('scoped IPv6 groups take their zone from the interface (receive [ff02::1234]:PORT --iface eth0 gave bind EINVAL)', () => {
  it('a link-local group without an interface is a SocketError that says so', async () => {
    const group = parseGroup(`[ff02::1234]:${freshPort()}`, 'g');
    await assert.rejects(
      openReceiverSocket({ group }, () => undefined),
      /ff02::1234 is a scoped group \(scope 2\): it needs an interface/,
    );
    await assert.rejects(openSenderSocket({ group }), /scoped group/);
  });

  const iface = ipv6MulticastInterface();
  it('joins, sends and receives a link-local group on a named interface', {
    skip: iface === undefined ? 'no interface with IPv6 multicast' : false,
  }, async () => {
    const group = parseGroup(`[ff02::1234:5]:${freshPort()}`, 'g');
    const received: Buffer[] = [];
    const receiver = await openReceiverSocket({ group, iface }, (datagram) => received.push(datagram));
    const sender = await openSenderSocket({ group, iface, ttl: 1 });
    try {
      const datagram = Buffer.from('scoped');
      for (let i = 0; i < 20 && received.length === 0; i++) {
        assert.equal(await sent((done) => sender.send(datagram, datagram.length, done)), null);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      assert.equal(received[0]?.toString(), 'scoped');
    } finally {
      await sender.close();
      await receiver.close();
    }
  });
});
