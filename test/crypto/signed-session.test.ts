/**
 * The signed-session gate (docs/protocol.md, "Signed sessions"), with a source's protection as the
 * only honest sender: nothing reaches the role before the source key vouches for it.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { buildControlSignature, generateSigningKey, signInPlace } from '../../src/crypto/authority.js';
import { createSenderProtection, createSignedSenderProtection } from '../../src/crypto/restricted-session.js';
import { BySequence, createSignedSessionGate } from '../../src/crypto/signed-session.js';
import { suites } from '../../src/crypto/suites.js';
import {
  manifestFlushWaitMs,
  protectedControlIntervalMs,
  signedHeldPacketsMax,
  signedManifestHashesMax,
  signedRepeatRefreshMs,
} from '../../src/limits.js';
import {
  encodeData,
  headerBytes,
  offsetBodyLength,
  offsetFlags,
  offsetKeyEpoch,
  offsetSequence,
  offsetType,
  PacketType,
  writeHeaderFields,
} from '../../src/protocol/packet.js';
import {
  decodeKey,
  decodeSignature,
  encodeManifestUnsigned,
  manifestHashBytes,
  manifestPacketsMax,
  SignatureKind,
} from '../../src/protocol/restricted.js';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { data, descriptor, end, heartbeat } from '../helpers/craft.js';
import { createRandom } from '../helpers/random.js';

/** A full garbage collection (test only: the flag is set before the first call). */
setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

const hashOf = (datagram: Buffer): Buffer =>
  createHash('sha256').update(datagram).digest().subarray(0, manifestHashBytes);

const source = generateSigningKey();
const forger = generateSigningKey();
const run = { sessionId: 5, incarnation: 0x55 };

/** A restricted source's protection for `of` (AES-256-GCM, 10 s crypto-periods). */
function restrictedSender(manifestPackets = 32, of: { sessionId: number; incarnation: number } = run) {
  return createSenderProtection(
    {
      suite: suites.find((suite) => suite.name === 'aes-256-gcm') ?? (suites[0] as (typeof suites)[number]),
      service: 'news',
      serviceEpoch: 1,
      serviceKey: Buffer.alloc(32, 9),
      sourcePrivateKey: source.privateKey,
      sourcePublicKey: source.publicKey,
      cryptoPeriodMs: 10_000,
      tier: 0,
      manifestPackets,
    },
    of,
  );
}

function sender() {
  return createSignedSenderProtection(
    { sourcePrivateKey: source.privateKey, sourcePublicKey: source.publicKey, manifestPackets: 32 },
    run,
  );
}

function gate() {
  const passed: Buffer[] = [];
  const authenticated: Buffer[] = [];
  const g = createSignedSessionGate(source.publicKey, { onAuthenticated: (d) => authenticated.push(d) });
  return { g, passed, authenticated, take: (d: Buffer) => g.filter(d, (p) => passed.push(p)) };
}

