import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  formatEndpoint,
  isMulticast,
  isScopedGroup,
  multicastScope,
  parseEndpoint,
  parseGroup,
} from '../../src/net/address.js';
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

  it('writes an IPv6 address in one form (RFC 5952): two spellings of one group were two S1 sessions', () => {
    for (const spelling of [
      '[FF3E::1]:5000',
      '[ff3e:0::1]:5000',
      '[ff3e:0:0:0:0:0:0:1]:5000',
      '[fF3e::0001]:5000',
    ]) {
      assert.deepEqual(
        parseGroup(spelling, '--group'),
        { address: 'ff3e::1', port: 5000, family: 6 },
        spelling,
      );
    }
    assert.equal(parseEndpoint('[2001:DB8:0:0:1:0:0:1]:7000', 'a').address, '2001:db8::1:0:0:1');
    assert.equal(parseEndpoint('[::1]:7000', 'a').address, '::1');
    assert.equal(parseEndpoint('239.1.2.3:05000', 'a').port, 5000);
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
    assert.ok(!isMulticast('ff2::1'), 'ff2:: is 0ff2::, not ff00::/8');
    assert.ok(!isMulticast('::ffff:239.1.1.1'));
  });

  it('reads the scope of IPv6 groups; scopes up to link-local need an interface', () => {
    assert.equal(multicastScope('ff02::1234'), 2);
    assert.equal(multicastScope('FF12::1'), 2);
    assert.equal(multicastScope('ff01::1'), 1);
    assert.equal(multicastScope('ff05::1'), 5);
    assert.equal(multicastScope('ff3e::1'), 14);
    assert.equal(multicastScope('239.1.1.1'), undefined);
    assert.ok(isScopedGroup(parseGroup('[ff02::1234]:5000', 'g')));
    assert.ok(isScopedGroup(parseGroup('[ff32::1]:5000', 'g')));
    assert.ok(isScopedGroup(parseGroup('[ff00::1]:5000', 'g')));
    assert.ok(!isScopedGroup(parseGroup('[ff05::1]:5000', 'g')));
    assert.ok(!isScopedGroup(parseGroup('[ff3e::1]:5000', 'g')));
    assert.ok(!isScopedGroup(parseGroup('224.0.0.251:5353', 'g')));
  });

  it('refuses a %zone in an endpoint, pointing at the interface option', () => {
    assert.throws(
      () => parseGroup('[ff02::1%eth0]:5000', '--group'),
      /--group: "ff02::1%eth0": give the interface with its own option/,
    );
  });
});

describe('interfaces', () => {
  it('resolves loopback by name and by address', () => {
    assert.equal(resolveInterface('lo', 4).address, '127.0.0.1');
    assert.equal(resolveInterface('127.0.0.1', 4).name, 'lo');
  });

  it('refuses an interface address of the other family (an IPv6 group on 127.0.0.1 was accepted)', () => {
    assert.throws(
      () => resolveInterface('127.0.0.1', 6),
      /interface address 127\.0\.0\.1 is IPv4 but the group is IPv6/,
    );
    assert.throws(() => resolveInterface('::1', 4), /interface address ::1 is IPv6 but the group is IPv4/);
    assert.equal(resolveInterface('lo', 6).socketInterface, '::%lo');
  });

  it('names an unknown interface and lists the known ones', () => {
    assert.throws(() => resolveInterface('nosuch0', 4), /unknown interface "nosuch0" \(this host has: .*lo/);
  });
});
