import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runGatecast as run } from '../helpers/cli.js';
import {
  assertNoPlaintext,
  captureGroup,
  createNewsBed,
  sendNews,
  startRetransmitAndRepair,
} from '../helpers/news-bed.js';
import { type SoftHsm, softhsmMissing } from '../helpers/softhsm.js';
import {
  hostAddress,
  receiveOn,
  repoRoot,
  retransmitAt,
  sendFrom,
  sha256,
  startRepair,
  startRetransmit,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';

/**
 * A forger on subnet B (run with node in its namespace): joins S1, learns the run from its DATA, and
 * after 300 packets sends a HEARTBEAT claiming next + 65,000, an END ten packets on, a DESCRIPTOR of
 * another session and five DATA packets ahead of the source, all for the live run.
 */
const forgerScript = `
import dgram from 'node:dgram';
const packet = await import(process.argv[1] + '/dist/protocol/packet.js');
const [group, port] = [process.argv[2], Number(process.argv[3])];
const local = process.argv[4];
const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
let seen = 0;
socket.on('message', (datagram) => {
  if (datagram[3] !== packet.PacketType.data || ++seen !== 300) return;
  const run = { sessionId: datagram.readUInt32BE(8), incarnation: datagram.readUInt32BE(28) };
  const next = datagram.readUInt32BE(12) + 1;
  const fields = (sequence) => ({ ...run, sequence, timestampUs: Date.now() * 1000 });
  const forged = [
    packet.encodeProgress(packet.PacketType.heartbeat, fields(next + 65000), { packetCount: 0, byteCount: 0 }),
    packet.encodeProgress(packet.PacketType.end, fields(next + 10), { packetCount: 10, byteCount: 10000 }),
    packet.encodeDescriptor({ sessionId: 99, incarnation: 99, sequence: 0, timestampUs: Date.now() * 1000 }, {
      firstSequence: 0, packetPayloadBytes: 1000, kind: packet.SessionKind.stream, totalBytes: undefined,
      rateBitsPerSecond: 0, sha256: undefined, name: 'forged' }),
    ...[5, 6, 7, 8, 9].map((ahead) => packet.encodeData(fields(next + ahead), Buffer.alloc(1000, 0xee))),
  ];
  const out = dgram.createSocket('udp4');
  out.bind(0, local, () => {
    out.setMulticastInterface(local);
    let left = forged.length;
    for (const datagram of forged) {
      out.send(datagram, port, group, () => {
        if (--left === 0) {
          console.log('forged ' + forged.length);
          out.close();
          socket.close();
        }
      });
    }
  });
});
socket.bind(port, () => {
  socket.addMembership(group, local);
  console.log('forger listening');
});
`;

function skip(): { skip?: string } {
  const bed = testbedSkip(['socat']);
  if (bed.skip !== undefined) {
    return bed;
  }
  const hsm = softhsmMissing('the restricted-channel test');
  return hsm === undefined ? {} : { skip: hsm };
}

describe('restricted channel across the routed test bed (software and SoftHSM2 tokens)', skip(), () => {
  let bed: Testbed;
  let hsm: SoftHsm;
  let directory: string;
  let file: string;
  let fileBytes: Buffer;
  const keys = () => join(directory, 'keys');

  before(async () => {
    ({ directory, hsm, bed } = await createNewsBed('gatecast-restricted-e2e-', 'rx2-token', '24682468'));
    file = join(directory, 'film.bin');
    fileBytes = randomBytes(3 * 1000 * 1000);
    writeFileSync(file, fileBytes);
    const tokens: [string, string, boolean][] = [
      ['rx1', join(directory, 'rx1.token'), true],
      ['rx2', 'pkcs11:rx2-token', true],
      ['rt1', join(directory, 'rt1.token'), false],
    ];
    for (const [host, token, entitled] of tokens) {
      const init = await run(['token', 'init', '--token', token, '--root-public', join(keys(), 'root.pub')]);
      assert.equal(init.code, 0, init.stderr);
      const device = join(directory, `${host}.device`);
      writeFileSync(device, init.stdout.trim());
      if (!entitled) {
        continue;
      }
      const grantFile = join(directory, `${host}.grant`);
      const grant = await run([
        'token',
        'grant',
        '--root-key',
        join(keys(), 'root.pem'),
        '--device',
        device,
        '--service',
        'news',
        '--service-key-file',
        join(keys(), 'news.key'),
        '--source-public',
        join(keys(), 'source.pub'),
        '--until',
        new Date(Date.now() + 3_600_000).toISOString(),
        '--out',
        grantFile,
      ]);
      assert.equal(grant.code, 0, grant.stderr);
      const installed = await run(['token', 'install', '--token', token, '--grant', grantFile]);
      assert.equal(installed.code, 0, installed.stderr);
      assert.match(installed.stdout, /installed: news/);
    }
  });

  after(() => {
    bed?.down();
    hsm?.remove();
    rmSync(directory, { recursive: true, force: true });
  });

  it('entitled tokens decode the file intact; no token, or no grant, decodes nothing and says why; the wire holds no plaintext', async () => {
    const group = '239.10.0.9:5010';
    const capture = await captureGroup(bed, group, join(directory, 'capture.bin'));
    const outputs = { rx1: join(directory, 'rx1.out'), rx2: join(directory, 'rx2.out') };
    const rx1 = receiveOn(bed, 'rx1', group, [
      '--out',
      outputs.rx1,
      '--timeout',
      '15',
      '--token',
      join(directory, 'rx1.token'),
    ]);
    const rx2 = receiveOn(bed, 'rx2', group, [
      '--out',
      outputs.rx2,
      '--timeout',
      '15',
      '--token',
      'pkcs11:rx2-token',
    ]);
    const unentitled = receiveOn(bed, 'rt1', group, [
      '--out',
      join(directory, 'rt1.out'),
      '--timeout',
      '15',
      '--token',
      join(directory, 'rt1.token'),
    ]);
    const plain = receiveOn(bed, 'rt2', group, ['--out', join(directory, 'rt2.out'), '--timeout', '15']);
    await Promise.all([rx1, rx2, unentitled, plain].map((receiver) => receiver.waitFor(/joined/)));
    const sender = sendNews(bed, group, { file, keys: keys(), rate: '50M' });
    const sent = await sender.finished;
    assert.equal(sent.code, 0, sent.stderr);
    for (const [name, receiver] of [
      ['rx1', rx1],
      ['rx2', rx2],
    ] as const) {
      const result = await receiver.finished;
      assert.equal(result.code, 0, `${name}: ${result.stderr}`);
      assert.match(result.stderr, /received session "film.bin" whole: 2143 packets, 3.0 MB .*SHA-256 ok/);
      assert.match(result.stderr, /\d+ source signatures not checked: give --source-public/);
      assert.equal(sha256(readFileSync(outputs[name])), sha256(fileBytes));
    }
    const refused = await unentitled.finished;
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /not entitled to news/);
    assert.equal(readFileSync(join(directory, 'rt1.out')).length, 0);
    const noToken = await plain.finished;
    assert.equal(noToken.code, 1, noToken.stderr);
    assert.match(
      noToken.stderr,
      /2143 encrypted packets not decoded: the session is restricted, receive it with --token/,
    );
    assert.equal(readFileSync(join(directory, 'rt2.out')).length, 0);
    assertNoPlaintext(await capture.stop(), fileBytes);
  });

  it('every-n-th-packet mode (--group-packets 16): a SoftHSM2 token on S1 and a software token behind a repair server decode the file intact, each asked once per group of 16; the wire holds no plaintext', async () => {
    const s1 = '239.10.0.14:5030';
    const s2 = '239.10.0.15:5032';
    await startRetransmitAndRepair(bed, {
      s1,
      s2,
      secret: join(directory, 'group-secret'),
      secretText: 'e2e operator secret for the group-key test\n',
    });
    const capture = await captureGroup(bed, s1, join(directory, 'group-capture.bin'));
    const outputs = { s2: join(directory, 'group-s2.out'), s1: join(directory, 'group-s1.out') };
    const viaRepair = receiveOn(bed, 'rx1', s2, [
      '--out',
      outputs.s2,
      '--timeout',
      '15',
      '--json',
      '--token',
      join(directory, 'rx1.token'),
    ]);
    const direct = receiveOn(bed, 'rx2', s1, [
      '--out',
      outputs.s1,
      '--timeout',
      '15',
      '--json',
      '--token',
      'pkcs11:rx2-token',
    ]);
    await Promise.all([viaRepair.waitFor(/joined/), direct.waitFor(/joined/)]);
    const groupFile = join(directory, 'grouped.bin');
    const groupBytes = randomBytes(2 * 1000 * 1000);
    writeFileSync(groupFile, groupBytes);
    const sender = sendNews(bed, s1, {
      file: groupFile,
      keys: keys(),
      rate: '8M',
      extra: ['--group-packets', '16'],
    });
    const sent = await sender.finished;
    assert.equal(sent.code, 0, sent.stderr);
    const packets = Math.ceil(groupBytes.length / 1400);
    for (const [name, receiver] of [
      ['s2', viaRepair],
      ['s1', direct],
    ] as const) {
      const result = await receiver.finished;
      assert.equal(result.code, 0, `${name}: ${result.stderr}`);
      const summary = JSON.parse(result.stderr.trim().split('\n').at(-1) as string) as {
        outcome: string;
        packetsDelivered: number;
        restricted: { groupKeysAsked: number; packetsOpened: number; packetsBadTag: number };
      };
      assert.equal(summary.outcome, 'complete', `${name}: ${result.stderr}`);
      assert.equal(summary.packetsDelivered, packets);
      assert.equal(sha256(readFileSync(outputs[name])), sha256(groupBytes));
      // A 2 MB file at 8 Mbit/s lasts one 10 s crypto-period: one token call per 16 packets, and
      // (behind the repair server) a few more for a group whose packets came again after it was forgotten.
      const groups = Math.ceil(packets / 16);
      assert.ok(
        summary.restricted.groupKeysAsked >= groups && summary.restricted.groupKeysAsked <= groups + 8,
        `${name}: ${summary.restricted.groupKeysAsked} token calls for ${packets} packets (${groups} groups)`,
      );
      assert.equal(summary.restricted.packetsBadTag, 0, `${name}: ${result.stderr}`);
    }
    assertNoPlaintext(await capture.stop(), groupBytes);
    await bed.stopAll();
  });

  it('a signed session: forged HEARTBEAT (next + 65,000), END, DESCRIPTOR and DATA into S1 of a live --latency 100 repair move nothing; S2 and S1 receivers get the file whole', async () => {
    const s1 = '239.10.0.12:5020';
    const s2 = '239.10.0.13:5022';
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'e2e operator secret for the signed-session test\n');
    const sourcePublic = ['--source-public', join(keys(), 'source.pub')];
    const retransmit = startRetransmit(bed, 'rt1', s1, secret, sourcePublic);
    const repair = startRepair(bed, 'rep', {
      s1,
      emit: s2,
      secret,
      retransmit: [retransmitAt('rt1')],
      mode: ['--latency', '100', '--status', '127.0.0.1:9101'],
      extra: sourcePublic,
    });
    await Promise.all([retransmit.waitFor(/listening on/), repair.waitFor(/listening on/)]);
    const outputs = { s2: join(directory, 'signed-s2.out'), s1: join(directory, 'signed-s1.out') };
    const viaRepair = receiveOn(bed, 'rx1', s2, ['--out', outputs.s2, '--timeout', '15', ...sourcePublic]);
    const direct = receiveOn(bed, 'rx2', s1, ['--out', outputs.s1, '--timeout', '15', ...sourcePublic]);
    const forger = bed.spawn('rt3', process.execPath, [
      '--input-type=module',
      '-e',
      forgerScript,
      repoRoot,
      '239.10.0.12',
      '5020',
      hostAddress.rt3 as string,
    ]);
    await Promise.all([
      viaRepair.waitFor(/joined/),
      direct.waitFor(/joined/),
      forger.waitFor(/forger listening/),
    ]);
    const signedFile = join(directory, 'signed.bin');
    const signedBytes = randomBytes(2 * 1000 * 1000);
    writeFileSync(signedFile, signedBytes);
    const sender = sendFrom(bed, s1, [
      '--file',
      signedFile,
      '--rate',
      '8M',
      '--signed',
      '--source-key',
      join(keys(), 'source.pem'),
    ]);
    const sent = await sender.finished;
    assert.equal(sent.code, 0, sent.stderr);
    const forged = await forger.finished;
    assert.match(forged.stdout, /forged 8/, forged.stderr);
    for (const [name, receiver] of [
      ['s2', viaRepair],
      ['s1', direct],
    ] as const) {
      const result = await receiver.finished;
      assert.equal(result.code, 0, `${name}: ${result.stderr}`);
      assert.match(result.stderr, /received session "signed.bin" whole: 1429 packets, 2.0 MB .*SHA-256 ok/);
      assert.equal(sha256(readFileSync(outputs[name])), sha256(signedBytes));
    }
    // The direct receiver saw the forgeries and refused them; the repair server never let them in.
    const directResult = await direct.finished;
    assert.match(directResult.stderr, /forged datagrams refused|not authenticated by the source key/);
    const status = JSON.parse(bed.control('status', 'rep', 'http://127.0.0.1:9101/status')) as {
      claimsTooFar: number;
      nacksSent: number;
      gaps: number;
      dropped: Record<string, number>;
      signed: { forged: Record<string, number>; unauthenticated: number; holding: number };
    };
    assert.equal(status.claimsTooFar, 0, JSON.stringify(status));
    assert.equal(status.dropped['end-revoked'] ?? 0, 0, JSON.stringify(status));
    assert.equal(status.dropped['end-not-believed'] ?? 0, 0, JSON.stringify(status));
    assert.ok(
      (status.signed.forged['hash-mismatch'] ?? 0) + status.signed.unauthenticated + status.signed.holding >=
        8,
      JSON.stringify(status.signed),
    );
    // Gaps only for genuine packets lost on the way, if any: never the 65,000 a forgery claimed.
    assert.ok(status.gaps < 100, JSON.stringify(status));
    await bed.stopAll();
  });
});
