import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { groupOption, ifaceOption, parseGroupOn, parseRate, parseSeconds } from '../../src/cli/options.js';

describe('rates', () => {
  it('refuses 0 (it sent unpaced); no pacing is asked for by name', () => {
    assert.throws(
      () => parseRate('0', '--rate'),
      /--rate: 0 is not a rate; for no pacing write --rate unlimited/,
    );
    assert.throws(() => parseRate('0k', '--rate'), /not a rate/);
    assert.throws(() => parseRate('0.0001', '--repair-rate'), /--repair-rate unlimited/);
    assert.equal(parseRate('unlimited', '--rate'), 0);
    assert.equal(parseRate('1', '--rate'), 1);
    assert.equal(parseRate('20M', '--rate'), 20_000_000);
  });
});

describe('one check of a group with its interface and source, for every command', () => {
  const on = (iface: string | undefined, extra: object = {}) => ({ iface, ifaceField: '--iface', ...extra });

  it('refuses an IPv6 group with an IPv4 interface address, and the reverse, naming both options', () => {
    assert.throws(
      () => parseGroupOn('[ff3e::1]:5000', '--group', on('127.0.0.1')),
      /^Error: --iface: 127\.0\.0\.1 is an IPv4 address but --group \[ff3e::1\]:5000 is IPv6/,
    );
    assert.throws(
      () => parseGroupOn('239.1.1.1:5000', '--join', on('::1')),
      /--iface: ::1 is an IPv6 address but --join 239\.1\.1\.1:5000 is IPv4/,
    );
  });

  it('asks for the interface of a scoped IPv6 group, and takes one when given', () => {
    assert.throws(
      () => parseGroupOn('[ff02::1234]:5000', '--group', on(undefined)),
      /--group: ff02::1234 is a link-local group \(scope 2\): name the link with --iface NAME/,
    );
    assert.throws(
      () => parseGroupOn('[ff01::1]:5000', '--emit', { iface: undefined, ifaceField: '--emit-iface' }),
      /interface-local group \(scope 1\): name the link with --emit-iface NAME/,
    );
    assert.deepEqual(parseGroupOn('[ff02::1234]:5000', '--group', on('lo')), {
      address: 'ff02::1234',
      port: 5000,
      family: 6,
    });
    assert.equal(
      parseGroupOn('[ff02::1]:5000', '--map', { ...on(undefined), ifaceLearned: true }).port,
      5000,
    );
    assert.equal(parseGroupOn('[ff3e::1]:5000', '--group', on(undefined)).family, 6);
  });

  it('checks the source of a source-specific join', () => {
    assert.throws(
      () =>
        parseGroupOn(
          '239.1.1.1:5000',
          '--group',
          on(undefined, { source: 'fd00::1', sourceField: '--source' }),
        ),
      /--source: fd00::1 is an IPv6 address but --group 239\.1\.1\.1:5000 is IPv4/,
    );
    assert.throws(
      () =>
        parseGroupOn(
          '239.1.1.1:5000',
          '--group',
          on(undefined, { source: 'host.example', sourceField: '--source' }),
        ),
      /--source: "host\.example" is not an IPv4 or IPv6 address/,
    );
  });

  it('refuses a multicast or unspecified source (receive --source 239.1.1.1 joined and waited for --timeout)', () => {
    for (const [group, source, what] of [
      ['239.1.1.1:5000', '239.1.1.2', 'a multicast group'],
      ['[ff3e::1]:5000', 'ff3e::2', 'a multicast group'],
      ['239.1.1.1:5000', '0.0.0.0', 'the unspecified address'],
      ['[ff3e::1]:5000', '::', 'the unspecified address'],
    ] as const) {
      assert.throws(
        () => parseGroupOn(group, '--group', on(undefined, { source, sourceField: '--source' })),
        new RegExp(`--source: ${source.replace(/\./g, '\\.')} is ${what}, not a sender's address`),
      );
    }
    assert.equal(
      parseGroupOn(
        '239.1.1.1:5000',
        '--group',
        on(undefined, { source: '10.0.0.1', sourceField: '--source' }),
      ).port,
      5000,
    );
  });

  it('resolves the interface option, and falls back from one option to another', () => {
    assert.throws(
      () => parseGroupOn('239.1.1.1:5000', '--group', on('nosuch7')),
      /unknown interface "nosuch7"/,
    );
    assert.deepEqual(ifaceOption({ iface: 'lo' }, 'emit-iface', 'iface'), {
      iface: 'lo',
      ifaceField: '--iface',
    });
    assert.deepEqual(ifaceOption({ iface: 'lo', 'emit-iface': 'eth9' }, 'emit-iface', 'iface'), {
      iface: 'eth9',
      ifaceField: '--emit-iface',
    });
    assert.equal(groupOption({ join: '239.1.1.1:5000', iface: 'lo' }, 'join', 'iface').address, '239.1.1.1');
    assert.throws(() => groupOption({}, 'join', 'iface'), /--join is required/);
  });
});

describe('durations in seconds', () => {
  it('a duration longer than a timer can wait is refused naming the field (regression: the timer fired at once)', () => {
    assert.equal(parseSeconds('2147483.647', '--duration'), 2_147_483_647);
    assert.equal(parseSeconds('0.5', '--timeout'), 500);
    for (const text of ['2147484', '3000000', '99999999999']) {
      assert.throws(
        () => parseSeconds(text, '--duration'),
        /--duration: .* s is more than the 2147483 s a timer can wait/,
      );
    }
  });
});
