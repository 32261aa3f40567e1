/**
 * Logical key hierarchy (docs/protocol.md, "LKH rekey"; RFC 2627, Wong–Gouda–Lam): a binary tree
 * of AES-256 keys over the members of a service. Each member holds the keys on the path from its
 * leaf to the root; the root key is the group key, under which the next crypto-period's traffic
 * key is wrapped. On a leave, every key the departed member held is replaced by one signed message
 * of about 2·log₂N wrapped keys (AES key wrap, RFC 3394): each new key is wrapped under the keys of
 * its children that still have members, never under a key a departed member held. On a join, each
 * key on the new member's path is replaced and wrapped under its predecessor for the members
 * already below it (the newcomer learns no earlier key). Nodes are numbered as a heap: the root is
 * 1, the children of v are 2v and 2v+1, leaf slot s is 2^depth + s.
 *
 * The key server (createLkhTree) keeps the keys of untouched nodes derived from one master secret
 * (HKDF by node number), so a tree of a million members costs memory only for what changed.
 */
import { createCipheriv, createDecipheriv, createHmac, type KeyObject, randomBytes } from 'node:crypto';
import { lkhDepthMax } from '../limits.js';
import { type DecodeResult, invalid, valid } from '../protocol/errors.js';
import { signEd25519Into, verifySignature } from './authority.js';

export const lkhMagic = Buffer.from('GCLK', 'ascii');
export const lkhVersion = 1;
export const lkhHeaderBytes = 16;
export const lkhEntryBytes = 44;
export const lkhWrappedKeyBytes = 40;
export const lkhSignatureBytes = 64;
export const lkhKeyBytes = 32;
const offsetVersion = 4;
const offsetDepth = 5;
const offsetEntryCount = 6;
const offsetEpoch = 8;
const offsetTreeId = 12;
const keyWrapIv = Buffer.from('a6a6a6a6a6a6a6a6', 'hex');
/** The key that wraps an entry: the target's left child, its right child, or its own previous key. */
export const LkhWrapping = { leftChild: 0, rightChild: 1, previous: 2 } as const;

/** One wrapped key of a rekey message. */
export interface LkhEntry {
  readonly target: number;
  readonly wrapping: 0 | 1 | 2;
  readonly wrapped: Buffer;
}

/** A decoded rekey message. */
export interface LkhRekey {
  readonly depth: number;
  readonly epoch: number;
  readonly treeId: number;
  readonly entries: readonly LkhEntry[];
  readonly signed: Buffer;
  readonly signature: Buffer;
}

function wrapKey(kek: Buffer, key: Buffer): Buffer {
  const cipher = createCipheriv('id-aes256-wrap', kek, keyWrapIv);
  return Buffer.concat([cipher.update(key), cipher.final()]);
}

function unwrapKey(kek: Buffer, wrapped: Buffer): Buffer | undefined {
  try {
    const decipher = createDecipheriv('id-aes256-wrap', kek, keyWrapIv);
    return Buffer.concat([decipher.update(wrapped), decipher.final()]);
  } catch {
    return undefined; // the integrity check of RFC 3394 failed: not our key
  }
}

/** The nodes from a slot's leaf up to the root, leaf first. */
export function lkhPath(depth: number, slot: number): number[] {
  const path: number[] = [];
  for (let node = 2 ** depth + slot; node >= 1; node = Math.floor(node / 2)) {
    path.push(node);
  }
  return path;
}

/** Encodes and signs a rekey message. */
function encodeRekey(
  header: { depth: number; epoch: number; treeId: number },
  entries: readonly LkhEntry[],
  signingKey: KeyObject,
): Buffer {
  const signedBytes = lkhHeaderBytes + entries.length * lkhEntryBytes;
  const out = Buffer.alloc(signedBytes + lkhSignatureBytes);
  lkhMagic.copy(out, 0);
  out[offsetVersion] = lkhVersion;
  out[offsetDepth] = header.depth;
  out.writeUInt16BE(entries.length, offsetEntryCount);
  out.writeUInt32BE(header.epoch, offsetEpoch);
  out.writeUInt32BE(header.treeId, offsetTreeId);
  let offset = lkhHeaderBytes;
  for (const entry of entries) {
    out.writeUInt32BE(((entry.wrapping << 30) | entry.target) >>> 0, offset);
    entry.wrapped.copy(out, offset + 4);
    offset += lkhEntryBytes;
  }
  signEd25519Into(out.subarray(0, signedBytes), signingKey, out, signedBytes);
  return out;
}

/** The tree id a rekey message names, read in place (the message is at least its header long). */
export const rekeyTreeIdOf = (bytes: Buffer): number => bytes.readUInt32BE(offsetTreeId);

