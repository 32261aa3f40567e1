/**
 * `gatecast agent --token` and sealed DATA altered or replayed on S2 (docs/security.md, "The
 * packet engine"): a restricted ticker goes through a repair server to S2, where a host on the
 * link sends, for one DATA in 20, copies with one bit flipped in the header (the associated data),
 * the ciphertext and the tag, and replays of genuine DATA. The application reads exactly the
 * source's payloads, in order, nothing else; each altered copy is counted as a bad tag.
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { aeadEngine } from '../../src/crypto/aead-engine.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import { decodeHeader, headerBytes, offsetTimestamp, PacketType } from '../../src/protocol/packet.js';
import { startAgent } from '../../src/receiver/agent.js';
import { startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { application, makeToken, newsGrant, restrictedTicker } from '../helpers/restricted-bed.js';
import { waitUntil } from '../helpers/wait.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-agent-tamper-'));
const closers: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
  rmSync(directory, { recursive: true, force: true });
});
const key = controlKey(Buffer.from('agent tamper test secret, not for use'));
const listen = { address: '127.0.0.1', port: 0, family: 4 as const };
const ticks = 600;
const every = 20;

/** A host on S2 that sends altered copies of some DATA, and replays, to S2; counts what it sent. */
async function tamperer(s2: Endpoint) {
  const counts = { altered: 0, replayed: 0 };
  const sender = createSocket({ type: 'udp4' });
  await new Promise<void>((resolve) => sender.bind(0, loopbackIface, resolve));
  sender.setMulticastInterface(loopbackIface);
  sender.setMulticastLoopback(true);
  const ownPort = sender.address().port;
  const listener = createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve) => listener.bind(s2.port, s2.address, resolve));
  listener.addMembership(s2.address, loopbackIface);
  const genuine: Buffer[] = [];
  listener.on('message', (datagram, from) => {
    const header = decodeHeader(datagram);
    if (from.port === ownPort || !header.ok || header.value.type !== PacketType.data) {
      return;
    }
    genuine.push(datagram);
    if (genuine.length % every === 0) {
      const copies = [Buffer.from(datagram), Buffer.from(datagram), Buffer.from(datagram)];
      const [aad, body, tag] = copies as [Buffer, Buffer, Buffer];
      aad[offsetTimestamp + 7] = (aad[offsetTimestamp + 7] ?? 0) ^ 0x01;
      body[headerBytes + 1] = (body[headerBytes + 1] ?? 0) ^ 0x80;
      tag[tag.length - 1] = (tag[tag.length - 1] ?? 0) ^ 0x20;
      for (const copy of copies) {
        counts.altered++;
        sender.send(copy, s2.port, s2.address);
      }
      counts.replayed++;
      sender.send(genuine[genuine.length - every] as Buffer, s2.port, s2.address);
    }
  });
  closers.push(() => {
    listener.close();
    sender.close();
  });
  return counts;
}

describe(`gatecast agent --token: altered and replayed sealed DATA on S2 (engine ${aeadEngine().name})`, () => {
  it('the application reads exactly the source payloads; every altered copy is counted as a bad tag', async () => {
    const s1 = parseGroup(`239.255.97.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.97.2:${freshPort()}`, 's2');
    const local = parseGroup(`239.255.97.3:${freshPort()}`, 'application');
    const retransmit = await startRetransmitServer({
      joins: [{ group: s1 }],
      iface: loopbackIface,
      listen,
      keys: [key],
      bufferBytesMax: 64 * 1024 * 1024,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 500_000_000,
      announceTo: [],
      peers: [],
    });
    closers.push(() => retransmit.close());
    const repair = await startRepairServer({
      group: s1,
      iface: loopbackIface,
      listen,
      keys: [key],
      retransmit: [retransmit.local],
      emit: s2,
      latencyMs: undefined,
    });
    closers.push(() => repair.close());
    const got = await application(local, closers);
    const token = makeToken(join(directory, 'token.json'), newsGrant());
    closers.push(() => token.close());
    const agent = await startAgent({
      from: s2,
      fromIface: loopbackIface,
      deliver: local,
      deliverIface: loopbackIface,
      s2Key: undefined,
      protection: { token, sourcePublicKey: undefined, onRestricted: () => {} },
    });
    closers.push(() => agent.close());
    const counts = await tamperer(s2);
    const sent = await restrictedTicker(s1, 81, ticks);
    const state = () => JSON.stringify({ got: got.length, counts, agent: agent.status() });
    await waitUntil('every payload at the application', () => got.length >= ticks, 20_000).catch((error) => {
      throw new Error(`${error}: ${state()}`);
    });
    await waitUntil(
      'every altered copy counted',
      () => (agent.status().keys?.packetsBadTag ?? 0) >= counts.altered,
      20_000,
    ).catch((error) => {
      throw new Error(`${error}: ${state()}`);
    });
    assert.ok(counts.altered >= 3 * 10 && counts.replayed >= 10, state());
    assert.deepEqual(got, sent, 'exactly the source payloads, in order');
    const status = agent.status();
    assert.equal(status.keys?.packetsBadTag, counts.altered, state());
    // A replay is opened (its tag is genuine), then dropped as a duplicate.
    assert.ok(status.decrypted >= ticks && status.decrypted <= ticks + counts.replayed, state());
    assert.ok(status.duplicates >= counts.replayed, state());
  });
});
