/**
 * `gatecast token enroll` never waits without a bound or without saying why (issue 12: once, in
 * CI, an enroll was killed by the test's 30 s timeout with nothing written). Every network wait
 * of the command ends within its request timeout and names what it waited for; the test helper
 * that runs commands says when it killed one, and shows what it had written so far.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { type AddressInfo, createServer as createTcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readEd25519PublicFile, readHexFile, readSigningKey } from '../../src/cli/restricted.js';
import { issueGrant } from '../../src/crypto/authority.js';
import { PriceModel, p256PointBytes } from '../../src/protocol/restricted.js';
import { runGatecast as run } from '../helpers/cli.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-enroll-'));
const pin = { GATECAST_TOKEN_PIN: '24682468' };
const sockets = new Set<Socket>();
/** Takes the TCP connection and reads the request, answers nothing. */
const silentTcp = createTcpServer((socket) => {
  sockets.add(socket);
  socket.on('error', () => undefined);
  socket.resume();
});
/** Answers the headers and the start of the body of an enrollment, then nothing. */
const halfHttp: Server = createHttpServer((request, response) => {
  sockets.add(request.socket);
  response.writeHead(201, { 'content-type': 'application/json', 'content-length': '4000' });
  response.write('{"token": "gc-');
});

function urlOf(server: { address(): AddressInfo | string | null }): string {
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

before(async () => {
  await new Promise<void>((resolve) => silentTcp.listen(0, '127.0.0.1', resolve));
  await new Promise<void>((resolve) => halfHttp.listen(0, '127.0.0.1', resolve));
  const keys = await run(['token', 'keys', '--out', join(directory, 'keys'), '--service', 'news']);
  assert.equal(keys.code, 0, keys.stderr);
  const init = await run(
    [
      'token',
      'init',
      '--token',
      join(directory, 'a.token'),
      '--root-public',
      join(directory, 'keys', 'root.pub'),
    ],
    pin,
  );
  assert.equal(init.code, 0, init.stderr);
  writeFileSync(join(directory, 'a.api'), 'gct_enroll_test_bearer_token');
});

after(async () => {
  for (const socket of sockets) {
    socket.destroy();
  }
  await new Promise((resolve) => silentTcp.close(resolve));
  halfHttp.closeAllConnections();
  await new Promise((resolve) => halfHttp.close(resolve));
  rmSync(directory, { recursive: true, force: true });
});

describe('token init', () => {
  it('refuses a root key no signer could hold (small order), naming the option and why; no token is written', async () => {
    const weak = join(directory, 'small-order-root.pub');
    writeFileSync(weak, `01${'00'.repeat(31)}\n`);
    const init = await run(
      ['token', 'init', '--token', join(directory, 'weak.token'), '--root-public', weak],
      pin,
    );
    assert.equal(init.code, 2, init.stderr);
    assert.match(
      init.stderr,
      /--root-public: .* is not a usable Ed25519 public key: it is a point of small order/,
    );
    assert.equal(existsSync(join(directory, 'weak.token')), false);
  });
});

describe('token grant, show: bad input is named, never a crash', () => {
  it('a grant whose --until has passed is refused (it would open nothing); a token file of JSON that is no token file is named, exit 2', async () => {
    const init = await run(
      [
        'token',
        'init',
        '--token',
        join(directory, 'b.token'),
        '--root-public',
        join(directory, 'keys', 'root.pub'),
      ],
      pin,
    );
    assert.equal(init.code, 0, init.stderr);
    const device = join(directory, 'b.device');
    writeFileSync(device, init.stdout.trim());
    /** `token grant` for this token; `from` undefined leaves --from out (now). */
    const grant = (from: string | undefined, until: string, out: string) =>
      run([
        'token',
        'grant',
        '--root-key',
        join(directory, 'keys', 'root.pem'),
        '--device',
        device,
        '--service',
        'news',
        '--service-key-file',
        join(directory, 'keys', 'news.key'),
        '--source-public',
        join(directory, 'keys', 'source.pub'),
        ...(from === undefined ? [] : ['--from', from]),
        '--until',
        until,
        '--out',
        join(directory, out),
      ]);
    const past = await grant('2026-01-01T00:00:00Z', '2026-06-01T00:00:00Z', 'past.grant');
    assert.equal(past.code, 2, past.stderr);
    assert.match(past.stderr, /--until 2026-06-01T00:00:00.000Z has passed: the grant would open nothing/);
    assert.equal(existsSync(join(directory, 'past.grant')), false);
    const noFrom = await grant(undefined, '2020-01-01T00:00:00Z', 'nofrom.grant');
    assert.equal(noFrom.code, 2, noFrom.stderr);
    assert.match(noFrom.stderr, /--until 2020-01-01T00:00:00.000Z has passed/);
    const now = await grant(
      new Date().toISOString(),
      new Date(Date.now() + 3_600_000).toISOString(),
      'now.grant',
    );
    assert.equal(now.code, 0, now.stderr);
    const installed = await run(
      ['token', 'install', '--token', join(directory, 'b.token'), '--grant', join(directory, 'now.grant')],
      pin,
    );
    assert.equal(installed.code, 0, installed.stderr);
    // A grant that has ended (as an older operator tool could make) does not take the place of
    // the running one for the same service and epoch: refused, the token unchanged.
    const ended = issueGrant(
      {
        devicePoint: readHexFile(device, '--device', p256PointBytes),
        serviceKey: readHexFile(join(directory, 'keys', 'news.key'), '--service-key-file', 32),
        tier: 0,
        service: 'news',
        serviceEpoch: 1,
        notBeforeMs: Date.now() - 7_200_000,
        notAfterMs: Date.now() - 3_600_000,
        priceModel: PriceModel.subscription,
        currency: 'EUR',
        priceMinor: 0,
        sourcePublicKey: readEd25519PublicFile(join(directory, 'keys', 'source.pub'), '--source-public'),
      },
      readSigningKey(join(directory, 'keys', 'root.pem'), '--root-key').privateKey,
    );
    writeFileSync(join(directory, 'ended.grant'), ended.toString('base64'));
    const before = readFileSync(join(directory, 'b.token'));
    /** `token install` of a grant file that is refused: exit 2, the message, the token file unchanged. */
    const installRefused = async (grantFile: string, message: RegExp) => {
      const refused = await run(
        ['token', 'install', '--token', join(directory, 'b.token'), '--grant', join(directory, grantFile)],
        pin,
      );
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, message);
      assert.ok(readFileSync(join(directory, 'b.token')).equals(before), 'the token file is unchanged');
    };
    await installRefused(
      'ended.grant',
      /--grant: this grant for news ended at .*: not installed \(the token keeps what it holds\)/,
    );
    // A renewal that starts later would leave the token without news until then: refused too.
    const later = await grant('2099-01-01T00:00:00Z', '2099-02-01T00:00:00Z', 'later.grant');
    assert.equal(later.code, 0, later.stderr);
    await installRefused(
      'later.grant',
      /--grant: the token's grant for news \(epoch 1\) runs until .*, and this one starts at 2099-01-01T00:00:00.000Z: installed now it would leave the token without news until then; not installed/,
    );
    for (const text of ['null', '[]', '7']) {
      writeFileSync(join(directory, 'odd.token'), text);
      const show = await run(['token', 'show', '--token', join(directory, 'odd.token')], pin);
      assert.equal(show.code, 2, `${text}: ${show.stderr}`);
      assert.match(show.stderr, /not a gatecast-software-token version 1 file/);
      assert.doesNotMatch(show.stderr, /internal error|TypeError/);
    }
  });
});

