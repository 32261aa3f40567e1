/**
 * Reads each role's own status counters at scrape time and maps them onto the named metrics of
 * src/net/metrics.ts, so the roles' hot paths stay untouched.
 */
import { readFileSync } from 'node:fs';
import { Metrics, type RoleSample, type RoleSampler } from '../net/metrics.js';
import type { AgentStatus, WatchingAgentStatus } from '../receiver/agent.js';
import type { ControllerStatus } from '../repair/controller.js';
import type { RepairServer } from '../repair/repair.js';
import type { RetransmitStatus } from '../retransmit/retransmit.js';

/** The package's version (for gatecast_info). */
export function packageVersion(): string {
  const packageJson = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return packageJson.version;
}

/** A registry for one command, with its samplers. */
export function metricsFor(command: string, ...samplers: RoleSampler[]): Metrics {
  const metrics = new Metrics(packageVersion(), command);
  for (const sampler of samplers) {
    metrics.addSampler(sampler);
  }
  return metrics;
}

/** A retransmit server's counters. */
export function retransmitSample(status: RetransmitStatus): RoleSample {
  const sessionsByState: Record<string, number> = { listening: 0, withdrawn: 0 };
  for (const session of status.sessions) {
    sessionsByState[session.state] = (sessionsByState[session.state] ?? 0) + 1;
  }
  return {
    role: 'retransmit',
    packetsReceived: status.packetsIn,
    nacksReceived: status.nacksReceived,
    repairsSent: status.repairsSent,
    electionChanges: status.electionChanges,
    droppedDatagrams: status.dropped,
    sessionsByState,
  };
}

/**
 * A repair server's counters, and the repair latencies it recorded since the previous call: each
 * repaired packet's one-way delay minus the median delay of packets that came directly.
 */
export function repairSampler(server: RepairServer, role = 'repair'): RoleSampler {
  let taken = 0;
  return () => {
    const status = server.status();
    const samples = server.delaySamples?.();
    let repairDelaysSeconds: number[] | undefined;
    if (samples !== undefined && samples.directMs.length > 0) {
      taken = Math.min(taken, samples.repairedMs.length);
      const direct = median(samples.directMs);
      repairDelaysSeconds = samples.repairedMs.slice(taken).map((ms) => (ms - direct) / 1000);
      taken = samples.repairedMs.length;
    }
    return {
      role,
      packetsReceived: status.packetsIn,
      nacksSent: status.nacksSent,
      repairsReceived: status.repairsReceived,
      recoveredPackets: status.recovered,
      unrecoverablePackets: status.unrecoverable,
      failovers: status.timeouts,
      droppedDatagrams: status.dropped,
      repairDelaysSeconds,
    };
  };
}

/** The repair controller's modules, summed. */
export function controllerSample(status: ControllerStatus): RoleSample {
  return {
    role: 'repair-controller',
    recoveredPackets: status.modules.reduce((sum, module) => sum + module.recovered, 0),
  };
}

/** An agent's counters (plain or watching). */
export function agentSample(status: AgentStatus | WatchingAgentStatus): RoleSample {
  const deliveries =
    'sessions' in status
      ? status.sessions.flatMap((session) => (session.delivery === undefined ? [] : [session.delivery]))
      : [status];
  const malformed = deliveries.reduce((sum, delivery) => sum + delivery.malformed, 0);
  const ignored = deliveries.reduce((sum, delivery) => sum + delivery.ignored, 0);
  const sum = (count: (delivery: AgentStatus) => number) =>
    deliveries.reduce((total, delivery) => total + count(delivery), 0);
  return {
    role: 'agent',
    packetsReceived: deliveries.reduce((sum, delivery) => sum + delivery.delivered + delivery.duplicates, 0),
    // Restricted sessions: DATA the token refused to open, and DATA there was no token to open.
    droppedDatagrams: {
      malformed,
      ignored,
      'token-refused': sum((delivery) => delivery.refused),
      'no-token': sum((delivery) => delivery.restrictedDropped),
    },
  };
}

function median(samples: readonly number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? 0;
}
