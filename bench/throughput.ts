/**
 * Throughput benchmark: 1400-byte payloads from one namespace to a receiver in another, for about
 * 10 s each, raw node:dgram (the baseline) and gatecast send/receive measured in the same run.
 * gatecast runs unpaced, then paced at stepped-down rates until the receiver loses nothing: that
 * zero-loss rate against the raw one is the ratio the issue's target names. Writes
 * docs/benchmarks.md. Needs root (namespaces).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';
import {
  createTestbed,
  type HostProcess,
  receiveOn,
  repoRoot,
  testbedUnavailable,
} from '../test/helpers/testbed.js';
import { writeSection } from './report.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const payloadBytes = 1400;
const group = '234.5.6.7:7000'; // outside the router's templates: stays on subnet A
const senderHost = 'src';
const receiverHost = 'rtr';
const senderAddress = '10.200.1.10';
const receiverAddress = '10.200.1.1';

interface Row {
  label: string;
  offeredRate: string;
  sentPackets: number;
  receivedPackets: number;
  lostPackets: number;
  seconds: number;
  senderCpu: number;
  receiverCpu: number;
}

/** Samples a process's CPU time (user + system, seconds) from /proc until it exits. */
function cpuMeter(process: HostProcess): () => number {
  let last = 0;
  const pid = process.child.pid;
  const timer = setInterval(() => {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      last = (Number(fields[11]) + Number(fields[12])) / 100;
    } catch {
      clearInterval(timer);
    }
  }, 200);
  void process.finished.then(() => clearInterval(timer));
  return () => last;
}

async function main(): Promise<void> {
  const unavailable = testbedUnavailable();
  if (unavailable !== undefined) {
    console.error(`bench: cannot run: ${unavailable}`);
    process.exit(2);
  }
  const bed = createTestbed();
  const directory = mkdtempSync('/dev/shm/gatecast-bench-');
  const rows: Row[] = [];
  try {
    const raw = await runRaw(bed);
    rows.push(raw);
    const rawPps = raw.receivedPackets / raw.seconds;
    console.error(`raw: ${rawPps.toFixed(0)} packets/s received, ${raw.lostPackets} lost`);
    const file = join(directory, 'payload.bin');
    const fileBytes = Math.round(rawPps * seconds) * payloadBytes;
    writeFileSync(file, Buffer.alloc(fileBytes, 0x5a));
    const unpaced = await runGatecast(bed, file, 'unlimited');
    rows.push(unpaced);
    console.error(
      `gatecast unpaced: ${(unpaced.receivedPackets / unpaced.seconds).toFixed(0)} packets/s, ${unpaced.lostPackets} lost`,
    );
    if (unpaced.lostPackets > 0) {
      const unpacedBits = (unpaced.sentPackets * (payloadBytes + 28) * 8) / unpaced.seconds;
      for (const share of [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5]) {
        const rate = `${Math.round((unpacedBits * share) / 1e6)}M`;
        const paced = await runGatecast(bed, file, rate);
        rows.push(paced);
        console.error(
          `gatecast at ${rate}: ${(paced.receivedPackets / paced.seconds).toFixed(0)} packets/s, ${paced.lostPackets} lost`,
        );
        if (paced.lostPackets === 0) {
          break;
        }
      }
    }
  } finally {
    bed.down();
    rmSync(directory, { recursive: true, force: true });
  }
  writeReport(rows);
}

async function runRaw(bed: ReturnType<typeof createTestbed>): Promise<Row> {
  const script = join(repoRoot, 'bench', 'raw-udp.ts');
  const node = (host: string, args: string[]) =>
    bed.spawn(host, process.execPath, ['--import', 'tsx', script, ...args]);
  const receiver = node(receiverHost, ['receive', group, receiverAddress, String(seconds + 4)]);
  await receiver.waitFor(/joined/);
  const receiverCpu = cpuMeter(receiver);
  const sender = node(senderHost, ['send', group, senderAddress, String(seconds)]);
  const senderCpu = cpuMeter(sender);
  const sent = JSON.parse((await sender.finished).stdout) as { packets: number; seconds: number };
  const senderSeconds = senderCpu();
  const received = JSON.parse((await receiver.finished).stdout) as { packets: number; seconds: number };
  return {
    label: 'raw node:dgram',
    offeredRate: 'unpaced',
    sentPackets: sent.packets,
    receivedPackets: received.packets,
    lostPackets: sent.packets - received.packets,
    seconds: sent.seconds,
    senderCpu: senderSeconds / sent.seconds,
    receiverCpu: receiverCpu() / sent.seconds,
  };
}

