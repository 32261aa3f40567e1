import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sequenceAdd, sequenceDistance, sequenceGreater, sequenceLess } from '../../src/protocol/serial.js';

describe('serial-number arithmetic (RFC 1982)', () => {
  it('wraps from 0xffffffff to 0', () => {
    assert.equal(sequenceAdd(0xffffffff, 1), 0);
    assert.equal(sequenceAdd(0xfffffff0, 0x20), 0x10);
    assert.ok(sequenceLess(0xffffffff, 0));
    assert.ok(sequenceGreater(5, 0xfffffffb));
    assert.equal(sequenceDistance(0xfffffffe, 3), 5);
    assert.equal(sequenceDistance(3, 0xfffffffe), -5);
  });

  it('is not less than itself and orders within half the space', () => {
    assert.equal(sequenceLess(7, 7), false);
    assert.ok(sequenceLess(0, 0x7fffffff));
    assert.equal(sequenceLess(0, 0x80000001), false);
    assert.ok(sequenceGreater(0, 0x80000001));
  });
});
