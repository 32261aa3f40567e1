import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import {
  createTestbed,
  type HostProcess,
  hostAddress,
  receiveOn,
  retransmitAt,
  sendFrom,
  sha256,
  startRetransmit,
  stop,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';
import { eventually, waitUntil } from '../helpers/wait.js';

/** A request to the repair controller made from a host of the bed, with a subscriber's token. */
const controllerCall = `
const [url, method, token, group] = process.argv.slice(1);
fetch(url, {
  method,
  headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' },
  body: JSON.stringify({ group }),
}).then(async (response) => {
  process.stdout.write(await response.text());
  process.exitCode = response.ok ? 0 : 1;
});
`;

/**
 * Flow A with a sealed S2 on the namespace test bed: the real subscription server, repair
 * controller, retransmit server, agents and applications (socat), and a departed subscriber who
 * keeps listening to S2 with the key of the grant it had.
 */
describe(
  'sealed S2: the repaired group only the entitled agent reads (flow A)',
  testbedSkip(['socat']),
  () => {
    let bed: Testbed;
    let directory: string;
    let serve: HostProcess;
    const serverUrl = `http://${hostAddress.rep}:8080`;
    const controllerUrl = `http://${hostAddress.rep}:8090`;
    const s1 = '239.56.0.1:5600';
    const pool = '239.57.0.1:5601/4';
    const s2 = '239.57.0.1:5601';
    const rogueGroup = '239.58.0.1:5602';

    const admin = async (args: string[]) => {
      const result = await bed.gatecast('rep', [
        'admin',
        '--server',
        serverUrl,
        '--token-file',
        join(directory, 'operator.token'),
        ...args,
      ]).finished;
      assert.equal(result.code, 0, `admin ${args.join(' ')}: ${result.stderr}`);
      return JSON.parse(result.stdout) as Record<string, unknown>;
    };
    const status = (host: string, port: number) =>
      JSON.parse(bed.control('status', host, `http://127.0.0.1:${port}/status`)) as Record<string, unknown>;
    const call = async (host: string, method: string, token: string) => {
      const result = await bed.spawn(host, process.execPath, [
        '-e',
        controllerCall,
        `${controllerUrl}/v1/repair`,
        method,
        token,
        s1,
      ]).finished;
      assert.equal(result.code, 0, `${method} /v1/repair from ${host}: ${result.stdout} ${result.stderr}`);
      return result.stdout;
    };
    /** True once a host's eth0 holds a membership of the group's address. */
    const joined = (host: string, group: string) =>
      execFileSync('ip', ['netns', 'exec', bed.namespace(host), 'ip', 'maddr', 'show', 'dev', 'eth0'], {
        encoding: 'utf8',
      }).includes(group.split(':')[0] ?? '');

    before(async () => {
      bed = createTestbed();
      directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-sealed-'));
      writeFileSync(join(directory, 'secret'), 'e2e operator secret for control messages\n');
      serve = bed.gatecast('rep', [
        'serve',
        '--db',
        `sqlite:${join(directory, 'sealed.db')}`,
        '--listen',
        `${hostAddress.rep}:8080`,
        '--secret-file',
        join(directory, 'secret'),
      ]);
      await serve.waitFor(/serve: .* on http/, 60_000);
      const token = /operator token \(shown once, keep it\): (gct_\S+)/.exec(serve.output())?.[1];
      assert.ok(token, 'a fresh store prints its operator token once');
      writeFileSync(join(directory, 'operator.token'), token);
    });

    afterEach(() => bed?.stopAll(serve === undefined ? [] : [serve]));

    after(async () => {
      if (serve !== undefined) {
        await stop(serve);
      }
      bed?.down();
      rmSync(directory, { recursive: true, force: true });
    });

    it('alice’s application gets the file whole across the rotation bob’s leave causes; bob’s old key, a plain receiver and a capture of S2 read no byte after it', async () => {
      const file = join(directory, 'payload.bin');
      const bytes = randomBytes(8 * 1000 * 1000);
      writeFileSync(file, bytes);
      const alice = await admin(['subscriber', 'add', 'alice']);
      const bob = await admin(['subscriber', 'add', 'bob']);
      for (const subscriber of [alice, bob]) {
        await admin(['grant', String(subscriber.id), 'repair']);
      }
      const tv = await admin(['source', 'add', 'tv']);
      await admin(['session', 'add', 'sealed news', s1, '--owner', String(tv.id)]);
      const retransmit = startRetransmit(bed, 'rt1', s1, join(directory, 'secret'));
      const controller = bed.gatecast('rep', [
        'repair',
        '--controller',
        `${hostAddress.rep}:8090`,
        '--subscription',
        serverUrl,
        '--token-file',
        join(directory, 'operator.token'),
        '--s2-pool',
        pool,
        '--listen',
        `${hostAddress.rep}:7200`,
        '--iface',
        'eth0',
        '--secret-file',
        join(directory, 'secret'),
        '--retransmit',
        retransmitAt('rt1'),
        '--reliable',
        '--journal',
        join(directory, 'controller.journal'),
        '--status',
        '127.0.0.1:9102',
      ]);
      await Promise.all([
        retransmit.waitFor(/listening on/, 30_000),
        controller.waitFor(/controller on/, 30_000),
      ]);

      // alice: her agent and her unmodified application on rx2, which keeps the raw S1 away.
      const aliceToken = join(directory, 'alice.token');
      writeFileSync(aliceToken, String(alice.token));
      bed.control('translate', 'rx2', '5600');
      const aliceAgent = bed.gatecast('rx2', [
        'agent',
        '--watch',
        '--controller',
        controllerUrl,
        '--sessions',
        s1,
        '--token-file',
        aliceToken,
        '--from-iface',
        'eth0',
        '--deliver-iface',
        'eth0',
        '--status',
        '127.0.0.1:9121',
      ]);
      await aliceAgent.waitFor(/watching group memberships/, 30_000);
      const aliceOut = join(directory, 'alice.bin');
      bed.spawn('rx2', 'socat', [
        '-u',
        'UDP4-RECV:5600,ip-add-membership=239.56.0.1:eth0,so-rcvbuf=4194304',
        `CREATE:${aliceOut}`,
      ]);
      await aliceAgent.waitFor(/delivering 239\.57\.0\.1:5601 -> 239\.56\.0\.1:5600/, 15_000);

      // bob on rx1 takes a grant, writes its key down, and keeps an agent of his own on it.
      const grant = JSON.parse(await call('rx1', 'POST', String(bob.token))) as {
        s2: string;
        key: { epoch: number; secret: string };
      };
      assert.equal(grant.s2, s2);
      assert.equal(grant.key.epoch, 1);
      const bobKey = join(directory, 'bob.s2key');
      writeFileSync(
        bobKey,
        `${grant.key.epoch}:${Buffer.from(grant.key.secret, 'base64url').toString('hex')}`,
      );
      const bobOut = join(directory, 'bob.bin');
      bed.spawn('rx1', 'socat', [
        '-u',
        `UDP4-RECV:5602,ip-add-membership=239.58.0.1:eth0`,
        `CREATE:${bobOut}`,
      ]);
      const bobAgent = bed.gatecast('rx1', [
        'agent',
        '--from',
        s2,
        '--deliver',
        rogueGroup,
        '--s2-key-file',
        bobKey,
        '--from-iface',
        'eth0',
        '--deliver-iface',
        'eth0',
        '--status',
        '127.0.0.1:9120',
      ]);
      await bobAgent.waitFor(/S2 sealed, key epoch 1/, 30_000);
      // Hosts without a grant: a raw capture of S2 on rt3, and a plain receiver on rt2.
      const capture = join(directory, 'capture.bin');
      bed.spawn('rt3', 'socat', [
        '-u',
        'UDP4-RECV:5601,ip-add-membership=239.57.0.1:eth0',
        `CREATE:${capture}`,
      ]);
      await waitUntil(
        'bob’s application and the capture joined',
        () => joined('rx1', rogueGroup) && joined('rt3', s2),
        10_000,
      );
      // Its timeout runs from the join (no datagram it cannot read counts as life): it is stopped
      // once the file is over, and says what it got.
      const plainOut = join(directory, 'plain.bin');
      const plain = receiveOn(bed, 'rt2', s2, ['--out', plainOut, '--timeout', '600', '--json']);
      await waitUntil('the plain receiver joined', () => joined('rt2', s2), 10_000);

      bed.control('loss', 'rep', '5', '5600');
      const sender = sendFrom(bed, s1, ['--file', file, '--rate', '20M']);
      const size = (path: string) => (existsSync(path) ? statSync(path).size : 0);
      await waitUntil('alice’s first megabyte', () => size(aliceOut) >= 1_000_000, 30_000);
      // bob leaves (his application left S1): the controller rotates S2's key mid-file.
      await call('rx1', 'DELETE', String(bob.token));
      const rotated = status('rep', 9102) as { s2Rotations: number };
      assert.equal(rotated.s2Rotations, 1, 'the release rotated the key');
      const bobAtRotation = status('rx1', 9120) as { delivered: number };
      assert.equal((await sender.finished).code, 0);
      await eventually(() => size(aliceOut) >= bytes.length, 30_000, 100);
      await waitUntil(
        'bob’s agent seeing the new epoch',
        () => (status('rx1', 9120) as { keyWaiting: number; keyWaitDropped: number }).keyWaiting > 0,
        10_000,
      );
      const bobFinal = status('rx1', 9120) as {
        delivered: number;
        deliveredBytes: number;
        opened: number;
        keyWaiting: number;
        keyWaitDropped: number;
      };
      const aliceStatus = status('rx2', 9121) as {
        sessions: Array<{ delivery?: { s2KeyEpoch: number; badTag: number; keyWaitDropped: number } }>;
      };
      const controllerStatus = status('rep', 9102) as {
        modules: Array<{ recovered: number; s2KeyEpoch: number }>;
      };
      const plainResult = await stop(plain);
      await stop(aliceAgent);
      await stop(bobAgent);
      await bed.stopAll([serve]);
      bed.control('clear', 'rep');

      const detail = JSON.stringify({ bobAtRotation, bobFinal, aliceStatus, controllerStatus });
      assert.equal(
        sha256(readFileSync(aliceOut)),
        sha256(bytes),
        `alice's application got the file whole: ${detail}`,
      );
      assert.ok((controllerStatus.modules[0]?.recovered ?? 0) > 0, 'the module repaired lost packets');
      assert.equal(controllerStatus.modules[0]?.s2KeyEpoch, 2);
      assert.equal(aliceStatus.sessions[0]?.delivery?.s2KeyEpoch, 2, 'alice’s agent learned the new key');
      assert.equal(aliceStatus.sessions[0]?.delivery?.keyWaitDropped, 0, 'and lost nothing waiting for it');
      // bob read only what was sealed before he left: nothing after, though S2 kept coming.
      assert.ok(bobFinal.delivered > 0, 'bob’s key worked while he held the grant');
      assert.ok(bobFinal.deliveredBytes <= bytes.length - 1_000 * 1_400, detail);
      assert.ok(
        bobFinal.keyWaiting + bobFinal.keyWaitDropped > 1_000,
        `bob could open none after: ${detail}`,
      );
      assert.ok(bobFinal.delivered - bobAtRotation.delivered < 200, `only packets in flight: ${detail}`);
      assert.ok(size(bobOut) <= bobFinal.deliveredBytes, 'bob’s application got nothing else');
      // The host without a grant: gatecast receive fails and writes nothing; the capture holds no plaintext.
      assert.notEqual(plainResult.code, 0, plainResult.stderr);
      assert.equal(size(plainOut), 0);
      const plainSummary = JSON.parse(
        plainResult.stderr.split('\n').find((line) => line.startsWith('{')) ?? '{}',
      ) as { packetsDelivered?: number; malformed?: Record<string, number> };
      assert.equal(plainSummary.packetsDelivered, 0, plainResult.stderr);
      assert.ok((plainSummary.malformed?.['unsupported-type'] ?? 0) > 1_000, plainResult.stderr);
      const wire = readFileSync(capture);
      // The capture's own socket may drop datagrams on a loaded machine: what counts is that it
      // caught most of the stream and none of it is plaintext.
      assert.ok(
        wire.length > bytes.length / 2,
        `the capture holds ${wire.length} bytes of the sealed stream`,
      );
      for (let offset = 0; offset + 16 <= bytes.length; offset += 1_400 * 13) {
        assert.equal(wire.includes(bytes.subarray(offset, offset + 16)), false, `plaintext at ${offset}`);
      }
    });
  },
);
