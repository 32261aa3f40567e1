import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { parseIgmp, parseIgmp6, readMemberships } from '../../src/net/memberships.js';
import { freshPort } from '../helpers/loopback.js';

describe('group memberships from /proc', () => {
  it('parses /proc/net/igmp (addresses in host byte order)', () => {
    const text = [
      'Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter',
      '1\tlo        :     2      V3',
      '\t\t\t\t010000E0     1 0:00000000\t\t0',
      '\t\t\t\t0132FFEF     2 0:00000000\t\t0',
      '2\teth0      :     1      V3',
      '\t\t\t\t01000AEF     1 0:00000000\t\t0',
    ].join('\n');
    assert.deepEqual(parseIgmp(text), [
      { iface: 'lo', group: '224.0.0.1', users: 1 },
      { iface: 'lo', group: '239.255.50.1', users: 2 },
      { iface: 'eth0', group: '239.10.0.1', users: 1 },
    ]);
  });

  it('parses /proc/net/igmp6', () => {
    const text =
      '2    eth0            ff3e0000000000000000000000000010     1 00000004 0\n1    lo  ff020000000000000000000000000001     1 0000000C 0\n';
    assert.deepEqual(parseIgmp6(text), [
      { iface: 'eth0', group: 'ff3e::10', users: 1 },
      { iface: 'lo', group: 'ff02::1', users: 1 },
    ]);
  });

  it('sees a join made by a socket on this host', async () => {
    const group = '239.255.91.7';
    const socket = createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((resolve) => socket.bind(freshPort(), resolve));
    socket.addMembership(group, '127.0.0.1');
    try {
      assert.ok(readMemberships().some((m) => m.group === group && m.iface === 'lo'));
    } finally {
      socket.close();
    }
    assert.ok(!readMemberships().some((m) => m.group === group));
  });
});
