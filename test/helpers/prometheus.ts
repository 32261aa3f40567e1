/** Parses the Prometheus text format strictly (parse-prometheus-text-format throws on a bad line). */
import { createRequire } from 'node:module';

/** One metric family as the parser returns it. */
export interface MetricFamily {
  name: string;
  help: string;
  type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
  metrics: Array<{
    value?: string;
    labels?: Record<string, string>;
    buckets?: Record<string, string>;
    count?: string;
    sum?: string;
  }>;
}

const parse = createRequire(import.meta.url)('parse-prometheus-text-format') as (
  text: string,
) => MetricFamily[];

/** The families of a /metrics body, by name. */
export function parseMetrics(text: string): Map<string, MetricFamily> {
  return new Map(parse(text).map((family) => [family.name, family]));
}

/** The value of one series (labels must match exactly), or undefined. */
export function seriesValue(
  families: Map<string, MetricFamily>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const metric = families
    .get(name)
    ?.metrics.find((m) => JSON.stringify(m.labels ?? {}) === JSON.stringify(labels));
  return metric?.value === undefined ? undefined : Number(metric.value);
}

/** The series every gatecast daemon's /metrics names. */
export const namedSeries = [
  'gatecast_repair_latency_seconds',
  'gatecast_nacks_total',
  'gatecast_repairs_total',
  'gatecast_recovered_packets_total',
  'gatecast_unrecoverable_packets_total',
  'gatecast_election_changes_total',
  'gatecast_failovers_total',
  'gatecast_charges_total',
  'gatecast_orders_total',
  'gatecast_admission_refusals_total',
  'gatecast_info',
];