describe('signed-session gate', () => {
  it('keeps what vouches for what it passed: the manifest of a DATA, the control signature of an END', () => {
    const protection = sender();
    const t = gate();
    const wire: Buffer[] = [];
    for (let sequence = 100; sequence < 132; sequence++) {
      wire.push(...protection.seal(data(run, sequence, Buffer.from(`genuine ${sequence}`)), 0, 0));
    }
    const manifest = wire.pop() as Buffer;
    const first = wire[0] as Buffer;
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 100), false);
    assert.equal(t.g.signatureFor(first), undefined, 'nothing before the manifest verified');
    t.take(manifest);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 100), true);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 132), false);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation + 1, 100), false, 'another run');
    assert.deepEqual(t.g.signatureFor(first), manifest);
    assert.deepEqual(t.g.signatureFor(wire[31] as Buffer), manifest);
    const ending = end(run, 132, 32);
    const signature = buildControlSignature(ending, source.privateKey);
    assert.equal(t.g.signatureFor(ending), undefined);
    t.take(signature);
    assert.deepEqual(t.g.signatureFor(ending), signature);
    // A forger's signature over the same END is never kept, so never served.
    const other = gate();
    other.take(buildControlSignature(ending, forger.privateKey));
    assert.equal(other.g.signatureFor(ending), undefined);
  });

  it('holds DATA until its manifest, then passes it; a forged DATA at the same sequence is refused', () => {
    const protection = sender();
    const t = gate();
    const wire: Buffer[] = [];
    for (let sequence = 100; sequence < 132; sequence++) {
      wire.push(...protection.seal(data(run, sequence, Buffer.from(`genuine ${sequence}`)), 0, 0));
    }
    const manifest = wire.pop() as Buffer;
    assert.equal(decodeSignature(manifest).ok, true);
    t.take(data(run, 110, Buffer.from('forged 110')));
    for (const datagram of wire) {
      t.take(datagram);
    }
    assert.equal(t.passed.length, 0, 'nothing passes before the manifest');
    assert.equal(t.g.stats.holding, 33);
    t.take(manifest);
    assert.equal(t.passed.length, 32);
    assert.deepEqual(t.passed, wire);
    assert.equal(t.g.stats.forged['hash-mismatch'], 1);
    assert.deepEqual(t.authenticated, [manifest]);
    // After the manifest: a genuine repeat passes at once, a forgery is refused at once.
    t.take(wire[3] as Buffer);
    t.take(data(run, 103, Buffer.from('forged 103')));
    assert.equal(t.passed.length, 33);
    assert.equal(t.g.stats.forged['hash-mismatch'], 2);
    // A repeated manifest is recognised without a second verification; one with a flipped bit is not.
    t.take(manifest);
    assert.equal(t.g.stats.manifestsRepeated, 1);
    const flipped = Buffer.from(manifest);
    flipped[40] = (flipped[40] ?? 0) ^ 1;
    t.take(flipped);
    assert.equal(t.g.stats.forged['bad-signature'], 1);
  });

  it('a DATA whose header does not hold (short, a body length that says more or less, flags set) is passed on at once for the role to count as malformed, never held or counted as forged', () => {
    const t = gate();
    const genuine = data(run, 200, Buffer.from('genuine 200'));
    const malformed: Buffer[] = [];
    for (const bodyLength of [0, 0xffff, genuine.length - headerBytes + 3]) {
      const copy = Buffer.from(genuine);
      copy.writeUInt16BE(bodyLength, offsetBodyLength);
      malformed.push(copy);
    }
    const flagged = Buffer.from(genuine);
    flagged[offsetFlags] = 1;
    malformed.push(flagged, genuine.subarray(0, headerBytes - 2));
    for (const datagram of malformed) {
      t.take(datagram);
    }
    assert.deepEqual(t.passed, malformed);
    assert.equal(t.g.stats.holding, 0);
    assert.deepEqual(t.g.stats.forged, {});
    // A well-formed DATA nothing vouches for yet is held, as before.
    t.take(genuine);
    assert.equal(t.passed.length, malformed.length);
    assert.equal(t.g.stats.holding, 1);
  });

  it('a manifest sent again is a repeat, by its bytes or by its hashes; one that differs is checked in full', () => {
    const protection = sender();
    const t = gate();
    const wire: Buffer[] = [];
    for (let sequence = 300; sequence < 332; sequence++) {
      wire.push(...protection.seal(data(run, sequence, Buffer.from(`genuine ${sequence}`)), 0, 0));
    }
    const manifest = wire.pop() as Buffer;
    t.take(manifest);
    assert.equal(t.g.stats.signaturesVerified, 1);
    // The source's own copies (ManifestRepeats sends the same bytes again): no second check.
    t.take(Buffer.from(manifest));
    t.take(Buffer.from(manifest));
    assert.equal(t.g.stats.manifestsRepeated, 2);
    assert.equal(t.g.stats.signaturesVerified, 1);
    // The same hashes signed again under another header time: not the same bytes, and nothing new.
    const decoded = decodeSignature(manifest);
    assert.ok(decoded.ok && decoded.value.kind === SignatureKind.manifest);
    const resigned = signInPlace(
      encodeManifestUnsigned({ ...run, sequence: 300, timestampUs: 123_456 }, decoded.value.hashes),
      source.privateKey,
    );
    assert.notDeepEqual(resigned, manifest);
    t.take(resigned);
    assert.equal(t.g.stats.manifestsRepeated, 3);
    // A forger's manifest for the same sequences with one hash of its own, or the genuine one with
    // its last hash altered: both hold a hash not yet vouched for, so both are checked, refused and
    // counted; the kept hashes stay. (A forger's copy of only known hashes moves nothing either way.)
    const forgedHashes = decoded.value.hashes.map((hash) => Buffer.from(hash));
    const firstHash = forgedHashes[0] as Buffer;
    firstHash[0] = (firstHash[0] ?? 0) ^ 1;
    t.take(
      signInPlace(
        encodeManifestUnsigned({ ...run, sequence: 300, timestampUs: 0 }, forgedHashes),
        forger.privateKey,
      ),
    );
    const altered = Buffer.from(manifest);
    const lastHashAt = altered.length - 64 - 1;
    altered[lastHashAt] = (altered[lastHashAt] ?? 0) ^ 1;
    t.take(altered);
    assert.equal(t.g.stats.forged['bad-signature'], 2);
    assert.equal(t.g.stats.manifestsRepeated, 3);
    for (const datagram of wire) {
      t.take(datagram);
    }
    assert.equal(t.passed.length, 32);
    assert.equal(t.g.stats.dataAuthenticated, 32);
  });

  it(`keeps the newest ${signedManifestHashesMax} hashes: past the bound the oldest go first, one manifest's worth at a time`, () => {
    const protection = createSignedSenderProtection(
      { sourcePrivateKey: source.privateKey, sourcePublicKey: source.publicKey, manifestPackets: 64 },
      run,
    );
    const t = gate();
    const first = 0xffff_f000; // the sequences wrap past 2^32 on the way
    const manifests = signedManifestHashesMax / 64 + 3;
    const payload = Buffer.from('p');
    const kept = new Map<number, Buffer>();
    for (let index = 0; index < manifests * 64; index++) {
      const out = protection.seal(data(run, sequenceAdd(first, index), payload), 0, 0);
      if (index === 100 || index === 200) {
        kept.set(index, out[0] as Buffer);
      }
      if (out.length > 1) {
        t.take(out[1] as Buffer);
      }
    }
    assert.equal(t.g.stats.signaturesVerified, manifests);
    const vouched = (index: number) => t.g.vouches(run.sessionId, run.incarnation, sequenceAdd(first, index));
    // Three manifests' worth (192 hashes) fell off the front, in the order they came.
    assert.equal(vouched(0), false);
    assert.equal(vouched(191), false);
    assert.equal(vouched(192), true);
    assert.equal(vouched(manifests * 64 - 1), true);
    assert.equal(vouched(manifests * 64), false);
    // A DATA of an evicted sequence waits for a manifest again; one of a kept sequence passes.
    t.take(kept.get(100) as Buffer);
    t.take(kept.get(200) as Buffer);
    assert.equal(t.passed.length, 1);
    assert.equal(t.g.stats.holding, 1);
  });

  it("past the bound whole manifests go, oldest first, another incarnation's at the same sequences apart; a manifest sent again after it went is verified again, not a repeat", () => {
    const t = gate();
    const sign = (fields: { sessionId: number; incarnation: number; sequence: number }, hashes: Buffer[]) =>
      signInPlace(encodeManifestUnsigned({ ...fields, timestampUs: 0 }, hashes), source.privateKey);
    const earlier = { sessionId: run.sessionId, incarnation: run.incarnation + 1 };
    const earlierManifest = (first: number) =>
      sign(
        { ...earlier, sequence: first },
        Array.from({ length: manifestPacketsMax }, (_, index) =>
          hashOf(data(earlier, first + index, Buffer.from('earlier'))),
        ),
      );
    // An earlier run of the session (another incarnation) left the gate holding its hashes from
    // 1000 on, one manifest short of the bound.
    const earlierCount = signedManifestHashesMax / manifestPacketsMax - 1;
    for (let index = 0; index < earlierCount; index++) {
      t.take(earlierManifest(1000 + index * manifestPacketsMax));
    }
    // This run's manifests over 990-1053 and 1054-1117 share the earlier run's first sequences: the
    // second passes the bound, and the manifest kept longest goes whole (the earlier run's first),
    // not this run's hashes at the same sequences.
    const packets = Array.from({ length: 128 }, (_, index) =>
      data(run, 990 + index, Buffer.from(`new ${index}`)),
    );
    const manifest = sign({ ...run, sequence: 990 }, packets.slice(0, 64).map(hashOf));
    t.take(manifest);
    t.take(sign({ ...run, sequence: 1054 }, packets.slice(64).map(hashOf)));
    assert.equal(t.g.vouches(earlier.sessionId, earlier.incarnation, 1000), false);
    assert.equal(t.g.vouches(earlier.sessionId, earlier.incarnation, 1063), false);
    assert.equal(t.g.vouches(earlier.sessionId, earlier.incarnation, 1064), true);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 990), true);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 1000), true);
    // More of the earlier run's manifests, at sequences of their own: its older ones go, then this
    // run's first manifest, whole; its second stays.
    for (let index = 0; index < earlierCount; index++) {
      t.take(earlierManifest(500_000 + index * manifestPacketsMax));
    }
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 990), false);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 1053), false);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 1054), true);
    t.take(packets[10] as Buffer); // 1000, repaired late: held, nothing vouches for it now
    assert.equal(t.g.stats.dataAuthenticated, 0);
    const verified = t.g.stats.signaturesVerified;
    const repeated = t.g.stats.manifestsRepeated;
    // The source's repeat of the same bytes holds hashes the gate no longer has: it is verified and
    // they are learnt again, and the held DATA passes.
    t.take(Buffer.from(manifest));
    assert.equal(t.g.stats.manifestsRepeated, repeated);
    assert.equal(t.g.stats.signaturesVerified, verified + 1);
    assert.equal(t.g.stats.dataAuthenticated, 1);
    assert.deepEqual(t.passed, [packets[10]]);
    assert.equal(t.g.vouches(run.sessionId, run.incarnation, 1000), true);
    // Now it is all kept: the next copy is a repeat by its bytes.
    t.take(Buffer.from(manifest));
    assert.equal(t.g.stats.manifestsRepeated, repeated + 1);
    assert.equal(t.g.stats.signaturesVerified, verified + 1);
  });

  it('a manifest that only partly vouches for its sequences (a manifest of its run came first for the others) is a repeat by its hashes, not by its bytes', () => {
    const t = gate();
    const sign = (sequence: number, hashes: Buffer[]) =>
      signInPlace(encodeManifestUnsigned({ ...run, sequence, timestampUs: 0 }, hashes), source.privateKey);
    const packets = Array.from({ length: 80 }, (_, index) =>
      data(run, 1000 + index, Buffer.from(`p ${index}`)),
    );
    // 1010-1073 first, then 1000-1063 (overlapping: only 1000-1009 are its own).
    t.take(sign(1010, packets.slice(10, 74).map(hashOf)));
    const overlapping = sign(1000, packets.slice(0, 64).map(hashOf));
    t.take(overlapping);
    assert.equal(t.g.stats.signaturesVerified, 2);
    const repeated = t.g.stats.manifestsRepeated;
    t.take(Buffer.from(overlapping));
    assert.equal(t.g.stats.signaturesVerified, 2);
    assert.equal(t.g.stats.manifestsRepeated, repeated + 1);
    for (const packet of packets.slice(0, 74)) {
      t.take(packet);
    }
    assert.equal(t.g.stats.dataAuthenticated, 74);
    assert.deepEqual(t.g.stats.forged, {});
  });

  it("a HEARTBEAT or END passes only after the source signed it; a forger's signature moves nothing", () => {
    const protection = sender();
    const t = gate();
    const genuine = heartbeat(run, 200);
    const forgedHeartbeat = heartbeat(run, 200 + 65_000);
    const forgedEnd = end(run, 210, 10);
    t.take(forgedHeartbeat);
    t.take(buildControlSignature(forgedEnd, forger.privateKey));
    t.take(forgedEnd);
    t.take(genuine);
    assert.equal(t.passed.length, 0);
    t.take(protection.signControl(genuine));
    assert.deepEqual(t.passed, [genuine]);
    assert.equal(t.g.stats.forged['bad-signature'], 1);
    assert.equal(t.g.stats.holding, 2, 'the forged HEARTBEAT and END wait for a signature that never comes');
    // Signature first, then the datagram (the order the source sends them): it passes at once.
    const next = heartbeat(run, 300);
    t.take(protection.signControl(next));
    t.take(next);
    assert.deepEqual(t.passed, [genuine, next]);
    const signature = decodeSignature(protection.signControl(next));
    assert.ok(signature.ok && signature.value.kind === SignatureKind.control);
  });

  it('ignoreControl drops a type and the signatures that vouch for it unverified; the other types still pass only when signed', () => {
    const protection = sender();
    const t = gate();
    const first = descriptor(run, { firstSequence: 0, next: 10 });
    t.take(protection.signControl(first));
    t.take(first);
    assert.deepEqual(t.passed, [first]);
    const verified = t.g.stats.signaturesVerified;
    // One DESCRIPTOR waits for its signature when the role says it needs no more of them.
    const waiting = descriptor(run, { firstSequence: 0, next: 20 });
    t.take(waiting);
    assert.equal(t.g.stats.holding, 1);
    t.g.ignoreControl(PacketType.descriptor);
    assert.equal(t.g.stats.holding, 0);
    assert.equal(t.g.stats.controlIgnored, 1);
    t.take(protection.signControl(waiting));
    for (let next = 30; next < 40; next++) {
      const later = descriptor(run, { firstSequence: 0, next });
      t.take(protection.signControl(later));
      t.take(later);
    }
    // Forged ones the same: dropped, not verified, not counted as forged.
    const forged = descriptor(run, { firstSequence: 0, next: 50 });
    t.take(buildControlSignature(forged, forger.privateKey));
    t.take(forged);
    assert.deepEqual(t.passed, [first], 'no DESCRIPTOR passes after ignoreControl');
    assert.equal(t.g.stats.controlIgnored, 1 + 1 + 20 + 2);
    assert.equal(t.g.stats.signaturesVerified, verified, 'none of their signatures was verified');
    assert.deepEqual(t.g.stats.forged, {});
    assert.equal(t.g.stats.holding, 0);
    // A HEARTBEAT still needs its signature, and a forger's still moves nothing.
    const genuine = heartbeat(run, 40);
    const forgedHeartbeat = heartbeat(run, 90);
    t.take(buildControlSignature(forgedHeartbeat, forger.privateKey));
    t.take(forgedHeartbeat);
    t.take(protection.signControl(genuine));
    t.take(genuine);
    assert.deepEqual(t.passed, [first, genuine]);
    assert.equal(t.g.stats.forged['bad-signature'], 1);
    assert.equal(t.g.stats.holding, 1, 'the forged HEARTBEAT waits for a signature that never comes');
    assert.equal(t.g.stats.signaturesVerified, verified + 1);
  });

  it('a flood of unauthenticated DATA is bounded and counted', () => {
    const t = gate();
    for (let sequence = 0; sequence < signedHeldPacketsMax + 10; sequence++) {
      t.take(data(run, sequence, Buffer.alloc(8)));
    }
    assert.equal(t.g.stats.holding, signedHeldPacketsMax);
    assert.equal(t.g.stats.unauthenticated, 10);
    assert.equal(t.passed.length, 0);
  });

  it('DATA held and then passed is let go: a gate once full keeps no datagram its manifests released since', async () => {
    const protection = createSignedSenderProtection(
      { sourcePrivateKey: source.privateKey, sourcePublicKey: source.publicKey, manifestPackets: 32 },
      run,
    );
    let passed = 0;
    const g = createSignedSessionGate(source.publicKey, {});
    const take = (datagram: Buffer) => g.filter(datagram, () => passed++);
    let sequence = 0;
    const seal = () => protection.seal(data(run, sequence++, Buffer.alloc(1000)), 0, 0);
    // A burst whose manifests come late fills the held DATA to its bound (the oldest is dropped).
    const manifests: Buffer[] = [];
    while (sequence < signedHeldPacketsMax + 32) {
      const [datagram, manifest] = seal();
      take(datagram as Buffer);
      if (manifest !== undefined) {
        manifests.push(manifest);
      }
    }
    assert.equal(g.stats.unauthenticated, 32);
    for (const manifest of manifests) {
      take(manifest);
    }
    assert.equal(g.stats.holding, 0);
    // Then each DATA comes just ahead of its manifest: held a moment, then passed.
    const released: Array<WeakRef<Buffer>> = [];
    const passedBefore = passed;
    for (let index = 0; index < 20_000; index++) {
      const [datagram, manifest] = seal();
      if (index < 2_000) {
        released.push(new WeakRef(datagram as Buffer));
      }
      take(datagram as Buffer);
      if (manifest !== undefined) {
        take(manifest);
      }
    }
    assert.equal(passed - passedBefore, 20_000);
    assert.equal(g.stats.holding, 0);
    await new Promise<void>((resolve) => setImmediate(resolve)); // a WeakRef holds its target for the turn
    collectGarbage();
    const kept = released.filter((ref) => ref.deref() !== undefined).length;
    assert.equal(kept, 0, `${kept} of 2000 datagrams passed long ago are still kept`);
  });
});

