import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  createGroupKeyReceiver,
  createGroupKeySender,
  deriveGroupKey,
  type GroupKeyContext,
  groupKeyModeProblem,
  groupSeedBytes,
} from '../../src/crypto/group-key.js';

/** A token that holds the traffic key and counts how often it is asked. */
function countingToken(trafficKey: Buffer) {
  const calls = { newGroup: 0, groupKey: 0 };
  return {
    calls,
    newGroup(context: GroupKeyContext) {
      calls.newGroup++;
      const seed = randomBytes(groupSeedBytes);
      return { seed, key: deriveGroupKey(trafficKey, seed, context) };
    },
    groupKey(seed: Buffer, context: GroupKeyContext) {
      calls.groupKey++;
      return deriveGroupKey(trafficKey, seed, context);
    },
  };
}

const nonceOf = (counter: number) => {
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(7, 0); // sender id
  nonce.writeBigUInt64BE(BigInt(counter), 4);
  return nonce;
};

function seal(key: Buffer, counter: number, plaintext: Buffer): Buffer {
  const cipher = createCipheriv('aes-256-gcm', key, nonceOf(counter), { authTagLength: 16 });
  return Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

function open(key: Buffer, counter: number, sealed: Buffer): Buffer | undefined {
  const decipher = createDecipheriv('aes-256-gcm', key, nonceOf(counter), { authTagLength: 16 });
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  try {
    return Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - 16)), decipher.final()]);
  } catch {
    return undefined;
  }
}

describe('every-n-th-packet group keys', () => {
  it('with n = 16 the token is asked 1/16 as often, every packet is encrypted, and the wire holds no plaintext', async () => {
    const trafficKey = randomBytes(32);
    const sourceToken = countingToken(trafficKey);
    const receiverToken = countingToken(trafficKey);
    const packets = 1600;
    const keyFor = createGroupKeySender({
      packetsPerGroup: 16,
      sessionId: 42,
      keyEpoch: 3,
      token: sourceToken,
    });
    const receive = createGroupKeyReceiver({ sessionId: 42, keyEpoch: 3, token: receiverToken });
    const payloads: Buffer[] = [];
    const wire: Array<{ counter: number; groupIndex: number; seed: Buffer; sealed: Buffer }> = [];
    for (let counter = 0; counter < packets; counter++) {
      const payload = Buffer.from(`quote ${counter} ACME 101.25 `.repeat(20));
      payloads.push(payload);
      const { groupIndex, seed, key } = await keyFor(counter);
      wire.push({ counter, groupIndex, seed, sealed: seal(key, counter, payload) });
    }
    assert.equal(sourceToken.calls.newGroup, packets / 16);
    const capture = Buffer.concat(wire.flatMap((p) => [p.seed, p.sealed]));
    for (const payload of payloads) {
      assert.equal(capture.indexOf(payload.subarray(0, 12)), -1, 'no plaintext on the wire');
    }
    assert.equal(capture.indexOf(Buffer.from('ACME')), -1);
    for (const packet of wire) {
      const key = await receive(packet.groupIndex, packet.seed);
      assert.deepEqual(open(key, packet.counter, packet.sealed), payloads[packet.counter]);
    }
    assert.equal(receiverToken.calls.groupKey, packets / 16);
  });

  it('the group key depends on the traffic key, the seed, the session, the epoch and the group', () => {
    const trafficKey = randomBytes(32);
    const seed = randomBytes(groupSeedBytes);
    const context = { sessionId: 1, keyEpoch: 1, groupIndex: 5 };
    const key = deriveGroupKey(trafficKey, seed, context);
    const others = [
      deriveGroupKey(randomBytes(32), seed, context),
      deriveGroupKey(trafficKey, randomBytes(groupSeedBytes), context),
      deriveGroupKey(trafficKey, seed, { ...context, sessionId: 2 }),
      deriveGroupKey(trafficKey, seed, { ...context, keyEpoch: 2 }),
      deriveGroupKey(trafficKey, seed, { ...context, groupIndex: 6 }),
    ];
    for (const other of others) {
      assert.notDeepEqual(other, key);
    }
    assert.equal(deriveGroupKey(randomBytes(16), seed, context).length, 16);
  });

  it('a forged seed yields a key that opens nothing', async () => {
    const trafficKey = randomBytes(32);
    const token = countingToken(trafficKey);
    const keyFor = createGroupKeySender({ packetsPerGroup: 16, sessionId: 1, keyEpoch: 1, token });
    const receive = createGroupKeyReceiver({ sessionId: 1, keyEpoch: 1, token });
    const { groupIndex, key } = await keyFor(0);
    const sealed = seal(key, 0, Buffer.from('hello'));
    const forged = await receive(groupIndex, randomBytes(groupSeedBytes));
    assert.equal(open(forged, 0, sealed), undefined);
  });

  it('refuses modes that leave packets in clear, and group sizes out of range', () => {
    assert.match(
      groupKeyModeProblem({ packetsPerGroup: 16, encrypt: 'every-nth' }) ?? '',
      /leaves packets in clear/,
    );
    assert.match(groupKeyModeProblem({ packetsPerGroup: 0, encrypt: 'all' }) ?? '', /packetsPerGroup/);
    assert.match(
      groupKeyModeProblem({ packetsPerGroup: 1_000_000, encrypt: 'all' }) ?? '',
      /packetsPerGroup/,
    );
    assert.equal(groupKeyModeProblem({ packetsPerGroup: 16, encrypt: 'all' }), undefined);
  });
});
