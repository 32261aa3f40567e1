import assert from 'node:assert/strict';
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
  sleep,
  startRepair,
  startRetransmit,
  stop,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';
import { eventually } from '../helpers/wait.js';

/**
 * Flows A and B on the namespace test bed, with the real subscription server (`gatecast serve` on
 * rep, SQLite), the real repair service and `gatecast admin` as the operator's and source's tool.
 */
describe('buying repair: flows A and B on the namespace test bed', testbedSkip(['socat']), () => {
  let bed: Testbed;
  let directory: string;
  let serve: HostProcess;
  let file: string;
  let fileSha: string;
  const secret = () => join(directory, 'secret');
  const operatorTokenFile = () => join(directory, 'operator.token');
  const serverUrl = `http://${hostAddress.rep}:8080`;

  /** Runs `gatecast admin` on rep against the server with a token file; returns the JSON answer. */
  const admin = async (tokenFile: string, args: string[]) => {
    const result = await bed.gatecast('rep', [
      'admin',
      '--server',
      serverUrl,
      '--token-file',
      tokenFile,
      ...args,
    ]).finished;
    assert.equal(result.code, 0, `admin ${args.join(' ')}: ${result.stderr}`);
    return result.stdout.startsWith('id,')
      ? result.stdout
      : (JSON.parse(result.stdout) as Record<string, unknown>);
  };
  const tokenFileFor = (name: string, created: Record<string, unknown>) => {
    const path = join(directory, `${name}.token`);
    writeFileSync(path, String(created.token));
    return path;
  };
  const status = (host: string, port: number) =>
    JSON.parse(bed.control('status', host, `http://127.0.0.1:${port}/status`)) as Record<string, unknown>;

  before(async () => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-flows-'));
    writeFileSync(secret(), 'e2e operator secret for control messages\n');
    file = join(directory, 'payload.bin');
    const bytes = randomBytes(8 * 1000 * 1000);
    writeFileSync(file, bytes);
    fileSha = sha256(bytes);
    serve = bed.gatecast('rep', [
      'serve',
      '--db',
      `sqlite:${join(directory, 'flows.db')}`,
      '--listen',
      `${hostAddress.rep}:8080`,
      '--secret-file',
      secret(),
    ]);
    await serve.waitFor(/serve: .* on http/, 20_000);
    const token = /operator token \(shown once, keep it\): (gct_\S+)/.exec(serve.output())?.[1];
    assert.ok(token, 'a fresh store prints its operator token once');
    writeFileSync(operatorTokenFile(), token);
  });

  // A failed test must not leave its servers holding their ports for the next one; serve stays.
  afterEach(() => bed?.stopAll(serve === undefined ? [] : [serve]));

  after(async () => {
    if (serve !== undefined) {
      await stop(serve);
    }
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  for (const [family, s1, s2, port, senderAddress] of [
    ['IPv4', '239.50.0.1:5300', '239.50.0.2:5301', '5300', hostAddress.src ?? ''],
    ['IPv6', '[ff3e::50]:5310', '[ff3e::51]:5311', '5310', 'fd00:200:1::10'],
  ] as const) {
    it(`flow B over ${family}: a source registers S1 and buys repair; SETUP makes the registered retransmit servers join; the end tears them down and charges the source`, async () => {
      const retransmits = ['rt1', 'rt2'].map((host, i) =>
        startRetransmit(bed, host, undefined, secret(), ['--status', `127.0.0.1:${9110 + i}`]),
      );
      await Promise.all(retransmits.map((r) => r.waitFor(/listening on/)));
      for (const host of ['rt1', 'rt2']) {
        await admin(operatorTokenFile(), ['server', 'add', 'retransmit', host, retransmitAt(host)]);
      }
      // Names are unique per kind: one source per family.
      const source = (await admin(operatorTokenFile(), ['source', 'add', `news ${family}`])) as Record<
        string,
        unknown
      >;
      const sourceToken = tokenFileFor('source', source);
      const repair = startRepair(bed, 'rep', {
        s1,
        emit: s2,
        secret: secret(),
        retransmit: [retransmitAt('rt1'), retransmitAt('rt2')],
        mode: ['--reliable', '--source', senderAddress, '--status', '127.0.0.1:9100'],
      });
      const output = join(directory, 'flow-b.bin');
      const receiver = receiveOn(bed, 'rx1', s2, ['--out', output, '--timeout', '20']);
      await Promise.all([repair.waitFor(/listening on/), receiver.waitFor(/joined/)]);
      bed.control('loss', 'rep', '5', port);
      // The source registers S1 with the subscription server and buys repair as it starts sending;
      // the registered retransmit servers join on SETUP before the first packet.
      const sender = sendFrom(bed, s1, [
        '--file',
        file,
        '--rate',
        '60M',
        '--subscription',
        serverUrl,
        '--token-file',
        sourceToken,
        '--buy-repair',
        '--source-address',
        senderAddress,
      ]);
      await sender.waitFor(/repair bought: 2 retransmit server\(s\) set up/);
      // SETUP is a datagram: wait until both servers show they joined S1 (bounded), not a fixed
      // time. Joined means S1 in their sessions, or S1's packets already buffered (on a loaded
      // machine the session may be over, and left, before the first look).
      const joinedS1 = (i: number) => {
        const s = status(['rt1', 'rt2'][i] ?? '', 9110 + i) as {
          sessions: Array<{ group: string }>;
          packetsIn: number;
        };
        return s.sessions.map((x) => x.group).join() === s1 || s.packetsIn > 0;
      };
      const joined = await eventually(() => joinedS1(0) && joinedS1(1), 10_000, 50);
      assert.ok(
        joined,
        `rt1 and rt2 joined S1 on SETUP: ${JSON.stringify([status('rt1', 9110), status('rt2', 9111)])}`,
      );
      const sent = await sender.finished;
      assert.equal(sent.code, 0, sent.stderr);
      const ended = /session (\S+) ended, repair charged (\d+)/.exec(sent.stderr);
      assert.ok(ended, `the session is ended and charged after END: ${sent.stderr}`);
      const received = await receiver.finished;
      const repairStatus = status('rep', 9100) as { recovered: number; gaps: number };
      bed.control('clear', 'rep');
      assert.equal(received.code, 0, received.stderr);
      assert.equal(sha256(readFileSync(output)), fileSha, 'S2 is whole');
      assert.ok(repairStatus.recovered > 0, 'packets were lost and fetched back');
      const served = ['rt1', 'rt2']
        .map((host, i) => (status(host, 9110 + i) as { repairsSent: number }).repairsSent)
        .reduce((a, b) => a + b, 0);
      assert.ok(served > 0, 'the retransmit servers that joined on SETUP answered the repairs');
      await stop(repair);
      for (const [i, host] of ['rt1', 'rt2'].entries()) {
        const left = await eventually(
          () => (status(host, 9110 + i).sessions as unknown[]).length === 0,
          10_000,
          50,
        );
        assert.ok(left, `${host} left S1 at the session's end: ${JSON.stringify(status(host, 9110 + i))}`);
      }
      const charged = Number(ended[2]);
      assert.ok(charged >= 1);
      const balance = (await admin(sourceToken, ['balance', String(source.id)])) as { balance: number };
      assert.equal(balance.balance, -charged, 'the source is charged');
      const csv = String(await admin(operatorTokenFile(), ['export']));
      assert.equal(csv.split('\n').filter((line) => line.includes(`session-end/${ended[1]}`)).length, 1);
      const sessions = (await admin(sourceToken, ['sessions'])) as unknown as Array<{
        state: string;
        repair: boolean;
      }>;
      assert.deepEqual(
        sessions.map((x) => [x.state, x.repair]),
        [['ended', true]],
        'the source sees its one session, ended',
      );
      for (const retransmit of retransmits) {
        await stop(retransmit);
      }
    });
  }

  for (const [family, s1, pool, port, app, delivering] of [
    [
      'IPv4',
      '239.51.0.1:5400',
      '239.52.0.1:5401/16',
      '5400',
      'UDP4-RECV:5400,ip-add-membership=239.51.0.1:eth0,so-rcvbuf=4194304',
      /joined on eth0: delivering 239\.52\.0\.1:5401 -> 239\.51\.0\.1:5400/,
    ],
    [
      'IPv6',
      '[ff3e::61]:5410',
      '[ff3e::70]:5411/16',
      '5410',
      'UDP6-RECV:5410,ipv6-join-group=[ff3e::61]:eth0,so-rcvbuf=4194304',
      /joined on eth0: delivering \[ff3e::70\]:5411 -> \[ff3e::61\]:5410/,
    ],
  ] as const) {
    it(`flow A over ${family}: an entitled subscriber’s application gets the repaired session through the agent; an unentitled one is refused and keeps plain S1; repair usage is charged`, async () => {
      // Names are unique per kind: one alice and one bob per family.
      const alice = (await admin(operatorTokenFile(), ['subscriber', 'add', `alice ${family}`])) as Record<
        string,
        unknown
      >;
      const bob = (await admin(operatorTokenFile(), ['subscriber', 'add', `bob ${family}`])) as Record<
        string,
        unknown
      >;
      await admin(operatorTokenFile(), ['grant', String(alice.id), 'repair']);
      // The controller grants repair only for an S1 a source registered and has not ended.
      const tv = (await admin(operatorTokenFile(), ['source', 'add', `tv ${family}`])) as Record<
        string,
        unknown
      >;
      const registered = (await admin(operatorTokenFile(), [
        'session',
        'add',
        `flow A ${family}`,
        s1,
        '--owner',
        String(tv.id),
      ])) as Record<string, unknown>;
      const retransmit = startRetransmit(bed, 'rt1', s1, secret());
      const controller = bed.gatecast('rep', [
        'repair',
        '--controller',
        `${hostAddress.rep}:8090`,
        '--subscription',
        serverUrl,
        '--token-file',
        operatorTokenFile(),
        '--s2-pool',
        pool,
        '--listen',
        `${hostAddress.rep}:7200`,
        '--iface',
        'eth0',
        '--secret-file',
        secret(),
        '--retransmit',
        retransmitAt('rt1'),
        '--reliable',
        '--report-interval',
        '1',
        '--journal',
        join(directory, `controller-${family}.journal`),
        '--status',
        '127.0.0.1:9102',
      ]);
      await Promise.all([retransmit.waitFor(/listening on/), controller.waitFor(/controller on/)]);
      bed.control('translate', 'rx2', port);
      const agents = [
        ['rx2', tokenFileFor('alice', alice)],
        ['rx1', tokenFileFor('bob', bob)],
      ].map(([host, tokenFile]) =>
        bed.gatecast(host ?? '', [
          'agent',
          '--watch',
          '--controller',
          `http://${hostAddress.rep}:8090`,
          '--sessions',
          s1,
          '--token-file',
          tokenFile ?? '',
          '--from-iface',
          'eth0',
          '--deliver-iface',
          'eth0',
        ]),
      ) as [HostProcess, HostProcess];
      await Promise.all(agents.map((agent) => agent.waitFor(/watching group memberships/)));
      const outputs = ['rx2', 'rx1'].map((host) => join(directory, `flow-a-${host}.bin`));
      const apps = ['rx2', 'rx1'].map((host, i) =>
        bed.spawn(host, 'socat', ['-u', app, `CREATE:${outputs[i]}`]),
      );
      await agents[0].waitFor(delivering);
      await agents[1].waitFor(/refused: 403 no repair entitlement; the application keeps the plain S1/);
      await sleep(300);
      bed.control('loss', 'rep', '5', port);
      const sender = sendFrom(bed, s1, ['--file', file, '--rate', '60M']);
      assert.equal((await sender.finished).code, 0);
      const size = statSync(file).size;
      for (
        let i = 0;
        i < 100 && (!existsSync(outputs[0] ?? '') || statSync(outputs[0] ?? '').size < size);
        i++
      ) {
        await sleep(200);
      }
      const controllerStatus = status('rep', 9102) as {
        modules: Array<{ s1: string; recovered: number; subscribers: number }>;
      };
      bed.control('clear', 'rep');
      await sleep(2_500); // a report interval or two
      const finalStatus = status('rep', 9102) as { usageBytesReported: number; refusals: number };
      for (const app of apps) {
        await stop(app);
      }
      const agentLogs = [];
      for (const agent of agents) {
        agentLogs.push((await stop(agent)).stderr);
      }
      await stop(controller);
      await admin(operatorTokenFile(), ['session', 'end', String(registered.id)]);
      await stop(retransmit);

      assert.equal(
        sha256(readFileSync(outputs[0] ?? '')),
        fileSha,
        `alice's application got S1 whole: ${agentLogs[0]}`,
      );
      assert.equal(controllerStatus.modules.length, 1);
      assert.equal(controllerStatus.modules[0]?.subscribers, 1, 'one subscriber attached: alice');
      assert.ok((controllerStatus.modules[0]?.recovered ?? 0) > 0, 'the module repaired lost packets');
      assert.doesNotMatch(agentLogs[1] ?? '', /delivering/, 'bob’s agent delivered nothing');
      assert.ok(statSync(outputs[1] ?? '').size > 0, 'bob’s application kept the plain S1');
      assert.ok(finalStatus.usageBytesReported > 0);
      const aliceBalance = (await admin(operatorTokenFile(), ['balance', String(alice.id)])) as {
        balance: number;
      };
      const bobBalance = (await admin(operatorTokenFile(), ['balance', String(bob.id)])) as {
        balance: number;
      };
      assert.ok(aliceBalance.balance < 0, 'alice is charged for repair');
      assert.equal(bobBalance.balance, 0, 'bob is not');
      const csv = String(await admin(operatorTokenFile(), ['export']));
      assert.ok(
        csv.split('\n').some((line) => line.includes(String(alice.id)) && line.includes('repair-bytes')),
        'the repair usage is in the ledger',
      );
    });
  }
});
