import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { describeReceive } from '../../src/cli/receive.js';
import { buildKeyMessage, ed25519Raw, generateSigningKey } from '../../src/crypto/authority.js';
import { TokenError, type TokenRefused } from '../../src/crypto/errors.js';
import { createReceiverProtection, createSenderProtection } from '../../src/crypto/restricted-session.js';
import { initSoftwareToken, openSoftwareToken } from '../../src/crypto/software-token.js';
import { suiteByName } from '../../src/crypto/suites.js';
import type { Token } from '../../src/crypto/token.js';
import {
  protectedControlIntervalMs,
  restrictedPendingKeysMax,
  signedRepeatRefreshMs,
} from '../../src/limits.js';
import { parseGroup } from '../../src/net/address.js';
import { openReceiverSocket, type ReceiverSocketOptions } from '../../src/net/udp.js';
import {
  decodeHeader,
  headerBytes,
  offsetBodyLength,
  offsetKeyEpoch,
  offsetType,
  PacketType,
  writeHeaderFields,
} from '../../src/protocol/packet.js';
import { PriceModel } from '../../src/protocol/restricted.js';
import { createReceiver } from '../../src/receiver/receiver.js';
import { openFileInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { issueNewsGrant } from '../helpers/grant.js';
import { freshPort, loopbackIface, memorySink } from '../helpers/loopback.js';
import { newsProtection } from '../helpers/restricted-bed.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-restricted-'));
after(() => rmSync(directory, { recursive: true, force: true }));

const root = generateSigningKey();
const source = generateSigningKey();
const serviceKey = randomBytes(32);
const fileBytes = randomBytes(700_000);
const filePath = join(directory, 'secret.bin');
writeFileSync(filePath, fileBytes);
const fileSha = createHash('sha256').update(fileBytes).digest('hex');

let tokens = 0;
function makeToken(grant: 'entitled' | 'none' | 'pay-as-you-go'): Token {
  tokens += 1;
  const path = join(directory, `token-${tokens}.json`);
  initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
  const token = openSoftwareToken(path, '2468');
  if (grant !== 'none') {
    token.installGrant(
      issueNewsGrant(
        token,
        { root, source, serviceKey },
        grant === 'pay-as-you-go' ? { priceModel: PriceModel.perCryptoPeriod, priceMinor: 10 } : {},
      ),
    );
  }
  return token;
}

/** Samples of the plaintext: none may appear in what travelled. */
function plaintextSamples(): Buffer[] {
  const samples: Buffer[] = [];
  for (let at = 0; at + 12 <= fileBytes.length; at += 7_001) {
    samples.push(fileBytes.subarray(at, at + 12));
  }
  return samples;
}

/** A socket that records every datagram (the capture) and lets tamper() add or alter some. */
function capturingSocket(
  captured: Buffer[],
  tamper?: (datagram: Buffer, deliver: (d: Buffer) => void) => void,
) {
  return (options: ReceiverSocketOptions, onDatagram: (d: Buffer) => void) =>
    openReceiverSocket(options, (datagram) => {
      captured.push(Buffer.from(datagram));
      if (tamper === undefined) {
        onDatagram(datagram);
      } else {
        tamper(datagram, onDatagram);
      }
    });
}

async function sendAndReceive(options: {
  token?: Token;
  tamper?: (datagram: Buffer, deliver: (d: Buffer) => void) => void;
}) {
  const group = parseGroup(`239.255.51.1:${freshPort()}`, 'group');
  const sink = memorySink();
  const captured: Buffer[] = [];
  let refusal: TokenRefused | undefined;
  const controller = new AbortController();
  const protection =
    options.token === undefined
      ? undefined
      : createReceiverProtection(options.token, (refused) => {
          refusal = refused;
          controller.abort();
        });
  const receiver = createReceiver(
    { group, iface: loopbackIface, timeoutMs: 3000, endGraceMs: 300 },
    { sink, protection, openSocket: capturingSocket(captured, options.tamper) },
  );
  let joined: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    joined = resolve;
  });
  const receiving = receiver.run({ signal: controller.signal, onJoined: () => joined() });
  await ready;
  const sent = createSource(
    {
      group,
      iface: loopbackIface,
      rateBitsPerSecond: 100_000_000,
      packetPayloadBytes: 1400,
      sessionName: 'secret.bin',
    },
    {
      input: await openFileInput(filePath),
      protection: newsProtection(serviceKey, source),
    },
  );
  const stats = await sent.run();
  const summary = await receiving;
  return { summary, stats, sink, captured, protection, refusal };
}

