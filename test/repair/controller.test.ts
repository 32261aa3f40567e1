import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp as buildSubscriptionApp } from '../../src/cli/server-app.js';
import { answerTag, verifyAnswerTag } from '../../src/crypto/answer-auth.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import type { S2Key } from '../../src/crypto/s2-seal.js';
import { parseGroup } from '../../src/net/address.js';
import { answerFields } from '../../src/protocol/controller.js';
import { controllerClient } from '../../src/receiver/controller-client.js';
import type { RepairController } from '../../src/repair/controller.js';
import { startRepairController } from '../../src/repair/controller.js';
import type { RepairServer, RepairSettings, RepairStatus } from '../../src/repair/repair.js';
import { startRepairServer } from '../../src/repair/repair.js';
import { openStore, type Store } from '../../src/store/database.js';
import { createLedger } from '../../src/store/ledger.js';
import { freePort } from '../helpers/serve.js';

const operatorToken = 'operator-token-for-controller-tests-01';

/** A repair module stand-in whose counters the test moves; the controller is what is tested here. */
function fakeModules() {
  const started: Array<{
    settings: RepairSettings;
    counters: { recovered: number; recoveredBytes: number };
    closed: boolean;
    keys: S2Key[];
  }> = [];
  const start = async (settings: RepairSettings): Promise<RepairServer> => {
    const entry = {
      settings,
      counters: { recovered: 0, recoveredBytes: 0 },
      closed: false,
      keys: settings.s2Key === undefined ? [] : [settings.s2Key],
    };
    started.push(entry);
    const close = async () => {
      entry.closed = true;
    };
    return {
      local: settings.listen,
      status: () => ({ ...entry.counters }) as unknown as RepairStatus,
      rotateS2Key: (key) => entry.keys.push({ epoch: key.epoch, key: Buffer.from(key.key) }),
      close,
      [Symbol.asyncDispose]: close,
    };
  };
  return { started, start };
}

