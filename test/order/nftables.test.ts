/**
 * The nftables router driver: the table it writes, how it reads nft's listing back (what counts
 * as the table not being as written), and, as root in a namespace of its own, the driver against
 * the real nft: routes written, checked, put back after a flush or a deletion behind its back,
 * changed as set elements while the table is as written, and the table gone when the link leaves.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { RouteWanted } from '../../src/order/book.js';
import {
  createNftablesDriver,
  elementChanges,
  nftablesRuleset,
  nftablesTableName,
  parseNftablesSets,
  parseNftablesTable,
} from '../../src/order/nftables.js';
import { testbedSkip } from '../helpers/testbed.js';

const route = (source: string | null, group: string) => ({ source, group }) as unknown as RouteWanted;
const listing = (...items: object[]) => JSON.stringify({ nftables: [{ metainfo: {} }, ...items] });
const sets = [
  { set: { name: 'sg4', type: ['ipv4_addr', 'ipv4_addr'] } },
  { set: { name: 'g4', type: 'ipv4_addr' } },
  { set: { name: 'sg6', type: ['ipv6_addr', 'ipv6_addr'] } },
  { set: { name: 'g6', type: 'ipv6_addr' } },
];
/** The 515 rules as nft 1.0.6 lists them (dup's device under "addr"). */
const rules = (outbound: string) => [
  ...Array.from({ length: 7 }, () => ({ rule: { chain: 'ingress', expr: [{ accept: null }] } })),
  ...Array.from({ length: 508 }, () => ({ rule: { chain: 'hop', expr: [{ dup: { addr: outbound } }] } })),
];
const hook = { chain: { name: 'ingress', hook: 'ingress' } };

