import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  createTestbed,
  type HostProcess,
  hostAddress,
  receiveOn,
  retransmitAt,
  sendFrom,
  sha256,
  startRepair,
  startRetransmit,
  stop,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';
import { eventually, waitUntil } from '../helpers/wait.js';

interface RetransmitStatusJson {
  peerFetch: { fetchedPackets: number; fetches: number };
  sessions: Array<{
    missingPackets: number;
    receivedPackets: number;
    fetchedPackets: number;
    peers: Array<{ missing: number; received: number }>;
  }>;
}

/**
 * Retransmit servers that fill their own holes (issue 11): a retransmit server that misses part of
 * a session reports it, and fetches what it missed from its peer; a source of last resort repairs
 * a file when there is no retransmit server at all.
 */
describe('retransmit servers that fill their own holes, on the namespace test bed', testbedSkip(), () => {
  let bed: Testbed;
  let directory: string;
  let file: string;
  let fileSha: string;
  const secret = () => join(directory, 'secret');

  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-edge-'));
    writeFileSync(secret(), 'e2e operator secret for control messages\n');
    file = join(directory, 'payload.bin');
    const bytes = randomBytes(8 * 1000 * 1000);
    writeFileSync(file, bytes);
    fileSha = sha256(bytes);
  });

  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  const status = <T>(host: string, port: number): T =>
    JSON.parse(bed.control('status', host, `http://127.0.0.1:${port}/status`)) as T;

  it('a retransmit server that misses a stretch reports it in its status and in QUALITY, and fills it from its peer: the repair server gets everything', async () => {
    const port = 5300;
    const s1 = `239.31.0.1:${port}`;
    const s2 = `239.31.0.2:${port + 1}`;
    const processes: HostProcess[] = [];
    try {
      // rt1 is the only retransmit server the repair server knows; rt2 is its peer and holds all.
      const rt1 = startRetransmit(bed, 'rt1', s1, secret(), [
        '--peer',
        retransmitAt('rt2'),
        '--election-loss',
        '100',
        '--status',
        '127.0.0.1:9101',
      ]);
      const rt2 = startRetransmit(bed, 'rt2', s1, secret(), [
        '--peer',
        retransmitAt('rt1'),
        '--election-loss',
        '100',
        '--status',
        '127.0.0.1:9101',
      ]);
      const repair = startRepair(bed, 'rep', {
        s1,
        emit: s2,
        secret: secret(),
        retransmit: [retransmitAt('rt1')],
        mode: ['--reliable', '--status', '127.0.0.1:9100'],
      });
      const output = join(directory, `s2-${port}.bin`);
      const receiver = receiveOn(bed, 'rx1', s2, ['--out', output, '--timeout', '60']);
      processes.push(rt1, rt2, repair, receiver);
      await Promise.all([
        rt1.waitFor(/listening on/),
        rt2.waitFor(/listening on/),
        repair.waitFor(/listening on/),
        receiver.waitFor(/joined/),
      ]);
      // Loss at the repair server throughout; a stretch of the session lost at rt1 and at the repair
      // server alike (so the repair server asks rt1 for what rt1 missed): sequences 500-899 of the
      // session's 5,700 packets, dropped by their sequence, so the stretch is the same however
      // slowly a loaded host reads (it was switched on and off by time, and a source that had
      // finished before the switch left no stretch at all).
      bed.control('loss', 'rep', '5', `${port}/data`);
      bed.control('drop', 'rt1', 'on', `${port}/data/500-899`);
      bed.control('drop', 'rep', 'on', `${port}/data/500-899`);
      const sender = sendFrom(bed, s1, ['--file', file, '--rate', '10M', '--first-sequence', '0']);
      const sent = await sender.finished;
      assert.equal(sent.code, 0, sent.stderr);
      const received = await receiver.finished;
      const rt1Seen = JSON.stringify(status<RetransmitStatusJson>('rt1', 9101));
      assert.equal(
        received.code,
        0,
        `${received.stderr}\nrep: ${bed.control('status', 'rep', 'http://127.0.0.1:9100/status')}\nrt1: ${rt1Seen}`,
      );
      assert.equal(sha256(readFileSync(output)), fileSha, 'the receiver has the file, byte for byte');
      const droppedAtRt1 = Number(bed.control('dropped', 'rt1') || 0);
      assert.equal(droppedAtRt1, 400, 'nftables dropped the stretch 500-899 at rt1');
      const repairStatus = status<{ unrecoverable: number; notHeldReceived: number }>('rep', 9100);
      assert.equal(repairStatus.unrecoverable, 0, JSON.stringify(repairStatus));
      // rt1's meter: at least what nftables dropped (its own socket's drops may add to it).
      const rt1Missing = () => status<RetransmitStatusJson>('rt1', 9101).sessions[0]?.missingPackets ?? 0;
      assert.ok(
        await eventually(() => rt1Missing() >= droppedAtRt1, 10_000),
        `rt1's status counts ${rt1Missing()} missing of the ${droppedAtRt1} nftables dropped: ${JSON.stringify(status<RetransmitStatusJson>('rt1', 9101).sessions[0])}`,
      );
      const rt1Status = status<RetransmitStatusJson>('rt1', 9101);
      assert.ok(rt1Status.peerFetch.fetchedPackets > 0, JSON.stringify(rt1Status.peerFetch));
      // ... and what it told its peer in QUALITY.
      await waitUntil(
        "rt2 heard rt1's loss in QUALITY",
        () =>
          (status<RetransmitStatusJson>('rt2', 9101).sessions[0]?.peers.reduce(
            (sum, p) => sum + p.missing,
            0,
          ) ?? 0) >= droppedAtRt1,
        10_000,
      );
      const rt2Status = status<RetransmitStatusJson>('rt2', 9101);
      assert.equal(rt2Status.sessions[0]?.missingPackets, 0, 'rt2 missed nothing');
    } finally {
      bed.control('clear', 'rep');
      bed.control('clear', 'rt1');
      for (const process of processes) {
        await stop(process);
      }
    }
  });

  it('a file sent with --retransmit-listen and no retransmit server is repaired whole at two repair servers at 10 % loss', async () => {
    const port = 5310;
    const s1 = `239.31.1.1:${port}`;
    const repairHosts = ['rep', 'rt3'];
    const processes: HostProcess[] = [];
    try {
      const repairs = repairHosts.map((host, i) =>
        startRepair(bed, host, {
          s1,
          emit: `239.31.1.${10 + i}:${port + 1}`,
          secret: secret(),
          retransmit: [],
          mode: ['--reliable', '--status', '127.0.0.1:9100'],
        }),
      );
      const outputs = repairHosts.map((host) => join(directory, `s2-${port}-${host}.bin`));
      // Each repaired copy S2 is read on another edge host.
      const receivers = ['rx1', 'rx2'].map((host, i) =>
        receiveOn(bed, host, `239.31.1.${10 + i}:${port + 1}`, [
          '--out',
          outputs[i] as string,
          '--timeout',
          '60',
        ]),
      );
      processes.push(...repairs, ...receivers);
      await Promise.all([
        ...repairs.map((r) => r.waitFor(/listening on/)),
        ...receivers.map((r) => r.waitFor(/joined/)),
      ]);
      for (const host of repairHosts) {
        bed.control('loss', host, '10', `${port}/data`);
      }
      const sender = sendFrom(bed, s1, [
        '--file',
        file,
        '--rate',
        '40M',
        '--retransmit-listen',
        `${hostAddress.src}:7200`,
        '--secret-file',
        secret(),
        '--announce-to',
        repairHosts.map((host) => `${hostAddress[host]}:7100`).join(','),
        '--json',
      ]);
      processes.push(sender);
      for (const [i, receiver] of receivers.entries()) {
        const result = await receiver.finished;
        assert.equal(result.code, 0, `${repairHosts[i]}: ${result.stderr}`);
        assert.equal(sha256(readFileSync(outputs[i] as string)), fileSha, `${repairHosts[i]} has the file`);
      }
      const sent = await sender.finished;
      assert.equal(sent.code, 0, sent.stderr);
      const summary = JSON.parse(sent.stderr.trim().split('\n').pop() ?? '{}') as {
        lastResort?: { repairsSent: number; nacksReceived: number };
      };
      assert.ok((summary.lastResort?.repairsSent ?? 0) > 0, sent.stdout);
      for (const host of repairHosts) {
        const dropped = Number(bed.control('dropped', host) || 0);
        assert.ok(dropped > 100, `nftables dropped only ${dropped} packets at ${host}`);
        const repairStatus = status<{ unrecoverable: number; repairsReceived: number }>(host, 9100);
        assert.equal(repairStatus.unrecoverable, 0, JSON.stringify(repairStatus));
        assert.ok(repairStatus.repairsReceived >= dropped, `${host}: ${JSON.stringify(repairStatus)}`);
      }
    } finally {
      for (const host of repairHosts) {
        bed.control('clear', host);
      }
      for (const process of processes) {
        await stop(process);
      }
    }
  });
});
