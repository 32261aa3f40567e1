/**
 * An in-memory IP network for the simulator. Each simulated host has an address (10.9.0.N), a
 * clock of its own (HostClock) and a Transport with the exact signatures of src/net/udp.ts:
 * receiver sockets joined to a group and port get every datagram any host sends there, control
 * sockets bound to address:port take unicast. Every link (from one host to another) has seeded
 * faults: independent and burst loss (Gilbert-Elliott), duplication, reordering and delay; a
 * partition cuts a set of hosts off from another. A crash (kill) closes every socket of a host
 * and drops its timers; a boot gives it a fresh clock and transport at the same address.
 *
 * Observers see every datagram sent (with its true origin, even when the claimed source address
 * is spoofed) and every one delivered: that is how the invariants check who sent what to whom.
 */
import type { RemoteInfo } from 'node:dgram';
import { datagramBytesMax, receiveBufferBytesDefault } from '../../src/limits.js';
import { type Endpoint, isMulticast } from '../../src/net/address.js';
import { SocketError } from '../../src/net/errors.js';
import type { Runtime, Transport } from '../../src/net/runtime.js';
import type {
  ControlSocket,
  DatagramHandler,
  ReceiverSocket,
  ReceiverSocketOptions,
  SenderSocket,
  SenderSocketOptions,
} from '../../src/net/udp.js';
import { SimRandom } from './random.js';
import { HostClock, type Scheduler } from './virtual-clock.js';

/** Faults of one direction of one link (from a host to a host). */
export interface LinkFaults {
  /** Probability that a datagram is lost on its own. */
  readonly lossRate: number;
  /** Gilbert-Elliott bursts: per datagram, the chance to enter the lossy state and to leave it. */
  readonly burstEnterRate: number;
  readonly burstExitRate: number;
  /** Probability that a datagram arrives twice. */
  readonly duplicateRate: number;
  /** Probability that a datagram is held back (up to reorderDelayMsMax) and overtaken. */
  readonly reorderRate: number;
  readonly reorderDelayMsMax: number;
  /** One-way delay and its jitter, in milliseconds. */
  readonly delayMs: number;
  readonly jitterMs: number;
}

/** A link that loses, doubles and reorders nothing, with a LAN's delay. */
export const cleanLink: LinkFaults = {
  lossRate: 0,
  burstEnterRate: 0,
  burstExitRate: 1,
  duplicateRate: 0,
  reorderRate: 0,
  reorderDelayMsMax: 0,
  delayMs: 0.2,
  jitterMs: 0.05,
};

/** Which datagrams a fault rule applies to. */
export type TrafficKind = 'multicast' | 'unicast';

/** One datagram as it left a host (before any fault). */
export interface SendRecord {
  readonly atMs: number;
  /** The host that really sent it. */
  readonly host: SimHost;
  /** The boot of that host. */
  readonly boot: number;
  /** The source address and port it claims (spoofed when an adversary injects it). */
  readonly from: Endpoint;
  readonly to: Endpoint;
  readonly multicast: boolean;
  readonly spoofed: boolean;
  readonly datagram: Buffer;
}

/** A socket a datagram was delivered to. */
export interface DeliveryTarget {
  readonly host: SimHost;
  readonly boot: number;
  readonly kind: 'receiver' | 'control';
  readonly local: Endpoint;
}

interface LinkState {
  inBurst: boolean;
  lastDeliveryMs: number;
}

interface OpenSocket {
  readonly host: SimHost;
  readonly boot: number;
  readonly local: Endpoint;
  readonly onDatagram: DatagramHandler;
  readonly source: string | undefined;
  closed: boolean;
}

const groupKey = (endpoint: Endpoint) => `${endpoint.address}:${endpoint.port}`;

