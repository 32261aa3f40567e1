import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Metrics } from '../../src/net/metrics.js';
import { namedSeries, parseMetrics, seriesValue } from '../helpers/prometheus.js';

describe('metrics', () => {
  it('the named series parse as Prometheus text and carry the totals the roles report', async () => {
    const metrics = new Metrics('1.2.3', 'repair');
    let recovered = 10;
    metrics.addSampler(() => ({
      role: 'repair',
      nacksSent: 4,
      repairsReceived: 9,
      recoveredPackets: recovered,
      unrecoverablePackets: 1,
      failovers: 2,
      droppedDatagrams: { truncated: 3 },
      repairDelaysSeconds: [0.002, 0.004, 0.2],
    }));
    metrics.addSampler(() => ({ role: 'repair', recoveredPackets: 5 }));
    metrics.addSampler(() => ({ role: 'serve', charges: { EUR: { count: 7, amountMinor: 1234 } } }));
    metrics.orders.inc({ outcome: 'accepted' });
    metrics.admissionRefusals.inc({ reason: 'link-full' }, 2);
    const first = parseMetrics(await metrics.text());
    for (const name of namedSeries) {
      assert.ok(first.has(name), `${name} is missing`);
    }
    assert.equal(seriesValue(first, 'gatecast_recovered_packets_total', { role: 'repair' }), 15);
    assert.equal(seriesValue(first, 'gatecast_nacks_total', { role: 'repair', direction: 'sent' }), 4);
    assert.equal(
      seriesValue(first, 'gatecast_dropped_datagrams_total', { role: 'repair', reason: 'truncated' }),
      3,
    );
    assert.equal(seriesValue(first, 'gatecast_charges_total', { currency: 'EUR' }), 7);
    assert.equal(seriesValue(first, 'gatecast_charged_amount_minor_total', { currency: 'EUR' }), 1234);
    assert.equal(seriesValue(first, 'gatecast_orders_total', { outcome: 'accepted' }), 1);
    assert.equal(seriesValue(first, 'gatecast_admission_refusals_total', { reason: 'link-full' }), 2);
    assert.equal(seriesValue(first, 'gatecast_info', { version: '1.2.3', command: 'repair' }), 1);
    const histogram = first.get('gatecast_repair_latency_seconds')?.metrics[0];
    assert.equal(histogram?.buckets?.['+Inf'], '3');
    assert.equal(histogram?.buckets?.['0.005'], '2');
    assert.equal(histogram?.buckets?.['0.25'], '3');

    // A second scrape mirrors the new totals (not added twice); direct counters keep theirs.
    recovered = 12;
    const second = parseMetrics(await metrics.text());
    assert.equal(seriesValue(second, 'gatecast_recovered_packets_total', { role: 'repair' }), 17);
    assert.equal(seriesValue(second, 'gatecast_orders_total', { outcome: 'accepted' }), 1);
    assert.equal(second.get('gatecast_repair_latency_seconds')?.metrics[0]?.buckets?.['+Inf'], '6');
  });

  it('a malformed exposition is refused by the parser the tests use', () => {
    assert.throws(() => parseMetrics('gatecast_nacks_total{role="repair" 1\n'));
  });
});
