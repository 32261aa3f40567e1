/**
 * A restarted smcrouted (a real one, in its own namespace) gets the link's routes back as soon as
 * it has its new control socket, not at the driver's next poll or drift check.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createOrderBook } from '../../src/order/book.js';
import { type LinkDrivers, startLinkDrivers } from '../../src/order/driver.js';
import { createSmcrouteDriver, parseShowRoutes, smcrouteRequest } from '../../src/order/smcroute.js';
import type { LinkRouter } from '../../src/protocol/api-order.js';
import { openStore, type Store } from '../../src/store/database.js';
import { testbedSkip } from '../helpers/testbed.js';

const group = '239.5.7.1';
const source = '10.233.1.10';

// The driver noticed a restarted smcrouted only at its next poll (orderDriverPollMs) by the control
// socket's new identity; restore is now told by the socket's directory at once. The poll and the
// drift check are an hour here: only that can bring the route back within the test's bound.
describe('a restarted smcrouted', testbedSkip([], { smcroute: true }), () => {
  const prefix = `gr${randomBytes(2).toString('hex')}`;
  const ns = `${prefix}-r`;
  let directory: string;
  let socket: string;
  let daemon: ChildProcess | undefined;
  let store: Store | undefined;
  let drivers: LinkDrivers | undefined;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });
  const startDaemon = () =>
    spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        'smcrouted',
        '-n',
        '-N',
        '-f',
        join(directory, 'smcroute.conf'),
        '-i',
        `${prefix}r`,
        '-u',
        socket,
        '-P',
        join(directory, 'pid'),
        '-l',
        'info',
      ],
      { stdio: 'ignore' },
    );
  const stopDaemon = async (signal: NodeJS.Signals) => {
    if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) {
      const exited = new Promise((resolve) => daemon?.once('exit', resolve));
      daemon.kill(signal);
      await exited;
    }
  };
  const routed = async () => {
    const shown = await smcrouteRequest(socket, 'show', ['routes']);
    return (
      shown.ok &&
      parseShowRoutes(shown.output).some(
        (route) => route.source === source && route.group === group && route.outbound.includes('eth1'),
      )
    );
  };
  const until = async (what: string, check: () => Promise<boolean>, timeoutMs: number) => {
    const deadline = performance.now() + timeoutMs;
    while (!(await check())) {
      assert(performance.now() < deadline, `${what}: not within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };

  before(async () => {
    directory = mkdtempSync(join(tmpdir(), 'gatecast-smcrestart-'));
    socket = join(directory, 'smcroute.sock');
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1');
    ip('-n', ns, 'addr', 'add', '10.233.1.1/24', 'dev', 'eth0');
    ip('-n', ns, 'addr', 'add', '10.233.2.1/24', 'dev', 'eth1');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'eth1', 'up');
    writeFileSync(join(directory, 'smcroute.conf'), 'phyint eth0 enable\nphyint eth1 enable\n');
    daemon = startDaemon();
    await until(
      'smcrouted answers',
      async () => (await smcrouteRequest(socket, 'show', ['routes'])).ok,
      15_000,
    );

    store = await openStore('sqlite::memory:');
    const iso = new Date().toISOString();
    const router: LinkRouter = { kind: 'smcroute', socket, inbound: 'eth0', outbound: 'eth1' };
    await store.db
      .insertInto('order_links')
      .values({
        name: 'sat',
        capacity_bits: 10_000_000,
        used_bits: 0,
        router: 'smcroute',
        router_config: JSON.stringify(router),
        policy: 'reject',
        version: 0,
        created_at: iso,
        updated_at: iso,
      })
      .execute();
    await store.db
      .insertInto('order_services')
      .values({
        name: 'news',
        link: 'sat',
        group_address: group,
        port: 5000,
        source_address: source,
        bit_rate: 1_000_000,
        priority: 0,
        price: 'per-order',
        relay_to: null,
        created_at: iso,
        updated_at: iso,
      })
      .execute();
    await store.db
      .insertInto('parties')
      .values({ id: 'b1', kind: 'subscriber', name: 'b1', token_hash: 'hash-b1', created_at: iso })
      .execute();
    await store.db
      .insertInto('entitlements')
      .values({
        id: 'ent-b1',
        subscriber: 'b1',
        service: 'channel',
        session: null,
        valid_from: null,
        valid_to: null,
        monthly: null,
        created_at: iso,
      })
      .execute();
  });
  after(async () => {
    await drivers?.close();
    await store?.close();
    await stopDaemon('SIGTERM');
    try {
      ip('netns', 'delete', ns);
    } catch {
      // already gone
    }
    rmSync(directory, { recursive: true, force: true });
  });

  it('gets its routes back from the store as soon as its new control socket is there', async () => {
    assert.ok(store !== undefined);
    const book = createOrderBook(store, { leaseMs: 3_600_000 });
    drivers = startLinkDrivers({
      store,
      book,
      holder: 'server-a',
      makeDriver: (router) => {
        assert.equal(router.kind, 'smcroute');
        return createSmcrouteDriver(router);
      },
      pollMs: 3_600_000,
      driftCheckMs: 3_600_000,
    });
    assert.equal((await book.order('b1', 'news')).kind, 'ordered');
    await drivers.pass();
    assert.ok(await routed(), 'routed before the restart');
    await stopDaemon('SIGKILL');
    daemon = startDaemon();
    // smcrouted's own start is in this bound too (on a loaded host, up to a few seconds).
    await until('the route back after the restart', routed, 10_000);
  });
});
