import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Value } from '@sinclair/typebox/value';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import type { RouteWanted } from '../../src/order/book.js';
import type { RouterDriver } from '../../src/order/driver.js';
import { OrderName } from '../../src/protocol/api-order.js';
import { openStore, type Store } from '../../src/store/database.js';

const operatorToken = 'operator-token-for-order-field-tests-0123';

// A service's source and a relay link's addresses were checked only for their characters: "999.1.1.1",
// a multicast "source" or an IPv4 source of an IPv6 group were saved, and the router was asked for
// a route it can never install, on every drift check; an IPv6 source written in another form than
// smcrouted shows it never matched the route shown, so the route was removed and added again on each.
describe('order API: addresses of services and links are checked naming the field', () => {
  let store: Store;
  let app: FastifyInstance;
  const call = async (method: 'PUT' | 'GET', url: string, payload?: object) => {
    const response = await app.inject({
      method,
      url,
      headers: { authorization: `Bearer ${operatorToken}` },
      ...(payload === undefined ? {} : { payload }),
    });
    return { status: response.statusCode, body: response.json() as Record<string, unknown> };
  };
  before(async () => {
    store = await openStore('sqlite::memory:');
    const makeDriver = (): RouterDriver => ({
      reconcile: async (_wanted: readonly RouteWanted[]) => ({ added: [], removed: [], errors: [] }),
      close: async () => undefined,
    });
    app = await buildServerApp({
      store,
      operatorToken,
      roles: ['subscription', 'billing', 'order'],
      order: { makeDriver, background: false },
    });
    const link = await call('PUT', '/v1/order/links/sat', {
      capacity: 10_000_000,
      router: { kind: 'smcroute', socket: '/run/x.sock', inbound: 'eth0', outbound: 'eth1' },
    });
    assert.equal(link.status, 200, JSON.stringify(link.body));
  });
  after(async () => {
    await app?.close();
    await store?.close();
  });

  const service = (group: string, source: string) => ({ link: 'sat', group, source, bitRate: 1_000 });
  for (const [name, body] of [
    ['a source that is no address', service('239.1.1.1:5000', '999.1.1.1')],
    ['a multicast source', service('239.1.1.1:5000', '239.2.2.2')],
    ['an IPv4 source of an IPv6 group', service('[ff3e::1]:5000', '10.0.0.1')],
    ['an IPv6 source of an IPv4 group', service('239.1.1.1:5000', 'fd00::1')],
    // No packet comes from these, or none a router forwards (sat is an smcroute link).
    ['the unspecified IPv4 source', service('239.1.1.1:5000', '0.0.0.0')],
    ['the unspecified IPv6 source', service('[ff3e::1]:5000', '::')],
    ['a loopback source', service('239.1.1.1:5000', '127.0.0.1')],
    ['another loopback source', service('239.1.1.1:5000', '127.9.9.9')],
    ['the IPv6 loopback source', service('[ff3e::1]:5000', '::1')],
    ['the IPv6 loopback source written long', service('[ff3e::1]:5000', '0:0:0:0:0:0:0:1')],
    ['an IPv4-compatible loopback source', service('[ff3e::1]:5000', '::0.0.0.1')],
    ['a link-local IPv6 source', service('[ff3e::1]:5000', 'fe80::1')],
    ['another link-local IPv6 source', service('[ff3e::1]:5000', 'FEBF::1')],
    ['a link-local IPv4 source', service('239.1.1.1:5000', '169.254.1.1')],
    ['a source of "this network"', service('239.1.1.1:5000', '0.0.0.1')],
    ['the broadcast source', service('239.1.1.1:5000', '255.255.255.255')],
    ['a reserved source', service('239.1.1.1:5000', '240.0.0.1')],
    ['an IPv4-translated source', service('[ff3e::1]:5000', '::ffff:0:7f00:1')],
  ] as const) {
    it(`refuses ${name} (400 body/source)`, async () => {
      const answer = await call('PUT', '/v1/order/services/bad', body);
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.match(String(answer.body.message), /^body\/source: /);
    });
  }

  it('takes sources next to the refused ones (fec0::1, 126.255.255.255, 169.253.1.1, 128.0.0.1)', async () => {
    for (const [group, source] of [
      ['[ff3e::9:8:1]:5000', 'fec0::1'],
      ['239.9.8.1:5000', '126.255.255.255'],
      ['239.9.8.1:5000', '169.253.1.1'],
      ['239.9.8.1:5000', '128.0.0.1'],
    ] as const) {
      const answer = await call('PUT', '/v1/order/services/near', service(group, source));
      assert.equal(answer.status, 200, `${source}: ${JSON.stringify(answer.body)}`);
    }
  });

  it('a relay link takes a loopback source (a relay on one host) but not the unspecified one', async () => {
    const relay = await call('PUT', '/v1/order/links/lo-relay', {
      capacity: 1_000_000,
      router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
    });
    assert.equal(relay.status, 200, JSON.stringify(relay.body));
    const body = (source: string) => ({ link: 'lo-relay', group: '239.9.7.1:5000', source, bitRate: 1 });
    const loopback = await call('PUT', '/v1/order/services/lo-service', body('127.0.0.1'));
    assert.equal(loopback.status, 200, JSON.stringify(loopback.body));
    // A relay's addresses are its interfaces': none is unspecified, "this network" or broadcast.
    for (const [inbound, outbound, field] of [
      ['0.0.0.0', '127.0.0.1', 'inbound'],
      ['127.0.0.1', '0.0.0.0', 'outbound'],
      ['::', '::1', 'inbound'],
      ['0.0.0.0', '0.0.0.0', 'inbound'],
      ['255.255.255.255', '127.0.0.1', 'inbound'],
      ['127.0.0.1', '0.1.2.3', 'outbound'],
    ] as const) {
      const answer = await call('PUT', '/v1/order/links/lo-relay2', {
        capacity: 1_000_000,
        router: { kind: 'relay', inbound, outbound },
      });
      assert.equal(answer.status, 400, `${inbound} ${outbound}: ${JSON.stringify(answer.body)}`);
      assert.match(
        String(answer.body.message),
        new RegExp(`^body/router/${field}: .*not the address of an interface`),
      );
    }
    const unspecified = await call('PUT', '/v1/order/services/lo-service', body('0.0.0.0'));
    assert.equal(unspecified.status, 400, JSON.stringify(unspecified.body));
    assert.match(String(unspecified.body.message), /^body\/source: .*unspecified/);
    // The link cannot become a router's while a service of it has a loopback source.
    const moved = await call('PUT', '/v1/order/links/lo-relay', {
      capacity: 1_000_000,
      router: { kind: 'nftables', inbound: 'lo0', outbound: 'lo1' },
    });
    assert.equal(moved.status, 409, JSON.stringify(moved.body));
    assert.match(String(moved.body.message), /^body\/router: service lo-service .*loopback/);
  });

  it('refuses a router of no known kind naming the kind, and interface names the kernel never takes', async () => {
    const link = (router: unknown) => ({ capacity: 1_000_000, router });
    const unknown = await call('PUT', '/v1/order/links/odd', link({ kind: 'pimd', inbound: 'eth0' }));
    assert.equal(unknown.status, 400, JSON.stringify(unknown.body));
    assert.equal(unknown.body.message, 'body/router/kind: must be one of smcroute, nftables, relay');
    // A router that is no object is named as such (once), not as a missing kind.
    for (const router of [[], [{ kind: 'nftables' }], 'nftables', 7, null]) {
      const answer = await call('PUT', '/v1/order/links/odd', link(router));
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.equal(
        answer.body.message,
        'body/router: must be an object with a kind (smcroute, nftables, relay)',
        JSON.stringify(router),
      );
    }
    // A link named "." or ".." could never be named in a path again.
    for (const name of ['.', '..']) {
      assert.equal(Value.Check(OrderName, name), false, name);
    }
    assert.ok(Value.Check(OrderName, '...') && Value.Check(OrderName, '.a'));
    for (const name of ['%2e', '%2e%2e', '.%2e']) {
      const answer = await call(
        'PUT',
        `/v1/order/links/${name}`,
        link({ kind: 'nftables', inbound: 'eth40', outbound: 'eth41' }),
      );
      // (A URL's dot segments may be resolved before routing: then there is no such route.)
      assert.ok([400, 404].includes(answer.status), `${name}: ${JSON.stringify(answer.body)}`);
    }
    for (const name of ['.', '..', 'eth0:1', 'a/b', 'a b', '', 'all', 'default']) {
      for (const field of ['inbound', 'outbound'] as const) {
        const router = { kind: 'nftables', inbound: 'eth40', outbound: 'eth41', [field]: name };
        const answer = await call('PUT', '/v1/order/links/odd', link(router));
        assert.equal(answer.status, 400, `${JSON.stringify(name)}: ${JSON.stringify(answer.body)}`);
        assert.match(String(answer.body.message), new RegExp(`^body/router/${field}: `));
      }
    }
    for (const name of ['.x', 'x..', 'veth0@1', 'br-lan+', 'all0', 'defaults']) {
      const router = { kind: 'nftables', inbound: name, outbound: 'eth41' };
      assert.equal((await call('PUT', '/v1/order/links/odd', link(router))).status, 200, name);
    }
  });

  it('one smcrouted however its socket path is written; a router another link left but has not emptied yet', async () => {
    // sat has smcrouted /run/x.sock with inbound eth0.
    for (const socket of ['/run//x.sock', '/run/./x.sock', '/run/y/../x.sock']) {
      const answer = await call('PUT', '/v1/order/links/same-daemon', {
        capacity: 1_000_000,
        router: { kind: 'smcroute', socket, inbound: 'eth0', outbound: 'eth9' },
      });
      assert.equal(answer.status, 409, `${socket}: ${JSON.stringify(answer.body)}`);
      assert.match(String(answer.body.message), /^body\/router: link sat has smcrouted/);
    }
    // sat was on the nftables table gatecast_old and its server has not emptied it yet.
    await store.db
      .insertInto('order_link_routers')
      .values({
        link: 'sat',
        router_config: JSON.stringify({
          kind: 'nftables',
          inbound: 'eth30',
          outbound: 'eth31',
          table: 'gatecast_old',
        }),
      })
      .execute();
    const taken = await call('PUT', '/v1/order/links/newcomer', {
      capacity: 1_000_000,
      router: { kind: 'nftables', inbound: 'eth32', outbound: 'eth33', table: 'gatecast_old' },
    });
    assert.equal(taken.status, 409, JSON.stringify(taken.body));
    assert.match(String(taken.body.message), /^body\/router: link sat left that router .* not removed yet/);
    await store.db.deleteFrom('order_link_routers').where('link', '=', 'sat').execute();
    const free = await call('PUT', '/v1/order/links/newcomer', {
      capacity: 1_000_000,
      router: { kind: 'nftables', inbound: 'eth32', outbound: 'eth33', table: 'gatecast_old' },
    });
    assert.equal(free.status, 200, JSON.stringify(free.body));
  });

  it('keeps an IPv6 source in its one text form, as the router shows it', async () => {
    const saved = await call('PUT', '/v1/order/services/v6', service('[FF3E:0::1]:5000', 'FD00:0:0::0001'));
    assert.equal(saved.status, 200, JSON.stringify(saved.body));
    const services = await call('GET', '/v1/order/services');
    const v6 = (services.body as unknown as Array<{ name: string; source: string; group: string }>).find(
      (one) => one.name === 'v6',
    );
    assert.deepEqual([v6?.group, v6?.source], ['[ff3e::1]:5000', 'fd00::1']);
  });

  // smcrouted forwards a group (S,G or *,G), whatever the port: a second service on the group of
  // another (another port) was routed with it, unordered and outside the link's capacity; the same
  // group and port under two names was one stream sold as two.
  it('refuses a service on a group another service of the link has (409 body/group)', async () => {
    assert.equal(
      (await call('PUT', '/v1/order/services/one', service('239.9.0.1:5000', '10.0.0.1'))).status,
      200,
    );
    assert.equal(
      (await call('PUT', '/v1/order/services/one', service('239.9.0.1:5000', '10.0.0.1'))).status,
      200,
    );
    for (const group of ['239.9.0.1:5000', '239.9.0.1:6000']) {
      const other = await call('PUT', '/v1/order/services/two', service(group, '10.0.0.1'));
      assert.equal(other.status, 409, JSON.stringify(other.body));
      assert.match(String(other.body.message), /^body\/group: .*service one/);
    }
    const anySource = await call('PUT', '/v1/order/services/two', {
      link: 'sat',
      group: '239.9.0.1:6000',
      bitRate: 1,
    });
    assert.equal(anySource.status, 409, JSON.stringify(anySource.body));
    // Another source on the group is another (S,G) route: another channel.
    const ssm = await call('PUT', '/v1/order/services/two', service('239.9.0.1:5000', '10.0.0.2'));
    assert.equal(ssm.status, 200, JSON.stringify(ssm.body));
    const relay = await call('PUT', '/v1/order/links/air2', {
      capacity: 1_000_000,
      router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
    });
    assert.equal(relay.status, 200);
    // A relay joins each group on its own port: another port of a group is another channel there.
    const onRelay = (group: string) => ({ link: 'air2', group, bitRate: 1_000 });
    assert.equal((await call('PUT', '/v1/order/services/r1', onRelay('239.9.0.2:5000'))).status, 200);
    assert.equal((await call('PUT', '/v1/order/services/r2', onRelay('239.9.0.2:6000'))).status, 200);
    assert.equal((await call('PUT', '/v1/order/services/r3', onRelay('239.9.0.2:5000'))).status, 409);
  });

  // The smcroute driver keeps every route of its inbound interface equal to its link's services:
  // two links on one smcrouted and inbound interface removed each other's routes on every check.
  it('refuses a second link on the smcrouted and inbound interface of another (409 body/router)', async () => {
    const router = (socket: string, inbound: string, outbound: string) => ({
      capacity: 1_000_000,
      router: { kind: 'smcroute', socket, inbound, outbound },
    });
    const same = await call('PUT', '/v1/order/links/sat2', router('/run/x.sock', 'eth0', 'eth2'));
    assert.equal(same.status, 409, JSON.stringify(same.body));
    assert.match(String(same.body.message), /^body\/router: .*link sat/);
    // The link itself may change; another inbound interface or another daemon is another router.
    assert.equal(
      (await call('PUT', '/v1/order/links/sat', router('/run/x.sock', 'eth0', 'eth3'))).status,
      200,
    );
    assert.equal(
      (await call('PUT', '/v1/order/links/sat3', router('/run/x.sock', 'eth4', 'eth2'))).status,
      200,
    );
    assert.equal(
      (await call('PUT', '/v1/order/links/sat4', router('/run/y.sock', 'eth0', 'eth2'))).status,
      200,
    );
  });

  for (const [name, router, field] of [
    ['an inbound that is no address', { inbound: '999.0.0.1', outbound: '127.0.0.1' }, 'inbound'],
    ['a multicast outbound', { inbound: '127.0.0.1', outbound: '239.0.0.1' }, 'outbound'],
  ] as const) {
    it(`refuses a relay link with ${name} (400 body/router/${field})`, async () => {
      const answer = await call('PUT', '/v1/order/links/air', {
        capacity: 1_000_000,
        router: { kind: 'relay', ...router },
      });
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.match(String(answer.body.message), new RegExp(`^body/router/${field}: `));
    });
  }
  // A relay link's families were not compared: a relay from IPv4 to IPv6, an IPv6 channel on an
  // IPv4 relay, or an IPv4 channel relayed to an IPv6 group were saved, orders of them were answered
  // 201 active, and the relay failed on every drift check without a packet ever crossing the link.
  // A relay group on a smcroute link was kept and shown though a router forwards a group as it is.
  it('refuses a relay link whose two addresses are of two families (400 body/router/outbound)', async () => {
    const answer = await call('PUT', '/v1/order/links/mixed', {
      capacity: 1_000_000,
      router: { kind: 'relay', inbound: '127.0.0.1', outbound: '::1' },
    });
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
    assert.match(String(answer.body.message), /^body\/router\/outbound: /);
  });

  it('refuses a channel or relay group of another family than its relay link (400 naming the field)', async () => {
    const link = await call('PUT', '/v1/order/links/air4', {
      capacity: 1_000_000,
      router: { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' },
    });
    assert.equal(link.status, 200, JSON.stringify(link.body));
    const v6 = await call('PUT', '/v1/order/services/f1', {
      link: 'air4',
      group: '[ff3e::4]:5000',
      bitRate: 1,
    });
    assert.equal(v6.status, 400, JSON.stringify(v6.body));
    assert.match(String(v6.body.message), /^body\/group: /);
    const to6 = await call('PUT', '/v1/order/services/f2', {
      link: 'air4',
      group: '239.9.4.1:5000',
      relayTo: '[ff3e::4]:5000',
      bitRate: 1,
    });
    assert.equal(to6.status, 400, JSON.stringify(to6.body));
    assert.match(String(to6.body.message), /^body\/relayTo: /);
    const onRouter = await call('PUT', '/v1/order/services/f3', {
      link: 'sat',
      group: '239.9.4.2:5000',
      relayTo: '239.9.5.2:5000',
      bitRate: 1,
    });
    assert.equal(onRouter.status, 400, JSON.stringify(onRouter.body));
    assert.match(String(onRouter.body.message), /^body\/relayTo: /);
  });

  // Changing a link's router was checked only against other links: a relay link holding two
  // services of one group on two ports, or an IPv4 channel, moved to a router that carries them as
  // one channel, or to an IPv6 relay that can never join them.
  it('refuses a router change its services do not fit (409 body/router naming the service)', async () => {
    const relay = { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' };
    assert.equal((await call('PUT', '/v1/order/links/air5', { capacity: 1_000, router: relay })).status, 200);
    const onAir = (group: string) => ({ link: 'air5', group, bitRate: 1 });
    assert.equal((await call('PUT', '/v1/order/services/g1', onAir('239.9.6.1:5000'))).status, 200);
    assert.equal((await call('PUT', '/v1/order/services/g2', onAir('239.9.6.1:6000'))).status, 200);
    const toRouter = await call('PUT', '/v1/order/links/air5', {
      capacity: 1_000,
      router: { kind: 'smcroute', socket: '/run/z.sock', inbound: 'eth0', outbound: 'eth1' },
    });
    assert.equal(toRouter.status, 409, JSON.stringify(toRouter.body));
    assert.match(String(toRouter.body.message), /^body\/router: .*services? g[12]/);
    const to6 = await call('PUT', '/v1/order/links/air5', {
      capacity: 1_000,
      router: { kind: 'relay', inbound: '::1', outbound: '::1' },
    });
    assert.equal(to6.status, 409, JSON.stringify(to6.body));
    assert.match(String(to6.body.message), /^body\/router: .*service g1/);
    const links = await call('GET', '/v1/order/links');
    const air5 = (links.body as unknown as Array<{ name: string; router: { kind: string } }>).find(
      (one) => one.name === 'air5',
    );
    assert.equal(air5?.router.kind, 'relay');
  });
  // limit=0 answered an empty list as if there were no orders, and a limit above the documented
  // 10,000 was cut to it without a word.
  for (const limit of ['0', '10001', '99999']) {
    it(`refuses GET /v1/order/orders?limit=${limit} (400 querystring/limit)`, async () => {
      const answer = await call('GET', `/v1/order/orders?state=all&limit=${limit}`);
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.match(String(answer.body.message), /^querystring\/limit: /);
    });
  }
  // smcrouted cannot forward a channel out of the interface it arrives on: a link whose inbound and
  // outbound interfaces were one was saved and its orders admitted, with nothing ever crossing it.
  it('refuses an smcroute link whose inbound and outbound interface are one (400 body/router/outbound)', async () => {
    const answer = await call('PUT', '/v1/order/links/loop', {
      capacity: 1_000_000,
      router: { kind: 'smcroute', socket: '/run/loop.sock', inbound: 'eth0', outbound: 'eth0' },
    });
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
    assert.match(String(answer.body.message), /^body\/router\/outbound: /);
  });

  // A relay sends every channel from its one outbound address: two services of a relay link going
  // out on one group and port (the same relayTo, or one's relayTo the group another goes out on, or
  // two sources of a group without one) were saved, and the boxes of either got both mixed.
  it('refuses a relay service going out on the group and port of another (409 body/relayTo)', async () => {
    const relay = { kind: 'relay', inbound: '127.0.0.1', outbound: '127.0.0.1' };
    assert.equal((await call('PUT', '/v1/order/links/air7', { capacity: 1_000, router: relay })).status, 200);
    const onAir = (group: string, extra: object = {}) => ({ link: 'air7', group, bitRate: 1, ...extra });
    assert.equal(
      (await call('PUT', '/v1/order/services/h1', onAir('239.9.7.1:5000', { relayTo: '239.9.8.1:5000' })))
        .status,
      200,
    );
    for (const [name, body] of [
      ['the same relay group', onAir('239.9.7.2:5000', { relayTo: '239.9.8.1:5000' })],
      ['no relay group, on the relay group of another', onAir('239.9.8.1:5000')],
    ] as const) {
      const answer = await call('PUT', '/v1/order/services/h2', body);
      assert.equal(answer.status, 409, `${name}: ${JSON.stringify(answer.body)}`);
      assert.match(String(answer.body.message), /^body\/relayTo: .*service h1/);
    }
    assert.equal(
      (await call('PUT', '/v1/order/services/h3', onAir('239.9.7.3:5000', { source: '10.0.0.1' }))).status,
      200,
    );
    const twoSources = await call(
      'PUT',
      '/v1/order/services/h4',
      onAir('239.9.7.3:5000', { source: '10.0.0.2' }),
    );
    assert.equal(twoSources.status, 409, JSON.stringify(twoSources.body));
    assert.match(String(twoSources.body.message), /^body\/relayTo: .*service h3/);
    // The service itself may be saved again as it is.
    assert.equal(
      (await call('PUT', '/v1/order/services/h1', onAir('239.9.7.1:5000', { relayTo: '239.9.8.1:5000' })))
        .status,
      200,
    );
  });
  // An nftables link: the kernel forwards through a netdev table the order server writes; one
  // table per link (two links writing one table would each wipe the other's routes), and a link
  // cannot forward out of the interface it hears on, nor send a channel on another group.
  it('takes an nftables link; refuses one on the table of another (409), one interface for both or a bad table name (400), a relay group (400)', async () => {
    const nft = (inbound: string, outbound: string, table?: string) => ({
      capacity: 1_000_000,
      router: { kind: 'nftables', inbound, outbound, ...(table === undefined ? {} : { table }) },
    });
    assert.equal((await call('PUT', '/v1/order/links/nf1', nft('eth5', 'eth6'))).status, 200);
    const same = await call('PUT', '/v1/order/links/nf2', nft('eth5', 'eth6'));
    assert.equal(same.status, 409, JSON.stringify(same.body));
    assert.match(
      String(same.body.message),
      /^body\/router: link nf1 has the nftables table gatecast_eth5_eth6/,
    );
    const named = await call('PUT', '/v1/order/links/nf3', nft('eth7', 'eth8', 'gatecast_eth5_eth6'));
    assert.equal(named.status, 409, JSON.stringify(named.body));
    // Another table on the same two interfaces is the same link counted twice.
    const twin = await call('PUT', '/v1/order/links/nf3', nft('eth5', 'eth6', 'gatecast_second'));
    assert.equal(twin.status, 409, JSON.stringify(twin.body));
    assert.match(String(twin.body.message), /^body\/router: link nf1 already forwards from eth5 to eth6/);
    assert.equal(
      (await call('PUT', '/v1/order/links/nf3', nft('eth5', 'eth7', 'gatecast_second'))).status,
      200,
    );
    // The link itself may be saved again as it is.
    assert.equal((await call('PUT', '/v1/order/links/nf1', nft('eth5', 'eth6'))).status, 200);
    const loop = await call('PUT', '/v1/order/links/nf4', nft('eth5', 'eth5'));
    assert.equal(loop.status, 400, JSON.stringify(loop.body));
    assert.match(String(loop.body.message), /^body\/router\/outbound: /);
    // nft takes no quoted table name: a name that is one of its keywords ("counter") could never
    // be listed or written, so a table's name starts with gatecast.
    for (const table of [
      '9t',
      'a-b',
      'a b',
      'counter',
      'table',
      'second',
      'gatecast-x',
      `gatecast${'x'.repeat(57)}`,
    ]) {
      const bad = await call('PUT', '/v1/order/links/nf5', nft('eth5', 'eth9', table));
      assert.equal(bad.status, 400, `${table}: ${JSON.stringify(bad.body)}`);
      // Named as a field of its own kind, not of another ("must have required property 'socket'").
      assert.match(String(bad.body.message), /^body\/router\/table: /);
    }
    const relayed = await call('PUT', '/v1/order/services/nfs', {
      link: 'nf1',
      group: '239.9.6.1:5000',
      bitRate: 1,
      relayTo: '239.9.6.2:5000',
    });
    assert.equal(relayed.status, 400, JSON.stringify(relayed.body));
    assert.match(String(relayed.body.message), /^body\/relayTo: /);
    const v6 = await call('PUT', '/v1/order/services/nfs6', {
      link: 'nf1',
      group: '[ff3e::9:6]:5000',
      bitRate: 1,
    });
    assert.equal(v6.status, 200, JSON.stringify(v6.body));
    // A router never forwards a link-local group: one was routed and crossed the link.
    for (const group of [
      '224.0.0.251:5353',
      '[ff02::1]:5000',
      '[FF01::1]:5000',
      '[ff00::1]:5000',
      '[ff0f::1]:5000',
      '[ff3f::1]:5000',
    ]) {
      const local = await call('PUT', '/v1/order/services/nfl', { link: 'nf1', group, bitRate: 1 });
      assert.equal(local.status, 400, `${group}: ${JSON.stringify(local.body)}`);
      assert.match(String(local.body.message), /^body\/group: .*link-local/);
    }
    for (const group of ['224.0.1.1:5000', '[ff05::1]:5000', '[ff0e::1]:5000']) {
      assert.equal(
        (await call('PUT', '/v1/order/services/nfl', { link: 'nf1', group, bitRate: 1 })).status,
        200,
      );
    }
  });

  // An IPv4-mapped or -compatible source of an IPv6 group was saved; a router lists it in another
  // form, so its route was written again on every check and reported missing.
  for (const source of ['::ffff:10.77.1.10', '::ffff:a4d:10a', '::10.77.1.10']) {
    it(`refuses the IPv6 source ${source}, an IPv4 address written as IPv6 (400 body/source)`, async () => {
      const answer = await call('PUT', '/v1/order/services/mapped', service('[ff3e::7]:5000', source));
      assert.equal(answer.status, 400, JSON.stringify(answer.body));
      assert.match(String(answer.body.message), /^body\/source: .*IPv4 address written as IPv6/);
    });
  }

  // The same router sent again with its keys in another order (or an nftables table named as the
  // default) was stored as another router: every route was taken down and put back.
  it('keeps the stored router when the same router comes again in another form', async () => {
    const put = (router: object) => call('PUT', '/v1/order/links/same', { capacity: 1_000, router });
    assert.equal((await put({ kind: 'nftables', inbound: 'eth20', outbound: 'eth21' })).status, 200);
    const stored = async () =>
      (
        await store.db
          .selectFrom('order_links')
          .select('router_config')
          .where('name', '=', 'same')
          .executeTakeFirstOrThrow()
      ).router_config;
    const first = await stored();
    assert.equal((await put({ outbound: 'eth21', inbound: 'eth20', kind: 'nftables' })).status, 200);
    assert.equal(await stored(), first);
    assert.equal(
      (await put({ kind: 'nftables', table: 'gatecast_eth20_eth21', outbound: 'eth21', inbound: 'eth20' }))
        .status,
      200,
    );
    assert.equal(await stored(), first);
    // An older server's form (keys in the client's order) is kept too.
    await store.db
      .updateTable('order_links')
      .set({ router_config: '{"outbound":"eth21","kind":"nftables","inbound":"eth20"}' })
      .where('name', '=', 'same')
      .execute();
    assert.equal((await put({ kind: 'nftables', inbound: 'eth20', outbound: 'eth21' })).status, 200);
    assert.equal(await stored(), '{"outbound":"eth21","kind":"nftables","inbound":"eth20"}');
    assert.equal((await put({ kind: 'nftables', inbound: 'eth20', outbound: 'eth22' })).status, 200);
    assert.equal(await stored(), '{"kind":"nftables","inbound":"eth20","outbound":"eth22"}');
  });

  // A relative control socket was saved and then looked up from each order server's own working
  // directory: servers started in two directories drove two different daemons, or none.
  it('refuses an smcroute link with a relative control socket (400 body/router/socket)', async () => {
    const answer = await call('PUT', '/v1/order/links/rel', {
      capacity: 1_000_000,
      router: { kind: 'smcroute', socket: 'run/smcroute.sock', inbound: 'eth0', outbound: 'eth1' },
    });
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
    assert.match(String(answer.body.message), /^body\/router\/socket: /);
  });
});
