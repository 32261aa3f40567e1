/**
 * The operator's console in a real Chromium (Debian `chromium`, driven by playwright-core): a real
 * `gatecast serve` watches the status endpoints of a retransmit server and of a repair server whose
 * S1 loses one packet in twenty (in-process loss: no root needed), fed by a real `gatecast send
 * --ticker`. The page signs in with the operator token, shows the session and the repair server,
 * its loss graph moves (loss before repair above zero, after repair zero), and a grant and a
 * revoke made on the page are what the API then answers. Screenshots of each page are written
 * (to docs/console/ with GATECAST_UPDATE_SCREENSHOTS=1, else to a temporary folder).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { controlKey } from '../../src/crypto/control-auth.js';
import { parseGroup } from '../../src/net/address.js';
import { serveStatus } from '../../src/net/status-http.js';
import { lossyS1Socket, startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { startServe } from '../helpers/serve.js';
import { gatecastBin, repoRoot } from '../helpers/testbed.js';

/** The page's document, as the functions run in Chromium see it (the tests compile without the DOM library). */
declare const document: {
  querySelector(
    selector: string,
  ): { getAttribute(name: string): string | null; textContent: string | null } | null;
  getElementById(id: string): { textContent: string | null } | null;
};

const chromiumPath = '/usr/bin/chromium';
const operator = 'operator-token-for-the-console-test-0001';

