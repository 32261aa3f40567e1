import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { announceSessionsMax } from '../../src/limits.js';
import { addToAddress, readAddress, writeAddress } from '../../src/protocol/address.js';
import {
  announceSessionBytes,
  authOffsetCounter,
  authOffsetKeyId,
  authOffsetSenderId,
  authOffsetTag,
  authOffsetTargetId,
  authTagBytes,
  authTrailerBytes,
  decodeAnnounce,
  decodeFeedback,
  decodeNack,
  decodeQuality,
  decodeRepair,
  decodeSetup,
  encodeAnnounce,
  encodeFeedback,
  encodeNack,
  encodeQuality,
  encodeRepair,
  encodeRepairNotHeld,
  encodeSetup,
  feedbackBodyBytes,
  ListenState,
  qualitySessionBytes,
  SetupAction,
} from '../../src/protocol/control.js';
import {
  encodeData,
  encodeProgress,
  headerBytes,
  offsetBodyLength,
  PacketType,
} from '../../src/protocol/packet.js';
import { encodeControlSignatureUnsigned, encodeManifestUnsigned } from '../../src/protocol/restricted.js';

const fields = { sessionId: 42, incarnation: 5, sequence: 0, timestampUs: 1_700_000_000_000_000 };
const replyTo = { address: '10.200.3.30', port: 7100 };
const target = { address: '10.200.2.21', port: 7000 };

describe('addresses in control messages', () => {
  it('round-trip IPv4 and IPv6 in canonical form', () => {
    const buf = Buffer.alloc(16);
    for (const address of [
      '10.200.1.10',
      '0.0.0.0',
      'fd00:200:1::10',
      '::1',
      'ff3e::8000:1',
      '2001:db8:1:2:3:4:5:6',
      '::',
    ]) {
      const family = writeAddress(buf, 0, address);
      assert.equal(readAddress(buf, 0, family), address);
    }
    buf.fill(0);
    buf[15] = 1;
    assert.equal(readAddress(buf, 0, 4), undefined, 'IPv4 with padding');
    assert.equal(readAddress(buf, 0, 5), undefined, 'unknown family');
  });
});

describe('authentication trailer', () => {
  it('is key id, sender id, target id, a 64-bit counter and a 16-byte tag: 36 bytes', () => {
    assert.deepEqual(
      [authOffsetKeyId, authOffsetSenderId, authOffsetTargetId, authOffsetCounter, authOffsetTag],
      [0, 4, 8, 12, 20],
    );
    assert.equal(authOffsetTag + authTagBytes, authTrailerBytes);
    assert.equal(authTrailerBytes, 36);
  });

  it('decodes every field and refuses a counter at or above 2^53', () => {
    const packet = encodeQuality(fields, { sessions: [] });
    const at = packet.length - authTrailerBytes;
    packet.writeUInt32BE(7, at + authOffsetKeyId);
    packet.writeUInt32BE(0xfeedf00d, at + authOffsetSenderId);
    packet.writeUInt32BE(0xc0ffee, at + authOffsetTargetId);
    packet.writeUInt32BE(0x1f_ffff, at + authOffsetCounter);
    packet.writeUInt32BE(0xffff_ffff, at + authOffsetCounter + 4);
    const decoded = decodeQuality(packet);
    assert.ok(decoded.ok);
    assert.deepEqual(decoded.value.auth, {
      keyId: 7,
      senderId: 0xfeedf00d,
      targetId: 0xc0ffee,
      counter: Number.MAX_SAFE_INTEGER,
    });
    packet.writeUInt32BE(0x20_0000, at + authOffsetCounter);
    const result = decodeQuality(packet);
    assert.equal(!result.ok && result.reason, 'bad-field');
  });
});

