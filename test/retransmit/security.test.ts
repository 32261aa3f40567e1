import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { after, afterEach, before, describe, it } from 'node:test';
import { ControlChannel, ControlSealer, controlKey } from '../../src/crypto/control-auth.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import type { TimeSource } from '../../src/net/clock.js';
import {
  decodeAnnounce,
  encodeNack,
  encodeSetup,
  type PeerEndpoint,
  SetupAction,
} from '../../src/protocol/control.js';
import { offsetType, PacketType } from '../../src/protocol/packet.js';
import { type RetransmitServer, startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openTickerInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { openSetupSender } from '../../src/subscription/setup-sender.js';
import { crafter, data } from '../helpers/craft.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { waitUntil } from '../helpers/wait.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until condition holds (a readiness signal, not a fixed sleep); fails after timeoutMs. */
const waitFor = (what: string, condition: () => boolean, timeoutMs = 5_000) =>
  waitUntil(what, condition, timeoutMs);

/**
 * Everything a test opened, closed after it whether it passed or failed: a server or socket left
 * open when an assertion fails keeps the process alive, and the run hangs instead of failing.
 */
const opened: Array<{ close(): Promise<void> | void }> = [];
afterEach(async () => {
  for (const resource of opened.splice(0).reverse()) {
    await resource.close();
  }
});

async function retransmitServer(group: Endpoint | undefined, port = 0): Promise<RetransmitServer> {
  const server = await startRetransmitServer({
    joins: group === undefined ? [] : [{ group }],
    iface: loopbackIface,
    listen: { address: '127.0.0.1', port, family: 4 },
    keys: [key],
    bufferBytesMax: 1 << 20,
    bufferAgeMs: 60_000,
    repairRateBitsPerSecond: 100_000_000,
    announceTo: [],
    peers: [],
  });
  opened.push(server);
  return server;
}

/** One run of a ticker session: 50 packets of 100 bytes from sequence 100; the same run when repeated. */
async function sendRun(group: Endpoint, run: { sessionId: number; incarnation: number }): Promise<void> {
  const source = createSource(
    {
      group,
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 100,
      sessionName: 't',
      firstSequence: 100,
      startDelayMs: 0,
      ...run,
    },
    { input: openTickerInput({ ticksPerSecond: 1000, tickCount: 50 }) },
  );
  await source.run();
}

/** A UDP socket on loopback that counts what comes back, and (for a requester) its control channel. */
interface Peer {
  readonly socket: Socket;
  readonly at: PeerEndpoint;
  readonly channel: ControlChannel;
  bytesBack: number;
  send(datagram: Buffer, to: PeerEndpoint): void;
  close(): void;
}

async function openPeer(clock?: TimeSource): Promise<Peer> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const channel = new ControlChannel([key], clock === undefined ? {} : { clock });
  let closed = false;
  const peer: Peer = {
    socket,
    at: { address: '127.0.0.1', port: socket.address().port },
    channel,
    bytesBack: 0,
    send: (datagram, to) => socket.send(datagram, to.port, to.address),
    close: () => {
      if (!closed) {
        closed = true; // idempotent: the test closes it, and so does afterEach when it failed first
        socket.close();
      }
    },
  };
  opened.push(peer);
  socket.on('message', (message, remote) => {
    peer.bytesBack += message.length;
    if (message[offsetType] === PacketType.announce) {
      channel.accept(message, remote, decodeAnnounce, 'announce', () => undefined); // learns the id
    }
  });
  return peer;
}

/** A NACK for packets 100-139 of the run, asking for answers at the requester's own address. */
function nackFrom(
  requester: Peer,
  to: PeerEndpoint,
  run: { sessionId: number; incarnation: number },
): Buffer {
  return requester.channel.seal(
    encodeNack(
      { sessionId: run.sessionId, incarnation: run.incarnation, sequence: 100, timestampUs: 0 },
      { replyTo: requester.at, ranges: [{ start: 100, count: 40 }] },
    ),
    to,
  );
}

/** Sends a target-0 NACK and waits for the introduction that teaches the requester the server's id. */
async function learnId(
  requester: Peer,
  server: RetransmitServer,
  run: { sessionId: number; incarnation: number },
) {
  const before = requester.bytesBack;
  const first = nackFrom(requester, server.local, run);
  requester.send(first, server.local);
  await waitFor('the introduction', () => requester.channel.targetIdOf(server.local) !== 0);
  const introductionBytes = requester.bytesBack - before;
  assert.ok(
    introductionBytes <= first.length,
    `${introductionBytes} bytes back for a ${first.length}-byte NACK`,
  );
  return first;
}

