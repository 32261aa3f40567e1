/**
 * `gatecast demo`: the main job on embedded defaults. On one machine, without root, over loopback:
 * a generated ticker and a file are multicast and received, and a short summary is printed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseGroup } from '../net/address.js';
import { createReceiver, type PayloadSink, type ReceiveSummary } from '../receiver/receiver.js';
import { openFileInput, openTickerInput } from '../source/inputs.js';
import { createSource } from '../source/source.js';
import { exitIncomplete, exitOk } from './errors.js';
import { formatBytes, formatRate } from './format.js';
import { formatHelp, type OptionSpecs, optional, parseInteger, parseOptions } from './options.js';

const demoOptions: OptionSpecs = {
  'file-size': { type: 'string', value: 'BYTES', help: 'size of the generated file (default 4000000)' },
  ticks: { type: 'string', value: 'N', help: 'ticker quotes to send (default 40)' },
  port: { type: 'string', value: 'N', help: 'first UDP port to use (default 47000)' },
};

/** A sink that keeps what it is given, for the demo's checks. */
function memorySink(): PayloadSink & { chunks: Buffer[] } {
  const chunks: Buffer[] = [];
  return {
    chunks,
    write(payload) {
      chunks.push(Buffer.from(payload));
    },
    async close() {},
  };
}

/** Runs the demo; returns the exit code. */
export async function runDemo(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const values = parseOptions(argv, demoOptions);
  if (values.help === true) {
    out.write(
      formatHelp('gatecast demo [options]', 'Multicast a ticker and a file over loopback.', demoOptions),
    );
    return exitOk;
  }
  const fileSize = parseInteger(optional(values, 'file-size') ?? '4000000', '--file-size', 1, 1_000_000_000);
  const ticks = parseInteger(optional(values, 'ticks') ?? '40', '--ticks', 1, 100_000);
  const port = parseInteger(optional(values, 'port') ?? '47000', '--port', 1, 65534);
  const iface = '127.0.0.1';
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-demo-'));
  try {
    const path = join(directory, 'update.bin');
    writeFileSync(path, randomBytes(fileSize));
    const fileSha = createHash('sha256').update(readFileSync(path)).digest('hex');
    out.write(`gatecast demo: loopback multicast on ${iface}, no root needed\n`);
    out.write(
      `  file   ${formatBytes(fileSize)} (sha256 ${fileSha.slice(0, 16)}…) to 239.255.77.1:${port}\n`,
    );
    out.write(`  ticker ${ticks} quotes to 239.255.77.2:${port + 1}\n\n`);

    const fileGroup = parseGroup(`239.255.77.1:${port}`, '--port');
    const tickerGroup = parseGroup(`239.255.77.2:${port + 1}`, '--port');
    const fileSink = memorySink();
    const tickerSink = memorySink();
    const fileReceiver = createReceiver({ group: fileGroup, iface, timeoutMs: 10_000 }, { sink: fileSink });
    const tickerReceiver = createReceiver(
      { group: tickerGroup, iface, timeoutMs: 10_000 },
      { sink: tickerSink },
    );
    const receiving = Promise.all([fileReceiver.run(), tickerReceiver.run()]);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const fileSource = createSource(
      {
        group: fileGroup,
        iface,
        rateBitsPerSecond: 200_000_000,
        packetPayloadBytes: 1400,
        sessionName: 'update.bin',
      },
      { input: await openFileInput(path) },
    );
    const tickerSource = createSource(
      { group: tickerGroup, iface, rateBitsPerSecond: 0, packetPayloadBytes: 1400, sessionName: 'ticker' },
      { input: openTickerInput({ ticksPerSecond: 20, tickCount: ticks }) },
    );
    const [fileStats] = await Promise.all([fileSource.run(), tickerSource.run()]);
    const [fileSummary, tickerSummary] = await receiving;

    const quotes = Buffer.concat(tickerSink.chunks).toString('latin1').trim().split('\n');
    out.write('  last quotes received:\n');
    for (const quote of quotes.slice(-3)) {
      out.write(`    ${quote}\n`);
    }
    out.write('\n');
    out.write(
      `${line('file', fileSummary)}, sent at ${formatRate((fileStats.datagramBytesSent * 8000) / fileStats.elapsedMs)}\n`,
    );
    out.write(`${line('ticker', tickerSummary)}\n`);
    const ok =
      fileSummary.outcome === 'complete' && tickerSummary.outcome === 'complete' && quotes.length === ticks;
    out.write(ok ? '\ndemo ok: both sessions arrived whole\n' : '\ndemo FAILED: a session is incomplete\n');
    return ok ? exitOk : exitIncomplete;
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

function line(label: string, summary: ReceiveSummary): string {
  const hash =
    summary.sha256Expected === undefined
      ? ''
      : summary.sha256 === summary.sha256Expected
        ? ', SHA-256 ok'
        : ', SHA-256 MISMATCH';
  return (
    `  ${label.padEnd(6)} ${summary.outcome}: ${summary.packetsDelivered} packets, ${formatBytes(summary.bytesDelivered)}, ` +
    `${summary.packetsMissing} missing${hash}`
  );
}