describe('signed-session gate: what a held DATA came with', () => {
  it("DATA held and then passed lets go of what its pass callback holds too (a repair server's holds the REPAIR it came in)", async () => {
    const protection = sender();
    const g = createSignedSessionGate(source.publicKey, {});
    let passed = 0;
    const carriers: Array<WeakRef<Buffer>> = [];
    const manifests: Buffer[] = [];
    for (let sequence = 0; sequence < 512; sequence++) {
      const [datagram, manifest] = protection.seal(data(run, sequence, Buffer.alloc(1000)), 0, 0);
      // What a role's callback may close over: here the envelope the DATA came in.
      const carrier = Buffer.concat([Buffer.alloc(16), datagram as Buffer]);
      carriers.push(new WeakRef(carrier));
      g.filter(carrier.subarray(16), (authenticated) => {
        if (authenticated.length + 16 === carrier.length) {
          passed++;
        }
      });
      if (manifest !== undefined) {
        manifests.push(manifest);
      }
    }
    for (const manifest of manifests) {
      g.filter(manifest, () => undefined);
    }
    assert.equal(passed, 512);
    assert.equal(g.stats.holding, 0);
    await new Promise<void>((resolve) => setImmediate(resolve)); // a WeakRef holds its target for the turn
    collectGarbage();
    const kept = carriers.filter((ref) => ref.deref() !== undefined).length;
    assert.equal(kept, 0, `${kept} of 512 envelopes of DATA passed long ago are still kept`);
  });
});

