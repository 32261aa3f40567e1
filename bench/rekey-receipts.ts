/**
 * Rekey and receipts benchmark: the LKH rekey message on a leave (size, build time, a member's
 * apply time) at 10^3 and 10^6 members, against one Ed25519 signature of the same bytes measured
 * in the same run; and receipts ingested per second by billing (POST /v1/receipts/batch, in
 * process through app.inject, SQLite file and PostgreSQL), against POST /v1/usage/batch events per
 * second on the same store in the same run. Writes docs/benchmarks.md ("Rekey and receipts").
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildServerApp } from '../src/cli/server-app.js';
import { createLkhMember, createLkhTree } from '../src/crypto/lkh.js';
import { applyTopUp, authorize, createPurseState, type PurseState } from '../src/crypto/purse.js';
import { ed25519Signer } from '../src/crypto/receipt.js';
import { openStore } from '../src/store/database.js';
import { postgresUnavailable, startPostgres } from '../test/helpers/postgres.js';
import { writeSection } from './report.js';

const loadAtStart = loadavg()[0]?.toFixed(1) ?? '?';
const { privateKey, publicKey } = generateKeyPairSync('ed25519');

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
const ms = (ns: bigint) => Number(ns) / 1e6;

function rekeyRow(label: string, depth: number, members: number) {
  const startBuild = process.hrtime.bigint();
  const tree = createLkhTree({ depth, treeId: 1, signingKey: privateKey, members });
  const setupMs = ms(process.hrtime.bigint() - startBuild);
  const member = createLkhMember({ depth, treeId: 1, publicKey, welcome: tree.welcome(members - 1) });
  const build: number[] = [];
  const apply: number[] = [];
  const baseline: number[] = [];
  let size = 0;
  const leaves = 300;
  for (let i = 0; i < leaves; i++) {
    const slot = (i * 7919) % (members - 1);
    const t0 = process.hrtime.bigint();
    const message = tree.leave(slot);
    const t1 = process.hrtime.bigint();
    sign(null, message.subarray(0, message.length - 64), privateKey);
    const t2 = process.hrtime.bigint();
    const applied = member.apply(message);
    const t3 = process.hrtime.bigint();
    if (!applied.ok || !member.groupKey()?.equals(tree.groupKey())) {
      throw new Error(`${label}: the member lost the group key at leave ${i}`);
    }
    build.push(ms(t1 - t0));
    baseline.push(ms(t2 - t1));
    apply.push(ms(t3 - t2));
    size = Math.max(size, message.length);
  }
  for (const list of [build, apply, baseline]) {
    list.sort((a, b) => a - b);
  }
  return { label, depth, size, setupMs, build, apply, baseline };
}

async function ingestRow(label: string, url: string) {
  const store = await openStore(url);
  const operatorToken = 'operator-token-for-the-receipts-benchmark';
  const app = await buildServerApp({ store, operatorToken });
  const headers = { authorization: `Bearer ${operatorToken}` };
  try {
    const subscriber = (
      await app.inject({ method: 'POST', url: '/v1/subscribers', headers, payload: { name: 'bench' } })
    ).json() as { id: string };
    const tokenKeys = generateKeyPairSync('ed25519');
    const tokenId = 'bench-token';
    await app.inject({
      method: 'PUT',
      url: `/v1/purses/${tokenId}`,
      headers,
      payload: { subscriber: subscriber.id, publicKey: tokenKeys.publicKey.export({ format: 'jwk' }).x },
    });
    const count = 20_000;
    const signer = ed25519Signer(tokenKeys.privateKey);
    const topped = applyTopUp(createPurseState(tokenId, 'EUR'), 0, {
      sequence: 1,
      amount: 1e12,
      currency: 'EUR',
    });
    let state = (topped as { state: PurseState }).state;
    const receipts: string[] = [];
    for (let i = 0; i < count; i++) {
      const decision = await authorize(
        state,
        state.revision,
        {
          service: 'news',
          mode: 'pay-as-you-go',
          validFromMs: 0,
          validToMs: 4e12,
          rates: { perCryptoPeriod: 3 },
        },
        { unit: 'crypto-period', quantity: 1, timeMs: 1.7e12 + i },
        signer,
      );
      if (!decision.ok || decision.receipt === undefined) {
        throw new Error('the purse refused');
      }
      state = decision.state;
      receipts.push(decision.receipt.bytes.toString('base64url'));
    }
    const post = async (body: object, path: string) => {
      const response = await app.inject({ method: 'POST', url: path, headers, payload: body });
      if (response.statusCode !== 200) {
        throw new Error(`${path}: ${response.statusCode} ${response.body}`);
      }
      return response.json() as { charged?: number; results: Array<{ status: number }> };
    };
    const timed = async (run: () => Promise<void>) => {
      const start = process.hrtime.bigint();
      await run();
      return count / (ms(process.hrtime.bigint() - start) / 1000);
    };
    const usagePerSecond = await timed(async () => {
      for (let start = 0; start < count; start += 1000) {
        await post(
          {
            events: Array.from({ length: 1000 }, (_, i) => ({
              key: `bench-usage-${start + i}`,
              account: subscriber.id,
              kind: 'pay-as-you-go-seconds',
              quantity: 60,
            })),
          },
          '/v1/usage/batch',
        );
      }
    });
    let charged = 0;
    const newPerSecond = await timed(async () => {
      for (let start = 0; start < count; start += 1000) {
        charged +=
          (await post({ receipts: receipts.slice(start, start + 1000) }, '/v1/receipts/batch')).charged ?? 0;
      }
    });
    const replayPerSecond = await timed(async () => {
      for (let start = 0; start < count; start += 1000) {
        await post({ receipts: receipts.slice(start, start + 1000) }, '/v1/receipts/batch');
      }
    });
    if (charged !== count) {
      throw new Error(`${label}: ${charged} of ${count} receipts charged`);
    }
    return { label, usagePerSecond, newPerSecond, replayPerSecond };
  } finally {
    await app.close();
    await store.close();
  }
}

const f2 = (n: number) => n.toFixed(3);
const rekey = [
  rekeyRow('10³ members (depth 10)', 10, 1000),
  rekeyRow('10⁶ members (depth 20)', 20, 1_000_000),
];
const directory = mkdtempSync(join(tmpdir(), 'gatecast-bench-receipts-'));
const ingest = [await ingestRow('SQLite (WAL, file)', `sqlite:${join(directory, 'bench.db')}`)];
const postgresReason = postgresUnavailable();
if (postgresReason === undefined) {
  const postgres = startPostgres({ durable: true });
  try {
    ingest.push(await ingestRow('PostgreSQL (fsync on)', postgres.url));
  } finally {
    postgres.stop();
  }
}
rmSync(directory, { recursive: true, force: true });

writeSection(
  'rekey-receipts',
  `## Rekey and receipts

- Command: \`npm run bench\` (this part: \`node --import tsx bench/rekey-receipts.ts\`, in process).
- Machine: ${cpus().length} × ${cpus()[0]?.model.split(' ').slice(0, 2).join(' ') ?? '?'}, Linux ${release()}, Node ${process.version}; ${new Date().toISOString().slice(0, 10)};
  load average ${loadAtStart} when the run began (a shared machine: compare within a table).

### LKH rekey on a leave (targets at 10⁶ members: ≤ 2 KB, ≤ 1 ms to build)

300 leaves from a full tree; each message is checked by a member that stays, which must end with the
server's group key. Baseline, in the same run: one Ed25519 signature over the same bytes (the part
of the build no tree can avoid).

| members | message bytes | wrapped keys | build p50 / p99 ms | baseline sign p50 ms | build ÷ sign | member apply p50 / p99 ms | tree set-up ms |
|---|---|---|---|---|---|---|---|
${rekey
  .map(
    (row) =>
      `| ${row.label} | ${row.size} | ${(row.size - 16 - 64) / 44} | ${f2(percentile(row.build, 0.5))} / ${f2(percentile(row.build, 0.99))} | ${f2(percentile(row.baseline, 0.5))} | ${(percentile(row.build, 0.5) / percentile(row.baseline, 0.5)).toFixed(1)} | ${f2(percentile(row.apply, 0.5))} / ${f2(percentile(row.apply, 0.99))} | ${row.setupMs.toFixed(0)} |`,
  )
  .join('\n')}

### Receipts ingested by billing

20,000 receipts of one token, posted in batches of 1000 to \`POST /v1/receipts/batch\` through
\`app.inject\` (no sockets): each decoded, its Ed25519 signature verified, its chain checked and
charged once with its row, in one transaction per batch. Then the same 20,000 again (all
replays: answered from the ledger, the same bytes not verified twice). Baseline, in the same run on
the same store: 20,000 usage events to \`POST /v1/usage/batch\` in batches of 1000 (the ledger path
without signatures or chains).${postgresReason === undefined ? '' : ` PostgreSQL was not measured: ${postgresReason}.`}

| store | baseline usage events/s | receipts/s (new) | new ÷ baseline | receipts/s (sent again) | again ÷ baseline |
|---|---|---|---|---|---|
${ingest
  .map(
    (row) =>
      `| ${row.label} | ${row.usagePerSecond.toFixed(0)} | ${row.newPerSecond.toFixed(0)} | ${(row.newPerSecond / row.usagePerSecond).toFixed(2)} | ${row.replayPerSecond.toFixed(0)} | ${(row.replayPerSecond / row.usagePerSecond).toFixed(2)} |`,
  )
  .join('\n')}
`,
);
console.log('rekey and receipts: written to docs/benchmarks.md');