describe('NACK', () => {
  it('round-trips the again and peer-fetch flags at body offset 22; an undefined flag bit is refused', () => {
    const again = encodeNack(fields, { replyTo, ranges: [{ start: 5, count: 2 }], again: true });
    assert.equal(again.readUInt16BE(headerBytes + 22), 0x0002);
    const decoded = decodeNack(again);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.again, true);
    assert.equal(decoded.value.peerFetch, false);
    const both = decodeNack(
      encodeNack(fields, { replyTo, ranges: [{ start: 5, count: 2 }], again: true, peerFetch: true }),
    );
    assert.ok(both.ok && both.value.again && both.value.peerFetch);
    const first = decodeNack(encodeNack(fields, { replyTo, ranges: [{ start: 5, count: 2 }] }));
    assert.ok(first.ok);
    assert.equal(first.value.again, false);
    again.writeUInt16BE(0x0008, headerBytes + 22);
    const unknown = decodeNack(again);
    assert.ok(!unknown.ok);
    assert.equal(unknown.reason, 'reserved-not-zero');
  });

  it('round-trips the signatures flag (bit 2, 0x0004) alone and with the others', () => {
    const signatures = encodeNack(fields, { replyTo, ranges: [{ start: 5, count: 2 }], signatures: true });
    assert.equal(signatures.readUInt16BE(headerBytes + 22), 0x0004);
    const decoded = decodeNack(signatures);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.signatures, true);
    assert.equal(decoded.value.again, false);
    assert.equal(decoded.value.peerFetch, false);
    const all = encodeNack(fields, {
      replyTo,
      ranges: [{ start: 5, count: 2 }],
      signatures: true,
      again: true,
      peerFetch: true,
    });
    assert.equal(all.readUInt16BE(headerBytes + 22), 0x0007);
    const none = decodeNack(encodeNack(fields, { replyTo, ranges: [{ start: 5, count: 2 }] }));
    assert.ok(none.ok);
    assert.equal(none.value.signatures, false);
  });

  it('round-trips its reply endpoint, ranges and trailer', () => {
    const packet = encodeNack(fields, {
      replyTo,
      ranges: [
        { start: 0xfffffffe, count: 4 },
        { start: 10, count: 1 },
      ],
    });
    assert.equal(packet.length, headerBytes + 24 + 2 * 8 + authTrailerBytes);
    packet.writeUInt32BE(7, packet.length - authTrailerBytes);
    const decoded = decodeNack(packet);
    assert.ok(decoded.ok);
    assert.deepEqual(decoded.value.replyTo, replyTo);
    assert.deepEqual(decoded.value.ranges, [
      { start: 0xfffffffe, count: 4 },
      { start: 10, count: 1 },
    ]);
    assert.equal(decoded.value.auth.keyId, 7);
    const six = decodeNack(
      encodeNack(fields, {
        replyTo: { address: 'fd00:200:3::30', port: 7100 },
        ranges: [{ start: 1, count: 1 }],
      }),
    );
    assert.ok(six.ok);
    assert.deepEqual(six.value.replyTo, { address: 'fd00:200:3::30', port: 7100 });
  });

  it('rejects no ranges, too many, an empty range and a missing trailer', () => {
    const cases: Array<[Buffer, string]> = [
      [encodeNack(fields, { replyTo, ranges: [] }), 'bad-field'],
      [
        encodeNack(fields, {
          replyTo,
          ranges: Array.from({ length: 129 }, (_, i) => ({ start: i, count: 1 })),
        }),
        'bad-field',
      ],
      [encodeNack(fields, { replyTo, ranges: [{ start: 1, count: 0 }] }), 'bad-field'],
      [encodeNack(fields, { replyTo, ranges: [{ start: 1, count: 5000 }] }), 'bad-field'],
    ];
    for (const [packet, reason] of cases) {
      const result = decodeNack(packet);
      assert.equal(!result.ok && result.reason, reason);
    }
    const noTrailer = encodeData(fields, Buffer.alloc(12));
    noTrailer[3] = 5;
    const result = decodeNack(noTrailer);
    assert.equal(!result.ok && result.reason, 'truncated');
  });

  it('rejects a reply endpoint that is not one unicast address and port', () => {
    const ranges = [{ start: 1, count: 1 }];
    for (const bad of [
      { address: '0.0.0.0', port: 7100 },
      { address: '::', port: 7100 },
      { address: '239.1.2.3', port: 7100 },
      { address: 'ff3e::1', port: 7100 },
      { address: '10.0.0.1', port: 0 },
    ]) {
      const result = decodeNack(encodeNack(fields, { replyTo: bad, ranges }));
      assert.equal(!result.ok && result.reason, 'bad-field', JSON.stringify(bad));
    }
    const reserved = encodeNack(fields, { replyTo, ranges });
    reserved[headerBytes + 1] = 1;
    const result = decodeNack(reserved);
    assert.equal(!result.ok && result.reason, 'reserved-not-zero');
    const family = encodeNack(fields, { replyTo, ranges });
    family[headerBytes] = 5;
    const unknown = decodeNack(family);
    assert.equal(!unknown.ok && unknown.reason, 'bad-field');
  });
});

