import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  createTestbed,
  fourRepairHosts,
  type HostProcess,
  receiveOn,
  repoRoot,
  retransmitAt,
  sendFrom,
  sha256,
  sleep,
  startFourRepairServers,
  startRepair,
  startRepairPair,
  startRetransmit,
  stop,
  type Testbed,
  testbedSkip,
} from '../helpers/testbed.js';
import { eventually } from '../helpers/wait.js';

/**
 * Source -> router (smcrouted) -> edge subnet with two retransmit servers (rt1, rt2; no loss), the
 * repair server (rep; loss injected on its S1 input with nftables), a receiver on S2 (rx1) and a
 * plain UDP application behind the agent (rx2).
 */
describe('repair service on the namespace test bed', testbedSkip(['socat']), () => {
  let bed: Testbed;
  let directory: string;
  let file: string;
  let fileSha: string;
  const secret = () => join(directory, 'secret');
  let port = 5100;

  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-repair-'));
    writeFileSync(secret(), 'e2e operator secret for control messages\n');
    file = join(directory, 'payload.bin');
    const bytes = randomBytes(20 * 1000 * 1000);
    writeFileSync(file, bytes);
    fileSha = sha256(bytes);
  });

  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  /** Runs one repaired transfer; lose() injects loss on the repair server's S1 path meanwhile. */
  async function transfer(options: {
    lose: (s1Port: number) => Promise<void>;
    killFirst?: boolean;
    /** How long the receiver of S2 waits (seconds); repairing a heavy burst takes longer. */
    timeoutSeconds?: number;
    /** More arguments for send (e.g. --first-sequence, so that loss can be set by sequence). */
    sendArgs?: string[];
    /** Injects the loss before the source starts (rules by sequence), not while it sends. */
    loseBeforeSend?: boolean;
  }) {
    port += 10;
    const s1 = `239.30.0.1:${port}`;
    const s2 = `239.30.0.2:${port + 1}`;
    const retransmits = ['rt1', 'rt2'].map((host) =>
      startRetransmit(bed, host, s1, secret(), [
        '--announce-to',
        '10.200.2.31:7100',
        '--status',
        '127.0.0.1:9101',
      ]),
    );
    const repair = startRepair(bed, 'rep', {
      s1,
      emit: s2,
      secret: secret(),
      retransmit: [retransmitAt('rt1'), retransmitAt('rt2')],
      mode: ['--reliable', '--status', '127.0.0.1:9100'],
    });
    const output = join(directory, `s2-${port}.bin`);
    const receiver = receiveOn(bed, 'rx1', s2, [
      '--out',
      output,
      '--timeout',
      String(options.timeoutSeconds ?? 20),
    ]);
    const appOutput = join(directory, `app-${port}.bin`);
    bed.control('translate', 'rx2', String(port));
    // The agent watches rx2's group memberships: it starts when the application joins S1.
    const agent = bed.gatecast('rx2', [
      'agent',
      '--watch',
      '--map',
      `${s1}=${s2}`,
      '--from-iface',
      'eth0',
      '--deliver-iface',
      'eth0',
    ]);
    await Promise.all([
      ...retransmits.map((r) => r.waitFor(/listening on/)),
      repair.waitFor(/listening on/),
      receiver.waitFor(/joined/),
      agent.waitFor(/watching group memberships/),
    ]);
    const app = bed.spawn('rx2', 'socat', [
      '-u',
      `UDP4-RECV:${port},ip-add-membership=239.30.0.1:eth0,so-rcvbuf=4194304`,
      `CREATE:${appOutput}`,
    ]);
    await agent.waitFor(/joined on eth0: delivering/);
    await sleep(300);
    if (options.loseBeforeSend === true) {
      await options.lose(port);
    }
    const sender = sendFrom(bed, s1, ['--file', file, '--rate', '60M', ...(options.sendArgs ?? [])]);
    if (options.killFirst) {
      await sleep(600);
      (retransmits[0] as HostProcess).child.kill('SIGKILL');
    }
    if (options.loseBeforeSend !== true) {
      await options.lose(port);
    }
    const sent = await sender.finished;
    assert.equal(sent.code, 0, sent.stderr);
    const received = await receiver.finished;
    const status = JSON.parse(bed.control('status', 'rep', 'http://127.0.0.1:9100/status')) as Record<
      string,
      number
    >;
    // What the retransmit servers answered (shown when the transfer is not whole).
    const retransmitStatus = ['rt1', 'rt2']
      .map((host) => {
        try {
          const all = JSON.parse(bed.control('status', host, 'http://127.0.0.1:9101/status')) as Record<
            string,
            unknown
          >;
          const { sessions: _sessions, socketBuffers: _buffers, ...rest } = all;
          return `${host}: ${JSON.stringify(rest)}`;
        } catch {
          return `${host}: no status (killed)`;
        }
      })
      .join('\n');
    await sleep(300);
    const dropped = Number(bed.control('dropped', 'rep') || 0);
    bed.control('clear', 'rep');
    const rawDropped = Number(bed.control('translated', 'rx2') || 0);
    const agentLog = (await stop(agent)).stderr;
    await stop(app);
    await stop(repair);
    for (const retransmit of retransmits) {
      await stop(retransmit);
    }
    return { received, output, appOutput, status, dropped, agentLog, rawDropped, retransmitStatus };
  }

  const check = (result: Awaited<ReturnType<typeof transfer>>) => {
    assert.equal(
      result.received.code,
      0,
      `${result.received.stderr}\n${JSON.stringify(result.status)}\n${result.retransmitStatus}`,
    );
    assert.equal(sha256(readFileSync(result.output)), fileSha);
    const app = readFileSync(result.appOutput);
    assert.equal(
      sha256(app),
      fileSha,
      `the application behind the agent got ${app.length} bytes; ${result.agentLog}`,
    );
    assert.equal(result.status.unrecoverable, 0);
    assert.ok(result.rawDropped >= 14286, `raw S1 kept from the application: ${result.rawDropped}`);
    // Every gap is accounted for once: brought by a REPAIR (billed), or late on S1 after all (not
    // billed) — a run quiet on S1 while its packets still wait in a busy host's socket has its tail
    // asked for, and some of those come directly in the end.
    assert.equal(
      (result.status.recovered ?? 0) + (result.status.lateDirect ?? 0),
      result.status.gaps,
      JSON.stringify(result.status),
    );
  };

  for (const percent of [1, 5, 10]) {
    it(`${percent} % random loss on S1: the 20 MB file arrives whole on S2 and through the agent`, async () => {
      const result = await transfer({
        lose: async (s1Port) => {
          bed.control('loss', 'rep', String(percent), String(s1Port));
        },
      });
      check(result);
      assert.ok(
        (result.status.gaps ?? 0) >= result.dropped * 0.5,
        `gaps ${result.status.gaps}, nftables dropped ${result.dropped}`,
      );
      assert.ok(result.dropped > 14286 * (percent / 100) * 0.5);
    });
  }

  it('burst loss (eight stretches of the session dropped on S1): whole', async () => {
    // Bursts by sequence, not by time: a drop rule switched on and off on a timer dropped nothing
    // on a loaded host (the source could finish before the first switch), or half the session.
    const bursts = Array.from({ length: 8 }, (_, i) => [1000 + i * 1500, 1000 + i * 1500 + 20 * (i + 1) - 1]);
    const result = await transfer({
      lose: async (s1Port) => {
        for (const [first, last] of bursts) {
          bed.control('drop', 'rep', 'on', `${s1Port}/data/${first}-${last}`);
        }
      },
      sendArgs: ['--first-sequence', '0'],
      loseBeforeSend: true,
      timeoutSeconds: 60,
    });
    check(result);
    assert.equal(
      result.dropped,
      bursts.reduce((sum, [first = 0, last = 0]) => sum + last - first + 1, 0),
      'nftables dropped every packet of the eight bursts',
    );
  });

  it('the preferred retransmit server is killed mid-session: still whole', async () => {
    const result = await transfer({
      killFirst: true,
      lose: async (s1Port) => {
        bed.control('loss', 'rep', '5', String(s1Port));
      },
    });
    check(result);
  });
});