describe('a retransmit server answers only repair servers it knows', () => {
  it('forged, replayed, unknown-key and malformed NACKs are counted and dropped; no byte goes back', async () => {
    const group = parseGroup(`239.255.80.1:${freshPort()}`, 'group');
    const server = await retransmitServer(group);
    const run = { sessionId: 0x5e55_1001, incarnation: 0x1ca7_0001 };
    await sendRun(group, run);
    await waitFor('the buffer', () => server.status().sessions[0]?.heldPackets === 50);
    const attacker = await openPeer();
    const nack = () =>
      encodeNack(
        { sessionId: run.sessionId, incarnation: run.incarnation, sequence: 100, timestampUs: 1 },
        { replyTo: attacker.at, ranges: [{ start: 100, count: 40 }] },
      );
    const forged = new ControlSealer(key).seal(nack());
    forged[forged.length - 3] = (forged[forged.length - 3] ?? 0) ^ 0x10;
    attacker.send(forged, server.local);
    attacker.send(
      new ControlSealer(controlKey(Buffer.from('a guess at the secret, wrong'))).seal(nack()),
      server.local,
    );
    attacker.send(nack(), server.local); // no tag at all
    attacker.send(Buffer.from('garbage that is not a packet'), server.local);
    attacker.send(new ControlSealer(key).seal(nack()).subarray(0, 40), server.local);
    await waitFor(
      'five drops',
      () => Object.values(server.status().dropped).reduce((a, b) => a + b, 0) === 5,
    );
    assert.equal(attacker.bytesBack, 0, 'nothing is sent to an address that has not proven who it is');
    const dropped = server.status().dropped;
    assert.equal(dropped['nack-bad-tag'], 1, JSON.stringify(dropped));
    assert.equal(dropped['nack-unknown-key'], 2, JSON.stringify(dropped)); // a wrong secret, and no tag at all
    assert.equal(dropped['unexpected-type'], 1, JSON.stringify(dropped));
    assert.equal((dropped['nack-length-mismatch'] ?? 0) + (dropped['nack-truncated'] ?? 0), 1);
    assert.equal(server.status().repairsSent, 0);

    // A genuine NACK is answered once the requester names the server; its replay is not.
    const requester = await openPeer();
    await learnId(requester, server, run);
    assert.equal(server.status().repairsSent, 0, 'a NACK naming no target gets no REPAIR');
    const genuine = nackFrom(requester, server.local, run);
    const beforeGenuine = requester.bytesBack;
    requester.send(genuine, server.local);
    await waitFor('40 repairs', () => server.status().repairsSent === 40);
    const repairBytes = server.status().repairBytesSent;
    assert.ok(repairBytes > 40 * 100);
    await waitFor('every byte of them', () => requester.bytesBack - beforeGenuine === repairBytes);
    const afterGenuine = requester.bytesBack;
    requester.send(genuine, server.local);
    await waitFor('the replay counted', () => server.status().dropped['nack-replayed'] === 1);
    await sleep(50);
    assert.equal(requester.bytesBack, afterGenuine, 'a replayed NACK gets nothing');
    attacker.close();
    requester.close();
    await server.close();
  });
});

