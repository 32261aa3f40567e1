/**
 * The receiver writes only the run it locked on (docs/protocol.md, "Session identity"), and no
 * single packet can stall it: regressions of what a receiver used to write while saying "complete".
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseGroup } from '../../src/net/address.js';
import { SessionKind } from '../../src/protocol/packet.js';
import { createReceiver, type ReceiveSummary } from '../../src/receiver/receiver.js';
import { crafter, data, descriptor, end, heartbeat } from '../helpers/craft.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';

const payloadOf = (tag: string, sequence: number) => Buffer.from(`${tag}-${sequence}`.padEnd(100, '.'));

/** Starts a receiver, runs `act` once it has joined, and returns its summary and output. */
async function receive(
  act: (send: (...datagrams: Buffer[]) => void) => Promise<void>,
  timeoutMs = 5_000,
): Promise<{ summary: ReceiveSummary; output: Buffer; elapsedMs: number }> {
  const group = parseGroup(`239.255.71.1:${freshPort()}`, 'group');
  const sink = memorySink();
  const receiver = createReceiver({ group, iface: loopbackIface, timeoutMs, endGraceMs: 100 }, { sink });
  const out = await crafter(group);
  let joined: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    joined = resolve;
  });
  const startedAt = performance.now();
  const running = receiver.run({ onJoined: () => joined() });
  await ready;
  await act((...datagrams) => out.send(...datagrams));
  const summary = await running;
  await out.close();
  return { summary, output: sink.bytes(), elapsedMs: performance.now() - startedAt };
}

const pause = () => new Promise((resolve) => setTimeout(resolve, 20));

