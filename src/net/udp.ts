/**
 * UDP multicast sockets over IPv4 and IPv6: any-source and source-specific joins, interface
 * selection, TTL / hop limit and buffer sizes. Sockets are owned objects with an idempotent close().
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { multicastTtlDefault, receiveBufferBytesDefault, sendBufferBytesDefault } from '../limits.js';
import type { Endpoint } from './address.js';
import { SocketError } from './errors.js';
import { type ResolvedInterface, resolveInterface } from './interfaces.js';

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

/** Closes a socket once; later calls are no-ops. */
function closer(socket: Socket): () => Promise<void> {
  let closed: Promise<void> | undefined;
  return () => {
    closed ??= new Promise<void>((resolve) => {
      try {
        socket.close(() => resolve());
      } catch {
        resolve();
      }
    });
    return closed;
  };
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
  const socket = createSocket({ type: socketType(group), reuseAddr: true });
  socket.on('message', onDatagram);
  await bindSocket(socket, group.port, group.address);
  const close = closer(socket);
  try {
    apply('receive buffer', () =>
      socket.setRecvBufferSize(options.receiveBufferBytes ?? receiveBufferBytesDefault),
    );
    if (options.source === undefined) {
      apply(`join ${group.address}`, () => socket.addMembership(group.address, iface?.socketInterface));
    } else {
      const source = options.source;
      apply(`join ${source} -> ${group.address}`, () =>
        socket.addSourceSpecificMembership(source, group.address, iface?.socketInterface),
      );
    }
  } catch (error) {
    await close();
    throw error;
  }
  // Errors after setup (e.g. ICMP-induced) must not crash the process; they are not per-packet.
  socket.on('error', () => undefined);
  options.signal?.addEventListener('abort', () => void close(), { once: true });
  return {
    iface,
    receiveBufferBytes: socket.getRecvBufferSize(),
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
  const close = closer(socket);
  try {
    apply('receive buffer', () => socket.setRecvBufferSize(receiveBufferBytesDefault));
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
  /**
   * Sends the first length bytes of buffer as one datagram; done is called when the kernel has
   * taken it (the buffer is free again).
   */
  send(buffer: Buffer, length: number, done?: (error: Error | null) => void): void;
  close(): Promise<void>;
}

/** Opens a socket that sends to a group through the chosen interface. */
export async function openSenderSocket(options: SenderSocketOptions): Promise<SenderSocket> {
  const { group } = options;
  const iface = options.iface === undefined ? undefined : resolveInterface(options.iface, group.family);
  const socket = createSocket({ type: socketType(group) });
  const bindAddress = group.family === 4 ? (iface?.address ?? '0.0.0.0') : '::';
  await bindSocket(socket, 0, bindAddress);
  const close = closer(socket);
  try {
    apply('send buffer', () => socket.setSendBufferSize(options.sendBufferBytes ?? sendBufferBytesDefault));
    apply('ttl', () => socket.setMulticastTTL(options.ttl ?? multicastTtlDefault));
    apply('loopback', () => socket.setMulticastLoopback(options.loopback ?? true));
    if (iface !== undefined) {
      apply(`interface ${iface.name}`, () => socket.setMulticastInterface(iface.socketInterface));
    }
    // A connected socket skips the per-send address lookup that node:dgram does otherwise.
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(group.port, group.address, () => {
        socket.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    await close();
    throw error instanceof SocketError
      ? error
      : new SocketError(`connect ${group.address}: ${(error as Error).message}`);
  }
  socket.on('error', () => undefined);
  return {
    iface,
    send(buffer, length, done) {
      socket.send(buffer, 0, length, done);
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A unicast socket that both receives and sends: the control channel of a server. */
export interface ControlSocket extends AsyncDisposable {
  /** The bound address and port (the port is the kernel's choice when 0 was asked). */
  readonly local: Endpoint;
  /** Bytes handed to the kernel so far. */
  readonly bytesSent: number;
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
  const close = closer(socket);
  try {
    apply('receive buffer', () => socket.setRecvBufferSize(receiveBufferBytesDefault));
    apply('send buffer', () => socket.setSendBufferSize(sendBufferBytesDefault));
  } catch (error) {
    await close();
    throw error;
  }
  socket.on('error', () => undefined);
  const bound = socket.address();
  let bytesSent = 0;
  return {
    local: { address: bound.address, port: bound.port, family: endpoint.family },
    get bytesSent() {
      return bytesSent;
    },
    send(datagram, port, address) {
      bytesSent += datagram.length;
      socket.send(datagram, port, address);
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
