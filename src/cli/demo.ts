/**
 * `gatecast demo`: the whole product on embedded defaults. On one machine, without root, over
 * loopback, with the subscription server, billing and the console on a SQLite file: a generated
 * ticker and a file are multicast and received; the file again through the repair service bought
 * by a subscriber (flow A: the repair controller, two retransmit servers, a repair module whose S1
 * loses packets in-process), handed by her agent to an application on a local port, and billed in
 * the ledger; a restricted channel decoded by a software
 * token that pays as it goes from its purse, the receipts charged by billing; a channel a set-top
 * box orders, relayed by the order server onto a link group, and cancelled. It prints the
 * console's address and a summary table, then keeps the console up until --duration or Ctrl-C.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { registerConsole } from '../console/console.js';
import type { WatchedEndpoint } from '../console/live.js';
import { ed25519Raw, generateSigningKey, issueGrant } from '../crypto/authority.js';
import { controlKey } from '../crypto/control-auth.js';
import { createMemoryPurse, tokenPurse } from '../crypto/purse.js';
import { ed25519Signer, type Receipt } from '../crypto/receipt.js';
import {
  createReceiverProtection,
  createSenderProtection,
  type ReceiverProtection,
} from '../crypto/restricted-session.js';
import { initSoftwareToken, openSoftwareToken } from '../crypto/software-token.js';
import { suiteByName } from '../crypto/suites.js';
import { type Endpoint, formatEndpoint, parseEndpoint, parseGroup } from '../net/address.js';
import { serveStatus } from '../net/status-http.js';
import { openReceiverSocket } from '../net/udp.js';
import type { OrderRole } from '../order/app.js';
import type { ReconcileReport } from '../order/driver.js';
import { PriceModel } from '../protocol/restricted.js';
import { startWatchingAgent } from '../receiver/agent.js';
import { controllerClient } from '../receiver/controller-client.js';
import { createReceiver, type PayloadSink, type ReceiveSummary } from '../receiver/receiver.js';
import { startRepairController } from '../repair/controller.js';
import { lossyS1Socket, type RepairServer, startRepairServer } from '../repair/repair.js';
import { startRetransmitServer } from '../retransmit/retransmit.js';
import { openFileInput, openTickerInput } from '../source/inputs.js';
import { createSource } from '../source/source.js';
import { openStore, type Store } from '../store/database.js';
import { createLedger } from '../store/ledger.js';
import { exitIncomplete, exitOk } from './errors.js';
import { formatBytes, formatRate } from './format.js';
import { formatHelp, parseInteger, parseOptions, parseSeconds, required } from './options.js';
import { metricsFor } from './role-metrics.js';
import { roleSettingsByName } from './role-settings.js';
import { buildServerApp as buildSubscriptionApp } from './server-app.js';
import { settings, text } from './settings.js';

/** UDP ports the demo uses, in a row from --port (the file, ticker, repair S1 and S2, news, sports, its relay, the application). */
const demoPortsUsed = 8;
/** The highest --port: the last port the demo uses is --port + demoPortsUsed - 1. */
const demoPortMax = 65_535 - (demoPortsUsed - 1);
/** Payload bytes of every DATA packet the demo's sources send. */
const demoPacketPayloadBytes = 1400;

/** The demo's settings: type, default and help of each. */
const demoSettings = settings({
  'file-size': text('BYTES', 'size of the generated file', { default: 4_000_000 }),
  ticks: text('N', 'ticker quotes to send', { default: 40 }),
  port: text('N', `first UDP port to use, ${demoPortsUsed} in a row (at most ${demoPortMax})`, {
    default: 47000,
  }),
  listen: text('ADDR:PORT', 'where the subscription server and the console listen (port 0: any free port)', {
    default: '127.0.0.1:0',
  }),
  duration: text(
    'SECONDS',
    'keep the console up until this long after the start (Ctrl-C stops earlier); 0 stops after the summary',
    { default: 0 },
  ),
});

/** The application's receive buffer: the whole demo file fits (the kernel caps it at rmem_max). */
const applicationReceiveBufferBytes = 8 * 1024 * 1024;
/** How long the agent may take from its start to delivering (a poll, a grant, a join). */
const demoAgentStartMs = 30_000;

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