describe('restricted sessions over loopback multicast', () => {
  it('an entitled token decodes the file intact; the wire holds no plaintext', async () => {
    const token = makeToken('entitled');
    const { summary, sink, captured, protection } = await sendAndReceive({ token });
    token.close();
    assert.equal(summary.outcome, 'complete', JSON.stringify(summary));
    assert.equal(createHash('sha256').update(sink.bytes()).digest('hex'), fileSha);
    assert.ok((protection?.stats.keysAccepted ?? 0) >= 1);
    assert.equal(protection?.stats.packetsBadTag, 0);
    const wire = Buffer.concat(captured);
    assert.ok(captured.length > 500);
    for (const sample of plaintextSamples()) {
      assert.equal(wire.indexOf(sample), -1, 'a plaintext sample travelled in clear');
    }
  });

  it('a token without a grant decodes nothing and says it is not entitled', async () => {
    const token = makeToken('none');
    const { summary, sink, refusal } = await sendAndReceive({ token });
    token.close();
    assert.equal(sink.bytes().length, 0);
    assert.notEqual(summary.outcome, 'complete');
    assert.equal(refusal?.reason, 'not-entitled');
    assert.match(refusal?.message ?? '', /not entitled to news/);
  });

  it('a pay-as-you-go grant on a token without a purse decodes nothing', async () => {
    const token = makeToken('pay-as-you-go');
    const { sink, refusal } = await sendAndReceive({ token });
    token.close();
    assert.equal(sink.bytes().length, 0);
    assert.equal(refusal?.reason, 'purse-unavailable');
  });

  it('a receiver without a token writes no ciphertext and counts the encrypted packets', async () => {
    const { summary, sink, stats } = await sendAndReceive({});
    assert.equal(sink.bytes().length, 0);
    assert.equal(summary.encryptedDropped, stats.packetsSent);
    assert.notEqual(summary.outcome, 'complete');
  });

  it('forged and replayed KEY messages and bit-flipped packets are rejected and counted; the file still arrives whole', async () => {
    const token = makeToken('entitled');
    const forger = generateSigningKey();
    let dataSeen = 0;
    const forgedKey = (
      timestampUs: number,
      signer: typeof forger.privateKey,
      sessionId: number,
      incarnation: number,
    ) =>
      buildKeyMessage(
        { sessionId, incarnation, sequence: 0, timestampUs, keyEpoch: 1 },
        { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 10_000, service: 'news' },
        serviceKey,
        randomBytes(32),
        signer,
      );
    let injectedKeys = false;
    const { summary, sink, protection } = await sendAndReceive({
      token,
      tamper: (datagram, deliver) => {
        const header = decodeHeader(datagram);
        if (header.ok && header.value.type === PacketType.data) {
          dataSeen += 1;
          if (dataSeen % 50 === 0) {
            const flipped = Buffer.from(datagram);
            const at = headerBytes + (dataSeen % (datagram.length - headerBytes));
            flipped[at] = (flipped[at] ?? 0) ^ 0x10;
            deliver(flipped); // the altered copy first: it must not take the genuine one's place
          }
          if (!injectedKeys && dataSeen === 100) {
            injectedKeys = true;
            const { sessionId, incarnation } = header.value;
            deliver(forgedKey(Date.now() * 1000, forger.privateKey, sessionId, incarnation));
            // A genuine KEY message a minute old: a replay from the past.
            deliver(forgedKey((Date.now() - 60_000) * 1000, source.privateKey, sessionId, incarnation));
          }
        }
        deliver(datagram);
      },
    });
    token.close();
    assert.equal(summary.outcome, 'complete', JSON.stringify({ summary, stats: protection?.stats }));
    assert.equal(createHash('sha256').update(sink.bytes()).digest('hex'), fileSha);
    assert.equal(protection?.stats.packetsBadTag, Math.floor(dataSeen / 50));
    assert.equal(protection?.stats.keysRejected['bad-signature'], 1);
    assert.equal(protection?.stats.keysRejected.rollback, 1);
  });
});

/** One turn of the event loop: the token's answers arrive. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** Feeds datagrams to a receiver's protection; what it opens goes to `delivered`. */
function feeder(protection: ReturnType<typeof createReceiverProtection>) {
  const delivered: Buffer[] = [];
  const feed = (datagrams: Buffer[]) => {
    for (const datagram of datagrams) {
      protection.filter(datagram, (plain) => delivered.push(plain));
    }
  };
  return { delivered, feed };
}

