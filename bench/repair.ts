/**
 * Repair benchmark on the namespace test bed: a 20 MB file through the repair service at 1, 5, 10
 * and 20 % random loss and in loss bursts on the repair server's S1 path, side by side with uftp
 * delivering the same file over the same routed network at the same loss and rate cap, and the
 * cost of a failover. Writes the "repair" section of docs/benchmarks.md. Needs root, uftp.
 */
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';
import {
  burstLoss,
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
  startRetransmit,
  type Testbed,
  testbedUnavailable,
} from '../test/helpers/testbed.js';
import { writeSection } from './report.js';

const fileBytes = Number(process.env.BENCH_REPAIR_BYTES ?? 20_000_000);
const rateMbit = Number(process.env.BENCH_REPAIR_MBIT ?? 100);

interface Scenario {
  readonly name: string;
  readonly lose: (bed: Testbed, host: string, port: string) => Promise<void>;
  readonly retransmitServers: number;
  readonly killFirstAfterMs?: number;
  /** One-way delay added by a delay line between the repair server and its retransmit servers. */
  readonly delayMs?: number;
}

const random =
  (percent: number): Scenario['lose'] =>
  async (bed, host, port) => {
    bed.control('loss', host, String(percent), port);
  };
const bursts: Scenario['lose'] = (bed, host, port) =>
  burstLoss(bed, host, port, { onMs: 10, offMs: 90, count: 14 });

const scenarios: Scenario[] = [
  { name: '1 % random', lose: random(1), retransmitServers: 1 },
  { name: '5 % random', lose: random(5), retransmitServers: 1 },
  { name: '10 % random', lose: random(10), retransmitServers: 1 },
  { name: '20 % random', lose: random(20), retransmitServers: 2 },
  { name: 'bursts (10 ms on / 90 ms off)', lose: bursts, retransmitServers: 1 },
  { name: '5 % random, 20 ms round trip (delay line)', lose: random(5), retransmitServers: 1, delayMs: 10 },
  { name: '10 % random, 40 ms round trip (delay line)', lose: random(10), retransmitServers: 1, delayMs: 20 },
];

interface GatecastResult {
  scenario: string;
  whole: boolean;
  delivered: number;
  expected: number;
  dropped: number;
  /** From starting the sender command to the receiver having the whole file. */
  seconds: number;
  /** The sender's data phase alone. */
  sendSeconds: number;
  nacks: number;
  nackedPackets: number;
  repairs: number;
  timeouts: number;
  controlBytes: number;
  sessionBytes: number;
  extra: { p50: number; p99: number; max: number } | undefined;
  rttMs: number | undefined;
  unrecoverable: number;
}

interface UftpResult {
  scenario: string;
  intact: boolean;
  seconds: number;
  dropped: number;
}

let port = 6000;

