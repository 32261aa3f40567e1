/**
 * The Prometheus metrics every gatecast daemon exposes on GET /metrics (prom-client, text format
 * 0.0.4). The named series are registered here, in one place, so every role reports under the
 * same names (docs/operations.md lists them).
 *
 * Data-plane counters are not incremented on the hot paths: each role already keeps counters for
 * its status endpoint, and at scrape time a sampler reads them and the mirrored counters are set
 * to those totals. Counters that only a control-plane role knows (orders, admission refusals) are
 * incremented directly by that role through `metrics.orders` and `metrics.admissionRefusals`.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Upper bounds of the repair latency buckets, in seconds. */
export const repairDelayBucketsSeconds = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;

/** What one sampler reads from a role at scrape time: running totals (never per-scrape deltas). */
export interface RoleSample {
  /** The `role` label: retransmit, repair, repair-controller, agent, serve. */
  readonly role: string;
  readonly packetsReceived?: number | undefined;
  readonly nacksSent?: number | undefined;
  readonly nacksReceived?: number | undefined;
  readonly repairsSent?: number | undefined;
  readonly repairsReceived?: number | undefined;
  readonly recoveredPackets?: number | undefined;
  readonly unrecoverablePackets?: number | undefined;
  readonly electionChanges?: number | undefined;
  /** Moves to the next retransmit server after a timeout. */
  readonly failovers?: number | undefined;
  /** Datagrams counted and dropped, per reason. */
  readonly droppedDatagrams?: Readonly<Record<string, number>> | undefined;
  /** Transfers posted to the ledger and their amounts in minor units, per currency. */
  readonly charges?: Readonly<Record<string, { count: number; amountMinor: number }>> | undefined;
  /** Sessions held per election state (retransmit servers). */
  readonly sessionsByState?: Readonly<Record<string, number>> | undefined;
  /** Repair latencies observed since the previous sample, in seconds (fed to the histogram). */
  readonly repairDelaysSeconds?: readonly number[] | undefined;
}

/** Reads a role's counters at scrape time. */
export type RoleSampler = () => RoleSample | Promise<RoleSample>;

type Labels = Record<string, string>;

/** A counter whose value is copied from a role's own totals at every scrape. */
class MirroredCounter {
  readonly #counter: Counter<string>;
  readonly #totals = new Map<string, { labels: Labels; value: number }>();

  constructor(registry: Registry, name: string, help: string, labelNames: string[]) {
    this.#counter = new Counter({ name, help, labelNames, registers: [registry] });
  }

  add(labels: Labels, value: number | undefined): void {
    if (value === undefined || !Number.isFinite(value) || value < 0) {
      return;
    }
    const key = JSON.stringify(labels);
    const entry = this.#totals.get(key);
    if (entry === undefined) {
      this.#totals.set(key, { labels, value });
    } else {
      entry.value += value;
    }
  }

  /** Replaces the counter's series with the totals added since the last publish. */
  publish(): void {
    this.#counter.reset();
    for (const { labels, value } of this.#totals.values()) {
      this.#counter.inc(labels, value);
    }
    this.#totals.clear();
  }
}

/** The registry and the named series of one process. */
export class Metrics {
  readonly registry = new Registry();
  /** Orders taken by the order role, by outcome (accepted, cancelled, expired). */
  readonly orders: Counter<'outcome'>;
  /** Orders refused at admission, by coded reason (link-full, not-entitled, …). */
  readonly admissionRefusals: Counter<'reason'>;
  readonly #repairDelay: Histogram<'role'>;
  readonly #sessions: Gauge<'role' | 'state'>;
  readonly #mirrored: Record<string, MirroredCounter>;
  readonly #samplers: RoleSampler[] = [];

