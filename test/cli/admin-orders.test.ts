import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseBits, parseRouter } from '../../src/cli/admin-orders.js';
import { UsageError } from '../../src/cli/errors.js';

// `--router relay:INADDR:OUTADDR` was split on every colon, so a relay on IPv6 addresses could not
// be written at all; IPv6 is written in brackets, as endpoints are everywhere else in the CLI.
describe('gatecast admin orders link --router', () => {
  it('takes IPv6 relay addresses in brackets, canonical, and IPv4 as it is', () => {
    assert.deepEqual(parseRouter('relay:[FD00:1:0::1]:[fd00:2::1]'), {
      kind: 'relay',
      inbound: 'fd00:1::1',
      outbound: 'fd00:2::1',
    });
    assert.deepEqual(parseRouter('relay:10.0.1.1:10.0.2.1'), {
      kind: 'relay',
      inbound: '10.0.1.1',
      outbound: '10.0.2.1',
    });
    assert.deepEqual(parseRouter('relay:10.0.1.1:[fd00:2::1]'), {
      kind: 'relay',
      inbound: '10.0.1.1',
      outbound: 'fd00:2::1',
    });
  });

  it('takes a socket path with colons (an interface name has none)', () => {
    assert.deepEqual(parseRouter('smcroute:/run/a:b.sock:eth0:eth1'), {
      kind: 'smcroute',
      socket: '/run/a:b.sock',
      inbound: 'eth0',
      outbound: 'eth1',
    });
  });

  it('takes an nftables link: its interfaces, and a table of its own if named', () => {
    assert.deepEqual(parseRouter('nftables:eth0:eth1'), {
      kind: 'nftables',
      inbound: 'eth0',
      outbound: 'eth1',
    });
    assert.deepEqual(parseRouter('nftables:eth0.5:sat0:gatecast_sat'), {
      kind: 'nftables',
      inbound: 'eth0.5',
      outbound: 'sat0',
      table: 'gatecast_sat',
    });
  });

  it('refuses what it cannot read, naming --router', () => {
    for (const text of [
      'relay:fd00:1::1:fd00:2::1', // IPv6 without brackets
      'relay:[fd00:1::1]', // one address
      'relay:[10.0.1.1]:10.0.2.1', // IPv4 in brackets
      'relay:[ff3e::1]x:[fd00::2]',
      'relay:999.1.1.1:10.0.2.1',
      'relay:[fe80::1%eth0]:[fd00::2]',
      'smcroute:/run/s.sock:eth0',
      'smcroute::eth0:eth1',
      'nftables:eth0',
      'nftables:eth0:',
      'nftables::eth1',
      'nftables:eth0:eth1:',
      'nftables:eth0:eth1:t:extra',
      'ospf:1:2',
    ]) {
      assert.throws(
        () => parseRouter(text),
        (error: unknown) => error instanceof UsageError && error.message.startsWith('--router: '),
        text,
      );
    }
  });
});

// A rate or capacity that is no whole number of bit/s was rounded: `--capacity 1.5` made a link of
// 2 bit/s, `--rate 1.0000001k` a service of 1,000, and a tiny fraction such as `0.4` was "below 1".
describe('gatecast admin orders --rate and --capacity', () => {
  it('reads whole bit rates exactly', () => {
    assert.equal(parseBits('4M', '--rate'), 4_000_000);
    assert.equal(parseBits('1.1M', '--rate'), 1_100_000);
    assert.equal(parseBits('0.000001M', '--rate'), 1);
    assert.equal(parseBits('2.50k', '--rate'), 2_500);
    assert.equal(parseBits('7', '--capacity'), 7);
    assert.equal(parseBits('1000G', '--capacity'), 1_000_000_000_000);
  });

  for (const text of ['1.5', '1.0000001k', '0.4', '0.0000001M']) {
    it(`refuses ${text}, which is no whole number of bit/s, naming the field`, () => {
      assert.throws(
        () => parseBits(text, '--capacity'),
        (error: unknown) =>
          error instanceof UsageError &&
          /^--capacity: "[0-9.kMG]+" is not a whole number of bit\/s/.test(error.message),
      );
    });
  }
});
