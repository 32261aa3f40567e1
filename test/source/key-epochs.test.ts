/**
 * A restricted run has 65,535 key epochs (16 bits in the header, 0 unused), one per crypto-period:
 * 18.2 hours at --crypto-period 1, 7.6 days at the default 10 s. When they are used up the run
 * ends, clearly: the source sends its last manifests and END, and `send` exits 2 naming the
 * limit (GATECAST_ERR_KEY_EPOCHS), instead of dying on a 17-bit epoch or giving an epoch a second
 * key receivers already hold another for.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isOperatingError } from '../../src/cli/errors.js';
import { KeyEpochsExhausted } from '../../src/crypto/errors.js';
import { createSenderProtection, keyEpochMax, runSpan } from '../../src/crypto/restricted-session.js';
import { suiteByName } from '../../src/crypto/suites.js';
import { parseGroup } from '../../src/net/address.js';
import type { SenderSocket } from '../../src/net/udp.js';
import {
  decodePacket,
  headerBytes,
  offsetKeyEpoch,
  offsetType,
  PacketType,
  SessionKind,
  writeHeaderFields,
} from '../../src/protocol/packet.js';
import { decodeKey } from '../../src/protocol/restricted.js';
import { inputEnded, inputNotReady, type PayloadInput } from '../../src/source/inputs.js';
import { createSource, type SourceComponents } from '../../src/source/source.js';
import { runGatecast } from '../helpers/cli.js';
import { recordingSocket } from '../helpers/recording-socket.js';
import { restrictedKeys } from '../helpers/restricted-bed.js';

const settings = (cryptoPeriodMs: number, manifestPackets: number) => ({
  suite: suiteByName('aes-128-gcm', 'test'),
  service: 'news',
  serviceEpoch: 1,
  serviceKey: restrictedKeys.serviceKey,
  sourcePrivateKey: restrictedKeys.source.privateKey,
  sourcePublicKey: restrictedKeys.source.publicKey,
  cryptoPeriodMs,
  tier: 0,
  manifestPackets,
});

/** An unpaced stream source on `group` with the given input and protection. */
function streamSource(
  group: string,
  name: string,
  input: PayloadInput,
  socket: SenderSocket,
  protection: NonNullable<SourceComponents['protection']>,
) {
  return createSource(
    {
      group: parseGroup(group, 'g'),
      rateBitsPerSecond: 0,
      packetPayloadBytes: 200,
      sessionName: name,
      startDelayMs: 0,
    },
    { input, openSocket: async () => socket, protection },
  );
}

/**
 * Checks what a run whose epochs ran out put on the wire: `data` DATA, then its last manifest, then
 * an END that counts them.
 */
function assertEndedAfter(wire: Buffer[], data: number): void {
  const types: number[] = wire.map((datagram) => datagram[offsetType] ?? -1);
  assert.equal(types.filter((type) => type === PacketType.data).length, data);
  const lastData = types.lastIndexOf(PacketType.data);
  const end = wire.find((datagram) => datagram[offsetType] === PacketType.end);
  assert.ok(end !== undefined && types.indexOf(PacketType.end) > lastData, 'END follows the last DATA');
  const decoded = decodePacket(end);
  assert.ok(decoded.ok && decoded.value.type === PacketType.end);
  assert.equal(decoded.value.packetCount, data, 'END counts what was sent');
  assert.ok(types.slice(lastData).includes(PacketType.signature), 'the last manifest follows the last DATA');
}