describe('REPAIR', () => {
  it('carries the original DATA datagram byte for byte', () => {
    const original = encodeData({ ...fields, sequence: 99 }, Buffer.from('lost payload'));
    const decoded = decodeRepair(encodeRepair({ ...fields, sequence: 99 }, original));
    assert.ok(decoded.ok);
    assert.deepEqual(decoded.value.data?.payload, Buffer.from('lost payload'));
  });

  it('says what is not held', () => {
    const decoded = decodeRepair(encodeRepairNotHeld({ ...fields, sequence: 5 }, 3));
    assert.ok(decoded.ok);
    assert.equal(decoded.value.data, undefined);
    assert.equal(decoded.value.notHeldCount, 3);
  });

  it('rejects a carried packet of another sequence or a corrupt one', () => {
    const original = encodeData({ ...fields, sequence: 99 }, Buffer.from('x'));
    const wrong = decodeRepair(encodeRepair({ ...fields, sequence: 98 }, original));
    assert.equal(!wrong.ok && wrong.reason, 'bad-field');
    const corrupt = Buffer.from(original);
    corrupt[0] = 0;
    const bad = decodeRepair(encodeRepair({ ...fields, sequence: 99 }, corrupt));
    assert.equal(!bad.ok && bad.reason, 'bad-magic');
  });

  it('rejects a carried DATA or END of another run (incarnation) or session', () => {
    const run = { ...fields, sequence: 7 };
    for (const other of [
      { ...run, incarnation: run.incarnation + 1 },
      { ...run, sessionId: run.sessionId + 1 },
    ]) {
      const data = decodeRepair(encodeRepair(run, encodeData(other, Buffer.from('x'))));
      assert.equal(!data.ok && data.reason, 'bad-field');
      const end = encodeProgress(PacketType.end, other, { packetCount: 8, byteCount: 8 });
      const carried = decodeRepair(encodeRepair(run, end));
      assert.equal(!carried.ok && carried.reason, 'bad-field');
    }
    const same = decodeRepair(
      encodeRepair(run, encodeProgress(PacketType.end, run, { packetCount: 8, byteCount: 8 })),
    );
    assert.ok(same.ok && same.value.end !== undefined);
  });
});