async function runGatecast(
  bed: Testbed,
  file: string,
  secret: string,
  scenario: Scenario,
): Promise<GatecastResult> {
  port += 10;
  const s1 = `239.60.0.1:${port}`;
  const s2 = `239.60.0.2:${port + 1}`;
  const rts: HostProcess[] = [];
  for (let i = 0; i < scenario.retransmitServers; i++) {
    rts.push(
      startRetransmit(bed, `rt${i + 1}`, s1, secret, [
        '--announce-to',
        '10.200.2.31:7100',
        '--status',
        '127.0.0.1:9101',
      ]),
    );
  }
  const lines: HostProcess[] = [];
  if (scenario.delayMs !== undefined) {
    for (let i = 0; i < rts.length; i++) {
      lines.push(
        bed.spawn('rep', process.execPath, [
          '--import',
          'tsx',
          join(repoRoot, 'bench', 'delay-line.ts'),
          `127.0.0.1:${7200 + i}`,
          retransmitAt(`rt${i + 1}`),
          String(scenario.delayMs),
        ]),
      );
    }
    await Promise.all(lines.map((line) => line.waitFor(/delay line/)));
  }
  const retransmitList = rts.map((_, i) =>
    scenario.delayMs === undefined ? retransmitAt(`rt${i + 1}`) : `127.0.0.1:${7200 + i}`,
  );
  const repair = startRepair(bed, 'rep', {
    s1,
    emit: s2,
    secret,
    retransmit: retransmitList,
    mode: ['--reliable', '--status', '127.0.0.1:9100'],
  });
  const receiver = receiveOn(bed, 'rx1', s2, ['--out', '/dev/null', '--json', '--timeout', '30']);
  await Promise.all([
    ...rts.map((r) => r.waitFor(/listening on/)),
    repair.waitFor(/listening on/),
    receiver.waitFor(/joined/),
  ]);
  await sleep(300);
  const startedAtMs = performance.now();
  const sender = sendFrom(bed, s1, ['--file', file, '--rate', `${rateMbit}M`, '--json']);
  let deliveredAtMs = 0;
  void receiver.finished.then(() => {
    deliveredAtMs = performance.now();
  });
  const losing = scenario.lose(bed, 'rep', String(port));
  if (scenario.killFirstAfterMs !== undefined) {
    await sleep(scenario.killFirstAfterMs);
    rts[0]?.child.kill('SIGKILL');
  }
  await losing;
  const sent = JSON.parse((await sender.finished).stderr.trim().split('\n').pop() ?? '{}') as {
    elapsedMs: number;
    datagramBytesSent: number;
  };
  const receivedText = (await receiver.finished).stderr;
  const received = JSON.parse(receivedText.trim().split('\n').pop() ?? '{}') as {
    outcome: string;
    packetsDelivered: number;
    packetsMissing: number;
    expectedPackets: number;
    elapsedMs: number;
  };
  const status = JSON.parse(bed.control('status', 'rep', 'http://127.0.0.1:9100/status')) as {
    nacksSent: number;
    nackedPackets: number;
    repairsReceived: number;
    timeouts: number;
    controlBytesSent: number;
    unrecoverable: number;
    repairExtraDelayMs: GatecastResult['extra'];
    servers: Array<{ rttMs: number | undefined }>;
  };
  let retransmitControlBytes = 0;
  let repairsSent = 0;
  for (const [i, rt] of rts.entries()) {
    if (rt.child.exitCode === null && rt.child.signalCode === null) {
      const s = JSON.parse(bed.control('status', `rt${i + 1}`, 'http://127.0.0.1:9101/status')) as {
        bytesSent: number;
        repairBytesSent: number;
        repairsSent: number;
      };
      retransmitControlBytes += s.bytesSent - s.repairBytesSent;
      repairsSent += s.repairsSent;
    }
  }
  const dropped = Number(bed.control('dropped', 'rep') || 0);
  bed.control('clear', 'rep');
  for (const process of [repair, ...rts, ...lines]) {
    process.child.kill('SIGTERM');
    await process.finished;
  }
  return {
    scenario: scenario.name,
    whole: received.outcome === 'complete',
    delivered: received.packetsDelivered,
    expected: received.expectedPackets ?? Math.ceil(fileBytes / 1400),
    dropped,
    seconds: (deliveredAtMs - startedAtMs) / 1000,
    sendSeconds: sent.elapsedMs / 1000,
    nacks: status.nacksSent,
    nackedPackets: status.nackedPackets,
    repairs: Math.max(repairsSent, status.repairsReceived),
    timeouts: status.timeouts,
    controlBytes: status.controlBytesSent + retransmitControlBytes,
    sessionBytes: sent.datagramBytesSent,
    extra: status.repairExtraDelayMs,
    rttMs: status.servers.find((s) => s.rttMs !== undefined)?.rttMs,
    unrecoverable: status.unrecoverable,
  };
}

