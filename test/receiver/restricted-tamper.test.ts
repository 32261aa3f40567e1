/**
 * Sealed DATA altered or replayed on the way to a receiver, over loopback multicast, with the
 * packet engine in use (docs/security.md, "The packet engine"): one bit flipped in the header (the
 * associated data), in the ciphertext and in the tag, each copy ahead of the genuine datagram, and
 * genuine datagrams replayed later. Each altered copy is refused and counted — by the tag check,
 * or first by the source's manifest when the receiver has the source key (`--source-public`) —
 * none takes the genuine packet's place, no byte of it is written, and the file arrives whole.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { aeadEngine } from '../../src/crypto/aead-engine.js';
import { createReceiverProtection } from '../../src/crypto/restricted-session.js';
import { createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { parseGroup } from '../../src/net/address.js';
import { openReceiverSocket, type ReceiverSocketOptions } from '../../src/net/udp.js';
import { decodeHeader, headerBytes, offsetTimestamp, PacketType } from '../../src/protocol/packet.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { openFileInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';
import { makeToken, newsGrant, newsProtection, restrictedKeys } from '../helpers/restricted-bed.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-restricted-tamper-'));
after(() => rmSync(directory, { recursive: true, force: true }));
const fileBytes = randomBytes(600_000);
const filePath = join(directory, 'film.bin');
writeFileSync(filePath, fileBytes);
const fileSha = createHash('sha256').update(fileBytes).digest('hex');
const every = 40; // one DATA in 40 is tampered with

/** The three altered copies of a sealed DATA: a header bit (associated data), a ciphertext bit, a tag bit. */
function altered(datagram: Buffer): Buffer[] {
  const header = Buffer.from(datagram);
  header[offsetTimestamp + 7] = (header[offsetTimestamp + 7] ?? 0) ^ 0x01;
  const body = Buffer.from(datagram);
  body[headerBytes + 3] = (body[headerBytes + 3] ?? 0) ^ 0x80;
  const tag = Buffer.from(datagram);
  tag[tag.length - 1] = (tag[tag.length - 1] ?? 0) ^ 0x20;
  return [header, body, tag];
}

async function tamperedRun(withSourceKey: boolean) {
  const group = parseGroup(`239.255.52.1:${freshPort()}`, 'group');
  const sink = memorySink();
  const token = makeToken(join(directory, `token-${withSourceKey}.json`), newsGrant());
  const protection = createReceiverProtection(token, (refused) => {
    throw new Error(`the token refused: ${refused.message}`);
  });
  const signed = withSourceKey ? createSignedSessionGate(restrictedKeys.source.publicKey) : undefined;
  const genuine: Buffer[] = [];
  let tampered = 0;
  let replayed = 0;
  let signatures = 0;
  const openSocket = (options: ReceiverSocketOptions, onDatagram: (datagram: Buffer) => void) =>
    openReceiverSocket(options, (datagram) => {
      const header = decodeHeader(datagram);
      if (header.ok && header.value.type === PacketType.signature) {
        signatures++;
      }
      if (header.ok && header.value.type === PacketType.data) {
        genuine.push(Buffer.from(datagram));
        if (genuine.length % every === 0) {
          for (const copy of altered(datagram)) {
            tampered++;
            onDatagram(copy); // ahead of the genuine one: it must not take its place
          }
        }
        onDatagram(datagram);
        if (genuine.length % every === every / 2 && genuine.length > every) {
          replayed++;
          onDatagram(genuine[genuine.length - every] as Buffer); // a genuine DATA, again, later
        }
        return;
      }
      onDatagram(datagram);
    });
  const receiver = createReceiver(
    { group, iface: loopbackIface, timeoutMs: 5000, endGraceMs: 300 },
    { sink, protection, signed, openSocket },
  );
  let joined: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    joined = resolve;
  });
  const receiving = receiver.run({ onJoined: () => joined() });
  await ready;
  const source = createSource(
    {
      group,
      iface: loopbackIface,
      rateBitsPerSecond: 50_000_000,
      packetPayloadBytes: 1400,
      sessionName: 'film',
    },
    {
      input: await openFileInput(filePath),
      protection: newsProtection(restrictedKeys.serviceKey, restrictedKeys.source),
    },
  );
  await source.run();
  const summary = await receiving;
  token.close();
  return { summary, sink, protection, signed, tampered, replayed, signatures };
}

describe(`restricted receiver, tampered and replayed sealed DATA (engine ${aeadEngine().name})`, () => {
  it('with a token: every altered copy fails its tag and is counted; replays are duplicates; the file is whole', async () => {
    const { summary, sink, protection, tampered, replayed, signatures } = await tamperedRun(false);
    assert.equal(summary.outcome, 'complete', JSON.stringify({ summary, stats: protection.stats }));
    assert.equal(createHash('sha256').update(sink.bytes()).digest('hex'), fileSha);
    assert.ok(tampered >= 3 * 5 && replayed >= 5, `${tampered} altered, ${replayed} replayed`);
    assert.equal(protection.stats.packetsBadTag, tampered);
    assert.ok(summary.duplicates >= replayed, `${summary.duplicates} duplicates for ${replayed} replays`);
    // Without the source key the manifests, offer and control signatures go unchecked: each is counted.
    assert.ok(signatures > 0);
    assert.equal(protection.stats.signaturesUnchecked, signatures);
  });

  it('with the source key too: the manifest refuses every altered copy first (counted), none reaches the tag check', async () => {
    const { summary, sink, protection, signed, tampered, replayed } = await tamperedRun(true);
    assert.equal(
      summary.outcome,
      'complete',
      JSON.stringify({ summary, stats: protection.stats, signed: signed?.stats }),
    );
    assert.equal(createHash('sha256').update(sink.bytes()).digest('hex'), fileSha);
    assert.ok(tampered >= 3 * 5 && replayed >= 5, `${tampered} altered, ${replayed} replayed`);
    assert.equal(signed?.stats.forged['hash-mismatch'], tampered);
    assert.equal(protection.stats.packetsBadTag, 0);
    assert.equal(
      protection.stats.signaturesUnchecked,
      0,
      'the gate checks the signatures and passes none on',
    );
  });
});
