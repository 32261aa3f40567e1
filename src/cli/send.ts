/** `gatecast send`: the source role on the command line. */

import { aeadEngine, signatureEngineInfo } from '../crypto/aead-engine.js';
import { KeyEpochsExhausted } from '../crypto/errors.js';
import {
  adaptRateFloorFractionDefault,
  lastResortQuietMs,
  packetPayloadBytesMin,
  rateBitsPerSecondDefault,
  repairRateBitsPerSecondDefault,
  setupSettleMs,
} from '../limits.js';
import { formatEndpoint, parseEndpoint } from '../net/address.js';
import { InvalidArgumentError } from '../net/errors.js';
import { socketBufferReport } from '../net/udp.js';
import { dataPayloadBytesMax } from '../protocol/sizes.js';
import {
  openFileInput,
  openRelayInput,
  openStreamInput,
  openTickerInput,
  type PayloadInput,
  tickerQuoteBytesMax,
} from '../source/inputs.js';
import type { LastResortSettings } from '../source/last-resort.js';
import { followMemberTree } from '../source/member-tree.js';
import { endSession, type RegisteredSession, registerSession } from '../source/registration.js';
import { createSource, type Source, type SourceSettings, type SourceStats } from '../source/source.js';
import { sendSettings } from './command-settings.js';
import { keysFrom, parseEndpointList, parseUnicastEndpoint } from './control-keys.js';
import { exitIncomplete, exitOk, UsageError } from './errors.js';
import { formatBytes, formatRate, processCpuSeconds, progressBar } from './format.js';
import {
  formatHelp,
  groupOption,
  type OptionValues,
  optional,
  parseInteger,
  parseOptions,
  parseRate,
  parseSeconds,
  parseServerUrl,
  required,
} from './options.js';
import { describeAeadEngine, describeSignatureEngine, senderProtectionOptions } from './restricted.js';
import { applySocketBuffer, describeSocketBuffers } from './socket-buffer.js';
import { readToken } from './token.js';

export const sendHelp = formatHelp(
  'gatecast send --group ADDR:PORT (--file PATH | --stdin | --ticker | --relay ADDR:PORT) [options]',
  'Multicast a session: a file, standard input, a generated ticker, or a relayed UDP stream.\n' +
    'Exits 1 and counts them when datagrams did not leave (e.g. EPERM from a local firewall).',
  sendSettings,
);

/** Builds the input named by exactly one of --file, --stdin, --ticker, --relay. */
async function openInput(values: OptionValues, payloadBytesMax: number): Promise<PayloadInput> {
  const chosen = ['file', 'stdin', 'ticker', 'relay'].filter(
    (name) => values[name] !== undefined && values[name] !== false,
  );
  if (chosen.length !== 1) {
    throw new UsageError(
      chosen.length === 0
        ? 'one of --file, --stdin, --ticker or --relay is required'
        : `choose one input, not ${chosen.map((name) => `--${name}`).join(' and ')}`,
    );
  }
  const file = optional(values, 'file');
  if (file !== undefined) {
    return openFileInput(file);
  }
  if (values.stdin === true) {
    return openStreamInput(process.stdin);
  }
  if (values.ticker === true) {
    if (payloadBytesMax < tickerQuoteBytesMax) {
      throw new InvalidArgumentError(
        '--packet-size',
        `${payloadBytesMax} bytes is less than a ticker quote may take (${tickerQuoteBytesMax}): give at least ${tickerQuoteBytesMax} with --ticker`,
      );
    }
    const ticks = optional(values, 'ticks');
    return openTickerInput({
      ticksPerSecond: parseInteger(required(values, 'ticks-per-second'), '--ticks-per-second', 1, 100_000),
      tickCount: ticks === undefined ? undefined : parseInteger(ticks, '--ticks', 1, 2 ** 40),
    });
  }
  const relay = parseEndpoint(required(values, 'relay'), '--relay');
  return openRelayInput(relay, { iface: optional(values, 'iface'), payloadBytesMax });
}