describe('signed-session gate: forged DATA piled up at one sequence', () => {
  /**
   * How many array elements the gate's calls to Array.prototype methods walk over while `body`
   * runs: the work it does in lists, counted rather than timed.
   */
  function elementsWalked(body: () => void): number {
    const names = ['filter', 'indexOf', 'includes', 'splice', 'slice', 'findIndex', 'find', 'some'] as const;
    const originals = names.map((name) => Array.prototype[name]);
    let walked = 0;
    names.forEach((name, index) => {
      const original = originals[index] as (...args: unknown[]) => unknown;
      Object.defineProperty(Array.prototype, name, {
        configurable: true,
        writable: true,
        value: function (this: unknown[], ...args: unknown[]) {
          walked += this.length;
          return original.apply(this, args);
        },
      });
    });
    try {
      body();
    } finally {
      names.forEach((name, index) => {
        Object.defineProperty(Array.prototype, name, {
          configurable: true,
          writable: true,
          value: originals[index],
        });
      });
    }
    return walked;
  }

  it(`a flood past the held bound at one sequence costs each datagram no walk over the ${signedHeldPacketsMax} others, nor does the manifest that releases them`, () => {
    const t = gate();
    const forgedData = data(run, 1000, Buffer.from('forged 1000'));
    const genuine = data(run, 1000, Buffer.from('genuine 1000'));
    const manifest = signInPlace(
      encodeManifestUnsigned({ ...run, sequence: 1000, timestampUs: 0 }, [hashOf(genuine)]),
      source.privateKey,
    );
    let walked = elementsWalked(() => {
      for (let index = 0; index < 2 * signedHeldPacketsMax; index++) {
        t.take(forgedData);
      }
    });
    assert.equal(t.g.stats.holding, signedHeldPacketsMax);
    assert.equal(t.g.stats.unauthenticated, signedHeldPacketsMax);
    // Dropping the oldest of them once per datagram: a walk over all those held at the sequence
    // each time is 67 million elements, a CPU a forger buys with 8 KiB of packets.
    assert.ok(
      walked < 16 * signedHeldPacketsMax,
      `${walked} elements walked for ${2 * signedHeldPacketsMax} datagrams`,
    );
    t.take(genuine);
    walked = elementsWalked(() => t.take(manifest));
    assert.deepEqual(t.passed, [genuine]);
    assert.equal(t.g.stats.forged['hash-mismatch'], signedHeldPacketsMax - 1);
    assert.equal(t.g.stats.unauthenticated, signedHeldPacketsMax + 1);
    assert.equal(t.g.stats.holding, 0);
    assert.ok(
      walked < 16 * signedHeldPacketsMax,
      `${walked} elements walked releasing ${signedHeldPacketsMax} datagrams`,
    );
  });
});

