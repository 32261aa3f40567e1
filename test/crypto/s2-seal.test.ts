import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CipherError } from '../../src/crypto/errors.js';
import {
  newS2Key,
  nextS2Epoch,
  parseS2Key,
  readS2KeyFile,
  S2Opener,
  S2Sealer,
} from '../../src/crypto/s2-seal.js';
import {
  decodeHeader,
  decodePacket,
  encodeData,
  encodeDescriptor,
  encodeProgress,
  headerBytes,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import { sealedCarriedBytesMax } from '../../src/protocol/sizes.js';

const data = (sequence: number, payload: Buffer) =>
  encodeData({ sessionId: 0x51, incarnation: 0x1234, sequence, timestampUs: 1_000 }, payload);

describe('sealed S2 envelopes (docs/protocol.md, "SEALED")', () => {
  it('DATA, DESCRIPTOR, HEARTBEAT and END come out whole under the key, and no payload byte is in clear', () => {
    const key = newS2Key(1);
    const sealer = new S2Sealer(0xcafe_0001, key);
    const opener = new S2Opener();
    opener.setKey(key);
    const payload = Buffer.from('the repaired copy of S1 — only the entitled agent reads this line');
    const datagrams = [
      encodeDescriptor(
        { sessionId: 0x51, incarnation: 0x1234, sequence: 0, timestampUs: 1 },
        {
          firstSequence: 0,
          packetPayloadBytes: 1400,
          kind: SessionKind.file,
          totalBytes: payload.length,
          rateBitsPerSecond: 0,
          sha256: undefined,
          name: 'secret-file-name.bin',
        },
      ),
      data(0, payload),
      encodeProgress(
        PacketType.heartbeat,
        { sessionId: 0x51, incarnation: 0x1234, sequence: 1, timestampUs: 2 },
        { packetCount: 1, byteCount: payload.length },
      ),
      encodeProgress(
        PacketType.end,
        { sessionId: 0x51, incarnation: 0x1234, sequence: 1, timestampUs: 3 },
        { packetCount: 1, byteCount: payload.length },
      ),
    ];
    for (const [i, datagram] of datagrams.entries()) {
      const envelope = sealer.seal(datagram, 1_764_000_000_000_000);
      const header = decodeHeader(envelope);
      assert.ok(header.ok);
      assert.equal(header.value.type, PacketType.sealed);
      assert.equal(header.value.keyEpoch, 1);
      assert.equal(header.value.sequence, i + 1, 'the envelope counter');
      assert.equal(header.value.incarnation, 0xcafe_0001, 'the sender id');
      assert.equal(header.value.sessionId, 0x51);
      assert.equal(envelope.length, datagram.length + headerBytes + 16);
      assert.equal(envelope.includes(datagram.subarray(headerBytes, headerBytes + 16)), false);
      assert.deepEqual(opener.open(envelope), datagram);
    }
    const envelope = sealer.seal(data(1, payload), 5);
    assert.equal(envelope.includes(payload.subarray(0, 8)), false, 'no 8 payload bytes in a row in clear');
    assert.equal(envelope.includes(Buffer.from('secret')), false);
  });

  it('a plain receiver’s decoder drops an envelope as unsupported; it never sees DATA in it', () => {
    const key = newS2Key(7);
    const envelope = new S2Sealer(9, key).seal(data(3, randomBytes(100)), 1);
    const decoded = decodePacket(envelope);
    assert.equal(decoded.ok, false);
    assert.equal(decoded.ok ? '' : decoded.reason, 'unsupported-type');
  });

  it('a flipped bit anywhere, another key, a truncated envelope: nothing is returned, the reason is', () => {
    const key = newS2Key(1);
    const sealer = new S2Sealer(77, key);
    const opener = new S2Opener();
    opener.setKey(key);
    const envelope = sealer.seal(data(5, randomBytes(300)), 10);
    for (let bit = 0; bit < envelope.length * 8; bit += 7) {
      const flipped = Buffer.from(envelope);
      flipped[bit >> 3] = (flipped[bit >> 3] ?? 0) ^ (1 << (bit & 7));
      const opened = opener.open(flipped);
      assert.ok(typeof opened === 'string', `bit ${bit} flipped was opened`);
      assert.ok(['bad-tag', 'malformed', 'no-key'].includes(opened), `bit ${bit}: ${opened}`);
    }
    const stranger = new S2Opener();
    stranger.setKey({ epoch: 1, key: randomBytes(32) });
    assert.equal(stranger.open(envelope), 'bad-tag', 'the same epoch under another key');
    assert.equal(new S2Opener().open(envelope), 'no-key');
    assert.equal(opener.open(envelope.subarray(0, headerBytes + 20)), 'malformed');
    assert.equal(opener.open(data(5, Buffer.alloc(64))), 'malformed', 'plain DATA is not an envelope');
  });

  it('rotation: envelopes after it open only with the new epoch’s key; the old key opens none of them', () => {
    const first = newS2Key(1);
    const sealer = new S2Sealer(1234, first);
    const departed = new S2Opener();
    departed.setKey(first);
    const staying = new S2Opener();
    staying.setKey(first);
    const before = sealer.seal(data(1, Buffer.alloc(50, 1)), 1);
    assert.ok(Buffer.isBuffer(departed.open(before)));
    const second = newS2Key(nextS2Epoch(first.epoch));
    assert.equal(second.epoch, 2);
    assert.notDeepEqual(second.key, first.key);
    sealer.rotate(second);
    assert.equal(sealer.epoch, 2);
    assert.throws(() => sealer.rotate({ epoch: 2, key: randomBytes(32) }), CipherError);
    staying.setKey(second);
    for (let sequence = 2; sequence < 50; sequence++) {
      const after = sealer.seal(data(sequence, Buffer.alloc(50, sequence)), sequence);
      assert.equal(departed.open(after), 'no-key');
      assert.deepEqual(staying.open(after), data(sequence, Buffer.alloc(50, sequence)));
      // A departed agent that relabels the epoch to its own still opens nothing.
      const relabelled = Buffer.from(after);
      relabelled.writeUInt16BE(1, 6);
      assert.equal(departed.open(relabelled), 'bad-tag');
    }
    assert.equal(nextS2Epoch(65_535), 1);
  });

  it('nonces never repeat: per key the counter only rises; two starts on one key file differ by sender id', () => {
    const key = newS2Key(1);
    const nonces = new Set<string>();
    for (const senderId of [11, 12]) {
      const sealer = new S2Sealer(senderId, key); // a restart draws another sender id
      for (let i = 0; i < 5_000; i++) {
        const header = sealer.seal(data(i % 3, Buffer.alloc(20)), 1).subarray(0, headerBytes);
        // The nonce is sender id ‖ epoch ‖ 0 ‖ counter: these header fields, all under the tag.
        const nonce = `${header.readUInt32BE(28)}/${header.readUInt16BE(6)}/${header.readUInt32BE(12)}`;
        assert.equal(nonces.has(nonce), false, `nonce ${nonce} used twice`);
        nonces.add(nonce);
      }
    }
    assert.equal(nonces.size, 10_000);
    const sealer = new S2Sealer(13, key);
    const first = sealer.seal(data(1, Buffer.alloc(20)), 1);
    const again = sealer.seal(data(1, Buffer.alloc(20)), 1);
    assert.notDeepEqual(
      first.subarray(headerBytes),
      again.subarray(headerBytes),
      'a resend is sealed afresh',
    );
    assert.throws(() => new S2Sealer(0, key), CipherError);
    // A sender id the nonce's 32 bits cannot hold is refused, not written as 0 or as another's.
    for (const senderId of [2 ** 32, 2 ** 32 + 13, -1, 13.5]) {
      assert.throws(() => new S2Sealer(senderId, key), CipherError, String(senderId));
    }
    assert.throws(() => sealer.seal(Buffer.alloc(sealedCarriedBytesMax + 1), 1), CipherError);
  });

  it('a seal called again from inside a seal (by a method of its datagram) never seals two envelopes under one nonce', () => {
    const sealer = new S2Sealer(14, newS2Key(1));
    const counters: number[] = [];
    const outer = data(1, Buffer.alloc(20));
    const honest = outer.readUInt32BE.bind(outer);
    let once = true;
    // Read after the counter moved: seals another envelope from inside the first one's call.
    outer.readUInt32BE = (offset = 0) => {
      if (once) {
        once = false;
        try {
          counters.push(sealer.seal(data(2, Buffer.alloc(20)), 1).readUInt32BE(12));
        } catch (error) {
          assert.ok(error instanceof CipherError, String(error));
        }
      }
      return honest(offset);
    };
    counters.push(sealer.seal(outer, 1).readUInt32BE(12));
    counters.push(sealer.seal(data(3, Buffer.alloc(20)), 1).readUInt32BE(12));
    assert.equal(new Set(counters).size, counters.length, `envelope counters ${counters.join(', ')}`);
  });

  it('an agent keeps only the latest few epochs', () => {
    const opener = new S2Opener(2);
    const keys = [1, 2, 3].map((epoch) => newS2Key(epoch));
    for (const key of keys) {
      opener.setKey(key);
    }
    assert.deepEqual(
      keys.map((key) => opener.hasKey(key.epoch)),
      [false, true, true],
    );
  });

  it('keys from a grant or a key file are checked, and errors name the field', () => {
    const secret = randomBytes(32);
    assert.deepEqual(parseS2Key(4, secret.toString('base64url'), 'key'), { epoch: 4, key: secret });
    assert.throws(() => parseS2Key(4, 'AAAA', 'key'), /key: the S2 key is not 32 bytes/);
    assert.throws(() => parseS2Key(0, secret.toString('base64url'), 'key'), /key: key epoch 0/);
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-s2key-'));
    try {
      const file = join(directory, 's2.key');
      writeFileSync(file, `3:${secret.toString('hex')}\n`);
      assert.deepEqual(readS2KeyFile(file, '--s2-key-file'), { epoch: 3, key: secret });
      writeFileSync(file, secret.toString('hex'));
      assert.equal(readS2KeyFile(file, '--s2-key-file').epoch, 1);
      for (const bad of ['', 'zz', `0:${secret.toString('hex')}`, secret.toString('hex').slice(2)]) {
        writeFileSync(file, bad);
        assert.throws(
          () => readS2KeyFile(file, '--s2-key-file'),
          (error: Error) => error instanceof CipherError && error.message.startsWith('--s2-key-file: '),
          JSON.stringify(bad),
        );
      }
      assert.throws(() => readS2KeyFile(join(directory, 'missing'), '--s2-key-file'), /ENOENT/);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});