describe(
  'a live MPEG-TS stream from ffmpeg, relayed, lost, repaired and delivered to ffmpeg by the agent',
  testbedSkip(['ffmpeg', 'ffprobe']),
  () => {
    let bed: Testbed;
    let directory: string;
    before(() => {
      bed = createTestbed();
      directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-live-'));
      writeFileSync(join(directory, 'secret'), 'e2e operator secret for the live test\n');
    });
    after(() => {
      bed?.down();
      rmSync(directory, { recursive: true, force: true });
    });

    it('ffmpeg reading S1 on the agent host decodes every frame, no continuity errors', async () => {
      const s1 = '239.31.0.1:5400';
      const s2 = '239.31.0.2:5402';
      const secret = join(directory, 'secret');
      const { retransmit, repair } = startRepairPair(bed, {
        s1,
        s2,
        secret,
        mode: ['--latency', '200', '--status', '127.0.0.1:9100'],
      });
      bed.control('translate', 'rx2', '5400');
      const agent = bed.gatecast('rx2', [
        'agent',
        '--from',
        s2,
        '--from-iface',
        'eth0',
        '--deliver',
        s1,
        '--deliver-iface',
        'eth0',
      ]);
      await Promise.all([
        retransmit.waitFor(/listening on/),
        repair.waitFor(/listening on/),
        agent.waitFor(/local delivery/),
      ]);
      const captured = join(directory, 'captured.ts');
      const reader = bed.spawn('rx2', 'ffmpeg', [
        '-hide_banner',
        '-loglevel',
        'error',
        '-i',
        'udp://239.31.0.1:5400?localaddr=10.200.2.12&buffer_size=4194304&fifo_size=100000&timeout=10000000',
        '-c',
        'copy',
        '-frames:v',
        '100',
        '-f',
        'mpegts',
        captured,
      ]);
      const relay = sendFrom(bed, s1, ['--relay', '127.0.0.1:6100']);
      await sleep(1500);
      bed.control('loss', 'rep', '5', '5400');
      const ffmpeg = bed.spawn('src', 'ffmpeg', [
        '-hide_banner',
        '-loglevel',
        'error',
        '-re',
        '-f',
        'lavfi',
        '-i',
        'testsrc=size=320x240:rate=25',
        '-t',
        '4',
        '-c:v',
        'mpeg2video',
        '-f',
        'mpegts',
        'udp://127.0.0.1:6100?pkt_size=1316',
      ]);
      assert.equal((await ffmpeg.finished).code, 0);
      await sleep(700);
      relay.child.kill('SIGTERM');
      await relay.finished;
      const read = await reader.finished;
      const status = JSON.parse(bed.control('status', 'rep', 'http://127.0.0.1:9100/status')) as Record<
        string,
        number
      >;
      const dropped = Number(bed.control('dropped', 'rep') || 0);
      const rawDropped = Number(bed.control('translated', 'rx2') || 0);
      const agentLog = (await stop(agent)).stderr;
      await stop(repair);
      await stop(retransmit);
      assert.ok(rawDropped > 100, `the raw S1 was not kept from the application (${rawDropped})`);
      assert.match(agentLog, /delivered [1-9]\d* /);
      assert.ok(dropped > 0, 'nftables dropped nothing on the repair server');
      assert.equal(status.unrecoverable, 0, JSON.stringify(status));
      assert.equal(read.stderr.trim(), '', read.stderr);
      const probe = bed.spawn('rx2', 'ffprobe', [
        '-v',
        'error',
        '-count_frames',
        '-select_streams',
        'v:0',
        '-show_entries',
        'stream=nb_read_frames',
        '-of',
        'csv=p=0',
        captured,
      ]);
      const probed = await probe.finished;
      assert.equal(probed.stderr.trim(), '', probed.stderr);
      assert.equal(/^(\d+)/.exec(probed.stdout.trim())?.[1], '100');
    });
  },
);

