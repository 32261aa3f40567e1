/**
 * Signed sessions close the forged-packet kind (docs/protocol.md, "Signed sessions"): against a
 * signed run, forged HEARTBEAT, END, DESCRIPTOR and DATA moved into S1 of a live `--latency 100`
 * repair move no state in the repair server, the retransmit server or a receiver; they are counted.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { buildControlSignature, generateSigningKey } from '../../src/crypto/authority.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import { parseGroup } from '../../src/net/address.js';
import { SessionKind } from '../../src/protocol/packet.js';
import { crafter, data, descriptor, end, heartbeat } from '../helpers/craft.js';
import { freshPort } from '../helpers/loopback.js';
import { signedReceivers, signedTicker, startSignedServers } from '../helpers/signed-bed.js';
import { waitUntil } from '../helpers/wait.js';

const key = controlKey(Buffer.from('signed session test secret, not for use'));
const source = generateSigningKey();
const forger = generateSigningKey();

const closers: Array<() => Promise<void>> = [];
after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
});

describe('a signed session: one forged packet moves nothing anywhere', () => {
  it('forged HEARTBEAT (next + 65,000), END, DESCRIPTOR and DATA into S1 of a --latency 100 repair: S2 whole, byte for byte, no NACK for a forged gap, every forgery counted', async () => {
    const s1 = parseGroup(`239.255.73.1:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.73.2:${freshPort()}`, 's2');
    const { retransmit, repair } = await startSignedServers(
      { key, source, s1, repairGroup: s1, s2, latencyMs: 100 },
      closers,
    );
    const { rx, direct, receiverGate } = await signedReceivers(s2, s1, source.publicKey, 10_000);
    const run = { sessionId: 78, incarnation: 0x78 };
    const ticker = signedTicker(s1, source, run);
    const sending = ticker.run();
    await waitUntil('the run under way', () => repair.status().emitted > 50, 20_000);
    const out = await crafter(s1);
    const forgedHeartbeat = heartbeat(run, 1000 + 65_000);
    const forgedEnd = end(run, 1000 + 120, 120);
    const forgedDescriptor = descriptor(
      { sessionId: 79, incarnation: 0x79 },
      { firstSequence: 0, next: 0, kind: SessionKind.stream },
    );
    // Forged DATA: at sequences the source has not sent yet (ahead of the run) and one it will never
    // send; and a forged control signature, signed by a key that is not the source's.
    const forgedData = [1500, 1501, 1599, 9000].map((sequence) =>
      data(run, sequence, Buffer.alloc(64, 0xee)),
    );
    const badlySigned = heartbeat(run, 1000 + 30_000);
    out.send(
      forgedHeartbeat,
      forgedEnd,
      forgedDescriptor,
      ...forgedData,
      buildControlSignature(badlySigned, forger.privateKey),
      badlySigned,
    );
    await sending;
    await out.close();
    const [repaired, original] = await Promise.all([rx.done, direct.done]);
    assert.equal(original.outcome, 'complete', JSON.stringify(original));
    assert.equal(repaired.outcome, 'complete', JSON.stringify(repair.status()));
    assert.equal(original.packetsDelivered, 600);
    assert.equal(repaired.packetsDelivered, 600);
    assert.deepEqual(rx.sink.bytes(), direct.sink.bytes());
    assert.equal(rx.sink.bytes().includes(Buffer.alloc(64, 0xee)), false, 'forged bytes were written');
    const status = repair.status();
    const signed = status.signed;
    assert.ok(signed !== undefined);
    // Nothing forged reached the window: no claim was too far, no END was revoked, no gap was opened
    // and no NACK sent for a sequence only a forgery named.
    assert.equal(status.claimsTooFar, 0, JSON.stringify(status));
    assert.equal(status.dropped['end-revoked'] ?? 0, 0, JSON.stringify(status));
    assert.equal(status.gaps, 0, JSON.stringify(status));
    assert.equal(status.nacksSent, 0, JSON.stringify(status));
    assert.equal(status.recovered, 0, JSON.stringify(status));
    assert.equal(status.unrecoverable, 0, JSON.stringify(status));
    assert.equal(status.sessionsCompleted, 1);
    // Forged DATA at 1500, 1501 and 1599 was refused against the manifest once it came; 9000 and the
    // control datagrams were never vouched for and still wait, or were dropped unauthenticated.
    assert.ok((signed.forged['hash-mismatch'] ?? 0) >= 3, JSON.stringify(signed));
    assert.ok((signed.forged['bad-signature'] ?? 0) >= 1, JSON.stringify(signed));
    assert.ok(signed.holding + signed.unauthenticated >= 5, JSON.stringify(signed));
    assert.ok((receiverGate.stats.forged['bad-signature'] ?? 0) === 0, 'S2 carried only what verified');
    const held = retransmit.status().signed;
    assert.ok(held !== undefined && (held.forged['hash-mismatch'] ?? 0) >= 3, JSON.stringify(held));
  });
});
