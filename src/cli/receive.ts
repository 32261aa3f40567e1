/** `gatecast receive`: the plain receiver on the command line. */

import { closeSync, openSync, writevSync } from 'node:fs';
import { aeadEngine, signatureEngineInfo } from '../crypto/aead-engine.js';
import type { TokenRefused } from '../crypto/errors.js';
import { createReceiverProtection, type ReceiverProtection } from '../crypto/restricted-session.js';
import { createSignedSessionGate, type SignedSessionGate } from '../crypto/signed-session.js';
import type { Token } from '../crypto/token.js';
import {
  fileWriteBatchPayloadsMax,
  groupKeyAsksPerSecondMax,
  groupKeySuspectAsksPerSecondMax,
} from '../limits.js';
import { formatEndpoint } from '../net/address.js';
import { InvalidArgumentError } from '../net/errors.js';
import { socketBufferReport } from '../net/udp.js';
import { createReceiver, type PayloadSink, type ReceiveSummary } from '../receiver/receiver.js';
import { receiveSettings } from './command-settings.js';
import { exitIncomplete, exitOk } from './errors.js';
import { formatBytes, processCpuSeconds } from './format.js';
import { formatHelp, groupOption, optional, parseOptions, parseSeconds, required } from './options.js';
import {
  describeAeadEngine,
  describeSignatureEngine,
  sourcePublicKeyOption,
  tokenOption,
} from './restricted.js';
import { applySocketBuffer, describeSocketBuffers } from './socket-buffer.js';

export const receiveHelp = formatHelp(
  'gatecast receive --group ADDR:PORT [--out PATH|-] [options]',
  'Receive one session, write its payload in order, and report loss truthfully.\n' +
    'Exits 0 only when the session arrived whole (and, for a file, its SHA-256 matches);\n' +
    'exits 1 and says how many packets are missing otherwise. A reader that closes standard\n' +
    'output (| head) ends the receive quietly, exit 0: what was written is the session, in order.',
  receiveSettings,
);

/**
 * A sink that can fail under the receiver: it stops the receive instead of throwing. Its state is
 * read through methods: a getter in a sink's object literal would put the object, written once a
 * packet, in V8's dictionary mode.
 */
interface OutputSink extends PayloadSink {
  /** Set when the output failed: the reader closed it (EPIPE), or a write error (ENOSPC, EIO). */
  failure(): NodeJS.ErrnoException | undefined;
  /** Bytes the output took. */
  bytesWritten(): number;
}

/** The code of an output error ("EPIPE", "ENOSPC"), or its message. */
function errorCode(error: NodeJS.ErrnoException): string {
  return error.code ?? error.message;
}

/**
 * A sink writing to a file: payloads gathered during one turn of the event loop go out in one
 * synchronous writev (no unbounded buffering, few system calls). A write error (a full disk)
 * stops the receive through onFailed; nothing is thrown into the receiver's socket handler.
 */