describe('four repair servers behind one lossy link, one retransmit server upstream', testbedSkip(), () => {
  let bed: Testbed;
  let directory: string;
  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-four-'));
    writeFileSync(join(directory, 'secret'), 'e2e operator secret for four repair servers\n');
    writeFileSync(join(directory, 'payload.bin'), randomBytes(5_000_000));
  });
  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  it('every repair server re-emits the whole session; the lost packets are sent again about once, by multicast', async () => {
    const s1 = '239.32.0.1:5500';
    const repairGroup = '239.32.0.9:5599';
    const secret = join(directory, 'secret');
    const { retransmit, repairs } = await startFourRepairServers(bed, {
      s1,
      repairGroup,
      emitGroupPrefix: '239.32.1.',
      emitPort: 5510,
      secret,
    });
    const hosts = fourRepairHosts;
    bed.control('linkloss', '10', '5500');
    const sender = sendFrom(bed, s1, ['--file', join(directory, 'payload.bin'), '--rate', '40M']);
    assert.equal((await sender.finished).code, 0);
    const readStatuses = () =>
      hosts.map(
        (host) =>
          JSON.parse(bed.control('status', host, 'http://127.0.0.1:9100/status')) as Record<string, number>,
      );
    // Done when every repair server has ended the run (its END's grace passed), bounded in time.
    let statuses = readStatuses();
    await eventually(
      () => {
        statuses = readStatuses();
        return statuses.every((status) => status.sessionsCompleted === 1);
      },
      90_000, // a loaded host can take long; the wait ends as soon as all four are done
      250,
    );
    const lost = Number(bed.control('linkdropped') || 0);
    const retransmitStatus = JSON.parse(
      bed.control('status', 'rta', 'http://127.0.0.1:9101/status'),
    ) as Record<string, number>;
    // GATECAST_E2E_TRACE=FILE keeps every server's counters for a look at what happened.
    if (process.env.GATECAST_E2E_TRACE !== undefined) {
      writeFileSync(
        process.env.GATECAST_E2E_TRACE,
        JSON.stringify({ lost, retransmitStatus, statuses }, null, 1),
      );
    }
    for (const process of [...repairs, retransmit]) {
      await stop(process);
    }
    assert.ok(lost > 150, `the link dropped only ${lost} packets`);
    for (const [i, status] of statuses.entries()) {
      assert.equal(status.unrecoverable, 0, `${hosts[i]}: ${JSON.stringify(status)}`);
      assert.equal(status.sessionsCompleted, 1, `${hosts[i]}: ${JSON.stringify(status)}`);
      assert.equal(status.emitted, 3572, `${hosts[i]}`);
    }
    const perLost = (retransmitStatus.repairsSent ?? 0) / lost;
    assert.ok(
      perLost <= 1.5,
      `${retransmitStatus.repairsSent} repairs for ${lost} lost packets: ${perLost.toFixed(2)} each; retransmit ${JSON.stringify(retransmitStatus)}; repair ${JSON.stringify(statuses.map((s) => [s.nacksSent, s.timeouts, s.repairsReceived, s.duplicates, (s as unknown as { dropped: unknown }).dropped]))}`,
    );
  });
});

