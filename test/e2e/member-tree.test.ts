import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { runGatecast as run } from '../helpers/cli.js';
import { createNewsBed, sendNews, startRetransmitAndRepair } from '../helpers/news-bed.js';
import { type SoftHsm, softhsmMissing } from '../helpers/softhsm.js';
import {
  type HostProcess,
  hostAddress,
  receiveOn,
  sha256,
  stop,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';
import { waitForBytes, waitUntil } from '../helpers/wait.js';

function skip(): { skip?: string } {
  const bed = testbedSkip();
  if (bed.skip !== undefined) {
    return bed;
  }
  const hsm = softhsmMissing('the member tree end-to-end test');
  return hsm === undefined ? {} : { skip: hsm };
}

describe(
  'rekey on leave across the routed test bed: a revoked subscriber stops decoding, the others lose nothing',
  skip(),
  () => {
    let bed: Testbed;
    let hsm: SoftHsm;
    let serve: HostProcess;
    let directory: string;
    const serverUrl = `http://${hostAddress.rep}:8080`;
    const keys = () => join(directory, 'keys');
    const tokens = { ann: 'pkcs11:ann-card', ben: '', cat: '' };
    const subscribers: Record<string, string> = {};
    const entitlements: Record<string, string> = {};

    /** `gatecast admin` on rep with the operator's token; its JSON answer. */
    const admin = async (args: string[]) => {
      const result = await bed.gatecast('rep', [
        'admin',
        '--server',
        serverUrl,
        '--token-file',
        join(directory, 'operator.api'),
        ...args,
      ]).finished;
      assert.equal(result.code, 0, `admin ${args.join(' ')}: ${result.stderr}`);
      return JSON.parse(result.stdout) as Record<string, unknown>;
    };

    before(async () => {
      ({ directory, hsm, bed } = await createNewsBed('gatecast-member-tree-e2e-', 'ann-card', '24682468'));
      tokens.ben = join(directory, 'ben.token');
      tokens.cat = join(directory, 'cat.token');
      writeFileSync(
        join(directory, 'products.json'),
        JSON.stringify([
          { name: 'news', serviceKeyFile: 'keys/news.key', sourcePublic: 'keys/source.pub', treeDepth: 4 },
        ]),
      );
      serve = bed.gatecast('rep', [
        'serve',
        '--db',
        `sqlite:${join(directory, 'trees.db')}`,
        '--listen',
        `${hostAddress.rep}:8080`,
        '--root-key',
        join(keys(), 'root.pem'),
        '--products',
        join(directory, 'products.json'),
      ]);
      await serve.waitFor(/serve: .* on http/, 20_000);
      const operator = /operator token \(shown once, keep it\): (gct_\S+)/.exec(serve.output())?.[1];
      assert.ok(operator, 'a fresh store prints its operator token once');
      writeFileSync(join(directory, 'operator.api'), operator);
      const studio = await admin(['source', 'add', 'studio']);
      writeFileSync(join(directory, 'studio.api'), String(studio.token));
      for (const who of ['ann', 'ben', 'cat'] as const) {
        const created = await admin(['subscriber', 'add', who]);
        subscribers[who] = String(created.id);
        writeFileSync(join(directory, `${who}.api`), String(created.token));
        const granted = await admin(['grant', String(created.id), 'channel', '--session', 'news']);
        entitlements[who] = String(granted.id);
        const init = await run([
          'token',
          'init',
          '--token',
          tokens[who],
          '--root-public',
          join(keys(), 'root.pub'),
        ]);
        assert.equal(init.code, 0, init.stderr);
        const enrolled = await bed.gatecast('rep', [
          'token',
          'enroll',
          '--token',
          tokens[who],
          '--subscription',
          serverUrl,
          '--token-file',
          join(directory, `${who}.api`),
        ]).finished;
        assert.equal(enrolled.code, 0, enrolled.stderr);
        assert.match(enrolled.stdout, /member of news's key tree \d+ \(slot \d+, tree epoch 0\)/);
      }
    });

    afterEach(() => bed?.stopAll(serve === undefined ? [] : [serve]));

    after(async () => {
      if (serve !== undefined) {
        await stop(serve);
      }
      bed?.down();
      hsm?.remove();
      rmSync(directory, { recursive: true, force: true });
    });

    /** The source's restricted send of `file` onto `group`, following news's key tree as studio. */
    const sendSubscribedNews = (group: string, file: string) =>
      sendNews(bed, group, {
        file,
        keys: keys(),
        rate: '2M',
        extra: [
          '--crypto-period',
          '2',
          '--subscription',
          serverUrl,
          '--token-file',
          join(directory, 'studio.api'),
        ],
      });

    /** A new subscriber entitled to news, its software token enrolled: its tree slot and entitlement. */
    const enrollNew = async (who: string) => {
      const created = await admin(['subscriber', 'add', who]);
      writeFileSync(join(directory, `${who}.api`), String(created.token));
      const granted = await admin(['grant', String(created.id), 'channel', '--session', 'news']);
      const token = join(directory, `${who}.token`);
      const init = await run(['token', 'init', '--token', token, '--root-public', join(keys(), 'root.pub')]);
      assert.equal(init.code, 0, init.stderr);
      const enrolled = await bed.gatecast('rep', [
        'token',
        'enroll',
        '--token',
        token,
        '--subscription',
        serverUrl,
        '--token-file',
        join(directory, `${who}.api`),
      ]).finished;
      assert.equal(enrolled.code, 0, enrolled.stderr);
      return { token, entitlement: String(granted.id) };
    };

    it('cat is revoked mid-stream: ann (SoftHSM2) and ben receive the file whole, cat stops within the next crypto-periods and says why', async () => {
      const fileBytes = randomBytes(4 * 1000 * 1000);
      const file = join(directory, 'film.bin');
      writeFileSync(file, fileBytes);
      const group = '239.10.0.14:5014';
      const out = (who: string) => join(directory, `${who}.out`);
      const receivers = {
        ann: receiveOn(bed, 'rx1', group, ['--out', out('ann'), '--timeout', '50', '--token', tokens.ann]),
        ben: receiveOn(bed, 'rx2', group, ['--out', out('ben'), '--timeout', '50', '--token', tokens.ben]),
        cat: receiveOn(bed, 'rt1', group, ['--out', out('cat'), '--timeout', '50', '--token', tokens.cat]),
      };
      await Promise.all(Object.values(receivers).map((receiver) => receiver.waitFor(/joined/)));
      // 4 MB at 2 Mbit/s: about 16 s of stream, 2 s crypto-periods.
      const sender = sendSubscribedNews(group, file);
      await sender.waitFor(/key tree of news at epoch 0, 3 member\(s\)/, 20_000);
      // cat has decoded a tenth of the file: then the operator revokes its entitlement.
      await waitForBytes("cat's first 300 kB", out('cat'), 300_000, 20_000);
      const revoked = await admin(['revoke', entitlements.cat as string]);
      assert.deepEqual(
        (revoked.removed as Array<{ epoch: number }>).map((entry) => entry.epoch),
        [1],
        JSON.stringify(revoked),
      );
      const decodedAtRevoke = statSync(out('cat')).size;
      await sender.waitFor(/key tree of news at epoch 1, 2 member\(s\)/, 10_000);

      const sent = await sender.finished;
      assert.equal(sent.code, 0, sent.stderr);
      for (const who of ['ann', 'ben'] as const) {
        const finished = await receivers[who].finished;
        assert.equal(finished.code, 0, `${who}: ${finished.stderr}`);
        assert.match(finished.stderr, /received session "film.bin" whole: .*SHA-256 ok/);
        assert.equal(sha256(readFileSync(out(who))), sha256(fileBytes), `${who} decoded every byte`);
      }
      const cat = await receivers.cat.finished;
      assert.equal(cat.code, 2, cat.stderr);
      assert.match(
        cat.stderr,
        /gatecast receive: removed from news's members \(key tree epoch 1\): the entitlement ended or was revoked/,
      );
      const catBytes = readFileSync(out('cat'));
      assert.ok(catBytes.equals(fileBytes.subarray(0, catBytes.length)), 'what cat decoded before is intact');
      // The source asks for the tree every second and switches at the next period (or the one
      // after, 2 s each): at most about 5 s of stream (1.25 MB at 2 Mbit/s) after the revoke, with
      // 3 s more for a loaded machine; a cat never removed would decode about 3.5 MB after it.
      assert.ok(
        catBytes.length - decodedAtRevoke <= 2_000_000,
        `cat decoded ${catBytes.length - decodedAtRevoke} bytes after the revoke`,
      );
      assert.ok(catBytes.length < fileBytes.length);

      const shown = await run(['token', 'show', '--token', tokens.cat, '--json']);
      assert.equal(shown.code, 0, shown.stderr);
      assert.equal(JSON.parse(shown.stdout).memberships[0].removedAt, 1);
      const annShown = await run(['token', 'show', '--token', tokens.ann, '--json']);
      assert.deepEqual(
        JSON.parse(annShown.stdout).memberships.map((m: { treeEpoch: number; removedAt: null }) => [
          m.treeEpoch,
          m.removedAt,
        ]),
        [[1, null]],
        'the PKCS#11 token applied the rekey inside itself and kept it',
      );
    });

    it('through a repair server and agents: eve, revoked mid-stream, gets nothing to her application after the next crypto-periods; dan loses nothing', async () => {
      const dan = await enrollNew('dan');
      const eve = await enrollNew('eve');
      const fileBytes = randomBytes(3 * 1000 * 1000);
      const file = join(directory, 'agents.bin');
      writeFileSync(file, fileBytes);
      const s1 = '239.10.0.16:5016';
      const s2 = '239.10.0.17:5018';
      await startRetransmitAndRepair(bed, {
        s1,
        s2,
        secret: join(directory, 'secret'),
        secretText: 'e2e operator secret for the member tree agents\n',
      });
      // Each subscriber's agent takes S2 and hands the opened payloads to an application (socat)
      // on a group of its own host.
      const apps = { dan: ['rx2', '239.59.0.1', '5701'], eve: ['rt2', '239.59.0.2', '5702'] } as const;
      const out = (who: string) => join(directory, `${who}.app`);
      const agents: Record<string, HostProcess> = {};
      for (const [who, token] of [
        ['dan', dan.token],
        ['eve', eve.token],
      ] as const) {
        const [host, group, port] = apps[who];
        bed.spawn(host, 'socat', [
          '-u',
          `UDP4-RECV:${port},ip-add-membership=${group}:eth0,so-rcvbuf=4194304`,
          `CREATE:${out(who)}`,
        ]);
        agents[who] = bed.gatecast(host, [
          'agent',
          '--from',
          s2,
          '--from-iface',
          'eth0',
          '--deliver',
          `${group}:${port}`,
          '--deliver-iface',
          'eth0',
          '--token',
          token,
        ]);
      }
      await Promise.all(Object.values(agents).map((agent) => agent.waitFor(/local delivery/, 30_000)));
      const sender = sendSubscribedNews(s1, file);
      // cat left in the test before: ann, ben, dan and eve are the members at tree epoch 1.
      await sender.waitFor(/key tree of news at epoch 1, 4 member\(s\)/, 20_000);
      await waitForBytes("eve's application's first 300 kB", out('eve'), 300_000, 20_000);
      const revoked = await admin(['revoke', eve.entitlement]);
      assert.deepEqual(
        (revoked.removed as Array<{ epoch: number }>).map((entry) => entry.epoch),
        [2],
        JSON.stringify(revoked),
      );
      const deliveredAtRevoke = statSync(out('eve')).size;
      await sender.waitFor(/key tree of news at epoch 2, 3 member\(s\)/, 10_000);
      const sent = await sender.finished;
      assert.equal(sent.code, 0, sent.stderr);
      await waitUntil(
        "dan's application holding the whole file",
        () => statSync(out('dan')).size >= fileBytes.length,
        30_000,
      );
      assert.equal(sha256(readFileSync(out('dan'))), sha256(fileBytes), 'dan got every byte, in order');
      await agents.eve?.waitFor(
        /restricted session .*removed from news's members \(key tree epoch 2\).*nothing delivered/,
        15_000,
      );
      const eveBytes = readFileSync(out('eve'));
      assert.ok(eveBytes.equals(fileBytes.subarray(0, eveBytes.length)), 'what eve got before is intact');
      // As for cat: at most about 5 s of stream (1.25 MB at 2 Mbit/s) after the revoke, and 3 s more
      // for a loaded machine and the repair server's latency.
      assert.ok(
        eveBytes.length - deliveredAtRevoke <= 2_000_000,
        `eve's application got ${eveBytes.length - deliveredAtRevoke} bytes after the revoke`,
      );
      assert.ok(eveBytes.length < fileBytes.length);
      const shown = await run(['token', 'show', '--token', eve.token, '--json']);
      assert.equal(JSON.parse(shown.stdout).memberships[0].removedAt, 2);
    });
  },
);
