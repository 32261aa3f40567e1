/**
 * Two subscription servers on one PostgreSQL store (and one server's concurrent requests, which
 * run on different connections of its pool) enrolling, revoking and sweeping at once: every
 * answer is a success, no two members share a slot, every leave has an epoch of its own, and
 * every member that stays (one enrolled during a leave too) follows every rekey to the new group key.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import { ed25519Raw, generateSigningKey, x25519Raw } from '../../src/crypto/authority.js';
import { Token } from '../../src/crypto/token.js';
import type { EnrollResult, TreeForSource } from '../../src/protocol/api-tokens.js';
import { openStore, type Store } from '../../src/store/database.js';
import { type Postgres, postgresSkip, startPostgres } from '../helpers/postgres.js';
import { MemoryBackend } from '../sim/protection.js';

const operator = 'operator-token-for-two-servers';
const root = generateSigningKey();
const source = generateSigningKey();
const authority = {
  rootPrivateKey: root.privateKey,
  products: [
    {
      name: 'news',
      serviceKey: randomBytes(32),
      serviceEpoch: 1,
      sourcePublicKey: ed25519Raw(source.publicKey),
      tier: 0,
      pricePerPeriod: 0,
      treeDepth: 5,
    },
  ],
};

interface Subscriber {
  readonly id: string;
  readonly token: string;
  readonly entitlement: string;
  device?: Token;
}

describe('member trees: two servers on one PostgreSQL store, at once', postgresSkip(), () => {
  let postgres: Postgres;
  const stores: Store[] = [];
  const apps: FastifyInstance[] = [];

  const call = async (
    app: FastifyInstance,
    method: string,
    url: string,
    body?: unknown,
    token = operator,
  ) => {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}` },
      ...(body === undefined ? {} : { payload: body as object }),
    });
    return { status: response.statusCode, body: response.json() };
  };

  const subscribe = async (app: FastifyInstance, name: string): Promise<Subscriber> => {
    const created = await call(app, 'POST', '/v1/subscribers', { name });
    assert.equal(created.status, 201);
    const entitled = await call(app, 'POST', '/v1/entitlements', {
      subscriber: created.body.id,
      service: 'channel',
      session: 'news',
    });
    assert.equal(entitled.status, 201);
    return { id: created.body.id, token: created.body.token, entitlement: entitled.body.id };
  };

  const enroll = async (app: FastifyInstance, subscriber: Subscriber) => {
    const token = new Token(new MemoryBackend(ed25519Raw(root.publicKey)));
    const answer = await call(
      app,
      'POST',
      '/v1/enrollments',
      {
        device: token.devicePoint().toString('hex'),
        receiptKey: ed25519Raw(generateSigningKey().publicKey).toString('base64url'),
      },
      subscriber.token,
    );
    assert.equal(answer.status, 201, JSON.stringify(answer.body));
    const grant = (answer.body as EnrollResult).grants[0];
    assert.ok(grant?.membership !== undefined);
    token.installGrant(Buffer.from(grant.grant, 'base64'));
    token.installMembership(Buffer.from(grant.membership, 'base64'));
    subscriber.device = token;
  };

  before(async () => {
    postgres = startPostgres();
    for (let index = 0; index < 2; index++) {
      const store = await openStore(postgres.url);
      stores.push(store);
      apps.push(
        await buildServerApp({
          store,
          trustedOperatorToken: operator,
          authority,
          treeSweepMs: 15,
        } as Parameters<typeof buildServerApp>[0]),
      );
    }
  });

  after(async () => {
    for (const app of apps) {
      await app.close();
    }
    for (const store of stores) {
      await store.close();
    }
    postgres?.stop();
  });

  it('enrolls, revokes and sweeps at once without an error, and every member left follows every rekey', async () => {
    const app = (index: number) => apps[index % 2] as FastifyInstance;
    const first: Subscriber[] = [];
    for (let index = 0; index < 12; index++) {
      first.push(await subscribe(app(index), `first-${index}`));
    }
    // Enrollments at once, on both servers: slots of their own.
    await Promise.all(first.map((subscriber, index) => enroll(app(index), subscriber)));
    const slots = first.map((subscriber) => subscriber.device?.memberships()[0]?.slot);
    assert.equal(new Set(slots).size, first.length, `slots ${slots.join(' ')}`);

    // Revokes on both servers (their sweeps run every 15 ms too) while others enroll.
    const later: Subscriber[] = [];
    for (let index = 0; index < 6; index++) {
      later.push(await subscribe(app(index), `later-${index}`));
    }
    const revoked = first.slice(0, 8);
    // Sources fetch the tree meanwhile: each answer's group key, epoch and rekeys are of one moment.
    const fetches: Array<Promise<{ status: number; body: TreeForSource }>> = [];
    let revoking = true;
    const fetchWhileRevoking = async (index: number) => {
      while (revoking) {
        const recipient = generateKeyPairSync('x25519');
        fetches.push(
          call(
            app(index),
            'GET',
            `/v1/products/news/tree?since=0&recipient=${x25519Raw(recipient.publicKey).toString('hex')}`,
          ),
        );
        await fetches.at(-1);
      }
    };
    const fetching = [fetchWhileRevoking(0), fetchWhileRevoking(1), fetchWhileRevoking(0)];
    const answers = await Promise.all([
      ...revoked.map((subscriber, index) =>
        call(app(index), 'DELETE', `/v1/entitlements/${subscriber.entitlement}`),
      ),
      ...later.map((subscriber, index) => enroll(app(index + 1), subscriber).then(() => ({ status: 201 }))),
    ]);
    for (const answer of answers) {
      assert.ok(answer.status === 200 || answer.status === 201, JSON.stringify(answer));
    }
    revoking = false;
    await Promise.all(fetching);
    for (const fetched of await Promise.all(fetches)) {
      assert.equal(fetched.status, 200, JSON.stringify(fetched.body));
      const epochs = fetched.body.rekeys.map((text) => Buffer.from(text, 'base64').readUInt32BE(8));
      assert.equal(Math.max(0, ...epochs), fetched.body.epoch, `rekeys ${epochs.join(' ')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));

    const recipient = generateKeyPairSync('x25519');
    const fetched = await call(
      app(0),
      'GET',
      `/v1/products/news/tree?since=0&recipient=${x25519Raw(recipient.publicKey).toString('hex')}`,
    );
    assert.equal(fetched.status, 200);
    const tree = fetched.body as TreeForSource;
    assert.equal(tree.epoch, revoked.length, 'one leave per revoked token, no more, no fewer');
    assert.equal(tree.members, first.length - revoked.length + later.length);
    const rekeys = tree.rekeys.map((text) => Buffer.from(text, 'base64'));
    assert.deepEqual(
      rekeys.map((rekey) => rekey.readUInt32BE(8)),
      Array.from({ length: revoked.length }, (_, index) => index + 1),
    );
    for (const subscriber of [...first, ...later]) {
      const token = subscriber.device as Token;
      for (const rekey of rekeys) {
        token.applyRekey(rekey);
      }
      const view = token.memberships()[0];
      assert.equal(view?.treeEpoch, tree.epoch, `${subscriber.id} follows every rekey`);
    }
    const removedOf = (subscriber: Subscriber) =>
      (subscriber.device as Token).memberships()[0]?.removedAt !== undefined;
    for (const subscriber of revoked) {
      assert.equal(removedOf(subscriber), true, `${subscriber.id} was revoked: it is removed`);
    }
    for (const subscriber of [...first.slice(revoked.length), ...later]) {
      assert.equal(removedOf(subscriber), false, `${subscriber.id} stays a member`);
    }
  });
});