describe('signed-session gate: two runs of a source at the same sequences, among forgeries past the held bound', () => {
  for (const seed of [7, 2026]) {
    it(`every DATA is passed, refused, dropped or held, and counted once; a forgery never passes; once manifests cover every sequence nothing is held (seed ${seed})`, () => {
      const random = createRandom(seed);
      const runs = [
        { sessionId: 5, incarnation: 1 },
        { sessionId: 5, incarnation: 2 },
      ];
      // Sequences that share a slot of the held ring (2^14 apart) or of the hashes' ring (2^17).
      const bases = [100, 100 + 2 ** 14, 100 + 2 ** 15, 100 + 3 * 2 ** 14, 100 + 2 ** 17];
      const spread = 2000;
      const burst = 100 + 2 ** 18;
      // A genuine DATA is the same bytes at every copy (a fixed header time).
      const genuine = (of: (typeof runs)[number], sequence: number) =>
        encodeData({ ...of, sequence, timestampUs: 0 }, Buffer.from(`genuine ${of.incarnation} ${sequence}`));
      const manifestOf = (of: (typeof runs)[number], first: number, count: number) =>
        signInPlace(
          encodeManifestUnsigned(
            { ...of, sequence: first, timestampUs: 0 },
            Array.from({ length: count }, (_, index) => hashOf(genuine(of, sequenceAdd(first, index)))),
          ),
          source.privateKey,
        );
      const g = createSignedSessionGate(source.publicKey, {});
      let dataTaken = 0;
      const copies = new Map<string, number>();
      const passes = new Map<string, number>();
      const accounted = () =>
        g.stats.dataAuthenticated +
        (g.stats.forged['hash-mismatch'] ?? 0) +
        g.stats.unauthenticated +
        g.stats.holding;
      for (let step = 0; step < 20_000; step++) {
        const of = runs[random.int(runs.length)] as (typeof runs)[number];
        const sequence = sequenceAdd(bases[random.int(bases.length)] as number, random.int(spread));
        const kind = random.int(100);
        if (kind < 50) {
          const datagram = genuine(of, sequence);
          const key = `${of.incarnation}/${sequence}`;
          copies.set(key, (copies.get(key) ?? 0) + 1);
          dataTaken++;
          g.filter(datagram, (passed) => {
            assert.deepEqual(passed, datagram);
            passes.set(key, (passes.get(key) ?? 0) + 1);
          });
        } else if (kind < 97) {
          dataTaken++;
          g.filter(data(of, sequence, random.bytes(6)), () => assert.fail(`a forgery at ${sequence} passed`));
        } else {
          g.filter(manifestOf(of, sequence, 1 + random.int(manifestPacketsMax)), () => undefined);
        }
        assert.equal(accounted(), dataTaken, `counted at step ${step}`);
        assert.ok(g.stats.holding <= signedHeldPacketsMax);
        if (step === 10_000) {
          // A burst at sequences no manifest covered yet (sharing slots with the first base's).
          for (let index = 0; index < signedHeldPacketsMax + 1000; index++) {
            dataTaken++;
            g.filter(data(of, sequenceAdd(burst, index % spread), random.bytes(6)), () =>
              assert.fail('passed'),
            );
          }
          assert.equal(accounted(), dataTaken);
        }
      }
      assert.ok(g.stats.unauthenticated > 0, 'the flood went past the held bound');
      // Manifests over every sequence of both runs: whatever waits is passed or refused.
      for (const of of runs) {
        for (const base of [...bases, burst]) {
          for (let offset = 0; offset < spread; offset += manifestPacketsMax) {
            g.filter(manifestOf(of, sequenceAdd(base, offset), manifestPacketsMax), () => undefined);
          }
        }
      }
      assert.equal(g.stats.holding, 0, 'nothing is held for good');
      assert.equal(accounted(), dataTaken);
      for (const [key, count] of passes) {
        assert.ok(count <= (copies.get(key) ?? 0), `${key} passed ${count} times, sent ${copies.get(key)}`);
      }
      assert.ok(g.stats.dataAuthenticated > 5_000);
    });
  }
});

