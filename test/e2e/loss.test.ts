import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTestbed, receiveOn, sendFrom, sha256, type Testbed, testbedSkip } from '../helpers/testbed.js';

describe('the receiver tells the truth about loss injected with nftables', testbedSkip(), () => {
  let bed: Testbed;
  let directory: string;
  let file: string;
  let fileSha: string;

  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-loss-'));
    file = join(directory, 'payload.bin');
    const bytes = randomBytes(5 * 1000 * 1000);
    writeFileSync(file, bytes);
    fileSha = sha256(bytes);
  });

  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  /** Sends the file to rx1 (lossy) and rx2 (clean); returns rx1's result and nftables' count. */
  async function sendThroughLoss(group: string, lose: () => Promise<void>, sendArgs: string[] = []) {
    const lossy = receiveOn(bed, 'rx1', group, ['--out', join(directory, 'rx1'), '--json']);
    const clean = receiveOn(bed, 'rx2', group, ['--out', join(directory, 'rx2')]);
    await Promise.all([lossy.waitFor(/joined/), clean.waitFor(/joined/)]);
    const sender = sendFrom(bed, group, ['--file', file, '--rate', '20M', ...sendArgs]);
    await lose();
    assert.equal((await sender.finished).code, 0);
    const lossyResult = await lossy.finished;
    const cleanResult = await clean.finished;
    assert.equal(cleanResult.code, 0, cleanResult.stderr);
    assert.equal(sha256(readFileSync(join(directory, 'rx2'))), fileSha);
    const dropped = Number(bed.control('dropped', 'rx1').trim());
    bed.control('clear', 'rx1');
    const summary = JSON.parse(lossyResult.stderr.trim().split('\n').pop() ?? '{}') as {
      outcome: string;
      packetsMissing: number;
      packetsDelivered: number;
    };
    return { code: lossyResult.code, summary, dropped };
  }

  it('random 5 % loss: exit 1, and exactly the packets nftables dropped are reported missing', async () => {
    const port = 5010;
    bed.control('loss', 'rx1', '5', `${port}/data`);
    const { code, summary, dropped } = await sendThroughLoss(`239.20.0.1:${port}`, async () => {});
    assert.equal(code, 1);
    assert.equal(summary.outcome, 'incomplete');
    assert.ok(dropped > 100, `nftables dropped only ${dropped} of 3572 packets`);
    assert.equal(summary.packetsMissing, dropped);
    assert.equal(summary.packetsDelivered + dropped, 3572);
  });

  it('burst loss (four stretches of the session dropped by nftables): every packet of every burst is counted', async () => {
    const port = 5012;
    // Bursts by sequence, not by time: a drop rule switched on and off on a timer dropped nothing
    // on a loaded host, where the source could finish before the first switch.
    const bursts = [
      [500, 529],
      [1200, 1259],
      [2000, 2039],
      [3000, 3099],
    ] as const;
    for (const [first, last] of bursts) {
      bed.control('drop', 'rx1', 'on', `${port}/data/${first}-${last}`);
    }
    const { code, summary, dropped } = await sendThroughLoss(`239.20.0.2:${port}`, async () => {}, [
      '--first-sequence',
      '0',
    ]);
    assert.equal(code, 1);
    assert.equal(
      dropped,
      bursts.reduce((sum, [first, last]) => sum + last - first + 1, 0),
      'nftables dropped every packet of the four bursts',
    );
    assert.equal(summary.packetsMissing, dropped);
    assert.equal(summary.packetsDelivered + dropped, 3572);
  });
});
