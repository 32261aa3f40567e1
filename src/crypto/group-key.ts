/**
 * Every-n-th-packet mode for weak tokens (docs/architecture.md, "Restricted channels";
 * docs/protocol.md, "Group keys"): the token is asked once per group of n packets, never per
 * packet. At the source, the token gives fresh entropy (a 16-byte group seed) for each group; the
 * group key is HKDF-SHA-256 over the traffic key with that seed, bound to the session, the key
 * epoch and the group index. At a receiver, the token that holds the traffic key derives the same
 * group key from the seed once per group. Every packet of every group is still AEAD-encrypted
 * under its group key: the mode saves token calls, never encryption. Encrypting only some packets
 * is refused (groupKeyModeProblem).
 */
import { hkdfSync } from 'node:crypto';
import { groupKeyPacketsMax } from '../limits.js';

/** Bytes of fresh entropy per group. */
export const groupSeedBytes = 16;
const info = Buffer.from('gatecast group key v1', 'ascii');

/** What a group key is bound to besides the traffic key and the seed. */
export interface GroupKeyContext {
  readonly sessionId: number;
  readonly keyEpoch: number;
  readonly groupIndex: number;
}

/**
 * The group key: HKDF-SHA-256(ikm = traffic key, salt = seed, info = "gatecast group key v1" ‖
 * session id (32) ‖ key epoch (32) ‖ group index (64)), as long as the traffic key (16 or 32 bytes).
 * Runs inside the token (it holds the traffic key).
 */
export function deriveGroupKey(trafficKey: Buffer, seed: Buffer, context: GroupKeyContext): Buffer {
  if (seed.length !== groupSeedBytes) {
    throw new RangeError(`group seed: ${seed.length} bytes, not ${groupSeedBytes}`);
  }
  if (trafficKey.length !== 16 && trafficKey.length !== 32) {
    throw new RangeError(`traffic key: ${trafficKey.length} bytes, not 16 or 32`);
  }
  const bound = Buffer.alloc(info.length + 16);
  info.copy(bound, 0);
  bound.writeUInt32BE(context.sessionId >>> 0, info.length);
  bound.writeUInt32BE(context.keyEpoch >>> 0, info.length + 4);
  bound.writeBigUInt64BE(BigInt(context.groupIndex), info.length + 8);
  return Buffer.from(hkdfSync('sha256', trafficKey, seed, bound, trafficKey.length));
}

/** The token's side, as the group-key caches call it: once per group. */
export interface GroupKeyToken {
  /** Source: fresh entropy for a new group and the group key derived from it. */
  newGroup?(context: GroupKeyContext): { seed: Buffer; key: Buffer } | Promise<{ seed: Buffer; key: Buffer }>;
  /** Receiver: the group key for a seed the source sent. */
  groupKey(seed: Buffer, context: GroupKeyContext): Buffer | Promise<Buffer>;
}

/** Why an every-n-th configuration is refused, or undefined. */
export function groupKeyModeProblem(settings: {
  packetsPerGroup: number;
  encrypt: string;
}): string | undefined {
  if (settings.encrypt !== 'all') {
    return `encrypt: "${settings.encrypt}" leaves packets in clear; every-n-th mode changes how often the token is asked, never which packets are encrypted ("all")`;
  }
  if (
    !Number.isSafeInteger(settings.packetsPerGroup) ||
    settings.packetsPerGroup < 1 ||
    settings.packetsPerGroup > groupKeyPacketsMax
  ) {
    return `packetsPerGroup: ${settings.packetsPerGroup} is not 1-${groupKeyPacketsMax}`;
  }
  return undefined;
}

/** The group a packet counter falls in. */
export const groupOf = (packetCounter: number, packetsPerGroup: number) =>
  Math.floor(packetCounter / packetsPerGroup);

/**
 * The source's side: the key and seed for each packet counter, asking the token once per group.
 * Counters only go up (nonces are never reused); a counter of an earlier group is refused.
 */
export function createGroupKeySender(settings: {
  packetsPerGroup: number;
  sessionId: number;
  keyEpoch: number;
  token: GroupKeyToken;
}) {
  const problem = groupKeyModeProblem({ packetsPerGroup: settings.packetsPerGroup, encrypt: 'all' });
  if (problem !== undefined) {
    throw new RangeError(problem);
  }
  const newGroup = settings.token.newGroup;
  if (newGroup === undefined) {
    throw new RangeError('the token cannot start groups (no newGroup)');
  }
  let current: { groupIndex: number; seed: Buffer; key: Buffer } | undefined;
  return async (packetCounter: number): Promise<{ groupIndex: number; seed: Buffer; key: Buffer }> => {
    const groupIndex = groupOf(packetCounter, settings.packetsPerGroup);
    if (current !== undefined && groupIndex < current.groupIndex) {
      throw new RangeError(
        `packet counter ${packetCounter} is in group ${groupIndex}, before the current one`,
      );
    }
    if (current === undefined || current.groupIndex !== groupIndex) {
      const context = { sessionId: settings.sessionId, keyEpoch: settings.keyEpoch, groupIndex };
      const { seed, key } = await newGroup.call(settings.token, context);
      current = { groupIndex, seed, key };
    }
    return current;
  };
}

/**
 * The receiver's side: the group key for (group index, seed), asking the token once per group and
 * keeping the last few groups (reordered packets). A different seed for a known group is a
 * different key (a forged seed only fails AEAD; it never replaces a good key).
 */
export function createGroupKeyReceiver(settings: {
  sessionId: number;
  keyEpoch: number;
  token: GroupKeyToken;
  groupsKept?: number;
}) {
  const kept = settings.groupsKept ?? 4;
  const cache = new Map<string, Buffer>();
  return async (groupIndex: number, seed: Buffer): Promise<Buffer> => {
    const id = `${groupIndex}/${seed.toString('hex')}`;
    const known = cache.get(id);
    if (known !== undefined) {
      return known;
    }
    const key = await settings.token.groupKey(seed, {
      sessionId: settings.sessionId,
      keyEpoch: settings.keyEpoch,
      groupIndex,
    });
    cache.set(id, key);
    while (cache.size > kept) {
      cache.delete(cache.keys().next().value as string);
    }
    return key;
  };
}
