/**
 * Every-n-th-packet mode for weak tokens (docs/protocol.md, "Group keys"): a crypto-period's
 * packets are sealed in groups of n, each group under its own key, and a receiver's token is asked
 * once per group, never per packet, and never releases the period's traffic key. The source draws
 * a fresh 16-byte seed for each group and sends it in clear with each packet of the group; the
 * token derives the group key from the seed and the KEY's shares, which stay inside it.
 *
 * The derivation is NIST SP 800-108 in counter mode with AES-CMAC (RFC 4493) as the PRF, keyed
 * by each share of the KEY (the traffic key alone, or with a member tree its two shares) and the
 * outputs XORed: a token that lacks either share (a member removed from the tree still holds the
 * service key's share) can predict nothing of a group key. AES-CMAC, because a PKCS#11 token does
 * it inside itself with a non-extractable AES key (CKM_AES_CMAC; SoftHSM2 refuses HMAC keys
 * shorter than the digest, and an AES-128 share is 16 bytes).
 *
 * Every packet of every group is still AEAD-encrypted: the mode changes how often the token is
 * asked, never which packets are encrypted. Encrypting only some packets is refused
 * (groupKeyModeProblem).
 */
import { createCipheriv } from 'node:crypto';
import { groupKeyPacketsMax } from '../limits.js';
import { groupSeedBytes } from '../protocol/restricted.js';

export { groupSeedBytes };

const label = Buffer.from('gatecast group key v1', 'ascii');
const blockBytes = 16;

/** What a group key is bound to besides the shares and the seed. */
export interface GroupKeyContext {
  readonly sessionId: number;
  readonly incarnation: number;
  readonly keyEpoch: number;
  readonly packetsPerGroup: number;
  readonly groupIndex: number;
}

/**
 * The group keys of one KEY in every-n-th-packet mode, derived inside a token
 * (Token.releaseGroupKeys) and asked by a receiver's opener (PacketOpener.setGroupKeys).
 */
export interface GroupKeySource {
  readonly packetsPerGroup: number;
  /** Bytes of each group key (the suite's key length). */
  readonly keyBytes: number;
  /** The key of group `groupIndex` for the seed its packets carry: one ask of the token. */
  groupKey(groupIndex: number, seed: Buffer): Buffer;
}

/** Bytes of one PRF input (groupKeyInput). */
export const groupKeyInputBytes = 1 + label.length + 1 + 4 + 4 + 2 + 4 + 4 + groupSeedBytes + 2;

/**
 * The PRF input of output block `block` (1, 2) of a group key of `keyBytes` bytes:
 * block (8) ‖ "gatecast group key v1" ‖ 0x00 ‖ session id (32) ‖ incarnation (32) ‖ key epoch (16) ‖
 * packets per group (32) ‖ group index (32) ‖ seed (128) ‖ key length in bits (16).
 */
export function groupKeyInput(
  context: GroupKeyContext,
  seed: Buffer,
  block: number,
  keyBytes: number,
): Buffer {
  if (seed.length !== groupSeedBytes) {
    throw new RangeError(`group seed: ${seed.length} bytes, not ${groupSeedBytes}`);
  }
  const out = Buffer.alloc(groupKeyInputBytes);
  let at = out.writeUInt8(block, 0);
  at += label.copy(out, at);
  at = out.writeUInt8(0, at);
  at = out.writeUInt32BE(context.sessionId >>> 0, at);
  at = out.writeUInt32BE(context.incarnation >>> 0, at);
  at = out.writeUInt16BE(context.keyEpoch & 0xffff, at);
  at = out.writeUInt32BE(context.packetsPerGroup >>> 0, at);
  at = out.writeUInt32BE(context.groupIndex >>> 0, at);
  at += seed.copy(out, at);
  out.writeUInt16BE(keyBytes * 8, at);
  return out;
}

/** The PRF: a 16-byte AES-CMAC of `message` under a 16- or 32-byte AES key. */
export type Cmac = (message: Buffer) => Buffer;