describe("signed-session gate: a check that keeps nothing (a retransmit server's peer-fetched copies)", () => {
  it('authentic once a manifest vouches, forged against it, unknown before', () => {
    const protection = sender();
    const t = gate();
    const wire: Buffer[] = [];
    for (let sequence = 0; sequence < 32; sequence++) {
      wire.push(...protection.seal(data(run, sequence, Buffer.from(`genuine ${sequence}`)), 0, 0));
    }
    const manifest = wire.pop() as Buffer;
    assert.equal(t.g.check(wire[0] as Buffer), 'unknown');
    t.take(manifest);
    assert.equal(t.g.check(wire[0] as Buffer), 'authentic');
    assert.equal(t.g.check(data(run, 0, Buffer.from('forged'))), 'forged');
    assert.equal(t.g.stats.holding, 0);
    assert.equal(t.passed.length, 0, 'check passes nothing on');
  });
});

describe('signed-session gate: what a restricted source seals, hashed in the same call', () => {
  it('every sealed DATA is vouched by its manifest: ring slots reused, epochs changing, sequences wrapping past 2^32, manifests flushed early', () => {
    for (const suite of suites) {
      const incarnation = 0x1234;
      const protection = createSenderProtection(
        {
          suite,
          service: 'news',
          serviceEpoch: 1,
          serviceKey: Buffer.alloc(32, 9),
          sourcePrivateKey: source.privateKey,
          sourcePublicKey: source.publicKey,
          cryptoPeriodMs: 40,
          tier: 0,
          manifestPackets: 32,
        },
        { sessionId: 77, incarnation },
      );
      // Three slots of each ring, as the source reuses its own: a slot is written again three
      // packets later, after its datagram went on the wire (copied here, as the socket sends it).
      const ring = Array.from({ length: 3 }, () => Buffer.alloc(headerBytes + 1400));
      const sealedRing = Array.from({ length: 3 }, () => Buffer.alloc(headerBytes + 1400 + 16));
      const wire: Buffer[] = [];
      const packets = 300;
      let sequence = 2 ** 32 - 50;
      for (let index = 0; index < packets; index++) {
        const slot = index % 3;
        const plain = ring[slot] as Buffer;
        const payloadBytes = 1 + ((index * 37) % 1400);
        plain.fill(index & 0xff, headerBytes);
        writeHeaderFields(plain, PacketType.data, 77, sequence, index, 0, payloadBytes, incarnation);
        // nowMs = index: a new key epoch every 40 packets.
        const sent = protection.seal(
          plain.subarray(0, headerBytes + payloadBytes),
          index,
          index,
          sealedRing[slot],
        );
        wire.push(...sent.map((datagram) => Buffer.from(datagram)));
        if (index % 13 === 12) {
          wire.push(...protection.flush(index)); // a HEARTBEAT's early manifest
        }
        sequence = (sequence + 1) >>> 0;
      }
      wire.push(...protection.finish(packets));
      const epochs = new Set(
        wire.filter((d) => d[offsetType] === PacketType.data).map((d) => d.readUInt16BE(offsetKeyEpoch)),
      );
      assert.ok(epochs.size >= 7, `${suite.name}: ${epochs.size} key epochs`);
      // One DATA altered on the wire: refused as a hash mismatch, every other one passes.
      const altered = wire.findIndex(
        (d) => d[offsetType] === PacketType.data && d.readUInt32BE(offsetSequence) === 5,
      );
      const target = wire[altered] as Buffer;
      target[headerBytes + 3] = (target[headerBytes + 3] ?? 0) ^ 0x01;
      const t = gate();
      for (const datagram of wire) {
        t.take(datagram);
      }
      assert.equal(t.g.stats.dataAuthenticated, packets - 1, suite.name);
      assert.deepEqual(t.g.stats.forged, { 'hash-mismatch': 1 }, suite.name);
      assert.equal(t.g.stats.holding, 0, suite.name);
    }
  });
});

describe('signed-session gate: the offer and KEY messages a source repeats unchanged', () => {
  it(`are signed once per ${signedRepeatRefreshMs} ms and verified once; every copy passes and is told as authenticated; an altered copy is refused`, () => {
    const protection = restrictedSender();
    const t = gate();
    const ticks = (2 * signedRepeatRefreshMs) / protectedControlIntervalMs; // one second of ticks
    const wire: Buffer[] = [];
    for (let tick = 0; tick < ticks; tick++) {
      const nowMs = tick * protectedControlIntervalMs;
      wire.push(...protection.control({ ...run, sequence: 1000 + tick }, nowMs, 1_000_000 + nowMs * 1000));
    }
    // Each tick: the offer and the KEY of epochs 1 and 2 (no DATA, so no manifest).
    assert.equal(wire.length, ticks * 3);
    const distinct = new Set(wire.map((datagram) => datagram.toString('hex')));
    assert.equal(distinct.size, 6, 'the offer and two KEYs, signed at 0 ms and again at the refresh');
    const keyTimes = wire
      .filter((datagram) => datagram[offsetType] === PacketType.key)
      .map((datagram) => {
        const key = decodeKey(datagram);
        assert.ok(key.ok);
        return key.value.timestampUs;
      });
    assert.deepEqual([...new Set(keyTimes)], [1_000_000, 1_000_000 + signedRepeatRefreshMs * 1000]);
    for (const datagram of wire) {
      t.take(Buffer.from(datagram)); // as a socket hands them over: a new buffer each
    }
    assert.equal(t.g.stats.signaturesVerified, 6);
    assert.equal(t.g.stats.signedRepeats, ticks * 3 - 6);
    assert.equal(t.passed.length, ticks * 2, 'every KEY copy is passed on');
    assert.equal(
      t.authenticated.length,
      ticks * 3,
      'every copy is told (a repair server forwards each on S2)',
    );
    // A copy with one bit of its signature flipped is no repeat: checked, refused, counted.
    const altered = Buffer.from(wire[1] as Buffer);
    altered[altered.length - 1] = (altered[altered.length - 1] ?? 0) ^ 1;
    t.take(altered);
    const alteredOffer = Buffer.from(wire[0] as Buffer);
    alteredOffer[alteredOffer.length - 1] = (alteredOffer[alteredOffer.length - 1] ?? 0) ^ 1;
    t.take(alteredOffer);
    assert.equal(t.g.stats.forged['bad-signature'], 2);
    assert.equal(t.passed.length, ticks * 2);
    assert.equal(t.g.stats.signedRepeats, ticks * 3 - 6);
  });

  it('a new crypto-period is announced with a KEY signed for it; the epoch two back is no longer repeated', () => {
    const protection = restrictedSender();
    const epochsAt = (nowMs: number) =>
      protection
        .control({ ...run, sequence: 1 }, nowMs, nowMs * 1000)
        .filter((datagram) => datagram[offsetType] === PacketType.key)
        .map((datagram) => datagram.readUInt16BE(offsetKeyEpoch));
    assert.deepEqual(epochsAt(0), [1, 2]);
    const before = protection.control({ ...run, sequence: 1 }, 9_990, 9_990_000);
    const after = protection.control({ ...run, sequence: 2 }, 10_000, 10_000_000);
    assert.deepEqual(epochsAt(10_010), [2, 3]);
    // Epoch 2's KEY signed at 9,990 ms is still repeated unchanged just after the switch.
    const keyOf = (datagrams: Buffer[], epoch: number) =>
      datagrams.find((d) => d[offsetType] === PacketType.key && d.readUInt16BE(offsetKeyEpoch) === epoch);
    assert.ok(keyOf(before, 2)?.equals(keyOf(after, 2) as Buffer));
  });
});