/** The tree epoch a rekey message makes, read in place (the message is at least its header long). */
export const rekeyEpochOf = (bytes: Buffer): number => bytes.readUInt32BE(offsetEpoch);

/** Decodes a rekey message, checking every length and field (the signature: verifyRekey). */
export function decodeRekey(bytes: Buffer): DecodeResult<LkhRekey> {
  if (bytes.length < lkhHeaderBytes + lkhSignatureBytes) {
    return invalid('truncated', `LKH rekey: ${bytes.length} bytes`);
  }
  if (!bytes.subarray(0, 4).equals(lkhMagic)) {
    return invalid('bad-magic', 'LKH rekey: not "GCLK"');
  }
  if (bytes[offsetVersion] !== lkhVersion) {
    return invalid('bad-version', `LKH rekey: version ${bytes[offsetVersion]}`);
  }
  const depth = bytes[offsetDepth] as number;
  if (depth < 1 || depth > lkhDepthMax) {
    return invalid('bad-field', `LKH rekey: depth ${depth}`);
  }
  const count = bytes.readUInt16BE(offsetEntryCount);
  if (count > 2 * depth + 1) {
    return invalid('bad-field', `LKH rekey: ${count} entries for depth ${depth}`);
  }
  const signedBytes = lkhHeaderBytes + count * lkhEntryBytes;
  if (bytes.length !== signedBytes + lkhSignatureBytes) {
    return invalid('length-mismatch', `LKH rekey: ${bytes.length} bytes for ${count} entries`);
  }
  const entries: LkhEntry[] = [];
  for (let offset = lkhHeaderBytes; offset < signedBytes; offset += lkhEntryBytes) {
    const field = bytes.readUInt32BE(offset);
    const wrapping = field >>> 30;
    const target = field & 0x3fffffff;
    if (wrapping > 2 || target < 1 || target >= 2 ** depth) {
      return invalid('bad-field', `LKH rekey: entry for node ${target} wrapped by ${wrapping}`);
    }
    entries.push({
      target,
      wrapping: wrapping as 0 | 1 | 2,
      wrapped: bytes.subarray(offset + 4, offset + lkhEntryBytes),
    });
  }
  return valid({
    depth,
    epoch: bytes.readUInt32BE(offsetEpoch),
    treeId: bytes.readUInt32BE(offsetTreeId),
    entries,
    signed: bytes.subarray(0, signedBytes),
    signature: bytes.subarray(signedBytes),
  });
}

/** True when the key server's Ed25519 key signed this message. */
export function verifyRekey(rekey: LkhRekey, publicKey: KeyObject): boolean {
  return verifySignature(rekey.signed, rekey.signature, publicKey);
}

/** A tree as a key server keeps it: the rest derives from the master secret. */
export interface LkhTreeState {
  /** 32 bytes: the key of every node never changed is HMAC-SHA-256(master, node number). */
  readonly master: Buffer;
  /** Keys changed by joins and leaves, by node number. */
  readonly changed: Iterable<readonly [number, Buffer]>;
  /** Slots that hold a member. */
  readonly occupied: Iterable<number>;
  readonly epoch: number;
}

/** A member's keys: node number → key. */
export type LkhKeys = ReadonlyMap<number, Buffer>;

/** What a new member receives (over its token's own channel, wrapped to its device key). */
export interface LkhWelcome {
  readonly slot: number;
  readonly epoch: number;
  readonly keys: LkhKeys;
}

/**
 * The key server's tree of 2^depth slots. `members` slots (0…members-1) start occupied; their keys
 * come from pathKeys. join and leave return the signed rekey message for the members.
 */