/**
 * Derives a group key of `keyBytes` (16 or 32) from one PRF per share: the XOR over the shares of
 * their SP 800-108 counter-mode outputs. Both the source (which holds the shares) and a token
 * (which keys the PRFs inside itself) call it.
 */
export function deriveGroupKeyWith(
  prfs: readonly Cmac[],
  seed: Buffer,
  context: GroupKeyContext,
  keyBytes: number,
): Buffer {
  if (keyBytes !== 16 && keyBytes !== 32) {
    throw new RangeError(`group key: ${keyBytes} bytes, not 16 or 32`);
  }
  if (prfs.length === 0) {
    throw new RangeError('a group key needs at least one share');
  }
  const out = Buffer.alloc(keyBytes);
  for (let block = 1; block * blockBytes <= keyBytes; block++) {
    const input = groupKeyInput(context, seed, block, keyBytes);
    for (const prf of prfs) {
      const output = prf(input);
      for (let index = 0; index < blockBytes; index++) {
        const at = (block - 1) * blockBytes + index;
        out[at] = (out[at] as number) ^ (output[index] as number);
      }
    }
  }
  return out;
}

/**
 * AES-CMAC (RFC 4493) under a raw 16- or 32-byte key, ready for many messages: the block cipher
 * (AES on single blocks, CMAC's primitive, not a packet mode) and the two subkeys are made once.
 */
export function createCmac(key: Buffer): Cmac {
  if (key.length !== 16 && key.length !== 32) {
    throw new RangeError(`AES-CMAC key: ${key.length} bytes, not 16 or 32`);
  }
  const cipher = createCipheriv(key.length === 16 ? 'aes-128-ecb' : 'aes-256-ecb', key, null);
  cipher.setAutoPadding(false);
  const encrypt = (block: Buffer) => cipher.update(block);
  const double = (block: Buffer) => {
    const out = Buffer.alloc(blockBytes);
    for (let index = 0; index < blockBytes; index++) {
      out[index] = (((block[index] as number) << 1) | ((block[index + 1] ?? 0) >> 7)) & 0xff;
    }
    if (((block[0] as number) & 0x80) !== 0) {
      out[blockBytes - 1] = (out[blockBytes - 1] as number) ^ 0x87;
    }
    return out;
  };
  const k1 = double(encrypt(Buffer.alloc(blockBytes)));
  const k2 = double(k1);
  return (message: Buffer) => {
    const blocks = Math.max(1, Math.ceil(message.length / blockBytes));
    const complete = message.length > 0 && message.length % blockBytes === 0;
    const subkey = complete ? k1 : k2;
    const lastAt = (blocks - 1) * blockBytes;
    let state = Buffer.alloc(blockBytes);
    const input = Buffer.alloc(blockBytes);
    for (let block = 0; block < blocks; block++) {
      for (let index = 0; index < blockBytes; index++) {
        let byte: number;
        if (block < blocks - 1) {
          byte = message[block * blockBytes + index] as number;
        } else {
          // The last block: whole, or padded with 0x80 0x00 …; then XOR the subkey.
          const at = lastAt + index;
          byte =
            at < message.length ? (message[at] as number) : at === message.length && !complete ? 0x80 : 0;
          byte ^= subkey[index] as number;
        }
        input[index] = (state[index] as number) ^ byte;
      }
      state = encrypt(input);
    }
    return state;
  };
}

/** AES-CMAC (RFC 4493) of one message under a raw 16- or 32-byte key. */
export function cmacAes(key: Buffer, message: Buffer): Buffer {
  return createCmac(key)(message);
}

/** The group key from raw shares (the source's side, and tests). */
export function deriveGroupKey(
  shares: readonly Buffer[],
  seed: Buffer,
  context: GroupKeyContext,
  keyBytes: number,
): Buffer {
  return deriveGroupKeyWith(shares.map(createCmac), seed, context, keyBytes);
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
    return `packets per group: ${settings.packetsPerGroup} is not 1-${groupKeyPacketsMax}`;
  }
  return undefined;
}

/** The group a packet's sequence falls in. */
export const groupOf = (sequence: number, packetsPerGroup: number) =>
  Math.floor((sequence >>> 0) / packetsPerGroup);