describe('a receiver writes only the run it locked on', () => {
  it("DATA of session 222 arriving before session 111's DESCRIPTOR never reaches 111's output", async () => {
    const a = { sessionId: 111, incarnation: 7 };
    const b = { sessionId: 222, incarnation: 7 };
    const expected = Buffer.concat([0, 1, 2, 3, 4].map((s) => payloadOf('A', s)));
    const { summary, output } = await receive(async (send) => {
      send(...[0, 1, 2, 3, 4].map((s) => data(b, s, payloadOf('B', s))));
      send(...[0, 1, 2, 3, 4].map((s) => data(a, s, payloadOf('A', s))));
      await pause();
      send(descriptor(a, { firstSequence: 0, next: 5, payload: expected }));
      await pause();
      send(...[5, 6].map((s) => data(b, s, payloadOf('B', s))), end(a, 5, 5, expected.length));
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, expected);
    assert.equal(summary.sessionId, 111);
    // Every DATA of 222 is counted: the five held before the DESCRIPTOR and dropped at the lock too.
    assert.equal(summary.otherSession, 7);
  });

  it('a restart of the locked session (another incarnation) is never written', async () => {
    const first = { sessionId: 42, incarnation: 1 };
    const restarted = { sessionId: 42, incarnation: 2 };
    const expected = Buffer.concat([0, 1, 2, 3, 4, 5].map((s) => payloadOf('first', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(first, { firstSequence: 0, next: 0, payload: expected }));
      await pause();
      send(...[0, 1, 2].map((s) => data(first, s, payloadOf('first', s))));
      send(descriptor(restarted, { firstSequence: 0, next: 0 }));
      send(...[3, 4, 5].map((s) => data(restarted, s, payloadOf('restarted', s))));
      send(...[3, 4, 5].map((s) => data(first, s, payloadOf('first', s))));
      await pause();
      send(end(restarted, 6, 6), end(first, 6, 6, expected.length));
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, expected);
    assert.equal(summary.incarnation, 1);
    assert.equal(summary.otherSession, 5);
  });

  it('two tickers on one group with the same sequences: only the locked one is written, nothing dropped as a duplicate', async () => {
    const one = { sessionId: 1, incarnation: 11 };
    const two = { sessionId: 2, incarnation: 22 };
    const { summary, output } = await receive(async (send) => {
      // Session 2 started earlier; the receiver meets session 1's DESCRIPTOR first.
      send(...[0, 1, 2].map((s) => data(two, s, payloadOf('two', s))));
      send(descriptor(one, { firstSequence: 0, next: 0, kind: SessionKind.ticker }));
      await pause();
      for (let s = 0; s < 20; s++) {
        send(data(two, s + 3, payloadOf('two', s + 3)), data(one, s, payloadOf('one', s)));
      }
      await pause();
      send(end(two, 23, 23), end(one, 20, 20));
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, Buffer.concat(Array.from({ length: 20 }, (_, s) => payloadOf('one', s))));
    assert.equal(summary.duplicates, 0);
    // Session 2's 23 DATA (three held before the lock and dropped at it) and its END.
    assert.equal(summary.otherSession, 24);
  });
});

describe('no single packet stalls a receiver', () => {
  it('a stray sequence 2^31 away does not spin; --timeout fires on time', async () => {
    const run = { sessionId: 5, incarnation: 5 };
    const { summary, elapsedMs } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, kind: SessionKind.stream }));
      await pause();
      send(...[0, 1, 2].map((s) => data(run, s, payloadOf('x', s))));
      send(data(run, 2 ** 31 - 1, payloadOf('stray', 0)), data(run, 2 ** 31 + 1, payloadOf('stray', 1)));
      send(data(run, 2 ** 31, payloadOf('stray', 2)));
    }, 800);
    assert.equal(summary.outcome, 'timeout');
    assert.equal(summary.packetsDelivered, 3);
    assert.ok(elapsedMs < 3_000, `timeout of 0.8 s fired after ${elapsedMs} ms`);
  });

  it("a file's run that times out counts every packet it did not deliver as missing, the unseen tail too", async () => {
    const run = { sessionId: 12, incarnation: 12 };
    const file = Buffer.concat([0, 1, 2, 3, 4, 5].map((s) => payloadOf('t', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, payload: file }));
      await pause();
      // 2 is lost; 3 and 4 wait behind it; 5 and END never come
      send(...[0, 1, 3, 4].map((s) => data(run, s, payloadOf('t', s))));
    }, 800);
    assert.equal(summary.outcome, 'timeout', JSON.stringify(summary));
    assert.equal(summary.packetsDelivered, 4);
    assert.equal(summary.packetsMissing, 2, JSON.stringify(summary));
    assert.deepEqual(output, Buffer.concat([0, 1, 3, 4].map((s) => payloadOf('t', s))));
  });

  it("a forged END whose packet count is 2^32 past the file's does not turn a whole file into missing packets", async () => {
    const run = { sessionId: 13, incarnation: 13 };
    const file = Buffer.concat([0, 1, 2, 3, 4].map((s) => payloadOf('f', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, payload: file }));
      await pause();
      send(...[0, 1, 2, 3, 4].map((s) => data(run, s, payloadOf('f', s))));
      await pause();
      send(end(run, 5, 5 + 2 ** 32, file.length)); // forged: the count wraps to the genuine one
      await pause();
      send(end(run, 5, 5, file.length));
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.equal(summary.packetsMissing, 0);
    assert.deepEqual(output, file);
  });

  it('a file whose every DATA came but every END was lost is whole at --timeout; so is an empty one', async () => {
    const run = { sessionId: 14, incarnation: 14 };
    const file = Buffer.concat([0, 1, 2].map((s) => payloadOf('e', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, payload: file }));
      await pause();
      send(...[0, 1, 2].map((s) => data(run, s, payloadOf('e', s))));
    }, 800);
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, file);
    const empty = { sessionId: 15, incarnation: 15 };
    const none = await receive(async (send) => {
      send(descriptor(empty, { firstSequence: 0, next: 0, payload: Buffer.alloc(0) }));
    }, 800);
    assert.equal(none.summary.outcome, 'complete', JSON.stringify(none.summary));
    assert.equal(none.output.length, 0);
    // One packet short of the size: still a timeout, with the packet counted missing.
    const short = { sessionId: 16, incarnation: 16 };
    const cut = await receive(async (send) => {
      send(descriptor(short, { firstSequence: 0, next: 0, payload: file }));
      await pause();
      send(...[0, 1].map((s) => data(short, s, payloadOf('e', s))));
    }, 800);
    assert.equal(cut.summary.outcome, 'timeout', JSON.stringify(cut.summary));
    assert.equal(cut.summary.packetsMissing, 1);
  });

  it('a HEARTBEAT far ahead is ignored; the session still completes whole', async () => {
    const run = { sessionId: 6, incarnation: 6 };
    const expected = Buffer.concat([0, 1, 2, 3].map((s) => payloadOf('y', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, kind: SessionKind.stream }));
      await pause();
      send(data(run, 0, payloadOf('y', 0)), heartbeat(run, 65_001), heartbeat(run, 3_000));
      send(...[1, 2, 3].map((s) => data(run, s, payloadOf('y', s))));
      await pause();
      send(end(run, 4, 4));
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, expected);
    assert.equal(summary.packetsMissing, 0);
    assert.ok(summary.claimsTooFar >= 1);
  });

  it('an END that DATA already contradicts is not believed', async () => {
    const run = { sessionId: 8, incarnation: 8 };
    const { summary } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, kind: SessionKind.stream }));
      await pause();
      send(...[0, 1, 2, 3].map((s) => data(run, s, payloadOf('z', s))));
      await pause();
      send(end(run, 2, 2)); // forged: DATA 2 and 3 exist
    }, 800);
    assert.equal(summary.outcome, 'timeout', JSON.stringify(summary));
    assert.equal(summary.packetsDelivered, 4);
  });

  it("a forged END (wrong counts, or contradicted by DATA that keeps coming) does not end a live stream; one before a file's end is ignored", async () => {
    const run = { sessionId: 9, incarnation: 9 };
    const expected = Buffer.concat([0, 1, 2, 3, 4, 5].map((s) => payloadOf('w', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(run, { firstSequence: 0, next: 0, kind: SessionKind.stream }));
      await pause();
      send(data(run, 0, payloadOf('w', 0)), data(run, 1, payloadOf('w', 1)));
      send(end(run, 3, 0)); // counts that do not match its sequence
      send(end(run, 3, 3)); // consistent, but DATA 3 and on keep coming
      send(...[2, 3, 4, 5].map((s) => data(run, s, payloadOf('w', s))));
      await pause();
      send(end(run, 6, 6));
    });
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, expected);
    assert.equal(summary.endsRevoked, 2);

    const file = { sessionId: 10, incarnation: 10 };
    const bytes = Buffer.concat([0, 1, 2, 3].map((s) => payloadOf('f', s)));
    const whole = await receive(async (send) => {
      send(descriptor(file, { firstSequence: 0, next: 0, payload: bytes }));
      await pause();
      send(data(file, 0, payloadOf('f', 0)), end(file, 2, 2, 200)); // before the file's end
      send(...[1, 2, 3].map((s) => data(file, s, payloadOf('f', s))));
      await pause();
      send(end(file, 4, 4, bytes.length));
    });
    assert.equal(whole.summary.outcome, 'complete', JSON.stringify(whole.summary));
    assert.deepEqual(whole.output, bytes);
  });

  it("one forged DATA past a file's end (by its DESCRIPTOR's size) does not stop the whole file from completing", async () => {
    const file = { sessionId: 11, incarnation: 11 };
    const bytes = Buffer.concat([0, 1, 2, 3].map((s) => payloadOf('g', s)));
    const { summary, output } = await receive(async (send) => {
      send(descriptor(file, { firstSequence: 0, next: 0, payload: bytes }));
      await pause();
      send(...[0, 1, 2, 3].map((s) => data(file, s, payloadOf('g', s))));
      send(data(file, 4, payloadOf('forged', 4))); // the file has 4 packets: sequence 4 cannot exist
      send(heartbeat(file, 4 + 20)); // nor 4 to 23: a claim past the file's end is not believed
      await pause();
      send(end(file, 4, 4, bytes.length));
    }, 3_000);
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, bytes);
    assert.equal(summary.beyondFileEnd, 1);
    assert.equal(summary.claimsTooFar, 1);
  });

  it("a forged DATA of a file's length other than its DESCRIPTOR puts there is not taken in place of the genuine one", async () => {
    const file = { sessionId: 12, incarnation: 12 };
    const last = Buffer.from('the last, shorter');
    const bytes = Buffer.concat([payloadOf('h', 0), payloadOf('h', 1), last]);
    const { summary, output } = await receive(async (send) => {
      send(descriptor(file, { firstSequence: 0, next: 0, payload: bytes }));
      await pause();
      // Before the genuine ones: packet 1 one byte short, the last one padded to a full packet.
      send(data(file, 1, payloadOf('h', 1).subarray(1)), data(file, 2, payloadOf('forged', 2)));
      send(data(file, 0, payloadOf('h', 0)), data(file, 1, payloadOf('h', 1)), data(file, 2, last));
      await pause();
      send(end(file, 3, 3, bytes.length));
    }, 3_000);
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.deepEqual(output, bytes);
    assert.equal(summary.wrongFileLength, 2);
  });
});