function fileSink(path: string, onFailed: () => void): OutputSink {
  let fd: number;
  try {
    fd = openSync(path, 'w');
  } catch (error) {
    throw new InvalidArgumentError('--out', `cannot write ${path}: ${(error as NodeJS.ErrnoException).code}`);
  }
  let closed = false;
  let failure: NodeJS.ErrnoException | undefined;
  let bytesWritten = 0;
  let pending: Buffer[] = [];
  const writeOut = (pieces: Buffer[]) => {
    // The whole batch in one writev; a short write (rare) leaves the rest, maybe part of a piece,
    // to write again. The pieces are not copied along the way: a manifest's release hands this
    // sink 64 payloads at once.
    let first = 0;
    while (first < pieces.length) {
      let written = writevSync(fd, first === 0 ? pieces : pieces.slice(first));
      bytesWritten += written;
      while (first < pieces.length && written >= (pieces[first] as Buffer).length) {
        written -= (pieces[first] as Buffer).length;
        first++;
      }
      if (written > 0 && first < pieces.length) {
        pieces[first] = (pieces[first] as Buffer).subarray(written);
      }
    }
  };
  const flush = () => {
    const pieces = pending;
    pending = [];
    if (failure !== undefined || pieces.length === 0) {
      return;
    }
    try {
      writeOut(pieces);
    } catch (error) {
      failure = error as NodeJS.ErrnoException;
      onFailed();
    }
  };
  return {
    failure: () => failure,
    bytesWritten: () => bytesWritten,
    write(payload) {
      if (failure !== undefined) {
        return;
      }
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

/**
 * A sink writing to standard output. When the reader goes away (`receive | head -c 100`: EPIPE)
 * or the output fails, it stops writing and calls onFailed, which ends the receive; close() waits
 * for the output to drain, or to fail.
 */
function stdoutSink(onFailed: () => void): OutputSink {
  const stdout = process.stdout;
  let failure: NodeJS.ErrnoException | undefined;
  let bytesWritten = 0;
  // Kept for the life of the process: a late EPIPE must not become an uncaught 'error'.
  stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (failure === undefined) {
      failure = error;
      onFailed();
    }
  });
  return {
    failure: () => failure,
    bytesWritten: () => bytesWritten,
    write(payload) {
      if (failure !== undefined || stdout.destroyed) {
        return;
      }
      bytesWritten += payload.length;
      stdout.write(Buffer.from(payload));
    },
    async close() {
      if (failure === undefined && !stdout.destroyed && stdout.writableNeedDrain) {
        await new Promise<void>((resolve) => {
          stdout.once('drain', resolve);
          stdout.once('close', resolve);
          stdout.once('error', () => resolve());
        });
      }
    },
  };
}

/** Runs `gatecast receive`; returns the exit code. */
export async function runReceive(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, receiveSettings);
  if (values.help === true) {
    process.stdout.write(receiveHelp);
    return exitOk;
  }
  applySocketBuffer(values);
  const group = groupOption(values, 'group', 'iface', 'source');
  const iface = optional(values, 'iface');
  const timeoutMs = parseSeconds(required(values, 'timeout'), '--timeout', 1);
  const outPath = required(values, 'out');
  const controller = new AbortController();
  const stop = () => controller.abort();
  const sourcePublicKey = sourcePublicKeyOption(values);
  const signed = sourcePublicKey === undefined ? undefined : createSignedSessionGate(sourcePublicKey);
  const token: Token | undefined = tokenOption(values);
  let refusal: TokenRefused | undefined;
  const protection: ReceiverProtection | undefined =
    token === undefined
      ? undefined
      : createReceiverProtection(token, (refused) => {
          refusal ??= refused;
          stop();
        });
  let sink: OutputSink;
  try {
    sink = outPath === '-' ? stdoutSink(stop) : fileSink(outPath, stop);
  } catch (error) {
    token?.close();
    throw error;
  }
  const receiver = createReceiver(
    { group, iface, source: optional(values, 'source'), timeoutMs },
    { sink, protection, signed },
  );
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const summary = await receiver.run({
      signal: controller.signal,
      onJoined: (socket) =>
        err.write(
          `joined ${formatEndpoint(group)}${socket.iface ? ` on ${socket.iface.name}` : ''}, waiting for a session\nreceive: ${describeSocketBuffers()}\n${token === undefined ? (signed === undefined ? '' : `receive: ${describeSignatureEngine()}\n`) : `receive: ${describeAeadEngine()}\n`}`,
        ),
    });
    if (refusal !== undefined) {
      // The token will not release this session's keys: nothing was decoded, and the user is told why.
      throw refusal;
    }
    if (sink.failure() !== undefined) {
      return outputFailed(sink, outPath, summary, values.json === true, err);
    }
    const restricted = {
      ...(protection === undefined ? {} : { restricted: protection.stats, aeadEngine: aeadEngine().name }),
      ...(signed === undefined ? {} : { signed: signed.stats }),
      ...(protection === undefined && signed === undefined
        ? {}
        : { signatureEngine: signatureEngineInfo().name }),
    };
    err.write(
      `${values.json === true ? JSON.stringify({ ...summary, ...restricted, socketBuffers: socketBufferReport(), cpuSeconds: processCpuSeconds() }) : describeReceive(summary, protection?.stats, signed?.stats)}\n`,
    );
    return summary.outcome === 'complete' ? exitOk : exitIncomplete;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await receiver.close(); // idempotent; closes the output also when the join failed
    token?.close();
  }
}

/**
 * The output went away during the receive. A reader that closed it (EPIPE: `| head -c 100`) had
 * what it wanted, and every byte written was the locked session's, in order: the receive ends
 * quietly with exit 0. Any other write error (ENOSPC, EIO) means the output is not what was
 * asked for: one line naming --out, exit 2.
 */