/** The token, with every key it is asked to release told to `asked` first (the key's message). */
function askCounting(token: Token, asked: (key: Parameters<Token['releaseTrafficKey']>[0]) => void): Token {
  return new Proxy(token, {
    get(target, property) {
      if (property === 'releaseTrafficKey') {
        return (key: Parameters<Token['releaseTrafficKey']>[0]) => {
          asked(key);
          return target.releaseTrafficKey(key);
        };
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** An entitled token whose asks are listed as `incarnation:epoch`, and a protection over it. */
function runProbe() {
  const token = makeToken('entitled');
  const asked: string[] = [];
  const protection = createReceiverProtection(
    askCounting(token, (key) => {
      asked.push(`${key.incarnation}:${key.keyEpoch}`);
    }),
    () => undefined,
  );
  return { token, asked, protection };
}

/** A news source's protection (AES-256-GCM, no manifests) for run 5 of `incarnation`. */
function newsSender(cryptoPeriodMs: number, incarnation = 6) {
  return createSenderProtection(
    {
      suite: suiteByName('aes-256-gcm', 'suite'),
      service: 'news',
      serviceEpoch: 1,
      serviceKey,
      sourcePrivateKey: source.privateKey,
      sourcePublicKey: source.publicKey,
      cryptoPeriodMs,
      tier: 0,
      manifestPackets: 0,
    },
    { sessionId: 5, incarnation },
  );
}

/**
 * An entitled token whose asks are counted (`counts.asked`), the protection over it, and a news
 * source started now: its KEYs at a time, and a DATA of its run to seal.
 */
function keyBed(onRefused: (refused: TokenRefused) => void = () => undefined) {
  const token = makeToken('entitled');
  const counts = { asked: 0 };
  const counting = askCounting(token, () => {
    counts.asked += 1;
  });
  const protection = createReceiverProtection(counting, onRefused);
  const sender = newsSender(60_000);
  const startUs = Date.now() * 1000;
  const { delivered, feed } = feeder(protection);
  const keysOf = (atUs: number) =>
    sender
      // The source's clocks: its monotonic ms run with the wall clock here.
      .control({ sessionId: 5, incarnation: 6, sequence: 1 }, (atUs - startUs) / 1000, atUs)
      .filter((datagram) => datagram[offsetType] === PacketType.key);
  const data = Buffer.alloc(headerBytes + 100);
  writeHeaderFields(data, PacketType.data, 5, 1, startUs, 0, 100, 6);
  return { token, counts, protection, sender, startUs, delivered, feed, keysOf, data };
}

describe('restricted receiver: KEY repeats', () => {
  it('asks the token once for an epoch repeated in-band, again after restrictedKeyRecheckMs; a forgery for a held epoch still reaches the token and is counted', async () => {
    const refusals: TokenRefused[] = [];
    const { token, counts, protection, sender, startUs, delivered, feed, keysOf, data } = keyBed((refused) =>
      refusals.push(refused),
    );
    feed(keysOf(startUs));
    feed(sender.seal(data, 0, startUs));
    await settle();
    assert.equal(delivered.length, 1, JSON.stringify(protection.stats));
    const askedFirst = counts.asked;
    // Twenty repeats 50 ms apart (one second of a source's control ticks): no token operation.
    for (let repeat = 1; repeat < 20; repeat += 1) {
      feed(keysOf(startUs + repeat * 45_000).slice(0, 1));
      await settle();
    }
    assert.equal(counts.asked, askedFirst, 'repeats of a held epoch are not asked of the token');
    assert.ok(protection.stats.keysRepeated >= 19);
    // The same bytes again and again (one signing, repeated): each a repeat, none asked.
    const sameBytes = keysOf(startUs + 19 * 45_000).slice(0, 1);
    const repeatedBefore = protection.stats.keysRepeated;
    for (let copy = 0; copy < 50; copy += 1) {
      feed(sameBytes);
    }
    await settle();
    assert.equal(protection.stats.keysRepeated, repeatedBefore + 50);
    assert.equal(counts.asked, askedFirst);
    // Past the recheck interval the token is asked again (window, tier and counter anew).
    feed(keysOf(startUs + 1_100_000).slice(0, 1));
    await settle();
    assert.equal(counts.asked, askedFirst + 1);
    // A KEY for the held epoch with another wrapped key and a forged signature reaches the token.
    const forger = generateSigningKey();
    feed([
      buildKeyMessage(
        { sessionId: 5, incarnation: 6, sequence: 1, timestampUs: startUs + 1_200_000, keyEpoch: 1 },
        { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 60_000, service: 'news' },
        serviceKey,
        randomBytes(32),
        forger.privateKey,
      ),
    ]);
    await settle();
    assert.equal(protection.stats.keysRejected['bad-signature'], 1);
    assert.equal(refusals.length, 0);
    token.close();
  });
});

describe('restricted receiver: what it drops is counted under its own name', () => {
  it('a KEY replayed from more than keyTimeRollbackToleranceMs before the one the token vouched for is rejected as rollback (not a repeat, not asked); clear DATA and DATA with a wrong body length are counted as such, never as forged', async () => {
    const { token, counts, protection, sender, startUs, delivered, feed, keysOf, data } = keyBed();
    const early = keysOf(startUs).slice(0, 1);
    // The source signs the epoch's KEY again 7 s on; the receiver joins then.
    feed(keysOf(startUs + 7_000_000).slice(0, 1));
    const sealed = Buffer.from(sender.seal(data, 7_000, startUs + 7_000_000)[0] as Buffer);
    feed([Buffer.from(sealed)]);
    await settle();
    assert.equal(delivered.length, 1, JSON.stringify(protection.stats));
    const askedBefore = counts.asked;
    const repeatedBefore = protection.stats.keysRepeated;
    for (let copy = 0; copy < 5; copy += 1) {
      feed(early);
    }
    await settle();
    assert.equal(protection.stats.keysRejected.rollback, 5, JSON.stringify(protection.stats));
    assert.equal(protection.stats.keysRepeated, repeatedBefore, 'a replay is not a repeat');
    assert.equal(counts.asked, askedBefore, 'a replay costs the token nothing');
    // Within the tolerance (a copy reordered on the way) it is still a repeat.
    feed(keysOf(startUs + 6_000_000).slice(0, 1));
    await settle();
    assert.equal(protection.stats.keysRepeated, repeatedBefore + 1);

    // DATA in clear, in a restricted run: never written, counted as clear.
    const clear = Buffer.alloc(headerBytes + 10);
    writeHeaderFields(clear, PacketType.data, 5, 2, startUs, 0, 10, 6);
    feed([clear]);
    // A sealed DATA whose body length says more, less, or nothing: malformed, not forged.
    const reasons: string[] = [];
    for (const bodyLength of [0xffff, 0, sealed.length - headerBytes - 7]) {
      const copy = Buffer.from(sealed);
      copy.writeUInt16BE(bodyLength, offsetBodyLength);
      protection.filter(
        copy,
        (plain) => delivered.push(plain),
        (reason) => reasons.push(reason),
      );
    }
    // Shorter than a header, with DATA's type byte: malformed too.
    protection.filter(
      sealed.subarray(0, headerBytes - 1),
      (plain) => delivered.push(plain),
      (reason) => reasons.push(reason),
    );
    await settle();
    assert.equal(delivered.length, 1, 'nothing more is written');
    assert.equal(protection.stats.packetsClear, 1);
    assert.equal(protection.stats.packetsMalformed, 4);
    assert.deepEqual(reasons, ['length-mismatch', 'length-mismatch', 'length-mismatch', 'truncated']);
    assert.equal(protection.stats.packetsBadTag, 0, 'none is counted as forged');
    token.close();
  });

  it('a token that fails in itself (not a refusal of the KEY) stops the run and says what failed', async () => {
    const token = makeToken('entitled');
    const failing = new Proxy(token, {
      get(target, property) {
        if (property === 'releaseTrafficKey') {
          return async () => {
            throw new TokenError('the token has no receipt key: enroll it');
          };
        }
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const refusals: TokenRefused[] = [];
    const protection = createReceiverProtection(failing, (refused) => refusals.push(refused));
    const { feed } = feeder(protection);
    const sender = newsSender(60_000);
    const startUs = Date.now() * 1000;
    const data = Buffer.alloc(headerBytes + 100);
    writeHeaderFields(data, PacketType.data, 5, 1, startUs, 0, 100, 6);
    feed(
      sender
        .control({ sessionId: 5, incarnation: 6, sequence: 1 }, 0, startUs)
        .filter((datagram) => datagram[offsetType] === PacketType.key),
    );
    feed(sender.seal(data, 0, startUs));
    await settle();
    assert.equal(refusals[0]?.reason, 'token-failed', JSON.stringify(protection.stats));
    assert.match(refusals[0]?.message ?? '', /the token failed: the token has no receipt key: enroll it/);
    token.close();
  });

  it('receive says why when the grant does not fit the stream, and when DATA came in clear', () => {
    const summary = {
      sessionName: 'news',
      malformed: {},
      encryptedDropped: 0,
      duplicates: 0,
      otherSession: 0,
    } as unknown as Parameters<typeof describeReceive>[0];
    const stats = (rejected: Record<string, number>, extra: Record<string, number> = {}) =>
      ({
        keysAccepted: 0,
        keysRejected: rejected,
        packetsBadTag: 0,
        packetsClear: 0,
        signaturesUnchecked: 0,
        groupKeysAsked: 0,
        groupKeysNotAsked: 0,
        ...extra,
      }) as unknown as Parameters<typeof describeReceive>[1];
    assert.match(
      describeReceive(summary, stats({ 'bad-signature': 28 })),
      /the stream comes from another source than the grant's, or the grant was made for another one/,
    );
    assert.match(
      describeReceive(summary, stats({ rollback: 29 })),
      /every KEY message is older than the newest this token accepted/,
    );
    assert.match(
      describeReceive(summary, stats({ 'bad-key-message': 27 })),
      /sealed under another key for this service than the grant's/,
    );
    // Some forged KEYs beside the stream's own (taken) ones: no word about the grant.
    assert.doesNotMatch(
      describeReceive(summary, stats({ 'bad-signature': 3 }, { keysAccepted: 2 })),
      /grant was made|grant's/,
    );
    assert.match(describeReceive(summary, stats({}, { packetsClear: 4 })), /4 DATA sent in clear dropped/);
  });
});

describe('restricted receiver: a KEY announced ahead', () => {
  it('waits for its epoch: its copies ask nothing of the token, a forged copy between them does not stick, and the first DATA of the epoch opens under it', async () => {
    const token = makeToken('entitled');
    const asked: number[] = [];
    const counting = askCounting(token, (key) => {
      asked.push(key.keyEpoch);
    });
    const refusals: TokenRefused[] = [];
    const protection = createReceiverProtection(counting, (refused) => refusals.push(refused));
    const sender = newsSender(1000);
    const startUs = Date.now() * 1000;
    const { delivered, feed } = feeder(protection);
    const dataAt = (sequence: number, ms: number) => {
      const data = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(data, PacketType.data, 5, sequence, startUs + ms * 1000, 0, 100, 6);
      return sender.seal(data, ms, startUs + ms * 1000);
    };
    // The source announces the next period's KEY with the current one.
    const keys = sender
      .control({ sessionId: 5, incarnation: 6, sequence: 1 }, 0, startUs)
      .filter((datagram) => datagram[offsetType] === PacketType.key);
    assert.deepEqual(
      keys.map((datagram) => datagram.readUInt16BE(offsetKeyEpoch)),
      [1, 2],
    );
    feed(keys);
    feed(dataAt(1, 0));
    await settle();
    assert.deepEqual(asked, [1]);
    assert.equal(delivered.length, 1);
    // One second of control ticks repeating both, byte for byte: epoch 2 still waits, unasked.
    for (let tick = 0; tick < 20; tick += 1) {
      feed(keys);
    }
    // A forged KEY for epoch 2 (another wrapped key, another signer), then the genuine bytes again.
    const forger = generateSigningKey();
    feed([
      buildKeyMessage(
        { sessionId: 5, incarnation: 6, sequence: 1, timestampUs: startUs + 10_000, keyEpoch: 2 },
        { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 1000, service: 'news' },
        serviceKey,
        randomBytes(32),
        forger.privateKey,
      ),
    ]);
    feed(keys.slice(1));
    await settle();
    assert.deepEqual(asked, [1], 'a KEY announced ahead is asked of the token only once its DATA comes');
    // The first DATA of epoch 2 releases the genuine KEY announced ahead, once.
    feed(dataAt(2, 1000));
    await settle();
    feed(dataAt(3, 1001));
    await settle();
    assert.deepEqual(asked, [1, 2]);
    assert.equal(delivered.length, 3, JSON.stringify(protection.stats));
    assert.deepEqual(protection.stats.keysRejected, {});
    assert.equal(protection.stats.packetsBadTag, 0);
    assert.equal(refusals.length, 0);
    token.close();
  });
});

describe('restricted receiver: KEYs of another run', () => {
  it('never reach the token: not while the first key is asked, not after, not when DATA of our run comes; each copy is refused as other-run', async () => {
    const token = makeToken('entitled');
    const asked: string[] = [];
    const counting = askCounting(token, (key) => {
      asked.push(`${key.incarnation}:${key.keyEpoch}`);
    });
    const protection = createReceiverProtection(counting, () => undefined);
    const ours = newsSender(1000, 6);
    const other = newsSender(1000, 7);
    const startUs = Date.now() * 1000;
    const { delivered, feed } = feeder(protection);
    const keysOf = (sender: ReturnType<typeof newsSender>, incarnation: number) =>
      sender
        .control({ sessionId: 5, incarnation, sequence: 1 }, 0, startUs)
        .filter((datagram) => datagram[offsetType] === PacketType.key);
    const dataAt = (sequence: number, ms: number) => {
      const data = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(data, PacketType.data, 5, sequence, startUs + ms * 1000, 0, 100, 6);
      return ours.seal(data, ms, startUs + ms * 1000);
    };
    const otherKeys = keysOf(other, 7); // epochs 1 and 2 of run 7, before this receiver has a run
    const ourKeys = keysOf(ours, 6);
    feed(otherKeys);
    feed(ourKeys.slice(0, 1)); // our epoch 1 only: run 7's epoch 2 still waits
    feed(dataAt(1, 0));
    // Run 7's DATA of epoch 1 and its KEYs again, while the token has not yet answered the KEY that
    // fixes the run: run 7's epoch 1 is to go to the token, and waits for that answer.
    const otherData = Buffer.alloc(headerBytes + 100);
    writeHeaderFields(otherData, PacketType.data, 5, 1, startUs, 0, 100, 7);
    feed(other.seal(otherData, 0, startUs));
    feed(otherKeys);
    await settle();
    await settle();
    assert.deepEqual(asked, ['6:1'], 'nothing else asked before the run was fixed');
    assert.equal(
      protection.stats.keysRejected['other-run'],
      1,
      "run 7's epoch 1, refused once the run was fixed",
    );
    for (let copy = 0; copy < 10; copy += 1) {
      feed(otherKeys);
    }
    assert.equal(protection.stats.keysRejected['other-run'], 21, 'each copy of run 7 refused');
    // DATA of our epoch 2 comes before our epoch 2's KEY: run 7's KEY waits for run 7's DATA.
    feed(dataAt(2, 1000));
    await settle();
    assert.deepEqual(asked, ['6:1']);
    assert.equal(protection.stats.keysRejected['other-run'], 21);
    feed(ourKeys.slice(1));
    await settle();
    feed(dataAt(3, 1001));
    await settle();
    assert.deepEqual(asked, ['6:1', '6:2']);
    assert.equal(delivered.length, 3, JSON.stringify(protection.stats));
    token.close();
  });
});

describe('restricted receiver: the KEY that fixes the run', () => {
  it("is of the DATA's run: another run's KEY, waiting or not, is not asked for our DATA; a forged first KEY refused by the token fixes nothing", async () => {
    const { token, asked, protection } = runProbe();
    const ours = newsSender(1000, 6);
    const other = newsSender(1000, 7);
    const startUs = Date.now() * 1000;
    const { delivered, feed } = feeder(protection);
    const keyOf = (sender: ReturnType<typeof newsSender>, incarnation: number) =>
      sender
        .control({ sessionId: 5, incarnation, sequence: 1 }, 0, startUs)
        .filter((datagram) => datagram[offsetType] === PacketType.key)
        .slice(0, 1);
    const data = Buffer.alloc(headerBytes + 100);
    writeHeaderFields(data, PacketType.data, 5, 1, startUs, 0, 100, 6);
    feed(keyOf(other, 7)); // run 7's epoch 1 waits for run 7's DATA
    feed(ours.seal(data, 0, startUs)); // DATA of our epoch 1: our KEYs go to the token as they come
    feed(keyOf(other, 7)); // and run 7's again, after our DATA
    await settle();
    assert.deepEqual(asked, [], "our DATA does not send run 7's KEY to the token");
    // A forged KEY of our run's epoch 1 goes first; the token refuses it; the genuine one then fixes the run.
    const forger = generateSigningKey();
    feed([
      buildKeyMessage(
        { sessionId: 5, incarnation: 6, sequence: 1, timestampUs: startUs, keyEpoch: 1 },
        { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 1000, service: 'news' },
        serviceKey,
        randomBytes(32),
        forger.privateKey,
      ),
      ...keyOf(ours, 6),
    ]);
    await settle();
    await settle();
    assert.deepEqual(asked, ['6:1', '6:1']);
    assert.equal(protection.stats.keysRejected['bad-signature'], 1);
    assert.equal(protection.stats.keysAccepted, 1);
    assert.equal(delivered.length, 1, JSON.stringify(protection.stats));
    feed(keyOf(other, 7));
    assert.equal(protection.stats.keysRejected['other-run'], 1);
    assert.deepEqual(asked, ['6:1', '6:1']);
    token.close();
  });

  it('is not held back by forged DATA of many runs, before or after the run is fixed', async () => {
    const { token, asked, protection } = runProbe();
    const ours = newsSender(1000, 6);
    const startUs = Date.now() * 1000;
    const { delivered, feed } = feeder(protection);
    const dataAt = (sequence: number, ms: number) => {
      const data = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(data, PacketType.data, 5, sequence, startUs + ms * 1000, 0, 100, 6);
      return ours.seal(data, ms, startUs + ms * 1000);
    };
    /** Sealed-looking DATA of runs 100.. (no key opens them), naming `epoch`. */
    const forgedRuns = (epoch: number) =>
      Array.from({ length: 2 * restrictedPendingKeysMax }, (_, index) => {
        const forged = Buffer.alloc(headerBytes + 116);
        writeHeaderFields(forged, PacketType.data, 5, 1, startUs, epoch, 116, 100 + index);
        return forged;
      });
    const keysAt = (ms: number) =>
      ours
        .control({ sessionId: 5, incarnation: 6, sequence: 1 }, ms, startUs + ms * 1000)
        .filter((datagram) => datagram[offsetType] === PacketType.key);
    feed(dataAt(1, 0)); // held: no key yet
    feed(forgedRuns(1));
    for (let copy = 0; copy < 3; copy += 1) {
      feed(keysAt(0).slice(0, 1));
      await settle();
    }
    assert.deepEqual(asked, ['6:1']);
    assert.equal(delivered.length, 1, JSON.stringify(protection.stats));
    // The run is fixed; our DATA of epoch 2 waits for its KEY while forged runs name epoch 2.
    feed(dataAt(2, 1000));
    feed(forgedRuns(2));
    feed(keysAt(1000).filter((datagram) => datagram.readUInt16BE(offsetKeyEpoch) === 2));
    await settle();
    await settle();
    assert.deepEqual(asked, ['6:1', '6:2']);
    assert.equal(delivered.length, 2, JSON.stringify(protection.stats));
    // Forged runs while the token still answers the KEY that fixes the run, with our DATA waiting.
    const { token: second, asked: asked2, protection: protection2 } = runProbe();
    const fed = feeder(protection2);
    const again = newsSender(1000, 6);
    const sealedAt = (sequence: number, ms: number) => {
      const data = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(data, PacketType.data, 5, sequence, startUs + ms * 1000, 0, 100, 6);
      return again.seal(data, ms, startUs + ms * 1000);
    };
    const keysOfAgain = (ms: number) =>
      again
        .control({ sessionId: 5, incarnation: 6, sequence: 1 }, ms, startUs + ms * 1000)
        .filter((datagram) => datagram[offsetType] === PacketType.key);
    fed.feed(sealedAt(1, 0));
    fed.feed(keysOfAgain(0).slice(0, 1)); // the token answers this one on a later turn
    fed.feed(sealedAt(2, 1000));
    fed.feed(forgedRuns(2));
    await settle();
    await settle();
    fed.feed(keysOfAgain(1000).filter((datagram) => datagram.readUInt16BE(offsetKeyEpoch) === 2));
    await settle();
    await settle();
    assert.deepEqual(asked2, ['6:1', '6:2']);
    assert.equal(fed.delivered.length, 2, JSON.stringify(protection2.stats));
    token.close();
    second.close();
  });

  it('announced ahead is not asked for DATA of an earlier epoch that waits for its own key', async () => {
    const { token, asked, protection } = runProbe();
    const ours = newsSender(1000, 6);
    const startUs = Date.now() * 1000;
    const { delivered, feed } = feeder(protection);
    const data = Buffer.alloc(headerBytes + 100);
    writeHeaderFields(data, PacketType.data, 5, 1, startUs, 0, 100, 6);
    const keys = ours
      .control({ sessionId: 5, incarnation: 6, sequence: 1 }, 0, startUs)
      .filter((datagram) => datagram[offsetType] === PacketType.key);
    feed(ours.seal(data, 0, startUs)); // DATA of epoch 1, held
    feed(keys.slice(1)); // only the KEY of epoch 2, announced ahead
    await settle();
    assert.deepEqual(asked, [], 'period 2 is not asked (or paid for) before DATA of it');
    feed(keys.slice(0, 1));
    await settle();
    assert.deepEqual(asked, ['6:1']);
    assert.equal(delivered.length, 1, JSON.stringify(protection.stats));
    token.close();
  });

  it("waits for DATA of its own run: another run's DATA neither holds our waiting KEY back nor sends it", async () => {
    const { token, asked, protection } = runProbe();
    const ours = newsSender(1000, 6);
    const other = newsSender(1000, 7);
    const startUs = Date.now() * 1000;
    const { delivered, feed } = feeder(protection);
    const sealedOf = (sender: ReturnType<typeof newsSender>, incarnation: number) => {
      const data = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(data, PacketType.data, 5, 1, startUs, 0, 100, incarnation);
      return sender.seal(data, 0, startUs);
    };
    const ourKeys = ours
      .control({ sessionId: 5, incarnation: 6, sequence: 1 }, 0, startUs)
      .filter((datagram) => datagram[offsetType] === PacketType.key);
    feed(ourKeys); // epochs 1 and 2 wait
    feed(sealedOf(other, 7)); // run 7's DATA of epoch 1: not ours
    await settle();
    assert.deepEqual(asked, []);
    feed(sealedOf(ours, 6));
    await settle();
    assert.deepEqual(asked, ['6:1'], 'our DATA sends our KEY at once');
    assert.equal(delivered.length, 1, JSON.stringify(protection.stats));
    token.close();
  });
});

describe('restricted receiver: a grant that starts while the source repeats a KEY unchanged', () => {
  /**
   * A token whose news grant starts `startsInMs` after `nowMs` (and ends `endsInMs` after it), a
   * sender, and a feed of both.
   */
  function bed(nowMs: number, startsInMs: number, endsInMs = 3_600_000) {
    tokens += 1;
    const path = join(directory, `token-${tokens}.json`);
    initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
    const token = openSoftwareToken(path, '2468');
    token.installGrant(
      issueNewsGrant(
        token,
        { root, source, serviceKey },
        { notBeforeMs: nowMs + startsInMs, notAfterMs: nowMs + endsInMs },
      ),
    );
    const refusals: TokenRefused[] = [];
    const protection = createReceiverProtection(token, (refused) => refusals.push(refused));
    const sender = newsSender(60_000);
    const delivered: Buffer[] = [];
    const feed = (datagrams: Buffer[]) => {
      for (const datagram of datagrams) {
        protection.filter(datagram, (plain) => delivered.push(plain));
      }
    };
    // The source's clocks: its monotonic ms (from 0) run with the wall clock.
    const keysAt = (atMs: number) =>
      sender
        .control({ sessionId: 5, incarnation: 6, sequence: 1 }, atMs, (nowMs + atMs) * 1000)
        .filter((datagram) => datagram[offsetType] === PacketType.key);
    const dataAt = (atMs: number, sequence = 1) => {
      const data = Buffer.alloc(headerBytes + 100);
      writeHeaderFields(data, PacketType.data, 5, sequence, (nowMs + atMs) * 1000, 0, 100, 6);
      return sender.seal(data, atMs, (nowMs + atMs) * 1000);
    };
    return { token, refusals, protection, delivered, feed, keysAt, dataAt };
  }
  const settle = async () => {
    for (let turn = 0; turn < 5; turn++) {
      await new Promise((resolve) => setImmediate(resolve));
    }
  };

  it(`a KEY signed before the grant starts and repeated after it (up to ${signedRepeatRefreshMs} ms) ends nothing; the KEY signed again opens the stream`, async () => {
    const nowMs = Date.now();
    const t = bed(nowMs, 300);
    t.keysAt(0); // the source signs its KEYs at 0 ms, 300 ms before the grant starts
    // The receiver joins at 400 ms: the KEY it gets is the one signed at 0 ms, repeated unchanged.
    t.feed(t.keysAt(400));
    t.feed(t.dataAt(400));
    await settle();
    assert.deepEqual(
      t.refusals.map((refused) => refused.reason),
      [],
      'an entitled receiver is not told it is not entitled',
    );
    assert.equal(t.delivered.length, 0);
    // At the refresh the source signs the KEY with the stream's time: the held DATA opens.
    t.feed(t.keysAt(400 + signedRepeatRefreshMs));
    await settle();
    assert.equal(t.delivered.length, 1, JSON.stringify(t.protection.stats));
    t.token.close();
  });

  it('a grant that starts later than a repeated KEY can lag still ends the run, as not yet valid', async () => {
    const nowMs = Date.now();
    const t = bed(nowMs, 60_000);
    t.feed(t.keysAt(0));
    t.feed(t.dataAt(0));
    await settle();
    assert.deepEqual(
      t.refusals.map((refused) => refused.reason),
      ['not-yet-valid'],
    );
    assert.equal(t.delivered.length, 0);
    t.token.close();
  });

  it('a grant that ends mid-stream stops decoding within 1.5 s of its end (docs/security.md), with the KEY repeated unchanged', async () => {
    const nowMs = Date.now();
    const endsInMs = 1_000;
    const t = bed(nowMs, -60_000, endsInMs);
    let refusedAtMs: number | undefined;
    let lastDecodedAtMs = -1;
    for (
      let atMs = 0;
      atMs <= endsInMs + 3_000 && refusedAtMs === undefined;
      atMs += protectedControlIntervalMs
    ) {
      const before = t.delivered.length;
      t.feed(t.keysAt(atMs));
      t.feed(t.dataAt(atMs, 1 + atMs / protectedControlIntervalMs));
      await settle();
      if (t.delivered.length > before) {
        lastDecodedAtMs = atMs;
      }
      if (t.refusals.length > 0) {
        refusedAtMs = atMs;
      }
    }
    assert.deepEqual(
      t.refusals.map((refused) => refused.reason),
      ['expired'],
    );
    assert.ok(
      lastDecodedAtMs >= endsInMs - protectedControlIntervalMs,
      `decoded until ${lastDecodedAtMs} ms`,
    );
    assert.ok(
      (refusedAtMs ?? Number.POSITIVE_INFINITY) <= endsInMs + 1_500,
      `refused at ${refusedAtMs} ms, the grant ended at ${endsInMs} ms`,
    );
    t.token.close();
  });
});