function chromiumSkip(): string | undefined {
  if (existsSync(chromiumPath)) {
    return undefined;
  }
  const reason = `needs ${chromiumPath} (Debian package chromium)`;
  if (process.env.GATECAST_REQUIRE_PACKAGES === '1') {
    throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but the console test cannot run: ${reason}`);
  }
  return reason;
}

describe('the console in Chromium', { skip: chromiumSkip() }, () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-console-'));
  const closers: Array<() => Promise<unknown>> = [];
  after(async () => {
    for (const close of closers.reverse()) {
      await close().catch(() => undefined);
    }
    rmSync(directory, { recursive: true, force: true });
  });

  it('shows the live session and its loss graph; a grant, a revoke and an order cancelled on the page take effect', async () => {
    const key = controlKey(Buffer.alloc(32, 7));
    const octet = 1 + (process.pid % 250);
    const s1 = parseGroup(`239.79.${octet}.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.79.${octet}.2:${freshPort()}`, 's2');
    const loopback = { address: '127.0.0.1', port: 0, family: 4 } as const;
    const retransmit = await startRetransmitServer({
      joins: [{ group: s1 }],
      iface: loopbackIface,
      listen: loopback,
      keys: [key],
      bufferBytesMax: 16 * 1024 * 1024,
      bufferAgeMs: 60_000,
      repairRateBitsPerSecond: 100_000_000,
      announceTo: [],
      peers: [],
    });
    closers.push(() => retransmit.close());
    const repair = await startRepairServer(
      {
        group: s1,
        iface: loopbackIface,
        listen: loopback,
        keys: [key],
        retransmit: [retransmit.local],
        emit: s2,
        // reliable: on a loaded host a latency budget may rightly give packets up, and the page must show 0 after repair
        latencyMs: undefined,
      },
      { openS1Socket: lossyS1Socket((sequence) => sequence % 20 === 7) },
    );
    closers.push(() => repair.close());
    const retransmitStatus = await serveStatus(loopback, () => retransmit.status());
    closers.push(() => retransmitStatus.close());
    const repairStatus = await serveStatus(loopback, () => repair.status());
    closers.push(() => repairStatus.close());

    const serve = await startServe(
      [
        '--db',
        `sqlite:${join(directory, 'console.db')}`,
        '--roles',
        'subscription,billing,order',
        '--watch',
        `rt1=http://127.0.0.1:${retransmitStatus.port}/status,repair1=http://127.0.0.1:${repairStatus.port}/status`,
      ],
      { GATECAST_OPERATOR_TOKEN: operator },
    );
    closers.push(() => serve.stop());
    const call = async <T = Record<string, string>>(
      method: string,
      path: string,
      body?: object,
      token = operator,
    ): Promise<{ status: number; body: T }> => {
      const response = await fetch(`${serve.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await response.text();
      return {
        status: response.status,
        body: JSON.parse(text === '' ? 'null' : text) as T,
      };
    };
    const news = (await call('POST', '/v1/sources', { name: 'news' })).body;
    await call('POST', '/v1/sessions', {
      name: 'news-ticker',
      group: `${s1.address}:${s1.port}`,
      owner: news.id,
    });
    await call('POST', '/v1/servers', {
      kind: 'retransmit',
      name: 'rt1',
      address: `127.0.0.1:${retransmit.local.port}`,
    });
    const alice = (await call('POST', '/v1/subscribers', { name: 'alice' })).body;
    const bob = (await call('POST', '/v1/subscribers', { name: 'bob' })).body;
    await call('POST', '/v1/entitlements', { subscriber: alice.id, service: 'repair' });
    const charged = await fetch(`${serve.url}/v1/usage`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${operator}`,
        'content-type': 'application/json',
        'idempotency-key': 'console-test-1',
      },
      body: JSON.stringify({ account: alice.id, kind: 'repair-bytes', quantity: 3_000_000_000 }),
    });
    assert.equal(charged.status, 201);

    const send: ChildProcess = spawn(
      process.execPath,
      [
        gatecastBin(),
        'send',
        '--group',
        `${s1.address}:${s1.port}`,
        '--iface',
        loopbackIface,
        '--ticker',
        '--ticks-per-second',
        '100',
      ],
      { stdio: 'ignore' },
    );
    const sendExited = new Promise((resolve) => send.once('exit', resolve));
    closers.push(async () => {
      send.kill('SIGTERM');
      await sendExited;
    });

    const browser = await chromium.launch({
      executablePath: chromiumPath,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    closers.push(() => browser.close());
    const page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
    const shots =
      process.env.GATECAST_UPDATE_SCREENSHOTS === '1'
        ? join(repoRoot, 'docs', 'console')
        : join(directory, 'shots');
    mkdirSync(shots, { recursive: true });
    const shoot = async (name: string) => {
      const path = join(shots, `${name}.png`);
      await page.screenshot({ path, fullPage: true });
      const png = readFileSync(path);
      assert.equal(png.subarray(1, 4).toString(), 'PNG');
      assert.ok(png.length > 10_000, `${name}.png is ${png.length} bytes`);
    };

    await page.goto(`${serve.url}/console/`);
    await page.fill('#token', 'not-the-operator-token');
    await page.click('#login-form button');
    await page.waitForFunction(() =>
      document.getElementById('login-error')?.textContent?.includes('refused'),
    );
    await page.fill('#token', operator);
    await page.click('#login-form button');
    await page.waitForSelector('#sessions:not([hidden]) .card.receiver[data-endpoint="repair1"]', {
      timeout: 30_000,
    });
    assert.match((await page.textContent('#session-table')) ?? '', /news-ticker/);

    // The loss graph moves: points are added, and loss before repair shows while after stays 0.
    const graph = '#sessions canvas.loss-graph[data-endpoint="repair1"]';
    const pointsAt = async () => Number(await page.getAttribute(graph, 'data-points'));
    await page.waitForFunction(
      (selector) => Number(document.querySelector(selector)?.getAttribute('data-points')) >= 2,
      graph,
      { timeout: 30_000 },
    );
    const firstPoints = await pointsAt();
    await page.waitForFunction(
      ({ selector, first }) => {
        const canvas = document.querySelector(selector);
        const last = JSON.parse(canvas?.getAttribute('data-last') ?? '[]') as Array<number | null>;
        return (
          Number(canvas?.getAttribute('data-points')) >= first + 6 && (last[0] ?? 0) > 0 && last[1] === 0
        );
      },
      { selector: graph, first: firstPoints },
      { timeout: 40_000 },
    );
    const repaired = repair.status();
    assert.ok(repaired.recovered > 0, 'the repair server recovered what S1 lost');
    assert.equal(repaired.unrecoverable, 0);
    await shoot('sessions');

    await page.click('nav a[href="#retransmit"]');
    await page.waitForSelector('#retransmit:not([hidden]) .card[data-endpoint="rt1"]');
    assert.match((await page.textContent('#retransmit-cards')) ?? '', /listening/);
    await shoot('retransmit');

    await page.click('nav a[href="#repair"]');
    await page.waitForSelector('#repair:not([hidden]) .card[data-endpoint="repair1"]');
    assert.match((await page.textContent('#repair-cards')) ?? '', /127\.0\.0\.1/);
    await shoot('repair');

    // An operator action on the page: grant bob a channel at 4.99 a month, then revoke his token.
    await page.click('nav a[href="#subscribers"]');
    await page.selectOption('#grant-subscriber', String(bob.id));
    await page.selectOption('#grant-service', 'channel');
    await page.fill('#grant-monthly', '499');
    await page.click('#grant-form button');
    await page.waitForSelector(`#subscriber-table tr[data-id="${bob.id}"] .entitlement`, { timeout: 15_000 });
    const grants = (
      await call<Array<{ service: string; monthly: number }>>('GET', `/v1/entitlements?subscriber=${bob.id}`)
    ).body as Array<{
      service: string;
      monthly: number;
    }>;
    assert.deepEqual(
      grants.map((grant) => [grant.service, grant.monthly]),
      [['channel', 499]],
    );
    assert.equal((await call('GET', '/v1/whoami', undefined, bob.token)).status, 200);
    await page.click(`#subscriber-table tr[data-id="${bob.id}"] button.revoke`);
    await page.waitForFunction(
      (id) =>
        document.querySelector(`#subscriber-table tr[data-id="${id}"]`)?.textContent?.includes('revoked'),
      bob.id,
      { timeout: 15_000 },
    );
    assert.equal((await call('GET', '/v1/whoami', undefined, bob.token)).status, 401);
    await shoot('subscribers');

    await page.click('nav a[href="#ledger"]');
    await page.waitForSelector('#ledger:not([hidden]) #transfer-table tbody tr[data-id]');
    assert.match((await page.textContent('#account-table')) ?? '', /alice/);
    await shoot('ledger');

    // The orders page: a relay link with two channels, ordered by two boxes (one channel by both);
    // the operator cancels one order on the page and it goes, the channel's refcount drops.
    const link = `link-${octet}`;
    const linkPut = await call('PUT', `/v1/order/links/${link}`, {
      capacity: 20_000_000,
      router: { kind: 'relay', inbound: loopbackIface, outbound: loopbackIface },
    });
    assert.equal(linkPut.status, 200, JSON.stringify(linkPut.body));
    for (const [name, index, bitRate] of [
      ['sports', 3, 6_000_000],
      ['movies', 5, 4_000_000],
    ] as const) {
      const put = await call('PUT', `/v1/order/services/${name}`, {
        link,
        group: `239.79.${octet}.${index}:${freshPort()}`,
        bitRate,
        price: 'per-order',
        relayTo: `239.79.${octet}.${index + 1}:${freshPort()}`,
      });
      assert.equal(put.status, 200, JSON.stringify(put.body));
    }
    const carol = (await call('POST', '/v1/subscribers', { name: 'carol' })).body;
    const dave = (await call('POST', '/v1/subscribers', { name: 'dave' })).body;
    const ordered: Record<string, string> = {};
    for (const [box, service] of [
      [carol, 'sports'],
      [dave, 'sports'],
      [dave, 'movies'],
    ] as const) {
      await call('POST', '/v1/entitlements', { subscriber: box.id, service: 'channel' });
      const order = await call('POST', '/v1/order/orders', { service }, box.token);
      assert.equal(order.status, 201, JSON.stringify(order.body));
      ordered[`${box.name}/${service}`] = order.body.id ?? '';
    }
    const carolSports = ordered['carol/sports'] ?? '';
    await page.click('nav a[href="#orders"]');
    await page.waitForSelector(`#orders:not([hidden]) #order-table tr[data-id="${carolSports}"]`, {
      timeout: 15_000,
    });
    assert.match(
      (await page.textContent(`#link-cards .card[data-id="${link}"]`)) ?? '',
      /10\.0 Mbit\/s\s*in use\s*20\.0 Mbit\/s\s*capacity\s*50 %/,
    );
    assert.match(
      (await page.textContent('#order-service-table tr[data-id="sports"]')) ?? '',
      /6\.0 Mbit\/s.*2\s*routed since/,
    );
    assert.match((await page.textContent('#order-table')) ?? '', /carol[\s\S]*dave[\s\S]*dave/);
    await shoot('orders');
    await page.click(`#order-table tr[data-id="${carolSports}"] button.cancel`);
    await page.waitForFunction(
      (id) => document.querySelector(`#order-table tr[data-id="${id}"]`) === null,
      carolSports,
      { timeout: 15_000 },
    );
    assert.match((await page.textContent('#order-result')) ?? '', /Cancelled order .* of carol \(sports\)/);
    assert.match(
      (await page.textContent('#order-service-table tr[data-id="sports"]')) ?? '',
      /6\.0 Mbit\/s.*1\s*routed since/,
    );
    const cancelled = (await call<Array<{ id: string; state: string }>>('GET', '/v1/order/orders?state=all'))
      .body;
    assert.deepEqual(
      cancelled.map((order) => [order.id, order.state]).sort(),
      [
        [carolSports, 'cancelled'],
        [ordered['dave/sports'], 'active'],
        [ordered['dave/movies'], 'active'],
      ].sort(),
    );

    // The settings page shows each role's schema: the defaults the command line and gatecast.yaml use.
    await page.click('nav a[href="#settings"]');
    await page.waitForSelector(
      '#settings:not([hidden]) table[data-role="retransmit"] tr[data-id="buffer-age"]',
    );
    const bufferAge = await page.textContent('table[data-role="retransmit"] tr[data-id="buffer-age"]');
    assert.match(bufferAge ?? '', /SECONDS\s*60\s*oldest packet kept/);
    assert.match((await page.textContent('table[data-role="serve"]')) ?? '', /sqlite:\.\/data\/gatecast\.db/);
    await shoot('settings');
  });
});
