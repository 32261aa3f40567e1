/**
 * Member trees: more leaves between two of the source's polls than it repeats rekeys for
 * (treeRekeysServedMax), as when many entitlements end at one sweep or an operator revokes several
 * in a row. The members that stay must go on without a lost packet.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { rekeyChecksPerSecondMax } from '../../src/limits.js';
import { burstOfLeaves, createTreeBed, type TreeBed } from '../helpers/member-tree-bed.js';

const periodMs = 2_000;
const leaving = rekeyChecksPerSecondMax + 5; // more than a source repeats (8), and than the checks of a second
const staying = 3;

describe('member trees: a burst of leaves between two polls of the source', () => {
  let bed: TreeBed;

  before(async () => {
    bed = await createTreeBed({ treeDepth: 5 });
    for (let index = 0; index < leaving + staying; index++) {
      await bed.addMember(`m${index}`);
    }
  });

  after(async () => {
    await bed?.close();
  });

  it(`${leaving} revokes in a row: the ${staying} members left decode every packet, the others stop`, async () => {
    const sequence = await burstOfLeaves(bed, { leaving, periodMs });
    const all = Array.from({ length: sequence }, (_, index) => index);
    for (const member of bed.members.slice(leaving)) {
      assert.equal(member.refusal, undefined, String(member.refusal?.message));
      assert.equal(member.protection.stats.rekeysApplied, leaving, JSON.stringify(member.protection.stats));
      assert.deepEqual(member.decoded, all, JSON.stringify(member.protection.stats));
    }
    for (const member of bed.members.slice(0, leaving)) {
      assert.ok(member.decoded.length < sequence);
    }
  });
});
