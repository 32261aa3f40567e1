/**
 * Row ids for the ledger's append-mostly tables. A UUID version 7 (RFC 9562): 48 bits of Unix
 * milliseconds, then random bits. Ids written together sort together, so a batch of inserts lands
 * at the right edge of the primary-key index instead of on random pages all over it.
 */
import { randomFillSync } from 'node:crypto';

const pool = Buffer.alloc(16 * 256);
let poolAt = pool.length;

/** A new UUIDv7, e.g. "0190b6c2-6f3a-7c1e-9a2b-3c4d5e6f7a8b". */
export function timeOrderedId(now: number = Date.now()): string {
  if (poolAt === pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const bytes = pool.subarray(poolAt, poolAt + 16);
  poolAt += 16;
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = 0x70 | ((bytes[6] as number) & 0x0f); // version 7
  bytes[8] = 0x80 | ((bytes[8] as number) & 0x3f); // variant 10
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