/** What the demo's parts share: the server, its store and the operator's API. */
interface DemoContext {
  readonly out: NodeJS.WritableStream;
  readonly directory: string;
  readonly iface: string;
  readonly owned: Owned;
  readonly store: Store;
  readonly subscription: string;
  readonly operatorToken: string;
  readonly routes: ReturnType<typeof routeReports>;
  readonly orderRole: () => OrderRole | undefined;
  readonly api: (
    method: 'POST' | 'GET' | 'PUT' | 'DELETE',
    url: string,
    payload?: object,
    token?: string,
  ) => Promise<Record<string, unknown>>;
  /** The roles the console watches, set as they start. */
  readonly watched: Map<string, () => unknown>;
}

/** One row of the summary table. */
interface SummaryRow {
  readonly session: string;
  readonly lossBefore: string;
  readonly lossAfter: string;
  readonly decoded: string;
  readonly charges: string;
}

/** Runs the demo; returns the exit code. */
export async function runDemo(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const values = parseOptions(argv, demoSettings);
  if (values.help === true) {
    out.write(
      formatHelp(
        'gatecast demo [options]',
        'The whole product over loopback, no root: multicast, repair bought and billed, a restricted\n' +
          'channel paid from a purse, the console.',
        demoSettings,
      ),
    );
    return exitOk;
  }
  const startedAt = performance.now();
  const fileSize = parseInteger(required(values, 'file-size'), '--file-size', 1, 1_000_000_000);
  const ticks = parseInteger(required(values, 'ticks'), '--ticks', 1, 100_000);
  const port = parseInteger(required(values, 'port'), '--port', 1, demoPortMax);
  const listenText = required(values, 'listen');
  const anyPort = /^(.+):0$/.exec(listenText);
  const listen: Endpoint =
    anyPort === null
      ? parseEndpoint(listenText, '--listen')
      : { ...parseEndpoint(`${anyPort[1]}:1`, '--listen'), port: 0 };
  const durationMs = parseSeconds(required(values, 'duration'), '--duration');
  const iface = '127.0.0.1';
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-demo-'));
  const owned = new Owned();
  // Ctrl-C (or SIGTERM) at any point: what runs is closed and the demo ends.
  let interrupt: (signal: string) => void = () => undefined;
  const interrupted = new Promise<string>((resolve) => {
    interrupt = resolve;
  });
  const onSignal = (signal: string) => interrupt(signal);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const context = await startServer({ out, directory, iface, owned, listen });
    const run = runParts(context, { fileSize, ticks, port });
    const ended = await Promise.race([run, interrupted.then((signal) => ({ signal }))]);
    if ('signal' in ended) {
      out.write(`\ndemo stopped by ${ended.signal} before its summary\n`);
      return exitIncomplete;
    }
    const { rows, ok } = ended;
    out.write(`\n${formatTable(rows)}\n`);
    out.write(
      ok
        ? '\ndemo ok: every session arrived whole, the repair was bought, handed to the application by the agent and billed, the restricted channel paid for, the ordered channel relayed\n'
        : '\ndemo FAILED: a session is incomplete or the ledger does not balance\n',
    );
    const leftMs = durationMs - (performance.now() - startedAt);
    if (leftMs > 0) {
      out.write(`\nthe console stays up for ${Math.ceil(leftMs / 1000)} s more (Ctrl-C stops it)\n`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        interrupted,
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, leftMs);
        }),
      ]);
      clearTimeout(timer);
    }
    out.write('demo stopped\n');
    return ok ? exitOk : exitIncomplete;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await owned.close();
    rmSync(directory, { recursive: true, force: true });
  }
}

/**
 * Starts the subscription server with billing, the order role and the console on a SQLite file,
 * with a status endpoint per demo role for the console to watch; prints the console's address.
 */
