import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import { peerFetchesMax, peerFetchTimeoutMs } from '../../src/limits.js';
import {
  decodeNack,
  decodeRepair,
  encodeRepair,
  encodeRepairNotHeld,
  type PeerEndpoint,
} from '../../src/protocol/control.js';
import { encodeData, headerBytes } from '../../src/protocol/packet.js';
import { PeerFetcher, toRanges } from '../../src/retransmit/peer-fetch.js';
import { ManualClock } from '../helpers/manual-clock.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));
const self: PeerEndpoint = { address: '10.0.0.1', port: 6000 };
const peerA: PeerEndpoint = { address: '10.0.0.2', port: 6000 };
const peerB: PeerEndpoint = { address: '10.0.0.3', port: 6000 };

function data(sequence: number, incarnation = 3): Buffer {
  return encodeData({ sessionId: 7, incarnation, sequence, timestampUs: 1 }, Buffer.alloc(100, sequence));
}

function setup(peers: PeerEndpoint[] = [peerA, peerB]) {
  const clock = new ManualClock();
  const channel = new ControlChannel([key], { clock });
  const peerChannel = new ControlChannel([key], { clock });
  const sent: Array<{ datagram: Buffer; to: PeerEndpoint }> = [];
  const stored = new Map<number, Buffer>();
  const fetcher = new PeerFetcher({
    clock,
    setTimeout: (fn, ms) => clock.setTimeout(fn, ms),
    channel,
    sendTo: (datagram, to) => sent.push({ datagram, to }),
    replyTo: () => self,
    peers: () => peers,
    store: (_session, _incarnation, sequence, datagram) => {
      stored.set(sequence, datagram);
      return true;
    },
    drop: () => undefined,
  });
  /** A peer's answer, accepted the way the role accepts it. */
  const answer = (packet: Buffer, from: PeerEndpoint) => {
    const sealed = peerChannel.seal(packet);
    const repair = channel.accept(sealed, from, decodeRepair, 'repair', () => undefined);
    assert.ok(repair !== undefined);
    const original =
      repair.data === undefined ? undefined : sealed.subarray(headerBytes + 4, sealed.length - 36);
    return fetcher.onRepair(repair, original, from);
  };
  const fields = (sequence: number) => ({
    sessionId: 7,
    incarnation: 3,
    sequence,
    timestampUs: clock.wallUs(),
  });
  return { clock, fetcher, sent, stored, answer, fields };
}

describe('peer fetch', () => {
  it('asks one peer with a flagged NACK no larger than needed, stores what comes back, and settles', async () => {
    const { fetcher, sent, stored, answer, fields } = setup();
    let settled = false;
    const done = fetcher.fetch(7, 3, [10, 11, 12, 20]).then(() => {
      settled = true;
    });
    assert.equal(sent.length, 1);
    assert.equal(sent[0]?.to, peerA);
    const nack = decodeNack(sent[0]?.datagram ?? Buffer.alloc(0));
    assert.ok(nack.ok);
    assert.equal(nack.value.peerFetch, true);
    assert.deepEqual(nack.value.ranges, [
      { start: 10, count: 3 },
      { start: 20, count: 1 },
    ]);
    for (const sequence of [10, 11, 12, 20]) {
      assert.ok(answer(encodeRepair(fields(sequence), data(sequence)), peerA));
    }
    await done;
    assert.ok(settled);
    assert.deepEqual(
      [...stored.keys()].sort((a, b) => a - b),
      [10, 11, 12, 20],
    );
    assert.ok(stored.get(11)?.equals(data(11)));
    assert.equal(fetcher.counters.fetchedPackets, 4);
    assert.equal(fetcher.activeCount, 0);
  });

  it('moves to the next peer on not-held, and on silence after the timeout; what nobody held is not asked again at once', async () => {
    const { fetcher, sent, stored, answer, fields, clock } = setup();
    const done = fetcher.fetch(7, 3, [10, 11]);
    assert.ok(answer(encodeRepairNotHeld(fields(10), 2), peerA));
    assert.equal(sent.length, 2);
    assert.equal(sent[1]?.to, peerB);
    clock.advance(peerFetchTimeoutMs + 1); // peer B is silent
    await done;
    assert.equal(stored.size, 0);
    assert.equal(fetcher.counters.fetchMissedPackets, 2);
    await fetcher.fetch(7, 3, [10, 11]);
    assert.equal(sent.length, 2, 'a sequence no peer held is not asked for again at once');
  });

  it('ignores what it did not ask for: another run, another sequence, a not-held from a peer not asked', async () => {
    const { fetcher, stored, answer, fields } = setup();
    void fetcher.fetch(7, 3, [10]);
    assert.equal(answer(encodeRepair({ ...fields(11) }, data(11)), peerA), false);
    assert.equal(answer(encodeRepairNotHeld(fields(10), 1), peerB), false);
    assert.equal(stored.size, 0);
    fetcher.close();
  });

  it('never has more than peerFetchesMax fetches in flight, and a sequence in flight is asked once', async () => {
    const { fetcher, sent } = setup();
    for (let i = 0; i < peerFetchesMax + 5; i++) {
      void fetcher.fetch(7, 3, [1000 + i]);
    }
    assert.equal(fetcher.activeCount, peerFetchesMax);
    assert.equal(fetcher.counters.fetchesRefused, 5);
    void fetcher.fetch(7, 3, [1000]);
    assert.equal(sent.length, peerFetchesMax);
    fetcher.close();
    assert.equal(fetcher.activeCount, 0);
  });

  it('asks nobody when it knows no peer', async () => {
    const { fetcher, sent } = setup([]);
    await fetcher.fetch(7, 3, [1]);
    assert.equal(sent.length, 0);
  });

  it('ranges: consecutive sequences merge, across the wrap too', () => {
    assert.deepEqual(toRanges([0xffff_fffe, 0xffff_ffff, 0, 1, 5]), [
      { start: 0xffff_fffe, count: 4 },
      { start: 5, count: 1 },
    ]);
  });
});
