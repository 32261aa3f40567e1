/**
 * `send --signed` and `--source-public` on the command line: bad input names the option, and a
 * receiver given another source's key writes nothing of a signed session and says why.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { signatureEngineInfo } from '../../src/crypto/aead-engine.js';
import { offsetType, PacketType } from '../../src/protocol/packet.js';
import { decodeSignature, SignatureKind } from '../../src/protocol/restricted.js';
import { runGatecast as run, startReceive } from '../helpers/cli.js';
import { freshPort } from '../helpers/loopback.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-signed-cli-'));
after(() => rmSync(directory, { recursive: true, force: true }));

/** `send --signed` of a file over loopback with this test's source key, and `extra` options. */
function sendSignedFile(group: string, file: string, extra: string[]) {
  return run([
    'send',
    '--group',
    group,
    '--iface',
    '127.0.0.1',
    '--file',
    file,
    ...extra,
    '--signed',
    '--source-key',
    join(directory, 'keys', 'source.pem'),
  ]);
}

describe('signed sessions on the command line', () => {
  before(async () => {
    for (const name of ['keys', 'other']) {
      const made = await run(['token', 'keys', '--out', join(directory, name), '--service', 'news']);
      assert.equal(made.code, 0, made.stderr);
    }
  });

  it('send --signed without --source-key, and --source-public that is not a key: exit 2 naming the option', async () => {
    const group = `239.255.64.1:${freshPort()}`;
    const noKey = await run(['send', '--group', group, '--iface', '127.0.0.1', '--ticker', '--signed']);
    assert.equal(noKey.code, 2, noKey.stderr);
    assert.match(noKey.stderr, /--signed needs --source-key PEM/);
    const bad = join(directory, 'bad.pub');
    writeFileSync(bad, 'not hex\n');
    const receive = await run(['receive', '--group', group, '--iface', '127.0.0.1', '--source-public', bad]);
    assert.equal(receive.code, 2, receive.stderr);
    assert.match(receive.stderr, /--source-public: .* must hold 64 hex digits/);
    // A key of small order (the neutral point): under it one signature verifies for any message.
    const smallOrder = join(directory, 'small-order.pub');
    writeFileSync(smallOrder, `01${'00'.repeat(31)}\n`);
    const weak = await run([
      'receive',
      '--group',
      group,
      '--iface',
      '127.0.0.1',
      '--source-public',
      smallOrder,
    ]);
    assert.equal(weak.code, 2, weak.stderr);
    assert.match(
      weak.stderr,
      /--source-public: .* is not a usable Ed25519 public key: it is a point of small order/,
    );
    const service = await run([
      'send',
      '--group',
      group,
      '--ticker',
      '--signed',
      '--source-key',
      join(directory, 'keys', 'source.pem'),
      '--service',
      'news',
    ]);
    assert.equal(service.code, 2, service.stderr);
    assert.match(service.stderr, /--service needs --restricted/);
  });

  it('the right key: the file whole; another source key: nothing written, exit 1, the forgeries named', async () => {
    const group = `239.255.64.2:${freshPort()}`;
    const file = join(directory, 'in.bin');
    const bytes = randomBytes(200_000);
    writeFileSync(file, bytes);
    const outputs = { right: join(directory, 'right.out'), wrong: join(directory, 'wrong.out') };
    const receivers = await Promise.all(
      (['right', 'wrong'] as const).map((which) =>
        startReceive([
          '--group',
          group,
          '--iface',
          '127.0.0.1',
          '--timeout',
          which === 'right' ? '20' : '10', // long enough for the sender to start on a loaded machine
          '--out',
          outputs[which],
          '--source-public',
          join(directory, which === 'right' ? 'keys' : 'other', 'source.pub'),
        ]),
      ),
    );
    const sent = await sendSignedFile(group, file, ['--rate', '5M']);
    assert.equal(sent.code, 0, sent.stderr);
    assert.match(sent.stderr, /send: a manifest signed over every 64 DATA packets\n/);
    const [right, wrong] = receivers as [(typeof receivers)[0], (typeof receivers)[0]];
    assert.equal(await right.exited, 0, right.stderr());
    assert.match(right.stderr(), /whole: 143 packets.*SHA-256 ok/);
    // Both name the code that made and checked the signatures (docs/security.md, "The signature engine").
    const engine = signatureEngineInfo();
    const engineLine =
      engine.name === 'libsodium'
        ? /Ed25519 signatures made and checked with libsodium \d+\.\d+/
        : /Ed25519 signatures made and checked with node:crypto \(/;
    assert.match(sent.stderr, new RegExp(`send: ${engineLine.source}`));
    assert.match(right.stderr(), new RegExp(`receive: ${engineLine.source}`));
    assert.deepEqual(readFileSync(outputs.right), bytes);
    assert.equal(await wrong.exited, 1, wrong.stderr());
    assert.match(wrong.stderr(), /forged datagrams refused/);
    assert.equal(readFileSync(outputs.wrong).length, 0);
  });

  it('send --signed --packet-size 1000: manifests no longer than the DATA on the wire (58 packets each), the file whole', async () => {
    const [address, portText] = [`239.255.64.3`, String(freshPort())];
    const group = `${address}:${portText}`;
    const file = join(directory, 'small-packets.bin');
    const bytes = randomBytes(300_000);
    writeFileSync(file, bytes);
    const output = join(directory, 'small-packets.out');
    // What crosses the wire, seen by a socket of this test on the group.
    const wire = { data: [] as number[], manifests: [] as Array<{ bytes: number; count: number }> };
    // A buffer for the whole file: the run comes in bursts at 100M while this process is busy.
    const socket = createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: 4 * 1024 * 1024 });
    socket.on('message', (datagram: Buffer) => {
      if (datagram[offsetType] === PacketType.data) {
        wire.data.push(datagram.length);
      } else if (datagram[offsetType] === PacketType.signature) {
        const decoded = decodeSignature(datagram);
        if (decoded.ok && decoded.value.kind === SignatureKind.manifest) {
          wire.manifests.push({ bytes: datagram.length, count: decoded.value.hashCount });
        }
      }
    });
    await new Promise<void>((resolve) => socket.bind(Number(portText), resolve));
    socket.addMembership(address, '127.0.0.1');
    try {
      const receiver = await startReceive([
        '--group',
        group,
        '--iface',
        '127.0.0.1',
        '--timeout',
        '20',
        '--out',
        output,
        '--source-public',
        join(directory, 'keys', 'source.pub'),
      ]);
      // At 100M, 58 packets come within the 10 ms a pending manifest waits before it is signed partial.
      const sent = await sendSignedFile(group, file, ['--rate', '100M', '--packet-size', '1000']);
      assert.equal(sent.code, 0, sent.stderr);
      assert.match(sent.stderr, /send: a manifest signed over every 58 DATA packets\n/);
      assert.equal(await receiver.exited, 0, receiver.stderr());
      assert.match(receiver.stderr(), /whole: 300 packets.*SHA-256 ok/);
      assert.deepEqual(readFileSync(output), bytes);
    } finally {
      socket.close();
    }
    // What this socket saw (it may miss some in a burst); the receiver above got every packet.
    assert.ok(
      wire.data.length > 0 && wire.manifests.length > 0,
      `${wire.data.length} DATA, ${wire.manifests.length} manifests seen`,
    );
    const longestData = Math.max(...wire.data);
    assert.equal(longestData, 1032); // the 32-byte header and 1,000 bytes
    // Full manifests cover 58 packets (100 + 16 * 58 = 1,028 bytes); the last one, fewer.
    assert.ok(
      wire.manifests.some((manifest) => manifest.count === 58),
      JSON.stringify(wire.manifests),
    );
    for (const manifest of wire.manifests) {
      assert.ok(manifest.count <= 58 && manifest.bytes <= longestData, JSON.stringify(manifest));
    }
  });
});
