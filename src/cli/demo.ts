/**
 * `gatecast demo`: the main job on embedded defaults. On one machine, without root, over loopback:
 * a generated ticker and a file are multicast and received; then the file again through the repair
 * service bought by a subscriber (flow A) and billed in the SQLite ledger; a short summary is printed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlKey } from '../crypto/control-auth.js';
import type { ReceiverProtection } from '../crypto/restricted-session.js';
import { s2ReceiverProtection } from '../crypto/s2-seal.js';
import { formatEndpoint, parseGroup } from '../net/address.js';
import { controllerClient } from '../receiver/controller-client.js';
import { createReceiver, type PayloadSink, type ReceiveSummary } from '../receiver/receiver.js';
import { startRepairController } from '../repair/controller.js';
import { lossyS1Socket, startRepairServer } from '../repair/repair.js';
import { startRetransmitServer } from '../retransmit/retransmit.js';
import { openFileInput, openTickerInput } from '../source/inputs.js';
import { createSource } from '../source/source.js';
import { openStore } from '../store/database.js';
import { createLedger } from '../store/ledger.js';
import { exitIncomplete, exitOk } from './errors.js';
import { formatBytes, formatRate } from './format.js';
import { formatHelp, type OptionSpecs, optional, parseInteger, parseOptions } from './options.js';
import { buildServerApp as buildSubscriptionApp } from './server-app.js';

const demoOptions: OptionSpecs = {
  'file-size': { type: 'string', value: 'BYTES', help: 'size of the generated file (default 4000000)' },
  ticks: { type: 'string', value: 'N', help: 'ticker quotes to send (default 40)' },
  port: { type: 'string', value: 'N', help: 'first UDP port to use, 4 in a row (default 47000)' },
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

/** What the demo opened, closed in reverse order however the demo ends. */
class Owned {
  readonly #closers: Array<() => Promise<void>> = [];
  add<T extends { close(): Promise<void> }>(resource: T): T {
    this.#closers.push(() => resource.close());
    return resource;
  }
  async close(): Promise<void> {
    for (const close of this.#closers.splice(0).reverse()) {
      await close();
    }
  }
}

/** Starts a receiver and resolves once it has joined its group (no fixed sleep). */
async function startReceiving(
  owned: Owned,
  settings: Parameters<typeof createReceiver>[0],
  sink: PayloadSink,
  protection?: ReceiverProtection,
): Promise<{ done: Promise<ReceiveSummary> }> {
  const receiver = owned.add(createReceiver(settings, { sink, protection }));
  let joined: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    joined = resolve;
  });
  const done = receiver.run({ onJoined: () => joined() });
  await Promise.race([ready, done]);
  return { done };
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
  const port = parseInteger(optional(values, 'port') ?? '47000', '--port', 1, 65532);
  const iface = '127.0.0.1';
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-demo-'));
  const owned = new Owned();
  try {
    const path = join(directory, 'update.bin');
    writeFileSync(path, randomBytes(fileSize));
    const fileSha = createHash('sha256').update(readFileSync(path)).digest('hex');
    out.write(`gatecast demo: loopback multicast on ${iface}, no root needed\n`);
    out.write(
      `  file   ${formatBytes(fileSize)} (sha256 ${fileSha.slice(0, 16)}…) to 239.255.77.1:${port}\n`,
    );
    out.write(`  ticker ${ticks} quotes to 239.255.77.2:${port + 1}\n`);
    out.write(
      `  repair the file again to 239.255.77.3:${port + 2}, bought by a subscriber (1 packet in 20 of S1 dropped on purpose), billed in SQLite\n\n`,
    );

    const fileGroup = parseGroup(`239.255.77.1:${port}`, '--port');
    const tickerGroup = parseGroup(`239.255.77.2:${port + 1}`, '--port');
    const fileSink = memorySink();
    const tickerSink = memorySink();
    const fileReceiving = await startReceiving(
      owned,
      { group: fileGroup, iface, timeoutMs: 10_000 },
      fileSink,
    );
    const tickerReceiving = await startReceiving(
      owned,
      { group: tickerGroup, iface, timeoutMs: 10_000 },
      tickerSink,
    );
    const fileSource = owned.add(
      createSource(
        {
          group: fileGroup,
          iface,
          rateBitsPerSecond: 200_000_000,
          packetPayloadBytes: 1400,
          sessionName: 'update.bin',
        },
        { input: owned.add(await openFileInput(path)) },
      ),
    );
    const tickerSource = owned.add(
      createSource(
        { group: tickerGroup, iface, rateBitsPerSecond: 0, packetPayloadBytes: 1400, sessionName: 'ticker' },
        { input: owned.add(openTickerInput({ ticksPerSecond: 20, tickCount: ticks })) },
      ),
    );
    const [fileStats] = await Promise.all([fileSource.run(), tickerSource.run()]);
    const [fileSummary, tickerSummary] = await Promise.all([fileReceiving.done, tickerReceiving.done]);

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
    out.write('\n');
    const repaired = await repairDemo({ out, directory, path, fileSha, iface, port: port + 2 });
    const ok =
      fileSummary.outcome === 'complete' &&
      tickerSummary.outcome === 'complete' &&
      quotes.length === ticks &&
      repaired;
    out.write(
      ok
        ? '\ndemo ok: every session arrived whole, the repair was bought, delivered and billed\n'
        : '\ndemo FAILED: a session is incomplete or the ledger does not balance\n',
    );
    return ok ? exitOk : exitIncomplete;
  } finally {
    await owned.close();
    rmSync(directory, { recursive: true, force: true });
  }
}