describe('a retransmit server on the test bed answers only repair servers it knows', testbedSkip(), () => {
  let bed: Testbed;
  let directory: string;
  before(() => {
    bed = createTestbed();
    directory = mkdtempSync(join(tmpdir(), 'gatecast-e2e-attack-'));
    writeFileSync(join(directory, 'secret'), 'e2e operator secret against forgeries\n');
  });
  after(() => {
    bed?.down();
    rmSync(directory, { recursive: true, force: true });
  });

  it('forged, tampered, malformed and replayed NACKs from another host get no byte; a genuine one is answered', async () => {
    const s1 = '239.33.0.1:5600';
    const secret = join(directory, 'secret');
    const retransmit = startRetransmit(bed, 'rt1', s1, secret, ['--status', '127.0.0.1:9101']);
    await retransmit.waitFor(/listening on/);
    const sender = sendFrom(bed, s1, [
      '--ticker',
      '--ticks',
      '300',
      '--ticks-per-second',
      '1000',
      '--session-id',
      '4242',
      '--first-sequence',
      '1000',
    ]);
    const sent = await sender.finished;
    assert.equal(sent.code, 0);
    const run = /run (\d+)\)/.exec(sent.stdout + sent.stderr)?.[1];
    assert.ok(run !== undefined, sent.stdout + sent.stderr);
    const attacker = bed.spawn('rx1', process.execPath, [
      '--import',
      'tsx',
      join(repoRoot, 'test', 'e2e', 'fixtures', 'nack-attacker.ts'),
      '10.200.2.21:7000',
      secret,
      '4242',
      '1000',
      run,
    ]);
    const result = await attacker.finished;
    assert.equal(result.code, 0, result.stderr);
    const phases = Object.fromEntries(
      result.stdout
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as { phase: string; bytesBack: number })
        .map((p) => [p.phase, p.bytesBack]),
    );
    assert.deepEqual(
      { ...phases, genuine: 0 },
      { forged: 0, tampered: 0, malformed: 0, genuine: 0, replayed: 0 },
    );
    assert.ok((phases.genuine ?? 0) > 100 * 100, `a genuine NACK got ${phases.genuine} bytes back`);
    const status = JSON.parse(bed.control('status', 'rt1', 'http://127.0.0.1:9101/status')) as {
      repairsSent: number;
      dropped: Record<string, number>;
    };
    await stop(retransmit);
    assert.equal(status.repairsSent, 100, JSON.stringify(status));
    assert.equal(status.dropped['nack-unknown-key'], 1, JSON.stringify(status.dropped));
    assert.equal(status.dropped['nack-bad-tag'], 1);
    assert.equal(status.dropped['nack-replayed'], 1);
    assert.ok(
      Object.keys(status.dropped).some(
        (reason) => reason.startsWith('nack-trunc') || reason.startsWith('nack-length'),
      ),
    );
  });
});