async function startServer(options: {
  out: NodeJS.WritableStream;
  directory: string;
  iface: string;
  owned: Owned;
  listen: Endpoint;
}): Promise<DemoContext> {
  const { out, owned } = options;
  const operatorToken = `gct_demo_${randomBytes(18).toString('base64url')}`;
  const store = owned.add(await openStore(`sqlite:${join(options.directory, 'gatecast.db')}`));
  const watched = new Map<string, () => unknown>();
  const routes = routeReports();
  let orderRole: OrderRole | undefined;
  const watch: WatchedEndpoint[] = [];
  for (const name of ['repair1', 'retransmit1', 'retransmit2', 'agent1']) {
    const server = owned.add(
      await serveStatus({ address: '127.0.0.1', port: 0, family: 4 }, () => watched.get(name)?.() ?? {}),
    );
    watch.push({ name, url: `http://127.0.0.1:${server.port}/status` });
  }
  const app = owned.add(
    await buildSubscriptionApp({
      store,
      trustedOperatorToken: operatorToken,
      roles: ['subscription', 'billing', 'order'],
      order: {
        onStarted: (role) => {
          orderRole = role;
        },
        onRouterReport: (_link, report) => routes.report(report),
      },
      extend: (app, auth) =>
        registerConsole(app, {
          store,
          operatorOnly: auth.operatorOnly,
          watch,
          metrics: metricsFor('demo'),
          settingsSchemas: roleSettingsByName,
        }),
    }),
  );
  await app.listen({ host: options.listen.address, port: options.listen.port });
  const address = app.server.address();
  const subscription = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  const api: DemoContext['api'] = async (method, url, payload, token = operatorToken) =>
    (
      await app.inject({
        method,
        url,
        headers: { authorization: `Bearer ${token}` },
        ...(payload ? { payload } : {}),
      })
    ).json() as Record<string, unknown>;
  out.write(`gatecast demo: loopback multicast on ${options.iface}, no root needed\n`);
  out.write(`  console ${subscription}/console/  (operator token ${operatorToken})\n`);
  return { ...options, store, subscription, operatorToken, api, watched, routes, orderRole: () => orderRole };
}

