import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  bodyBytesMax,
  dataPayloadBytesMax,
  decodeData,
  decodeDescriptor,
  decodeEnd,
  decodeHeader,
  decodeHeartbeat,
  decodePacket,
  encodeData,
  encodeDescriptor,
  encodeProgress,
  headerBytes,
  PacketType,
  SessionKind,
  uint16At,
  uint32At,
} from '../../src/protocol/packet.js';

/** A mutation that sets one byte. */
function poke(at: number, value: number): (b: Buffer) => Buffer {
  return (b) => {
    b[at] = value;
    return b;
  };
}

/** A mutation that sets a 16-bit field. */
function poke16(at: number, value: number): (b: Buffer) => Buffer {
  return (b) => {
    b.writeUInt16BE(value, at);
    return b;
  };
}

/** A mutation that sets a 32-bit field. */
function poke32(at: number, value: number): (b: Buffer) => Buffer {
  return (b) => {
    b.writeUInt32BE(value, at);
    return b;
  };
}

const fields = {
  sessionId: 0xdeadbeef,
  sequence: 0xfffffffe,
  timestampUs: 1_764_000_000_123_456,
  keyEpoch: 7,
  incarnation: 0x0badcafe,
};

describe('fixed header', () => {
  it('matches the golden bytes of docs/protocol.md', () => {
    const packet = encodeData(fields, Buffer.from('hi'));
    assert.equal(
      packet.toString('hex'),
      '4743020100000007deadbeeffffffffe' + '0006445941642240' + '00020000' + '0badcafe' + '6869',
    );
    const header = decodeHeader(packet);
    assert.ok(header.ok);
    assert.deepEqual(header.value, { type: 1, flags: 0, bodyLength: 2, ...fields });
  });

  it('rejects each malformed header with its own reason', () => {
    const good = encodeData(fields, Buffer.from('payload'));
    const cases: Array<[string, (b: Buffer) => Buffer, string]> = [
      ['empty', () => Buffer.alloc(0), 'truncated'],
      ['short', (b) => b.subarray(0, headerBytes - 1), 'truncated'],
      ['magic', poke16(0, 0x1234), 'bad-magic'],
      ['version', poke(2, 1), 'bad-version'],
      ['type 0', poke(3, 0), 'unknown-type'],
      ['type 200', poke(3, 200), 'unknown-type'],
      ['incarnation 0', poke32(28, 0), 'bad-field'],
      ['flags', poke(4, 0x80), 'bad-flags'],
      ['reserved 1', poke(5, 1), 'reserved-not-zero'],
      ['reserved 2', poke(27, 1), 'reserved-not-zero'],
      ['body longer than declared', (b) => Buffer.concat([b, Buffer.from([0])]), 'length-mismatch'],
      ['body shorter than declared', (b) => b.subarray(0, b.length - 1), 'length-mismatch'],
      ['timestamp beyond 2^53', poke32(16, 0xffffffff), 'bad-field'],
    ];
    for (const [name, mutate, reason] of cases) {
      const result = decodePacket(mutate(Buffer.from(good)));
      assert.equal(result.ok, false, name);
      assert.equal(!result.ok && result.reason, reason, name);
    }
  });

  it('rejects reserved later types as unsupported', () => {
    const packet = encodeData(fields, Buffer.alloc(0));
    for (const type of [PacketType.nack, PacketType.repair, PacketType.key, PacketType.signature]) {
      packet[3] = type;
      const result = decodePacket(packet);
      assert.equal(!result.ok && result.reason, 'unsupported-type');
    }
  });
});

describe('DATA', () => {
  it('round-trips, with the payload a view into the datagram', () => {
    const payload = Buffer.from('market data 1234');
    const packet = encodeData(fields, payload);
    const decoded = decodeData(packet);
    assert.ok(decoded.ok);
    assert.deepEqual(decoded.value.payload, payload);
    assert.equal(decoded.value.payload.buffer, packet.buffer);
  });

  it('accepts the largest body and refuses to encode a larger one', () => {
    assert.ok(decodeData(encodeData(fields, Buffer.alloc(dataPayloadBytesMax))).ok);
    assert.throws(() => encodeData(fields, Buffer.alloc(dataPayloadBytesMax + 1)), /does not fit/);
    // A DATA datagram written by another implementation past the budget is refused by the decoder.
    const big = Buffer.alloc(headerBytes + dataPayloadBytesMax + 1);
    encodeData(fields, Buffer.alloc(0)).copy(big);
    big.writeUInt16BE(dataPayloadBytesMax + 1, 24);
    const refused = decodeData(big);
    assert.equal(!refused.ok && refused.reason, 'bad-field');
    assert.ok(bodyBytesMax > dataPayloadBytesMax);
  });

  it('is not taken for another type', () => {
    const result = decodeHeartbeat(encodeData(fields, Buffer.alloc(16)));
    assert.equal(!result.ok && result.reason, 'bad-field');
  });
});

