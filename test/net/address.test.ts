import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatEndpoint, isMulticast, parseEndpoint, parseGroup } from '../../src/net/address.js';
import { resolveInterface } from '../../src/net/interfaces.js';

describe('endpoints', () => {
  it('parses IPv4 and bracketed IPv6 groups', () => {
    assert.deepEqual(parseGroup('239.1.2.3:5000', '--group'), {
      address: '239.1.2.3',
      port: 5000,
      family: 4,
    });
    assert.deepEqual(parseGroup('[ff3e::1]:5000', '--group'), { address: 'ff3e::1', port: 5000, family: 6 });
    assert.equal(formatEndpoint(parseGroup('[ff3e::1]:5000', 'g')), '[ff3e::1]:5000');
  });

  it('names the option and the value in every error', () => {
    assert.throws(
      () => parseGroup('10.0.0.1:5000', '--group'),
      /--group: 10\.0\.0\.1 is not a multicast group/,
    );
    assert.throws(() => parseGroup('239.1.1.1:70000', '--group'), /--group: port 70000 is out of range/);
    assert.throws(() => parseGroup('239.1.1.1:0', '--group'), /out of range/);
    assert.throws(() => parseGroup('239.1.1.1', '--group'), /is not ADDR:PORT/);
    assert.throws(() => parseGroup('ff3e::1:5000', '--group'), /\[ADDR\]:PORT/);
    assert.throws(() => parseEndpoint('example.org:80', '--relay'), /--relay: "example.org" is not an IPv4/);
  });

  it('knows the multicast ranges', () => {
    assert.ok(isMulticast('224.0.0.1'));
    assert.ok(isMulticast('239.255.255.255'));
    assert.ok(!isMulticast('240.0.0.1'));
    assert.ok(isMulticast('FF02::1'));
    assert.ok(!isMulticast('fe80::1'));
  });
});

describe('interfaces', () => {
  it('resolves loopback by name and by address', () => {
    assert.equal(resolveInterface('lo', 4).address, '127.0.0.1');
    assert.equal(resolveInterface('127.0.0.1', 4).name, 'lo');
  });

  it('names an unknown interface and lists the known ones', () => {
    assert.throws(() => resolveInterface('nosuch0', 4), /unknown interface "nosuch0" \(this host has: .*lo/);
  });
});
