/**
 * The load generator of the charges benchmark, run as its own process: autocannon against one or
 * more `gatecast serve` processes, every request a charge under a fresh idempotency key, or a batch
 * of `batchSize` charges each under its own key (POST /v1/usage/batch), or, as the baseline,
 * GET /v1/whoami. Prints one JSON line: requests/s, charges/s, p50/p99 latency, errors.
 */
import autocannon from 'autocannon';

interface Job {
  urls: string[];
  token: string;
  accounts: string[];
  seconds: number;
  connections: number;
  mode: 'charge' | 'batch' | 'whoami';
  run: string;
  batchSize?: number;
}

const job = JSON.parse(process.argv[2] ?? '{}') as Job;
let n = 0;
const batchSize = job.mode === 'batch' ? (job.batchSize ?? 100) : 1;

const runOne = (url: string, connections: number) =>
  autocannon({
    url,
    connections,
    duration: job.seconds,
    headers: { authorization: `Bearer ${job.token}`, 'content-type': 'application/json' },
    requests: [
      job.mode === 'whoami'
        ? { method: 'GET', path: '/v1/whoami' }
        : job.mode === 'batch'
          ? {
              method: 'POST',
              path: '/v1/usage/batch',
              setupRequest: (request) => {
                const events = [];
                for (let k = 0; k < batchSize; k++) {
                  const i = n++;
                  events.push({
                    key: `bench-${job.run}-${i}`,
                    account: job.accounts[i % job.accounts.length],
                    kind: 'pay-as-you-go-bytes',
                    quantity: 1_000_000,
                  });
                }
                request.body = JSON.stringify({ events });
                return request;
              },
            }
          : {
              method: 'POST',
              path: '/v1/usage',
              setupRequest: (request) => {
                const i = n++;
                request.headers = { ...request.headers, 'idempotency-key': `bench-${job.run}-${i}` };
                request.body = JSON.stringify({
                  account: job.accounts[i % job.accounts.length],
                  kind: 'pay-as-you-go-bytes',
                  quantity: 1_000_000,
                });
                return request;
              },
            },
    ],
  });

const results = await Promise.all(
  job.urls.map((url) => runOne(url, Math.max(1, Math.round(job.connections / job.urls.length)))),
);
process.stdout.write(
  `${JSON.stringify({
    requestsPerSecond: results.reduce((sum, r) => sum + r.requests.average, 0),
    chargesPerSecond: (results.reduce((sum, r) => sum + r['2xx'], 0) * batchSize) / job.seconds,
    ok: results.reduce((sum, r) => sum + r['2xx'], 0) * batchSize,
    p50: Math.max(...results.map((r) => r.latency.p50)),
    p99: Math.max(...results.map((r) => r.latency.p99)),
    errors: results.reduce((sum, r) => sum + r.errors + r.timeouts + r.non2xx, 0),
  })}\n`,
);
