/**
 * Where each role's CPU goes: one run of the lossy-edge set-up (bench/edge.ts: source, one
 * retransmit server, a repair server and a receiver on an edge host losing BENCH_PROFILE_LOSS % of
 * what arrives) with `node --cpu-prof` on every gatecast process, then the functions with the most
 * self time per role, from the profiles. Prints a table per role; the .cpuprofile files stay in
 * BENCH_PROFILE_DIR when it is set (open them in Chrome DevTools), else they are removed.
 *
 *   node --import tsx bench/profile.ts        (root; BENCH_PROFILE_MB, default 20; rate 100 Mbit/s)
 *
 * BENCH_PROFILE_BIN: another build's bin/gatecast (e.g. the code before a change), to compare the
 * two in one sitting. The summary line per role gives CPU (user + system, from the process) per
 * 1,000 packets besides the profile's busy time.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  createTestbed,
  type HostProcess,
  hostAddress,
  retransmitAt,
  testbedUnavailable,
} from '../test/helpers/testbed.js';
import {
  cpuSeconds,
  frameName,
  type Profile,
  profiledArguments,
  readProfiles,
  selfTimes,
} from './cpu-profile.js';

const megabytes = Number(process.env.BENCH_PROFILE_MB ?? 20);
const lossPercent = Number(process.env.BENCH_PROFILE_LOSS ?? 10);
const rateMbit = Number(process.env.BENCH_PROFILE_MBIT ?? 100);

/** Self time per function (ms), largest first. */
function functionTimes(profile: Profile): Array<{ name: string; ms: number; share: number }> {
  const { byKey, allMs } = selfTimes(profile, frameName);
  return [...byKey.entries()]
    .map(([name, ms]) => ({ name, ms, share: (100 * ms) / Math.max(allMs, 1) }))
    .sort((a, b) => b.ms - a.ms);
}

async function main(): Promise<void> {
  const unavailable = testbedUnavailable();
  if (unavailable !== undefined) {
    console.error(`bench profile: cannot run: ${unavailable}`);
    process.exit(2);
  }
  const bed = createTestbed();
  const directory = mkdtempSync('/dev/shm/gatecast-bench-profile-');
  const kept = process.env.BENCH_PROFILE_DIR;
  const profiles = kept ?? join(directory, 'profiles');
  try {
    const file = join(directory, 'payload.bin');
    writeFileSync(file, randomBytes(megabytes * 1_000_000));
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'benchmark operator secret, local only\n');
    const profiled = (role: string, host: string, args: string[]): HostProcess => {
      mkdirSync(join(profiles, role), { recursive: true });
      return bed.spawn(host, process.execPath, profiledArguments(join(profiles, role), args));
    };
    const s1 = '239.72.0.1:7600';
    const s2 = '239.72.1.1:7601';
    const retransmit = profiled('retransmit', 'rt1', [
      'retransmit',
      '--join',
      s1,
      '--iface',
      'eth0',
      '--listen',
      retransmitAt('rt1'),
      '--secret-file',
      secret,
    ]);
    const repair = profiled('repair', 'rx1', [
      'repair',
      '--join',
      s1,
      '--iface',
      'eth0',
      '--listen',
      `${hostAddress.rx1}:7100`,
      '--secret-file',
      secret,
      '--retransmit',
      retransmitAt('rt1'),
      '--emit',
      s2,
      '--emit-iface',
      '127.0.0.1',
      '--reliable',
    ]);
    const receiver = profiled('receive', 'rx1', [
      'receive',
      '--group',
      s2,
      '--iface',
      '127.0.0.1',
      '--out',
      '/dev/null',
      '--timeout',
      '20',
    ]);
    await Promise.all([
      retransmit.waitFor(/listening on/),
      repair.waitFor(/listening on/),
      receiver.waitFor(/joined/),
    ]);
    if (lossPercent > 0) {
      const ns = bed.namespace('rx1');
      const nft = (...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, 'nft', ...args]);
      nft('add', 'table', 'inet', 'gcprofile');
      nft('add', 'chain', 'inet', 'gcprofile', 'input', '{ type filter hook input priority 0; }');
      nft(
        'add',
        'rule',
        'inet',
        'gcprofile',
        'input',
        ...`meta l4proto udp fib saddr type != local numgen random mod 100 < ${lossPercent} drop`.split(' '),
      );
    }
    const sender = profiled('send', 'src', [
      'send',
      '--group',
      s1,
      '--iface',
      'eth0',
      '--file',
      file,
      '--rate',
      `${rateMbit}M`,
    ]);
    // CPU per process: the last reading while it ran (every 20 ms; servers: just before SIGTERM).
    const processes = { send: sender, retransmit, repair, receive: receiver };
    const cpu = new Map<string, number>();
    const sample = () => {
      for (const [role, process_] of Object.entries(processes)) {
        const seconds = cpuSeconds(process_.child.pid);
        if (seconds !== undefined) {
          cpu.set(role, seconds);
        }
      }
    };
    const sampler = setInterval(sample, 20);
    const received = await receiver.finished;
    await sender.finished;
    sample();
    clearInterval(sampler);
    console.error(`receive: exit ${received.code}: ${received.stderr.trim().split('\n').pop()}`);
    for (const server of [retransmit, repair]) {
      server.child.kill('SIGTERM');
      await server.finished;
    }
    for (const role of ['send', 'retransmit', 'repair', 'receive']) {
      for (const { name, profile } of readProfiles(join(profiles, role))) {
        const times = functionTimes(profile);
        const top = times.slice(0, Number(process.env.BENCH_PROFILE_TOP ?? 15));
        // Busy: every sample but the idle ones (waiting in the event loop); per 1,000 packets of
        // the file, the CPU a process of the role spent on it.
        const busyMs = times
          .filter((entry) => !entry.name.startsWith('(idle)'))
          .reduce((sum, entry) => sum + entry.ms, 0);
        const packets = Math.ceil((megabytes * 1_000_000) / 1400);
        const cpuMs = 1000 * (cpu.get(role) ?? Number.NaN);
        console.log(
          `\n### ${role} (${name}): busy ${busyMs.toFixed(0)} ms, ${((1000 * busyMs) / packets).toFixed(2)} ms per 1,000 packets; CPU ${cpuMs.toFixed(0)} ms, ${((1000 * cpuMs) / packets).toFixed(2)} ms per 1,000 packets`,
        );
        console.log('\n| self ms | share | function |\n|---|---|---|');
        for (const entry of top) {
          console.log(`| ${entry.ms.toFixed(0)} | ${entry.share.toFixed(1)} % | \`${entry.name}\` |`);
        }
      }
    }
  } finally {
    bed.down();
    rmSync(directory, { recursive: true, force: true });
  }
}

await main();
