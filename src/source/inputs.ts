/**
 * What a source sends: a file, standard input, a generated stock ticker, or datagrams relayed
 * from an existing UDP/RTP stream. Each input copies its next payload into a buffer the pacer
 * owns, so the hot path allocates nothing per packet.
 */
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, openSync, readSync, statSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { fileReadBlockBytes, relayQueuePacketsMax } from '../limits.js';
import { type Endpoint, isMulticast } from '../net/address.js';
import { openReceiverSocket, openUnicastSocket, type ReceiverSocket } from '../net/udp.js';
import { SessionKind, type SessionKindCode } from '../protocol/packet.js';
import { dataPayloadBytesMax } from '../protocol/sizes.js';
import { SourceInputError } from './errors.js';

/**
 * read() result when nothing is ready yet; call waitReadable(). Not 0: a zero-length payload (a
 * relayed empty datagram) is legal and is sent as a DATA packet like any other.
 */
export const inputNotReady = -2;
/** read() result at the end of the input. */
export const inputEnded = -1;

/** A source of payloads. */
export interface PayloadInput {
  readonly kind: SessionKindCode;
  readonly totalBytes: number | undefined;
  readonly sha256: Buffer | undefined;
  /** Datagrams the input had to drop (relay queue full, datagram too large). */
  readonly droppedCount: number;
  /** Of droppedCount, the datagrams larger than a packet's payload (absent: none can be). */
  readonly droppedTooLargeCount?: number;
  /**
   * Copies the next payload into out; returns its length (0 for an empty payload, which is
   * sent), inputNotReady or inputEnded.
   */
  read(out: Buffer): number;
  /** Resolves when read() may return something new. */
  waitReadable(): Promise<void>;
  close(): Promise<void>;
}

/** A one-shot signal that read() may have something again. */
class Readiness {
  #waiters: Array<() => void> = [];
  wait(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
  notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const resolve of waiters) {
      resolve();
    }
  }
}

/** Hashes a file with SHA-256 by streaming it. */
async function hashFile(path: string): Promise<Buffer> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
  }
  return hash.digest();
}

/**
 * A file input: hashed once before the session (the descriptor carries the hash), then read in
 * blocks so that a packet costs a copy, not a system call.
 */
export async function openFileInput(path: string): Promise<PayloadInput> {
  let size: number;
  let fd: number;
  try {
    const stat = statSync(path);
    if (!stat.isFile()) {
      throw new Error('not a regular file');
    }
    size = stat.size;
    fd = openSync(path, 'r');
  } catch (error) {
    throw new SourceInputError(`--file: cannot read ${path}: ${(error as Error).message}`);
  }
  const sha256 = await hashFile(path);
  const block = Buffer.allocUnsafe(fileReadBlockBytes);
  let blockLength = 0;
  let blockOffset = 0;
  let position = 0;
  let closed = false;
  return {
    kind: SessionKind.file,
    totalBytes: size,
    sha256,
    droppedCount: 0,
    read(out) {
      let written = 0;
      while (written < out.length) {
        if (blockOffset === blockLength) {
          if (position >= size) {
            break;
          }
          blockLength = readSync(fd, block, 0, block.length, position);
          blockOffset = 0;
          position += blockLength;
          if (blockLength === 0) {
            break;
          }
        }
        const n = block.copy(
          out,
          written,
          blockOffset,
          Math.min(blockLength, blockOffset + out.length - written),
        );
        written += n;
        blockOffset += n;
      }
      return written === 0 ? inputEnded : written;
    },
    waitReadable: () => Promise.resolve(),
    async close() {
      if (!closed) {
        closed = true;
        closeSync(fd);
      }
    },
  };
}

/** A stream input (standard input): sends what has arrived, up to a packet at a time. */
export function openStreamInput(stream: Readable): PayloadInput {
  const chunks: Buffer[] = [];
  let offset = 0;
  let ended = false;
  const ready = new Readiness();
  stream.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    if (chunks.length > 64) {
      stream.pause();
    }
    ready.notify();
  });
  stream.on('end', () => {
    ended = true;
    ready.notify();
  });
  stream.on('error', () => {
    ended = true;
    ready.notify();
  });
  return {
    kind: SessionKind.stream,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    read(out) {
      let written = 0;
      while (written < out.length && chunks.length > 0) {
        const head = chunks[0] as Buffer;
        const n = head.copy(out, written, offset);
        written += n;
        offset += n;
        if (offset === head.length) {
          chunks.shift();
          offset = 0;
        }
      }
      if (chunks.length < 16 && stream.isPaused()) {
        stream.resume();
      }
      if (written > 0) {
        return written;
      }
      return ended ? inputEnded : inputNotReady;
    },
    waitReadable: () => (ended || chunks.length > 0 ? Promise.resolve() : ready.wait()),
    async close() {
      stream.pause();
    },
  };
}

/** Settings of the generated stock ticker. */
export interface TickerSettings {
  readonly ticksPerSecond: number;
  /** Stop after this many ticks; runs until stopped when absent. */
  readonly tickCount?: number | undefined;
  readonly clock?: () => number;
}

const tickerSymbols = ['GCST', 'MCST', 'NETW', 'UDPX', 'IGMP', 'ROUT'];

