/**
 * How many DATA packets a source's manifest covers (`send --manifest-packets`): by default as many
 * as keep the manifest no longer than the session's DATA datagrams (64 at the most), so that where
 * the DATA cross the network the manifests do too; given, 32-64.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { senderProtectionOptions } from '../../src/cli/restricted.js';
import { generateSigningKey } from '../../src/crypto/authority.js';
import { headerBytes, offsetType, PacketType } from '../../src/protocol/packet.js';
import {
  decodeSignature,
  manifestDatagramBytes,
  manifestPacketsFor,
  manifestPacketsMax,
  manifestPacketsMin,
  SignatureKind,
} from '../../src/protocol/restricted.js';
import { data } from '../helpers/craft.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-manifest-packets-'));
after(() => rmSync(directory, { recursive: true, force: true }));
const sourceKeyFile = join(directory, 'source.pem');
writeFileSync(sourceKeyFile, generateSigningKey().privateKey.export({ format: 'pem', type: 'pkcs8' }));
const serviceKeyFile = join(directory, 'news.key');
writeFileSync(serviceKeyFile, `${'ab'.repeat(32)}\n`);

const run = { sessionId: 9, incarnation: 3 };

/** The options `send` parses for a restricted session (or a signed one), with `extra` added. */
function sendValues(kind: 'restricted' | 'signed', extra: Record<string, string> = {}) {
  const common = { 'source-key': sourceKeyFile, ...extra };
  return kind === 'signed'
    ? { signed: true, ...common }
    : {
        restricted: true,
        service: 'news',
        'service-key-file': serviceKeyFile,
        suite: 'aes-256-gcm',
        'service-epoch': '1',
        'crypto-period': '10',
        tier: '0',
        ...common,
      };
}

/**
 * Seals DATA of `payloadBytes` from the protection `send` would use until it emits a manifest:
 * that manifest's count and length, and the DATA datagrams' length.
 */
function firstManifest(
  kind: 'restricted' | 'signed',
  payloadBytes: number,
  extra: Record<string, string> = {},
) {
  const factory = senderProtectionOptions(sendValues(kind, extra), undefined, payloadBytes);
  assert.ok(factory !== undefined);
  const protection = factory(run);
  let dataBytes = 0;
  for (let sequence = 0; sequence < manifestPacketsMax + 1; sequence++) {
    for (const datagram of protection.seal(data(run, sequence, Buffer.alloc(payloadBytes, 7)), 0, 0)) {
      if (datagram[offsetType] === PacketType.data) {
        dataBytes = datagram.length;
        continue;
      }
      const decoded = decodeSignature(datagram);
      assert.ok(decoded.ok && decoded.value.kind === SignatureKind.manifest);
      return { count: decoded.value.hashCount, bytes: datagram.length, dataBytes };
    }
  }
  throw new Error('no manifest after the most packets one covers');
}

describe('packets per manifest', () => {
  it('by default, the most whose manifest fits within a DATA datagram, 32 at the least and 64 at the most', () => {
    assert.equal(manifestDatagramBytes(64), 1124);
    assert.equal(manifestPacketsFor(headerBytes + 1400 + 16), 64); // sealed DATA of 1,400 bytes: 1,448
    assert.equal(manifestPacketsFor(manifestDatagramBytes(64)), 64);
    assert.equal(manifestPacketsFor(manifestDatagramBytes(64) - 1), 63);
    assert.equal(manifestPacketsFor(manifestDatagramBytes(59)), 59);
    assert.equal(manifestPacketsFor(manifestDatagramBytes(59) - 1), 58);
    assert.equal(manifestPacketsFor(headerBytes + 200), manifestPacketsMin);
    assert.equal(manifestPacketsFor(65_507), manifestPacketsMax);
  });

  for (const [kind, payload, count] of [
    ['restricted', 1400, 64],
    ['signed', 1400, 64],
    ['restricted', 1076, 64],
    ['signed', 1091, 63],
    ['restricted', 1000, 59],
    ['signed', 1000, 58],
    ['restricted', 9000, 64],
  ] as const) {
    it(`send --${kind} --packet-size ${payload}: a manifest over ${count} packets, no longer than its DATA`, () => {
      const manifest = firstManifest(kind, payload);
      assert.equal(manifest.count, count);
      assert.ok(
        manifest.bytes <= manifest.dataBytes,
        `${manifest.bytes} bytes against DATA of ${manifest.dataBytes}`,
      );
      assert.equal(manifest.bytes, manifestDatagramBytes(count));
    });
  }

  it('with small packets the manifest is larger than the DATA: 32 packets at the least', () => {
    const manifest = firstManifest('restricted', 100);
    assert.equal(manifest.count, 32);
    assert.ok(manifest.bytes > manifest.dataBytes);
  });

  it('every-n-th-packet mode counts the seed each DATA carries', () => {
    // 1,000 bytes of payload, the tag and the 16-byte seed: 1,064 bytes, 60 hashes.
    assert.equal(firstManifest('restricted', 1000, { 'group-packets': '16' }).count, 60);
  });

  it('--manifest-packets is taken as given within 32-64, whatever the packet size', () => {
    assert.equal(firstManifest('restricted', 1400, { 'manifest-packets': '40' }).count, 40);
    assert.equal(firstManifest('restricted', 500, { 'manifest-packets': '64' }).count, 64);
    assert.equal(firstManifest('signed', 1400, { 'manifest-packets': '32' }).count, 32);
  });

  for (const [kind, given, message] of [
    ['restricted', '65', /^--manifest-packets: 65 is out of range \(32-64, or 0 for none\)$/],
    ['restricted', '31', /^--manifest-packets: 31 is out of range \(32-64, or 0 for none\)$/],
    ['signed', '65', /^--manifest-packets: 65 is out of range \(32-64 for a signed session\)$/],
    ['signed', '0', /^--manifest-packets: 0 is out of range \(32-64 for a signed session\)$/],
    [
      'signed',
      '-1',
      /^--manifest-packets: "-1" is not a whole number of packets \(32-64 for a signed session\)$/,
    ],
    ['signed', 'many', /^--manifest-packets: "many" is not a whole number of packets/],
    ['restricted', '99999999999999999999', /^--manifest-packets: 99999999999999999999 is out of range/],
    ['restricted', '1e2', /is not a whole number of packets/],
  ] as const) {
    it(`send --${kind} --manifest-packets ${given} is refused, naming the option and the range`, () => {
      assert.throws(
        () => senderProtectionOptions(sendValues(kind, { 'manifest-packets': given }), undefined, 1400),
        (error: unknown) => error instanceof Error && message.test(error.message),
      );
    });
  }

  it('--restricted --manifest-packets 0 sends no manifests', () => {
    const factory = senderProtectionOptions(
      sendValues('restricted', { 'manifest-packets': '0' }),
      undefined,
      1400,
    );
    assert.ok(factory !== undefined);
    const protection = factory(run);
    for (let sequence = 0; sequence < 200; sequence++) {
      const out: Buffer[] = protection.seal(data(run, sequence, Buffer.alloc(1400, 1)), 0, 0);
      assert.deepEqual(
        out.map((datagram) => datagram[offsetType]),
        [PacketType.data],
      );
    }
  });

  it('--manifest-packets without --signed or --restricted names both', () => {
    assert.throws(
      () => senderProtectionOptions({ 'manifest-packets': '40' }, undefined, 1400),
      (error: unknown) =>
        error instanceof Error && error.message === '--manifest-packets needs --restricted or --signed',
    );
  });
});
