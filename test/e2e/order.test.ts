import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { multicastTtlDefault } from '../../src/limits.js';
import { nftablesTableName, parseNftablesTable } from '../../src/order/nftables.js';
import { parseShowRoutes } from '../../src/order/smcroute.js';
import {
  createOrderBed,
  type OrderBed,
  orderAdmin,
  orderServerUrl,
  type Started,
  startOrderServer,
  watchOrder,
} from '../helpers/order-bed.js';
import { gatecastBin, testbedSkip } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

/** Polls until check holds (bounded), naming what was awaited when it does not. */
const until = (what: string, check: () => boolean, timeoutMs = 60_000) => waitUntil(what, check, timeoutMs);

const news = '239.231.0.1';
const sport = '239.231.0.2';
const film = '239.231.0.3';
const source = '10.231.1.10';
const server = orderServerUrl;
const operatorToken = 'gct_order_e2e_operator_token_0123456789';
const leaseSeconds = 4;
/** The nftables link's table in the router's namespace. */
const nftTable = nftablesTableName('eth0', 'eth1');

/**
 * The same flows over a real smcrouted (where the kernel routes multicast) and over the kernel's
 * own forwarding through nftables rules the order server writes (any kernel).
 */
for (const kind of ['smcroute', 'nftables'] as const) {
  describe(
    kind === 'smcroute'
      ? 'ordering channels over a one-way link (namespaces, real smcrouted, nftables)'
      : 'ordering channels over a one-way link forwarded by nftables rules the order server writes (namespaces)',
    testbedSkip([], { smcroute: kind === 'smcroute' }),
    () => {
      let bed: OrderBed;
      let smcrouted: Started | undefined;
      const routerArg = () =>
        kind === 'smcroute' ? `smcroute:${bed.smcrouteSocket}:eth0:eth1` : 'nftables:eth0:eth1';
      /** The (S,G) and (*,G) routes the router holds onto the link. */
      const routes = (): Array<{ source: string | null; group: string }> => {
        if (kind === 'smcroute') {
          return parseShowRoutes(bed.routes()).filter((route) => route.outbound.includes('eth1'));
        }
        let listed: string | undefined;
        try {
          listed = bed.run('or', 'nft', ['-j', 'list', 'table', 'netdev', nftTable]);
        } catch {
          listed = undefined; // no table: nothing forwarded
        }
        return [...parseNftablesTable(listed, 'eth0', 'eth1').routes.values()];
      };
      const tokens: Record<string, string> = {};
      const node = process.execPath;

      const admin = (...args: string[]) => orderAdmin(bed)(...args);
      /** Runs `gatecast stb` in a box's namespace to its end. */
      const stbOnce = async (box: 'b1' | 'b2', token: string, args: string[]) => {
        const started = bed.start(box, node, [
          gatecastBin(),
          'stb',
          ...args,
          '--server',
          server,
          '--token',
          token,
        ]);
        const code = await started.finished;
        return { code, output: started.output() };
      };
      /** Starts a box ordering a service and renewing, and waits until it has ordered. */
      const watch = (box: 'b1' | 'b2', token: string, service: string) =>
        watchOrder(bed, box, token, service);
      /** The router forwards (S,G) onto the link (smcrouted's rules, not the kernel's unresolved entries). */
      const routed = (group: string) =>
        routes().some((route) => route.source === source && route.group === group);
      /** Waits until n more datagrams of group reached the box. */
      const flows = async (box: 'b1' | 'b2', group: string, n = 20) => {
        const start = bed.arrived(box, group);
        await until(`${n} datagrams of ${group} at ${box}`, () => bed.arrived(box, group) >= start + n);
      };
      /** Checks that the source keeps sending group (the router receives it) while nothing reaches the box. */
      const silent = async (box: 'b1' | 'b2', group: string) => {
        const atBox = bed.arrived(box, group);
        const atRouter = bed.arrived('or', group);
        await until(
          `50 datagrams of ${group} at the router`,
          () => bed.arrived('or', group) >= atRouter + 50,
        );
        assert.equal(bed.arrived(box, group), atBox, `${group} reached ${box} without an order`);
      };

      /**
       * The copy reaches the box with the sender's TTL less one, and the frame at the router goes
       * on with the sender's TTL (the forwarding mangled it before: every other link's table on
       * the same interface, and the router's own sockets, saw one less).
       */
      const ttlsAsARouter = async (group: string) => {
        const count = (host: 'or' | 'b1', name: string) =>
          Number(
            /packets (\d+)/.exec(bed.run(host, 'nft', ['list', 'counter', 'inet', 'gcorder', name]))?.[1],
          );
        for (const [host, ttl] of [
          ['or', multicastTtlDefault],
          ['b1', multicastTtlDefault - 1],
        ] as const) {
          bed.run(host, 'nft', ['add', 'counter', 'inet', 'gcorder', 'ttl_right']);
          bed.run(host, 'nft', ['add', 'counter', 'inet', 'gcorder', 'ttl_wrong']);
          for (const [match, counter] of [
            [`ip ttl ${ttl}`, 'ttl_right'],
            [`ip ttl != ${ttl}`, 'ttl_wrong'],
          ] as const) {
            bed.run(host, 'nft', [
              'add rule inet gcorder pre ip daddr',
              group,
              match,
              'counter name',
              counter,
            ]);
          }
        }
        await until('20 datagrams counted by TTL at the router and at the box', () =>
          (['or', 'b1'] as const).every((host) => count(host, 'ttl_right') + count(host, 'ttl_wrong') >= 20),
        );
        for (const host of ['or', 'b1'] as const) {
          assert.equal(count(host, 'ttl_wrong'), 0, `datagrams of ${group} at ${host} with another TTL`);
        }
      };

      before(async () => {
        bed = createOrderBed([news, sport, film]);
        if (kind === 'smcroute') {
          smcrouted = bed.startSmcrouted();
          await until('smcrouted', () => {
            try {
              bed.routes();
              return true;
            } catch {
              return false;
            }
          });
        }
        await startOrderServer(bed, {
          operatorToken,
          serveArgs: ['--order-lease', String(leaseSeconds)],
          env: { GATECAST_TOKEN: operatorToken },
        });
        admin('orders', 'link', 'sat', '--capacity', '10M', '--router', routerArg());
        for (const [name, group, priority] of [
          ['news', news, '1'],
          ['sport', sport, '2'],
          ['film', film, '5'],
        ] as const) {
          admin(
            'orders',
            'service',
            name,
            '--link',
            'sat',
            '--group',
            `${group}:5000`,
            '--source',
            source,
            '--rate',
            '4M',
            '--priority',
            priority,
          );
        }
        for (const box of ['box1', 'box2', 'stranger']) {
          const created = JSON.parse(admin('subscriber', 'add', box)) as { id: string; token: string };
          tokens[box] = created.token;
          if (box !== 'stranger') {
            admin('grant', created.id, 'channel');
          }
        }
        for (const group of [news, sport, film]) {
          bed.start('os', node, [
            gatecastBin(),
            'send',
            '--group',
            `${group}:5000`,
            '--iface',
            'eth0',
            '--ticker',
            '--ticks',
            '10000000',
            '--ticks-per-second',
            '200',
          ]);
        }
      });

      after(() => {
        bed?.down();
      });

      it('carries nothing before an order; the link is one way', async () => {
        await silent('b1', news);
        assert.deepEqual(routes(), []);
        assert.throws(() => bed.run('b1', 'ping', ['-c', '1', '-W', '1', '10.231.2.1']));
        assert.ok(bed.droppedFromBoxes() > 0, 'the switch dropped what the box sent on the link');
      });

      it('order: the channel arrives over the one-way link; two boxes, one cancel: it goes on; the last cancel: it stops', async () => {
        const box1 = await watch('b1', tokens.box1 as string, 'news');
        await flows('b1', news);
        assert.ok(routed(news));
        if (kind === 'nftables') {
          await ttlsAsARouter(news);
        }
        const box2 = await watch('b2', tokens.box2 as string, 'news');
        assert.equal(await box1.stop(), 0, box1.output());
        assert.match(box1.output(), /cancelled order/);
        await flows('b2', news);
        assert.ok(routed(news));
        assert.equal(await box2.stop(), 0, box2.output());
        await until('the news route to go', () => !routed(news));
        await silent('b2', news);
      });

      it('link full: a coded refusal naming what is in use, and nothing routed', async () => {
        const box1 = await watch('b1', tokens.box1 as string, 'news');
        const box2 = await watch('b2', tokens.box2 as string, 'sport');
        const refused = await stbOnce('b1', tokens.box1 as string, ['order', '--service', 'film', '--once']);
        assert.equal(refused.code, 2, refused.output);
        assert.match(refused.output, /409 capacity-full: .*8000000 of 10000000 bit\/s in use/);
        assert.ok(!routed(film));
        await silent('b1', film);
        await flows('b1', news);
        await flows('b2', sport);
        assert.equal(await box1.stop(), 0);
        assert.equal(await box2.stop(), 0);
        await until('no route', () => !routed(news) && !routed(sport));
      });

      it(
        kind === 'smcroute'
          ? 'smcrouted killed and restarted: routes restored from the store; a route removed behind its back: put back'
          : 'the table deleted behind its back, and a route removed from it: both put back',
        async () => {
          const box1 = await watch('b1', tokens.box1 as string, 'news');
          await flows('b1', news);
          if (kind === 'smcroute') {
            await smcrouted?.stop('SIGKILL');
            smcrouted = bed.startSmcrouted();
          } else {
            bed.run('or', 'nft', ['delete', 'table', 'netdev', nftTable]);
          }
          await until('news routed again', () => {
            try {
              return routed(news);
            } catch {
              return false;
            }
          });
          await flows('b1', news);
          if (kind === 'smcroute') {
            bed.run('or', 'smcroutectl', ['-u', bed.smcrouteSocket, 'remove', 'eth0', source, news]);
          } else {
            bed.run('or', 'nft', ['delete', 'element', 'netdev', nftTable, 'sg4', `{ ${source} . ${news} }`]);
          }
          await until('news routed again after its removal', () => routed(news));
          await flows('b1', news);
          assert.equal(await box1.stop(), 0);
          await until('no route', () => !routed(news));
        },
      );

      it('pre-emption policy: the lowest priority channel is dropped for a higher one', async () => {
        admin('orders', 'link', 'sat', '--capacity', '10M', '--router', routerArg(), '--policy', 'preempt');
        const box1 = await watch('b1', tokens.box1 as string, 'news');
        const box2 = await watch('b2', tokens.box2 as string, 'sport');
        const filmBox = await watch('b1', tokens.box1 as string, 'film');
        await until('film routed and news dropped', () => routed(film) && !routed(news));
        assert.ok(routed(sport));
        await flows('b1', film);
        await silent('b1', news);
        const orders = JSON.parse(
          admin('orders', 'list', '--service', 'news', '--state', 'preempted'),
        ) as unknown[];
        assert.equal(orders.length, 1);
        for (const box of [box1, box2, filmBox]) {
          await box.stop();
        }
        await until('no route', () => !routed(film) && !routed(sport));
      });

      it('an unentitled box is refused; an expired lease takes the route away', async () => {
        const refused = await stbOnce('b2', tokens.stranger as string, [
          'order',
          '--service',
          'news',
          '--once',
        ]);
        assert.equal(refused.code, 2);
        assert.match(refused.output, /403 not-entitled/);
        assert.ok(!routed(news));
        const box = await watch('b2', tokens.box2 as string, 'news');
        await flows('b2', news);
        await box.stop('SIGKILL'); // the box dies: no cancel, no renewal
        await until(
          'the lease to run out and the route to go',
          () => !routed(news),
          (leaseSeconds + 10) * 1000,
        );
        await silent('b2', news);
        const expired = JSON.parse(
          admin('orders', 'list', '--service', 'news', '--state', 'expired'),
        ) as unknown[];
        assert.equal(expired.length, 1);
      });
    },
  );
}
