import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { answerTag } from '../../src/crypto/answer-auth.js';
import { parseGroup } from '../../src/net/address.js';
import { answerFields } from '../../src/protocol/controller.js';
import { controllerClient } from '../../src/receiver/controller-client.js';

const token = 'subscriber-token-for-the-client-test-01';
const s1 = parseGroup('239.60.0.1:5000', 's1');

describe('the agent’s controller client treats every answer that breaks the contract as a refusal', () => {
  let server: Server;
  let url: string;
  let answer: { status: number; body: string } = { status: 200, body: 'null' };
  before(async () => {
    server = createServer((request, response) => {
      request.resume();
      request.on('end', () => {
        response.writeHead(answer.status, { 'content-type': 'application/json' });
        response.end(answer.body);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    url = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const grant = {
    session: '239.60.0.1:5000',
    s2: '239.61.0.1:6000',
    subscriber: 'alice',
    leaseSeconds: 60,
    key: null,
  };
  const tagged = { ...grant, tag: answerTag(token, answerFields(grant)) };

  it('null, a string, an array, a wrong type, a missing field or an undocumented error: refused with the reason, no throw', async () => {
    const cases: Array<[number, string, RegExp]> = [
      [200, 'null', /^200 the controller’s answer is not a grant/],
      [200, '"granted"', /not a grant/],
      [200, '[]', /not a grant/],
      [200, '', /not a grant/],
      [200, '{not json', /not a grant/],
      [200, JSON.stringify({ ...tagged, leaseSeconds: '60' }), /not a grant.*leaseSeconds/],
      [200, JSON.stringify({ ...tagged, leaseSeconds: 0 }), /not a grant.*leaseSeconds/],
      [200, JSON.stringify({ ...tagged, s2: undefined }), /not a grant.*s2/],
      [403, 'null', /^403 the controller’s answer is not a grant: an undocumented 403 answer$/],
      [500, '{"error":"boom","message":"x"}', /undocumented 500/],
    ];
    const client = controllerClient(url, token);
    for (const [status, body, reason] of cases) {
      answer = { status, body };
      const resolution = await client.resolve(s1);
      assert.equal(resolution.granted, false, body);
      assert.match(resolution.granted ? '' : resolution.reason, reason, body);
    }
    answer = { status: 200, body: 'null' };
    await client.release(s1); // a bad answer to a release is ignored too
  });

  it('a well-formed grant tagged under the subscriber’s token is accepted; the same grant altered is not', async () => {
    const client = controllerClient(url, token);
    answer = { status: 200, body: JSON.stringify(tagged) };
    assert.deepEqual(await client.resolve(s1), {
      granted: true,
      s2: parseGroup('239.61.0.1:6000', 's2'),
      leaseMs: 60_000,
    });
    answer = { status: 200, body: JSON.stringify({ ...tagged, s2: '239.61.0.9:6000' }) };
    assert.deepEqual(await client.resolve(s1), {
      granted: false,
      reason: 'the controller’s answer failed its authenticity check',
    });
    // A sealed S2: the key comes in the grant, under the tag; an altered key fails the check.
    const secret = Buffer.alloc(32, 9).toString('base64url');
    const sealed = { ...grant, key: { suite: 'aes-256-gcm' as const, epoch: 3, secret } };
    const sealedTagged = { ...sealed, tag: answerTag(token, answerFields(sealed)) };
    answer = { status: 200, body: JSON.stringify(sealedTagged) };
    assert.deepEqual(await client.resolve(s1), {
      granted: true,
      s2: parseGroup('239.61.0.1:6000', 's2'),
      leaseMs: 60_000,
      key: { epoch: 3, key: Buffer.alloc(32, 9) },
    });
    const otherSecret = Buffer.alloc(32, 8).toString('base64url');
    for (const key of [
      { ...sealed.key, epoch: 4 },
      { ...sealed.key, secret: otherSecret },
    ]) {
      answer = { status: 200, body: JSON.stringify({ ...sealedTagged, key }) };
      assert.deepEqual(await client.resolve(s1), {
        granted: false,
        reason: 'the controller’s answer failed its authenticity check',
      });
    }
    for (const key of [
      { ...sealed.key, secret: 'short' },
      { ...sealed.key, suite: 'aes-128-cbc' },
      { ...sealed.key, epoch: 0 },
    ]) {
      answer = { status: 200, body: JSON.stringify({ ...sealedTagged, key }) };
      const refused = await client.resolve(s1);
      assert.equal(refused.granted, false, JSON.stringify(key));
      assert.match(refused.granted ? '' : refused.reason, /not a grant.*key/, JSON.stringify(key));
    }
    answer = {
      status: 403,
      body: JSON.stringify({ error: 'not-entitled', message: 'no repair entitlement' }),
    };
    assert.deepEqual(await client.resolve(s1), { granted: false, reason: '403 no repair entitlement' });
  });
});
