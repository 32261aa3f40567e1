import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runGatecast as run } from '../helpers/cli.js';
import { createSoftHsm, type SoftHsm, softhsmMissing } from '../helpers/softhsm.js';
import { createTestbed, receiveOn, sendFrom, sha256, type Testbed, testbedSkip } from '../helpers/testbed.js';

function skip(): { skip?: string } {
  const bed = testbedSkip(['socat']);
  if (bed.skip !== undefined) {
    return bed;
  }
  const hsm = softhsmMissing('the restricted-channel test');
  return hsm === undefined ? {} : { skip: hsm };
}

describe('restricted channel across the routed test bed (software and SoftHSM2 tokens)', skip(), () => {
  let bed: Testbed;
  let hsm: SoftHsm;
  let directory: string;
  let file: string;
  let fileBytes: Buffer;
  const keys = () => join(directory, 'keys');

  before(async () => {
    directory = mkdtempSync(join(tmpdir(), 'gatecast-restricted-e2e-'));
    hsm = createSoftHsm(); // sets SOFTHSM2_CONF for the commands this test starts
    hsm.initToken('rx2-token', '24682468');
    process.env.GATECAST_TOKEN_PIN = '24682468';
    bed = createTestbed();
    file = join(directory, 'film.bin');
    fileBytes = randomBytes(3 * 1000 * 1000);
    writeFileSync(file, fileBytes);
    const made = await run(['token', 'keys', '--out', keys(), '--service', 'news']);
    assert.equal(made.code, 0, made.stderr);
    const tokens: [string, string, boolean][] = [
      ['rx1', join(directory, 'rx1.token'), true],
      ['rx2', 'pkcs11:rx2-token', true],
      ['rt1', join(directory, 'rt1.token'), false],
    ];
    for (const [host, token, entitled] of tokens) {
      const init = await run(['token', 'init', '--token', token, '--root-public', join(keys(), 'root.pub')]);
      assert.equal(init.code, 0, init.stderr);
      const device = join(directory, `${host}.device`);
      writeFileSync(device, init.stdout.trim());
      if (!entitled) {
        continue;
      }
      const grantFile = join(directory, `${host}.grant`);
      const grant = await run([
        'token',
        'grant',
        '--root-key',
        join(keys(), 'root.pem'),
        '--device',
        device,
        '--service',
        'news',
        '--service-key-file',
        join(keys(), 'news.key'),
        '--source-public',
        join(keys(), 'source.pub'),
        '--until',
        new Date(Date.now() + 3_600_000).toISOString(),
        '--out',
        grantFile,
      ]);
      assert.equal(grant.code, 0, grant.stderr);
      const installed = await run(['token', 'install', '--token', token, '--grant', grantFile]);
      assert.equal(installed.code, 0, installed.stderr);
      assert.match(installed.stdout, /installed: news/);
    }
  });

  after(() => {
    bed?.down();
    hsm?.remove();
    rmSync(directory, { recursive: true, force: true });
  });

  it('entitled tokens decode the file intact; no token, or no grant, decodes nothing and says why; the wire holds no plaintext', async () => {
    const group = '239.10.0.9:5010';
    const capture = join(directory, 'capture.bin');
    const sniffer = bed.spawn('rt3', 'socat', [
      '-d',
      '-d',
      '-u',
      'UDP4-RECV:5010,ip-add-membership=239.10.0.9:eth0',
      `CREATE:${capture}`,
    ]);
    await sniffer.waitFor(/starting data transfer loop/);
    const outputs = { rx1: join(directory, 'rx1.out'), rx2: join(directory, 'rx2.out') };
    const rx1 = receiveOn(bed, 'rx1', group, [
      '--out',
      outputs.rx1,
      '--timeout',
      '15',
      '--token',
      join(directory, 'rx1.token'),
    ]);
    const rx2 = receiveOn(bed, 'rx2', group, [
      '--out',
      outputs.rx2,
      '--timeout',
      '15',
      '--token',
      'pkcs11:rx2-token',
    ]);
    const unentitled = receiveOn(bed, 'rt1', group, [
      '--out',
      join(directory, 'rt1.out'),
      '--timeout',
      '15',
      '--token',
      join(directory, 'rt1.token'),
    ]);
    const plain = receiveOn(bed, 'rt2', group, ['--out', join(directory, 'rt2.out'), '--timeout', '15']);
    await Promise.all([rx1, rx2, unentitled, plain].map((receiver) => receiver.waitFor(/joined/)));
    const sender = sendFrom(bed, group, [
      '--file',
      file,
      '--rate',
      '50M',
      '--restricted',
      '--service',
      'news',
      '--service-key-file',
      join(keys(), 'news.key'),
      '--source-key',
      join(keys(), 'source.pem'),
    ]);
    const sent = await sender.finished;
    assert.equal(sent.code, 0, sent.stderr);
    for (const [name, receiver] of [
      ['rx1', rx1],
      ['rx2', rx2],
    ] as const) {
      const result = await receiver.finished;
      assert.equal(result.code, 0, `${name}: ${result.stderr}`);
      assert.match(result.stderr, /received session "film.bin" whole: 2143 packets, 3.0 MB .*SHA-256 ok/);
      assert.equal(sha256(readFileSync(outputs[name])), sha256(fileBytes));
    }
    const refused = await unentitled.finished;
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /not entitled to news/);
    assert.equal(readFileSync(join(directory, 'rt1.out')).length, 0);
    const noToken = await plain.finished;
    assert.equal(noToken.code, 1, noToken.stderr);
    assert.match(
      noToken.stderr,
      /2143 encrypted packets not decoded: the session is restricted, receive it with --token/,
    );
    assert.equal(readFileSync(join(directory, 'rt2.out')).length, 0);
    sniffer.child.kill('SIGTERM');
    await sniffer.finished;
    const wire = readFileSync(capture);
    assert.ok(wire.length > fileBytes.length, `the capture holds ${wire.length} bytes`);
    for (let at = 0; at + 16 <= fileBytes.length; at += 9_973) {
      assert.equal(
        wire.indexOf(fileBytes.subarray(at, at + 16)),
        -1,
        `plaintext at ${at} travelled in clear`,
      );
    }
  });
});
