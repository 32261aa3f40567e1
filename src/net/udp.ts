/**
 * UDP multicast sockets over IPv4 and IPv6: any-source and source-specific joins, interface
 * selection, TTL / hop limit and buffer sizes. Sockets are owned objects with an idempotent close().
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import {
  multicastTtlDefault,
  receiveBufferBytesDefault,
  sendBufferBytesDefault,
  socketBufferBytesMax,
  socketBufferBytesMin,
  socketBufferGrantsMax,
} from '../limits.js';
import { type Endpoint, isScopedGroup, multicastScope } from './address.js';
import { SocketError } from './errors.js';
import { type ResolvedInterface, resolveInterface } from './interfaces.js';
import { kernelDrops, socketFd, socketInode } from './socket-drops.js';

/** Which buffer of a socket. */
export type SocketBufferKind = 'receive' | 'send';

/**
 * What the kernel granted for one socket buffer. Linux caps a request at net.core.rmem_max or
 * wmem_max and then doubles it for its own bookkeeping (socket(7), SO_RCVBUF): grantedBytes is
 * the doubled figure the kernel reports, so it is twice askedBytes when nothing capped it.
 */
export interface SocketBufferGrant {
  readonly kind: SocketBufferKind;
  /** The socket's purpose and address, e.g. "receive 239.1.2.3:5000". */
  readonly socket: string;
  readonly askedBytes: number;
  readonly grantedBytes: number;
  /** The sysctl cap in force when it was asked (undefined where /proc does not say). */
  readonly capBytes: number | undefined;
  /** True when the cap made the kernel grant less than was asked. */
  readonly capped: boolean;
}

/** The buffer sizes asked for sockets whose opener names none (set from --socket-buffer). */
const socketBufferAsked: Record<SocketBufferKind, number> = {
  receive: receiveBufferBytesDefault,
  send: sendBufferBytesDefault,
};
const socketBufferGrants: SocketBufferGrant[] = [];

/**
 * Sets the receive and send buffer every socket opened from now on asks for, unless its opener
 * names its own. Throws SocketError outside socketBufferBytesMin..socketBufferBytesMax.
 */
export function setSocketBufferBytes(bytes: number): void {
  if (!Number.isInteger(bytes) || bytes < socketBufferBytesMin || bytes > socketBufferBytesMax) {
    throw new SocketError(
      `socket buffer of ${bytes} bytes is out of range (${socketBufferBytesMin}-${socketBufferBytesMax})`,
    );
  }
  socketBufferAsked.receive = bytes;
  socketBufferAsked.send = bytes;
}

/** The sizes sockets ask for now. */
export function socketBufferBytes(): Readonly<Record<SocketBufferKind, number>> {
  return { ...socketBufferAsked };
}

/** What the kernel granted to the sockets this process opened (the most recent ones, bounded). */
export function socketBufferReport(): readonly SocketBufferGrant[] {
  return [...socketBufferGrants];
}