/** Parses --packet-size: the payload of a DATA packet, which must fit inside a REPAIR. */
function parsePacketSize(text: string): number {
  const bytes = parseInteger(text, '--packet-size', 0, Number.MAX_SAFE_INTEGER);
  if (bytes < packetPayloadBytesMin) {
    throw new InvalidArgumentError(
      '--packet-size',
      `${bytes} is below the minimum of ${packetPayloadBytesMin} bytes (the range is ${packetPayloadBytesMin}-${dataPayloadBytesMax})`,
    );
  }
  if (bytes > dataPayloadBytesMax) {
    throw new InvalidArgumentError(
      '--packet-size',
      `${bytes} is above the maximum of ${dataPayloadBytesMax} bytes (a REPAIR must carry the whole DATA packet)`,
    );
  }
  return bytes;
}

/** The last-resort settings from --retransmit-listen and its options, or undefined without it. */
function lastResortOptions(values: OptionValues): SourceSettings['lastResort'] {
  const listenText = optional(values, 'retransmit-listen');
  const dependent = [
    'secret-file',
    'announce-to',
    'announce-group',
    'announce-address',
    'buffer-bytes',
    'linger',
  ];
  if (listenText === undefined) {
    const stray = dependent.filter((name) => optional(values, name) !== undefined);
    if (stray.length > 0) {
      throw new UsageError(
        `${stray.map((name) => `--${name}`).join(' and ')} need --retransmit-listen ADDR:PORT`,
      );
    }
    return undefined;
  }
  const listen = parseUnicastEndpoint(listenText, '--retransmit-listen');
  const announceAddress = optional(values, 'announce-address');
  if ((listen.address === '0.0.0.0' || listen.address === '::') && announceAddress === undefined) {
    throw new InvalidArgumentError(
      '--retransmit-listen',
      `${listenText} is a wildcard address: name the address to announce with --announce-address`,
    );
  }
  const announceGroupText = optional(values, 'announce-group');
  const settings: LastResortSettings = {
    listen,
    announceAddress,
    keys: keysFrom(values),
    bufferBytesMax: parseInteger(required(values, 'buffer-bytes'), '--buffer-bytes', 65_536, 2 ** 40),
    repairRateBitsPerSecond: repairRateBitsPerSecondDefault,
    announceTo: parseEndpointList(optional(values, 'announce-to'), '--announce-to'),
    announceGroup:
      announceGroupText === undefined ? undefined : groupOption(values, 'announce-group', 'iface'),
    iface: optional(values, 'iface'),
  };
  return {
    ...settings,
    quietMs: lastResortQuietMs,
    lingerMsMax: parseSeconds(required(values, 'linger'), '--linger'),
  };
}

/**
 * The adaptive rate from --adapt-rate, --no-adapt-rate and --rate-floor: on by default for a file
 * sent with --retransmit-listen (where repair servers' FEEDBACK arrives) and a rate; off for live
 * streams unless asked for. Asked for without what it needs, it is a usage error.
 */
function adaptRateOptions(
  values: OptionValues,
  rate: number,
  lastResort: SourceSettings['lastResort'],
): SourceSettings['adaptRate'] {
  const asked = values['adapt-rate'] === true;
  const refused = values['no-adapt-rate'] === true;
  const floorText = optional(values, 'rate-floor');
  if (asked && refused) {
    throw new UsageError('--adapt-rate and --no-adapt-rate exclude each other');
  }
  if (asked && lastResort === undefined) {
    throw new UsageError(
      '--adapt-rate needs --retransmit-listen ADDR:PORT: repair servers send their FEEDBACK there',
    );
  }
  if (asked && rate === 0) {
    throw new UsageError('--adapt-rate needs --rate BITS: the ceiling it adapts below');
  }
  const on = asked || (!refused && values.file !== undefined && lastResort !== undefined && rate > 0);
  if (!on) {
    if (floorText !== undefined) {
      throw new UsageError(
        '--rate-floor needs an adaptive rate (--adapt-rate, or --file with --retransmit-listen)',
      );
    }
    return undefined;
  }
  const floorBitsPerSecond =
    floorText === undefined
      ? Math.max(1, Math.round(rate * adaptRateFloorFractionDefault))
      : parseRate(floorText, '--rate-floor');
  if (floorBitsPerSecond === 0 || floorBitsPerSecond > rate) {
    throw new InvalidArgumentError('--rate-floor', `${floorText} must be a rate no higher than --rate`);
  }
  return { floorBitsPerSecond };
}