describe('REPAIR carrying a manifest', () => {
  const run = { ...fields, sequence: 128 };
  const hashes = Array.from({ length: 64 }, (_, index) => Buffer.alloc(16, index));
  const manifest = encodeManifestUnsigned(run, hashes);
  manifest.fill(0xab, manifest.length - 64); // a signature's place: the gate verifies it, not the codec

  it('carries the SIGNATURE datagram byte for byte under its first sequence', () => {
    const repair = encodeRepair(run, manifest);
    assert.equal(repair.length, headerBytes + 4 + manifest.length + authTrailerBytes);
    const decoded = decodeRepair(repair);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.data, undefined);
    assert.equal(decoded.value.end, undefined);
    assert.equal(decoded.value.notHeldCount, 0);
    assert.deepEqual(decoded.value.signature, manifest);
  });

  it('refuses one of another sequence, session or incarnation', () => {
    for (const other of [
      { ...run, sequence: 129 },
      { ...run, sessionId: 43 },
      { ...run, incarnation: 6 },
    ]) {
      const decoded = decodeRepair(encodeRepair(other, manifest));
      assert.equal(!decoded.ok && decoded.reason, 'bad-field', JSON.stringify(other));
    }
  });

  it('refuses a truncated, oversized or miscounted manifest, and a SIGNATURE of another kind', () => {
    const truncated = decodeRepair(encodeRepair(run, manifest.subarray(0, manifest.length - 1)));
    assert.equal(!truncated.ok && truncated.reason, 'length-mismatch');
    const oversized = decodeRepair(encodeRepair(run, Buffer.concat([manifest, Buffer.alloc(16)])));
    assert.ok(!oversized.ok);
    const miscounted = Buffer.from(manifest);
    miscounted[headerBytes + 1] = 63;
    const count = decodeRepair(encodeRepair(run, miscounted));
    assert.equal(!count.ok && count.reason, 'length-mismatch');
    const tooMany = Buffer.from(manifest);
    tooMany[headerBytes + 1] = 65;
    assert.ok(!decodeRepair(encodeRepair(run, tooMany)).ok);
    const otherKind = Buffer.from(manifest);
    otherKind[headerBytes] = 2;
    assert.ok(!decodeRepair(encodeRepair(run, otherKind)).ok);
    const header = decodeRepair(encodeRepair(run, manifest.subarray(0, headerBytes - 1)));
    assert.ok(!header.ok);
  });

  it("carries an END's control signature under the END's sequence, and no other control signature", () => {
    const end = encodeControlSignatureUnsigned(
      { ...fields, sequence: 700 },
      PacketType.end,
      Buffer.alloc(32, 7),
    );
    const decoded = decodeRepair(encodeRepair({ ...fields, sequence: 700 }, end));
    assert.ok(decoded.ok);
    assert.deepEqual(decoded.value.signature, end);
    const elsewhere = decodeRepair(encodeRepair({ ...fields, sequence: 701 }, end));
    assert.equal(!elsewhere.ok && elsewhere.reason, 'bad-field');
    const heartbeat = encodeControlSignatureUnsigned(
      { ...fields, sequence: 700 },
      PacketType.heartbeat,
      Buffer.alloc(32, 7),
    );
    const refused = decodeRepair(encodeRepair({ ...fields, sequence: 700 }, heartbeat));
    assert.equal(!refused.ok && refused.reason, 'bad-field');
  });

  it('never reads past the buffer, whatever byte of the carried manifest flips', () => {
    const repair = encodeRepair(run, manifest);
    for (let at = headerBytes; at < headerBytes + 4 + headerBytes + 4; at++) {
      for (const bit of [0x01, 0x80]) {
        const flipped = Buffer.from(repair);
        flipped[at] = (flipped[at] ?? 0) ^ bit;
        const decoded = decodeRepair(flipped); // typed result, no throw
        assert.equal(typeof decoded.ok, 'boolean');
      }
    }
  });
});

