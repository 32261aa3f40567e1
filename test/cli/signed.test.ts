/**
 * `send --signed` and `--source-public` on the command line: bad input names the option, and a
 * receiver given another source's key writes nothing of a signed session and says why.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { signatureEngineInfo } from '../../src/crypto/aead-engine.js';
import { runGatecast as run, startReceive } from '../helpers/cli.js';
import { freshPort } from '../helpers/loopback.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-signed-cli-'));
after(() => rmSync(directory, { recursive: true, force: true }));

describe('signed sessions on the command line', () => {
  before(async () => {
    for (const name of ['keys', 'other']) {
      const made = await run(['token', 'keys', '--out', join(directory, name), '--service', 'news']);
      assert.equal(made.code, 0, made.stderr);
    }
  });

  it('send --signed without --source-key, and --source-public that is not a key: exit 2 naming the option', async () => {
    const group = `239.255.64.1:${freshPort()}`;
    const noKey = await run(['send', '--group', group, '--iface', '127.0.0.1', '--ticker', '--signed']);
    assert.equal(noKey.code, 2, noKey.stderr);
    assert.match(noKey.stderr, /--signed needs --source-key PEM/);
    const bad = join(directory, 'bad.pub');
    writeFileSync(bad, 'not hex\n');
    const receive = await run(['receive', '--group', group, '--iface', '127.0.0.1', '--source-public', bad]);
    assert.equal(receive.code, 2, receive.stderr);
    assert.match(receive.stderr, /--source-public: .* must hold 64 hex digits/);
    // A key of small order (the neutral point): under it one signature verifies for any message.
    const smallOrder = join(directory, 'small-order.pub');
    writeFileSync(smallOrder, `01${'00'.repeat(31)}\n`);
    const weak = await run([
      'receive',
      '--group',
      group,
      '--iface',
      '127.0.0.1',
      '--source-public',
      smallOrder,
    ]);
    assert.equal(weak.code, 2, weak.stderr);
    assert.match(
      weak.stderr,
      /--source-public: .* is not a usable Ed25519 public key: it is a point of small order/,
    );
    const service = await run([
      'send',
      '--group',
      group,
      '--ticker',
      '--signed',
      '--source-key',
      join(directory, 'keys', 'source.pem'),
      '--service',
      'news',
    ]);
    assert.equal(service.code, 2, service.stderr);
    assert.match(service.stderr, /--service needs --restricted/);
  });

  it('the right key: the file whole; another source key: nothing written, exit 1, the forgeries named', async () => {
    const group = `239.255.64.2:${freshPort()}`;
    const file = join(directory, 'in.bin');
    const bytes = randomBytes(200_000);
    writeFileSync(file, bytes);
    const outputs = { right: join(directory, 'right.out'), wrong: join(directory, 'wrong.out') };
    const receivers = await Promise.all(
      (['right', 'wrong'] as const).map((which) =>
        startReceive([
          '--group',
          group,
          '--iface',
          '127.0.0.1',
          '--timeout',
          which === 'right' ? '20' : '10', // long enough for the sender to start on a loaded machine
          '--out',
          outputs[which],
          '--source-public',
          join(directory, which === 'right' ? 'keys' : 'other', 'source.pub'),
        ]),
      ),
    );
    const sent = await run([
      'send',
      '--group',
      group,
      '--iface',
      '127.0.0.1',
      '--file',
      file,
      '--rate',
      '5M',
      '--signed',
      '--source-key',
      join(directory, 'keys', 'source.pem'),
    ]);
    assert.equal(sent.code, 0, sent.stderr);
    const [right, wrong] = receivers as [(typeof receivers)[0], (typeof receivers)[0]];
    assert.equal(await right.exited, 0, right.stderr());
    assert.match(right.stderr(), /whole: 143 packets.*SHA-256 ok/);
    // Both name the code that made and checked the signatures (docs/security.md, "The signature engine").
    const engine = signatureEngineInfo();
    const engineLine =
      engine.name === 'libsodium'
        ? /Ed25519 signatures made and checked with libsodium \d+\.\d+/
        : /Ed25519 signatures made and checked with node:crypto \(/;
    assert.match(sent.stderr, new RegExp(`send: ${engineLine.source}`));
    assert.match(right.stderr(), new RegExp(`receive: ${engineLine.source}`));
    assert.deepEqual(readFileSync(outputs.right), bytes);
    assert.equal(await wrong.exited, 1, wrong.stderr());
    assert.match(wrong.stderr(), /forged datagrams refused/);
    assert.equal(readFileSync(outputs.wrong).length, 0);
  });
});