/** The parts in order; the rows of the summary and whether every part held. */
async function runParts(
  context: DemoContext,
  options: { fileSize: number; ticks: number; port: number },
): Promise<{ rows: SummaryRow[]; ok: boolean }> {
  const { out, directory, iface, owned } = context;
  const { fileSize, ticks, port } = options;
  const path = join(directory, 'update.bin');
  writeFileSync(path, randomBytes(fileSize));
  const fileSha = createHash('sha256').update(readFileSync(path)).digest('hex');
  out.write(`  file   ${formatBytes(fileSize)} (sha256 ${fileSha.slice(0, 16)}…) to 239.255.77.1:${port}\n`);
  out.write(`  ticker ${ticks} quotes to 239.255.77.2:${port + 1}\n`);
  out.write(
    `  repair the file again to 239.255.77.3:${port + 2}, bought by a subscriber (1 packet in 20 of S1 dropped on purpose), billed in SQLite;\n` +
      `         her agent hands the repaired copy to an application on 239.255.77.8:${port + 7}\n`,
  );
  out.write(
    `  news   a restricted channel to 239.255.77.5:${port + 4}, decoded by a software token paying 5 EUR cents a crypto-period from its purse\n`,
  );
  out.write(
    `  sports a channel a set-top box orders: 239.255.77.6:${port + 5}, relayed by the order server to 239.255.77.7:${port + 6}\n\n`,
  );

  const fileGroup = parseGroup(`239.255.77.1:${port}`, '--port');
  const tickerGroup = parseGroup(`239.255.77.2:${port + 1}`, '--port');
  const fileSink = memorySink();
  const tickerSink = memorySink();
  const fileReceiving = await startReceiving(owned, { group: fileGroup, iface, timeoutMs: 10_000 }, fileSink);
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
        packetPayloadBytes: demoPacketPayloadBytes,
        sessionName: 'update.bin',
      },
      { input: owned.add(await openFileInput(path)) },
    ),
  );
  const tickerSource = owned.add(
    createSource(
      {
        group: tickerGroup,
        iface,
        rateBitsPerSecond: 0,
        packetPayloadBytes: demoPacketPayloadBytes,
        sessionName: 'ticker',
      },
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
  const repaired = await repairDemo(context, { path, fileSha, port: port + 2 });
  out.write('\n');
  const restricted = await restrictedDemo(context, { path, fileSha, port: port + 4 });
  out.write('\n');
  const ordered = await orderDemo(context, { ticks, port: port + 5 });
  const plainRow = (session: string, summary: ReceiveSummary): SummaryRow => ({
    session,
    lossBefore: '-',
    lossAfter: `${summary.packetsMissing} missing`,
    decoded: formatBytes(summary.bytesDelivered),
    charges: '-',
  });
  const ok =
    fileSummary.outcome === 'complete' &&
    tickerSummary.outcome === 'complete' &&
    quotes.length === ticks &&
    repaired.ok &&
    restricted.ok &&
    ordered.ok;
  return {
    rows: [
      plainRow('file (plain)', fileSummary),
      plainRow('ticker (plain)', tickerSummary),
      repaired.row,
      restricted.row,
      ordered.row,
    ],
    ok,
  };
}

/**
 * Flow A on loopback: a subscriber's agent sees her application join its local group and asks
 * the repair controller for S1; the module it starts loses 5 % of S1 on purpose (simulated at its
 * socket: loopback loses nothing), fetches the gaps from two retransmit servers and re-emits the
 * file whole on the sealed S2, which the agent opens and hands to the application; the repaired
 * bytes are charged to the subscriber in the SQLite ledger.
 */
async function repairDemo(
  context: DemoContext,
  options: { path: string; fileSha: string; port: number },
): Promise<{ ok: boolean; row: SummaryRow }> {
  const { out, iface, owned, api, store } = context;
  const key = controlKey(randomBytes(32));
  const s1 = parseGroup(`239.255.77.3:${options.port}`, '--port');
  const failed = (reason: string) => ({
    ok: false,
    row: { session: 'file via repair', lossBefore: '?', lossAfter: reason, decoded: '-', charges: '-' },
  });
  const alice = await api('POST', '/v1/subscribers', { name: 'alice' });
  await api('POST', '/v1/entitlements', { subscriber: alice.id, service: 'repair' });
  // The controller grants repair only for an S1 a source has registered.
  const source = await api('POST', '/v1/sources', { name: 'demo source' });
  await api('POST', '/v1/sessions', { name: 'demo file', group: formatEndpoint(s1), owner: source.id });
  const retransmitServers = [];
  for (const name of ['retransmit1', 'retransmit2']) {
    const server = owned.add(
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
    context.watched.set(name, () => server.status());
    retransmitServers.push(server);
  }
  let dropped = 0;
  let module: RepairServer | undefined;
  const controller = owned.add(
    await startRepairController({
      listen: { address: '127.0.0.1', port: 0, family: 4 },
      subscription: context.subscription,
      token: context.operatorToken,
      pool: parseGroup(`239.255.77.4:${options.port + 1}`, '--port'),
      poolSize: 4,
      leaseMs: 60_000,
      reportIntervalMs: 60_000,
      idleMs: 0,
      module: {
        iface,
        listen: { address: '127.0.0.1', port: 0, family: 4 },
        keys: [key],
        retransmit: retransmitServers.map((server) => server.local),
        latencyMs: undefined,
      },
      startModule: async (settings) => {
        const started = await startRepairServer(settings, {
          openS1Socket: lossyS1Socket((sequence) => {
            const lose = sequence % 20 === 7;
            dropped += lose ? 1 : 0;
            return lose;
          }),
        });
        module = started;
        context.watched.set('repair1', () => started.status());
        return started;
      },
    }),
  );
  // The application: a plain UDP socket on a local group and port of its own, kept apart from the
  // network's S1, that reads the file as the agent hands it over, payload by payload.
  const application = await startApplication(
    owned,
    parseGroup(`239.255.77.8:${options.port + 5}`, '--port'),
    iface,
  );
  const started = await startDemoAgent(context, {
    s1,
    application: application.group,
    controllerUrl: controller.url,
    token: String(alice.token),
  });
  if (!started.ok) {
    out.write(`  repair alice's agent did not deliver: ${started.reason}\n`);
    return failed(started.reason);
  }
  const { agent } = started;
  // The controller's S2 is sealed: only the key in alice's grant opens it.
  const sealedWith = agent.status().sessions[0]?.delivery?.s2KeyEpoch;
  out.write(
    `  agent  alice's agent saw the application join ${formatEndpoint(application.group)}, asked the controller for ${formatEndpoint(s1)}: granted S2 ${started.s2}${sealedWith === undefined ? ' (NOT sealed)' : ` (sealed, key epoch ${sealedWith})`}\n`,
  );
  const sent = await owned
    .add(
      createSource(
        {
          group: s1,
          iface,
          rateBitsPerSecond: 200_000_000,
          packetPayloadBytes: demoPacketPayloadBytes,
          sessionName: 'update.bin',
        },
        { input: owned.add(await openFileInput(options.path)) },
      ),
    )
    .run();
  const fileBytes = statSync(options.path).size;
  await application.settled(fileBytes, 10_000);
  const recovered = controller.status().modules[0]?.recovered ?? 0;
  const unrecoverable = module?.status().unrecoverable ?? 0;
  const delivery = agent.status().sessions[0]?.delivery;
  // The agent leaves: it releases the grant, and the controller reports the repaired bytes.
  await agent.close();
  await controller.flush();
  const balance = await api('GET', `/v1/accounts/${String(alice.id)}/balance`);
  const sum = await ledgerSum(store);
  const received = application.received();
  const packets = Math.max(1, sent.packetsSent);
  const whole = received.bytes === fileBytes && received.sha256 === options.fileSha;
  const missing = Math.max(0, Math.ceil(fileBytes / demoPacketPayloadBytes) - received.datagrams);
  out.write(
    `  app    ${whole ? 'complete' : 'INCOMPLETE'}: ${received.datagrams} datagrams, ${formatBytes(received.bytes)} from the agent on ${formatEndpoint(application.group)}, ${received.sha256 === options.fileSha ? 'SHA-256 ok' : 'SHA-256 MISMATCH'}; ${dropped} S1 packets lost on purpose, ${recovered} fetched back; the agent delivered ${delivery?.delivered ?? 0}, ${delivery?.gapsSeen ?? 0} gaps\n`,
  );
  out.write(
    `  ledger alice charged ${-Number(balance.balance)} ${String(balance.currency)} (minor units) for ${formatBytes(controller.status().usageBytesReported)} repaired; the ledger sums to ${sum}\n`,
  );
  return {
    ok: whole && sealedWith !== undefined && recovered > 0 && sum === 0 && Number(balance.balance) < 0,
    row: {
      session: 'file via repair+agent',
      lossBefore: `${((100 * dropped) / packets).toFixed(2)} % (${dropped})`,
      lossAfter: `${missing} missing, ${unrecoverable} given up`,
      decoded: `${formatBytes(received.bytes)} (app)`,
      charges: `alice ${-Number(balance.balance)} (${String(balance.currency)}, repair)`,
    },
  };
}

/**
 * The demo's application: a plain UDP socket joined to its own local group, as an unmodified
 * application would be, reading what the agent hands it; keeps the count, the bytes and their hash.
 */
async function startApplication(owned: Owned, group: Endpoint, iface: string) {
  const hash = createHash('sha256');
  let datagrams = 0;
  let bytes = 0;
  let lastAt = performance.now();
  let wake: () => void = () => undefined;
  let digest: string | undefined;
  owned.add(
    await openReceiverSocket(
      { group, iface, receiveBufferBytes: applicationReceiveBufferBytes },
      (payload) => {
        if (digest !== undefined) {
          return; // reported already: what the agent hands on later is not part of the file
        }
        hash.update(payload);
        datagrams++;
        bytes += payload.length;
        lastAt = performance.now();
        wake();
      },
    ),
  );
  return {
    group,
    /** Resolves once `expectedBytes` arrived, or nothing arrived for `quietMs` (bounded either way). */
    async settled(expectedBytes: number, quietMs: number): Promise<void> {
      lastAt = performance.now();
      while (bytes < expectedBytes && performance.now() - lastAt < quietMs) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 250);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      wake = () => undefined;
    },
    received() {
      digest ??= hash.digest('hex');
      return { datagrams, bytes, sha256: digest };
    },
  };
}

/**
 * Alice's agent (`gatecast agent --watch --controller`): it follows the host's group memberships,
 * and when the application joins its group it asks the repair controller for S1 with alice's
 * token and hands the repaired, sealed S2 to the application's group. Resolves once it delivers
 * (or was refused), within demoAgentStartMs.
 */
async function startDemoAgent(
  context: DemoContext,
  options: { s1: Endpoint; application: Endpoint; controllerUrl: string; token: string },
): Promise<
  | { ok: true; s2: string; agent: Awaited<ReturnType<typeof startWatchingAgent>> }
  | { ok: false; reason: string }
> {
  let settle: (outcome: { ok: true; s2: string } | { ok: false; reason: string }) => void = () => undefined;
  const outcome = new Promise<{ ok: true; s2: string } | { ok: false; reason: string }>((resolve) => {
    settle = resolve;
  });
  const agent = context.owned.add(
    await startWatchingAgent({
      mappings: [{ s1: options.s1, deliver: options.application }],
      controller: controllerClient(options.controllerUrl, options.token),
      fromIface: context.iface,
      deliverIface: context.iface,
      pollMs: 100,
      onChange: (_mapping, active, _iface, s2) => {
        if (active) {
          settle({ ok: true, s2: formatEndpoint(s2) });
        }
      },
      onRefused: (_mapping, reason) => settle({ ok: false, reason }),
    }),
  );
  context.watched.set('agent1', () => agent.status());
  let timer: NodeJS.Timeout | undefined;
  const result = await Promise.race([
    outcome,
    new Promise<{ ok: false; reason: string }>((resolve) => {
      timer = setTimeout(
        () => resolve({ ok: false, reason: 'the agent did not start delivering in time' }),
        demoAgentStartMs,
      );
    }),
  ]);
  clearTimeout(timer);
  return result.ok ? { ...result, agent } : result;
}

/** The sum of every account's balance: zero in a double-entry ledger. */
async function ledgerSum(store: Store): Promise<number> {
  let sum = 0;
  for (const value of (await createLedger(store).balances()).values()) {
    sum += value;
  }
  return sum;
}

/** A purse kept in memory, its receipts signed with a fresh key (billing holds the public half). */
function memoryPurse(tokenId: string) {
  const receiptKey = generateSigningKey();
  const { purse, balance } = createMemoryPurse(tokenId, 'EUR', ed25519Signer(receiptKey.privateKey));
  return { purse, publicKey: receiptKey.publicKey, balance };
}

/**
 * Flow C on loopback: a restricted channel "news" (AES-256-GCM, 1-second crypto-periods, batches
 * signed with Ed25519). Bob's software token holds a pay-as-you-go grant: each crypto-period it
 * decodes debits 5 cents from its purse and leaves a signed receipt, which billing charges. A
 * receiver without a token decodes nothing.
 */
async function restrictedDemo(
  context: DemoContext,
  options: { path: string; fileSha: string; port: number },
): Promise<{ ok: boolean; row: SummaryRow }> {
  const { out, iface, owned, api, store, directory } = context;
  const group = parseGroup(`239.255.77.5:${options.port}`, '--port');
  const root = generateSigningKey();
  const source = generateSigningKey();
  const serviceKey = randomBytes(32);
  const tokenId = 'demo-token-bob';
  const { purse, publicKey, balance } = memoryPurse(tokenId);
  const receipts: Receipt[] = [];
  const tokenPath = join(directory, 'bob.token');
  const pin = randomBytes(8).toString('hex');
  initSoftwareToken({ path: tokenPath, pin, rootPublicKey: ed25519Raw(root.publicKey) });
  const token = openSoftwareToken(
    tokenPath,
    pin,
    tokenPurse(purse, (receipt) => receipts.push(receipt)),
  );
  owned.add({ close: async () => token.close() });
  const now = Date.now();
  token.installGrant(
    issueGrant(
      {
        devicePoint: token.devicePoint(),
        serviceKey,
        tier: 0,
        service: 'news',
        serviceEpoch: 1,
        notBeforeMs: now - 60_000,
        notAfterMs: now + 3_600_000,
        priceModel: PriceModel.perCryptoPeriod,
        currency: 'EUR',
        priceMinor: 5,
        sourcePublicKey: ed25519Raw(source.publicKey),
      },
      root.privateKey,
    ),
  );
  const bob = await api('POST', '/v1/subscribers', { name: 'bob' });
  const topUp = 200;
  await purse.topUp({ sequence: 1, amount: topUp, currency: 'EUR' });
  await api('PUT', `/v1/purses/${tokenId}`, {
    subscriber: bob.id,
    publicKey: publicKey.export({ format: 'jwk' }).x as string,
  });
  await api('POST', `/v1/purses/${tokenId}/top-ups`, { sequence: 1, amount: topUp });
  let refusal: string | undefined;
  const bobSink = memorySink();
  const bobReceiving = await startReceiving(
    owned,
    { group, iface, timeoutMs: 10_000 },
    bobSink,
    createReceiverProtection(token, (refused) => {
      refusal ??= refused.message;
    }),
  );
  const strangerSink = memorySink();
  const strangerReceiving = await startReceiving(owned, { group, iface, timeoutMs: 10_000 }, strangerSink);
  const fileBytes = statSync(options.path).size;
  // Paced to last about three crypto-periods, so the purse pays for several.
  const rateBitsPerSecond = Math.max(100_000, Math.round((fileBytes * 8) / 2.5));
  const suite = suiteByName('aes-256-gcm', '--suite');
  await owned
    .add(
      createSource(
        { group, iface, rateBitsPerSecond, packetPayloadBytes: 1200, sessionName: 'news' },
        {
          input: owned.add(await openFileInput(options.path)),
          protection: (run) =>
            createSenderProtection(
              {
                suite,
                service: 'news',
                serviceEpoch: 1,
                serviceKey,
                sourcePrivateKey: source.privateKey,
                sourcePublicKey: source.publicKey,
                cryptoPeriodMs: 1000,
                tier: 0,
                manifestPackets: 32,
              },
              run,
            ),
        },
      ),
    )
    .run();
  const [bobSummary, strangerSummary] = await Promise.all([bobReceiving.done, strangerReceiving.done]);
  const batch = await api('POST', '/v1/receipts/batch', {
    receipts: receipts.map((receipt) => receipt.bytes.toString('base64url')),
  });
  const billed = await api('GET', `/v1/purses/${tokenId}`);
  const sum = await ledgerSum(store);
  const debited = topUp - balance();
  out.write(
    `${line('news', bobSummary)} (bob's token decoded it)${refusal === undefined ? '' : `; refused: ${refusal}`}\n`,
  );
  out.write(
    `  stranger without a token: ${formatBytes(strangerSummary.bytesDelivered)} decoded, ${strangerSummary.encryptedDropped} encrypted packets not decoded\n`,
  );
  out.write(
    `  purse  bob's purse debited ${debited} EUR cents for ${receipts.length} crypto-periods; billing charged ${String(batch.charged)} receipts (${String(billed.charged)} EUR cents, purse balance ${String(billed.balance)}); the ledger sums to ${sum}\n`,
  );
  return {
    ok:
      bobSummary.outcome === 'complete' &&
      bobSummary.sha256 === options.fileSha &&
      strangerSummary.bytesDelivered === 0 &&
      receipts.length > 0 &&
      debited === 5 * receipts.length &&
      batch.charged === receipts.length &&
      billed.charged === debited &&
      sum === 0,
    row: {
      session: 'news (restricted)',
      lossBefore: '-',
      lossAfter: `${bobSummary.packetsMissing} missing`,
      decoded: `${formatBytes(bobSummary.bytesDelivered)} (stranger ${formatBytes(strangerSummary.bytesDelivered)})`,
      charges: `bob's purse ${debited} (EUR, ${receipts.length} receipts)`,
    },
  };
}

/**
 * Flow D on loopback: the order server drives a relay link (gatecast forwards the channel itself,
 * group to group). Carol's set-top box orders the channel "sports"; the relay starts, the ticker on
 * the channel's group arrives on the link's group; her cancel removes the route.
 */
async function orderDemo(
  context: DemoContext,
  options: { ticks: number; port: number },
): Promise<{ ok: boolean; row: SummaryRow }> {
  const { out, iface, owned, api } = context;
  const channel = `239.255.77.6:${options.port}`;
  const onLink = parseGroup(`239.255.77.7:${options.port + 1}`, '--port');
  await api('PUT', '/v1/order/links/demo-link', {
    capacity: 10_000_000,
    router: { kind: 'relay', inbound: iface, outbound: iface },
  });
  await api('PUT', '/v1/order/services/sports', {
    link: 'demo-link',
    group: channel,
    bitRate: 1_000_000,
    price: 'per-order',
    relayTo: formatEndpoint(onLink),
  });
  const carol = await api('POST', '/v1/subscribers', { name: 'carol' });
  await api('POST', '/v1/entitlements', { subscriber: carol.id, service: 'channel' });
  const routed = context.routes.next((report) => report.added.length > 0);
  const order = await api('POST', '/v1/order/orders', { service: 'sports' }, String(carol.token));
  if (order.state !== 'active') {
    out.write(`  order  carol's box was refused: ${JSON.stringify(order)}\n`);
    return {
      ok: false,
      row: { session: 'sports (ordered)', lossBefore: '-', lossAfter: 'refused', decoded: '-', charges: '-' },
    };
  }
  const added = await routed;
  out.write(`  order  carol's box ordered sports: the order server relays ${added.added.join(', ')}\n`);
  const sink = memorySink();
  const receiving = await startReceiving(owned, { group: onLink, iface, timeoutMs: 10_000 }, sink);
  await owned
    .add(
      createSource(
        {
          group: parseGroup(channel, '--port'),
          iface,
          rateBitsPerSecond: 0,
          packetPayloadBytes: demoPacketPayloadBytes,
          sessionName: 'sports',
        },
        { input: owned.add(openTickerInput({ ticksPerSecond: 50, tickCount: options.ticks })) },
      ),
    )
    .run();
  const summary = await receiving.done;
  const charged = (await context.orderRole()?.chargeOrders()) ?? 0;
  const balance = await api('GET', `/v1/accounts/${String(carol.id)}/balance`);
  const unrouted = context.routes.next((report) => report.removed.length > 0);
  await api('DELETE', `/v1/order/orders/${String(order.id)}`, undefined, String(carol.token));
  const removed = await unrouted;
  out.write(`${line('sports', summary)} (through the relay link)\n`);
  out.write(
    `  order  carol cancelled: route ${removed.removed.join(', ')} removed; ${charged} order charged, carol's balance ${String(balance.balance)} ${String(balance.currency)}\n`,
  );
  return {
    ok:
      summary.outcome === 'complete' &&
      summary.packetsDelivered === options.ticks &&
      removed.removed.length > 0,
    row: {
      session: 'sports (ordered)',
      lossBefore: '-',
      lossAfter: `${summary.packetsMissing} missing`,
      decoded: formatBytes(summary.bytesDelivered),
      charges: `carol ${-Number(balance.balance)} (${String(balance.currency)}, order)`,
    },
  };
}

/** The router reports of the order role, awaited one condition at a time (bounded). */
function routeReports() {
  const waiting: Array<{
    match: (report: ReconcileReport) => boolean;
    resolve: (report: ReconcileReport) => void;
  }> = [];
  return {
    report(report: ReconcileReport): void {
      for (const waiter of [...waiting]) {
        if (waiter.match(report)) {
          waiting.splice(waiting.indexOf(waiter), 1);
          waiter.resolve(report);
        }
      }
    },
    /** The next report that matches; rejects after demoRouteWaitMs. */
    next(match: (report: ReconcileReport) => boolean): Promise<ReconcileReport> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error('the order server did not change the route in time')),
          10_000,
        );
        waiting.push({
          match,
          resolve: (report) => {
            clearTimeout(timer);
            resolve(report);
          },
        });
      });
    },
  };
}

/** The summary table: loss before and after repair, bytes decoded, charges (minor units). */
function formatTable(rows: readonly SummaryRow[]): string {
  const header: SummaryRow = {
    session: 'session',
    lossBefore: 'loss before repair',
    lossAfter: 'after',
    decoded: 'bytes decoded',
    charges: 'charged (minor units)',
  };
  const keys = ['session', 'lossBefore', 'lossAfter', 'decoded', 'charges'] as const;
  const widths = keys.map((key) => Math.max(...[header, ...rows].map((row) => row[key].length)));
  const format = (row: SummaryRow) =>
    `  ${keys.map((key, index) => row[key].padEnd(widths[index] ?? 0)).join('  ')}`.trimEnd();
  return ['summary', format(header), ...rows.map(format)].join('\n');
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