/** Runs `gatecast send`; returns the exit code. */
export async function runSend(argv: string[], out: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, sendSettings);
  if (values.help === true) {
    process.stdout.write(sendHelp);
    return exitOk;
  }
  applySocketBuffer(values);
  const group = groupOption(values, 'group', 'iface');
  const iface = optional(values, 'iface');
  const packetPayloadBytes = parsePacketSize(required(values, 'packet-size'));
  const rateText = optional(values, 'rate');
  const selfPaced = values.ticker === true || values.relay !== undefined;
  const rate =
    rateText === undefined ? (selfPaced ? 0 : rateBitsPerSecondDefault) : parseRate(rateText, '--rate');
  const ttl = parseInteger(required(values, 'ttl'), '--ttl', 1, 255);
  const durationText = optional(values, 'duration');
  const durationMs = durationText === undefined ? undefined : parseSeconds(durationText, '--duration', 1);
  const sessionIdText = optional(values, 'session-id');
  const sessionId =
    sessionIdText === undefined ? undefined : parseInteger(sessionIdText, '--session-id', 1, 0xffffffff);
  const firstSequenceText = optional(values, 'first-sequence');
  const firstSequence =
    firstSequenceText === undefined
      ? undefined
      : parseInteger(firstSequenceText, '--first-sequence', 0, 0xffffffff);
  const file = optional(values, 'file');
  const sessionName = optional(values, 'session') ?? (file ? (file.split('/').pop() ?? file) : 'gatecast');
  if (Buffer.byteLength(sessionName) > 255) {
    throw new InvalidArgumentError('--session', 'name is longer than 255 bytes');
  }
  const subscriptionText = optional(values, 'subscription');
  const subscription =
    subscriptionText === undefined ? undefined : parseServerUrl(subscriptionText, '--subscription');
  if (subscription === undefined && (values['buy-repair'] === true || optional(values, 'source-address'))) {
    throw new UsageError('--buy-repair and --source-address need --subscription URL');
  }
  const token = subscription === undefined ? undefined : readToken(optional(values, 'token-file'));
  const protection = senderProtectionOptions(values, durationMs, packetPayloadBytes);
  const lastResort = lastResortOptions(values);
  const adaptRate = adaptRateOptions(values, rate, lastResort);
  const input = await openInput(values, packetPayloadBytes);
  const relayText = optional(values, 'relay');
  if (relayText !== undefined) {
    // Also the readiness signal: datagrams sent to the relay from now on are queued.
    out.write(`send: relaying ${relayText} to ${formatEndpoint(group)}\n`);
  }
  // The source closes the input when it runs; until then (a refused registration) it is ours.
  let memberTree: ReturnType<typeof followMemberTree> | undefined;
  try {
    if (values.restricted === true && subscription !== undefined && token !== undefined) {
      // The product's member tree: a member that leaves gets no key of the next crypto-period.
      memberTree = followMemberTree({
        server: subscription,
        token,
        product: required(values, 'service'),
        serviceEpoch: parseInteger(required(values, 'service-epoch'), '--service-epoch', 0, 0xffffffff),
        onEvent: (event) =>
          process.stderr.write(
            event.kind === 'tree'
              ? `send: key tree of ${required(values, 'service')} at epoch ${event.epoch}, ${event.members} member(s)\n`
              : `send: the key tree could not be fetched (${event.message}); keeping the last one\n`,
          ),
      });
      await memberTree.start();
    }
    let registered: RegisteredSession | undefined;
    if (subscription !== undefined && token !== undefined) {
      registered = await registerSession(subscription, token, {
        name: sessionName,
        group: formatEndpoint(group),
        source: optional(values, 'source-address'),
        repair: values['buy-repair'] === true,
      });
      process.stderr.write(
        `send: session ${registered.id} registered${registered.setup.length > 0 ? `, repair bought: ${registered.setup.length} retransmit server(s) set up` : ''}\n`,
      );
      if (registered.setup.length > 0) {
        await new Promise((resolve) => setTimeout(resolve, setupSettleMs)); // let them join first
      }
    }
    let sendErrorTold = false;
    const source = createSource(
      {
        group,
        iface,
        ttl,
        rateBitsPerSecond: rate,
        packetPayloadBytes,
        sessionName,
        sessionId,
        firstSequence,
        lastResort,
        adaptRate,
      },
      {
        input,
        ...(protection === undefined
          ? {}
          : {
              protection: (run: { sessionId: number; incarnation: number }) =>
                protection(run, memberTree?.tree),
            }),
        onSendError: (error) => {
          if (!sendErrorTold) {
            sendErrorTold = true;
            out.write(
              `${out.isTTY ? '\n' : ''}send: datagrams are not leaving: ${describeSendError(error)}; counting them\n`,
            );
          }
        },
      },
    );
    // A restricted run whose key epochs ran out has sent END: its summary is given, then the error.
    let exhausted: KeyEpochsExhausted | undefined;
    const stats = await runSource(source, durationMs, out, () =>
      endRegistered(subscription, token, registered),
    ).catch((error: unknown) => {
      if (!(error instanceof KeyEpochsExhausted)) {
        throw error;
      }
      exhausted = error;
      return source.stats;
    });
    out.write(`send: ${describeSocketBuffers()}\n`);
    const engine = {
      ...(values.restricted === true ? { aeadEngine: aeadEngine().name } : {}),
      ...(values.restricted === true || values.signed === true
        ? { signatureEngine: signatureEngineInfo().name }
        : {}),
      ...(protection === undefined ? {} : { manifestPackets: protection.manifestPackets }),
    };
    if (values.restricted === true) {
      out.write(`send: ${describeAeadEngine()}\n`);
    } else if (values.signed === true) {
      out.write(`send: ${describeSignatureEngine()}\n`);
    }
    if (protection !== undefined) {
      out.write(
        protection.manifestPackets === 0
          ? "send: no manifests (--manifest-packets 0): no DATA carries the source key's signature, and a receiver given --source-public takes none\n"
          : `send: a manifest signed over every ${protection.manifestPackets} DATA packets\n`,
      );
    }
    const ended = exhausted === undefined ? {} : { error: exhausted.code };
    out.write(
      `${values.json === true ? JSON.stringify({ sessionName, ...stats, ...engine, ...ended, socketBuffers: socketBufferReport(), cpuSeconds: processCpuSeconds() }) : summaryLine(stats, sessionName)}\n`,
    );
    if (exhausted !== undefined) {
      throw exhausted; // exit 2, the reason on standard error (GATECAST_ERR_KEY_EPOCHS)
    }
    // A datagram that did not leave is a packet no receiver can have, and a file stopped before
    // its end (--duration) cannot arrive whole: either way the session is not whole.
    return stats.sendErrors > 0 || fileCutShort(stats) ? exitIncomplete : exitOk;
  } finally {
    memberTree?.stop();
    await input.close();
  }
}