function outputFailed(
  sink: OutputSink,
  outPath: string,
  summary: ReceiveSummary,
  json: boolean,
  err: NodeJS.WriteStream,
): number {
  const code = errorCode(sink.failure() as NodeJS.ErrnoException);
  const output = outPath === '-' ? 'standard output' : outPath;
  if (code !== 'EPIPE') {
    throw new InvalidArgumentError(
      '--out',
      `cannot write ${output}: ${code} after ${sink.bytesWritten()} bytes`,
    );
  }
  const name = summary.sessionName === undefined ? 'no session' : `session "${summary.sessionName}"`;
  err.write(
    json
      ? `${JSON.stringify({ ...summary, outcome: 'output-closed', bytesWritten: sink.bytesWritten() })}\n`
      : `stopped: ${output} closed by its reader after ${formatBytes(sink.bytesWritten())} of ${name}, written in order\n`,
  );
  return exitOk;
}

/** One line that says what arrived and what did not. */
export function describeReceive(
  summary: ReceiveSummary,
  restricted?: ReceiverProtection['stats'],
  signed?: SignedSessionGate['stats'],
): string {
  const name = summary.sessionName === undefined ? 'no session' : `session "${summary.sessionName}"`;
  const malformed = Object.values(summary.malformed).reduce((sum, count) => sum + (count ?? 0), 0);
  const keysRejected = Object.values(restricted?.keysRejected ?? {}).reduce((sum, count) => sum + count, 0);
  const forged = Object.values(signed?.forged ?? {}).reduce((sum, count) => sum + count, 0);
  const unauthenticated = (signed?.unauthenticated ?? 0) + (signed?.holding ?? 0);
  const rejectedFor = (reason: string) => restricted?.keysRejected[reason] ?? 0;
  /** What the token said of the last KEY it refused for `reason`, to follow a hint. */
  const said = (reason: string) => {
    const why = restricted?.keysRejectedWhy?.[reason];
    return why === undefined ? '' : ` (the token: ${why})`;
  };
  // Every KEY refused for the same reason, none taken: the grant does not fit this stream.
  const noKey = restricted !== undefined && restricted.keysAccepted === 0;
  const extras = [
    noKey && rejectedFor('bad-signature') > 0 && rejectedFor('bad-signature') === keysRejected
      ? "no KEY message is signed by the source key this token's grant names: the stream comes from another source than the grant's, or the grant was made for another one (gatecast token grant --source-public)" +
        said('bad-signature')
      : '',
    noKey && rejectedFor('bad-key-message') > 0 && rejectedFor('bad-key-message') === keysRejected
      ? "no KEY message opens under the service key of this token's grant: the stream is sealed under another key for this service than the grant's, or the grant was made with another one (gatecast token grant --service-key-file)" +
        said('bad-key-message')
      : '',
    noKey && rejectedFor('rollback') > 0 && rejectedFor('rollback') === keysRejected
      ? "every KEY message is older than the newest this token accepted (its rollback counter, gatecast token show): the stream's clock is behind that, or the KEYs are replayed" +
        said('rollback')
      : '',
    forged > 0 ? `${forged} forged datagrams refused (${JSON.stringify(signed?.forged)})` : '',
    unauthenticated > 0 ? `${unauthenticated} datagrams not authenticated by the source key, not used` : '',
    summary.encryptedDropped > 0
      ? `${summary.encryptedDropped} encrypted packets not decoded: the session is restricted, receive it with --token`
      : '',
    keysRejected > 0
      ? `${keysRejected} KEY messages rejected (${JSON.stringify(restricted?.keysRejected)})`
      : '',
    (restricted?.packetsBadTag ?? 0) > 0
      ? `${restricted?.packetsBadTag} forged or altered packets dropped`
      : '',
    (restricted?.packetsClear ?? 0) > 0
      ? `${restricted?.packetsClear} DATA sent in clear dropped: with --token only encrypted DATA is written (a session sent in clear is received without --token; in a restricted one, clear DATA is not the source's)`
      : '',
    (restricted?.signaturesUnchecked ?? 0) > 0
      ? `${restricted?.signaturesUnchecked} source signatures not checked: give --source-public to check that the packets come from the source, not from another holder of the key`
      : '',
    (restricted?.groupKeysAsked ?? 0) > 0
      ? `${restricted?.groupKeysAsked} group ${restricted?.groupKeysAsked === 1 ? 'key' : 'keys'} asked of the token in every-n-th-packet mode`
      : '',
    (restricted?.groupKeysNotAsked ?? 0) > 0
      ? `${restricted?.groupKeysNotAsked} packets dropped: their group key was not asked of the token (over its ${groupKeyAsksPerSecondMax} a second near the stream, or ${groupKeySuspectAsksPerSecondMax} a second for far-off groups and for groups with many seeds: forged DATA, or a long gap; or refused)`
      : '',
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
