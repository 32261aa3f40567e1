import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { afterEach, describe, it } from 'node:test';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import {
  decodeAnnounce,
  decodeRepair,
  encodeNack,
  encodeQuality,
  ListenState,
  type PeerEndpoint,
} from '../../src/protocol/control.js';
import { offsetType, PacketType } from '../../src/protocol/packet.js';
import { type RetransmitServer, startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openTickerInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { waitUntil } from '../helpers/wait.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));
const run = { sessionId: 0x0fe7_c401, incarnation: 0x1ca7_0401 };

/**
 * Everything a test opened, closed after it whether it passed or failed: a server left open when
 * an assertion fails keeps the process alive, and the run hangs instead of reporting the failure.
 */
const opened: Array<{ close(): Promise<void> | void }> = [];
afterEach(async () => {
  for (const resource of opened.splice(0).reverse()) {
    await resource.close();
  }
});

async function retransmitServer(
  group: Endpoint,
  peers: PeerEndpoint[],
  peerFetch = true,
): Promise<RetransmitServer> {
  const server = await startRetransmitServer({
    joins: [{ group }],
    iface: loopbackIface,
    listen: { address: '127.0.0.1', port: 0, family: 4 },
    keys: [key],
    bufferBytesMax: 1 << 20,
    bufferAgeMs: 60_000,
    repairRateBitsPerSecond: 100_000_000,
    announceTo: [],
    peers: peers.map((peer) => ({ ...peer, family: 4 as const })),
    peerFetch,
  });
  opened.push(server);
  return server;
}

/** Sends 50 packets of the run from firstSequence (the same run when called twice). */
async function sendPart(group: Endpoint, firstSequence: number): Promise<void> {
  const source = createSource(
    {
      group,
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 100,
      sessionName: 't',
      firstSequence,
      startDelayMs: 0,
      ...run,
    },
    { input: openTickerInput({ ticksPerSecond: 1000, tickCount: 50 }) },
  );
  await source.run();
}

/**
 * A repair server's stand-in: NACKs `count` sequences from `start` (default 100-109) and collects
 * the REPAIRs that come back.
 */
async function askFor(server: RetransmitServer, start = 100, count = 10) {
  const socket = createSocket('udp4');
  let closed = false;
  const close = () => {
    if (!closed) {
      closed = true;
      socket.close();
    }
  };
  opened.push({ close });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const at = { address: '127.0.0.1', port: socket.address().port };
  const channel = new ControlChannel([key]);
  const held = new Map<number, Buffer>();
  let notHeld = 0;
  /** Held REPAIRs carrying the run's END (asked for by its sequence). */
  let ends = 0;
  socket.on('message', (message, remote) => {
    if (message[offsetType] === PacketType.announce) {
      channel.accept(message, remote, decodeAnnounce, 'announce', () => undefined);
      return;
    }
    const repair = channel.accept(message, remote, decodeRepair, 'repair', () => undefined);
    if (repair?.data !== undefined) {
      held.set(repair.sequence, Buffer.from(repair.data.payload));
    } else if (repair?.end !== undefined) {
      ends++;
    } else if (repair !== undefined) {
      notHeld += repair.notHeldCount;
    }
  });
  const nack = () =>
    channel.seal(
      encodeNack({ ...run, sequence: start, timestampUs: 0 }, { replyTo: at, ranges: [{ start, count }] }),
      server.local,
    );
  socket.send(nack(), server.local.port, server.local.address);
  await waitUntil('the introduction', () => channel.targetIdOf(server.local) !== 0, 5_000);
  socket.send(nack(), server.local.port, server.local.address);
  await waitUntil(`${count} answers`, () => held.size + notHeld + ends >= count, 5_000).catch(
    (error: unknown) => {
      throw new Error(`${String(error)}: ${held.size} held, ${notHeld} not held, ${ends} ends`);
    },
  );
  close();
  return { held, notHeld, ends };
}

describe('peer fetch between retransmit servers (loopback)', () => {
  it('a server that missed the first packets fills them from its peer before it answers', async () => {
    const group = parseGroup(`239.255.81.1:${freshPort()}`, 'group');
    const holder = await retransmitServer(group, []);
    await sendPart(group, 100);
    await waitUntil(
      'the holder buffers 100-149',
      () => holder.status().sessions[0]?.heldPackets === 50,
      5_000,
    );
    const late = await retransmitServer(group, [holder.local]);
    const lateNoFetch = await retransmitServer(group, [holder.local], false);
    {
      await sendPart(group, 150);
      await waitUntil(
        'the late servers buffer 150-199',
        () =>
          late.status().sessions[0]?.heldPackets === 50 &&
          lateNoFetch.status().sessions[0]?.heldPackets === 50,
        5_000,
      );
      const without = await askFor(lateNoFetch);
      assert.equal(without.held.size, 0, 'without peer fetch the late server holds none of 100-109');
      assert.equal(without.notHeld, 10);
      const answers = await askFor(late);
      assert.equal(answers.notHeld, 0);
      assert.deepEqual(
        [...answers.held.keys()].sort((a, b) => a - b),
        Array.from({ length: 10 }, (_, i) => 100 + i),
      );
      const status = late.status();
      assert.equal(status.peerFetch.fetchedPackets, 10);
      assert.equal(status.sessions[0]?.fetchedPackets, 10);
      assert.ok(status.peerFetch.fetchNacksSent >= 1);
      assert.equal(holder.status().peerFetch.fetches, 0, 'a peer fetch is never forwarded');
    }
  });

  it('a tail probe of a paused ticker: no peer fetch for sequences the run has not reached, at once not held', async () => {
    const group = parseGroup(`239.255.81.3:${freshPort()}`, 'group');
    const holder = await retransmitServer(group, []);
    const server = await retransmitServer(group, [holder.local]);
    await sendPart(group, 100); // the ticker pauses after 149
    await waitUntil(
      'both servers buffer 100-149',
      () =>
        holder.status().sessions[0]?.heldPackets === 50 && server.status().sessions[0]?.heldPackets === 50,
      5_000,
    );
    const probe = await askFor(server, 150, 10);
    assert.equal(probe.held.size, 0);
    assert.equal(probe.ends, 1, "150 is the run's END, kept and served");
    assert.equal(probe.notHeld, 9);
    const status = server.status();
    assert.equal(status.peerFetch.fetches, 0, 'nothing to fetch: 150-159 do not exist yet');
    assert.equal(status.peerFetch.fetchNacksSent, 0);
    const reached = await askFor(server, 140, 10);
    assert.equal(reached.held.size, 10, 'what the run reached is answered as before');
  });

  it('a QUALITY never adds a peer: a sealed QUALITY sent from a third address gets no fetch there', async () => {
    // A QUALITY's source address is not sealed: a captured one replayed from a victim's address
    // must not make a server send peer fetches to the victim (test/sim/found.md #6).
    const group = parseGroup(`239.255.81.2:${freshPort()}`, 'group');
    const late = await retransmitServer(group, []);
    const victim = createSocket('udp4');
    opened.push({ close: () => void victim.close() });
    await new Promise<void>((resolve) => victim.bind(0, '127.0.0.1', resolve));
    let victimBytes = 0;
    victim.on('message', (message) => {
      victimBytes += message.length;
    });
    {
      await sendPart(group, 150);
      await waitUntil(
        'the server buffers 150-199',
        () => late.status().sessions[0]?.heldPackets === 50,
        5_000,
      );
      const quality = new ControlChannel([key]).seal(
        encodeQuality(
          { sessionId: 0, sequence: 0, timestampUs: 0 },
          {
            sessions: [
              {
                sessionId: run.sessionId,
                incarnation: run.incarnation,
                received: 50,
                missing: 0,
                lossPpm: 0,
                jitterUs: 0,
                state: ListenState.listening,
              },
            ],
          },
        ),
      );
      victim.send(quality, late.local.port, late.local.address);
      // A second datagram behind the QUALITY on the same path: once its drop is counted, the
      // QUALITY (sent first) has been handled.
      victim.send(Buffer.alloc(3), late.local.port, late.local.address);
      await waitUntil('the QUALITY handled', () => late.status().dropped['unexpected-type'] === 1, 5_000);
      assert.deepEqual(late.status().dropped, { 'unexpected-type': 1 }, 'the QUALITY itself was accepted');
      const answers = await askFor(late);
      assert.equal(answers.held.size, 0, 'nothing to fetch from: no peer is configured or announced');
      assert.equal(answers.notHeld, 10);
      assert.equal(late.status().peerFetch.fetchNacksSent, 0, 'no fetch sent anywhere');
      assert.equal(victimBytes, 0, 'no byte to the address the QUALITY came from');
    }
  });
});
