import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { announceSessionsMax, nackRangePacketsMax, nackRangesMax } from '../../src/limits.js';
import { authOffsetTag, authTagBytes, authTrailerBytes } from '../../src/protocol/control.js';
import {
  descriptorFixedBytes,
  encodeData,
  headerBytes,
  offsetBodyLength,
  offsetFlags,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetMagic,
  offsetReserved1,
  offsetReserved2,
  offsetSequence,
  offsetSessionId,
  offsetTimestamp,
  offsetType,
  offsetVersion,
  PacketType,
  progressBodyBytes,
} from '../../src/protocol/packet.js';
import { repoRoot } from '../helpers/testbed.js';

const doc = readFileSync(join(repoRoot, 'docs', 'protocol.md'), 'utf8');

/** Rows of the markdown table that follows a heading. */
function tableAfter(heading: string, firstColumn: string): string[][] {
  const afterHeading = doc.slice(doc.indexOf(heading));
  const section = afterHeading.slice(afterHeading.indexOf(`| ${firstColumn} |`));
  const lines = section.split('\n').filter((line) => line.startsWith('| '));
  const rows: string[][] = [];
  for (const line of lines) {
    const cells = line
      .split('|')
      .slice(1, -1)
      .map((cell) => cell.trim());
    if (rows.length > 0 && cells.length !== rows[0]?.length) {
      break;
    }
    rows.push(cells);
  }
  return rows.slice(1).filter((row) => !row[0]?.startsWith('---'));
}

describe('docs/protocol.md matches the codec', () => {
  it('header offsets and sizes', () => {
    const rows = tableAfter('## Fixed header', 'offset');
    const expected: Record<string, [number, number]> = {
      magic: [offsetMagic, 2],
      version: [offsetVersion, 1],
      type: [offsetType, 1],
      flags: [offsetFlags, 1],
      'key epoch': [offsetKeyEpoch, 2],
      'session id': [offsetSessionId, 4],
      sequence: [offsetSequence, 4],
      timestamp: [offsetTimestamp, 8],
      'body length': [offsetBodyLength, 2],
      incarnation: [offsetIncarnation, 4],
    };
    const reserved = rows.filter((row) => row[2] === 'reserved').map((row) => Number(row[0]));
    assert.deepEqual(reserved, [offsetReserved1, offsetReserved2]);
    for (const [field, [offset, size]] of Object.entries(expected)) {
      const row = rows.find((r) => r[2] === field);
      assert.ok(row, `no row for ${field}`);
      assert.equal(Number(row[0]), offset, field);
      assert.equal(Number(row[1]), size, field);
    }
    const last = rows.at(-1) ?? [];
    assert.equal(Number(last[0]) + Number(last[1]), headerBytes);
  });

  it('message type numbers', () => {
    const rows = tableAfter('## Messages', 'type');
    for (const [name, code] of Object.entries(PacketType)) {
      const row = rows.find((r) => r[1] === name.toUpperCase());
      assert.ok(row, `no row for ${name}`);
      assert.equal(Number(row[0]), code, name);
    }
  });

  it('body sizes', () => {
    assert.match(doc, new RegExp(`Body, ${progressBodyBytes} bytes:`));
    assert.match(doc, new RegExp(`Body, ${descriptorFixedBytes} bytes plus the name:`));
  });

  it('control message sizes and limits', () => {
    assert.match(doc, new RegExp(`### Authentication trailer \\(${authTrailerBytes} bytes`));
    assert.match(doc, new RegExp(`\\| ${authOffsetTag} \\| ${authTagBytes} \\| tag:`));
    assert.match(doc, new RegExp(`range count, 1-${nackRangesMax}`));
    assert.match(doc, new RegExp(`packet count, 1-${nackRangePacketsMax}`));
    assert.match(doc, new RegExp(`session count, 0-${announceSessionsMax}`));
  });

  it('the golden example', () => {
    const hex = /Example \(golden\)[\s\S]*?```\n([0-9a-f ]+)\n```/.exec(doc)?.[1]?.replaceAll(' ', '');
    const packet = encodeData(
      {
        sessionId: 0xdeadbeef,
        sequence: 0xfffffffe,
        timestampUs: 1764000000123456,
        keyEpoch: 7,
        incarnation: 0x0badcafe,
      },
      Buffer.from('hi'),
    );
    assert.equal(hex, packet.toString('hex'));
  });
});
