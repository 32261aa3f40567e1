import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  createOrderBed,
  type OrderBed,
  orderAdmin,
  startOrderServer,
  watchOrder,
} from '../helpers/order-bed.js';
import { gatecastBin, testbedSkip } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

/** Polls until check holds (bounded), naming what was awaited when it does not. */
const until = (what: string, check: () => boolean, timeoutMs = 60_000) => waitUntil(what, check, timeoutMs);

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

// The channels arrive at the router on these groups; the relay puts them on the link on others.
const news = '239.231.0.1';
const film = '239.231.0.3';
const newsOnLink = '239.231.1.1';
const filmOnLink = '239.231.1.3';
const source = '10.231.1.10';
const operatorToken = 'gct_order_relay_e2e_operator_token_0123';

describe(
  'ordering over a one-way link with no router: the order server relays the channel (namespaces, nftables)',
  testbedSkip(),
  () => {
    let bed: OrderBed;
    let boxToken = '';
    const node = process.execPath;
    const gatecast = (host: 'os' | 'or' | 'b1' | 'b2', args: string[]) =>
      bed.start(host, node, [gatecastBin(), ...args]);
    const admin = (...args: string[]) => orderAdmin(bed)(...args);
    /** Starts the box ordering a service and renewing, and waits until it has ordered. */
    const watch = (service: string) => watchOrder(bed, 'b1', boxToken, service);
    /** Checks that the router keeps receiving group while nothing of relayed reaches the box. */
    const silent = async (group: string, relayed: string) => {
      const atBox = bed.arrived('b1', relayed);
      const atRouter = bed.arrived('or', group);
      await until(`50 datagrams of ${group} at the router`, () => bed.arrived('or', group) >= atRouter + 50);
      assert.equal(bed.arrived('b1', relayed), atBox, `${relayed} reached the box without an order`);
    };

    before(async () => {
      bed = createOrderBed([news, film, newsOnLink, filmOnLink]);
      await startOrderServer(bed, { operatorToken });
      // No router: the order server joins on eth0 (10.231.1.1) and sends on the link's eth1 (10.231.2.1).
      admin('orders', 'link', 'sat', '--capacity', '10M', '--router', 'relay:10.231.1.1:10.231.2.1');
      for (const [name, group, relayTo] of [
        ['news', news, newsOnLink],
        ['film', film, filmOnLink],
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
          '--relay-to',
          `${relayTo}:5000`,
          '--rate',
          '4M',
        );
      }
      const created = JSON.parse(admin('subscriber', 'add', 'box1')) as { id: string; token: string };
      boxToken = created.token;
      admin('grant', created.id, 'channel');
      gatecast('os', [
        'send',
        '--group',
        `${news}:5000`,
        '--iface',
        'eth0',
        '--ticker',
        '--ticks',
        '10000000',
        '--ticks-per-second',
        '200',
      ]);
    });

    after(() => {
      bed?.down();
    });

    it('relays nothing before an order', async () => {
      await silent(news, newsOnLink);
      assert.equal(bed.arrived('b1', news), 0, 'the router forwarded the original group itself');
    });

    it('order: the channel is relayed group to group onto the link; cancel: it stops', async () => {
      const box = await watch('news');
      const start = bed.arrived('b1', newsOnLink);
      await until(
        `50 datagrams of ${newsOnLink} at the box`,
        () => bed.arrived('b1', newsOnLink) >= start + 50,
      );
      assert.equal(bed.arrived('b1', news), 0, 'the original group crossed the link');
      assert.equal(await box.stop(), 0, box.output());
      assert.match(box.output(), /cancelled order/);
      // The relay closes its sockets on the reconcile that follows the cancel: wait (bounded) for a
      // stretch of 20 datagrams at the router with none at the box, then check it stays so.
      let atBox = bed.arrived('b1', newsOnLink);
      let atRouter = bed.arrived('or', news);
      await until('the relay to stop', () => {
        if (bed.arrived('or', news) < atRouter + 20) {
          return false;
        }
        const now = bed.arrived('b1', newsOnLink);
        const stopped = now === atBox;
        atBox = now;
        atRouter = bed.arrived('or', news);
        return stopped;
      });
      await silent(news, newsOnLink);
    });

    it('a file sent on the ordered channel arrives over the relay with its bytes intact (SHA-256)', async () => {
      const payload = randomBytes(3 * 1024 * 1024);
      const input = join(bed.directory, 'film.bin');
      const output = join(bed.directory, 'film-received.bin');
      writeFileSync(input, payload);
      const box = await watch('film');
      const receiver = gatecast('b1', [
        'receive',
        '--group',
        `${filmOnLink}:5000`,
        '--iface',
        'eth0',
        '--out',
        output,
        '--timeout',
        '15',
      ]);
      await receiver.waitFor(/joined/);
      const sender = gatecast('os', [
        'send',
        '--group',
        `${film}:5000`,
        '--iface',
        'eth0',
        '--file',
        input,
        '--rate',
        '8M',
      ]);
      assert.equal(await sender.finished, 0, sender.output());
      assert.equal(await receiver.finished, 0, receiver.output());
      assert.match(receiver.output(), /whole: .*SHA-256 ok/);
      assert.equal(sha256(readFileSync(output)), sha256(payload));
      assert.equal(bed.arrived('b1', film), 0, 'the original group crossed the link');
      assert.equal(await box.stop(), 0, box.output());
    });
  },
);
