/**
 * What the profiling benchmarks share: a gatecast command run under `node --cpu-prof`, the
 * profiles it writes, self time per sampled frame, and the CPU time a process has used so far.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gatecastBin } from '../test/helpers/testbed.js';

const clockTicksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** CPU seconds (user + system) a process has used so far (/proc/PID/stat), or undefined once it is gone. */
export function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) {
    return undefined;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
  } catch {
    return undefined;
  }
}

/** A call frame as V8's CPU profile names it. */
export interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

/** A V8 CPU profile (.cpuprofile), as much of it as the benchmarks read. */
export interface Profile {
  nodes: Array<{ id: number; callFrame: CallFrame }>;
  samples: number[];
  timeDeltas: number[];
}

/** Node's own arguments that make a process write its CPU profile into `directory` when it exits. */
export function cpuProfileArguments(directory: string): string[] {
  return ['--cpu-prof', '--cpu-prof-dir', directory];
}

/**
 * Node's arguments that run `gatecast ...args` writing its CPU profile into `directory`
 * (BENCH_PROFILE_BIN names another build's bin/gatecast to profile instead of this one).
 */
export function profiledArguments(directory: string, args: readonly string[]): string[] {
  return [...cpuProfileArguments(directory), process.env.BENCH_PROFILE_BIN ?? gatecastBin(), ...args];
}

/** The profiles a profiled process wrote into `directory` (one per process that exited). */
export function readProfiles(directory: string): Array<{ name: string; profile: Profile }> {
  return readdirSync(directory)
    .filter((name) => name.endsWith('.cpuprofile'))
    .map((name) => ({ name, profile: JSON.parse(readFileSync(join(directory, name), 'utf8')) as Profile }));
}

/** A frame's name with where it lives: "function dist/…/file.js:line". */
export function frameName(frame: CallFrame): string {
  const file = frame.url.replace(/^.*\/(dist|node_modules)\//, '$1/');
  return `${frame.functionName || '(anonymous)'} ${file}${file ? `:${frame.lineNumber + 1}` : ''}`;
}

/** Self time (ms) per key of the sampled frames, and the time sampled in all. */
export function selfTimes(
  profile: Profile,
  key: (frame: CallFrame) => string,
): { byKey: Map<string, number>; allMs: number } {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const byKey = new Map<string, number>();
  let allMs = 0;
  for (const [i, id] of profile.samples.entries()) {
    const node = byId.get(id);
    if (node === undefined) {
      continue;
    }
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    const name = key(node.callFrame);
    byKey.set(name, (byKey.get(name) ?? 0) + ms);
    allMs += ms;
  }
  return { byKey, allMs };
}
