/**
 * Preloaded into the order server by the ordering benchmark (`node --import tsx --import
 * bench/ordering-trace.ts bin/gatecast serve …`): writes (every 100 ms) a line of JSON to the file
 * named by GATECAST_BENCH_TRACE for every stage of the order path (the `gatecast:order:stage` diagnostics
 * channel, src/order/trace.ts), every request Node's HTTP server receives and answers, every
 * garbage collection and every event-loop turn that came more than 5 ms late. Each line carries the
 * monotonic time (process.hrtime.bigint, the same clock as the box's probe) and the main thread's
 * CPU time and run-queue wait so far (/proc/thread-self/schedstat), so a slow stage shows whether
 * the thread was running, waiting for a core, or waiting on something else (a flush, smcrouted).
 */
import { subscribe } from 'node:diagnostics_channel';
import { appendFileSync, readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { PerformanceObserver } from 'node:perf_hooks';
import { type OrderStageMessage, orderTraceChannelName } from '../src/order/trace.js';

const file = process.env.GATECAST_BENCH_TRACE;

/** The main thread's [CPU ns, run-queue wait ns] so far. */
export function threadTimes(): [string, string] {
  try {
    const [cpu = '0', wait = '0'] = readFileSync('/proc/thread-self/schedstat', 'utf8').trim().split(' ');
    return [cpu, wait];
  } catch {
    return ['0', '0'];
  }
}

if (file !== undefined) {
  // Kept in memory and written every 100 ms, off the order path (a write per stage would add its
  // own system calls to what is measured); the schedstat read is a few microseconds.
  let pending: string[] = [];
  const write = (stage: string, atNs: bigint, fields: Record<string, unknown> = {}) => {
    const [cpuNs, waitNs] = threadTimes();
    pending.push(JSON.stringify({ stage, atNs: atNs.toString(), cpuNs, waitNs, ...fields }));
  };
  setInterval(() => {
    if (pending.length > 0) {
      appendFileSync(file, `${pending.join('\n')}\n`);
      pending = [];
    }
  }, 100).unref();
  subscribe(orderTraceChannelName, (message) => {
    const { stage, atNs, link, detail } = message as OrderStageMessage;
    write(stage, atNs, { link, detail });
  });
  subscribe('http.server.request.start', (message) => {
    const { request } = message as { request: IncomingMessage };
    write('http-received', process.hrtime.bigint(), { detail: `${request.method} ${request.url}` });
  });
  subscribe('http.server.response.finish', (message) => {
    const { request } = message as { request: IncomingMessage };
    write('http-answered', process.hrtime.bigint(), { detail: `${request.method} ${request.url}` });
  });
  // performance.now() and hrtime differ by a constant within a process.
  const offsetNs = process.hrtime.bigint() - BigInt(Math.round(performance.now() * 1e6));
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      write('gc', offsetNs + BigInt(Math.round(entry.startTime * 1e6)), {
        detail: `${entry.duration.toFixed(2)} ms`,
      });
    }
  }).observe({ entryTypes: ['gc'] });
  const tickMs = 5;
  let expected = performance.now() + tickMs;
  setInterval(() => {
    const late = performance.now() - expected;
    if (late > 5) {
      write('loop-late', process.hrtime.bigint(), { detail: `${late.toFixed(1)} ms` });
    }
    expected = performance.now() + tickMs;
  }, tickMs).unref();
}