describe('nftables driver: the table and its listing', () => {
  it('names the table after the interfaces, in characters nft takes', () => {
    assert.equal(nftablesTableName('eth0', 'eth1'), 'gatecast_eth0_eth1');
    assert.equal(nftablesTableName('eth0.5', 'sat@x'), 'gatecast_eth0_5_sat_x');
  });

  it('writes every route into its set, replacing the table in one transaction', () => {
    const text = nftablesRuleset('t', 'eth0', 'eth1', [
      route('10.0.0.1', '239.1.1.1'),
      route(null, '239.2.2.2'),
      route('fd00::1', 'ff3e::5'),
      route(null, 'ff3e::1:2'),
    ]);
    const lines = text.split('\n');
    assert.deepEqual(lines.slice(0, 3), ['table netdev t', 'delete table netdev t', 'table netdev t {']);
    assert.ok(
      lines.includes('  set sg4 { type ipv4_addr . ipv4_addr; elements = { 10.0.0.1 . 239.1.1.1 }; }'),
    );
    assert.ok(lines.includes('  set g4 { type ipv4_addr; elements = { 239.2.2.2 }; }'));
    assert.ok(lines.includes('  set sg6 { type ipv6_addr . ipv6_addr; elements = { fd00::1 . ff3e::5 }; }'));
    assert.ok(lines.includes('  set g6 { type ipv6_addr; elements = { ff3e::1:2 }; }'));
    // The copy goes out with one less; the frame itself is given back the TTL it came with.
    assert.ok(lines.includes('  chain hop4_2 { ip ttl set 1 dup to "eth1" ip ttl set 2; }'));
    assert.ok(
      lines.includes('  chain hop6_255 { ip6 hoplimit set 254 dup to "eth1" ip6 hoplimit set 255; }'),
    );
    assert.ok(!text.includes('hop4_1 '), 'a TTL of 1 is not forwarded');
    assert.ok(lines.includes('    type filter hook ingress device "eth0" priority 0; policy accept;'));
  });

  it('reads the routes of a table as written, in every element form nft lists', () => {
    const listed = parseNftablesTable(
      listing(
        { set: { ...sets[0]?.set, elem: [{ concat: ['10.0.0.1', '239.1.1.1'] }] } },
        { set: { ...sets[1]?.set, elem: ['239.2.2.2', { elem: { val: '239.3.3.3', counter: {} } }] } },
        sets[2] as object,
        { set: { ...sets[3]?.set, elem: ['ff3e::1:2'] } },
        hook,
        ...rules('eth1'),
      ),
      'eth0',
      'eth1',
    );
    assert.equal(listed.differs, undefined);
    assert.deepEqual([...listed.routes.keys()].sort(), [
      '*,239.2.2.2',
      '*,239.3.3.3',
      '*,ff3e::1:2',
      '10.0.0.1,239.1.1.1',
    ]);
  });

  for (const [name, text, expected] of [
    ['no table', undefined, /^no table$/],
    ['no JSON', 'Error: something', /no JSON/],
    ['a set missing', listing(...sets.slice(1), hook, ...rules('eth1')), /sets g4, g6, sg6 of 4/],
    ['a set of another type', listing({ set: { name: 'g4', type: 'ipv6_addr' } }), /set g4 of type/],
    [
      'a (*,G) element in an (S,G) set',
      listing({ set: { ...sets[0]?.set, elem: ['239.1.1.1'] } }),
      /element of set sg4/,
    ],
    ['copies sent out of another interface', listing(...sets, hook, ...rules('eth9')), /elsewhere than eth1/],
    [
      'the hook on another device',
      listing(...sets, { chain: { ...hook.chain, dev: 'eth7' } }, ...rules('eth1')),
      /no ingress hook on eth0/,
    ],
    ['a hop chain flushed', listing(...sets, hook, ...rules('eth1').slice(0, -1)), /514 rules/],
  ] as const) {
    it(`takes a listing with ${name} for a table other than written`, () => {
      const listed = parseNftablesTable(text, 'eth0', 'eth1');
      assert.match(listed.differs ?? '', expected);
    });
  }

  it('changes routes as elements of their sets in one transaction, deletions first', () => {
    const had = new Map([['10.0.0.1,239.1.1.1', { source: '10.0.0.1', group: '239.1.1.1' }]]);
    const wanted = new Map([
      ['*,239.2.2.2', { source: null, group: '239.2.2.2' }],
      ['fd00::1,ff3e::5', { source: 'fd00::1', group: 'ff3e::5' }],
      ['*,ff3e::6', { source: null, group: 'ff3e::6' }],
    ]);
    assert.equal(
      elementChanges('gatecast_t', ['10.0.0.1,239.1.1.1'], [...wanted.keys()], had, wanted),
      [
        'delete element netdev gatecast_t sg4 { 10.0.0.1 . 239.1.1.1 }',
        'add element netdev gatecast_t g4 { 239.2.2.2 }',
        'add element netdev gatecast_t sg6 { fd00::1 . ff3e::5 }',
        'add element netdev gatecast_t g6 { ff3e::6 }',
        '',
      ].join('\n'),
    );
  });

  it("reads a table's routes from every netdev table's sets, and only its own", () => {
    const ours = (name: string, type: unknown, elem?: unknown[]) => ({
      set: { name, table: 'gatecast_a', type, ...(elem === undefined ? {} : { elem }) },
    });
    const text = listing(
      ours('sg4', ['ipv4_addr', 'ipv4_addr'], [{ concat: ['10.0.0.1', '239.1.1.1'] }]),
      ours('g4', 'ipv4_addr', ['239.2.2.2']),
      ours('sg6', ['ipv6_addr', 'ipv6_addr']),
      ours('g6', 'ipv6_addr'),
      // Another link's table: not ours.
      { set: { name: 'g4', table: 'gatecast_b', type: 'ipv4_addr', elem: ['239.9.9.9'] } },
    );
    const read = parseNftablesSets(text, 'gatecast_a');
    assert.equal(read.differs, undefined);
    assert.deepEqual([...read.routes.keys()].sort(), ['*,239.2.2.2', '10.0.0.1,239.1.1.1']);
    assert.match(parseNftablesSets(text, 'gatecast_c').differs ?? '', /sets none of 4/);
    assert.match(parseNftablesSets('not json', 'gatecast_a').differs ?? '', /no JSON/);
    const retyped = listing(
      ours('sg4', ['ipv4_addr', 'ipv4_addr']),
      ours('g4', 'ipv6_addr'),
      ours('sg6', ['ipv6_addr', 'ipv6_addr']),
      ours('g6', 'ipv6_addr'),
    );
    assert.match(parseNftablesSets(retyped, 'gatecast_a').differs ?? '', /set g4 of type/);
  });

  it('without nft: an error naming the package, no route claimed', async () => {
    const driver = createNftablesDriver({
      inbound: 'eth0',
      outbound: 'eth1',
      command: '/nonexistent/nft',
      ipCommand: '/nonexistent/ip',
    });
    const report = await driver.reconcile([route(null, '239.1.1.1')]);
    assert.deepEqual(report.added, []);
    assert.match(report.errors.join('\n'), /\/nonexistent\/ip not found \(Debian package iproute2\)/);
    // With nothing to carry the interfaces are not asked for: nft is.
    assert.match(
      (await driver.reconcile([])).errors.join('\n'),
      /\/nonexistent\/nft not found \(Debian package nftables\)/,
    );
    assert.equal(driver.stale?.(), true);
    await driver.close();
  });
});