describe('key epochs of a restricted run', () => {
  it('seals in all 65,535 epochs, announces none past the last, then refuses with KeyEpochsExhausted', () => {
    const protection = createSenderProtection(settings(1000, 0), { sessionId: 9, incarnation: 3 });
    const plain = Buffer.alloc(headerBytes + 16);
    let sequence = 0;
    const seal = (nowMs: number) => {
      writeHeaderFields(plain, PacketType.data, 9, sequence++, 0, 0, 16, 3);
      return protection.seal(plain, nowMs, 0);
    };
    for (let period = 0; period < keyEpochMax; period++) {
      const [sealed] = seal(period * 1000);
      assert.equal(sealed?.readUInt16BE(offsetKeyEpoch), period + 1);
    }
    // At the last epoch the KEY messages name it alone: there is no next one to announce.
    const announced = protection
      .control({ sessionId: 9, incarnation: 3, sequence }, (keyEpochMax - 1) * 1000, 0)
      .map((datagram) => decodeKey(datagram))
      .flatMap((key) => (key.ok ? [key.value.keyEpoch] : []));
    assert.deepEqual(announced, [keyEpochMax]);
    assert.throws(
      () => seal(keyEpochMax * 1000),
      (error: Error) =>
        error instanceof KeyEpochsExhausted &&
        isOperatingError(error) &&
        /all 65535 key epochs \(65535 crypto-periods of 1 s, 18\.2 hours\); start the session again/.test(
          error.message,
        ),
    );
    assert.throws(
      () => protection.control({ sessionId: 9, incarnation: 3, sequence }, keyEpochMax * 1000, 0),
      KeyEpochsExhausted,
    );
    assert.equal(runSpan(10_000), '7.6 days');
  });

  it('a run that uses up its epochs sends what it sealed, its last manifest and END, then throws', async () => {
    const { socket, wire } = recordingSocket();
    let next = 0;
    const input: PayloadInput = {
      kind: SessionKind.stream,
      totalBytes: undefined,
      sha256: undefined,
      droppedCount: 0,
      read(out) {
        if (next >= 1000) {
          return inputEnded;
        }
        out.fill(next++ & 0xff, 0, 100);
        return 100;
      },
      waitReadable: () => Promise.resolve(),
      async close() {},
    };
    const sealedBeforeEnd = 100;
    // The real protection, whose epochs end after `sealedBeforeEnd` packets here (a test cannot
    // wait 18 hours): its seal then throws what the real one throws at epoch 65,536.
    const source = streamSource('239.255.64.9:5000', 'epochs', input, socket, (run) => {
      const real = createSenderProtection(settings(10_000, 32), run);
      let sealed = 0;
      return {
        ...real,
        seal(plain, nowMs, wallUs, into) {
          if (sealed++ >= sealedBeforeEnd) {
            throw new KeyEpochsExhausted('the run has used all 65535 key epochs');
          }
          return real.seal(plain, nowMs, wallUs, into);
        },
      };
    });
    await assert.rejects(source.run(), KeyEpochsExhausted);
    await source.close();
    assertEndedAfter(wire, sealedBeforeEnd);
    assert.equal(source.stats.packetsSent, sealedBeforeEnd);
  });

  it('a stream waiting for input when the epochs run out at a control tick ends at once with END', {
    timeout: 20_000,
  }, async () => {
    const { socket, wire } = recordingSocket();
    // A live stream that gives five payloads, then has nothing more for as long as it is open.
    let next = 0;
    let closeInput: () => void = () => undefined;
    const closedInput = new Promise<void>((resolve) => {
      closeInput = resolve;
    });
    const input: PayloadInput = {
      kind: SessionKind.stream,
      totalBytes: undefined,
      sha256: undefined,
      droppedCount: 0,
      read(out) {
        if (next >= 5) {
          return inputNotReady;
        }
        out.fill(next++, 0, 100);
        return 100;
      },
      waitReadable: () => closedInput,
      async close() {
        closeInput();
      },
    };
    let controls = 0;
    // The real protection, whose epochs run out at a control tick once the five payloads are
    // sealed (the period ending while the stream is idle): control then throws what the real one
    // throws past epoch 65,535.
    const source = streamSource('239.255.64.10:5000', 'epochs-idle', input, socket, (run) => {
      const real = createSenderProtection(settings(10_000, 32), run);
      return {
        ...real,
        control(header, nowMs, wallUs) {
          if (next >= 5 && controls++ > 0) {
            throw new KeyEpochsExhausted('the run has used all 65535 key epochs');
          }
          return real.control(header, nowMs, wallUs);
        },
      };
    });
    await assert.rejects(source.run(), KeyEpochsExhausted);
    await source.close();
    assertEndedAfter(wire, 5);
  });

  it('send refuses a --duration longer than the run can last at its --crypto-period, naming both, before it sends', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-key-epochs-'));
    try {
      const keys = join(directory, 'keys');
      assert.equal((await runGatecast(['token', 'keys', '--out', keys, '--service', 'news'])).code, 0);
      const send = (duration: string, cryptoPeriod: string) =>
        runGatecast([
          'send',
          '--group',
          '239.255.64.11:5000',
          '--iface',
          '127.0.0.1',
          '--ticker',
          '--restricted',
          '--service',
          'news',
          '--service-key-file',
          join(keys, 'news.key'),
          '--source-key',
          join(keys, 'source.pem'),
          '--crypto-period',
          cryptoPeriod,
          '--duration',
          duration,
        ]);
      // 65,535 periods of 10 s are 655,350 s (7.6 days): 655,351 s cannot be run.
      const refused = await send('655351', '10');
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(
        refused.stderr,
        /--duration: 655351 s is longer than a restricted run lasts at --crypto-period 10 \(65535 crypto-periods, 7\.6 days\)/,
      );
      assert.doesNotMatch(refused.stderr, /sealed and opened|sent session/, 'nothing was started');
      // The same duration with a period that lasts it is taken (ended at once here by a short one).
      const taken = await send('1', '10');
      assert.equal(taken.code, 0, taken.stderr);
      assert.match(taken.stderr + taken.stdout, /sent session/);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});
