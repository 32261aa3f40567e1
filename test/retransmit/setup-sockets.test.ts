/**
 * A retransmit server owns every group socket it opens, however the opening races what it is told
 * meanwhile: a SETUP leave, or close(), that comes while a SETUP join's socket is still opening
 * left that socket open, receiving into a group the server had let go, and never closed.
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { ControlSealer, controlKey } from '../../src/crypto/control-auth.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import { type Runtime, systemRuntime } from '../../src/net/runtime.js';
import type { ControlSocket, ReceiverSocket } from '../../src/net/udp.js';
import { encodeSetup, type PeerEndpoint, SetupAction } from '../../src/protocol/control.js';
import { type RetransmitServer, startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { freshPort } from '../helpers/loopback.js';
import { waitUntil } from '../helpers/wait.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));

/** Group sockets that open only when the test releases them, counted open and closed. */
function slowGroups() {
  const releases: Array<() => void> = [];
  const counts = { opened: 0, closed: 0 };
  const runtime: Runtime = {
    ...systemRuntime,
    transport: {
      ...systemRuntime.transport,
      openReceiver: () =>
        new Promise<ReceiverSocket>((resolve) => {
          releases.push(() => {
            counts.opened++;
            let closed = false;
            const close = async () => {
              if (!closed) {
                closed = true;
                counts.closed++;
              }
            };
            resolve({ iface: undefined, receiveBufferBytes: 0, close, [Symbol.asyncDispose]: close });
          });
        }),
    },
  };
  return { runtime, counts, releases };
}

/** A SETUP as the subscription server seals it, for the server at `target`. */
function setupFor(target: PeerEndpoint, group: Endpoint, action: 1 | 2): Buffer {
  return new ControlSealer(key).seal(
    encodeSetup(
      { sessionId: 0, sequence: 0, timestampUs: 0 },
      {
        action,
        group: group.address,
        port: group.port,
        source: undefined,
        bufferBytes: 0,
        bufferAgeMs: 0,
        target,
      },
    ),
  );
}

async function start(runtime: Runtime): Promise<RetransmitServer> {
  return startRetransmitServer(
    {
      joins: [],
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      keys: [key],
      bufferBytesMax: 1 << 20,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [],
      peers: [],
    },
    { runtime },
  );
}

describe('a retransmit server and the group sockets it opens on SETUP', () => {
  it('closes the socket of a join whose group was left while the socket opened', async () => {
    const { runtime, counts, releases } = slowGroups();
    const server = await start(runtime);
    const controller = createSocket('udp4');
    await new Promise<void>((resolve) => controller.bind(0, '127.0.0.1', resolve));
    try {
      const group = parseGroup(`239.255.81.1:${freshPort()}`, 'group');
      const send = (datagram: Buffer) => controller.send(datagram, server.local.port, server.local.address);
      send(setupFor(server.local, group, SetupAction.join));
      await waitUntil('the join', () => releases.length === 1, 5_000);
      send(setupFor(server.local, group, SetupAction.leave));
      await waitUntil('the leave', () => server.status().sessions.length === 0, 5_000);
      releases[0]?.();
      await waitUntil('the opened socket closed', () => counts.opened === 1 && counts.closed === 1, 2_000);
      assert.equal(server.status().dropped['setup-join-failed'], undefined);
    } finally {
      controller.close();
      await server.close();
    }
    assert.equal(counts.closed, counts.opened, 'every socket opened is closed');
  });

  it('closes the socket of a join that was still opening when the server closed', async () => {
    const { runtime, counts, releases } = slowGroups();
    const server = await start(runtime);
    const controller = createSocket('udp4');
    await new Promise<void>((resolve) => controller.bind(0, '127.0.0.1', resolve));
    try {
      const group = parseGroup(`239.255.81.2:${freshPort()}`, 'group');
      controller.send(
        setupFor(server.local, group, SetupAction.join),
        server.local.port,
        server.local.address,
      );
      await waitUntil('the join', () => releases.length === 1, 5_000);
    } finally {
      controller.close();
      await server.close();
    }
    releases[0]?.();
    await waitUntil('the opened socket closed', () => counts.opened === 1 && counts.closed === 1, 2_000);
  });

  it('closes every socket it opened when its start fails (a group that cannot be joined)', async () => {
    const counts = { opened: 0, closed: 0 };
    const owned = <T extends { close(): Promise<void> }>(socket: T): T => {
      counts.opened++;
      const close = socket.close.bind(socket);
      return Object.assign(socket, {
        close: async () => {
          counts.closed++;
          await close();
        },
      });
    };
    let joins = 0;
    const runtime: Runtime = {
      ...systemRuntime,
      transport: {
        ...systemRuntime.transport,
        openControl: async (listen, onDatagram): Promise<ControlSocket> =>
          owned(await systemRuntime.transport.openControl(listen, onDatagram)),
        openReceiver: async (): Promise<ReceiverSocket> => {
          if (++joins === 2) {
            throw new Error('join EADDRNOTAVAIL');
          }
          const close = async () => undefined;
          return owned({ iface: undefined, receiveBufferBytes: 0, close, [Symbol.asyncDispose]: close });
        },
      },
    };
    const groups = [1, 2].map((i) => parseGroup(`239.255.81.${10 + i}:${freshPort()}`, 'group'));
    await assert.rejects(
      startRetransmitServer(
        {
          joins: groups.map((group) => ({ group })),
          listen: { address: '127.0.0.1', port: 0, family: 4 },
          keys: [key],
          bufferBytesMax: 1 << 20,
          bufferAgeMs: 60_000,
          repairRateBitsPerSecond: 100_000_000,
          announceTo: [],
          peers: [],
        },
        { runtime },
      ),
      /EADDRNOTAVAIL/,
    );
    assert.equal(counts.opened, 2, 'the control socket and the first group');
    assert.equal(counts.closed, counts.opened, 'every socket opened is closed');
  });
});