export function createLkhTree(settings: {
  depth: number;
  treeId: number;
  signingKey: KeyObject;
  members?: number;
  /** The tree as a key server stored it (src/subscription/key-trees.ts): it goes on from there. */
  restore?: LkhTreeState;
}) {
  const { depth, treeId, signingKey, restore } = settings;
  if (!Number.isInteger(depth) || depth < 1 || depth > lkhDepthMax) {
    throw new RangeError(`depth: ${depth} is not 1-${lkhDepthMax}`);
  }
  const slots = 2 ** depth;
  const initial = settings.members ?? 0;
  if (!Number.isInteger(initial) || initial < 0 || initial > slots) {
    throw new RangeError(`members: ${initial} is not 0-${slots}`);
  }
  if (restore !== undefined && restore.master.length !== 32) {
    throw new RangeError(`master secret: ${restore.master.length} bytes, not 32`);
  }
  const master = restore?.master ?? randomBytes(32);
  const changed = new Map<number, Buffer>(restore?.changed ?? []);
  /** Nodes whose key changed since the tree was made or restored: what a key server writes back. */
  const dirty = new Set<number>();
  // Members below each node; a node with none is never used to wrap (its key may be a departed one's).
  const below = new Uint32Array(2 * slots);
  for (let slot = 0; slot < initial; slot++) {
    below[slots + slot] = 1;
  }
  for (const slot of restore?.occupied ?? []) {
    if (!Number.isInteger(slot) || slot < 0 || slot >= slots) {
      throw new RangeError(`occupied slot ${slot} is not 0-${slots - 1}`);
    }
    below[slots + slot] = 1;
  }
  for (let node = slots - 1; node >= 1; node--) {
    below[node] = (below[2 * node] as number) + (below[2 * node + 1] as number);
  }
  let epoch = restore?.epoch ?? 0;
  let freeHint = initial;
  const change = (node: number, key: Buffer) => {
    changed.set(node, key);
    dirty.add(node);
  };

  const keyOf = (node: number): Buffer => {
    const known = changed.get(node);
    if (known !== undefined) {
      return known;
    }
    // HMAC-SHA-256 under the master secret as a PRF over the node number (cheaper than HKDF).
    const label = Buffer.alloc(4);
    label.writeUInt32BE(node);
    return createHmac('sha256', master).update(label).digest();
  };

  const pathKeys = (slot: number): Map<number, Buffer> =>
    new Map(lkhPath(depth, slot).map((node) => [node, keyOf(node)]));

  const occupied = (slot: number) => below[slots + slot] === 1;

  const move = (slot: number, delta: 1 | -1) => {
    for (const node of lkhPath(depth, slot)) {
      below[node] = (below[node] as number) + delta;
    }
  };

  /** Removes a member: every key on its path is replaced; the message reaches everyone else. */
  function leave(slot: number): Buffer {
    if (!Number.isInteger(slot) || slot < 0 || slot >= slots || !occupied(slot)) {
      throw new RangeError(`slot ${slot} holds no member`);
    }
    move(slot, -1);
    const path = lkhPath(depth, slot);
    const fresh = randomBytes(lkhKeyBytes * path.length);
    change(path[0] as number, fresh.subarray(0, lkhKeyBytes)); // the leaf: held by nobody now
    const entries: LkhEntry[] = [];
    for (let index = 1; index < path.length; index++) {
      const node = path[index] as number;
      const key = fresh.subarray(index * lkhKeyBytes, (index + 1) * lkhKeyBytes);
      change(node, key);
      for (const wrapping of [0, 1] as const) {
        const child = 2 * node + wrapping;
        if (below[child] !== 0) {
          entries.push({ target: node, wrapping, wrapped: wrapKey(keyOf(child), key) });
        }
      }
    }
    epoch++;
    return encodeRekey({ depth, epoch, treeId }, entries, signingKey);
  }

  /** The first free slot from the hint on; throws when the tree is full. */
  const freeSlot = (): number => {
    let slot = freeHint;
    for (let tried = 0; tried < slots && occupied(slot % slots); tried++) {
      slot++;
    }
    slot %= slots;
    if (occupied(slot)) {
      throw new RangeError(`the tree is full (${slots} members)`);
    }
    freeHint = slot + 1;
    return slot;
  };

  /** Adds a member in the first free slot: its keys, and the message for the members below its path. */
  function join(): { welcome: LkhWelcome; rekey: Buffer } {
    const slot = freeSlot();
    const path = lkhPath(depth, slot);
    const fresh = randomBytes(lkhKeyBytes * path.length);
    const entries: LkhEntry[] = [];
    for (const [index, node] of path.entries()) {
      const key = fresh.subarray(index * lkhKeyBytes, (index + 1) * lkhKeyBytes);
      if (index > 0 && below[node] !== 0) {
        entries.push({ target: node, wrapping: LkhWrapping.previous, wrapped: wrapKey(keyOf(node), key) });
      }
      change(node, key);
    }
    move(slot, 1);
    epoch++;
    const rekey = encodeRekey({ depth, epoch, treeId }, entries, signingKey);
    return { welcome: { slot, epoch, keys: pathKeys(slot) }, rekey };
  }

  /**
   * Adds a member in the first free slot without a rekey: it gets the keys as they are, so it can
   * read what was sent under the current group key before it came (no backward secrecy; its token
   * still holds it to its grant's window). A slot a member left has a fresh leaf nobody holds, and
   * every key above it was replaced when it left, so a departed member's keys open nothing of it.
   */
  function admit(): LkhWelcome {
    const slot = freeSlot();
    move(slot, 1);
    return { slot, epoch, keys: pathKeys(slot) };
  }

  return {
    depth,
    treeId,
    get epoch() {
      return epoch;
    },
    admit,
    /** The keys changed since the tree was made or restored (node → key): what to store again. */
    dirty: (): Map<number, Buffer> => new Map([...dirty].map((node) => [node, keyOf(node)])),
    /** Members now. */
    members: () => below[1] as number,
    /** The members' group key (the root's). */
    groupKey: () => keyOf(1),
    /** The keys a member in this slot holds now. */
    pathKeys,
    occupied,
    join,
    leave,
    /** The welcome of a member placed at creation. */
    welcome: (slot: number): LkhWelcome => ({ slot, epoch, keys: pathKeys(slot) }),
  };
}

