/**
 * Runs in a box's namespace for the ordering benchmark: joins a channel's group on the one-way
 * link, then, again and again, orders the service over the return network and times the first
 * datagram that arrives, and cancels it and times the last one. Prints one JSON object.
 * Argument: JSON { server, token, service, group, port, iface, trials }.
 */
import { createSocket } from 'node:dgram';

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
let lastArrivalMs = 0;
let arrivals = 0;
let waiter: (() => void) | undefined;
socket.on('message', () => {
  lastArrivalMs = performance.now();
  arrivals += 1;
  waiter?.();
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

/** Resolves at the next datagram, or rejects after timeoutMs. */
const nextArrival = (timeoutMs: number) =>
  new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiter = undefined;
      reject(new Error(`no datagram of ${job.group} within ${timeoutMs} ms`));
    }, timeoutMs);
    waiter = () => {
      clearTimeout(timer);
      waiter = undefined;
      resolve();
    };
  });

/** Waits until quietMs pass with nothing arriving (bounded by limitMs). */
const quiet = async (quietMs: number, limitMs: number) => {
  const started = performance.now();
  while (performance.now() - Math.max(lastArrivalMs, started) < quietMs) {
    if (performance.now() - started > limitMs) {
      throw new Error(`${job.group} did not stop within ${limitMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};

const toFirstPacketMs: number[] = [];
const toStopMs: number[] = [];
const orderAnsweredMs: number[] = [];
await quiet(300, 10_000);
for (let trial = 0; trial < job.trials; trial++) {
  const orderedAt = performance.now();
  const arrived = nextArrival(15_000);
  const order = await call('POST', '/v1/order/orders', { service: job.service });
  orderAnsweredMs.push(performance.now() - orderedAt);
  await arrived;
  toFirstPacketMs.push(lastArrivalMs - orderedAt);
  // Let it flow a little, then cancel and time the last datagram that still came.
  await new Promise((resolve) => setTimeout(resolve, 50));
  const cancelledAt = performance.now();
  await call('DELETE', `/v1/order/orders/${order.id}`);
  await quiet(300, 5_000);
  toStopMs.push(Math.max(0, lastArrivalMs - cancelledAt));
}
socket.close();
process.stdout.write(`${JSON.stringify({ toFirstPacketMs, toStopMs, orderAnsweredMs, arrivals })}\n`);