async function runUftp(
  bed: Testbed,
  file: string,
  directory: string,
  scenario: Scenario,
): Promise<UftpResult> {
  const dest = join(directory, `uftp-${Date.now()}`);
  mkdirSync(dest);
  const daemon = bed.spawn('rx2', 'uftpd', [
    '-d',
    '-D',
    dest,
    '-M',
    '239.61.0.1',
    '-I',
    'eth0',
    '-B',
    '4194304',
    '-x',
    '0',
  ]);
  await sleep(800);
  const started = performance.now();
  const sender = bed.spawn('src', 'uftp', [
    '-R',
    String(rateMbit * 1000),
    '-M',
    '239.61.0.1',
    '-P',
    '239.61.0.2',
    '-I',
    'eth0',
    '-t',
    '16',
    '-Y',
    'none',
    '-B',
    '4194304',
    '-x',
    '0',
    file,
  ]);
  const losing = scenario.lose(bed, 'rx2', '1044');
  await losing;
  const result = await sender.finished;
  const seconds = (performance.now() - started) / 1000;
  const target = join(dest, file.split('/').pop() ?? '');
  // uftpd may move the file into place just after the sender exits: poll briefly.
  for (let i = 0; i < 50 && !existsSync(target); i++) {
    await sleep(100);
  }
  const dropped = Number(bed.control('dropped', 'rx2') || 0);
  bed.control('clear', 'rx2');
  daemon.child.kill('SIGTERM');
  await daemon.finished;
  const intact =
    result.code === 0 && existsSync(target) && sha256(readFileSync(target)) === sha256(readFileSync(file));
  void readdirSync;
  return { scenario: scenario.name, intact, seconds, dropped };
}

/**
 * Four repair servers behind one lossy link (the router's egress to the edge subnet), the
 * retransmit server upstream answering by multicast on a repair group: REPAIR packets sent per
 * packet lost on the link.
 */
async function runFour(bed: Testbed, file: string, secret: string, lossPercent: number): Promise<string> {
  port += 10;
  const s1 = `239.64.0.1:${port}`;
  const repairGroup = `239.64.0.9:${port + 9}`;
  const { retransmit, repairs } = await startFourRepairServers(bed, {
    s1,
    repairGroup,
    emitGroupPrefix: '239.64.1.',
    emitPort: port + 1,
    secret,
  });
  const hosts = fourRepairHosts;
  bed.control('linkloss', String(lossPercent), String(port));
  const sender = sendFrom(bed, s1, ['--file', file, '--rate', `${rateMbit}M`]);
  await sender.finished;
  await sleep(1500);
  const lost = Number(bed.control('linkdropped') || 0);
  const rt = JSON.parse(bed.control('status', 'rta', 'http://127.0.0.1:9101/status')) as Record<
    string,
    number
  >;
  const statuses = hosts.map(
    (host) =>
      JSON.parse(bed.control('status', host, 'http://127.0.0.1:9100/status')) as Record<string, number>,
  );
  bed.control('linkloss', '0', String(port));
  for (const process of [...repairs, retransmit]) {
    process.child.kill('SIGTERM');
    await process.finished;
  }
  const whole = statuses.filter((x) => x.unrecoverable === 0 && x.sessionsCompleted === 1).length;
  const nacks = statuses.reduce((sum, x) => sum + (x.nacksSent ?? 0), 0);
  return `| ${lossPercent} % | ${lost} | ${whole} of 4 | ${nacks} (${(nacks / Math.max(1, lost)).toFixed(2)} per lost) | ${rt.nacksReceived} | ${rt.repairsSent} | ${rt.suppressed} | ${((rt.repairsSent ?? 0) / Math.max(1, lost)).toFixed(2)} |`;
}