async function runGatecast(bed: ReturnType<typeof createTestbed>, file: string, rate: string): Promise<Row> {
  const receiver = receiveOn(bed, receiverHost, group, ['--out', '/dev/null', '--timeout', '5', '--json']);
  await receiver.waitFor(/joined/);
  const receiverCpu = cpuMeter(receiver);
  const sender = bed.gatecast(senderHost, [
    'send',
    '--group',
    group,
    '--iface',
    'eth0',
    '--file',
    file,
    '--rate',
    rate,
    '--json',
  ]);
  const senderCpu = cpuMeter(sender);
  const sentResult = await sender.finished;
  const senderSeconds = senderCpu();
  const sent = JSON.parse(lastLine(sentResult.stderr)) as { packetsSent: number; elapsedMs: number };
  const received = JSON.parse(lastLine((await receiver.finished).stderr)) as {
    packetsDelivered: number;
    packetsMissing: number;
  };
  const elapsed = sent.elapsedMs / 1000;
  return {
    label: 'gatecast send/receive',
    offeredRate: rate,
    sentPackets: sent.packetsSent,
    receivedPackets: received.packetsDelivered,
    lostPackets: received.packetsMissing,
    seconds: elapsed,
    // CPU is averaged over the data phase; hashing the file before it is excluded as well as possible.
    senderCpu: senderSeconds / Math.max(elapsed, 0.001),
    receiverCpu: receiverCpu() / Math.max(elapsed, 0.001),
  };
}

function lastLine(text: string): string {
  return text.trim().split('\n').pop() ?? '{}';
}

function writeReport(rows: Row[]): void {
  const raw = rows[0];
  if (raw === undefined) {
    return;
  }
  const rawPps = raw.receivedPackets / raw.seconds;
  const zeroLoss = rows.slice(1).find((row) => row.lostPackets === 0);
  const table = rows.map((row) => {
    const pps = row.receivedPackets / row.seconds;
    const mbit = (pps * payloadBytes * 8) / 1e6;
    const loss = row.sentPackets === 0 ? 0 : (100 * row.lostPackets) / row.sentPackets;
    return `| ${row.label} | ${row.offeredRate} | ${row.sentPackets} | ${row.receivedPackets} | ${pps.toFixed(0)} | ${mbit.toFixed(0)} | ${loss.toFixed(2)} % | ${(row.senderCpu * 100).toFixed(0)} % | ${(row.receiverCpu * 100).toFixed(0)} % | ${(pps / rawPps).toFixed(2)} |`;
  });
  const ratio = zeroLoss === undefined ? undefined : zeroLoss.receivedPackets / zeroLoss.seconds / rawPps;
  const node = process.version;
  const kernel = release();
  const cpu = cpus()[0]?.model ?? 'unknown';
  const text = `## Throughput: one namespace to another

- Machine: ${cpus().length} × ${cpu}, Linux ${kernel}, Node ${node}; ${new Date().toISOString().slice(0, 10)}.
- Set-up: the test bed of \`scripts/testbed.sh\`; sender in \`src\` (10.200.1.10), receiver in \`rtr\`
  (10.200.1.1) on the same bridge; group ${group}; 1400-byte payloads; about ${seconds} s per row.
- Baseline: raw \`node:dgram\` (bench/raw-udp.ts: batches of 64 sends then \`setImmediate\`, 4 MiB
  receive buffer, the receiver only counts).
- gatecast: \`gatecast send --file\` (28-byte header on each payload, pacing, heartbeats) to
  \`gatecast receive --out /dev/null\` (decode, reorder, SHA-256 of the whole payload, write). First
  unpaced, then paced at stepped-down rates until the receiver loses nothing.
- packets/s and Mbit/s are payload delivered to the receiving application per second of sending;
  loss is what the receiver did not get; CPU is the process's user + system time per second of
  sending (100 % = one core); gatecast's sender CPU includes hashing the file before the session.

| run | offered rate | sent | received | packets/s | Mbit/s | loss | sender CPU | receiver CPU | ratio to raw |
|---|---|---|---|---|---|---|---|---|---|
${table.join('\n')}

**Result:** ${
    ratio === undefined
      ? 'gatecast did not reach zero loss at any rate tried.'
      : `gatecast delivers ${(zeroLoss?.receivedPackets ?? 0) / (zeroLoss?.seconds ?? 1) > 0 ? ((zeroLoss?.receivedPackets ?? 0) / (zeroLoss?.seconds ?? 1)).toFixed(0) : 0} packets/s with zero application loss (offered ${zeroLoss?.offeredRate}), ${ratio.toFixed(2)} × raw \`node:dgram\` received rate (target ≥ 0.8: ${ratio >= 0.8 ? 'met' : 'not met'}).`
  }
`;
  writeSection('throughput', text);
  console.error('wrote the throughput section of docs/benchmarks.md');
}

await main();
