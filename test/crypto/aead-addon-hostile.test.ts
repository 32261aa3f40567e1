/**
 * The packet AEAD addon (native/aead.c) called directly with hostile arguments: none may crash the
 * process, read or write past a buffer, or seal into a buffer it was not given. Each call either
 * throws a typed error or computes node:crypto's bytes (docs/security.md, "The packet engine").
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { describe, it, type TestContext } from 'node:test';
import { Worker } from 'node:worker_threads';
import { aeadEngine, nativeAddonPath } from '../../src/crypto/aead-engine.js';

interface Addon {
  create(...args: unknown[]): object;
  seal(...args: unknown[]): undefined;
  open(...args: unknown[]): boolean;
  dispose(...args: unknown[]): undefined;
  digest(...args: unknown[]): undefined;
  digestEquals(...args: unknown[]): boolean;
  sealDatagram(...args: unknown[]): undefined;
  openDatagram(...args: unknown[]): boolean;
  sealPacket(...args: unknown[]): undefined;
  openPacket(...args: unknown[]): number;
  sealPacketFunction(...args: unknown[]): (...args: unknown[]) => undefined;
  openPacketFunction(...args: unknown[]): (...args: unknown[]) => number;
  packetPath(...args: unknown[]): string;
}

/** The addon, or undefined (the test skips, saying why; fails under GATECAST_REQUIRE_PACKAGES=1). */
function addonOrSkip(t: TestContext): Addon | undefined {
  const engine = aeadEngine();
  if (engine.name === 'openssl-evp') {
    return createRequire(import.meta.url)(nativeAddonPath) as Addon;
  }
  const reason = `the packet engine is node:crypto: ${engine.reason}`;
  if (process.env.GATECAST_REQUIRE_PACKAGES === '1') {
    throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but the AEAD addon cannot be tested: ${reason}`);
  }
  t.skip(reason);
  return undefined;
}

const key = Buffer.alloc(32, 7);
const nonce = Buffer.from('0102030405060708090a0b0c', 'hex');
const aad = Buffer.alloc(24, 0xa5);

function reference(plain: Buffer): { sealed: Buffer; tag: Buffer } {
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  cipher.setAAD(aad);
  const sealed = Buffer.concat([cipher.update(plain), cipher.final()]);
  return { sealed, tag: cipher.getAuthTag() };
}

/** Asserts that fn throws an Error with code GATECAST_ERR_CIPHER (and returns its message). */
function refused(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (error: Error & { code?: string }) => {
    assert.equal(error.code, 'GATECAST_ERR_CIPHER');
    assert.match(error.message, message);
    return true;
  });
}

describe('packet AEAD addon: hostile arguments', () => {
  it('create refuses bad names, keys and flags', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    refused(() => addon.create('aes-256-gcm', key), /three arguments/);
    refused(() => addon.create('aes-256-gcm', key, true, 1), /three arguments/);
    refused(() => addon.create(42, key, true), /suite name must be a string/);
    refused(() => addon.create('aes-256-gcm'.padEnd(4096, 'x'), key, true), /unknown suite/);
    refused(() => addon.create('aes-256-gcm\0', key, true), /unknown suite/);
    refused(() => addon.create('aes-256-gcm\0xyz', key, true), /unknown suite/);
    refused(() => addon.create('chacha20-poly1305'.padEnd(31, ' '), key, true), /unknown suite/);
    refused(() => addon.create('aes-256-gcm', key.subarray(0, 31), true), /key length/);
    refused(() => addon.create('aes-128-gcm', key, true), /key length/);
    refused(() => addon.create('aes-256-gcm', 'k'.repeat(32), true), /key must be a Buffer/);
    refused(() => addon.create('aes-256-gcm', key, 1), /encrypt must be a boolean/);
  });

  it('seal and open refuse anything that is not a handle of their kind, and a disposed one', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const plain = Buffer.alloc(64, 1);
    const out = Buffer.alloc(64);
    const tag = Buffer.alloc(16);
    const sealer = addon.create('aes-256-gcm', key, true);
    const opener = addon.create('aes-256-gcm', key, false);
    assert.ok(Object.isFrozen(sealer));
    for (const fake of [
      {},
      null,
      undefined,
      0,
      'handle',
      Symbol('h'),
      [],
      () => 0,
      structuredClone(sealer),
    ]) {
      refused(() => addon.seal(fake, nonce, aad, plain, out, tag), /not an AEAD handle/);
      refused(() => addon.open(fake, nonce, aad, out, tag, plain), /not an AEAD handle/);
      refused(() => addon.dispose(fake), /not an AEAD handle/);
    }
    refused(() => addon.seal(new Proxy(sealer, {}), nonce, aad, plain, out, tag), /not an AEAD handle/);
    refused(() => addon.seal(Object.create(sealer), nonce, aad, plain, out, tag), /not an AEAD handle/);
    refused(() => addon.seal(opener, nonce, aad, plain, out, tag), /made to open cannot seal/);
    refused(() => addon.open(sealer, nonce, aad, out, tag, plain), /made to seal cannot open/);
    addon.dispose(sealer);
    addon.dispose(sealer); // twice is harmless
    refused(() => addon.seal(sealer, nonce, aad, plain, out, tag), /disposed/);
    addon.dispose(opener);
    refused(() => addon.open(opener, nonce, aad, out, tag, plain), /disposed/);
  });

  it('seal and open refuse wrong lengths, non-buffers and argument counts, writing nothing', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const sealer = addon.create('aes-256-gcm', key, true);
    const opener = addon.create('aes-256-gcm', key, false);
    const plain = Buffer.alloc(100, 3);
    const out = Buffer.alloc(100, 0xee);
    const tag = Buffer.alloc(16, 0xee);
    const lengths = /the nonce must be 12 bytes, the tag 16, the output as long as/;
    for (const [n, p, o, g] of [
      [nonce.subarray(0, 11), plain, out, tag],
      [Buffer.concat([nonce, Buffer.alloc(1)]), plain, out, tag],
      [nonce, plain, out.subarray(0, 99), tag],
      [nonce, plain, Buffer.alloc(101), tag],
      [nonce, plain, out, tag.subarray(0, 15)],
      [nonce, plain, out, Buffer.alloc(17)],
      [nonce, plain, out, Buffer.alloc(0)],
    ] as const) {
      refused(() => addon.seal(sealer, n, aad, p, o, g), lengths);
      refused(() => addon.open(opener, n, aad, p, g, o), lengths);
    }
    assert.ok(out.every((byte) => byte === 0xee) && tag.every((byte) => byte === 0xee));
    refused(() => addon.seal(sealer, nonce, aad, plain, out), /six arguments/);
    refused(() => addon.seal(sealer, nonce, aad, plain, out, tag, tag), /six arguments/);
    refused(() => addon.seal(sealer, nonce, 'aad', plain, out, tag), /associated data must be a Buffer/);
    refused(() => addon.seal(sealer, nonce, aad, plain.buffer, out, tag), /plaintext must be a Buffer/);
    refused(() => addon.open(opener, nonce, aad, out, tag, [1, 2]), /output must be a Buffer/);
    addon.dispose(sealer);
    addon.dispose(opener);
  });

  it('typed arrays of other widths count in bytes; zero-length and detached buffers are safe', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const sealer = addon.create('aes-256-gcm', key, true);
    const opener = addon.create('aes-256-gcm', key, false);
    // 12 bytes as three 32-bit words, 16 as two doubles, 64 as a DataView: the bytes are what count.
    const plain = Buffer.alloc(64, 9);
    const nonceWords = new Uint32Array(nonce.buffer.slice(nonce.byteOffset, nonce.byteOffset + 12));
    const out = new DataView(new ArrayBuffer(64));
    const tag = new Float64Array(2);
    addon.seal(sealer, nonceWords, aad, plain, out, tag);
    const expected = reference(plain);
    assert.deepEqual(Buffer.from(out.buffer), expected.sealed);
    assert.deepEqual(Buffer.from(tag.buffer), expected.tag);
    // A Uint16Array of 12 elements is 24 bytes, not a nonce.
    refused(() => addon.seal(sealer, new Uint16Array(12), aad, plain, out, tag), /nonce must be 12 bytes/);

    // Zero-length plaintext: the tag is node:crypto's.
    const emptyTag = Buffer.alloc(16);
    addon.seal(sealer, nonce, aad, Buffer.alloc(0), Buffer.alloc(0), emptyTag);
    assert.deepEqual(emptyTag, reference(Buffer.alloc(0)).tag);
    assert.equal(addon.open(opener, nonce, aad, Buffer.alloc(0), emptyTag, Buffer.alloc(0)), true);

    // Detached buffers read as zero bytes: a detached plaintext and output seal the empty packet,
    // a detached nonce or tag is refused.
    const detach = (bytes: number) => {
      const view = new Uint8Array(bytes);
      structuredClone(view.buffer, { transfer: [view.buffer] });
      assert.equal(view.byteLength, 0);
      return view;
    };
    const detachedTag = Buffer.alloc(16);
    addon.seal(sealer, nonce, aad, detach(64), detach(64), detachedTag);
    assert.deepEqual(detachedTag, emptyTag);
    refused(
      () => addon.seal(sealer, detach(12), aad, plain, Buffer.alloc(64), tag),
      /nonce must be 12 bytes/,
    );
    refused(() => addon.open(opener, nonce, aad, Buffer.alloc(64), detach(16), Buffer.alloc(64)), /tag 16/);
    assert.equal(addon.open(opener, nonce, detach(24), detach(64), emptyTag, detach(64)), false);
    addon.dispose(sealer);
    addon.dispose(opener);
  });

  it('in place works; an output that partly overlaps its input or the tag is refused', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const sealer = addon.create('aes-256-gcm', key, true);
    const opener = addon.create('aes-256-gcm', key, false);
    const plain = Buffer.alloc(256);
    for (let index = 0; index < plain.length; index++) {
      plain[index] = index;
    }
    const expected = reference(plain);
    const inPlace = Buffer.from(plain);
    const tag = Buffer.alloc(16);
    addon.seal(sealer, nonce, aad, inPlace, inPlace, tag);
    assert.deepEqual(inPlace, expected.sealed);
    assert.equal(addon.open(opener, nonce, aad, inPlace, tag, inPlace), true);
    assert.deepEqual(inPlace, plain);

    const arena = Buffer.alloc(512);
    plain.copy(arena, 0);
    for (const shift of [1, 15, 16, 255]) {
      refused(
        () => addon.seal(sealer, nonce, aad, arena.subarray(0, 256), arena.subarray(shift, shift + 256), tag),
        /partly overlaps/,
      );
      refused(
        () => addon.seal(sealer, nonce, aad, arena.subarray(shift, shift + 256), arena.subarray(0, 256), tag),
        /partly overlaps/,
      );
      refused(
        () => addon.open(opener, nonce, aad, arena.subarray(0, 256), tag, arena.subarray(shift, shift + 256)),
        /partly overlaps/,
      );
    }
    assert.deepEqual(arena.subarray(0, 256), plain); // nothing written by a refused call
    refused(
      () =>
        addon.seal(
          sealer,
          nonce,
          aad,
          arena.subarray(0, 64),
          arena.subarray(100, 164),
          arena.subarray(150, 166),
        ),
      /partly overlaps the plaintext or the tag/,
    );
    refused(
      () =>
        addon.seal(
          sealer,
          nonce,
          aad,
          arena.subarray(0, 16),
          arena.subarray(100, 116),
          arena.subarray(100, 116),
        ),
      /partly overlaps the plaintext or the tag/,
    );
    // Adjacent, not overlapping: allowed.
    addon.seal(sealer, nonce, aad, arena.subarray(0, 256), arena.subarray(256, 512), tag);
    assert.deepEqual(arena.subarray(256, 512), expected.sealed);
    addon.dispose(sealer);
    addon.dispose(opener);
  });

  it('a handle cannot cross to a worker; workers sealing at once each get node:crypto bytes', async (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const script = `
const { parentPort, workerData } = require('node:worker_threads');
const { createCipheriv } = require('node:crypto');
const addon = require(workerData.path);
const key = Buffer.alloc(32, workerData.seed);
const sealer = addon.create('chacha20-poly1305', key, true);
const opener = addon.create('chacha20-poly1305', key, false);
const plain = Buffer.alloc(1400, workerData.seed);
const out = Buffer.alloc(1400), tag = Buffer.alloc(16), back = Buffer.alloc(1400);
let bad = 0;
for (let i = 0; i < 2000; i++) {
  const nonce = Buffer.alloc(12); nonce.writeUInt32BE(i, 8); nonce[0] = workerData.seed;
  addon.seal(sealer, nonce, plain.subarray(0, 16), plain, out, tag);
  const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
  c.setAAD(plain.subarray(0, 16));
  const ref = Buffer.concat([c.update(plain), c.final()]);
  if (!ref.equals(out) || !c.getAuthTag().equals(tag)) bad++;
  if (!addon.open(opener, nonce, plain.subarray(0, 16), out, tag, back) || !back.equals(plain)) bad++;
}
addon.dispose(sealer); addon.dispose(opener);
parentPort.postMessage(bad);`;
    const results = await Promise.all(
      [1, 2, 3].map(
        (seed) =>
          new Promise<number>((resolve, reject) => {
            const worker = new Worker(script, { eval: true, workerData: { path: nativeAddonPath, seed } });
            worker.once('message', resolve);
            worker.once('error', reject);
            worker.once('exit', (code) => reject(new Error(`worker exited ${code} before answering`)));
          }),
      ),
    );
    assert.deepEqual(results, [0, 0, 0]);

    // A handle posted to a worker arrives as a plain object, which the addon there refuses.
    const sealer = addon.create('aes-256-gcm', key, true);
    const echo = `
const { parentPort, workerData } = require('node:worker_threads');
const addon = require(workerData.path);
parentPort.once('message', (handle) => {
  try { addon.seal(handle, Buffer.alloc(12), Buffer.alloc(0), Buffer.alloc(1), Buffer.alloc(1), Buffer.alloc(16)); parentPort.postMessage('sealed'); }
  catch (error) { parentPort.postMessage(error.message); }
});`;
    const worker = new Worker(echo, { eval: true, workerData: { path: nativeAddonPath } });
    try {
      const answer = await new Promise<string>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
        worker.postMessage(sealer);
      });
      assert.equal(answer, 'not an AEAD handle');
    } finally {
      await worker.terminate();
      addon.dispose(sealer);
    }
  });

  it('digestEquals compares SHA-256 with the bytes at an offset, refusing every range, count and type that does not fit', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const input = Buffer.alloc(1440, 0x3c);
    const full = createHash('sha256').update(input).digest();
    const manifest = Buffer.concat([Buffer.alloc(8, 0xee), full]);
    const before = Buffer.from(manifest);
    assert.equal(addon.digestEquals(input, manifest, 8, 32), true);
    assert.equal(addon.digestEquals(input, manifest, 8, 16), true);
    assert.equal(addon.digestEquals(input, manifest, 8, 1), true);
    assert.equal(addon.digestEquals(input, manifest, 7, 16), false);
    for (let at = 8; at < 24; at++) {
      const wrong = Buffer.from(manifest);
      wrong[at] = (wrong[at] ?? 0) ^ 0x10;
      assert.equal(addon.digestEquals(input, wrong, 8, 16), false, `byte ${at} flipped`);
    }
    // Bytes past the compared length do not count.
    const tail = Buffer.from(manifest);
    tail[30] = (tail[30] ?? 0) ^ 1;
    assert.equal(addon.digestEquals(input, tail, 8, 16), true);
    const flippedInput = Buffer.from(input);
    flippedInput[1439] = (flippedInput[1439] ?? 0) ^ 1;
    assert.equal(addon.digestEquals(flippedInput, manifest, 8, 16), false);
    for (const [offset, length, message] of [
      [9, 32, /1-32 bytes, within the expected hash's buffer/],
      [40, 1, /1-32 bytes, within the expected hash's buffer/],
      [0, 33, /1-32 bytes, within the expected hash's buffer/],
      [0, 0, /1-32 bytes, within the expected hash's buffer/],
      [-1, 16, /offset must be a non-negative integer/],
      [Number.NaN, 16, /offset must be a non-negative integer/],
      ['8', 16, /offset must be a non-negative integer/],
      [8, 16.5, /length must be a non-negative integer/],
      [8, 10n, /length must be a non-negative integer/],
    ] as const) {
      refused(() => addon.digestEquals(input, manifest, offset, length), message);
    }
    refused(() => addon.digestEquals(input, manifest, 8), /four arguments/);
    refused(() => addon.digestEquals('text', manifest, 8, 16), /input must be a Buffer/);
    refused(() => addon.digestEquals(input, [0, 0], 0, 1), /expected hash must be a Buffer/);
    assert.deepEqual(manifest, before, 'the expected hash is only read');
  });

  it('digest writes SHA-256 only inside its output, refusing every range, count and type that does not fit', async (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const input = Buffer.alloc(1440, 0x3c);
    const full = createHash('sha256').update(input).digest();
    const out = Buffer.alloc(40, 0xee);
    addon.digest(input, out, 8, 32); // the last 32 bytes exactly
    assert.deepEqual(out, Buffer.concat([Buffer.alloc(8, 0xee), full]));
    const untouched = Buffer.alloc(40, 0xee);
    for (const [offset, length, message] of [
      [9, 32, /1-32 bytes, within the output/], // one byte past the end
      [40, 1, /1-32 bytes, within the output/],
      [0, 33, /1-32 bytes, within the output/],
      [0, 0, /1-32 bytes, within the output/],
      [-1, 16, /offset must be a non-negative integer/],
      [0.5, 16, /offset must be a non-negative integer/],
      [2 ** 32, 16, /offset must be a non-negative integer/],
      [Number.NaN, 16, /offset must be a non-negative integer/],
      [Number.POSITIVE_INFINITY, 16, /offset must be a non-negative integer/],
      ['0', 16, /offset must be a non-negative integer/],
      [0, -16, /length must be a non-negative integer/],
      [0, 16.5, /length must be a non-negative integer/],
      [0, 2 ** 53, /length must be a non-negative integer/],
      [0, 10n, /length must be a non-negative integer/],
    ] as const) {
      const target = Buffer.alloc(40, 0xee);
      refused(() => addon.digest(input, target, offset, length), message);
      assert.deepEqual(target, untouched, `digest(${String(offset)}, ${String(length)}) wrote`);
    }
    refused(() => addon.digest(input, out, 0), /four arguments/);
    refused(() => addon.digest(input, out, 0, 16, 0), /four arguments/);
    refused(() => addon.digest('text', out, 0, 16), /input must be a Buffer/);
    refused(() => addon.digest(input, [0, 0], 0, 16), /output must be a Buffer/);
    // In place: the hash of the input is taken before any of it is written over.
    const inPlace = Buffer.from(input);
    addon.digest(inPlace, inPlace, 0, 32);
    assert.deepEqual(inPlace.subarray(0, 32), full);
    // Detached and empty inputs hash as empty; a detached output has no room.
    const empty = createHash('sha256').update(Buffer.alloc(0)).digest();
    const view = new Uint8Array(64);
    structuredClone(view.buffer, { transfer: [view.buffer] });
    addon.digest(view, out, 0, 32);
    assert.deepEqual(out.subarray(0, 32), empty);
    refused(() => addon.digest(input, view, 0, 1), /1-32 bytes, within the output/);
    // Each worker thread loads the addon with its own digest state and gets the same bytes.
    const source = `
const { parentPort, workerData } = require('node:worker_threads');
const addon = require(workerData.path);
const out = Buffer.alloc(32);
for (let round = 0; round < 1000; round++) addon.digest(Buffer.alloc(1440, 0x3c), out, 0, 32);
parentPort.postMessage(out.toString('hex'));`;
    const answers = await Promise.all(
      [1, 2].map(async () => {
        const worker = new Worker(source, { eval: true, workerData: { path: nativeAddonPath } });
        try {
          return await new Promise<string>((resolve, reject) => {
            worker.once('message', resolve);
            worker.once('error', reject);
          });
        } finally {
          await worker.terminate();
        }
      }),
    );
    assert.deepEqual(answers, [full.toString('hex'), full.toString('hex')]);
  });

  it('sealDatagram and openDatagram refuse every range, overlap and type that does not fit, writing nothing', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const sealer = addon.create('aes-256-gcm', key, true);
    const opener = addon.create('aes-256-gcm', key, false);
    const datagram = Buffer.concat([aad, Buffer.alloc(100, 3)]);
    const expected = reference(datagram.subarray(24));
    const good = Buffer.concat([aad, expected.sealed, expected.tag]);
    const hash = createHash('sha256').update(good).digest();
    // The right call: the header copied first, the body and tag sealed behind it, the hash taken.
    const out = Buffer.alloc(good.length + 4, 0xee);
    aad.copy(out);
    const hashOut = Buffer.alloc(20, 0xee);
    addon.sealDatagram(sealer, nonce, datagram, out, 24, hashOut, 2, 16);
    assert.deepEqual(out.subarray(0, good.length), good);
    assert.deepEqual(out.subarray(good.length), Buffer.alloc(4, 0xee));
    assert.deepEqual(
      hashOut,
      Buffer.concat([Buffer.alloc(2, 0xee), hash.subarray(0, 16), Buffer.alloc(2, 0xee)]),
    );
    const seals: Array<[unknown[], RegExp]> = [
      [
        [sealer, nonce, datagram, Buffer.alloc(good.length - 1), 24, null, 0, 0],
        /output hold it and the tag/,
      ],
      [[sealer, nonce, datagram, Buffer.alloc(good.length), 125, null, 0, 0], /associated data must fit/],
      [
        [sealer, nonce, datagram, Buffer.alloc(good.length), -1, null, 0, 0],
        /associated data length must be/,
      ],
      [
        [sealer, nonce, datagram, Buffer.alloc(good.length), '24', null, 0, 0],
        /associated data length must be/,
      ],
      [[sealer, nonce.subarray(1), datagram, Buffer.alloc(good.length), 24, null, 0, 0], /nonce must be 12/],
      [[sealer, nonce, datagram, Buffer.alloc(good.length), 24, Buffer.alloc(16), 1, 16], /within hashOut/],
      [[sealer, nonce, datagram, Buffer.alloc(good.length), 24, Buffer.alloc(64), 0, 33], /1-32 bytes/],
      [[sealer, nonce, datagram, Buffer.alloc(good.length), 24, Buffer.alloc(64), 0, 0], /1-32 bytes/],
      [
        [sealer, nonce, datagram, Buffer.alloc(good.length), 24, Buffer.alloc(64), undefined, 16],
        /hash offset/,
      ],
      [[sealer, nonce, datagram, Buffer.alloc(good.length), 24, 'hash', 0, 16], /hashOut must be a Buffer/],
      [[opener, nonce, datagram, Buffer.alloc(good.length), 24, null, 0, 0], /made to open cannot seal/],
      [[sealer, nonce, datagram, Buffer.alloc(good.length), 24, null, 0], /eight arguments/],
    ];
    for (const [args, message] of seals) {
      refused(() => addon.sealDatagram(...args), message);
      const target = args[3] as Buffer;
      assert.ok(
        target.every((byte) => byte === 0),
        `${message}: the output was written`,
      );
    }
    // Overlaps: the output shifted by a byte from the plaintext, the hash inside the sealed datagram.
    const shared = Buffer.alloc(good.length * 2);
    datagram.copy(shared);
    refused(
      () =>
        addon.sealDatagram(
          sealer,
          nonce,
          shared.subarray(0, datagram.length),
          shared.subarray(1),
          24,
          null,
          0,
          0,
        ),
      /partly overlaps the plaintext/,
    );
    const whole = Buffer.alloc(good.length + 32);
    aad.copy(whole);
    for (const at of [0, 10, good.length - 16, good.length - 1]) {
      refused(
        () => addon.sealDatagram(sealer, nonce, datagram, whole.subarray(0, good.length), 24, whole, at, 16),
        /written over the sealed datagram/,
      );
    }
    // In place, the output the plaintext itself, is the same datagram.
    const inPlace = Buffer.alloc(good.length);
    datagram.copy(inPlace);
    addon.sealDatagram(sealer, nonce, inPlace.subarray(0, datagram.length), inPlace, 24, null, 0, 0);
    assert.deepEqual(inPlace, good);

    const opened = Buffer.alloc(100, 0xee);
    assert.equal(addon.openDatagram(opener, nonce, good, 24, opened, 0), true);
    assert.deepEqual(opened, datagram.subarray(24));
    const opens: Array<[unknown[], RegExp]> = [
      [
        [opener, nonce, good.subarray(0, 15), 0, Buffer.alloc(100), 0],
        /shorter than its associated data and tag/,
      ],
      [
        [opener, nonce, good, good.length - 15, Buffer.alloc(100), 0],
        /shorter than its associated data and tag/,
      ],
      [[opener, nonce, good, 24, Buffer.alloc(99), 0], /does not fit the output/],
      [[opener, nonce, good, 24, Buffer.alloc(100), 1], /does not fit the output/],
      [[opener, nonce, good, 24, Buffer.alloc(100), -1], /output offset must be/],
      [[opener, Buffer.alloc(16), good, 24, Buffer.alloc(100), 0], /nonce must be 12/],
      [[sealer, nonce, good, 24, Buffer.alloc(100), 0], /made to seal cannot open/],
      [[opener, nonce, good, 24, Buffer.alloc(100)], /six arguments/],
    ];
    for (const [args, message] of opens) {
      refused(() => addon.openDatagram(...args), message);
      assert.ok(
        (args[4] as Buffer).every((byte) => byte === 0),
        `${message}: the output was written`,
      );
    }
    // Written over the header or the tag instead of in place: refused, the datagram untouched.
    for (const offset of [0, 1, 23, 25, 40]) {
      const copy = Buffer.from(good);
      refused(
        () => addon.openDatagram(opener, nonce, copy, 24, copy, offset),
        /partly overlaps the sealed datagram/,
      );
      assert.deepEqual(copy, good);
    }
    // In place: the plaintext over the ciphertext; a flipped tag bit leaves zeros there.
    const own = Buffer.from(good);
    assert.equal(addon.openDatagram(opener, nonce, own, 24, own, 24), true);
    assert.deepEqual(own.subarray(0, datagram.length), datagram);
    const forged = Buffer.from(good);
    forged[forged.length - 1] = (forged[forged.length - 1] ?? 0) ^ 1;
    assert.equal(addon.openDatagram(opener, nonce, forged, 24, forged, 24), false);
    assert.ok(forged.subarray(24, datagram.length).every((byte) => byte === 0));
    assert.deepEqual(forged.subarray(0, 24), aad);
    addon.dispose(sealer);
    addon.dispose(opener);
  });

  it("every suite calls its implementation's own functions: node:crypto's bytes for every length, a good open after a bad one", (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    for (const [name, keyLength] of [
      ['aes-128-gcm', 16],
      ['aes-256-gcm', 32],
      ['chacha20-poly1305', 32],
    ] as const) {
      const suiteKey = Buffer.alloc(keyLength, 0x3c);
      const sealing = addon.create(name, suiteKey, true);
      const opening = addon.create(name, suiteKey, false);
      assert.equal(addon.packetPath(sealing), 'provider', `${name}: sealed through its implementation`);
      assert.equal(addon.packetPath(opening), 'provider', `${name}: opened through its implementation`);
      const lengths: Array<[plain: number, aad: number]> = [
        [0, 0],
        [0, 32],
        [1, 0],
        [15, 32],
        [16, 32],
        [17, 1],
        [1400, 32],
        [65_535, 48],
      ];
      for (const [plainLength, aadLength] of lengths) {
        const packetNonce = Buffer.alloc(12, plainLength & 0xff);
        packetNonce.writeUInt32BE(aadLength, 8);
        const plain = Buffer.alloc(plainLength, 0x5a);
        const header = Buffer.alloc(aadLength, 0xa7);
        // One AEAD overload stands for all three (node's types split them by name).
        const cipher = createCipheriv(name as 'aes-256-gcm', suiteKey, packetNonce, { authTagLength: 16 });
        cipher.setAAD(header, { plaintextLength: plainLength });
        const expected = Buffer.concat([cipher.update(plain), cipher.final()]);
        const expectedTag = cipher.getAuthTag();
        const sealed = Buffer.alloc(plainLength);
        const tag = Buffer.alloc(16);
        addon.seal(sealing, packetNonce, header, plain, sealed, tag);
        assert.deepEqual(sealed, expected, `${name}, ${plainLength} bytes: node:crypto's ciphertext`);
        assert.deepEqual(tag, expectedTag, `${name}, ${plainLength} bytes: node:crypto's tag`);
        const badTag = Buffer.from(tag);
        badTag[15] = (badTag[15] as number) ^ 0x80;
        const refusedOut = Buffer.alloc(plainLength, 0xee);
        assert.equal(addon.open(opening, packetNonce, header, sealed, badTag, refusedOut), false);
        assert.ok(
          refusedOut.every((byte) => byte === 0),
          'a refused open leaves nothing readable',
        );
        const out = Buffer.alloc(plainLength);
        assert.equal(
          addon.open(opening, packetNonce, header, sealed, tag, out),
          true,
          'opens after a refusal',
        );
        assert.deepEqual(out, plain);
        if (aadLength > 0) {
          const otherHeader = Buffer.from(header);
          otherHeader[0] = (otherHeader[0] as number) ^ 1;
          assert.equal(
            addon.open(opening, packetNonce, otherHeader, sealed, tag, out),
            false,
            'the header is bound',
          );
        }
      }
      addon.dispose(sealing);
      refused(() => addon.packetPath(sealing), /disposed/);
      addon.dispose(opening);
    }
    assert.throws(() => addon.packetPath({}), /not an AEAD handle/);
    refused(() => addon.packetPath(), /one argument/);
  });

  it("GATECAST_AEAD_EVP_ONLY=1 keeps every handle on EVP: node:crypto's bytes, and the engine's load check passes", (t) => {
    if (addonOrSkip(t) === undefined) {
      return;
    }
    // In a child, as the variable is read when the addon is first loaded: the engine (whose load
    // check seals and opens through every call and compares node:crypto's bytes) and each suite.
    const script = `
      import { createCipheriv } from 'node:crypto';
      import { createRequire } from 'node:module';
      import { aeadEngine, nativeAddonPath } from ${JSON.stringify(new URL('../../src/crypto/aead-engine.ts', import.meta.url).pathname)};
      const engine = aeadEngine();
      if (engine.name !== 'openssl-evp') throw new Error('engine ' + engine.name + ': ' + engine.reason);
      const addon = createRequire(import.meta.url)(nativeAddonPath);
      for (const [name, keyLength] of [['aes-128-gcm', 16], ['aes-256-gcm', 32], ['chacha20-poly1305', 32]]) {
        const key = Buffer.alloc(keyLength, 0x3c);
        const sealing = addon.create(name, key, true);
        const opening = addon.create(name, key, false);
        if (addon.packetPath(sealing) !== 'evp' || addon.packetPath(opening) !== 'evp') throw new Error(name + ' not on EVP');
        for (const length of [0, 1, 17, 1400, 65535]) {
          const nonce = Buffer.alloc(12, length & 0xff);
          const header = Buffer.alloc(32, 0xa7);
          const plain = Buffer.alloc(length, 0x5a);
          const cipher = createCipheriv(name, key, nonce, { authTagLength: 16 });
          cipher.setAAD(header, { plaintextLength: length });
          const expected = Buffer.concat([cipher.update(plain), cipher.final()]);
          const sealed = Buffer.alloc(length);
          const tag = Buffer.alloc(16);
          addon.seal(sealing, nonce, header, plain, sealed, tag);
          if (!sealed.equals(expected) || !tag.equals(cipher.getAuthTag())) throw new Error(name + ' ' + length + ': other bytes');
          const out = Buffer.alloc(length);
          if (!addon.open(opening, nonce, header, sealed, tag, out) || !out.equals(plain)) throw new Error(name + ' ' + length + ': no open');
          tag[0] ^= 1;
          if (addon.open(opening, nonce, header, sealed, tag, out)) throw new Error(name + ' ' + length + ': a bad tag opened');
        }
      }
      process.stdout.write('ok');
    `;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, GATECAST_AEAD_EVP_ONLY: '1', GATECAST_AEAD_ENGINE: '' },
    });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout, 'ok');
  });

  it('packet functions bound to a handle: same bytes as the unbound calls, refused for the wrong kind, after dispose and with wrong counts', (t) => {
    const addon = addonOrSkip(t);
    if (addon === undefined) {
      return;
    }
    const sealing = addon.create('aes-256-gcm', key, true);
    const opening = addon.create('aes-256-gcm', key, false);
    const seal = addon.sealPacketFunction(sealing);
    const open = addon.openPacketFunction(opening);
    const { datagram, packetNonce } = dataDatagram(600);
    const unbound = Buffer.alloc(datagram.length + 16);
    const unboundHash = Buffer.alloc(20);
    addon.sealPacket(sealing, packetNonce, datagram, unbound, unboundHash, 2, 16);
    const bound = Buffer.alloc(datagram.length + 16);
    const boundHash = Buffer.alloc(20);
    assert.equal(seal(packetNonce, datagram, bound, boundHash, 2, 16), undefined);
    assert.deepEqual(bound, unbound);
    assert.deepEqual(boundHash, unboundHash);
    assert.equal(open(bound), datagram.length);
    assert.deepEqual(bound.subarray(32, datagram.length), datagram.subarray(32));
    const flipped = Buffer.from(unbound);
    flipped[40] = (flipped[40] as number) ^ 1;
    assert.equal(open(flipped), -1);
    assert.ok(
      flipped.subarray(32, datagram.length).every((byte) => byte === 0),
      'a failed open leaves nothing readable',
    );
    refused(() => addon.openPacketFunction(sealing), /made to seal cannot open/);
    refused(() => addon.sealPacketFunction(opening), /made to open cannot seal/);
    assert.throws(() => addon.openPacketFunction({}), /not an AEAD handle/);
    refused(() => addon.openPacketFunction(), /one handle/);
    refused(() => open(), /takes one argument/);
    refused(() => open(bound, bound), /takes one argument/);
    refused(() => seal(packetNonce, datagram, bound), /takes six arguments/);
    assert.throws(() => open('not a buffer'), /must be a Buffer/);
    refused(() => seal(Buffer.alloc(12), datagram, bound, null, 0, 0), /another nonce/);
    addon.dispose(opening);
    addon.dispose(sealing);
    refused(() => open(Buffer.from(unbound)), /disposed/);
    refused(() => seal(packetNonce, datagram, bound, null, 0, 0), /disposed/);
  });

  it('a packet function outlives its collected handle, and their context is freed once both are collected', (t) => {
    if (addonOrSkip(t) === undefined) {
      return;
    }
    // In a child with the collector at hand: the handle dropped and collected, the bound function still
    // opens; then thousands made and dropped, each freed by whichever of the two is collected last.
    const script = `
      const addon = require(${JSON.stringify(nativeAddonPath)});
      const key = Buffer.alloc(32, 7);
      const header = Buffer.alloc(32, 0); header[1] = 2; header[7] = 1; header[15] = 9; header[31] = 5;
      const datagram = Buffer.concat([header, Buffer.alloc(100, 0x61)]);
      const nonce = Buffer.concat([datagram.subarray(28, 32), datagram.subarray(6, 8), Buffer.alloc(2), datagram.subarray(12, 16)]);
      const sealed = Buffer.alloc(datagram.length + 16);
      addon.sealPacketFunction(addon.create('aes-256-gcm', key, true))(nonce, datagram, sealed, null, 0, 0);
      let open = addon.openPacketFunction(addon.create('aes-256-gcm', key, false));
      for (let i = 0; i < 5; i++) globalThis.gc();
      const copy = Buffer.from(sealed);
      if (open(copy) !== datagram.length || !copy.subarray(32, datagram.length).equals(datagram.subarray(32))) process.exit(3);
      open = undefined;
      for (let i = 0; i < 3000; i++) {
        const handle = addon.create('aes-256-gcm', key, false);
        const fn = addon.openPacketFunction(handle);
        if (i % 3 === 0) addon.dispose(handle);
        if (i % 100 === 0) globalThis.gc();
      }
      for (let i = 0; i < 5; i++) globalThis.gc();
      process.stdout.write('ok');
    `;
    const child = spawnSync(process.execPath, ['--expose-gc', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout, 'ok');
  });
});

/** A plain DATA datagram (32-byte header, `payloadBytes` of payload) and the nonce its header names. */
function dataDatagram(payloadBytes: number): { datagram: Buffer; packetNonce: Buffer } {
  const datagram = Buffer.alloc(32 + payloadBytes, 0x33);
  datagram.fill(0, 0, 32);
  datagram.writeUInt16BE(1, 6); // key epoch
  datagram.writeUInt32BE(77, 12); // sequence
  datagram.writeUInt32BE(0xabcdef, 28); // incarnation
  const packetNonce = Buffer.concat([
    datagram.subarray(28, 32),
    datagram.subarray(6, 8),
    Buffer.alloc(2),
    datagram.subarray(12, 16),
  ]);
  return { datagram, packetNonce };
}
