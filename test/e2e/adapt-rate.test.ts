import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  createTestbed,
  type Finished,
  type HostProcess,
  hostAddress,
  receiveOn,
  sendFrom,
  sha256,
  startRepair,
  stop,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';

interface SendSummary {
  adaptiveRate?: {
    reports: number;
    decreases: number;
    lowestBitsPerSecond: number;
    ceilingBitsPerSecond: number;
    floorBitsPerSecond: number;
  };
  lastResort?: { feedbackReceived: number; repairsSent: number };
}

interface RepairStatusJson {
  unrecoverable: number;
  feedbackSent: number;
  repairsReceived: number;
  nackedPackets: number;
  /** Packets of the session that did not arrive on S1 at the edge. */
  gaps: number;
}

/** What one run over the slow edge left: the receiver's exit, the copy, and the counts. */
interface EdgeRun {
  receiver: Finished;
  whole: boolean;
  droppedAtEdge: number;
  summary: SendSummary;
  repair: RepairStatusJson;
}

const ceiling = '40M';
const edgePacketsPerSecond = '300';

/**
 * Rate that adapts (issue 11, item 5): an edge that can take only 300 datagrams a second (nftables
 * drops the rest, DATA and REPAIR alike) behind a source sending a 4 MB file at 40 Mbit/s (about
 * 3,500 datagrams a second; well above the edge's even when the source is starved of CPU). The source is the only retransmit server (`--retransmit-listen`), so
 * the repair server's FEEDBACK goes there. With the adaptive rate (the default for a file) the
 * source slows down and the edge loses less of the session; at the fixed rate it loses most of
 * the file and must fetch it again through the same narrow edge.
 */
describe('a source that slows down for a slow edge, on the namespace test bed', testbedSkip(), () => {
  let bed: Testbed;
  let directory: string;
  let file: string;
  let fileSha: string;
  const secret = () => join(directory, 'secret');

  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-adapt-'));
    writeFileSync(secret(), 'e2e operator secret for control messages\n');
    file = join(directory, 'payload.bin');
    const bytes = randomBytes(4 * 1000 * 1000);
    writeFileSync(file, bytes);
    fileSha = sha256(bytes);
  });

  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  const status = <T>(host: string, port: number): T =>
    JSON.parse(bed.control('status', host, `http://127.0.0.1:${port}/status`)) as T;

  /** One file over the slow edge with the given rate options; bounded by the receiver's timeout. */
  async function overSlowEdge(port: number, rateOptions: string[]): Promise<EdgeRun> {
    const s1 = `239.32.0.1:${port}`;
    const s2 = `239.32.0.2:${port + 1}`;
    const output = join(directory, `s2-${port}.bin`);
    const processes: HostProcess[] = [];
    try {
      const repair = startRepair(bed, 'rep', {
        s1,
        emit: s2,
        secret: secret(),
        retransmit: [],
        mode: ['--reliable', '--status', '127.0.0.1:9100'],
      });
      const receiver = receiveOn(bed, 'rx1', s2, ['--out', output, '--timeout', '20']);
      processes.push(repair, receiver);
      await Promise.all([repair.waitFor(/listening on/), receiver.waitFor(/joined/)]);
      bed.control('limit', 'rep', edgePacketsPerSecond);
      const sender = sendFrom(bed, s1, [
        '--file',
        file,
        '--rate',
        ceiling,
        '--retransmit-listen',
        `${hostAddress.src}:${port + 2}`,
        '--secret-file',
        secret(),
        '--announce-to',
        `${hostAddress.rep}:7100`,
        '--linger',
        '30',
        '--json',
        ...rateOptions,
      ]);
      processes.push(sender);
      const received = await receiver.finished;
      const repairStatus = status<RepairStatusJson>('rep', 9100);
      const droppedAtEdge = Number(bed.control('dropped', 'rep') || 0);
      bed.control('clear', 'rep');
      const sent = await sender.finished;
      assert.equal(sent.code, 0, sent.stderr);
      const summary = JSON.parse(sent.stderr.trim().split('\n').pop() ?? '{}') as SendSummary;
      const whole = received.code === 0 && sha256(readFileSync(output)) === fileSha;
      return { receiver: received, whole, droppedAtEdge, summary, repair: repairStatus };
    } finally {
      bed.control('clear', 'rep');
      for (const process of processes) {
        await stop(process);
      }
    }
  }

  it('with the adaptive rate the file arrives whole and the edge loses less of it than at the fixed rate', async (t) => {
    // The default for a file sent with --retransmit-listen: adaptive, here with a floor of 2M.
    const adaptive = await overSlowEdge(5400, ['--rate-floor', '2M']);
    const fixed = await overSlowEdge(5410, ['--no-adapt-rate']);
    const figures = JSON.stringify({
      adaptive: { ...adaptive, receiver: adaptive.receiver.code },
      fixed: { ...fixed, receiver: fixed.receiver.code },
    });
    t.diagnostic(figures);
    // Adaptive: whole, nothing given up, and the source really went down on the edge's FEEDBACK.
    assert.equal(adaptive.receiver.code, 0, `${adaptive.receiver.stderr}\n${figures}`);
    assert.ok(adaptive.whole, `the receiver has the file, byte for byte: ${figures}`);
    assert.equal(adaptive.repair.unrecoverable, 0, figures);
    assert.ok(adaptive.repair.feedbackSent > 0, figures);
    const rate = adaptive.summary.adaptiveRate;
    assert.ok(rate !== undefined, figures);
    assert.ok((adaptive.summary.lastResort?.feedbackReceived ?? 0) > 0, figures);
    assert.ok(rate.decreases >= 1, figures);
    assert.ok(rate.lowestBitsPerSecond < rate.ceilingBitsPerSecond, figures);
    assert.ok(rate.lowestBitsPerSecond >= rate.floorBitsPerSecond, figures);
    // Fixed: the rate never moved, and the narrow edge lost more of the session on S1 (what it
    // must then fetch again through the same edge).
    assert.equal(fixed.summary.adaptiveRate, undefined, figures);
    assert.ok(fixed.droppedAtEdge > 0, figures);
    assert.ok(adaptive.repair.gaps < fixed.repair.gaps, figures);
  });
});
