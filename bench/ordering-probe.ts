/**
 * Runs in a box's namespace for the ordering benchmark: joins a channel's group on the one-way
 * link, then, again and again, orders the service over the return network and times the first
 * datagram that arrives, and cancels it and times the last one. Prints one JSON object of the
 * trials' times on the host's monotonic clock, for the benchmark to line up with the order server's
 * stages.
 * Argument: JSON { server, token, service, group, port, iface, trials }.
 */
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';

interface Job {
  server: string;
  token: string;
  service: string;
  group: string;
  port: number;
  iface: string;
  trials: number;
}

const job = JSON.parse(process.argv[2] ?? '{}') as Job;
const socket = createSocket({ type: 'udp4', reuseAddr: true });
const clockNs = () => process.hrtime.bigint();
let lastArrivalNs = 0n;
let arrivals = 0;
/** Told the arrival time of the next datagram (taken in the handler, before anything else runs). */
let waiter: ((atNs: bigint) => void) | undefined;
socket.on('message', () => {
  lastArrivalNs = clockNs();
  arrivals += 1;
  waiter?.(lastArrivalNs);
});
await new Promise<void>((resolve) => socket.bind(job.port, '0.0.0.0', () => resolve()));
socket.addMembership(job.group, job.iface);

const call = async (method: string, path: string, body?: object) => {
  const response = await fetch(`${job.server}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${job.token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${text}`);
  }
  return JSON.parse(text) as { id: string };
};

/** Resolves at the next datagram with its arrival time, or rejects after timeoutMs. */
const nextArrival = (timeoutMs: number) =>
  new Promise<bigint>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiter = undefined;
      reject(new Error(`no datagram of ${job.group} within ${timeoutMs} ms`));
    }, timeoutMs);
    waiter = (atNs) => {
      clearTimeout(timer);
      waiter = undefined;
      resolve(atNs);
    };
  });

/** Waits until quietMs pass with nothing arriving (bounded by limitMs). */
const quiet = async (quietMs: number, limitMs: number) => {
  const started = clockNs();
  const sinceMs = (from: bigint) => Number(clockNs() - from) / 1e6;
  while (sinceMs(lastArrivalNs > started ? lastArrivalNs : started) < quietMs) {
    if (sinceMs(started) > limitMs) {
      throw new Error(`${job.group} did not stop within ${limitMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};

/** One trial's times (process.hrtime.bigint, as decimal strings: the host's monotonic clock). */
interface Trial {
  orderSentNs: string;
  orderAnsweredNs: string;
  firstPacketNs: string;
  cancelSentNs: string;
  cancelAnsweredNs: string;
  lastPacketNs: string;
  /** How long this process waited for a core during the trial (run queue). */
  probeWaitNs: string;
}

const runQueueWaitNs = () => {
  try {
    return BigInt(readFileSync('/proc/thread-self/schedstat', 'utf8').trim().split(' ')[1] ?? '0');
  } catch {
    return 0n;
  }
};

const trial = async (): Promise<Trial> => {
  const waitBefore = runQueueWaitNs();
  const arrived = nextArrival(15_000);
  const orderSentNs = clockNs();
  const order = await call('POST', '/v1/order/orders', { service: job.service });
  const orderAnsweredNs = clockNs();
  const firstPacketNs = await arrived;
  // Let it flow a little, then cancel and time the last datagram that still came.
  await new Promise((resolve) => setTimeout(resolve, 50));
  const cancelSentNs = clockNs();
  await call('DELETE', `/v1/order/orders/${order.id}`);
  const cancelAnsweredNs = clockNs();
  await quiet(300, 5_000);
  const lastPacketNs = lastArrivalNs > cancelSentNs ? lastArrivalNs : cancelSentNs;
  return {
    orderSentNs: orderSentNs.toString(),
    orderAnsweredNs: orderAnsweredNs.toString(),
    firstPacketNs: firstPacketNs.toString(),
    cancelSentNs: cancelSentNs.toString(),
    cancelAnsweredNs: cancelAnsweredNs.toString(),
    lastPacketNs: lastPacketNs.toString(),
    probeWaitNs: (runQueueWaitNs() - waitBefore).toString(),
  };
};

await quiet(300, 10_000);
// The first trial runs cold (the HTTP client's module loads, the connection opens, the server's
// order path runs for the first time): reported on its own, not among the trials.
const first = await trial();
const trials: Trial[] = [];
for (let i = 0; i < job.trials; i++) {
  trials.push(await trial());
}
socket.close();
process.stdout.write(`${JSON.stringify({ first, trials, arrivals })}\n`);