describe('issue 9, item 5: a captured control message cannot be turned on another server or a later life', () => {
  const group = parseGroup(`239.255.80.3:${freshPort()}`, 'group');
  const run = { sessionId: 0x5e55_1003, incarnation: 0x1ca7_0003 };
  let first: RetransmitServer;
  let second: RetransmitServer;
  let requester: Peer;
  let victim: Peer;
  let targetZeroCapture: Buffer;
  let capture: Buffer;

  /** What `before` opened: shared by the tests below, closed once after them (not after each). */
  let shared: Array<{ close(): Promise<void> | void }> = [];
  before(async () => {
    try {
      first = await retransmitServer(group);
      second = await retransmitServer(group);
      await sendRun(group, run);
      await waitFor('both buffers', () =>
        [first, second].every((server) => server.status().sessions[0]?.heldPackets === 50),
      );
      requester = await openPeer();
      victim = await openPeer();
      targetZeroCapture = await learnId(requester, first, run);
      capture = nackFrom(requester, first.local, run);
      requester.send(capture, first.local); // the genuine NACK, captured on the wire
      await waitFor('the genuine answer', () => first.status().repairsSent === 40);
    } finally {
      shared = opened.splice(0);
    }
  });
  after(async () => {
    for (const resource of shared.reverse()) {
      await resource.close();
    }
    await first?.close(); // the restarted one, when a test restarted it
  });

  it('a captured NACK replayed to a second retransmit server from another socket gets zero bytes', async () => {
    victim.send(capture, second.local);
    await waitFor('the wrong-target drop', () => second.status().dropped['nack-wrong-target'] === 1);
    victim.send(targetZeroCapture, second.local);
    await waitFor('the reply-mismatch drop', () => second.status().dropped['nack-reply-mismatch'] === 1);
    const requesterBefore = requester.bytesBack;
    requester.send(capture, second.local); // even from the address it names
    await waitFor('the second wrong-target drop', () => second.status().dropped['nack-wrong-target'] === 2);
    await sleep(50);
    assert.equal(victim.bytesBack, 0, JSON.stringify(second.status().dropped));
    assert.equal(requester.bytesBack, requesterBefore);
    assert.equal(second.status().repairsSent, 0);
    assert.equal(second.status().bytesSent, 0);
  });

  it('a captured NACK replayed to the first server after its restart is not answered', async () => {
    const port = first.local.port;
    await first.close();
    first = await retransmitServer(group, port);
    opened.pop(); // shared with the tests after this one: closed in after()
    await sendRun(group, run); // the restarted server holds the very packets the capture asks for
    await waitFor('the buffer', () => first.status().sessions[0]?.heldPackets === 50);
    const before = requester.bytesBack;
    requester.send(capture, first.local);
    await waitFor('the wrong-target drop', () => first.status().dropped['nack-wrong-target'] === 1);
    requester.send(targetZeroCapture, first.local);
    await waitFor('the before-start drop', () => first.status().dropped['nack-before-start'] === 1);
    await sleep(50);
    assert.equal(requester.bytesBack, before);
    assert.equal(first.status().repairsSent, 0);
    // The same requester, once it has learned the new id, is answered as before.
    const fresh = await openPeer();
    await learnId(fresh, first, run);
    fresh.send(nackFrom(fresh, first.local, run), first.local);
    await waitFor('40 repairs', () => first.status().repairsSent === 40);
    fresh.close();
  });
});