describe('nftables driver against the real nft (a namespace of its own)', testbedSkip(), () => {
  const ns = `gn${randomBytes(3).toString('hex')}`;
  const table = nftablesTableName('eth0', 'eth1');
  const inNs = (...args: string[]) =>
    execFileSync('ip', ['netns', 'exec', ns, ...args], { encoding: 'utf8' });
  /**
   * The driver runs nft and ip through `ip netns exec`, as an order server started in the
   * namespace would.
   */
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-nft-'));
  const command = join(directory, 'nft');
  const ipCommand = join(directory, 'ip');
  const driverOf = (inbound = 'eth0') =>
    createNftablesDriver({ inbound, outbound: 'eth1', command, ipCommand });
  before(() => {
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
    execFileSync('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    execFileSync('ip', ['-n', ns, 'link', 'set', 'eth1', 'up']);
    for (const [path, program] of [
      [command, 'nft'],
      [ipCommand, 'ip'],
    ] as const) {
      writeFileSync(path, `#!/bin/sh\nexec ip netns exec ${ns} ${program} "$@"\n`, { mode: 0o755 });
    }
  });
  after(() => {
    execFileSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' });
    rmSync(directory, { recursive: true, force: true });
  });
  const listed = () => {
    try {
      return parseNftablesTable(inNs('nft', '-j', 'list', 'table', 'netdev', table), 'eth0', 'eth1');
    } catch {
      return parseNftablesTable(undefined, 'eth0', 'eth1');
    }
  };

  it('writes, checks, puts back what was changed behind its back, and removes the table when nothing is wanted', async () => {
    const driver = driverOf();
    const wanted = [route('10.0.0.1', '239.1.1.1'), route(null, '239.2.2.2'), route('fd00::1', 'ff3e::5')];
    const first = await driver.reconcile(wanted);
    assert.deepEqual(first.errors, []);
    assert.deepEqual(first.added.sort(), ['*,239.2.2.2', '10.0.0.1,239.1.1.1', 'fd00::1,ff3e::5']);
    assert.equal(listed().differs, undefined);
    assert.deepEqual([...listed().routes.keys()].sort(), first.added);
    // Nothing changed: nothing written.
    assert.deepEqual(await driver.reconcile(wanted), { added: [], removed: [], errors: [] });

    // A hop chain flushed (the set intact): the drift check writes the table back.
    inNs('nft', 'flush', 'chain', 'netdev', table, 'hop4_64');
    assert.match(listed().differs ?? '', /514 rules/);
    const restored = await driver.reconcile(wanted);
    assert.deepEqual(restored.errors, []);
    assert.equal(restored.added.length, 3);
    assert.equal(listed().differs, undefined);

    // A rule changed (every group would cross), a foreign chain that drops, the policy set to
    // drop: each is seen and the table written back as it was.
    const handle = /ip daddr @g4 goto hop4 # handle (\d+)/.exec(
      inNs('nft', '-a', 'list', 'chain', 'netdev', table, 'ingress'),
    )?.[1];
    assert.ok(handle !== undefined);
    const shape = inNs('nft', '-t', 'list', 'table', 'netdev', table);
    for (const change of [
      ['replace', 'rule', 'netdev', table, 'ingress', 'handle', handle, 'ip daddr 224.0.0.0/4 goto hop4'],
      [
        'add',
        'chain',
        'netdev',
        table,
        'evil',
        '{ type filter hook ingress device eth0 priority -10; policy drop; }',
      ],
      ['add', 'chain', 'netdev', table, 'ingress', '{ policy drop; }'],
    ]) {
      inNs('nft', ...change);
      assert.notEqual(inNs('nft', '-t', 'list', 'table', 'netdev', table), shape, change.join(' '));
      const back = await driver.reconcile(wanted);
      assert.deepEqual(back.errors, [], change.join(' '));
      assert.equal(back.added.length, 3, change.join(' '));
      assert.equal(inNs('nft', '-t', 'list', 'table', 'netdev', table), shape, change.join(' '));
    }
    // The same table loaded on another device.
    const moved = inNs('nft', 'list', 'table', 'netdev', table).replace('device "eth0"', 'device "lo"');
    execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], {
      input: `table netdev ${table}\ndelete table netdev ${table}\n${moved}`,
    });
    assert.match(inNs('nft', '-t', 'list', 'table', 'netdev', table), /device "lo"/);
    assert.equal((await driver.reconcile(wanted)).added.length, 3);
    assert.equal(inNs('nft', '-t', 'list', 'table', 'netdev', table), shape);

    // An element removed, and the table deleted: both put back.
    inNs('nft', 'delete', 'element', 'netdev', table, 'g4', '{ 239.2.2.2 }');
    assert.deepEqual((await driver.reconcile(wanted)).added, ['*,239.2.2.2']);
    inNs('nft', 'delete', 'table', 'netdev', table);
    assert.equal((await driver.reconcile(wanted)).added.length, 3);

    // One route less, then none: removed as elements, the table itself unchanged (the next
    // order adds an element instead of writing the table's 500 chains again).
    const shapeBefore = inNs('nft', '-t', 'list', 'table', 'netdev', table);
    const fewer = await driver.reconcile(wanted.slice(1), { fresh: false });
    assert.deepEqual(fewer, { added: [], removed: ['10.0.0.1,239.1.1.1'], errors: [] });
    const none = await driver.reconcile([], { fresh: false });
    assert.deepEqual(none.removed.sort(), ['*,239.2.2.2', 'fd00::1,ff3e::5']);
    assert.equal(listed().differs, undefined);
    assert.deepEqual([...listed().routes.keys()], []);
    assert.equal(inNs('nft', '-t', 'list', 'table', 'netdev', table), shapeBefore);
    // A drift check of the empty table: nothing to do.
    assert.deepEqual(await driver.reconcile([]), { added: [], removed: [], errors: [] });
    // Back again, as an element.
    assert.deepEqual((await driver.reconcile(wanted.slice(0, 1), { fresh: false })).added, [
      '10.0.0.1,239.1.1.1',
    ]);
    assert.equal(inNs('nft', '-t', 'list', 'table', 'netdev', table), shapeBefore);
    // The link leaves this router (final): the table goes, no hook left on eth0.
    const leaving = await driver.reconcile([], { fresh: true, final: true });
    assert.deepEqual(leaving, { added: [], removed: ['10.0.0.1,239.1.1.1'], errors: [] });
    assert.equal(listed().differs, 'no table');
    assert.deepEqual(await driver.reconcile([], { fresh: true, final: true }), {
      added: [],
      removed: [],
      errors: [],
    });
    assert.deepEqual(await driver.reconcile([]), { added: [], removed: [], errors: [] });
    await driver.close();
  });

  it('an element taken away behind its back before an order: the order writes the table whole', async () => {
    const driver = driverOf();
    const one = [route(null, '239.7.7.1')];
    assert.deepEqual((await driver.reconcile(one)).added, ['*,239.7.7.1']);
    inNs('nft', 'delete', 'element', 'netdev', table, 'g4', '{ 239.7.7.1 }');
    // From what it saw (no listing), the driver deletes 239.7.7.1 and adds 239.7.7.2 as elements:
    // the delete fails (no such element), the transaction with it, and the table is written.
    const next = await driver.reconcile([route(null, '239.7.7.2')], { fresh: false });
    assert.deepEqual(next, { added: ['*,239.7.7.2'], removed: ['*,239.7.7.1'], errors: [] });
    assert.deepEqual([...listed().routes.keys()], ['*,239.7.7.2']);
    assert.equal(listed().differs, undefined);
    await driver.reconcile([], { fresh: true, final: true });
    await driver.close();
  });

  it('an inbound interface that does not exist is an error, never a route; with nothing to carry it is no error', async () => {
    const driver = driverOf('eht0');
    const report = await driver.reconcile([route(null, '239.1.1.1')]);
    assert.deepEqual(report.added, []);
    assert.match(report.errors.join('\n'), /the inbound interface eht0 does not exist/);
    assert.throws(() =>
      execFileSync(
        'ip',
        ['netns', 'exec', ns, 'nft', 'list', 'table', 'netdev', nftablesTableName('eht0', 'eth1')],
        {
          stdio: 'pipe',
        },
      ),
    );
    assert.deepEqual(await driver.reconcile([]), { added: [], removed: [], errors: [] });
    await driver.close();
  });

  it('an interface gone since the last drift check: an order on the link is an error, not a route', async () => {
    execFileSync('ip', ['-n', ns, 'link', 'add', 'gx0', 'type', 'veth', 'peer', 'name', 'gx1']);
    const driver = createNftablesDriver({ inbound: 'gx0', outbound: 'gx1', command, ipCommand });
    assert.deepEqual((await driver.reconcile([route(null, '239.8.8.1')])).added, ['*,239.8.8.1']);
    // Deleting one end of a veth pair deletes both.
    execFileSync('ip', ['-n', ns, 'link', 'del', 'gx0']);
    const report = await driver.reconcile([route(null, '239.8.8.1'), route(null, '239.8.8.2')], {
      fresh: false,
    });
    assert.deepEqual(report.added, [], JSON.stringify(report));
    assert.match(report.errors.join('\n'), /interface gx[01] does not exist/);
    await driver.reconcile([], { fresh: true, final: true });
    await driver.close();
  });

  it('a missing interface is found before writing when the last listing had nothing to carry', async () => {
    const driver = driverOf('eht0');
    // The first reconcile carries nothing: no interface is looked at, and that is no error.
    assert.deepEqual(await driver.reconcile([], { fresh: true }), { added: [], removed: [], errors: [] });
    // An order follows, from what the driver saw (no fresh listing): still no table on a typo.
    const report = await driver.reconcile([route(null, '239.1.1.1')], { fresh: false });
    assert.deepEqual(report.added, []);
    assert.match(report.errors.join('\n'), /the inbound interface eht0 does not exist/);
    assert.throws(
      () =>
        execFileSync(
          'ip',
          ['netns', 'exec', ns, 'nft', 'list', 'table', 'netdev', nftablesTableName('eht0', 'eth1')],
          { stdio: 'pipe' },
        ),
      'no table was written for an interface that does not exist',
    );
    await driver.close();
  });

  it('an IPv4-mapped source, which nft lists in another form, is one route: written once, not again', async () => {
    const driver = driverOf();
    const wanted = [route('::ffff:a4d:10a', 'ff3e::2')];
    assert.deepEqual((await driver.reconcile(wanted)).added, ['::ffff:a4d:10a,ff3e::2']);
    assert.deepEqual(await driver.reconcile(wanted), { added: [], removed: [], errors: [] });
    assert.deepEqual((await driver.reconcile([])).removed, ['::ffff:a4d:10a,ff3e::2']);
    await driver.close();
  });
});