/** The network: hosts, groups, links and partitions. */
export class SimNetwork {
  readonly scheduler: Scheduler;
  readonly #random: SimRandom;
  readonly #hosts = new Map<string, SimHost>();
  readonly #groups = new Map<string, Set<OpenSocket>>();
  readonly #bound = new Map<string, OpenSocket>();
  readonly #faults = new Map<string, LinkFaults>();
  readonly #links = new Map<string, LinkState>();
  readonly #partitions = new Map<number, { a: Set<string>; b: Set<string> }>();
  readonly #sendObservers: Array<(record: SendRecord) => void> = [];
  readonly #deliverObservers: Array<(record: SendRecord, target: DeliveryTarget) => void> = [];
  #defaultFaults: LinkFaults = cleanLink;
  #partitionSeq = 0;
  /** Datagrams dropped by the network, by reason. */
  readonly dropped: Record<string, number> = {};

  constructor(scheduler: Scheduler, seed: number) {
    this.scheduler = scheduler;
    this.#random = SimRandom.fork(seed, 'network');
  }

  /** Adds a host with an address (10.9.0.N); it is booted (alive) at once. */
  addHost(name: string, address: string, options: { wallOffsetMs?: number } = {}): SimHost {
    const host = new SimHost(this, name, address, options.wallOffsetMs ?? 0);
    this.#hosts.set(address, host);
    return host;
  }

  /** The host at an address. */
  hostAt(address: string): SimHost | undefined {
    return this.#hosts.get(address);
  }

  /** Faults of every link not given its own. */
  setDefaultFaults(faults: LinkFaults): void {
    this.#defaultFaults = faults;
  }

  /** Faults of the datagrams from one host to another (either may be '*'), of one kind or both. */
  setFaults(from: SimHost | '*', to: SimHost | '*', faults: LinkFaults, kind?: TrafficKind): void {
    const fromName = from === '*' ? '*' : from.name;
    const toName = to === '*' ? '*' : to.name;
    for (const k of kind === undefined ? (['multicast', 'unicast'] as const) : [kind]) {
      this.#faults.set(`${fromName}>${toName}>${k}`, faults);
    }
  }

  /** Cuts every link between the hosts of a and those of b (both ways) until heal(id). */
  partition(a: readonly SimHost[], b: readonly SimHost[]): number {
    const id = ++this.#partitionSeq;
    this.#partitions.set(id, { a: new Set(a.map((h) => h.name)), b: new Set(b.map((h) => h.name)) });
    this.scheduler.note(`partition ${id} ${[...a.map((h) => h.name)]}|${[...b.map((h) => h.name)]}`);
    return id;
  }

  /** Ends a partition. */
  heal(id: number): void {
    this.#partitions.delete(id);
    this.scheduler.note(`heal ${id}`);
  }

  /** True when a partition separates the two hosts now. */
  partitioned(x: SimHost, y: SimHost): boolean {
    for (const { a, b } of this.#partitions.values()) {
      if ((a.has(x.name) && b.has(y.name)) || (b.has(x.name) && a.has(y.name))) {
        return true;
      }
    }
    return false;
  }

  /** Calls fn for every datagram sent, before the network's faults. */
  onSend(fn: (record: SendRecord) => void): void {
    this.#sendObservers.push(fn);
  }

  /** Calls fn for every datagram handed to a socket. */
  onDeliver(fn: (record: SendRecord, target: DeliveryTarget) => void): void {
    this.#deliverObservers.push(fn);
  }

  /** Sends a datagram into the network as `from` claims (the adversary's way in). */
  inject(host: SimHost, from: Endpoint, to: Endpoint, datagram: Buffer): void {
    this.transmit(host, from, to, Buffer.from(datagram), true);
  }