/**
 * Walks a rekey message's entries in order and unwraps each one for a node on the member's path
 * under a key it holds, replacing that node's key in `keys`: the message lists keys from the leaves
 * up, so each new key opens the next. Generic over what a key is (a Buffer here; a PKCS#11 object
 * handle inside a token), so a token applies a rekey without its keys leaving it. Returns how many
 * keys it learned.
 */
export function applyRekeyEntries<K>(
  path: ReadonlySet<number>,
  keys: Map<number, K>,
  rekey: LkhRekey,
  unwrap: (kek: K, wrapped: Buffer) => K | undefined,
): number {
  let learned = 0;
  for (const entry of rekey.entries) {
    if (!path.has(entry.target)) {
      continue;
    }
    const kekNode =
      entry.wrapping === LkhWrapping.previous ? entry.target : 2 * entry.target + entry.wrapping;
    const kek = keys.get(kekNode);
    if (kek === undefined) {
      continue;
    }
    const key = unwrap(kek, entry.wrapped);
    if (key !== undefined) {
      keys.set(entry.target, key);
      learned++;
    }
  }
  return learned;
}

/** Why a member could not apply a rekey message. */
export type LkhApplyRefusal = 'malformed' | 'bad-signature' | 'other-tree' | 'stale' | 'missed-epoch';

/**
 * A member's side: the keys on its path. apply() checks the message (signature, tree, next epoch)
 * and then walks its entries in order, unwrapping each one wrapped under a key it holds: the
 * message lists keys from the leaves up, so each new key it learns opens the next.
 */
export function createLkhMember(settings: {
  depth: number;
  treeId: number;
  publicKey: KeyObject;
  welcome: LkhWelcome;
}) {
  const keys = new Map(settings.welcome.keys);
  let epoch = settings.welcome.epoch;
  const path = new Set(lkhPath(settings.depth, settings.welcome.slot));

  function apply(message: Buffer): { ok: true; learned: number } | { ok: false; reason: LkhApplyRefusal } {
    const decoded = decodeRekey(message);
    if (!decoded.ok || decoded.value.depth !== settings.depth) {
      return { ok: false, reason: 'malformed' };
    }
    const rekey = decoded.value;
    if (!verifyRekey(rekey, settings.publicKey)) {
      return { ok: false, reason: 'bad-signature' };
    }
    if (rekey.treeId !== settings.treeId) {
      return { ok: false, reason: 'other-tree' };
    }
    if (rekey.epoch <= epoch) {
      return { ok: false, reason: 'stale' };
    }
    if (rekey.epoch !== epoch + 1) {
      return { ok: false, reason: 'missed-epoch' };
    }
    const learned = applyRekeyEntries(path, keys, rekey, unwrapKey);
    epoch = rekey.epoch;
    return { ok: true, learned };
  }

  return {
    apply,
    get epoch() {
      return epoch;
    },
    /** The group key as this member knows it. */
    groupKey: () => keys.get(1),
    /** Every key this member holds (for tests of what a departed member can still open). */
    keys: (): LkhKeys => keys,
  };
}

/** Tries every key against every entry: what someone holding these keys can unwrap from a message. */
export function lkhUnwrapAny(message: Buffer, held: Iterable<Buffer>): Buffer[] {
  const decoded = decodeRekey(message);
  if (!decoded.ok) {
    return [];
  }
  const kept = [...held];
  const opened: Buffer[] = [];
  let grew = true;
  const tried = new Set<string>();
  while (grew) {
    grew = false;
    for (const entry of decoded.value.entries) {
      for (const kek of kept) {
        const id = `${entry.wrapped.toString('hex')}/${kek.toString('hex')}`;
        if (tried.has(id)) {
          continue;
        }
        tried.add(id);
        const key = unwrapKey(kek, entry.wrapped);
        if (key !== undefined) {
          opened.push(key);
          kept.push(key);
          grew = true;
        }
      }
    }
  }
  return opened;
}