  constructor(version: string, process: string) {
    const registry = this.registry;
    const mirror = (name: string, help: string, labelNames: string[]) =>
      new MirroredCounter(registry, name, help, labelNames);
    this.#mirrored = {
      packets: mirror('gatecast_packets_received_total', 'Datagrams received on joined groups', ['role']),
      nacks: mirror('gatecast_nacks_total', 'NACK messages sent or received', ['role', 'direction']),
      repairs: mirror('gatecast_repairs_total', 'REPAIR packets sent or received', ['role', 'direction']),
      recovered: mirror('gatecast_recovered_packets_total', 'Lost packets a REPAIR brought back', ['role']),
      unrecoverable: mirror(
        'gatecast_unrecoverable_packets_total',
        'Lost packets given up (latency budget spent or nobody held them)',
        ['role'],
      ),
      election: mirror(
        'gatecast_election_changes_total',
        'Election state changes of this retransmit server (listening <-> withdrawn)',
        ['role'],
      ),
      failovers: mirror(
        'gatecast_failovers_total',
        'NACKs moved to the next retransmit server after a timeout',
        ['role'],
      ),
      dropped: mirror('gatecast_dropped_datagrams_total', 'Datagrams counted and dropped, by reason', [
        'role',
        'reason',
      ]),
      charges: mirror('gatecast_charges_total', 'Transfers posted to the ledger', ['currency']),
      chargedAmount: mirror(
        'gatecast_charged_amount_minor_total',
        'Amount of the transfers posted to the ledger, in minor units',
        ['currency'],
      ),
    };
    this.#repairDelay = new Histogram({
      name: 'gatecast_repair_latency_seconds',
      help: 'Extra delay of a repaired packet over the median direct one (S2 emission minus source timestamp)',
      labelNames: ['role'],
      buckets: [...repairDelayBucketsSeconds],
      registers: [registry],
    });
    this.#sessions = new Gauge({
      name: 'gatecast_sessions',
      help: 'Sessions held, by election state',
      labelNames: ['role', 'state'],
      registers: [registry],
    });
    this.orders = new Counter({
      name: 'gatecast_orders_total',
      help: 'Channel orders handled by the order role, by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    });
    this.admissionRefusals = new Counter({
      name: 'gatecast_admission_refusals_total',
      help: 'Orders refused at admission, by reason',
      labelNames: ['reason'],
      registers: [registry],
    });
    new Gauge({
      name: 'gatecast_info',
      help: 'Always 1: the version and the command of this process',
      labelNames: ['version', 'command'],
      registers: [registry],
    }).set({ version, command: process }, 1);
  }

  /** Adds a sampler read at every scrape. */
  addSampler(sampler: RoleSampler): void {
    this.#samplers.push(sampler);
  }

  /** The content type of text(). */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Reads every sampler and renders the Prometheus text format. */
  async text(): Promise<string> {
    this.#sessions.reset();
    for (const sampler of this.#samplers) {
      this.#take(await sampler());
    }
    for (const counter of Object.values(this.#mirrored)) {
      counter.publish();
    }
    return this.registry.metrics();
  }

  #take(sample: RoleSample): void {
    const role = { role: sample.role };
    const m = this.#mirrored;
    m.packets?.add(role, sample.packetsReceived);
    m.nacks?.add({ ...role, direction: 'sent' }, sample.nacksSent);
    m.nacks?.add({ ...role, direction: 'received' }, sample.nacksReceived);
    m.repairs?.add({ ...role, direction: 'sent' }, sample.repairsSent);
    m.repairs?.add({ ...role, direction: 'received' }, sample.repairsReceived);
    m.recovered?.add(role, sample.recoveredPackets);
    m.unrecoverable?.add(role, sample.unrecoverablePackets);
    m.election?.add(role, sample.electionChanges);
    m.failovers?.add(role, sample.failovers);
    for (const [reason, count] of Object.entries(sample.droppedDatagrams ?? {})) {
      m.dropped?.add({ ...role, reason }, count);
    }
    for (const [currency, charge] of Object.entries(sample.charges ?? {})) {
      m.charges?.add({ currency }, charge.count);
      m.chargedAmount?.add({ currency }, charge.amountMinor);
    }
    for (const [state, count] of Object.entries(sample.sessionsByState ?? {})) {
      this.#sessions.inc({ ...role, state }, count);
    }
    for (const seconds of sample.repairDelaysSeconds ?? []) {
      this.#repairDelay.observe(role, Math.max(0, seconds));
    }
  }
}