describe('token subcommands: help', () => {
  it('each says what it does once, under its own usage line, and what its --token is', async () => {
    for (const [subcommand, what] of [
      ['receipts', "report the purse's receipts to billing"],
      ['topup', "move money from the subscriber's account to the token's purse, and credit it"],
      ['show', "list a token's entitlements"],
    ] as const) {
      const help = await run(['token', subcommand, '--help']);
      assert.equal(help.code, 0, help.stderr);
      assert.equal(help.stdout.match(/usage:/g)?.length, 1, help.stdout);
      assert.ok(
        help.stdout.startsWith(`usage: gatecast token ${subcommand} [options]\n\n${what}`),
        help.stdout,
      );
      assert.match(help.stdout, /--token FILE\|pkcs11:LABEL +the token: a software token file/);
    }
  });
});

describe('token enroll against a server that never answers', () => {
  for (const [what, server] of [
    ['takes the connection and answers nothing', silentTcp],
    ['sends headers and part of the body, then nothing', halfHttp],
  ] as const) {
    it(`${what}: exits 2 within its request timeout and names the request it waited for`, async () => {
      const startedMs = performance.now();
      const enrolled = await run(
        [
          'token',
          'enroll',
          '--token',
          join(directory, 'a.token'),
          '--subscription',
          urlOf(server),
          '--token-file',
          join(directory, 'a.api'),
        ],
        pin,
      );
      const tookMs = performance.now() - startedMs;
      assert.equal(enrolled.code, 2, enrolled.stderr);
      assert.match(
        enrolled.stderr,
        /gatecast token: --subscription: cannot reach http:\/\/127\.0\.0\.1:\d+: no answer to POST \/v1\/enrollments within 10 s/,
      );
      assert.equal(enrolled.stdout, '', 'nothing is said to be enrolled');
      // The request timeout is 10 s; the helper's own kill (30 s) must not be what ended it.
      assert.ok(tookMs < 28_000, `took ${tookMs} ms`);
    });
  }
});

describe('the command helper reports a command it had to kill', () => {
  it('says it killed the command by its timeout, after how long, and what it had written', async () => {
    // A receive with a 60 s timeout says "joined" at once, then waits: killed by a 3 s bound.
    const killed = await run(
      ['receive', '--group', '239.255.63.7:47123', '--iface', '127.0.0.1', '--timeout', '60'],
      {},
      3000,
    );
    assert.equal(killed.code, -1);
    assert.match(
      killed.stderr,
      /^gatecast receive --group .*: killed by the test's 3000 ms timeout after \d+ ms$/m,
    );
    assert.match(killed.stderr, /stderr so far: \n.*joined/s);
  });
});