/** Runs the source until its end, --duration, SIGINT or SIGTERM; draws progress on a terminal. */
async function runSource(
  source: Source,
  durationMs: number | undefined,
  out: NodeJS.WriteStream,
  ended: () => Promise<void>,
): Promise<SourceStats> {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const durationTimer = durationMs === undefined ? undefined : setTimeout(stop, durationMs);
  const progressTimer = out.isTTY
    ? setInterval(() => out.write(`\r${progressLine(source.stats)}`), 200)
    : undefined;
  try {
    const stats = await source.run({ signal: controller.signal });
    if (out.isTTY) {
      out.write(`\r${progressLine(stats)}\n`);
    }
    return stats;
  } finally {
    clearInterval(progressTimer);
    clearTimeout(durationTimer);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await ended();
  }
}

/** Ends a session registered with the subscription server; says how to do it by hand if it fails. */
async function endRegistered(
  subscription: string | undefined,
  token: string | undefined,
  registered: RegisteredSession | undefined,
): Promise<void> {
  if (registered === undefined || subscription === undefined || token === undefined) {
    return;
  }
  try {
    const ended = await endSession(subscription, token, registered.id);
    process.stderr.write(
      `send: session ${registered.id} ended${ended.charge === undefined ? '' : `, repair charged ${ended.charge.amount} (minor units)`}\n`,
    );
  } catch (error) {
    process.stderr.write(
      `send: session ${registered.id} could not be ended (${(error as Error).message}); end it with: gatecast admin session end ${registered.id}\n`,
    );
  }
}