describe('signed-session gate: repeats of several runs, and old copies replayed among them', () => {
  it('a gate over three runs of one source (a retransmit server) verifies each offer and KEY once per refresh, not every copy', () => {
    const runs = [1, 2, 3].map((index) => ({ sessionId: 10 + index, incarnation: 0x100 + index }));
    const protections = runs.map((of) => restrictedSender(32, of));
    const t = gate();
    const ticks = (2 * signedRepeatRefreshMs) / protectedControlIntervalMs; // one second of ticks
    let copies = 0;
    for (let tick = 0; tick < ticks; tick++) {
      const nowMs = tick * protectedControlIntervalMs;
      protections.forEach((protection, index) => {
        const header = { ...(runs[index] as (typeof runs)[number]), sequence: 1000 + tick };
        for (const datagram of protection.control(header, nowMs, 1_000_000 + nowMs * 1000)) {
          t.take(Buffer.from(datagram));
          copies++;
        }
      });
    }
    assert.equal(copies, ticks * 9);
    // Per run: the offer and two KEYs, signed at 0 ms and again at the refresh.
    assert.equal(t.g.stats.signaturesVerified, 3 * 6);
    assert.equal(t.g.stats.signedRepeats, copies - 3 * 6);
    assert.equal(t.authenticated.length, copies, 'every copy is told (a repair server forwards each on S2)');
  });

  it('old copies replayed before every tick, however many, do not make the current ones verified again', () => {
    const protection = restrictedSender();
    const t = gate();
    const tick = (index: number) => {
      const nowMs = index * protectedControlIntervalMs;
      return protection.control({ ...run, sequence: 1000 + index }, nowMs, 1_000_000 + nowMs * 1000);
    };
    // An attacker records two seconds of the stream: four signings of the offer and of each KEY.
    const recorded = new Map<string, Buffer>();
    const recordedTicks = (4 * signedRepeatRefreshMs) / protectedControlIntervalMs;
    for (let index = 0; index < recordedTicks; index++) {
      for (const datagram of tick(index)) {
        recorded.set(datagram.toString('hex'), datagram);
      }
    }
    const old = [...recorded.values()];
    assert.equal(old.length, 12);
    // Then, for one second, replays every recorded copy just before each genuine tick.
    const ticks = (2 * signedRepeatRefreshMs) / protectedControlIntervalMs;
    let genuinePassed = 0;
    for (let index = recordedTicks; index < recordedTicks + ticks; index++) {
      for (const datagram of old) {
        t.take(Buffer.from(datagram));
      }
      for (const datagram of tick(index)) {
        t.g.filter(Buffer.from(datagram), () => genuinePassed++);
      }
    }
    assert.equal(genuinePassed, ticks * 2, 'every genuine KEY copy is passed on');
    // The genuine copies: two signings of three messages verified, every other copy a repeat.
    assert.equal(t.g.stats.signedRepeats, ticks * 3 - 6);
  });
});

describe('signed-session gate: a source whose wall clock steps back', () => {
  it('its repeats, signed with an earlier time than those kept, are verified twice, then known again', () => {
    const protection = restrictedSender();
    const t = gate();
    const hourUs = 3_600_000_000;
    const ticks = (2 * signedRepeatRefreshMs) / protectedControlIntervalMs; // one second of ticks
    for (let tick = 0; tick < 2 * ticks; tick++) {
      const nowMs = tick * protectedControlIntervalMs;
      // The wall clock steps back an hour after one second.
      const wallUs = 2 * hourUs + nowMs * 1000 - (tick < ticks ? 0 : hourUs);
      for (const datagram of protection.control({ ...run, sequence: 1000 + tick }, nowMs, wallUs)) {
        t.take(Buffer.from(datagram));
      }
    }
    // The offer and two KEYs, signed every 500 ms: before the step, each signing verified once;
    // the first after it (older than the one kept) verified at its first two copies; the next once.
    assert.equal(t.g.stats.signaturesVerified, 2 * 3 + 2 * 3 + 3);
    assert.equal(t.g.stats.signedRepeats, 2 * ticks * 3 - 15);
    assert.equal(t.passed.length, 2 * ticks * 2, 'every KEY copy is passed on');
  });

  it('an old copy replayed twice takes the slot only until the next genuine copy: it costs the repeats one verification per two replays', () => {
    const protection = restrictedSender();
    const t = gate();
    const tick = (index: number) => {
      const nowMs = index * protectedControlIntervalMs;
      return protection.control({ ...run, sequence: 1000 + index }, nowMs, 1_000_000 + nowMs * 1000);
    };
    const old = tick(0);
    const ticks = (2 * signedRepeatRefreshMs) / protectedControlIntervalMs;
    // From 2 s on (the recorded copies are older than what the source signs now).
    for (let index = 40; index < 40 + ticks; index++) {
      for (const datagram of [...old, ...old]) {
        t.take(Buffer.from(datagram));
      }
      for (const datagram of tick(index)) {
        t.take(Buffer.from(datagram));
      }
    }
    // Each tick: six replays verified (the second of each takes the slot), then three genuine
    // copies verified again; no more than the replays themselves cost.
    assert.ok(t.g.stats.signaturesVerified <= ticks * (6 + 3), String(t.g.stats.signaturesVerified));
  });
});

