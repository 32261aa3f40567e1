/** `gatecast receive`: the plain receiver on the command line. */

import { once } from 'node:events';
import { closeSync, openSync, writevSync } from 'node:fs';
import { fileWriteBatchPayloadsMax, receiveTimeoutMsDefault } from '../limits.js';
import { formatEndpoint, parseGroup } from '../net/address.js';
import { InvalidArgumentError } from '../net/errors.js';
import { resolveInterface } from '../net/interfaces.js';
import { createReceiver, type PayloadSink, type ReceiveSummary } from '../receiver/receiver.js';
import { exitIncomplete, exitOk } from './errors.js';
import { formatBytes } from './format.js';
import { formatHelp, type OptionSpecs, optional, parseOptions, parseSeconds, required } from './options.js';

export const receiveOptions: OptionSpecs = {
  group: { type: 'string', value: 'ADDR:PORT', help: 'multicast group to join, IPv6 as [ff3e::1]:5000' },
  iface: { type: 'string', value: 'NAME|ADDR', help: 'interface to join on (default: the routing table)' },
  source: { type: 'string', value: 'ADDR', help: 'join source-specific (SSM) to this sender only' },
  out: {
    type: 'string',
    short: 'o',
    value: 'PATH|-',
    help: 'where the payload goes (default -, standard output)',
  },
  json: { type: 'boolean', help: 'print the summary as one JSON object (on standard error)' },
  timeout: {
    type: 'string',
    value: 'SECONDS',
    help: `give up after this long without a packet (default ${receiveTimeoutMsDefault / 1000})`,
  },
};

export const receiveHelp = formatHelp(
  'gatecast receive --group ADDR:PORT [--out PATH|-] [options]',
  'Receive one session, write its payload in order, and report loss truthfully.\n' +
    'Exits 0 only when the session arrived whole (and, for a file, its SHA-256 matches);\n' +
    'exits 1 and says how many packets are missing otherwise.',
  receiveOptions,
);

/**
 * A sink writing to a file: payloads gathered during one turn of the event loop go out in one
 * synchronous writev (no unbounded buffering, few system calls).
 */
function fileSink(path: string): PayloadSink {
  let fd: number;
  try {
    fd = openSync(path, 'w');
  } catch (error) {
    throw new InvalidArgumentError('--out', `cannot write ${path}: ${(error as NodeJS.ErrnoException).code}`);
  }
  let closed = false;
  let pending: Buffer[] = [];
  const flush = () => {
    let pieces = pending;
    pending = [];
    while (pieces.length > 0) {
      let written = writevSync(fd, pieces);
      // A short write leaves the rest of the pieces (and maybe part of one) to write again.
      while (pieces.length > 0 && written >= (pieces[0] as Buffer).length) {
        written -= (pieces[0] as Buffer).length;
        pieces = pieces.slice(1);
      }
      if (written > 0 && pieces.length > 0) {
        pieces[0] = (pieces[0] as Buffer).subarray(written);
      }
    }
  };
  return {
    write(payload) {
      pending.push(payload);
      if (pending.length >= fileWriteBatchPayloadsMax) {
        flush();
      }
    },
    flush,
    async close() {
      if (!closed) {
        closed = true;
        flush();
        closeSync(fd);
      }
    },
  };
}

/** A sink writing to standard output, waiting for it to drain on close. */
function stdoutSink(): PayloadSink {
  return {
    write(payload) {
      process.stdout.write(Buffer.from(payload));
    },
    async close() {
      if (process.stdout.writableNeedDrain) {
        await once(process.stdout, 'drain');
      }
    },
  };
}

/** Runs `gatecast receive`; returns the exit code. */
export async function runReceive(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, receiveOptions);
  if (values.help === true) {
    process.stdout.write(receiveHelp);
    return exitOk;
  }
  const group = parseGroup(required(values, 'group'), '--group');
  const iface = optional(values, 'iface');
  if (iface !== undefined) {
    resolveInterface(iface, group.family);
  }
  const timeoutText = optional(values, 'timeout');
  const timeoutMs =
    timeoutText === undefined ? receiveTimeoutMsDefault : parseSeconds(timeoutText, '--timeout');
  const outPath = optional(values, 'out') ?? '-';
  const sink = outPath === '-' ? stdoutSink() : fileSink(outPath);
  const receiver = createReceiver({ group, iface, source: optional(values, 'source'), timeoutMs }, { sink });
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const summary = await receiver.run({
      signal: controller.signal,
      onJoined: (socket) =>
        err.write(
          `joined ${formatEndpoint(group)}${socket.iface ? ` on ${socket.iface.name}` : ''}, waiting for a session\n`,
        ),
    });
    err.write(`${values.json === true ? JSON.stringify(summary) : describeReceive(summary)}\n`);
    return summary.outcome === 'complete' ? exitOk : exitIncomplete;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/** One line that says what arrived and what did not. */
export function describeReceive(summary: ReceiveSummary): string {
  const name = summary.sessionName === undefined ? 'no session' : `session "${summary.sessionName}"`;
  const malformed = Object.values(summary.malformed).reduce((sum, count) => sum + (count ?? 0), 0);
  const extras = [
    summary.duplicates > 0 ? `${summary.duplicates} duplicates` : '',
    malformed > 0 ? `${malformed} malformed dropped` : '',
    summary.otherSession > 0 ? `${summary.otherSession} from other sessions` : '',
  ].filter(Boolean);
  const tail = extras.length > 0 ? ` (${extras.join(', ')})` : '';
  const figures = `${summary.packetsDelivered} packets, ${formatBytes(summary.bytesDelivered)} in ${(
    summary.elapsedMs / 1000
  ).toFixed(2)} s`;
  switch (summary.outcome) {
    case 'complete':
      return `received ${name} whole: ${figures}${summary.sha256Expected ? ', SHA-256 ok' : ''}${tail}`;
    case 'hash-mismatch':
      return `INCOMPLETE ${name}: ${figures}, SHA-256 ${summary.sha256} does not match ${summary.sha256Expected}${tail}`;
    case 'timeout':
      return `INCOMPLETE ${name}: timed out, ${summary.packetsMissing} packets missing, ${figures}${tail}`;
    case 'aborted':
      return `stopped ${name}: ${summary.packetsMissing} packets missing, ${figures}${tail}`;
    default:
      return `INCOMPLETE ${name}: ${summary.packetsMissing} packets missing, ${figures}${tail}`;
  }
}