/** "EPERM (a local firewall refuses the datagram)", or the message of an error without a code. */
function describeSendError(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  const hints: Record<string, string> = {
    EPERM: 'a local firewall refuses the datagrams',
    EACCES: 'a prohibit route or the firewall refuses the group',
    ENETUNREACH: 'no route to the group',
    EHOSTUNREACH: 'no route to the group',
    ENOBUFS: 'the send queue is full',
  };
  const hint = code === undefined ? undefined : hints[code];
  return code === undefined ? error.message : `${code}${hint === undefined ? '' : ` (${hint})`}`;
}

function progressLine(stats: Readonly<SourceStats>): string {
  const elapsedS = Math.max(0.001, (performance.now() - stats.startedAtMs) / 1000);
  const rate = formatRate((stats.datagramBytesSent * 8) / elapsedS);
  const bar = stats.totalBytes
    ? `${progressBar(stats.payloadBytesSent / Math.max(1, stats.totalBytes))} `
    : '';
  return `${bar}${formatBytes(stats.payloadBytesSent)} ${stats.packetsSent} packets ${rate}   `;
}

/** Whether a file's payload was not sent to its end (stopped by --duration or a signal). */
export function fileCutShort(stats: Pick<SourceStats, 'totalBytes' | 'payloadBytesSent'>): boolean {
  return stats.totalBytes !== undefined && stats.payloadBytesSent < stats.totalBytes;
}

/**
 * One line that says what left and what did not: "sent" only when every datagram left and a file
 * was sent to its end, "INCOMPLETE" when some did not or the file was stopped before its end,
 * "NOT SENT" when none did.
 */
export function summaryLine(stats: SourceStats, name: string): string {
  const seconds = stats.elapsedMs / 1000;
  const rate = formatRate((stats.datagramBytesSent * 8) / Math.max(0.001, seconds));
  const tooLarge =
    stats.inputDroppedTooLarge > 0 ? ` (${stats.inputDroppedTooLarge} larger than the packet size)` : '';
  const extras = [
    stats.packetsEmpty > 0 ? `${stats.packetsEmpty} of them empty (relayed zero-length datagrams)` : '',
    stats.inputDropped > 0 ? `${stats.inputDropped} input datagrams dropped${tooLarge}` : '',
  ].filter(Boolean);
  const last = stats.lastResort;
  const lastResort =
    last === undefined
      ? ''
      : `; as retransmit server of last resort: ${last.nacksReceived} NACKs, ${last.repairsSent} repairs, ${last.notHeldSent} not-held`;
  const adaptive = stats.adaptiveRate;
  const adapted =
    adaptive === undefined
      ? ''
      : `; adaptive rate: ${adaptive.reports} reports, ${adaptive.decreases} cuts, lowest ${formatRate(adaptive.lowestBitsPerSecond)}, at the end ${formatRate(adaptive.bitsPerSecond)}`;
  const figures =
    `${stats.packetsSent} packets, ${formatBytes(stats.payloadBytesSent)} in ${seconds.toFixed(2)} s at ${rate}` +
    (extras.length > 0 ? `, ${extras.join(', ')}` : '') +
    lastResort +
    adapted;
  const session = `session "${name}" (id ${stats.sessionId}, run ${stats.incarnation})`;
  if (stats.sendErrors === 0 && fileCutShort(stats)) {
    return `INCOMPLETE ${session}: stopped after ${formatBytes(stats.payloadBytesSent)} of the file's ${formatBytes(stats.totalBytes ?? 0)}; sent: ${figures}`;
  }
  if (stats.sendErrors === 0) {
    return `sent ${session}: ${figures}`;
  }
  const codes = Object.entries(stats.sendErrorCodes)
    .map(([code, count]) => `${code} x${count}`)
    .join(', ');
  const verdict = stats.sendErrors >= stats.datagramsAttempted ? 'NOT SENT' : 'INCOMPLETE';
  return `${verdict} ${session}: ${stats.sendErrors} of ${stats.datagramsAttempted} datagrams did not leave (${codes}); handed to the socket: ${figures}`;
}