  /** @internal Puts one datagram on the wire. */
  transmit(host: SimHost, from: Endpoint, to: Endpoint, datagram: Buffer, spoofed: boolean): void {
    const multicast = isMulticast(to.address);
    const record: SendRecord = {
      atMs: this.scheduler.nowMs,
      host,
      boot: host.boot,
      from,
      to,
      multicast,
      spoofed,
      datagram,
    };
    for (const observe of this.#sendObservers) {
      observe(record);
    }
    if (datagram.length > datagramBytesMax) {
      this.#drop('oversize');
      return;
    }
    if (multicast) {
      const members = this.#groups.get(groupKey(to));
      for (const socket of members ?? []) {
        if (socket.source !== undefined && socket.source !== from.address) {
          continue;
        }
        if (socket.host === host && !host.multicastLoopback(from.port)) {
          continue;
        }
        this.#carry(record, socket, 'receiver', 'multicast');
      }
      return;
    }
    const socket = this.#bound.get(groupKey(to));
    if (socket === undefined) {
      this.#drop('no-listener');
      return;
    }
    this.#carry(record, socket, 'control', 'unicast');
  }

  /** Applies the link's faults and schedules the delivery (or deliveries) of one datagram. */
  #carry(record: SendRecord, socket: OpenSocket, kind: DeliveryTarget['kind'], traffic: TrafficKind): void {
    const from = record.host;
    const to = socket.host;
    if (from !== to && this.partitioned(from, to)) {
      this.#drop('partition');
      return;
    }
    const faults = from === to ? cleanLink : this.#faultsOf(from.name, to.name, traffic);
    const linkKey = `${from.name}>${to.name}>${traffic}`;
    let link = this.#links.get(linkKey);
    if (link === undefined) {
      link = { inBurst: false, lastDeliveryMs: 0 };
      this.#links.set(linkKey, link);
    }
    const r = this.#random;
    link.inBurst = link.inBurst ? !r.chance(faults.burstExitRate) : r.chance(faults.burstEnterRate);
    if (link.inBurst) {
      this.#drop('burst');
      return;
    }
    if (r.chance(faults.lossRate)) {
      this.#drop('loss');
      return;
    }
    const copies = r.chance(faults.duplicateRate) ? 2 : 1;
    for (let copy = 0; copy < copies; copy++) {
      const now = this.scheduler.nowMs;
      let atMs = now + faults.delayMs + r.float() * faults.jitterMs;
      if (r.chance(faults.reorderRate)) {
        atMs += r.float() * faults.reorderDelayMsMax;
      } else {
        // In order unless reordered on purpose: a datagram does not overtake the previous one.
        atMs = Math.max(atMs, link.lastDeliveryMs);
        link.lastDeliveryMs = atMs;
      }
      this.#deliverAt(atMs, record, socket, kind);
    }
  }

  #deliverAt(atMs: number, record: SendRecord, socket: OpenSocket, kind: DeliveryTarget['kind']): void {
    const datagram = Buffer.from(record.datagram);
    const target: DeliveryTarget = { host: socket.host, boot: socket.boot, kind, local: socket.local };
    this.scheduler.schedule(atMs - this.scheduler.nowMs, `net>${socket.host.name}`, () => {
      if (socket.closed) {
        this.#drop('closed');
        return;
      }
      this.scheduler.note(
        `deliver ${record.from.address}:${record.from.port}>${socket.local.address}:${socket.local.port} ${datagram.length} ${checksum(datagram)}`,
      );
      for (const observe of this.#deliverObservers) {
        observe(record, target);
      }
      const remote: RemoteInfo = {
        address: record.from.address,
        port: record.from.port,
        family: record.from.family === 6 ? 'IPv6' : 'IPv4',
        size: datagram.length,
      };
      socket.onDatagram(datagram, remote);
    });
  }

  /** The faults of the link from one host to another for one kind of traffic. */
  faultsBetween(from: SimHost, to: SimHost, kind: TrafficKind): LinkFaults {
    return from === to ? cleanLink : this.#faultsOf(from.name, to.name, kind);
  }

  #faultsOf(from: string, to: string, kind: TrafficKind): LinkFaults {
    return (
      this.#faults.get(`${from}>${to}>${kind}`) ??
      this.#faults.get(`*>${to}>${kind}`) ??
      this.#faults.get(`${from}>*>${kind}`) ??
      this.#defaultFaults
    );
  }

  #drop(reason: string): void {
    this.dropped[reason] = (this.dropped[reason] ?? 0) + 1;
  }

  /** @internal */
  join(socket: OpenSocket, group: Endpoint): void {
    const key = groupKey(group);
    let members = this.#groups.get(key);
    if (members === undefined) {
      members = new Set();
      this.#groups.set(key, members);
    }
    members.add(socket);
  }

  /** @internal */
  leave(socket: OpenSocket, group: Endpoint): void {
    this.#groups.get(groupKey(group))?.delete(socket);
  }

  /** @internal */
  bind(socket: OpenSocket): void {
    const key = groupKey(socket.local);
    if (this.#bound.has(key)) {
      throw new SocketError(`cannot bind ${key}: EADDRINUSE`);
    }
    this.#bound.set(key, socket);
  }

  /** @internal */
  unbind(socket: OpenSocket): void {
    const key = groupKey(socket.local);
    if (this.#bound.get(key) === socket) {
      this.#bound.delete(key);
    }
  }
}