describe('ANNOUNCE, QUALITY, SETUP', () => {
  it('round-trip', () => {
    const session = {
      sessionId: 1,
      incarnation: 0xfeedbeef,
      firstHeld: 0xfffffff0,
      lastHeld: 5,
      heldCount: 22,
      lossPpm: 1500,
      state: ListenState.listening,
    };
    const announce = decodeAnnounce(
      encodeAnnounce(fields, { address: 'fd00:200:2::21', port: 7000, sessions: [session] }),
    );
    assert.ok(announce.ok);
    assert.equal(announce.value.address, 'fd00:200:2::21');
    assert.deepEqual(announce.value.sessions, [session]);
    const quality = {
      sessionId: 1,
      incarnation: 0xfeedbeef,
      received: 1000,
      missing: 3,
      lossPpm: 2991,
      jitterUs: 120,
      state: ListenState.withdrawn,
    };
    const decodedQuality = decodeQuality(encodeQuality(fields, { sessions: [quality] }));
    assert.ok(decodedQuality.ok);
    assert.deepEqual(decodedQuality.value.sessions, [quality]);
    const setup = {
      action: SetupAction.join,
      group: '232.1.1.1',
      port: 5000,
      source: '10.200.1.10',
      bufferBytes: 2 ** 40,
      bufferAgeMs: 30_000,
      target: { address: 'fd00:200:2::21', port: 7000 },
    };
    const decodedSetup = decodeSetup(encodeSetup(fields, setup));
    assert.ok(decodedSetup.ok);
    assert.deepEqual(
      { ...setup },
      {
        action: decodedSetup.value.action,
        group: decodedSetup.value.group,
        port: decodedSetup.value.port,
        source: decodedSetup.value.source,
        bufferBytes: decodedSetup.value.bufferBytes,
        bufferAgeMs: decodedSetup.value.bufferAgeMs,
        target: decodedSetup.value.target,
      },
    );
  });

  it('reject bad states, loss above 100 %, bad actions and lengths', () => {
    const announce = encodeAnnounce(fields, {
      address: '10.0.0.1',
      port: 7000,
      sessions: [
        {
          sessionId: 1,
          incarnation: 2,
          firstHeld: 0,
          lastHeld: 0,
          heldCount: 0,
          lossPpm: 0,
          state: ListenState.listening,
        },
      ],
    });
    announce[headerBytes + 24 + 24] = 9;
    assert.equal(decodeAnnounce(announce).ok, false);
    const setup = encodeSetup(fields, {
      action: SetupAction.leave,
      group: '239.1.1.1',
      port: 1,
      source: undefined,
      bufferBytes: 0,
      bufferAgeMs: 0,
      target,
    });
    assert.equal(setup.length, headerBytes + 68 + authTrailerBytes);
    assert.ok(decodeSetup(setup).ok);
    setup[headerBytes] = 3;
    assert.equal(decodeSetup(setup).ok, false);
    for (const bad of [
      { address: '0.0.0.0', port: 7000 },
      { address: '239.1.1.1', port: 7000 },
      { address: '10.0.0.1', port: 0 },
    ]) {
      const packet = encodeSetup(fields, {
        action: SetupAction.leave,
        group: '239.1.1.1',
        port: 1,
        source: undefined,
        bufferBytes: 0,
        bufferAgeMs: 0,
        target: bad,
      });
      const result = decodeSetup(packet);
      assert.equal(!result.ok && result.reason, 'bad-field', JSON.stringify(bad));
    }
    const quality = encodeQuality(fields, { sessions: [] });
    assert.ok(decodeQuality(quality).ok);
    const longer = Buffer.concat([quality, Buffer.alloc(1)]);
    assert.equal(decodeQuality(longer).ok, false);
  });
});