describe('SETUP', () => {
  /** A SETUP as the subscription server seals it: target 0, the server named by its endpoint. */
  const setupFor = (target: PeerEndpoint, group: Endpoint, action: 1 | 2) =>
    new ControlSealer(key).seal(
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

  it('an authenticated SETUP makes a retransmit server join and buffer a session; a forged one does nothing', async () => {
    const group = parseGroup(`239.255.80.2:${freshPort()}`, 'group');
    const server = await retransmitServer(undefined);
    const controller = await openPeer();
    const forged = new ControlSealer(controlKey(Buffer.from('not the operator at all, really'))).seal(
      encodeSetup(
        { sessionId: 0, sequence: 0, timestampUs: 0 },
        {
          action: SetupAction.join,
          group: group.address,
          port: group.port,
          source: undefined,
          bufferBytes: 0,
          bufferAgeMs: 0,
          target: server.local,
        },
      ),
    );
    controller.send(forged, server.local);
    await waitFor('the drop', () => server.status().dropped['setup-unknown-key'] === 1);
    assert.equal(server.status().sessions.length, 0);
    await using setup = await openSetupSender(key);
    await setup.send('join', { group: group.address, port: group.port, source: undefined }, [
      `127.0.0.1:${server.local.port}`,
    ]);
    await waitFor('the join', () => server.status().sessions.length === 1);
    const run = { sessionId: 0x5e55_1002, incarnation: 0x1ca7_0002 };
    await sendRun(group, run);
    await waitFor('the buffer', () => server.status().sessions[0]?.heldPackets === 50);
    assert.equal(server.status().sessions[0]?.sessionId, run.sessionId);
    controller.close();
    await server.close();
  });

  it("a genuine SETUP leave stops receiving but still serves what is buffered (a session's end took the packets from a repair server still repairing it)", async () => {
    const group = parseGroup(`239.255.80.7:${freshPort()}`, 'group');
    const server = await retransmitServer(group);
    const run = { sessionId: 0x5e55_1007, incarnation: 0x1ca7_0007 };
    await sendRun(group, run);
    await waitFor('the buffer', () => server.status().sessions[0]?.heldPackets === 50);
    const controller = await openPeer();
    controller.send(setupFor(server.local, group, SetupAction.leave), server.local);
    await waitFor('the leave', () => server.status().sessions.length === 0);
    const requester = await openPeer();
    await learnId(requester, server, run);
    requester.send(nackFrom(requester, server.local, run), server.local);
    await waitFor('the answers', () => server.status().repairsSent === 40);
    controller.close();
    requester.close();
    await server.close();
  });

  it("a group joined again by SETUP after a leave serves what it buffered before the leave (a run's packets went not held)", async () => {
    const group = parseGroup(`239.255.80.8:${freshPort()}`, 'group');
    const server = await retransmitServer(undefined);
    const controller = await openPeer();
    const run = { sessionId: 0x5e55_1008, incarnation: 0x1ca7_0008 };
    controller.send(setupFor(server.local, group, SetupAction.join), server.local);
    await waitFor('the join', () => server.status().sessions.length === 1);
    await sendRun(group, run);
    await waitFor('the buffer', () => server.status().sessions[0]?.heldPackets === 50);
    controller.send(setupFor(server.local, group, SetupAction.leave), server.local);
    await waitFor('the leave', () => server.status().sessions.length === 0);
    // Joined again (a controller that resent its SETUP): the run goes on, from 150.
    controller.send(setupFor(server.local, group, SetupAction.join), server.local);
    await waitFor('the join again', () => server.status().sessions.length === 1);
    const out = await crafter(group);
    opened.push(out);
    await waitFor('the run going on', () => {
      out.send(data(run, 150, Buffer.alloc(100, 1)));
      return server.status().packetsIn >= 51;
    });
    const requester = await openPeer();
    await learnId(requester, server, run);
    requester.send(nackFrom(requester, server.local, run), server.local);
    await waitFor('the answers', () => server.status().repairsSent === 40);
    assert.equal(server.status().notHeldSent, 0, 'nothing it held was answered not held');
  });

  it('issue 9, item 5: a captured SETUP leave replayed to another server, or after a restart, changes nothing', async () => {
    const group = parseGroup(`239.255.80.4:${freshPort()}`, 'group');
    const first = await retransmitServer(group);
    const second = await retransmitServer(group);
    const controller = await openPeer();
    const leave = setupFor(first.local, group, SetupAction.leave); // captured on its way to the first
    controller.send(leave, second.local);
    await waitFor('the drop', () => second.status().dropped['setup-wrong-endpoint'] === 1);
    assert.equal(second.status().sessions.length, 1, 'the other server stays joined');

    const port = first.local.port;
    await first.close();
    const restarted = await retransmitServer(group, port);
    controller.send(leave, restarted.local);
    await waitFor('the drop', () => restarted.status().dropped['setup-before-start'] === 1);
    assert.equal(restarted.status().sessions.length, 1, 'the restarted server stays joined');

    controller.send(setupFor(restarted.local, group, SetupAction.leave), restarted.local);
    await waitFor('a genuine leave', () => restarted.status().sessions.length === 0);
    controller.close();
    await second.close();
    await restarted.close();
  });
});

describe('issue 9, item 6: wall-clock corrections', () => {
  it('a retransmit server started while its host clock was 120 s off, then corrected, answers NACKs', async (t) => {
    const realNowMs = Date.now.bind(Date);
    let stepMs = 120_000;
    t.mock.method(Date, 'now', () => realNowMs() + stepMs);
    const group = parseGroup(`239.255.80.5:${freshPort()}`, 'group');
    const server = await retransmitServer(group);
    const run = { sessionId: 0x5e55_1005, incarnation: 0x1ca7_0005 };
    await sendRun(group, run);
    await waitFor('the buffer', () => server.status().sessions[0]?.heldPackets === 50);
    // The requester's host has the right time all along.
    const requester = await openPeer({ nowMs: () => performance.now(), wallUs: () => realNowMs() * 1000 });
    requester.send(nackFrom(requester, server.local, run), server.local);
    await waitFor('the stale drop', () => server.status().dropped['nack-stale'] === 1);
    stepMs = 0; // the server's clock is corrected
    await learnId(requester, server, run);
    requester.send(nackFrom(requester, server.local, run), server.local);
    await waitFor('40 repairs', () => server.status().repairsSent === 40);
    stepMs = -120_000; // and stepped the other way, then corrected again
    requester.send(nackFrom(requester, server.local, run), server.local);
    await waitFor('the second stale drop', () => server.status().dropped['nack-stale'] === 2);
    stepMs = 0;
    // Another repair server asks for the same packets (the first requester's were answered moments
    // ago and would not be sent to it again: docs/architecture.md, "Pacing repairs").
    const second = await openPeer({ nowMs: () => performance.now(), wallUs: () => realNowMs() * 1000 });
    await learnId(second, server, run);
    second.send(nackFrom(second, server.local, run), server.local);
    await waitFor('40 more repairs', () => server.status().repairsSent === 80);
    second.close();
    requester.close();
    await server.close();
  });
});