async function mainFour(): Promise<void> {
  const bed = createTestbed();
  const directory = mkdtempSync('/dev/shm/gatecast-bench-four-');
  const rows: string[] = [];
  try {
    const file = join(directory, 'payload.bin');
    writeFileSync(file, randomBytes(fileBytes));
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'benchmark operator secret, local only\n');
    for (const lossPercent of [5, 10]) {
      rows.push(await runFour(bed, file, secret, lossPercent));
      console.error(rows.at(-1));
    }
  } finally {
    bed.down();
    rmSync(directory, { recursive: true, force: true });
  }
  writeSection(
    'four',
    `## Four repair servers behind one lossy link

- Command: \`npm run bench\` (bench/repair.ts). The same ${fileBytes / 1e6} MB file at ${rateMbit} Mbit/s; the loss is on
  the router's egress to the edge subnet (nftables on the forward hook), so the four repair servers
  there lose the same packets. One retransmit server sits upstream in the source subnet and answers
  once, by multicast on a repair group that the repair servers join (\`--repair-group\`); a sequence
  multicast once is not sent again within 50 ms.

| loss | lost on the link | repair servers whole | NACKs sent (all four) | NACKs received | REPAIRs sent | suppressed | REPAIRs per lost packet |
|---|---|---|---|---|---|---|---|
${rows.join('\n')}
`,
  );
}

async function main(): Promise<void> {
  if (process.env.BENCH_FOUR_ONLY === '1') {
    await mainFour();
    return;
  }
  const unavailable = testbedUnavailable(['uftp', 'uftpd']);
  if (unavailable !== undefined) {
    console.error(`bench repair: cannot run: ${unavailable}`);
    process.exit(2);
  }
  const bed = createTestbed();
  const directory = mkdtempSync('/dev/shm/gatecast-bench-repair-');
  const gatecast: GatecastResult[] = [];
  const uftp: UftpResult[] = [];
  let failover: GatecastResult | undefined;
  try {
    const file = join(directory, 'payload.bin');
    writeFileSync(file, randomBytes(fileBytes));
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'benchmark operator secret, local only\n');
    const only = process.env.BENCH_REPAIR_ONLY;
    const chosen = [{ name: 'no loss', lose: random(0), retransmitServers: 1 }, ...scenarios].filter(
      (s) => only === undefined || s.name.startsWith(only),
    );
    for (const scenario of chosen) {
      gatecast.push(await runGatecast(bed, file, secret, scenario));
      console.error(`gatecast ${scenario.name}: ${JSON.stringify(gatecast.at(-1))}`);
      if (process.env.BENCH_REPAIR_SKIP_UFTP !== '1' && scenario.delayMs === undefined) {
        uftp.push(await runUftp(bed, file, directory, scenario));
      }
      console.error(`uftp ${scenario.name}: ${JSON.stringify(uftp.at(-1))}`);
    }
    failover =
      only !== undefined
        ? undefined
        : await runGatecast(bed, file, secret, {
            name: 'failover: 5 % random, preferred server killed after 0.6 s',
            lose: random(5),
            retransmitServers: 2,
            killFirstAfterMs: 600,
          });
    console.error(`gatecast failover: ${JSON.stringify(failover)}`);
  } finally {
    bed.down();
    rmSync(directory, { recursive: true, force: true });
  }
  report(gatecast, uftp, failover);
  if (process.env.BENCH_REPAIR_ONLY === undefined) {
    await mainFour();
  }
}

