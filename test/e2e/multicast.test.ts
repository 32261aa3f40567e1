import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTestbed, receiveOn, sendFrom, sha256, type Testbed, testbedSkip } from '../helpers/testbed.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe(
  'gatecast across a routed multicast network (namespaces, real smcrouted)',
  testbedSkip(['socat', 'ffmpeg', 'ffprobe']),
  () => {
    let bed: Testbed;
    let directory: string;
    let file: string;
    let fileSha: string;

    before(() => {
      bed = createTestbed();
      directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-'));
      file = join(directory, 'payload.bin');
      const bytes = randomBytes(20 * 1000 * 1000);
      writeFileSync(file, bytes);
      fileSha = sha256(bytes);
    });

    after(() => {
      bed?.down();
      rmSync(directory, { recursive: true, force: true });
    });

    for (const [family, group] of [
      ['IPv4', '239.10.0.1:5000'],
      ['IPv6', '[ff3e::10]:5002'],
    ] as const) {
      it(`delivers a 20 MB file to two receivers behind the router over ${family}, hashes equal`, async () => {
        const outputs = ['rx1', 'rx2'].map((host) => join(directory, `${family}-${host}.bin`));
        const receivers = ['rx1', 'rx2'].map((host, i) =>
          receiveOn(bed, host, group, ['--out', outputs[i] as string, '--timeout', '15']),
        );
        await Promise.all(receivers.map((receiver) => receiver.waitFor(/joined/)));
        const sender = sendFrom(bed, group, ['--file', file, '--rate', '200M']);
        const sent = await sender.finished;
        assert.equal(sent.code, 0, sent.stderr);
        assert.match(sent.stderr, /sent session "payload.bin" .*: 14286 packets, 20.0 MB/);
        for (const [i, receiver] of receivers.entries()) {
          const result = await receiver.finished;
          assert.equal(result.code, 0, result.stderr);
          assert.match(
            result.stderr,
            /received session "payload.bin" whole: 14286 packets, 20.0 MB .*SHA-256 ok/,
          );
          assert.equal(sha256(readFileSync(outputs[i] as string)), fileSha);
        }
      });
    }

    it('carries the ticker to a receiver, every quote in order', async () => {
      const receiver = receiveOn(bed, 'rx1', '239.10.0.2:5004', ['--timeout', '10']);
      await receiver.waitFor(/joined/);
      const sender = sendFrom(bed, '239.10.0.2:5004', [
        '--ticker',
        '--ticks',
        '200',
        '--ticks-per-second',
        '100',
      ]);
      assert.equal((await sender.finished).code, 0);
      const result = await receiver.finished;
      assert.equal(result.code, 0, result.stderr);
      const numbers = result.stdout
        .trim()
        .split('\n')
        .map((line) => Number(line.split(' ')[0]));
      assert.deepEqual(
        numbers,
        Array.from({ length: 200 }, (_, i) => i + 1),
      );
      assert.match(result.stdout.split('\n')[0] ?? '', /^1 [A-Z]{4} \d+\.\d\d [+-]\d\.\d\d \d{4}-\d\d-\d\dT/);
    });

    it('relays a UDP stream sent by socat, byte for byte', async () => {
      const input = join(directory, 'socat.bin');
      const bytes = randomBytes(1316 * 700 + 99);
      writeFileSync(input, bytes);
      const output = join(directory, 'socat-out.bin');
      const receiver = receiveOn(bed, 'rx2', '239.10.0.3:5006', ['--out', output]);
      await receiver.waitFor(/joined/);
      const relay = sendFrom(bed, '239.10.0.3:5006', ['--relay', '127.0.0.1:6000']);
      await sleep(1500);
      const socat = bed.spawn('src', 'socat', [
        '-u',
        '-b',
        '1316',
        `FILE:${input}`,
        'UDP4-SENDTO:127.0.0.1:6000',
      ]);
      assert.equal((await socat.finished).code, 0);
      await sleep(500);
      relay.child.kill('SIGTERM');
      const relayed = await relay.finished;
      assert.equal(relayed.code, 0, relayed.stderr);
      assert.match(relayed.stderr, /701 packets/);
      const result = await receiver.finished;
      assert.equal(result.code, 0, result.stderr);
      assert.equal(sha256(readFileSync(output)), sha256(bytes));
    });

    it('relays MPEG-TS from ffmpeg that ffprobe then decodes whole', async () => {
      const output = join(directory, 'ffmpeg-out.ts');
      const receiver = receiveOn(bed, 'rx1', '239.10.0.4:5008', ['--out', output]);
      await receiver.waitFor(/joined/);
      const relay = sendFrom(bed, '239.10.0.4:5008', ['--relay', '127.0.0.1:6002']);
      await sleep(1500);
      const ffmpeg = bed.spawn('src', 'ffmpeg', [
        '-hide_banner',
        '-loglevel',
        'error',
        '-f',
        'lavfi',
        '-i',
        'testsrc=size=320x240:rate=25',
        '-t',
        '2',
        '-c:v',
        'mpeg2video',
        '-f',
        'mpegts',
        'udp://127.0.0.1:6002?pkt_size=1316',
      ]);
      assert.equal((await ffmpeg.finished).code, 0);
      await sleep(500);
      relay.child.kill('SIGTERM');
      assert.equal((await relay.finished).code, 0);
      const result = await receiver.finished;
      assert.equal(result.code, 0, result.stderr);
      const probe = bed.spawn('rx1', 'ffprobe', [
        '-v',
        'error',
        '-count_frames',
        '-select_streams',
        'v:0',
        '-show_entries',
        'stream=nb_read_frames',
        '-of',
        'csv=p=0',
        output,
      ]);
      const probed = await probe.finished;
      assert.equal(probed.code, 0, probed.stderr);
      assert.equal(/^(\d+)/.exec(probed.stdout.trim())?.[1], '50');
      assert.equal(probed.stderr.trim(), '');
    });
  },
);

describe('source-specific joins (SSM) across the router', testbedSkip(), () => {
  let bed: Testbed;
  before(() => {
    bed = createTestbed();
  });
  after(() => bed?.down());

  for (const [family, group, source, wrongSource] of [
    ['IPv4', '232.1.1.1:5020', '10.200.1.10', '10.200.1.99'],
    ['IPv6', '[ff3e::8000:1]:5022', 'fd00:200:1::10', 'fd00:200:1::99'],
  ] as const) {
    it(`${family}: a receiver joined to the sender gets the session; one joined to another source gets nothing`, async () => {
      const right = receiveOn(bed, 'rx1', group, ['--source', source, '--timeout', '4']);
      const wrong = receiveOn(bed, 'rx2', group, ['--source', wrongSource, '--timeout', '4']);
      await Promise.all([right.waitFor(/joined/), wrong.waitFor(/joined/)]);
      const sender = sendFrom(bed, group, ['--ticker', '--ticks', '50', '--ticks-per-second', '100']);
      assert.equal((await sender.finished).code, 0);
      const rightResult = await right.finished;
      assert.equal(rightResult.code, 0, rightResult.stderr);
      assert.equal(rightResult.stdout.trim().split('\n').length, 50);
      const wrongResult = await wrong.finished;
      assert.equal(wrongResult.code, 1);
      assert.equal(wrongResult.stdout, '');
      assert.match(wrongResult.stderr, /timed out/);
    });
  }
});