/**
 * The longest quote the ticker writes, with room to spare: a 13-digit tick number (up to 2^40
 * ticks), a symbol, a price and a change, an ISO time and the newline take at most about 64 bytes.
 * A packet smaller than this would cut quotes, so `send --ticker` refuses one.
 */
export const tickerQuoteBytesMax = 80;

/**
 * A generated stock ticker, one quote per packet:
 * "<tick number> <symbol> <price> <change> <ISO time>\n". Tick numbers count from 1 with no gaps,
 * so a reader can check that every quote arrived in order.
 */
export function openTickerInput(settings: TickerSettings): PayloadInput {
  const clock = settings.clock ?? (() => performance.now());
  const startMs = clock();
  const intervalMs = 1000 / settings.ticksPerSecond;
  const prices = tickerSymbols.map((_, i) => 10_000 + i * 2_500);
  let tick = 0;
  let seed = 0x2545f491;
  // The ticker's own timers, cleared by close() so that none fires after it.
  const waits = new Map<NodeJS.Timeout, () => void>();
  let closed = false;
  return {
    kind: SessionKind.ticker,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    read(out) {
      if (settings.tickCount !== undefined && tick >= settings.tickCount) {
        return inputEnded;
      }
      if (clock() < startMs + tick * intervalMs) {
        return inputNotReady;
      }
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      const index = tick % tickerSymbols.length;
      const change = (seed % 41) - 20;
      const price = Math.max(100, (prices[index] ?? 10_000) + change);
      prices[index] = price;
      tick++;
      const line = `${tick} ${tickerSymbols[index]} ${(price / 100).toFixed(2)} ${change >= 0 ? '+' : ''}${(
        change / 100
      ).toFixed(2)} ${new Date().toISOString()}\n`;
      if (line.length > out.length) {
        // Never cut a quote: a reader would take the cut one as whole.
        throw new RangeError(
          `a ticker quote of ${line.length} bytes does not fit a ${out.length}-byte packet`,
        );
      }
      return out.write(line, 0, 'latin1');
    },
    waitReadable() {
      const dueMs = startMs + tick * intervalMs - clock();
      return new Promise((resolve) => {
        if (closed) {
          resolve();
          return;
        }
        const timer = setTimeout(
          () => {
            waits.delete(timer);
            resolve();
          },
          Math.max(0, dueMs),
        );
        waits.set(timer, resolve);
      });
    },
    async close() {
      closed = true;
      for (const [timer, resolve] of waits) {
        clearTimeout(timer);
        resolve();
      }
      waits.clear();
    },
  };
}

/**
 * A relay input: every datagram received on an address and port (joined when it is a group)
 * becomes one DATA payload, datagram for datagram; an empty datagram becomes an empty payload.
 * A datagram larger than payloadBytesMax, which never exceeds dataPayloadBytesMax (the largest
 * payload a REPAIR can carry, src/protocol/sizes.ts), is dropped and counted.
 */
export async function openRelayInput(
  endpoint: Endpoint,
  options: { iface?: string | undefined; payloadBytesMax: number },
): Promise<PayloadInput> {
  const payloadBytesMax = Math.min(options.payloadBytesMax, dataPayloadBytesMax);
  const queue: Buffer[] = [];
  let head = 0;
  let ended = false;
  const ready = new Readiness();
  let socket: ReceiverSocket | undefined;
  // The counts are plain fields written in place: a getter in this literal would put the object,
  // read once a packet, in V8's dictionary mode (every read a generic property lookup).
  const input = {
    kind: SessionKind.relay,
    totalBytes: undefined,
    sha256: undefined,
    droppedCount: 0,
    droppedTooLargeCount: 0,
    read(out: Buffer) {
      if (head === queue.length) {
        return ended ? inputEnded : inputNotReady;
      }
      const datagram = queue[head] as Buffer;
      head++;
      if (head > 1024 && head * 2 > queue.length) {
        queue.splice(0, head);
        head = 0;
      }
      return datagram.copy(out, 0);
    },
    waitReadable: () => (ended || head < queue.length ? Promise.resolve() : ready.wait()),
    async close() {
      ended = true;
      ready.notify();
      await socket?.close();
    },
  } satisfies PayloadInput;
  const onDatagram = (datagram: Buffer) => {
    if (datagram.length > payloadBytesMax) {
      input.droppedCount++;
      input.droppedTooLargeCount++;
      return;
    }
    if (queue.length - head >= relayQueuePacketsMax) {
      input.droppedCount++;
      return;
    }
    queue.push(datagram);
    ready.notify();
  };
  socket = await openRelaySocket(endpoint, options.iface, onDatagram);
  return input;
}

/** Opens the relay's listening socket: joined for a group, plainly bound for a unicast address. */
async function openRelaySocket(
  endpoint: Endpoint,
  iface: string | undefined,
  onDatagram: (datagram: Buffer) => void,
): Promise<ReceiverSocket> {
  if (isMulticast(endpoint.address)) {
    return openReceiverSocket({ group: endpoint, iface }, onDatagram);
  }
  return openUnicastSocket(endpoint, onDatagram);
}