/** A cheap checksum of a datagram for the trace (FNV-1a, 32 bits). */
function checksum(datagram: Buffer): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < datagram.length; i++) {
    h = Math.imul(h ^ (datagram[i] as number), 0x01000193);
  }
  return (h >>> 0).toString(16);
}

/** One simulated host: an address, the clock of its current boot, and its sockets. */
export class SimHost {
  readonly network: SimNetwork;
  readonly name: string;
  readonly address: string;
  #clock: HostClock;
  #boot = 0;
  #alive = true;
  #bootedAtMs = 0;
  #nextPort = 49152;
  readonly #sockets = new Set<() => void>();
  readonly #noLoopbackPorts = new Set<number>();

  constructor(network: SimNetwork, name: string, address: string, wallOffsetMs: number) {
    this.network = network;
    this.name = name;
    this.address = address;
    this.#clock = new HostClock(network.scheduler, name, { monotonicBaseMs: 1000, wallOffsetMs });
  }

  /** The clock of the current boot. */
  get clock(): HostClock {
    return this.#clock;
  }

  /** Boots so far (0 for the first). */
  get boot(): number {
    return this.#boot;
  }

  get alive(): boolean {
    return this.#alive;
  }

  /** Virtual time the current boot began. */
  get bootedAtMs(): number {
    return this.#bootedAtMs;
  }

  /** Sockets open now. */
  get socketCount(): number {
    return this.#sockets.size;
  }

