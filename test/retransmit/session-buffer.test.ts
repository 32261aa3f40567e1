import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { progressAheadPacketsMax, resyncPacketsMin } from '../../src/limits.js';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { SessionBuffer } from '../../src/retransmit/session-buffer.js';

const bounds = { bytesMax: 1 << 20, ageMs: 60_000 };
const datagram = Buffer.alloc(100);

/** Adds sequences as they arrive, all sent and heard at once (no jitter). */
function hear(buffer: SessionBuffer, sequences: readonly number[]): void {
  for (const sequence of sequences) {
    buffer.add(sequence, datagram, 0, 0, 0);
  }
}

const from = (first: number, count: number) => Array.from({ length: count }, (_, i) => sequenceAdd(first, i));

describe('a retransmit server measures its own reception', () => {
  it('counts the sequences a run skipped, and a late one fills its gap', () => {
    const buffer = new SessionBuffer(1, 1, bounds);
    hear(buffer, [100, 101, 105, 106]);
    assert.deepEqual([buffer.takePeriod().missing], [3]);
    hear(buffer, [102, 107]);
    assert.equal(buffer.takePeriod().missing, 0);
  });

  it('a stray packet far ahead counts no loss; a run of them is a jump the meter follows', () => {
    const buffer = new SessionBuffer(1, 1, bounds);
    hear(buffer, [...from(100, 10), 100 + 2 ** 31 - 5, ...from(110, 10)]);
    assert.equal(buffer.takePeriod().missing, 0);
    hear(buffer, from(1_000_000, resyncPacketsMin + 5));
    assert.equal(buffer.takePeriod().missing, 0, 'the jump is followed, not counted');
    hear(buffer, [1_000_000 + resyncPacketsMin + 6]);
    assert.equal(buffer.takePeriod().missing, 1, 'and measured from there');
  });

  it('a forged stray that came first does not make the next stray near it count as loss (found.md #9)', () => {
    // Seen in the simulator (seed 3387): the first DATA of a restarted run was a forgery 2^31
    // away; a second one 301 further on counted 300 packets lost, every retransmit server
    // measured 89 % loss, all withdrew from the election at once and none buffered for a second.
    const buffer = new SessionBuffer(1, 1, bounds);
    const genuine = 0xffff_ff00;
    const stray = sequenceAdd(genuine, 2 ** 31 - 350); // the genuine packets are behind it
    hear(buffer, [stray, ...from(genuine, 40), sequenceAdd(stray, 301), ...from(genuine + 40, 20)]);
    const period = buffer.takePeriod();
    assert.deepEqual([period.received, period.missing, period.lossPpm], [62, 0, 0]);
  });
});

describe('a retransmit server that hears the HEARTBEATs but not the DATA counts the DATA as missing', () => {
  it('an MTU black hole (large DATA dropped, small HEARTBEATs pass) is loss, not 0 %', () => {
    // Seen trying it: with every DATA after 109 dropped on its input and the HEARTBEATs passing,
    // a retransmit server reported received 0, missing 0, loss 0.00 % and stayed elected.
    const buffer = new SessionBuffer(1, 1, bounds);
    hear(buffer, from(100, 10));
    buffer.takePeriod();
    buffer.noteProgress(600); // the source's HEARTBEAT: 110-599 were sent
    const blind = buffer.takePeriod();
    assert.deepEqual([blind.received, blind.missing, blind.lossPpm], [0, 490, 1_000_000]);
    buffer.noteProgress(600); // the same claim again counts nothing twice
    assert.equal(buffer.takePeriod().missing, 0);
    hear(buffer, [600, 601, 603]); // DATA again: measured from the claim, not from 109
    assert.deepEqual([buffer.takePeriod().missing], [1]);
  });

  it('a packet counted missing from a claim that arrives after all fills its gap', () => {
    const buffer = new SessionBuffer(1, 1, bounds);
    hear(buffer, from(100, 10));
    buffer.noteProgress(115);
    hear(buffer, [112]); // late, and already counted missing at the claim
    const period = buffer.takePeriod();
    assert.deepEqual([period.received, period.missing], [11, 4]);
  });

  it('a claim made about a stray that a jump then left behind counts nothing', () => {
    const buffer = new SessionBuffer(1, 1, bounds);
    const stray = 100 + 2 ** 31 - 5;
    hear(buffer, [stray]); // a forged first DATA
    buffer.noteProgress(sequenceAdd(stray, progressAheadPacketsMax)); // and a forged HEARTBEAT near it
    hear(buffer, from(100, resyncPacketsMin + 5)); // the genuine run, far behind: the meter follows it
    assert.equal(buffer.takePeriod().missing, 0);
  });
});

describe('a retransmit server that re-enters the election does not count what it did not listen to', () => {
  it('the span sent while it was withdrawn is not loss (it came back counting that span as missing: 4,890 of 4,901)', () => {
    const buffer = new SessionBuffer(1, 1, bounds);
    hear(buffer, from(100, 10));
    buffer.takePeriod();
    buffer.restartMeter(); // re-entered: joined the group again
    buffer.noteProgress(4_000); // a HEARTBEAT before the first DATA claims nothing of the gap
    hear(buffer, [...from(5_000, 10), 5_011]);
    const back = buffer.takePeriod();
    assert.deepEqual([back.received, back.missing], [11, 1]);
  });
});

describe('how far a run is known to have reached (peer fetch asks no further)', () => {
  it('up to the newest DATA heard, and a HEARTBEAT or END within progressAheadPacketsMax beyond it', () => {
    const buffer = new SessionBuffer(1, 1, bounds);
    assert.equal(buffer.reached(0), false, 'nothing heard: nothing known');
    hear(buffer, [0xffff_fffe, 0xffff_ffff, 0, 1]);
    assert.equal(buffer.reached(0xffff_fff0), true, 'before what was heard (across the wrap)');
    assert.equal(buffer.reached(1), true);
    assert.equal(buffer.reached(2), false, 'a paused ticker: 2 may not exist yet');
    buffer.noteProgress(5); // a HEARTBEAT: the next DATA will be 5, so 2-4 exist
    assert.equal(buffer.reached(4), true);
    assert.equal(buffer.reached(5), false);
    buffer.noteProgress(3); // an older claim takes nothing back
    assert.equal(buffer.reached(4), true);
    buffer.noteProgress(sequenceAdd(1, progressAheadPacketsMax + 100)); // too far to believe
    assert.equal(buffer.reached(10), false);
  });
});
