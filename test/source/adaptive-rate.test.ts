import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { describe, it } from 'node:test';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import {
  adaptBacklogPacketsHigh,
  adaptRateDecreaseHoldMs,
  adaptRateIncreaseIntervalMs,
  adaptReportStaleMs,
} from '../../src/limits.js';
import { systemRuntime } from '../../src/net/runtime.js';
import { encodeFeedback, type FeedbackBody, type PeerEndpoint } from '../../src/protocol/control.js';
import { headerBytes } from '../../src/protocol/packet.js';
import { AdaptiveRate } from '../../src/source/adaptive-rate.js';
import { startLastResort } from '../../src/source/last-resort.js';
import { waitUntil } from '../helpers/wait.js';

const ceiling = 100_000_000;
const floor = 10_000_000;
const clear: FeedbackBody = {
  missing: 0,
  holding: 0,
  unrecoverable: 0,
  socketDrops: 0,
  received: 0,
  nacked: 0,
};

/** A rate at ceiling, with the time it was made at (a fake clock: plain numbers). */
function fresh(startMs = 1_000): AdaptiveRate {
  return new AdaptiveRate({ ceilingBitsPerSecond: ceiling, floorBitsPerSecond: floor }, startMs);
}

describe('adaptive rate (AIMD on repair servers’ FEEDBACK)', () => {
  it('starts at the ceiling and stays there while reports are clear', () => {
    const rate = fresh();
    for (let t = 1_000; t < 5_000; t += 200) {
      rate.report(7, { ...clear, received: t }, t);
      rate.update(t + 100);
      assert.equal(rate.bitsPerSecond, ceiling);
    }
    assert.equal(rate.stats().decreases, 0);
  });

  it('goes down on a reported backlog, once per hold time, and back up to the ceiling when clear', () => {
    const rate = fresh();
    rate.report(7, clear, 1_000);
    rate.report(7, { ...clear, missing: adaptBacklogPacketsHigh }, 1_200);
    assert.equal(rate.bitsPerSecond, ceiling * 0.7);
    // The same episode seen again within the hold time (another server, the next report): one cut.
    rate.report(8, { ...clear, missing: adaptBacklogPacketsHigh + 5 }, 1_200 + adaptRateDecreaseHoldMs - 1);
    assert.equal(rate.bitsPerSecond, ceiling * 0.7);
    rate.report(7, { ...clear, missing: adaptBacklogPacketsHigh }, 1_200 + adaptRateDecreaseHoldMs);
    assert.equal(rate.bitsPerSecond, ceiling * 0.49);
    assert.deepEqual(rate.stats().decreaseReasons, { backlog: 2 });
    // Clear from now on: no step until the hold time has passed since the last trouble.
    const troubleAt = 1_200 + adaptRateDecreaseHoldMs;
    rate.report(7, clear, troubleAt + 100);
    rate.report(8, clear, troubleAt + 100);
    rate.update(troubleAt + adaptRateDecreaseHoldMs - 1);
    assert.equal(rate.bitsPerSecond, ceiling * 0.49);
    let t = troubleAt + adaptRateDecreaseHoldMs;
    let previous = rate.bitsPerSecond;
    for (; t < troubleAt + 60_000 && rate.bitsPerSecond < ceiling; t += adaptRateIncreaseIntervalMs) {
      rate.report(7, clear, t);
      rate.report(8, clear, t);
      assert.ok(rate.bitsPerSecond >= previous, 'a clear path never lowers the rate');
      previous = rate.bitsPerSecond;
    }
    assert.equal(rate.bitsPerSecond, ceiling);
    assert.ok(t - troubleAt < 5_000, `back at the ceiling after ${t - troubleAt} ms`);
    rate.update(t + 10_000);
    assert.equal(rate.bitsPerSecond, ceiling, 'never above the ceiling');
  });

  it('never goes below the floor, however long the trouble lasts', () => {
    const rate = fresh();
    rate.report(7, clear, 1_000);
    for (let i = 1; i <= 100; i++) {
      rate.report(7, { ...clear, unrecoverable: i }, 1_000 + i * adaptRateDecreaseHoldMs);
      assert.ok(rate.bitsPerSecond >= floor);
    }
    assert.equal(rate.bitsPerSecond, floor);
    assert.equal(rate.stats().lowestBitsPerSecond, floor);
    assert.equal(rate.stats().decreaseReasons.unrecoverable, rate.stats().decreases);
  });

  it('takes a server’s first report as its baseline: counts of earlier runs cut nothing', () => {
    const rate = fresh();
    rate.report(7, { ...clear, unrecoverable: 500, socketDrops: 90 }, 1_000);
    assert.equal(rate.bitsPerSecond, ceiling);
    rate.report(7, { ...clear, unrecoverable: 500, socketDrops: 90 }, 1_200);
    assert.equal(rate.bitsPerSecond, ceiling);
    rate.report(7, { ...clear, unrecoverable: 500, socketDrops: 91 }, 1_400);
    assert.equal(rate.bitsPerSecond, ceiling * 0.7, 'a kernel drop at the edge is trouble');
    assert.deepEqual(rate.stats().decreaseReasons, { 'socket-drops': 1 });
  });

  it('goes down when a server NACKs more than it receives (its repairs do not get through), not at plain loss', () => {
    const rate = fresh();
    rate.report(7, { ...clear, received: 10_000, nacked: 2_000 }, 1_000);
    // 20 % loss: about a quarter as many NACKed as received, for a while: no cut.
    rate.report(7, { ...clear, received: 11_400, nacked: 2_360 }, 1_200);
    rate.report(7, { ...clear, received: 12_800, nacked: 2_720 }, 1_400);
    assert.equal(rate.bitsPerSecond, ceiling);
    // A narrow edge: 60 packets in, 500 asked for again.
    rate.report(7, { ...clear, received: 12_860, nacked: 3_220 }, 1_600);
    assert.equal(rate.bitsPerSecond, ceiling * 0.7);
    assert.deepEqual(rate.stats().decreaseReasons, { 'nacks-exceed-data': 1 });
  });

  it('does not go down for NACKs above data while the backlog shrinks (repairs get through after a cut)', () => {
    const rate = fresh();
    rate.report(7, { ...clear, missing: 400, received: 10_000, nacked: 2_000 }, 1_000);
    // Fewer packets arrive after a cut while the gaps found before are asked for: 300 in, 450
    // asked for, and the backlog falls from 400 to 200, then to 20.
    rate.report(7, { ...clear, missing: 200, received: 10_300, nacked: 2_450 }, 1_200);
    rate.report(7, { ...clear, missing: 20, received: 10_600, nacked: 2_900 }, 1_400);
    assert.equal(rate.bitsPerSecond, ceiling);
    assert.deepEqual(rate.stats().decreaseReasons, {});
    // The same NACKs with a backlog that stays: the repairs do not get through.
    rate.report(7, { ...clear, missing: 20, received: 10_900, nacked: 3_350 }, 1_600);
    assert.equal(rate.bitsPerSecond, ceiling * 0.7);
    assert.deepEqual(rate.stats().decreaseReasons, { 'nacks-exceed-data': 1 });
  });

  it('a repair server that received more than 2^32 packets since it started is not read as NACKing more than it receives', () => {
    // A repair daemon at 17,000 packets/s passes 2^32 received in 70 hours: its received count
    // was sent as 2^32 - 1 from then on, so every report read 0 received against 1,000 NACKed.
    const wire = (body: FeedbackBody): FeedbackBody => {
      const encoded = encodeFeedback({ sessionId: 1, incarnation: 1, sequence: 0, timestampUs: 0 }, body);
      const field = (i: number) => encoded.readUInt32BE(headerBytes + i * 4);
      return { ...body, received: field(4), nacked: field(5) };
    };
    const rate = fresh();
    const start = 2 ** 32 - 5_000;
    // 10 % loss: 10,000 packets in and about 1,100 NACKed per report, the backlog steady at 100.
    for (let i = 0; i < 10; i++) {
      const at = 1_000 + i * 200;
      rate.report(
        7,
        wire({ ...clear, missing: 100, received: start + i * 10_000, nacked: start + i * 1_100 }),
        at,
      );
    }
    assert.deepEqual(rate.stats().decreaseReasons, {});
    assert.equal(rate.bitsPerSecond, ceiling);
  });

  it('holds the rate while a server heard lately still has a backlog, and not for one gone silent', () => {
    const rate = fresh();
    rate.report(7, clear, 1_000);
    rate.report(7, { ...clear, missing: adaptBacklogPacketsHigh }, 1_100);
    const cut = rate.bitsPerSecond;
    rate.report(7, { ...clear, missing: 1_000 }, 1_200); // below the high mark, above the low one
    rate.update(1_100 + adaptRateDecreaseHoldMs + 500);
    assert.equal(rate.bitsPerSecond, cut, 'no climb while the backlog drains');
    // The server falls silent (its run ended): it no longer holds the rate down.
    rate.update(1_200 + adaptReportStaleMs + 1);
    rate.update(1_200 + adaptReportStaleMs + 1 + adaptRateIncreaseIntervalMs);
    assert.ok(rate.bitsPerSecond > cut);
  });
});