describe('repair controller (flow A) against a real subscription server on loopback', () => {
  let store: Store;
  let app: FastifyInstance;
  let port: number;
  let controller: RepairController;
  const modules = fakeModules();
  const tokens: Record<string, { id: string; token: string }> = {};
  const s1 = parseGroup('239.40.0.1:5000', 's1');

  const listen = async (at = 0) => {
    app = await buildSubscriptionApp({ store, operatorToken });
    await app.listen({ host: '127.0.0.1', port: at });
    const address = app.server.address();
    port = typeof address === 'object' && address !== null ? address.port : 0;
  };
  /** A controller on loopback against this suite's subscription server, with fake modules. */
  const startController = (settings: Partial<Parameters<typeof startRepairController>[0]>) =>
    startRepairController({
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      subscription: `http://127.0.0.1:${port}`,
      token: operatorToken,
      pool: parseGroup('239.41.0.1:6000', 'pool'),
      poolSize: 2,
      leaseMs: 60_000,
      reportIntervalMs: 3_600_000,
      idleMs: 0,
      startModule: modules.start,
      module: {
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [],
        retransmit: [],
        latencyMs: undefined,
      },
      ...settings,
    });
  const balance = async (id: string) =>
    (
      (
        await app.inject({
          method: 'GET',
          url: `/v1/accounts/${id}/balance`,
          headers: { authorization: `Bearer ${operatorToken}` },
        })
      ).json() as { balance: number }
    ).balance;

  before(async () => {
    store = await openStore('sqlite::memory:');
    await listen();
    for (const name of ['alice', 'bob']) {
      const response = await app.inject({
        method: 'POST',
        url: '/v1/subscribers',
        headers: { authorization: `Bearer ${operatorToken}` },
        payload: { name },
      });
      tokens[name] = response.json() as { id: string; token: string };
    }
    await app.inject({
      method: 'POST',
      url: '/v1/entitlements',
      headers: { authorization: `Bearer ${operatorToken}` },
      payload: { subscriber: tokens.alice?.id, service: 'repair' },
    });
    // Grants are only for S1 sessions a source registered (and left open).
    const source = (
      await app.inject({
        method: 'POST',
        url: '/v1/sources',
        headers: { authorization: `Bearer ${operatorToken}` },
        payload: { name: 'radio' },
      })
    ).json() as { id: string };
    for (const group of ['239.40.0.1:5000', '239.40.0.2:5000', '239.40.0.3:5000', '239.40.0.8:5000']) {
      await app.inject({
        method: 'POST',
        url: '/v1/sessions',
        headers: { authorization: `Bearer ${operatorToken}` },
        payload: { name: group, group, owner: source.id },
      });
    }
    controller = await startController({ pool: parseGroup('239.41.0.1:6000', 'pool'), poolSize: 2 });
  });
  after(async () => {
    await controller?.close();
    await app?.close();
    await store?.close();
  });

  it('grants an entitled subscriber a fresh S2 from the pool, tagged under its token; the same S1 reuses the module', async () => {
    const alice = controllerClient(controller.url, tokens.alice?.token ?? '');
    const first = await alice.resolve(s1);
    const moduleKey = modules.started[0]?.settings.s2Key;
    assert.ok(moduleKey !== undefined, 'the module seals S2 under a key the controller made');
    assert.equal(moduleKey.epoch, 1);
    assert.deepEqual(first, {
      granted: true,
      s2: parseGroup('239.41.0.1:6000', 's2'),
      leaseMs: 60_000,
      key: { epoch: 1, key: moduleKey.key },
    });
    const again = await alice.resolve(s1);
    assert.deepEqual(again, first, 'a renewal returns the same S2');
    assert.equal(modules.started.length, 1);
    assert.equal(modules.started[0]?.settings.group.address, '239.40.0.1');
    const other = await alice.resolve(parseGroup('239.40.0.2:5000', 's1'));
    assert.equal(other.granted && other.s2.address, '239.41.0.2', 'a second S1 gets the next group');
    const third = await alice.resolve(parseGroup('239.40.0.3:5000', 's1'));
    assert.deepEqual(third, { granted: false, reason: '503 the S2 pool is exhausted' });
  });

  it('refuses an unentitled subscriber and an unknown token, clearly; nothing is started for them', async () => {
    const before = modules.started.length;
    const bob = await controllerClient(controller.url, tokens.bob?.token ?? '').resolve(s1);
    assert.deepEqual(bob, { granted: false, reason: '403 no repair entitlement' });
    const stranger = await controllerClient(controller.url, 'gct_not_a_token_anyone_holds').resolve(s1);
    assert.equal(stranger.granted, false);
    assert.match(stranger.granted ? '' : stranger.reason, /^401 /);
    assert.equal(modules.started.length, before);
    assert.equal(controller.status().refusals, 1);
  });

  it('bad requests are a 400 naming the field', async () => {
    for (const [body, message] of [
      [{}, /group/],
      [{ group: '10.1.1.1:5000' }, /body\/group.*multicast/],
      [{ group: '239.1.1.1:5000', colour: 'blue' }, /additional/],
      [{ group: 5 }, /group/],
      [{ group: 'x'.repeat(100) }, /group/],
    ] as const) {
      const response = await fetch(`${controller.url}/v1/repair`, {
        method: 'POST',
        headers: { authorization: `Bearer ${tokens.alice?.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      assert.equal(response.status, 400, JSON.stringify(body));
      assert.match(((await response.json()) as { message: string }).message, message);
    }
  });

  it('an answer tagged under another token, or altered, fails the check', () => {
    const grant = {
      session: '239.40.0.1:5000',
      s2: '239.41.0.1:6000',
      subscriber: 'x',
      leaseSeconds: 60,
      key: null,
    };
    const tag = answerTag('token-of-alice-000', answerFields(grant));
    assert.equal(verifyAnswerTag('token-of-alice-000', answerFields(grant), tag), true);
    assert.equal(verifyAnswerTag('token-of-mallory-0', answerFields(grant), tag), false);
    assert.equal(
      verifyAnswerTag('token-of-alice-000', answerFields({ ...grant, s2: '239.9.9.9:1' }), tag),
      false,
    );
  });

  it('reports repaired bytes as usage once; a report the server missed is kept and sent when it is back', async () => {
    const aliceId = tokens.alice?.id ?? '';
    const module = modules.started[0];
    assert.ok(module);
    module.counters.recovered = 1_000;
    module.counters.recoveredBytes = 2_000_000_000;
    await controller.flush();
    assert.equal(await balance(aliceId), -100, '2 GB repaired at 50 per GB');
    await controller.flush();
    assert.equal(await balance(aliceId), -100, 'nothing new, nothing charged');
    await app.close();
    module.counters.recoveredBytes += 1_000_000_000;
    await controller.flush();
    assert.equal(controller.status().reportsPending, 1, 'kept while the server is away');
    await listen(port);
    await controller.flush();
    assert.equal(controller.status().reportsPending, 0);
    assert.equal(await balance(aliceId), -150, 'the missed report charged once when the server came back');
    const events = await store.db
      .selectFrom('usage_events')
      .selectAll()
      .where('account', '=', aliceId)
      .execute();
    assert.deepEqual(
      events.map((event) => [event.kind, Number(event.quantity)]),
      [
        ['repair-bytes', 2_000_000_000],
        ['repair-bytes', 1_000_000_000],
      ],
    );
    assert.equal(Number(events[0]?.packets), 1_000, 'packets repaired are recorded beside the bytes');
  });

  it('a report the server refuses is counted (reportsRefused) and dropped, not taken for sent', async () => {
    const aliceId = tokens.alice?.id ?? '';
    const module = modules.started[0];
    assert.ok(module);
    // Alice's debits are taken next to the bound, so the next repair charge would pass it: a 422.
    const ledger = createLedger(store);
    await ledger.createAccount({
      id: 'refusal-sink',
      name: 'refusal-sink',
      kind: 'external',
      currency: 'EUR',
    });
    await ledger.transfer({
      idempotencyKey: 'refusal-fill',
      debit: aliceId,
      credit: 'refusal-sink',
      amount: Number.MAX_SAFE_INTEGER - 10_000,
      currency: 'EUR',
    });
    const sent = controller.status().reportsSent;
    const reported = controller.status().usageBytesReported;
    module.counters.recoveredBytes += 1_000_000_000_000; // 50,000 at 50 per GB
    await controller.flush();
    const status = controller.status();
    assert.equal(status.reportsPending, 0, 'a refusal is an answer: not sent again');
    assert.equal(status.reportsRefused, 1);
    assert.equal(status.reportsSent, sent, 'not counted as sent');
    assert.equal(status.usageBytesReported, reported);
  });

  it('a release detaches the subscriber; an idle module is closed', async () => {
    const alice = controllerClient(controller.url, tokens.alice?.token ?? '');
    await alice.release(s1);
    await alice.release(parseGroup('239.40.0.2:5000', 's1'));
    await controller.flush();
    assert.equal(controller.status().modules.length, 0);
    assert.ok(modules.started.every((module) => module.closed));
  });

  it('an entitlement for one session covers that session only; its usage names the session', async () => {
    const auth = { authorization: `Bearer ${operatorToken}` };
    const source = (
      await app.inject({ method: 'POST', url: '/v1/sources', headers: auth, payload: { name: 'news' } })
    ).json() as { id: string };
    const session = (
      await app.inject({
        method: 'POST',
        url: '/v1/sessions',
        headers: auth,
        payload: { name: 'news', group: '239.40.0.9:5000', owner: source.id },
      })
    ).json() as { id: string };
    await app.inject({
      method: 'POST',
      url: '/v1/entitlements',
      headers: auth,
      payload: { subscriber: tokens.bob?.id, service: 'repair', session: session.id },
    });
    const bob = controllerClient(controller.url, tokens.bob?.token ?? '');
    const granted = await bob.resolve(parseGroup('239.40.0.9:5000', 's1'));
    assert.equal(granted.granted, true, JSON.stringify(granted));
    const other = await bob.resolve(parseGroup('239.40.0.8:5000', 's1'));
    assert.deepEqual(other, { granted: false, reason: '403 no repair entitlement' });
    const module = modules.started.at(-1);
    assert.ok(module);
    module.counters.recovered = 10;
    module.counters.recoveredBytes = 14_000;
    await bob.release(parseGroup('239.40.0.9:5000', 's1'));
    await controller.flush();
    const event = await store.db
      .selectFrom('usage_events')
      .selectAll()
      .where('account', '=', tokens.bob?.id ?? '')
      .executeTakeFirstOrThrow();
    assert.equal(event.session, session.id);
    assert.equal(Number(event.quantity), 14_000);
  });

  it('requests for one S1 that arrive together start one module with one S2', async () => {
    const slow = fakeModules();
    const together = await startController({
      pool: parseGroup('239.43.0.1:6000', 'pool'),
      poolSize: 4,
      startModule: async (settings) => {
        await new Promise((resolve) => setTimeout(resolve, 50));
        return slow.start(settings);
      },
    });
    try {
      const alice = controllerClient(together.url, tokens.alice?.token ?? '');
      const grants = await Promise.all([alice.resolve(s1), alice.resolve(s1), alice.resolve(s1)]);
      assert.equal(slow.started.length, 1, 'one module');
      assert.deepEqual(
        grants.map((g) => (g.granted ? g.s2.address : g.reason)),
        ['239.43.0.1', '239.43.0.1', '239.43.0.1'],
      );
      const other = await alice.resolve(parseGroup('239.40.0.2:5000', 's1'));
      assert.equal(other.granted && other.s2.address, '239.43.0.2', 'the next S1 gets the next group');
    } finally {
      await together.close();
    }
  });

  it('a grant that ends rotates S2’s key: release, lapsed entitlement, lapsed lease; the one who stays gets each new key', async () => {
    const rotating = await startController({
      pool: parseGroup('239.44.0.1:6000', 'pool'),
      poolSize: 1,
      idleMs: 3_600_000,
    });
    try {
      // 239.40.0.9 is the session bob holds a repair entitlement for; alice's covers every session.
      const news = parseGroup('239.40.0.9:5000', 's1');
      const alice = controllerClient(rotating.url, tokens.alice?.token ?? '');
      const bob = controllerClient(rotating.url, tokens.bob?.token ?? '');
      const first = await alice.resolve(news);
      const bobFirst = await bob.resolve(news);
      const module = modules.started.at(-1);
      assert.ok(module && first.granted && bobFirst.granted);
      assert.deepEqual(bobFirst.key, first.key, 'both hold the current key');
      assert.equal(first.key?.epoch, 1);

      await bob.release(news); // bob leaves
      assert.equal(module.keys.length, 2, 'the module was given a new key');
      const second = await alice.resolve(news);
      assert.ok(second.granted);
      assert.equal(second.key?.epoch, 2);
      assert.deepEqual(second.key, module.keys[1], 'alice gets the key the module seals under now');
      assert.notDeepEqual(second.key?.key, first.key?.key);
      assert.equal(rotating.status().s2Rotations, 1);
      assert.equal(rotating.status().modules[0]?.s2KeyEpoch, 2);

      // bob comes back, then his entitlement is withdrawn: his next renewal is refused and rotates.
      const back = await bob.resolve(news);
      assert.equal(back.granted && back.key?.epoch, 2);
      const withdrawn = await store.db
        .deleteFrom('entitlements')
        .where('subscriber', '=', tokens.bob?.id ?? '')
        .returningAll()
        .execute();
      const refused = await bob.resolve(news);
      assert.deepEqual(refused, { granted: false, reason: '403 no repair entitlement' });
      assert.equal(module.keys.length, 3);
      const third = await alice.resolve(news);
      assert.equal(third.granted && third.key?.epoch, 3);
      assert.deepEqual(third.granted ? third.key : undefined, module.keys[2]);
      if (withdrawn.length > 0) {
        await store.db.insertInto('entitlements').values(withdrawn).execute();
      }
      // Keys the departed held are never given again: every epoch has its own random key.
      const seen = new Set(module.keys.map((key) => key.key.toString('hex')));
      assert.equal(seen.size, module.keys.length);
    } finally {
      await rotating.close();
    }
  });

  it('a grant that is not renewed lapses: the subscriber is detached and the idle module closed', async () => {
    const short = await startController({
      pool: parseGroup('239.42.0.1:6000', 'pool'),
      poolSize: 1,
      leaseMs: 200,
    });
    try {
      const granted = await controllerClient(short.url, tokens.alice?.token ?? '').resolve(s1);
      assert.equal(granted.granted, true);
      assert.equal(short.status().modules[0]?.subscribers, 1);
      await new Promise((resolve) => setTimeout(resolve, 300));
      await short.flush();
      assert.equal(short.status().s2Rotations, 1, 'the lapsed grant rotated S2’s key');
      assert.equal(modules.started.at(-1)?.keys.at(-1)?.epoch, 2);
      assert.equal(short.status().modules.length, 0);
      assert.equal(modules.started.at(-1)?.closed, true);
    } finally {
      await short.close();
    }
  });

  it('with a journal, a report still unsent when the controller stops is sent once by the next one', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-controller-'));
    const journal = join(directory, 'usage.journal');
    try {
      const aliceId = tokens.alice?.id ?? '';
      const opening = await balance(aliceId);
      const fakes = fakeModules();
      const first = await startController({
        pool: parseGroup('239.44.0.1:6000', 'pool'),
        journal,
        startModule: fakes.start,
      });
      assert.equal((await controllerClient(first.url, tokens.alice?.token ?? '').resolve(s1)).granted, true);
      const module = fakes.started[0];
      assert.ok(module);
      module.counters.recovered = 100;
      module.counters.recoveredBytes = 4_000_000_000;
      await app.close(); // the subscription server is away
      await first.close(); // the report cannot be sent: it stays in the journal
      await listen(port);
      const second = await startController({ pool: parseGroup('239.44.0.1:6000', 'pool'), journal });
      try {
        assert.equal(second.status().reportsPending, 1, 'the next controller finds it');
        await second.flush();
        await second.flush();
        assert.equal(await balance(aliceId), opening - 200, '4 GB at 50 per GB, charged once');
      } finally {
        await second.close();
      }
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});

describe('repair controller under hostile input', () => {
  let store: Store;
  let app: FastifyInstance;
  let port: number;
  const auth = { authorization: `Bearer ${operatorToken}` };
  let alice: { id: string; token: string };
  const groups = ['239.50.0.1:5000', '239.50.0.2:5000', '239.50.0.3:5000'];

  const controllerWith = (settings: Partial<Parameters<typeof startRepairController>[0]>) =>
    startRepairController({
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      subscription: `http://127.0.0.1:${port}`,
      token: operatorToken,
      pool: parseGroup('239.51.0.1:6000', 'pool'),
      poolSize: 8,
      leaseMs: 60_000,
      reportIntervalMs: 3_600_000,
      idleMs: 0,
      startModule: fakeModules().start,
      module: {
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [],
        retransmit: [],
        latencyMs: undefined,
      },
      ...settings,
    });
  const post = (url: string, token: string, body: unknown) =>
    fetch(`${url}/v1/repair`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  before(async () => {
    store = await openStore('sqlite::memory:');
    app = await buildSubscriptionApp({ store, operatorToken });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const address = app.server.address();
    port = typeof address === 'object' && address !== null ? address.port : 0;
    alice = (
      await app.inject({ method: 'POST', url: '/v1/subscribers', headers: auth, payload: { name: 'alice' } })
    ).json() as { id: string; token: string };
    await app.inject({
      method: 'POST',
      url: '/v1/entitlements',
      headers: auth,
      payload: { subscriber: alice.id, service: 'repair' },
    });
    const source = (
      await app.inject({ method: 'POST', url: '/v1/sources', headers: auth, payload: { name: 'tv' } })
    ).json() as { id: string };
    for (const group of groups) {
      await app.inject({
        method: 'POST',
        url: '/v1/sessions',
        headers: auth,
        payload: { name: group, group, owner: source.id },
      });
    }
  });
  after(async () => {
    await app?.close();
    await store?.close();
  });

  it('a source that is not an IP address is a 400 naming body/source; nothing starts and later grants work', async () => {
    const fakes = fakeModules();
    const controller = await controllerWith({ startModule: fakes.start });
    try {
      for (const source of ['example.com', '239.50.0.1', '::1', '10.0.0.1; rm -rf /']) {
        const response = await post(controller.url, alice.token, { group: groups[0], source });
        const body = (await response.json()) as { error: string; message: string };
        assert.equal(response.status, 400, source);
        assert.equal(body.error, 'invalid-request');
        assert.match(body.message, /body\/source/);
      }
      assert.equal(fakes.started.filter((m) => m.settings.source === 'example.com').length, 0);
      const granted = await controllerClient(controller.url, alice.token).resolve(
        parseGroup(groups[1] ?? '', 's1'),
      );
      assert.equal(granted.granted, true, JSON.stringify(granted));
    } finally {
      await controller.close();
    }
  });

  it("S1's sender is the registered session's: a subscriber naming another source is a 409 and the module joins the registered one", async () => {
    const group = '239.50.0.7:5000';
    const source = (
      await app.inject({ method: 'POST', url: '/v1/sources', headers: auth, payload: { name: 'ssm' } })
    ).json() as { id: string };
    const registered = await app.inject({
      method: 'POST',
      url: '/v1/sessions',
      headers: auth,
      payload: { name: group, group, owner: source.id, source: '10.0.0.1' },
    });
    assert.equal(registered.statusCode, 201, registered.body);
    const fakes = fakeModules();
    const controller = await controllerWith({ startModule: fakes.start });
    try {
      const hijack = await post(controller.url, alice.token, { group, source: '10.6.6.6' });
      const body = (await hijack.json()) as { error: string; message: string };
      assert.equal(hijack.status, 409, JSON.stringify(body));
      assert.equal(body.error, 'conflict');
      assert.match(
        body.message,
        /body\/source: 239\.50\.0\.7:5000 is registered with source 10\.0\.0\.1, not 10\.6\.6\.6/,
      );
      assert.equal(fakes.started.length, 0, 'no module joined the other source');
      const granted = await post(controller.url, alice.token, { group });
      assert.equal(granted.status, 200, await granted.clone().text());
      assert.deepEqual(
        fakes.started.map((module) => module.settings.source),
        ['10.0.0.1'],
        'the module joins the registered source, named or not by the asker',
      );
      const same = await post(controller.url, alice.token, { group, source: '10.0.0.1' });
      assert.equal(same.status, 200, 'naming the registered source is a renewal');
    } finally {
      await controller.close();
    }
  });

  it("without a registered source, the running module's source holds: another one is a 409, not a grant of a different stream", async () => {
    const fakes = fakeModules();
    const controller = await controllerWith({ startModule: fakes.start });
    try {
      const first = await post(controller.url, alice.token, { group: groups[2], source: '10.0.0.5' });
      assert.equal(first.status, 200, await first.clone().text());
      const other = await post(controller.url, alice.token, { group: groups[2], source: '10.0.0.6' });
      assert.equal(other.status, 409, await other.clone().text());
      assert.equal(fakes.started.length, 1);
      const any = await post(controller.url, alice.token, { group: groups[2] });
      assert.equal(any.status, 200, 'asking without a source takes the running module');
    } finally {
      await controller.close();
    }
  });

  it('a module that fails to start is a 503 with the reason; its S2 and port are free for the next grant', async () => {
    let failures = 1;
    const fakes = fakeModules();
    const controller = await controllerWith({
      startModule: async (settings) => {
        if (failures-- > 0) {
          throw new Error('EINVAL');
        }
        return fakes.start(settings);
      },
    });
    try {
      const client = controllerClient(controller.url, alice.token);
      const s1 = parseGroup(groups[0] ?? '', 's1');
      const failed = await client.resolve(s1);
      assert.deepEqual(failed, {
        granted: false,
        reason: '503 the repair module for 239.50.0.1:5000 could not start: EINVAL',
      });
      const next = await client.resolve(s1);
      assert.equal(next.granted && next.s2.address, '239.51.0.1', 'the same S2 is handed out again');
    } finally {
      await controller.close();
    }
  });

  it('a repair module whose S1 join fails closes the sockets it opened (its port can be bound again)', async () => {
    const listenPort = await freePort();
    const settings = {
      group: parseGroup('239.50.9.1:5000', 's1'),
      source: 'example.com',
      iface: '127.0.0.1',
      listen: { address: '127.0.0.1', port: listenPort, family: 4 as const },
      keys: [controlKey(Buffer.alloc(32, 7))],
      retransmit: [],
      emit: parseGroup('239.50.9.2:6000', 's2'),
      latencyMs: undefined,
    } satisfies RepairSettings;
    await assert.rejects(startRepairServer(settings));
    const again = await startRepairServer({ ...settings, source: undefined });
    await again.close();
  });

  it('refuses groups nobody registered (404) and caps the grants one subscriber holds (429); nothing starts for them', async () => {
    const fakes = fakeModules();
    const controller = await controllerWith({ startModule: fakes.start, grantsPerSubscriberMax: 2 });
    try {
      const client = controllerClient(controller.url, alice.token);
      const unregistered = await client.resolve(parseGroup('239.50.0.99:5000', 's1'));
      assert.deepEqual(unregistered, {
        granted: false,
        reason: '404 no open session is registered for 239.50.0.99:5000',
      });
      assert.equal(fakes.started.length, 0);
      for (const group of groups.slice(0, 2)) {
        assert.equal((await client.resolve(parseGroup(group, 's1'))).granted, true);
      }
      const renewal = await client.resolve(parseGroup(groups[0] ?? '', 's1'));
      assert.equal(renewal.granted, true, 'renewing a held grant is not a new one');
      const third = await client.resolve(parseGroup(groups[2] ?? '', 's1'));
      assert.deepEqual(third, {
        granted: false,
        reason: '429 a subscriber holds at most 2 grants at once; release one first',
      });
      assert.equal(fakes.started.length, 2);
      await client.release(parseGroup(groups[0] ?? '', 's1'));
      assert.equal((await client.resolve(parseGroup(groups[2] ?? '', 's1'))).granted, true);
    } finally {
      await controller.close();
    }
  });

  it('every error answer carries a documented code (empty JSON DELETE, malformed JSON, unknown route)', async () => {
    const controller = await controllerWith({});
    try {
      const cases: Array<[string, RequestInit, number]> = [
        ['/v1/repair', { method: 'DELETE', headers: { 'content-type': 'application/json' } }, 400],
        [
          '/v1/repair',
          { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"group":' },
          400,
        ],
        ['/v1/nothing', { method: 'GET' }, 404],
        ['/v1/repair', { method: 'POST', headers: { 'content-type': 'application/xml' }, body: '<x/>' }, 415],
      ];
      for (const [path, init, status] of cases) {
        const response = await fetch(`${controller.url}${path}`, {
          ...init,
          headers: { authorization: `Bearer ${alice.token}`, ...(init.headers as Record<string, string>) },
        });
        const body = (await response.json()) as { error: string };
        assert.equal(response.status, status, path);
        assert.equal(
          body.error,
          status === 404 ? 'not-found' : status === 415 ? 'unsupported-media-type' : 'invalid-request',
        );
      }
    } finally {
      await controller.close();
    }
  });

  it('a controller that cannot listen fails with a coded error and leaves nothing open', async () => {
    const taken = await controllerWith({});
    try {
      const at = Number(new URL(taken.url).port);
      await assert.rejects(
        controllerWith({ listen: { address: '127.0.0.1', port: at, family: 4 } }),
        (error: Error & { code?: string }) =>
          error.code === 'GATECAST_ERR_SOCKET' && /EADDRINUSE/.test(error.message),
      );
    } finally {
      await taken.close();
    }
  });
});