describe('ANNOUNCE and QUALITY name the run of every entry', () => {
  const announced = (i: number) => ({
    sessionId: 42,
    incarnation: 1000 + i,
    firstHeld: i,
    lastHeld: 100 + i,
    heldCount: 101,
    lossPpm: i,
    state: ListenState.listening,
  });
  const measured = (i: number) => ({
    sessionId: 42,
    incarnation: 1000 + i,
    received: 10 + i,
    missing: i,
    lossPpm: i,
    jitterUs: i,
    state: ListenState.listening,
  });
  const body = (count: number) => ({
    address: '10.0.0.1',
    port: 7000,
    sessions: Array.from({ length: count }, (_, i) => announced(i)),
  });

  it('a 28-byte entry per run: session id, then incarnation, then the held range, at fixed offsets', () => {
    assert.equal(announceSessionBytes, 28);
    assert.equal(qualitySessionBytes, 28);
    const packet = encodeAnnounce(fields, body(1));
    const at = headerBytes + 24;
    assert.equal(packet.readUInt32BE(at), 42);
    assert.equal(packet.readUInt32BE(at + 4), 1000);
    assert.equal(packet.readUInt32BE(at + 12), 100);
    const quality = encodeQuality(fields, { sessions: [measured(0)] });
    assert.equal(quality.readUInt32BE(headerBytes + 4 + 4), 1000);
  });

  it('two runs of one session id decode apart, each with its own last held', () => {
    const decoded = decodeAnnounce(encodeAnnounce(fields, body(2)));
    assert.ok(decoded.ok);
    assert.deepEqual(
      decoded.value.sessions.map((s) => [s.sessionId, s.incarnation, s.lastHeld]),
      [
        [42, 1000, 100],
        [42, 1001, 101],
      ],
    );
  });

  it('an entry naming no run (incarnation 0) is refused', () => {
    const announce = encodeAnnounce(fields, { ...body(1), sessions: [{ ...announced(0), incarnation: 0 }] });
    const result = decodeAnnounce(announce);
    assert.equal(!result.ok && result.reason, 'bad-field');
    const quality = decodeQuality(encodeQuality(fields, { sessions: [{ ...measured(0), incarnation: 0 }] }));
    assert.equal(!quality.ok && quality.reason, 'bad-field');
  });

  it('every length: 0 to 64 entries decode; one byte more or less, or 65 entries, is refused', () => {
    for (let count = 0; count <= announceSessionsMax; count++) {
      const announce = encodeAnnounce(fields, body(count));
      assert.equal(announce.length, headerBytes + 24 + count * 28 + authTrailerBytes);
      const decoded = decodeAnnounce(announce);
      assert.ok(decoded.ok, `ANNOUNCE of ${count}`);
      assert.equal(decoded.value.sessions.length, count);
      const quality = encodeQuality(fields, {
        sessions: Array.from({ length: count }, (_, i) => measured(i)),
      });
      assert.equal(quality.length, headerBytes + 4 + count * 28 + authTrailerBytes);
      assert.equal(decodeQuality(quality).ok, true, `QUALITY of ${count}`);
      for (const decode of [decodeAnnounce, decodeQuality] as const) {
        const packet = decode === decodeAnnounce ? announce : quality;
        for (const delta of [-1, 1, -28, 28]) {
          const resized = resize(packet, delta);
          if (resized === undefined) {
            continue;
          }
          assert.equal(decode(resized).ok, false, `${count} entries, ${delta} bytes`);
        }
      }
    }
    const tooMany = encodeAnnounce(fields, body(announceSessionsMax + 1));
    const result = decodeAnnounce(tooMany);
    assert.equal(!result.ok && result.reason, 'bad-field');
    const tooManyQuality = encodeQuality(fields, {
      sessions: Array.from({ length: announceSessionsMax + 1 }, (_, i) => measured(i)),
    });
    assert.equal(decodeQuality(tooManyQuality).ok, false);
  });
});

/**
 * The packet with its body (before the trailer) grown or cut by `delta` bytes and the header's
 * body length matching, so only the count-against-length check can refuse it.
 */
function resize(packet: Buffer, delta: number): Buffer | undefined {
  const bodyEnd = packet.length - authTrailerBytes;
  if (bodyEnd + delta < headerBytes) {
    return undefined;
  }
  const body =
    delta < 0
      ? packet.subarray(0, bodyEnd + delta)
      : Buffer.concat([packet.subarray(0, bodyEnd), Buffer.alloc(delta)]);
  const out = Buffer.concat([body, packet.subarray(bodyEnd)]);
  out.writeUInt16BE(out.length - headerBytes, offsetBodyLength);
  return out;
}

