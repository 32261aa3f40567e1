/**
 * A signed session's repair server that lost every copy of every manifest, and the END with its
 * control signature, on S1 (test/sim/found.md 11): it asks for them with the NACK signatures flag,
 * the retransmit server sends each verified SIGNATURE ahead of the REPAIRs, and S2 carries the run
 * whole, byte for byte (docs/protocol.md, "NACK" and "REPAIR").
 *
 * Real roles over loopback multicast: the source sends on S1, which the retransmit server joins; a
 * relay in the test forwards S1 to the repair server's group S1r, minus every manifest, every tenth
 * DATA, every END and every END's control signature.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { generateSigningKey } from '../../src/crypto/authority.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import { parseGroup } from '../../src/net/address.js';
import { openReceiverSocket } from '../../src/net/udp.js';
import { headerBytes, offsetSequence, offsetType, PacketType } from '../../src/protocol/packet.js';
import { SignatureKind } from '../../src/protocol/restricted.js';
import { crafter } from '../helpers/craft.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { signedReceivers, signedTicker, startSignedServers } from '../helpers/signed-bed.js';

const key = controlKey(Buffer.from('signed signature-lost test secret, not for use'));
const source = generateSigningKey();

/** What the relay keeps from the repair server: every manifest, END signature, END, tenth DATA. */
function lostOnTheWay(datagram: Buffer): 'manifest' | 'end' | 'data' | undefined {
  const type = datagram.length > offsetType ? datagram[offsetType] : undefined;
  if (type === PacketType.signature && datagram[headerBytes] === SignatureKind.manifest) {
    return 'manifest';
  }
  if (type === PacketType.signature && datagram[headerBytes + 1] === PacketType.end) {
    return 'end'; // the END's control signature
  }
  if (type === PacketType.end) {
    return 'end';
  }
  if (type === PacketType.data && datagram.readUInt32BE(offsetSequence) % 10 === 3) {
    return 'data';
  }
  return undefined;
}

const closers: Array<() => Promise<void>> = [];
after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
});

describe('a signed session whose manifests a repair server lost', () => {
  it('every manifest, every tenth DATA and the END with its signature lost on the way to the repair server: S2 whole, byte for byte, the signatures asked for and sent ahead of the REPAIRs', async () => {
    const s1 = parseGroup(`239.255.74.1:${freshPort()}`, 's1');
    const s1r = parseGroup(`239.255.74.2:${freshPort()}`, 's1r');
    const s2 = parseGroup(`239.255.74.3:${freshPort()}`, 's2');
    const { retransmit, repair } = await startSignedServers(
      // reliable: gives a packet up only when no live server can serve it
      { key, source, s1, repairGroup: s1r, s2, latencyMs: undefined },
      closers,
    );
    const relayOut = await crafter(s1r);
    closers.push(() => relayOut.close());
    const lost = { manifest: 0, end: 0, data: 0 };
    const relay = await openReceiverSocket({ group: s1, iface: loopbackIface }, (datagram) => {
      const reason = lostOnTheWay(datagram);
      if (reason === undefined) {
        relayOut.send(datagram);
      } else {
        lost[reason]++;
      }
    });
    closers.push(() => relay.close());
    const { rx, direct, receiverGate } = await signedReceivers(s2, s1, source.publicKey, 20_000);
    const ticker = signedTicker(s1, source, { sessionId: 91, incarnation: 0x91 });
    await ticker.run();
    const [repaired, original] = await Promise.all([rx.done, direct.done]);
    const status = repair.status();
    // The relay did lose what it was meant to: every copy of every manifest, the END and its signature.
    assert.ok(lost.manifest >= Math.ceil(600 / 32), JSON.stringify(lost));
    assert.ok(lost.end >= 2 && lost.data >= 50, JSON.stringify(lost));
    assert.equal(original.outcome, 'complete', JSON.stringify(original));
    assert.equal(repaired.outcome, 'complete', JSON.stringify({ repaired, status }));
    assert.equal(repaired.packetsDelivered, 600);
    assert.deepEqual(rx.sink.bytes(), direct.sink.bytes());
    assert.equal(status.unrecoverable, 0, JSON.stringify(status));
    assert.equal(status.sessionsCompleted, 1, JSON.stringify(status));
    // Every manifest came by REPAIR, and so did the END's signature: at least one each.
    assert.ok(status.signaturesRepaired >= Math.ceil(600 / 32) + 1, JSON.stringify(status));
    assert.ok(status.endsRepaired >= 1, JSON.stringify(status));
    const served = retransmit.status();
    assert.ok(served.signaturesSent >= status.signaturesRepaired, JSON.stringify(served));
    // Once per manifest, not once per packet: far fewer signatures than REPAIRs.
    assert.ok(served.signaturesSent < served.repairsSent, JSON.stringify(served));
    // S2 carried only what verified: the receiver's gate refused nothing and holds nothing.
    assert.deepEqual(receiverGate.stats.forged, {});
    assert.equal(receiverGate.stats.unauthenticated, 0, JSON.stringify(receiverGate.stats));
  });
});