/** net.core.rmem_max or wmem_max, or undefined where it cannot be read. */
function socketBufferCap(kind: SocketBufferKind): number | undefined {
  try {
    const text = readFileSync(`/proc/sys/net/core/${kind === 'receive' ? 'rmem_max' : 'wmem_max'}`, 'utf8');
    const value = Number(text.trim());
    return Number.isSafeInteger(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

/** Asks for a buffer size, reads back what the kernel granted, and records it. */
function sizeBuffer(socket: Socket, kind: SocketBufferKind, asked: number, purpose: string): void {
  apply(`${kind} buffer`, () =>
    kind === 'receive' ? socket.setRecvBufferSize(asked) : socket.setSendBufferSize(asked),
  );
  const grantedBytes = kind === 'receive' ? socket.getRecvBufferSize() : socket.getSendBufferSize();
  const capBytes = socketBufferCap(kind);
  socketBufferGrants.push({
    kind,
    socket: purpose,
    askedBytes: asked,
    grantedBytes,
    capBytes,
    capped: capBytes !== undefined && asked > capBytes,
  });
  if (socketBufferGrants.length > socketBufferGrantsMax) {
    socketBufferGrants.shift();
  }
}

/** Called for each datagram; must not throw (the handler counts and drops what it cannot use). */
export type DatagramHandler = (datagram: Buffer, remote: RemoteInfo) => void;

/** Options for joining a group. */
export interface ReceiverSocketOptions {
  readonly group: Endpoint;
  /** Interface name or address; the kernel's choice when absent. */
  readonly iface?: string | undefined;
  /** Source address for a source-specific join (SSM); any-source when absent. */
  readonly source?: string | undefined;
  readonly receiveBufferBytes?: number | undefined;
  readonly signal?: AbortSignal | undefined;
}

/** A socket joined to a group. */
export interface ReceiverSocket extends AsyncDisposable {
  readonly iface: ResolvedInterface | undefined;
  /** The receive buffer the kernel granted. */
  readonly receiveBufferBytes: number;
  /**
   * Datagrams the kernel dropped for this socket since it opened (src/net/socket-drops.ts);
   * undefined where the system does not tell, or on a transport without a kernel.
   */
  kernelDrops?(): number | undefined;
  close(): Promise<void>;
}

function socketType(endpoint: Endpoint): 'udp4' | 'udp6' {
  return endpoint.family === 4 ? 'udp4' : 'udp6';
}

/** Binds a socket, turning a bind error into a SocketError that names the endpoint. */
async function bindSocket(socket: Socket, port: number, address: string): Promise<void> {
  const failed = once(socket, 'error');
  const bound = once(socket, 'listening');
  socket.bind({ port, address, exclusive: false });
  const winner = await Promise.race([bound.then(() => undefined), failed.then(([error]) => error as Error)]);
  if (winner !== undefined) {
    socket.close();
    throw new SocketError(`cannot bind ${address}:${port}: ${winner.message}`);
  }
}

/** Runs a socket option call, turning its exception into a SocketError naming what was attempted. */
function apply(what: string, call: () => void): void {
  try {
    call();
  } catch (error) {
    throw new SocketError(`${what}: ${(error as Error).message}`);
  }
}

/** Closes a socket once; later calls are no-ops. isClosed() is true from the first call on. */
function closer(socket: Socket): { close: () => Promise<void>; isClosed: () => boolean } {
  let closed: Promise<void> | undefined;
  return {
    close: () => {
      closed ??= new Promise<void>((resolve) => {
        try {
          socket.close(() => resolve());
        } catch {
          resolve();
        }
      });
      return closed;
    },
    isClosed: () => closed !== undefined,
  };
}

/**
 * What a sending socket could not send. A send never throws: a send after close() (a timer of an
 * owner that is shutting down) is dropped and counted, and a send the kernel or node:dgram refuses
 * (EPERM from a firewall, ENETUNREACH, ...) is counted and handed to the send's callback.
 */
export interface SendCounters {
  /** Sends attempted after close(). */
  afterClose: number;
  /** Sends that failed; the error (its code: EPERM, ENETUNREACH, ...) went to the callback. */
  failed: number;
}

type SendDone = (error: Error | null) => void;

/**
 * A socket's send with the rules of SendCounters; done, when given, is always called once. The
 * callback handed to node:dgram is made once per done, not once per datagram: a sender hands the
 * same done with every send, and a closure per datagram was garbage at line rate.
 */
class GuardedSender {
  readonly counters: SendCounters = { afterClose: 0, failed: 0 };
  readonly #isClosed: () => boolean;
  readonly #countOnly: SendDone;
  #lastDone: SendDone | undefined;
  #lastCallback: SendDone | undefined;

  constructor(isClosed: () => boolean) {
    this.#isClosed = isClosed;
    this.#countOnly = (error) => {
      if (error) {
        this.counters.failed++;
      }
    };
  }

  /** The callback for node:dgram, or undefined when the socket is closed (counted, done told). */
  callback(done: SendDone | undefined): SendDone | undefined {
    if (this.#isClosed()) {
      this.counters.afterClose++;
      if (done !== undefined) {
        process.nextTick(done, new SocketError('send after the socket was closed'));
      }
      return undefined;
    }
    if (done === undefined) {
      return this.#countOnly;
    }
    if (done !== this.#lastDone) {
      this.#lastDone = done;
      this.#lastCallback = (error) => {
        if (error) {
          this.counters.failed++;
        }
        done(error);
      };
    }
    return this.#lastCallback;
  }

  /** A send that threw: counted, and done told on the next tick. */
  failed(error: unknown, done: SendDone | undefined): void {
    this.counters.failed++;
    if (done !== undefined) {
      process.nextTick(done, error instanceof Error ? error : new SocketError(String(error)));
    }
  }
}

/**
 * The address to bind or connect to for a group: a scoped IPv6 group (link-local ff02::/16 and
 * any scope up to 2, RFC 4291 section 2.7) names its interface as a zone, "ff02::1%eth0".
 */
function scopedAddress(group: Endpoint, iface: ResolvedInterface | undefined): string {
  if (!isScopedGroup(group)) {
    return group.address;
  }
  if (iface === undefined) {
    throw new SocketError(
      `${group.address} is a scoped group (scope ${multicastScope(group.address)}): it needs an interface`,
    );
  }
  return `${group.address}%${iface.name}`;
}

/**
 * Opens a socket bound to the group's port (on the group address, so that other groups on the
 * same port stay out) and joins the group, source-specific when a source is given.
 */
export async function openReceiverSocket(
  options: ReceiverSocketOptions,
  onDatagram: DatagramHandler,
): Promise<ReceiverSocket> {
  const { group } = options;
  const iface = options.iface === undefined ? undefined : resolveInterface(options.iface, group.family);
  const bindAddress = scopedAddress(group, iface);
  const socket = createSocket({ type: socketType(group), reuseAddr: true });
  socket.on('message', onDatagram);
  await bindSocket(socket, group.port, bindAddress);
  const { close } = closer(socket);
  try {
    sizeBuffer(
      socket,
      'receive',
      options.receiveBufferBytes ?? socketBufferAsked.receive,
      `receive ${group.address}:${group.port}`,
    );
    try {
      if (options.source === undefined) {
        socket.addMembership(group.address, iface?.socketInterface);
      } else {
        socket.addSourceSpecificMembership(options.source, group.address, iface?.socketInterface);
      }
    } catch (error) {
      throw joinFailure(group, options.source, iface, error as Error);
    }
  } catch (error) {
    await close();
    throw error;
  }
  // Errors after setup (e.g. ICMP-induced) must not crash the process; they are not per-packet.
  socket.on('error', () => undefined);
  options.signal?.addEventListener('abort', () => void close(), { once: true });
  const fd = socketFd(socket);
  const inode = fd === undefined ? undefined : socketInode(fd);
  return {
    iface,
    receiveBufferBytes: socket.getRecvBufferSize(),
    kernelDrops: () => (inode === undefined ? undefined : kernelDrops(inode)),
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Opens a plain unicast socket bound to an address and port (a relay's input). */
export async function openUnicastSocket(
  endpoint: Endpoint,
  onDatagram: DatagramHandler,
): Promise<ReceiverSocket> {
  const socket = createSocket({ type: socketType(endpoint), reuseAddr: true });
  socket.on('message', onDatagram);
  await bindSocket(socket, endpoint.port, endpoint.address);
  const { close } = closer(socket);
  try {
    sizeBuffer(socket, 'receive', socketBufferAsked.receive, `relay ${endpoint.address}:${endpoint.port}`);
  } catch (error) {
    await close();
    throw error;
  }
  socket.on('error', () => undefined);
  return {
    iface: undefined,
    receiveBufferBytes: socket.getRecvBufferSize(),
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Options for a sending socket. */
export interface SenderSocketOptions {
  readonly group: Endpoint;
  readonly iface?: string | undefined;
  /** TTL (IPv4) or hop limit (IPv6); above 1 to cross a router. */
  readonly ttl?: number | undefined;
  readonly sendBufferBytes?: number | undefined;
  /** Deliver our own packets to listeners on this host (needed on loopback). Default true. */
  readonly loopback?: boolean | undefined;
}

/** A socket that sends to one group. */
export interface SenderSocket extends AsyncDisposable {
  readonly iface: ResolvedInterface | undefined;
  /** What could not be sent (absent on sockets that do not count, e.g. a test's fake). */
  readonly sendCounters?: Readonly<SendCounters>;
  /**
   * Sends the first length bytes of buffer as one datagram; done is called once, when the kernel
   * has taken it (the buffer is free again) or with the error that kept it from leaving. Never
   * throws, also after close().
   */
  send(buffer: Buffer, length: number, done?: (error: Error | null) => void): void;
  close(): Promise<void>;
}

/** Opens a socket that sends to a group through the chosen interface. */
export async function openSenderSocket(options: SenderSocketOptions): Promise<SenderSocket> {
  const { group } = options;
  const iface = options.iface === undefined ? undefined : resolveInterface(options.iface, group.family);
  const destination = scopedAddress(group, iface);
  const socket = createSocket({ type: socketType(group) });
  const bindAddress = group.family === 4 ? (iface?.address ?? '0.0.0.0') : '::';
  await bindSocket(socket, 0, bindAddress);
  const { close, isClosed } = closer(socket);
  try {
    sizeBuffer(
      socket,
      'send',
      options.sendBufferBytes ?? socketBufferAsked.send,
      `send ${group.address}:${group.port}`,
    );
    apply('ttl', () => socket.setMulticastTTL(options.ttl ?? multicastTtlDefault));
    apply('loopback', () => socket.setMulticastLoopback(options.loopback ?? true));
    if (iface !== undefined) {
      apply(`interface ${iface.name}`, () => socket.setMulticastInterface(iface.socketInterface));
    }
    await connectSocket(socket, group.port, destination);
  } catch (error) {
    await close();
    throw error;
  }
  socket.on('error', () => undefined);
  const guard = new GuardedSender(isClosed);
  return {
    iface,
    sendCounters: guard.counters,
    send(buffer, length, done) {
      const callback = guard.callback(done);
      if (callback === undefined) {
        return;
      }
      try {
        // A whole buffer goes as it is: with an offset and a length node:dgram makes a new view of
        // it per datagram (garbage on every packet of a source or a repair server's S2).
        if (length === buffer.length) {
          socket.send(buffer, callback);
        } else {
          socket.send(buffer, 0, length, callback);
        }
      } catch (error) {
        guard.failed(error, done);
      }
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Connects a socket to the group, so that a send skips node:dgram's per-send address lookup. A
 * group without a route fails here (ENETUNREACH, EACCES for a prohibit route), named.
 */
async function connectSocket(socket: Socket, port: number, address: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const failed = (error: Error) =>
      reject(new SocketError(`connect ${address}:${port}: ${describe(error)}`));
    socket.once('error', failed);
    try {
      // The callback gets the error when connect fails (node:dgram emits no 'error' then).
      socket.connect(port, address, (error?: Error) => {
        socket.off('error', failed);
        if (error) {
          failed(error);
        } else {
          resolve();
        }
      });
    } catch (error) {
      socket.off('error', failed);
      failed(error as Error);
    }
  });
}

/**
 * A join that failed, named by the options that chose it: the group (--group), the source, and the
 * interface (--iface, or none: then the kernel picks one from the routes, and ENODEV means no route
 * picked any).
 */
function joinFailure(
  group: Endpoint,
  source: string | undefined,
  iface: ResolvedInterface | undefined,
  error: Error,
): SocketError {
  const code = (error as NodeJS.ErrnoException).code ?? error.message;
  const what = `${source === undefined ? '' : `${source} -> `}${group.address}`;
  const where =
    iface === undefined
      ? 'with no --iface'
      : `on --iface ${iface.name} (${iface.socketInterface === iface.name ? iface.address : iface.socketInterface})`;
  const hint =
    code === 'ENODEV'
      ? iface === undefined
        ? 'no multicast route picks an interface for the group: name one with --iface'
        : `${iface.name} cannot join the group: name another with --iface`
      : errorHints[code];
  return new SocketError(
    `--group ${what}: cannot join ${where}: ${code}${hint === undefined ? '' : ` (${hint})`}`,
  );
}

/** An error's code and message, e.g. "ENETUNREACH (no route to the group)". */
function describe(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  const hint = code === undefined ? undefined : errorHints[code];
  return `${code ?? error.message}${hint === undefined ? '' : ` (${hint})`}`;
}

const errorHints: Record<string, string> = {
  ENETUNREACH: 'no route to the group: add a multicast route or name the interface with --iface',
  EHOSTUNREACH: 'no route to the group: add a multicast route or name the interface with --iface',
  EACCES: 'a prohibit route or the firewall refuses the group',
  EPERM: 'a local firewall refuses the datagram',
  EADDRNOTAVAIL: 'the interface has no usable address',
  EINVAL: 'invalid address for this interface',
};

/** A unicast socket that both receives and sends: the control channel of a server. */
export interface ControlSocket extends AsyncDisposable {
  /** The bound address and port (the port is the kernel's choice when 0 was asked). */
  readonly local: Endpoint;
  /** Bytes handed to the kernel so far. */
  readonly bytesSent: number;
  /** What could not be sent (absent on sockets that do not count, e.g. a test's fake). */
  readonly sendCounters?: Readonly<SendCounters>;
  /** Sends one datagram; never throws, also after close() (see SendCounters). */
  send(datagram: Buffer, port: number, address: string): void;
  close(): Promise<void>;
}

/** Opens a control socket bound to an address and port. */
export async function openControlSocket(
  endpoint: Endpoint,
  onDatagram: DatagramHandler,
): Promise<ControlSocket> {
  const socket = createSocket({ type: socketType(endpoint), reuseAddr: false });
  socket.on('message', onDatagram);
  await bindSocket(socket, endpoint.port, endpoint.address);
  const { close, isClosed } = closer(socket);
  try {
    const purpose = `control ${endpoint.address}:${endpoint.port}`;
    sizeBuffer(socket, 'receive', socketBufferAsked.receive, purpose);
    sizeBuffer(socket, 'send', socketBufferAsked.send, purpose);
  } catch (error) {
    await close();
    throw error;
  }
  socket.on('error', () => undefined);
  const bound = socket.address();
  const guard = new GuardedSender(isClosed);
  // bytesSent is a plain field written in place: a getter in this literal would put the object,
  // which answers NACKs packet by packet, in V8's dictionary mode (every call a generic lookup).
  const control: ControlSocket & { bytesSent: number } = {
    local: { address: bound.address, port: bound.port, family: endpoint.family },
    bytesSent: 0,
    sendCounters: guard.counters,
    send(datagram, port, address) {
      const callback = guard.callback(undefined);
      if (callback === undefined) {
        return;
      }
      try {
        socket.send(datagram, port, address, callback);
        control.bytesSent += datagram.length;
      } catch (error) {
        guard.failed(error, undefined);
      }
    },
    close,
    [Symbol.asyncDispose]: close,
  };
  return control;
}