describe('restricted source: the manifest collected so far, at a control tick', () => {
  it(`is signed once its oldest packet has waited ${manifestFlushWaitMs} ms; a younger one is left to fill; a HEARTBEAT's flush signs it whatever its age`, () => {
    const protection = restrictedSender(64);
    // The wall clock and the monotonic one move together here (the next test steps the wall clock).
    const sealedOne = (sequence: number, wallUs: number) => {
      const plain = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(plain, PacketType.data, run.sessionId, sequence, wallUs, 0, 100, run.incarnation);
      return protection.seal(plain, wallUs / 1000, wallUs);
    };
    const manifestsIn = (datagrams: Buffer[]) =>
      datagrams.filter(
        (d) => d[offsetType] === PacketType.signature && d[headerBytes] === SignatureKind.manifest,
      ).length;
    assert.equal(sealedOne(1, 100_000).length, 1);
    const waitUs = manifestFlushWaitMs * 1000;
    // Just under the wait: nothing signed yet.
    assert.equal(
      manifestsIn(
        protection.control({ ...run, sequence: 2 }, (100_000 + waitUs - 1) / 1000, 100_000 + waitUs - 1),
      ),
      0,
    );
    // At the wait: the pending manifest goes out (over sequence 1 only).
    const due = protection.control({ ...run, sequence: 2 }, (100_000 + waitUs) / 1000, 100_000 + waitUs);
    assert.equal(manifestsIn(due), 1);
    const manifest = decodeSignature(
      due.find(
        (d) => d[offsetType] === PacketType.signature && d[headerBytes] === SignatureKind.manifest,
      ) as Buffer,
    );
    assert.ok(manifest.ok && manifest.value.kind === SignatureKind.manifest);
    assert.equal(manifest.value.sequence, 1);
    assert.equal(manifest.value.hashes.length, 1);
    // A HEARTBEAT's flush does not wait: a HEARTBEAT claims no sequence no manifest vouches for.
    sealedOne(2, 200_000);
    assert.equal(protection.flush(200_000).length, 1);
    // The wait counts from the oldest packet collected, not the newest.
    sealedOne(3, 300_000);
    sealedOne(4, 300_000 + waitUs);
    const firsts = protection
      .control({ ...run, sequence: 5 }, (300_000 + waitUs) / 1000, 300_000 + waitUs)
      .filter((d) => d[offsetType] === PacketType.signature && d[headerBytes] === SignatureKind.manifest)
      .map((d) => d.readUInt32BE(offsetSequence));
    assert.deepEqual(firsts, [1, 2, 3], 'the repeats of the manifests over 1 and 2, then a new one from 3');
  });

  it("waits by the monotonic clock: a source whose wall clock steps back still signs a slow stream's DATA at the next tick, and one stepped forward signs no younger manifest", () => {
    const hourUs = 3_600_000_000;
    const wallUs = 1_800_000_000_000_000; // 2027
    for (const [name, protection] of [
      ['restricted', restrictedSender(64)],
      ['signed', sender()],
    ] as const) {
      const sealedOne = (sequence: number, nowMs: number, atUs: number) => {
        const plain = Buffer.alloc(headerBytes + 100);
        writeHeaderFields(plain, PacketType.data, run.sessionId, sequence, atUs, 0, 100, run.incarnation);
        return protection.seal(plain, nowMs, atUs);
      };
      const newManifests = (datagrams: Buffer[], first: number) =>
        datagrams.filter(
          (d) =>
            d[offsetType] === PacketType.signature &&
            d[headerBytes] === SignatureKind.manifest &&
            d.readUInt32BE(offsetSequence) === first,
        ).length;
      sealedOne(1, 1000, wallUs);
      // The wall clock steps back an hour; the next tick, one interval later, signs the packet.
      const tickMs = 1000 + protectedControlIntervalMs;
      assert.equal(
        newManifests(protection.control({ ...run, sequence: 2 }, tickMs, wallUs - hourUs), 1),
        1,
        `${name}: the manifest over DATA that waited ${protectedControlIntervalMs} ms`,
      );
      // A packet, then the wall clock steps forward an hour: a tick 1 ms later leaves it to fill.
      sealedOne(2, 2000, wallUs - hourUs);
      assert.equal(
        newManifests(protection.control({ ...run, sequence: 3 }, 2001, wallUs + hourUs), 2),
        0,
        `${name}: DATA that waited 1 ms`,
      );
    }
  });
});

describe('BySequence: the ring (and its Map for sequences whose slot is taken) the gate keeps its hashes in', () => {
  it('agrees with a Map over 100,000 random sets, gets and deletes, slots shared and sequences past 2^31 included', () => {
    let seed = 12345;
    const random = (below: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % below;
    };
    const bySequence = new BySequence<number>(8);
    const model = new Map<number, number>();
    // 40 sequences over 8 slots, some near 2^32: each slot is wanted by about 5 of them.
    const sequences = Array.from(
      { length: 40 },
      (_, index) => (index < 20 ? index : 2 ** 32 - 1 - index) >>> 0,
    );
    for (let step = 0; step < 100_000; step++) {
      const sequence = sequences[random(sequences.length)] as number;
      const operation = random(3);
      if (operation === 0) {
        bySequence.set(sequence, step);
        model.set(sequence, step);
      } else if (operation === 1) {
        bySequence.delete(sequence);
        model.delete(sequence);
      }
      assert.equal(bySequence.get(sequence), model.get(sequence), `step ${step}`);
    }
    for (const sequence of sequences) {
      assert.equal(bySequence.get(sequence), model.get(sequence));
    }
    assert.ok(bySequence.overflowing > 0, 'some sequences found their slot taken');
    assert.throws(() => new BySequence(6), /power of two/);
  });
});