describe('HEARTBEAT and END', () => {
  it('round-trip the totals', () => {
    for (const [type, decode] of [
      [PacketType.heartbeat, decodeHeartbeat],
      [PacketType.end, decodeEnd],
    ] as const) {
      const packet = encodeProgress(type, fields, { packetCount: 2 ** 40 + 3, byteCount: 2 ** 52 });
      const decoded = decode(packet);
      assert.ok(decoded.ok);
      assert.equal(decoded.value.packetCount, 2 ** 40 + 3);
      assert.equal(decoded.value.byteCount, 2 ** 52);
      assert.equal(decoded.value.sequence, fields.sequence);
    }
  });

  it('reject a body of the wrong size, even when the header agrees', () => {
    const packet = encodeProgress(PacketType.end, fields, { packetCount: 1, byteCount: 1 });
    const short = Buffer.from(packet.subarray(0, packet.length - 1));
    short.writeUInt16BE(15, 24);
    const result = decodeEnd(short);
    assert.equal(!result.ok && result.reason, 'length-mismatch');
  });
});

describe('DESCRIPTOR', () => {
  const body = {
    firstSequence: 42,
    packetPayloadBytes: 1400,
    kind: SessionKind.file,
    totalBytes: 20_000_000,
    rateBitsPerSecond: 100_000_000,
    sha256: Buffer.alloc(32, 0xab),
    name: 'nightly-update ✓',
  };

  it('round-trips a file session and a stream without size or hash', () => {
    const decoded = decodeDescriptor(encodeDescriptor(fields, body));
    assert.ok(decoded.ok);
    assert.deepEqual({ ...decoded.value }, { ...decoded.value, ...body });
    const stream = { ...body, kind: SessionKind.ticker, totalBytes: undefined, sha256: undefined, name: '' };
    const decodedStream = decodeDescriptor(encodeDescriptor(fields, stream));
    assert.ok(decodedStream.ok);
    assert.equal(decodedStream.value.totalBytes, undefined);
    assert.equal(decodedStream.value.sha256, undefined);
    assert.equal(decodedStream.value.kind, SessionKind.ticker);
  });

  it('rejects bad kind, flags, name length, invalid UTF-8 and stray hash bytes', () => {
    const good = encodeDescriptor(fields, body);
    const nameAt = headerBytes + 57;
    const cases: Array<[string, (b: Buffer) => Buffer, string]> = [
      ['kind 0', poke(headerBytes + 6, 0), 'bad-field'],
      ['kind 9', poke(headerBytes + 6, 9), 'bad-field'],
      ['flags', poke(headerBytes + 7, 0x04), 'bad-flags'],
      ['name too long', poke(headerBytes + 56, 200), 'length-mismatch'],
      ['utf-8', poke(nameAt, 0xff), 'bad-field'],
      ['packet size', poke16(headerBytes + 4, 3), 'bad-field'],
      ['hash without flag', poke(headerBytes + 7, 0x01), 'bad-field'],
      ['size without flag', poke(headerBytes + 7, 0x02), 'bad-field'],
    ];
    for (const [name, mutate, reason] of cases) {
      const result = decodeDescriptor(mutate(Buffer.from(good)));
      assert.equal(!result.ok && result.reason, reason, name);
    }
  });

  it('rejects a body shorter than the fixed part', () => {
    const good = encodeDescriptor(fields, { ...body, name: '' });
    const cut = Buffer.from(good.subarray(0, good.length - 10));
    cut.writeUInt16BE(cut.length - headerBytes, 24);
    const result = decodeDescriptor(cut);
    assert.equal(!result.ok && result.reason, 'truncated');
  });
});

describe('fields read by index (uint16At, uint32At)', () => {
  it('read what readUInt16BE and readUInt32BE read, at every offset and at the edges of the range', () => {
    const edges = [
      0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe,
      0xffff_ffff,
    ];
    for (const value of edges) {
      const b = Buffer.alloc(8);
      b.writeUInt32BE(value >>> 0, 2);
      assert.equal(uint32At(b, 2), value >>> 0);
      assert.equal(uint16At(b, 4), value & 0xffff);
    }
    const random = Buffer.alloc(4096);
    for (let i = 0; i < random.length; i++) {
      random[i] = (i * 2654435761) >>> 24;
    }
    for (let at = 0; at + 4 <= random.length; at++) {
      assert.equal(uint32At(random, at), random.readUInt32BE(at));
      assert.equal(uint16At(random, at), random.readUInt16BE(at));
    }
  });

  it('give an unsigned 32-bit integer, never negative, and read a view from its own start', () => {
    const b = Buffer.from([0, 0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0]);
    assert.equal(uint32At(b, 1), 0xffff_ffff);
    assert.ok(uint32At(b, 5) > 0);
    assert.equal(uint32At(b.subarray(5), 0), 0x8000_0000);
    assert.equal(uint16At(b.subarray(1), 0), 0xffff);
  });

  it('read the header fields of an encoded packet as decodeHeader does', () => {
    const datagram = encodeData(fields, Buffer.from('payload'));
    const header = decodeHeader(datagram);
    assert.ok(header.ok);
    assert.equal(uint32At(datagram, 8), header.value.sessionId);
    assert.equal(uint32At(datagram, 12), header.value.sequence);
    assert.equal(uint32At(datagram, 28), header.value.incarnation);
    assert.equal(uint16At(datagram, 6), header.value.keyEpoch);
  });
});