  /** A crash: every socket closes at once (nothing more is delivered or sent) and every timer goes. */
  kill(): void {
    if (!this.#alive) {
      return;
    }
    this.#alive = false;
    this.#clock.kill();
    for (const close of [...this.#sockets]) {
      close();
    }
    this.#sockets.clear();
    this.network.scheduler.note(`kill ${this.name}`);
  }

  /** Boots the host again (after kill()): a fresh clock (monotonic time restarts), same wall offset. */
  restart(): void {
    this.kill();
    this.#boot++;
    this.#alive = true;
    this.#bootedAtMs = this.network.scheduler.nowMs;
    this.#clock = new HostClock(this.network.scheduler, this.name, {
      monotonicBaseMs: 1000,
      wallOffsetMs: this.#clock.wallOffsetMs,
    });
    this.network.scheduler.note(`boot ${this.name} ${this.#boot}`);
  }

  /** @internal */
  multicastLoopback(port: number): boolean {
    return !this.#noLoopbackPorts.has(port);
  }

  /** The runtime a role on this host's current boot takes. */
  runtime(random: SimRandom): Runtime {
    return {
      clock: this.#clock,
      transport: this.transport(),
      randomId: () => random.nonZero(),
      random: () => random.float(),
    };
  }

  /** A Transport whose sockets belong to the current boot. */
  transport(): Transport {
    const boot = this.#boot;
    const check = () => {
      if (!this.#alive || this.#boot !== boot) {
        throw new SocketError(`host ${this.name} is down`);
      }
    };
    return {
      openReceiver: async (options, onDatagram) => {
        check();
        return this.#openReceiver(boot, options, onDatagram);
      },
      openSender: async (options) => {
        check();
        return this.#openSender(boot, options);
      },
      openControl: async (listen, onDatagram) => {
        check();
        return this.#openControl(boot, listen, onDatagram);
      },
    };
  }

  #track(close: () => void): () => void {
    this.#sockets.add(close);
    return () => {
      this.#sockets.delete(close);
      close();
    };
  }

  #openReceiver(boot: number, options: ReceiverSocketOptions, onDatagram: DatagramHandler): ReceiverSocket {
    const socket: OpenSocket = {
      host: this,
      boot,
      local: options.group,
      onDatagram,
      source: options.source,
      closed: false,
    };
    this.network.join(socket, options.group);
    const close = this.#track(() => {
      socket.closed = true;
      this.network.leave(socket, options.group);
    });
    const closeAsync = async () => close();
    options.signal?.addEventListener('abort', () => close(), { once: true });
    return {
      iface: undefined,
      receiveBufferBytes: options.receiveBufferBytes ?? receiveBufferBytesDefault,
      close: closeAsync,
      [Symbol.asyncDispose]: closeAsync,
    };
  }

  #openSender(boot: number, options: SenderSocketOptions): SenderSocket {
    const port = this.#nextPort++;
    if (options.loopback === false) {
      this.#noLoopbackPorts.add(port);
    }
    const from: Endpoint = { address: this.address, port, family: 4 };
    let closed = false;
    const close = this.#track(() => {
      closed = true;
    });
    const closeAsync = async () => close();
    return {
      iface: undefined,
      send: (buffer, length, done) => {
        if (closed || this.#boot !== boot) {
          return;
        }
        const datagram = Buffer.from(buffer.subarray(0, length));
        const error = length > datagramBytesMax ? new Error('send EMSGSIZE') : null;
        this.network.transmit(this, from, options.group, datagram, false);
        if (done !== undefined) {
          queueMicrotask(() => done(error));
        }
      },
      close: closeAsync,
      [Symbol.asyncDispose]: closeAsync,
    };
  }

  #openControl(boot: number, listen: Endpoint, onDatagram: DatagramHandler): ControlSocket {
    const anyAddress = listen.address === '0.0.0.0' || listen.address === '::';
    if (!anyAddress && listen.address !== this.address) {
      throw new SocketError(`cannot bind ${listen.address}:${listen.port}: EADDRNOTAVAIL`);
    }
    const port = listen.port === 0 ? this.#nextPort++ : listen.port;
    const local: Endpoint = { address: this.address, port, family: 4 };
    const socket: OpenSocket = { host: this, boot, local, onDatagram, source: undefined, closed: false };
    this.network.bind(socket);
    let bytesSent = 0;
    const close = this.#track(() => {
      socket.closed = true;
      this.network.unbind(socket);
    });
    const closeAsync = async () => close();
    return {
      local: { address: anyAddress ? listen.address : this.address, port, family: listen.family },
      get bytesSent() {
        return bytesSent;
      },
      send: (datagram, toPort, toAddress) => {
        if (socket.closed) {
          return;
        }
        bytesSent += datagram.length;
        const to: Endpoint = { address: toAddress, port: toPort, family: 4 };
        this.network.transmit(this, local, to, Buffer.from(datagram), false);
      },
      close: closeAsync,
      [Symbol.asyncDispose]: closeAsync,
    };
  }
}
