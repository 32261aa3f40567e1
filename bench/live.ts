/**
 * Live-stream repair side by side with RIST (Debian rist-tools, libRIST) on the same routed links
 * at the same loss: a stamped stream (bench/live-peer.ts) through gatecast (relay -> S1 -> repair
 * server with a 100 ms latency budget -> S2 -> agent -> the reader on S1's address) and through
 * ristsender -> ristreceiver with a 100 ms buffer. Residual loss and one-way delay at the reader.
 * Writes the "live" section of docs/benchmarks.md. Needs root and rist-tools.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  createTestbed,
  repoRoot,
  sendFrom,
  sleep,
  startRepairPair,
  stop,
  type Testbed,
  testbedUnavailable,
} from '../test/helpers/testbed.js';
import { writeSection } from './report.js';

const packetsPerSecond = 1000;
const seconds = Number(process.env.BENCH_LIVE_SECONDS ?? 8);
const budgetMs = 100;
const peer = join(repoRoot, 'bench', 'live-peer.ts');

interface Row {
  tool: string;
  lossPercent: number;
  dropped: number;
  sent: number;
  received: number;
  p50: number;
  p99: number;
}

const node = (bed: Testbed, host: string, args: string[]) =>
  bed.spawn(host, process.execPath, ['--import', 'tsx', peer, ...args]);
const last = (text: string) => JSON.parse(text.trim().split('\n').pop() ?? '{}') as Record<string, number>;

async function runGatecast(bed: Testbed, secret: string, lossPercent: number, port: number): Promise<Row> {
  const s1 = `239.63.0.1:${port}`;
  const s2 = `239.63.0.2:${port + 1}`;
  const { retransmit, repair } = startRepairPair(bed, {
    s1,
    s2,
    secret,
    mode: ['--latency', String(budgetMs)],
  });
  bed.control('translate', 'rx1', String(port));
  const agent = bed.gatecast('rx1', [
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
  const reader = node(bed, 'rx1', ['receive', s1, String(seconds + 5), '10.200.2.11']);
  await Promise.all([
    retransmit.waitFor(/listening on/),
    repair.waitFor(/listening on/),
    agent.waitFor(/local delivery/),
    reader.waitFor(/listening/),
  ]);
  const relay = sendFrom(bed, s1, ['--relay', `127.0.0.1:${port + 2}`]);
  await sleep(1500);
  bed.control('loss', 'rep', String(lossPercent), String(port));
  const sender = node(bed, 'src', [
    'send',
    `127.0.0.1:${port + 2}`,
    String(packetsPerSecond),
    String(seconds),
  ]);
  const sent = last((await sender.finished).stdout);
  await sleep(1000);
  await stop(relay);
  const read = last((await reader.finished).stdout);
  const dropped = Number(bed.control('dropped', 'rep') || 0);
  bed.control('clear', 'rep');
  for (const process of [agent, repair, retransmit]) {
    await stop(process);
  }
  return {
    tool: 'gatecast',
    lossPercent,
    dropped,
    sent: sent.sent ?? 0,
    received: read.received ?? 0,
    p50: read.p50 ?? 0,
    p99: read.p99 ?? 0,
  };
}

async function runRist(bed: Testbed, lossPercent: number, port: number): Promise<Row> {
  const receiver = bed.spawn('rep', 'ristreceiver', [
    '-i',
    `rist://@10.200.2.31:${port}?buffer=${budgetMs}`,
    '-o',
    `udp://127.0.0.1:${port + 100}`,
    '-v',
    '3',
  ]);
  const reader = node(bed, 'rep', ['receive', `127.0.0.1:${port + 100}`, String(seconds + 5)]);
  await reader.waitFor(/listening/);
  const sender = bed.spawn('src', 'ristsender', [
    '-i',
    `udp://127.0.0.1:${port + 2}`,
    '-o',
    `rist://10.200.2.31:${port}?buffer=${budgetMs}`,
    '-v',
    '3',
  ]);
  await sleep(1500);
  bed.control('loss', 'rep', String(lossPercent), String(port));
  const generator = node(bed, 'src', [
    'send',
    `127.0.0.1:${port + 2}`,
    String(packetsPerSecond),
    String(seconds),
  ]);
  const sent = last((await generator.finished).stdout);
  const read = last((await reader.finished).stdout);
  const dropped = Number(bed.control('dropped', 'rep') || 0);
  bed.control('clear', 'rep');
  await stop(sender);
  await stop(receiver);
  return {
    tool: 'RIST (libRIST 0.2.7, main profile)',
    lossPercent,
    dropped,
    sent: sent.sent ?? 0,
    received: read.received ?? 0,
    p50: read.p50 ?? 0,
    p99: read.p99 ?? 0,
  };
}

async function main(): Promise<void> {
  const unavailable = testbedUnavailable(['ristsender', 'ristreceiver']);
  if (unavailable !== undefined) {
    console.error(`bench live: cannot run: ${unavailable}`);
    process.exit(2);
  }
  const bed = createTestbed();
  const directory = mkdtempSync('/dev/shm/gatecast-bench-live-');
  const rows: Row[] = [];
  try {
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'benchmark operator secret, local only\n');
    let port = 8000;
    for (const lossPercent of [0, 1, 5, 10, 20]) {
      port += 10;
      rows.push(await runGatecast(bed, secret, lossPercent, port));
      console.error(JSON.stringify(rows.at(-1)));
      port += 10;
      rows.push(await runRist(bed, lossPercent, port));
      console.error(JSON.stringify(rows.at(-1)));
    }
  } finally {
    bed.down();
    rmSync(directory, { recursive: true, force: true });
  }
  const lossFree = (tool: string) => rows.find((r) => r.tool === tool && r.lossPercent === 0)?.p50 ?? 0;
  const table = rows.map((r) => {
    const residual = r.sent === 0 ? 0 : (100 * (r.sent - r.received)) / r.sent;
    return `| ${r.lossPercent} % | ${r.tool} | ${r.dropped} | ${r.sent} | ${r.received} | ${residual.toFixed(3)} % | ${r.p50.toFixed(1)} / ${r.p99.toFixed(1)} | ${(r.p50 - lossFree(r.tool)).toFixed(1)} |`;
  });
  writeSection(
    'live',
    `## Live stream: gatecast repair against RIST, same links, same loss

- Command: \`npm run bench\` (bench/live.ts). A stamped stream of ${packetsPerSecond} datagrams/s of 1316 bytes
  (≈ 10.5 Mbit/s) for ${seconds} s, sent by bench/live-peer.ts (sequence and send time in each datagram).
- gatecast: \`gatecast send --relay\` on the source host -> S1 through the router -> \`gatecast repair
  --latency ${budgetMs}\` (one retransmit server) -> S2 -> \`gatecast agent\` -> the reader on S1's address.
- RIST: \`ristsender\` -> \`ristreceiver\` with \`buffer=${budgetMs}\` (libRIST's own retransmission), the
  receiver on the repair server's host. libRIST's tools set no multicast TTL, so RIST cannot cross
  the router by multicast here: it runs by unicast over the same links.
- Loss: nftables on the repair server's host input for the stream's port (both tools), "dropped" is
  nftables' count. Delay is one-way from the generator to the reader (same clock); the last column
  is the median delay added over the same tool's loss-free run.

| loss | tool | dropped | sent | received | residual loss | delay p50 / p99 (ms) | p50 over loss-free (ms) |
|---|---|---|---|---|---|---|---|
${table.join('\n')}

RIST holds every packet for its whole buffer (its delay is the buffer, about ${budgetMs} ms, loss or not);
gatecast re-emits in order as soon as a gap is filled and gives a packet up only when the
${budgetMs} ms budget runs out.
`,
  );
  console.error('wrote the live section of docs/benchmarks.md');
}

await main();