/**
 * Flow A on loopback: a subscriber with the repair service asks the repair controller; the module
 * it starts loses 5 % of S1 on purpose (simulated at its socket: loopback loses nothing), fetches
 * the gaps from a retransmit server and re-emits the file whole on S2; the repaired bytes are
 * charged to the subscriber in the SQLite ledger.
 */
async function repairDemo(options: {
  out: NodeJS.WritableStream;
  directory: string;
  path: string;
  fileSha: string;
  iface: string;
  port: number;
}): Promise<boolean> {
  const { out, iface } = options;
  const owned = new Owned();
  const operatorToken = `gct_demo_${randomBytes(18).toString('base64url')}`;
  const key = controlKey(randomBytes(32));
  const s1 = parseGroup(`239.255.77.3:${options.port}`, '--port');
  try {
    const store = owned.add(await openStore(`sqlite:${join(options.directory, 'gatecast.db')}`));
    const app = owned.add(await buildSubscriptionApp({ store, trustedOperatorToken: operatorToken }));
    await app.listen({ host: '127.0.0.1', port: 0 });
    const address = app.server.address();
    const subscription = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
    const api = async (method: 'POST' | 'GET', url: string, payload?: object) =>
      (
        await app.inject({
          method,
          url,
          headers: { authorization: `Bearer ${operatorToken}` },
          ...(payload ? { payload } : {}),
        })
      ).json() as Record<string, unknown>;
    const alice = await api('POST', '/v1/subscribers', { name: 'alice' });
    await api('POST', '/v1/entitlements', { subscriber: alice.id, service: 'repair' });
    // The controller grants repair only for an S1 a source has registered.
    const source = await api('POST', '/v1/sources', { name: 'demo source' });
    await api('POST', '/v1/sessions', { name: 'demo file', group: formatEndpoint(s1), owner: source.id });
    const retransmit = owned.add(
      await startRetransmitServer({
        joins: [{ group: s1 }],
        iface,
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [key],
        bufferBytesMax: 64 * 1024 * 1024,
        bufferAgeMs: 60_000,
        repairRateBitsPerSecond: 500_000_000,
        announceTo: [],
        peers: [],
      }),
    );
    let dropped = 0;
    const controller = owned.add(
      await startRepairController({
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        subscription,
        token: operatorToken,
        pool: parseGroup(`239.255.77.4:${options.port + 1}`, '--port'),
        poolSize: 4,
        leaseMs: 60_000,
        reportIntervalMs: 60_000,
        idleMs: 0,
        module: {
          iface,
          listen: { address: '127.0.0.1', port: 0, family: 4 },
          keys: [key],
          retransmit: [retransmit.local],
          latencyMs: undefined,
        },
        startModule: (settings) =>
          startRepairServer(settings, {
            openS1Socket: lossyS1Socket((sequence) => {
              const lose = sequence % 20 === 7;
              dropped += lose ? 1 : 0;
              return lose;
            }),
          }),
      }),
    );
    const client = controllerClient(controller.url, String(alice.token));
    const grant = await client.resolve(s1);
    if (!grant.granted) {
      out.write(`  repair refused: ${grant.reason}\n`);
      return false;
    }
    out.write(
      `  repair alice's agent asked the controller for ${formatEndpoint(s1)}: granted S2 ${formatEndpoint(grant.s2)}${grant.key === undefined ? '' : ` (sealed, key epoch ${grant.key.epoch})`}\n`,
    );
    const sink = memorySink();
    if (grant.key === undefined) {
      out.write('  repair the controller granted no S2 key\n');
      return false;
    }
    // The repaired copy is sealed: only the grant's key opens it (an agent does the same).
    const receiving = await startReceiving(
      owned,
      { group: grant.s2, iface, timeoutMs: 10_000 },
      sink,
      s2ReceiverProtection(grant.key),
    );
    await owned
      .add(
        createSource(
          {
            group: s1,
            iface,
            rateBitsPerSecond: 200_000_000,
            packetPayloadBytes: 1400,
            sessionName: 'update.bin',
          },
          { input: owned.add(await openFileInput(options.path)) },
        ),
      )
      .run();
    const summary = await receiving.done;
    const recovered = controller.status().modules[0]?.recovered ?? 0;
    await client.release(s1);
    await controller.flush();
    const balance = await api('GET', `/v1/accounts/${String(alice.id)}/balance`);
    let sum = 0;
    for (const value of (await createLedger(store).balances()).values()) {
      sum += value;
    }
    out.write(`${line('S2', summary)}; ${dropped} S1 packets lost on purpose, ${recovered} fetched back\n`);
    out.write(
      `  ledger alice charged ${-Number(balance.balance)} ${String(balance.currency)} (minor units) for ${formatBytes(controller.status().usageBytesReported)} repaired; the ledger sums to ${sum}\n`,
    );
    return (
      summary.outcome === 'complete' &&
      summary.sha256 === options.fileSha &&
      recovered > 0 &&
      sum === 0 &&
      Number(balance.balance) < 0
    );
  } finally {
    await owned.close();
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