describe('FEEDBACK at a source of last resort', () => {
  const key = controlKey(Buffer.from('the operator secret shared by servers'));
  const forger = controlKey(Buffer.from('a secret the operator never gave out'));

  it('takes authenticated FEEDBACK of its own run and drops forged, replayed and other runs’ FEEDBACK', async () => {
    const run = { sessionId: 4242, incarnation: 77 };
    const reports: Array<[number, FeedbackBody]> = [];
    const lastResort = await startLastResort(
      {
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [key],
        bufferBytesMax: 1 << 20,
        repairRateBitsPerSecond: 10_000_000,
        announceTo: [],
        periodMs: 60_000,
      },
      run,
      systemRuntime,
      (reporterId, report) => reports.push([reporterId, report]),
    );
    const socket = createSocket('udp4');
    try {
      await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
      const to: PeerEndpoint = {
        address: '127.0.0.1',
        port: Number(lastResort.stats().listen.split(':')[1]),
      };
      const send = (datagram: Buffer) => socket.send(datagram, to.port, to.address);
      const fields = { ...run, sequence: 5, timestampUs: Date.now() * 1000 };
      const trouble = { ...clear, unrecoverable: 9, missing: 4096 };
      const honest = new ControlChannel([key]);
      const impostor = new ControlChannel([forger]);
      send(impostor.seal(encodeFeedback(fields, trouble), to)); // forged: a key we do not hold
      const tampered = honest.seal(encodeFeedback(fields, clear), to);
      tampered[32] = 0xff; // a changed count under the tag
      send(tampered);
      send(honest.seal(encodeFeedback({ ...fields, incarnation: 78 }, trouble), to)); // another run
      const genuine = honest.seal(encodeFeedback(fields, trouble), to);
      send(genuine);
      send(genuine); // replayed
      await waitUntil(
        'the five FEEDBACK datagrams to be taken or dropped',
        () => {
          const { dropped } = lastResort.stats();
          return reports.length + Object.values(dropped).reduce((sum, count) => sum + count, 0) >= 5;
        },
        5_000,
      );
      const stats = lastResort.stats();
      assert.equal(reports.length, 1, 'only the genuine FEEDBACK of this run is taken');
      assert.equal(reports[0]?.[0], honest.senderId);
      assert.equal(reports[0]?.[1].missing, 4096);
      assert.equal(stats.feedbackReceived, 1);
      assert.equal(stats.dropped['feedback-unknown-key'], 1);
      assert.equal(stats.dropped['feedback-bad-tag'], 1);
      assert.equal(stats.dropped['feedback-other-run'], 1);
      assert.equal(stats.dropped['feedback-replayed'], 1);
    } finally {
      socket.close();
      await lastResort.close();
    }
  });
});
