import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ControlSealer, ControlVerifier, controlKey, readSecretFile } from '../../src/crypto/control-auth.js';
import { decodeNack, encodeNack } from '../../src/protocol/control.js';

const key = controlKey(Buffer.from('an operator secret of some length'));
const fields = { sessionId: 1, sequence: 0, timestampUs: 1 };
const nack = () => encodeNack(fields, { ranges: [{ start: 1, count: 2 }] });

function verify(verifier: ControlVerifier, packet: Buffer) {
  const decoded = decodeNack(packet);
  assert.ok(decoded.ok);
  return verifier.verify(packet, decoded.value.auth);
}

describe('control message authentication', () => {
  it('accepts a sealed message once, and refuses its replay', () => {
    const sealer = new ControlSealer(key);
    const verifier = new ControlVerifier([key]);
    const packet = sealer.seal(nack());
    assert.equal(verify(verifier, packet), undefined);
    assert.equal(verify(verifier, packet), 'replayed');
    assert.equal(verify(verifier, sealer.seal(nack())), undefined);
  });

  it('refuses a forged tag, an unknown key, and a stale counter, keeping no state for them', () => {
    const verifier = new ControlVerifier([key]);
    const forged = new ControlSealer(key).seal(nack());
    forged[forged.length - 1] = (forged[forged.length - 1] ?? 0) ^ 1;
    assert.equal(verify(verifier, forged), 'bad-tag');
    const tampered = new ControlSealer(key).seal(nack());
    tampered[28 + 4 + 3] = 9; // the range start
    assert.equal(verify(verifier, tampered), 'bad-tag');
    const other = new ControlSealer(controlKey(Buffer.from('somebody else entirely, not us'))).seal(nack());
    assert.equal(verify(verifier, other), 'unknown-key');
    assert.equal(verifier.peerCount, 0);
    const old = new ControlSealer(key, { clockUs: () => Date.now() * 1000 - 60_000_000 }).seal(nack());
    assert.equal(verify(verifier, old), 'stale');
    assert.equal(verifier.peerCount, 0);
  });

  it('accepts reordering within the window and refuses what fell out of it', () => {
    let now = Date.now() * 1000;
    const sealer = new ControlSealer(key, { clockUs: () => now });
    const verifier = new ControlVerifier([key]);
    const packets = Array.from({ length: 70 }, () => {
      now += 10;
      return sealer.seal(nack());
    });
    assert.equal(verify(verifier, packets[1] as Buffer), undefined);
    assert.equal(verify(verifier, packets[0] as Buffer), undefined, 'one reordered message');
    for (const packet of packets.slice(2, 68)) {
      assert.equal(verify(verifier, packet), undefined);
    }
    assert.equal(verify(verifier, packets[1] as Buffer), 'replayed');
    assert.equal(verify(verifier, packets[69] as Buffer), undefined);
  });

  it('reads a secret file and refuses a short one, naming it', () => {
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-secret-'));
    try {
      writeFileSync(join(directory, 'good'), 'correct horse battery staple\n');
      writeFileSync(join(directory, 'short'), 'tiny\n');
      assert.equal(readSecretFile(join(directory, 'good')).key.toString(), 'correct horse battery staple');
      assert.throws(
        () => readSecretFile(join(directory, 'short')),
        /--secret-file: .*short holds 4 bytes; a secret needs at least 16/,
      );
      assert.throws(() => readSecretFile(join(directory, 'none')), /--secret-file: cannot read .*ENOENT/);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});
