import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { openUsageJournal, type UsageReport } from '../../src/repair/usage-journal.js';

const report = (n: number): UsageReport => ({
  key: `repair/run/${n}`,
  body: { account: 'alice', kind: 'repair-bytes', quantity: 1000 * n, packets: n },
});

describe('the repair controller’s usage journal', () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-journal-'));
  after(() => rmSync(directory, { recursive: true, force: true }));

  it('keeps the reports not yet taken across a reopen, in order, and drops the taken ones', () => {
    const path = join(directory, 'a.journal');
    const first = openUsageJournal(path);
    assert.deepEqual(first.unsent, []);
    for (const n of [1, 2, 3]) {
      first.append(report(n));
    }
    first.done('repair/run/2');
    first.close();
    const second = openUsageJournal(path);
    assert.deepEqual(second.unsent, [report(1), report(3)]);
    second.done('repair/run/1');
    second.close();
    const third = openUsageJournal(path);
    assert.deepEqual(third.unsent, [report(3)]);
    third.close();
    assert.equal(readFileSync(path, 'utf8').trim().split('\n').length, 1, 'compacted on open');
  });

  it('a line torn by a crash mid-write is skipped, the rest is kept', () => {
    const path = join(directory, 'b.journal');
    const journal = openUsageJournal(path);
    journal.append(report(7));
    journal.close();
    appendFileSync(path, '{"report": {"key": "repair/run/8", "bo');
    const reopened = openUsageJournal(path);
    assert.deepEqual(reopened.unsent, [report(7)]);
    reopened.close();
  });

  it('a line that is JSON but no entry of the journal (null, a number, a list, a report of null) is skipped, not a crash', () => {
    const path = join(directory, 'c.journal');
    const journal = openUsageJournal(path);
    journal.append(report(9));
    journal.close();
    appendFileSync(path, 'null\n5\n[1]\n"x"\n{"report":null}\n{"report":{"key":3}}\n{"done":null}\n');
    const reopened = openUsageJournal(path);
    assert.deepEqual(reopened.unsent, [report(9)]);
    reopened.close();
  });
});
