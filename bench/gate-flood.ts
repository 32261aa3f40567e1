/**
 * A signed-session gate (src/crypto/signed-session.ts) under a forger's flood of DATA no manifest
 * will vouch for, in one process: CPU per datagram once the held DATA are at their bound
 * (signedHeldPacketsMax), with the forgeries all at one sequence and at sequences of their own,
 * then the time of the one genuine manifest that releases those held at its sequence.
 * Usage: node --import tsx bench/gate-flood.ts [ROUNDS]
 */
import { createHash } from 'node:crypto';
import { generateSigningKey, signInPlace } from '../src/crypto/authority.js';
import { createSignedSessionGate } from '../src/crypto/signed-session.js';
import { signedHeldPacketsMax } from '../src/limits.js';
import { encodeData } from '../src/protocol/packet.js';
import { encodeManifestUnsigned, manifestHashBytes } from '../src/protocol/restricted.js';

const rounds = Number(process.argv[2] ?? 3);
const source = generateSigningKey();
const run = { sessionId: 5, incarnation: 1 };
const dataAt = (sequence: number, text: string) =>
  encodeData({ ...run, sequence, timestampUs: 0 }, Buffer.from(text));

function flood(sequenceOf: (index: number) => number) {
  const gate = createSignedSessionGate(source.publicKey);
  const forged = Array.from({ length: 2 * signedHeldPacketsMax }, (_, index) =>
    dataAt(sequenceOf(index), `forged ${index}`),
  );
  for (const datagram of forged.slice(0, signedHeldPacketsMax)) {
    gate.filter(datagram, () => undefined);
  }
  const started = process.cpuUsage();
  for (const datagram of forged.slice(signedHeldPacketsMax)) {
    gate.filter(datagram, () => undefined);
  }
  const used = process.cpuUsage(started);
  const pastBoundUs = (used.user + used.system) / signedHeldPacketsMax;
  const genuine = dataAt(sequenceOf(0), 'genuine');
  gate.filter(genuine, () => undefined);
  const hash = createHash('sha256').update(genuine).digest().subarray(0, manifestHashBytes);
  const manifest = signInPlace(
    encodeManifestUnsigned({ ...run, sequence: sequenceOf(0), timestampUs: 0 }, [hash]),
    source.privateKey,
  );
  const releaseStarted = process.cpuUsage();
  gate.filter(manifest, () => undefined);
  const release = process.cpuUsage(releaseStarted);
  return { pastBoundUs, releaseMs: (release.user + release.system) / 1000, stats: gate.stats };
}

for (let round = 0; round < rounds; round++) {
  const pile = flood(() => 1000);
  const apart = flood((index) => 1000 + index);
  process.stdout.write(
    `round ${round + 1}: one sequence ${pile.pastBoundUs.toFixed(2)} µs a datagram past the bound, ` +
      `manifest ${pile.releaseMs.toFixed(1)} ms (refused ${pile.stats.forged['hash-mismatch'] ?? 0}); ` +
      `sequences apart ${apart.pastBoundUs.toFixed(2)} µs, manifest ${apart.releaseMs.toFixed(1)} ms\n`,
  );
}
