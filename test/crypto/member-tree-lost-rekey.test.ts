/**
 * Member trees: a burst of more leaves than rekeyGapsFatal, and one member's receiver loses the
 * first of its REKEY datagrams. Every later one is a gap until the source's next full repeat
 * brings the lost one: the receiver must wait for it, not tell its token to enroll again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { rekeyGapsFatal } from '../../src/limits.js';
import { offsetType, PacketType } from '../../src/protocol/packet.js';
import { decodeRekeyDatagram } from '../../src/protocol/restricted.js';
import { burstOfLeaves, createTreeBed, type TreeBed, type TreeMember } from '../helpers/member-tree-bed.js';

const periodMs = 2_000;
const leaving = rekeyGapsFatal + 6;
const staying = 3;

describe('member trees: a REKEY lost in a burst of leaves', () => {
  let bed: TreeBed;

  before(async () => {
    bed = await createTreeBed({ treeDepth: 6 });
    for (let index = 0; index < leaving + staying; index++) {
      await bed.addMember(`m${index}`);
    }
  });

  after(async () => {
    await bed?.close();
  });

  it(`${leaving} revokes in a row, the first REKEY lost by one member: the ${staying} members left decode every packet, none is told to enroll again`, async () => {
    let droppedOne = false;
    const sequence = await burstOfLeaves(bed, {
      leaving,
      periodMs,
      lose: (_member, index, datagram) => {
        if (index !== bed.members.length - 1 || datagram[offsetType] !== PacketType.rekey || droppedOne) {
          return false;
        }
        const decoded = decodeRekeyDatagram(datagram);
        droppedOne = decoded.ok && decoded.value.rekey.readUInt32BE(8) === 1;
        return droppedOne;
      },
    });
    const members = bed.members;
    assert.ok(droppedOne, 'the first REKEY was lost by the last member');
    assert.ok(((members.at(-1) as TreeMember).protection.stats.rekeysIgnored.gap ?? 0) >= rekeyGapsFatal);
    const all = Array.from({ length: sequence }, (_, index) => index);
    for (const member of members.slice(leaving)) {
      assert.equal(member.refusal, undefined, String(member.refusal?.message));
      assert.equal(member.protection.stats.rekeysApplied, leaving, JSON.stringify(member.protection.stats));
      assert.equal(member.token.memberships()[0]?.treeEpoch, leaving);
      assert.deepEqual(member.decoded, all, JSON.stringify(member.protection.stats));
    }
    for (const member of members.slice(0, leaving)) {
      assert.ok(member.decoded.length < sequence);
    }
  });
});
