import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServerApp } from '../../src/cli/server-app.js';
import {
  ed25519FromRaw,
  ed25519Raw,
  generateSigningKey,
  p256Point,
  tokenIdOf,
} from '../../src/crypto/authority.js';
import { decodeTopUp, verifyTopUp } from '../../src/crypto/top-up.js';
import type { EnrollResult } from '../../src/protocol/api-tokens.js';
import { decodeGrant, PriceModel } from '../../src/protocol/restricted.js';
import { openStore, type Store } from '../../src/store/database.js';

const operator = 'operator-token-for-enrollment-tests-01';
const root = generateSigningKey();
const source = generateSigningKey();
const dayMs = 86_400_000;

function device() {
  return p256Point(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey).toString('hex');
}
const receiptKey = () => ed25519Raw(generateSigningKey().publicKey).toString('base64url');

describe('token enrollment: POST /v1/enrollments issues the grants of the entitlements; top-ups are signed for the token', () => {
  let store: Store;
  let app: FastifyInstance;
  let bare: FastifyInstance;
  const subscribers: Record<string, { id: string; token: string }> = {};

  const call = async (method: string, url: string, body?: unknown, token = operator, on = app) => {
    const response = await on.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}` },
      ...(body === undefined ? {} : { payload: body as object }),
    });
    return { status: response.statusCode, body: response.json() };
  };

  before(async () => {
    store = await openStore('sqlite::memory:');
    const products = [
      {
        name: 'news',
        serviceKey: randomBytes(32),
        serviceEpoch: 3,
        sourcePublicKey: ed25519Raw(source.publicKey),
        tier: 2,
        pricePerPeriod: 5,
        treeDepth: 4,
      },
      {
        name: 'films',
        serviceKey: randomBytes(32),
        serviceEpoch: 1,
        sourcePublicKey: ed25519Raw(source.publicKey),
        tier: 0,
        pricePerPeriod: 0,
        treeDepth: 14,
      },
    ];
    app = await buildServerApp({
      store,
      trustedOperatorToken: operator,
      authority: { rootPrivateKey: root.privateKey, products },
    });
    bare = await buildServerApp({ store, trustedOperatorToken: operator });
    for (const name of ['ann', 'ben']) {
      const created = await call('POST', '/v1/subscribers', { name });
      assert.equal(created.status, 201);
      subscribers[name] = { id: created.body.id, token: created.body.token };
    }
    const now = Date.now();
    for (const entitlement of [
      { subscriber: subscribers.ann?.id, service: 'pay-as-you-go', session: 'news' },
      {
        subscriber: subscribers.ann?.id,
        service: 'channel',
        session: 'films',
        from: new Date(now - 2 * dayMs).toISOString(),
        to: new Date(now - dayMs).toISOString(),
      },
      { subscriber: subscribers.ann?.id, service: 'pay-as-you-go', session: 'films' }, // films is not sold per period
      { subscriber: subscribers.ann?.id, service: 'repair' },
    ]) {
      assert.equal((await call('POST', '/v1/entitlements', entitlement)).status, 201);
    }
    const studio = await call('POST', '/v1/sources', { name: 'studio' });
    subscribers.studio = { id: studio.body.id, token: studio.body.token };
  });

  after(async () => {
    await app?.close();
    await bare?.close();
    await store?.close();
  });

  it('a subscriber enrolls its token: one grant per entitled product, window and price from the entitlement and the product; enrolling again renews', async () => {
    const ann = subscribers.ann as { id: string; token: string };
    const point = device();
    const key = receiptKey();
    const first = await call('POST', '/v1/enrollments', { device: point, receiptKey: key }, ann.token);
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const result = first.body as EnrollResult;
    assert.equal(result.token, tokenIdOf(Buffer.from(point, 'hex')));
    assert.equal(result.subscriber, ann.id);
    assert.deepEqual(
      result.grants.map((grant) => [
        grant.service,
        grant.priceModel,
        grant.price,
        grant.tier,
        grant.serviceEpoch,
      ]),
      [
        ['news', 'per-crypto-period', 5, 2, 3],
        ['films', 'subscription', 0, 0, 1],
      ],
    );
    for (const granted of result.grants) {
      const decoded = decodeGrant(Buffer.from(granted.grant, 'base64'));
      assert.ok(decoded.ok);
      assert.equal(decoded.value.service, granted.service);
      assert.equal(
        decoded.value.priceModel,
        granted.service === 'news' ? PriceModel.perCryptoPeriod : PriceModel.subscription,
      );
      assert.equal(new Date(decoded.value.notAfterMs).toISOString(), granted.until);
    }
    const films = result.grants.find((grant) => grant.service === 'films');
    assert.ok(
      Date.parse(films?.until ?? '') < Date.now(),
      'the ended entitlement is granted with its ended window',
    );
    const again = await call('POST', '/v1/enrollments', { device: point, receiptKey: key }, ann.token);
    assert.equal(again.status, 200);
    assert.equal(again.body.created, false);
    const otherKey = await call(
      'POST',
      '/v1/enrollments',
      { device: point, receiptKey: receiptKey() },
      ann.token,
    );
    assert.equal(otherKey.status, 409);
    const ben = subscribers.ben as { id: string; token: string };
    const stolen = await call('POST', '/v1/enrollments', { device: point, receiptKey: key }, ben.token);
    assert.equal(stolen.status, 409, 'a device enrolled by one subscriber is not enrolled by another');
    const benOwn = await call(
      'POST',
      '/v1/enrollments',
      { device: device(), receiptKey: receiptKey() },
      ben.token,
    );
    assert.equal(benOwn.status, 201);
    assert.deepEqual(benOwn.body.grants, [], 'no entitlement, no grant');
  });

  it('refuses what it cannot do, naming why', async () => {
    const ann = subscribers.ann as { id: string; token: string };
    const studio = subscribers.studio as { id: string; token: string };
    const body = { device: device(), receiptKey: receiptKey() };
    assert.equal((await call('POST', '/v1/enrollments', body, studio.token)).status, 403);
    const forOther = await call(
      'POST',
      '/v1/enrollments',
      { ...body, subscriber: subscribers.ben?.id },
      ann.token,
    );
    assert.equal(forOther.status, 403);
    const noSubscriber = await call('POST', '/v1/enrollments', body);
    assert.equal(noSubscriber.status, 400);
    assert.match(noSubscriber.body.message, /body\/subscriber/);
    const byOperator = await call('POST', '/v1/enrollments', { ...body, subscriber: ann.id });
    assert.equal(byOperator.status, 201);
    const offCurve = await call(
      'POST',
      '/v1/enrollments',
      { device: `04${'11'.repeat(64)}`, receiptKey: receiptKey() },
      ann.token,
    );
    assert.equal(offCurve.status, 400);
    assert.match(offCurve.body.message, /body\/device/);
    const badShape = await call(
      'POST',
      '/v1/enrollments',
      { device: 'zz', receiptKey: receiptKey() },
      ann.token,
    );
    assert.equal(badShape.status, 400);
    // A receipt key of small order: under it one signature would verify for any receipt.
    const weakKey = await call(
      'POST',
      '/v1/enrollments',
      { device: device(), receiptKey: Buffer.from(`01${'00'.repeat(31)}`, 'hex').toString('base64url') },
      ann.token,
    );
    assert.equal(weakKey.status, 400);
    assert.match(
      weakKey.body.message,
      /body\/receiptKey: not a usable Ed25519 public key: it is a point of small order/,
    );
    const noRoot = await call('POST', '/v1/enrollments', body, ann.token, bare);
    assert.equal(noRoot.status, 503);
    assert.match(noRoot.body.message, /root key/);
  });

  it('the owner tops up its purse from its account; the answer carries the top-up signed by the root key; another subscriber may not', async () => {
    const ann = subscribers.ann as { id: string; token: string };
    const ben = subscribers.ben as { id: string; token: string };
    const enrolled = await call(
      'POST',
      '/v1/enrollments',
      { device: device(), receiptKey: receiptKey() },
      ann.token,
    );
    const token = enrolled.body.token as string;
    const path = `/v1/purses/${token}/top-ups`;
    assert.equal((await call('POST', path, { sequence: 1, amount: 40 }, ben.token)).status, 403);
    const topped = await call('POST', path, { sequence: 1, amount: 40 }, ann.token);
    assert.equal(topped.status, 201, JSON.stringify(topped.body));
    const decoded = decodeTopUp(Buffer.from(topped.body.topUp, 'base64url'));
    assert.ok(decoded.ok);
    assert.deepEqual(
      {
        tokenId: decoded.value.tokenId,
        sequence: decoded.value.sequence,
        amount: decoded.value.amount,
        currency: decoded.value.currency,
      },
      { tokenId: token, sequence: 1, amount: 40, currency: 'EUR' },
    );
    assert.ok(verifyTopUp(decoded.value, ed25519FromRaw(ed25519Raw(root.publicKey))));
    const replayed = await call('POST', path, { sequence: 1, amount: 40 }, ann.token);
    assert.equal(replayed.status, 200);
    assert.equal(replayed.body.topUp, topped.body.topUp, 'the same top-up, signed the same');
    const balance = await call('GET', `/v1/accounts/${ann.id}/balance`);
    assert.equal(balance.body.balance, -40, 'paid once');
    const unsigned = await call('POST', path, { sequence: 2, amount: 1 }, ann.token, bare);
    assert.equal(unsigned.status, 201);
    assert.equal(unsigned.body.topUp, undefined, 'no root key, no signed top-up');
  });
});