function report(gatecast: GatecastResult[], uftp: UftpResult[], failover: GatecastResult | undefined): void {
  const lossFree = gatecast[0];
  const goodput = (r: { seconds: number }) => (fileBytes * 8) / r.seconds / 1e6;
  const row = (r: GatecastResult) => {
    const lost = Math.max(1, r.dropped);
    const u = uftp.find((x) => x.scenario === r.scenario);
    return `| ${r.scenario} | ${r.dropped} | ${((100 * r.delivered) / r.expected).toFixed(2)} %${r.whole ? '' : ' (incomplete)'} | ${r.unrecoverable} | ${(r.nacks / lost).toFixed(2)} | ${(r.repairs / lost).toFixed(2)} | ${r.extra ? `${r.extra.p50} / ${r.extra.p99}` : '-'} | ${((100 * r.controlBytes) / r.sessionBytes).toFixed(2)} % | ${goodput(r).toFixed(1)} | ${u ? `${goodput(u).toFixed(1)}${u.intact ? '' : ' (NOT intact)'}` : '-'} |`;
  };
  const rtt = gatecast.find((r) => r.rttMs !== undefined)?.rttMs;
  const loss10 = gatecast.find((r) => r.scenario === '10 % random');
  const uftp10 = uftp.find((r) => r.scenario === '10 % random');
  const text = `## Repair: a ${fileBytes / 1e6} MB file at ${rateMbit} Mbit/s through loss

- Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}, Linux ${release()}, Node ${process.version}; ${new Date().toISOString().slice(0, 10)}.
- Command: \`npm run bench\` (bench/repair.ts). Test bed: source in subnet A, router with smcrouted, and
  in subnet B one or two retransmit servers, the repair server (\`--reliable\`) and the receiver
  reading S2. Loss is injected with nftables on the repair server's S1 input (random with
  \`numgen\`; bursts by switching a drop rule on for 10 ms every 100 ms). "dropped" is nftables'
  own count. 20 % loss runs with two retransmit servers.
- uftp (Debian \`uftp\`) delivers the same file over the same routed network with the same rate cap
  (\`-R ${rateMbit * 1000}\`) and the same loss injected on the uftpd host's input.
- Goodput is the file's size over the time from starting the sender command to the receiver holding
  the whole file (gatecast: \`gatecast receive\` on S2 exits whole; uftp: the sender exits after
  every receiver confirmed). Both include program start-up (gatecast's: see "Start-up" below) and
  each protocol's session set-up, so small files favour neither.
- Round trip: measured by the repair server to its retransmit server, ${rtt ?? '?'} ms on the LAN. The
  rows marked "delay line" put bench/delay-line.ts (a user-space relay; no \`sch_netem\` here)
  between the repair server and its retransmit server, adding the stated round trip to the repair
  path; uftp is not run for those rows.
- Per lost packet: NACK datagrams sent, and REPAIR packets sent by the retransmit servers.
  Extra delay: one-way delay of repaired packets minus the median of packets that came directly;
  it includes the time until a gap can be seen at all (the next packet after it, or after a
  whole burst).
  Control: NACK, ANNOUNCE and not-held bytes as a share of the session's bytes.

| loss | dropped | delivered | unrecoverable | NACKs / lost | repairs / lost | extra delay p50 / p99 (ms) | control | gatecast goodput (Mbit/s) | uftp goodput (Mbit/s) |
|---|---|---|---|---|---|---|---|---|---|
${gatecast.map(row).join('\n')}

${
  failover
    ? `**Failover**: ${failover.scenario}: ${failover.whole ? 'whole' : 'INCOMPLETE'}, ${failover.timeouts} NACK timeouts in all, extra delay p99 ${failover.extra?.p99 ?? '-'} ms, max ${failover.extra?.max ?? '-'} ms (the cost of the failover), ${failover.unrecoverable} unrecoverable.`
    : ''
}

**Against the targets:** ${
    loss10 && lossFree
      ? `at 10 % loss gatecast delivered ${loss10.whole ? 'the whole file' : 'an INCOMPLETE file'} at ${goodput(loss10).toFixed(1)} Mbit/s (${((100 * goodput(loss10)) / goodput(lossFree)).toFixed(0)} % of its loss-free ${goodput(lossFree).toFixed(1)})${uftp10 ? `; uftp ${goodput(uftp10).toFixed(1)} Mbit/s` : ''}.`
      : ''
  } Four repair servers behind one lossy link are checked by the end-to-end test
\`test/e2e/repair.test.ts\` (≤ 1.5 repairs per lost packet with a repair group). RIST is compared on a live stream in the next section.
`;
  writeSection('repair', text);
  console.error('wrote the repair section of docs/benchmarks.md');
}

await main();