describe('FEEDBACK', () => {
  const report = {
    missing: 17,
    holding: 2048,
    unrecoverable: 3,
    socketDrops: 0xfffffffe,
    received: 35_715,
    nacked: 4_000,
  };

  it('round-trips the run it names and its six counts, 24 body bytes before the trailer', () => {
    const packet = encodeFeedback(fields, report);
    assert.equal(packet.length, headerBytes + feedbackBodyBytes + authTrailerBytes);
    const decoded = decodeFeedback(packet);
    assert.ok(decoded.ok);
    assert.equal(decoded.value.sessionId, fields.sessionId);
    assert.equal(decoded.value.incarnation, fields.incarnation);
    const { missing, holding, unrecoverable, socketDrops, received, nacked } = decoded.value;
    assert.deepEqual({ missing, holding, unrecoverable, socketDrops, received, nacked }, report);
  });

  it('sends levels beyond 32 bits as 2^32 - 1, and the running counts received and NACKed modulo 2^32', () => {
    const decoded = decodeFeedback(
      encodeFeedback(fields, {
        ...report,
        unrecoverable: 2 ** 40,
        socketDrops: 2 ** 33,
        received: 2 ** 40 + 7,
        nacked: 2 ** 32 + 3,
      }),
    );
    assert.ok(decoded.ok);
    assert.deepEqual(
      [decoded.value.unrecoverable, decoded.value.socketDrops, decoded.value.received, decoded.value.nacked],
      [0xffffffff, 0xffffffff, 7, 3],
    );
  });

  it('rejects a truncated or oversized body, another type and a run of incarnation 0', () => {
    const good = encodeFeedback(fields, report);
    const cases: Array<[string, Buffer, string]> = [
      ['shorter than a header', good.subarray(0, headerBytes - 1), 'truncated'],
      ['header only', good.subarray(0, headerBytes), 'length-mismatch'],
      ['no trailer', good.subarray(0, good.length - 1), 'length-mismatch'],
      ['incarnation 0', encodeFeedback({ ...fields, incarnation: 0 }, report), 'bad-field'],
    ];
    const longer = Buffer.concat([
      good.subarray(0, headerBytes),
      Buffer.alloc(4),
      good.subarray(headerBytes),
    ]);
    longer.writeUInt16BE(feedbackBodyBytes + 4 + authTrailerBytes, 24);
    cases.push(['four bytes more', longer, 'length-mismatch']);
    const shorter = Buffer.concat([good.subarray(0, headerBytes), good.subarray(headerBytes + 4)]);
    shorter.writeUInt16BE(feedbackBodyBytes - 4 + authTrailerBytes, 24);
    cases.push(['four bytes fewer', shorter, 'length-mismatch']);
    const other = Buffer.from(good);
    other[3] = 8;
    cases.push(['a QUALITY type byte', other, 'bad-field']);
    for (const [name, packet, reason] of cases) {
      const result = decodeFeedback(packet);
      assert.equal(result.ok, false, name);
      assert.equal(!result.ok && result.reason, reason, name);
    }
  });
});

describe('addresses handed out from a pool', () => {
  it('counts in the last 32 bits, over IPv4 and IPv6, and refuses to carry beyond them', () => {
    assert.equal(addToAddress('239.52.0.1', 0), '239.52.0.1');
    assert.equal(addToAddress('239.52.0.255', 1), '239.52.1.0');
    assert.equal(addToAddress('ff3e::1', 255), 'ff3e::100');
    assert.equal(addToAddress('ff3e::ffff:ffff', 1), undefined);
    assert.equal(addToAddress('255.255.255.255', 1), undefined);
    assert.equal(addToAddress('239.1.1.1', -1), undefined);
    assert.equal(addToAddress('239.1.1.1', 1.5), undefined);
  });
});
