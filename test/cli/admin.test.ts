import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runAdmin } from '../../src/cli/admin.js';
import { runGatecast } from '../helpers/cli.js';
import { startServe } from '../helpers/serve.js';

const admin = (args: string[], env: Record<string, string> = {}) => runGatecast(['admin', ...args], env);
const json = (result: { code: number; stdout: string; stderr: string }) => {
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as Record<string, unknown>;
};

describe('gatecast admin', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-admin-'));
  after(() => rmSync(directory, { recursive: true, force: true }));

  it('straight against the store: parties, grants, a billing run, an invoice, the export', async () => {
    const db = ['--db', `sqlite:${join(directory, 'direct.db')}`];
    const alice = json(await admin([...db, 'subscriber', 'add', 'alice']));
    assert.match(String(alice.token), /^gct_/);
    json(await admin([...db, 'grant', String(alice.id), 'repair', '--monthly', '250']));
    assert.deepEqual(json(await admin([...db, 'check', String(alice.id), 'repair'])), {
      allowed: true,
      reason: 'entitled to repair',
    });
    const now = new Date();
    const period = `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, '0')}`;
    assert.equal(json(await admin([...db, 'bill', period])).charged, 1);
    assert.equal(json(await admin([...db, 'bill', period])).charged, 0, 'a second run charges nothing');
    const invoice = json(await admin([...db, 'invoice', String(alice.id), period]));
    assert.equal(invoice.total, 250);
    assert.equal(json(await admin([...db, 'balance', String(alice.id)])).balance, -250);
    // A subscriber whose debits are next to the bound: the run bills the month, refuses the charge
    // that would pass it, names it, and exits 1.
    json(await admin([...db, 'rates', '--set', 'channelOrderPerOrder=1']));
    const bob = json(await admin([...db, 'subscriber', 'add', 'bob']));
    json(
      await admin([
        ...db,
        'usage',
        String(bob.id),
        'channel-orders',
        String(Number.MAX_SAFE_INTEGER - 100_000),
        '--key',
        'bob-near-the-bound',
      ]),
    );
    const grant = json(await admin([...db, 'grant', String(bob.id), 'channel', '--monthly', '200000']));
    const partial = await admin([...db, 'bill', period]);
    assert.equal(partial.code, 1, partial.stderr);
    assert.deepEqual(
      (JSON.parse(partial.stdout) as { refused: Array<{ entitlement: string; error: string }> }).refused.map(
        (refusal) => [refusal.entitlement, refusal.error],
      ),
      [[grant.id, 'limit-exceeded']],
    );
    assert.match(partial.stderr, new RegExp(`bill: entitlement ${String(grant.id)} refused: limit-exceeded`));
    const out = join(directory, 'ledger.csv');
    assert.equal((await admin([...db, 'export', '--out', out])).code, 0);
    assert.match(readFileSync(out, 'utf8'), /subscription repair/);
    const twin = await admin([...db, 'subscriber', 'add', 'alice']);
    assert.equal(twin.code, 2, 'a second subscriber named alice');
    assert.match(twin.stderr, /409 conflict: body\/name: a subscriber named "alice" exists/);
    const tokens = json(await admin([...db, 'tokens'])) as unknown as Array<{
      party: string;
      revokedAt: unknown;
    }>;
    assert.ok(tokens.some((token) => token.party === alice.id && token.revokedAt === null));
    assert.deepEqual(json(await admin([...db, 'token', 'revoke', String(alice.id)])), { revoked: alice.id });
    const after = json(await admin([...db, 'tokens'])) as unknown as Array<{
      party: string;
      revokedAt: unknown;
    }>;
    assert.notEqual(after.find((token) => token.party === alice.id)?.revokedAt, null);
  });

  it('against a running server with a token file; refusals are one line and exit 2', async () => {
    const operator = 'operator-token-for-the-admin-test-000';
    const server = await startServe(['--db', `sqlite:${join(directory, 'served.db')}`], {
      GATECAST_OPERATOR_TOKEN: operator,
    });
    try {
      const tokenFile = join(directory, 'operator.token');
      writeFileSync(tokenFile, `${operator}\n`);
      const target = ['--server', server.url, '--token-file', tokenFile];
      const source = json(await admin([...target, 'source', 'add', 'news']));
      assert.equal(json(await admin([...target, 'whoami'])).kind, 'operator');
      const server1 = json(await admin([...target, 'server', 'add', 'retransmit', 'rt1', '127.0.0.1:7999']));
      assert.equal(server1.kind, 'retransmit');
      assert.equal((json(await admin([...target, 'servers'])) as unknown as unknown[]).length, 1);
      const asSource = await admin(['--server', server.url, 'session', 'add', 'news', '239.9.9.9:5000'], {
        GATECAST_TOKEN: String(source.token),
      });
      assert.equal(json(asSource).owner, source.id, 'a source registers its own session');
      const refused = await admin(['--server', server.url, 'subscriber', 'add', 'x'], {
        GATECAST_TOKEN: String(source.token),
      });
      assert.equal(refused.code, 2);
      assert.match(refused.stderr, /^gatecast admin: 403 forbidden: only the operator creates parties\n$/);
      const bad = await admin([...target, 'rates', '--set', 'repairPerGigabyte=0']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /400 invalid-request: .*repairPerGigabyte/);
      const unknown = await admin([...target, 'frobnicate']);
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, /unknown command "frobnicate"/);
      const both = await admin([...target, '--db', 'sqlite::memory:', 'whoami']);
      assert.match(both.stderr, /one of --server URL .* or --db URL/);
    } finally {
      await server.stop();
    }
  });

  it('an answer that does not fit the contract, or an undocumented error, is a refusal with the reason (exit 2)', async () => {
    let answer = { status: 200, body: '{"id": 5}' };
    const fake = createServer((request, response) => {
      request.resume();
      response.writeHead(answer.status, { 'content-type': 'application/json' });
      response.end(answer.body);
    });
    await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
    const address = fake.address();
    const url = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
    try {
      const env = { GATECAST_TOKEN: 'a-token-for-the-fake-server' };
      const wrong = await admin(['--server', url, 'whoami'], env);
      assert.equal(wrong.code, 2);
      assert.match(
        wrong.stderr,
        /^gatecast admin: 200 invalid-answer: the answer does not fit the contract at "\/(id|name|kind)"/,
      );
      // Every command's answer is checked by its route's schema, not only a few.
      const wrongAnswers: Array<[string[], string, RegExp]> = [
        [['balance', 'acct-1'], '{"account":"acct-1","balance":"lots","currency":"EUR"}', /at "\/balance"/],
        [['tokens'], 'null', /does not fit the contract/],
        [['bill', '2026-01'], '{}', /does not fit the contract/],
        [['rates'], '{"repairPerGigabyte":-1}', /does not fit the contract/],
        [['subscriber', 'add', 'zoe'], '{"id":"x","name":"zoe","kind":"subscriber"}', /at "\/token"/],
        [['export'], '{"not":"csv"}', /does not fit the contract/],
        [['orders', 'links'], '[{"name":1}]', /does not fit the contract/],
        [['token', 'revoke', 'x'], '{"revoked":true}', /does not fit the contract/],
      ];
      for (const [words, body, reason] of wrongAnswers) {
        answer = { status: 200, body };
        const refused = await admin(['--server', url, ...words], env);
        assert.equal(refused.code, 2, `${words.join(' ')}: ${refused.stdout}`);
        assert.match(refused.stderr, /^gatecast admin: 200 invalid-answer: /, words.join(' '));
        assert.match(refused.stderr, reason, words.join(' '));
        assert.equal(refused.stdout, '', `${words.join(' ')}: nothing printed`);
      }
      answer = { status: 500, body: 'null' };
      const broken = await admin(['--server', url, 'whoami'], env);
      assert.equal(broken.code, 2);
      assert.match(broken.stderr, /^gatecast admin: 500 null\n$/);
    } finally {
      await new Promise<void>((resolve) => fake.close(() => resolve()));
    }
  });
});

describe('gatecast admin --db that fails to start leaves nothing open', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-admin-open-'));
  after(() => rmSync(directory, { recursive: true, force: true }));
  /** Descriptors of this process open on a path (the store's file and its journal). */
  const openOn = (path: string) =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).startsWith(path);
      } catch {
        return false; // closed meanwhile
      }
    }).length;

  for (const [name, secret] of [
    ['a missing --secret-file', undefined],
    ['a --secret-file shorter than 16 bytes', 'short'],
  ] as const) {
    it(`${name}: refused, and the store is not left open`, async () => {
      const db = join(directory, `${secret ?? 'missing'}.db`);
      const secretFile = join(directory, `${secret ?? 'missing'}.secret`);
      if (secret !== undefined) {
        writeFileSync(secretFile, secret);
      }
      await assert.rejects(
        runAdmin(
          ['--db', `sqlite:${db}`, '--secret-file', secretFile, 'subscriber', 'add', 'alice'],
          process.stdout,
        ),
        (error: Error & { code?: string }) => error.code === 'GATECAST_ERR_SECRET',
      );
      assert.equal(openOn(db), 0, 'no descriptor left open on the store');
    });
  }
});
