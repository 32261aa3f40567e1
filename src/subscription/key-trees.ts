/**
 * The key server of member trees (docs/security.md, "Rekey on leave"; docs/api.md, "Member
 * trees"): one logical key hierarchy (src/crypto/lkh.ts) per restricted product and service epoch,
 * kept in the store. A token enrolled for a product is admitted to its tree and gets its path keys
 * with its grant (a membership, wrapped to its device key). When no entitlement covers a member's
 * subscriber any more (it ended, or the operator revoked it), the member leaves: every key it held
 * is replaced, in one rekey message signed by the root key, wrapped only for the others. Sources
 * fetch the tree's group key (sealed to a key of their own) and the recent rekey messages, wrap
 * each crypto-period's traffic key share under the group key and repeat the rekeys in-band.
 *
 * Nothing secret is stored in the clear: a tree's master secret (the key of every node never
 * changed) derives from the operator root key (never from the service key, which tokens hold),
 * and each changed key is stored wrapped under a storage key that derives from it too.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { RestrictedProduct } from '../api/context.js';
import { issueMembership, sealGroupKeyFor, tokenIdOf, unwrapKey, wrapKey } from '../crypto/authority.js';
import { createLkhTree, lkhPath } from '../crypto/lkh.js';
import { treeRekeysFetchedMax, treeRekeysServedMax } from '../limits.js';
import { ApiError } from '../net/http-server.js';
import type { Schema, Store } from '../store/database.js';
import type { OperatorAuthority } from './context.js';

type Tree = ReturnType<typeof createLkhTree>;

/** A product's tree as a source fetches it. */
export interface TreeForSource {
  readonly product: string;
  readonly serviceEpoch: number;
  readonly treeId: number;
  readonly depth: number;
  readonly epoch: number;
  readonly members: number;
  /** The group key sealed to the source's X25519 key (src/crypto/authority.ts, sealGroupKeyFor). */
  readonly ephemeral: Buffer;
  readonly wrappedGroupKey: Buffer;
  /**
   * The rekey messages, oldest first: the newest treeRekeysServedMax, and every one after the tree
   * epoch the source said it holds (at most treeRekeysFetchedMax, the newest).
   */
  readonly rekeys: readonly Buffer[];
}

/** A leave the key server made. */
export interface Departure {
  readonly product: string;
  readonly tokenId: string;
  readonly subscriber: string;
  readonly epoch: number;
}

/**
 * A tree's secrets derive from the operator root key, which only the key server holds: never from
 * the product's service key, which every grant carries to every token (a departed token with its
 * file opened would derive every key of the tree never changed, climb a leave's rekey message
 * through them, and hold the new group key).
 */
function derived(
  authority: OperatorAuthority,
  label: string,
  product: RestrictedProduct,
  treeId: number,
): Buffer {
  const rootSecret = authority.rootPrivateKey.export({ format: 'der', type: 'pkcs8' });
  const name = Buffer.from(product.name, 'utf8');
  const fields = Buffer.alloc(12);
  fields.writeUInt32BE(name.length, 0);
  fields.writeUInt32BE(product.serviceEpoch >>> 0, 4);
  fields.writeUInt32BE(treeId >>> 0, 8);
  const out = createHmac('sha256', rootSecret).update(label).update(fields).update(name).digest();
  rootSecret.fill(0);
  return out;
}

const masterOf = (authority: OperatorAuthority, product: RestrictedProduct, treeId: number) =>
  derived(authority, 'gatecast member tree master v2', product, treeId);
const storageKeyOf = (authority: OperatorAuthority, product: RestrictedProduct, treeId: number) =>
  derived(authority, 'gatecast member tree storage v2', product, treeId);

/** The key server over the store, for the products of `authority`. */
export function createKeyTrees(store: Store, authority: OperatorAuthority) {
  const productNamed = (name: string) => authority.products.find((product) => product.name === name);

  /**
   * The row of a product's tree, locked until the transaction ends. Every transaction that reads
   * the tree's members or keys to change them takes it first: on PostgreSQL (read committed, a
   * connection per request, several servers on one store) two enrollments would otherwise admit
   * the same slot, two sweeps make two leaves of one epoch, and a token admitted while a leave was
   * being made would be left out of its rekey (wrapped for the subtrees occupied when it read
   * them), and a source's fetch could read the epoch before a leave and the keys after it (a
   * group key under the wrong epoch). A fetch only reads: it shares the lock with other fetches.
   * SQLite's write transactions (begin immediate) are one at a time already.
   */
  async function lockTree(
    trx: Kysely<Schema>,
    product: RestrictedProduct,
    mode: 'update' | 'share' = 'update',
  ) {
    const query = trx
      .selectFrom('member_trees')
      .selectAll()
      .where('product', '=', product.name)
      .where('service_epoch', '=', product.serviceEpoch);
    if (store.dialect !== 'postgres') {
      return query.executeTakeFirst();
    }
    return (mode === 'share' ? query.forShare() : query.forUpdate()).executeTakeFirst();
  }

  /** Reads (or makes) a product's tree inside a write transaction, its row locked (lockTree). */
  async function loadTree(
    trx: Kysely<Schema>,
    product: RestrictedProduct,
    mode: 'update' | 'share' = 'update',
  ): Promise<{ tree: Tree; epoch: number; treeId: number }> {
    let row = await lockTree(trx, product, mode);
    if (row === undefined) {
      // Another server may make it at the same time: the first one's stays, and is then locked.
      const treeId = randomBytes(4).readUInt32BE(0) || 1;
      await trx
        .insertInto('member_trees')
        .values({
          product: product.name,
          service_epoch: product.serviceEpoch,
          tree_id: treeId,
          depth: product.treeDepth,
          epoch: 0,
          created_at: new Date().toISOString(),
        })
        .onConflict((conflict) => conflict.columns(['product', 'service_epoch']).doNothing())
        .execute();
      row = await lockTree(trx, product, mode);
      if (row === undefined) {
        throw new Error(`member tree of ${product.name}: made, yet not found`);
      }
    }
    const treeId = Number(row.tree_id);
    const storageKey = storageKeyOf(authority, product, treeId);
    const changed: Array<[number, Buffer]> = [];
    const keyRows = await trx
      .selectFrom('member_tree_keys')
      .select(['node', 'wrapped'])
      .where('product', '=', product.name)
      .where('service_epoch', '=', product.serviceEpoch)
      .execute();
    for (const keyRow of keyRows) {
      const key = unwrapKey(storageKey, Buffer.from(keyRow.wrapped, 'hex'));
      if (key === undefined) {
        throw new Error(
          `member tree of ${product.name}: a stored key does not unwrap under the storage key (was the operator root key changed?)`,
        );
      }
      changed.push([Number(keyRow.node), key]);
    }
    const members = await trx
      .selectFrom('tree_members')
      .select('slot')
      .where('product', '=', product.name)
      .where('service_epoch', '=', product.serviceEpoch)
      .execute();
    const tree = createLkhTree({
      depth: Number(row.depth),
      treeId,
      signingKey: authority.rootPrivateKey,
      restore: {
        master: masterOf(authority, product, treeId),
        changed,
        occupied: members.map((member) => Number(member.slot)),
        epoch: Number(row.epoch),
      },
    });
    storageKey.fill(0);
    return { tree, epoch: Number(row.epoch), treeId };
  }

  /** Writes back what a leave changed: the keys, and the epoch, which must not have moved meanwhile. */
  async function saveTree(
    trx: Kysely<Schema>,
    product: RestrictedProduct,
    loaded: { tree: Tree; epoch: number; treeId: number },
  ): Promise<void> {
    const storageKey = storageKeyOf(authority, product, loaded.treeId);
    for (const [node, key] of loaded.tree.dirty()) {
      const wrapped = wrapKey(storageKey, key).toString('hex');
      await trx
        .insertInto('member_tree_keys')
        .values({ product: product.name, service_epoch: product.serviceEpoch, node, wrapped })
        .onConflict((conflict) =>
          conflict.columns(['product', 'service_epoch', 'node']).doUpdateSet({ wrapped }),
        )
        .execute();
    }
    storageKey.fill(0);
    const updated = await trx
      .updateTable('member_trees')
      .set({ epoch: loaded.tree.epoch })
      .where('product', '=', product.name)
      .where('service_epoch', '=', product.serviceEpoch)
      .where('epoch', '=', loaded.epoch)
      .executeTakeFirst();
    if (Number(updated.numUpdatedRows) !== 1) {
      throw new Error(`member tree of ${product.name} changed while it was rekeyed: try again`);
    }
  }

  /**
   * The membership of a token in a product's tree: the token is admitted first if it is no member
   * (a slot of its own; no rekey), else it gets the keys of its slot as they are now.
   */
  async function membershipFor(
    product: RestrictedProduct,
    devicePoint: Buffer,
    subscriber: string,
  ): Promise<Buffer> {
    const tokenId = tokenIdOf(devicePoint);
    return store.writeTransaction(async (trx) => {
      const loaded = await loadTree(trx, product);
      const member = await trx
        .selectFrom('tree_members')
        .select(['slot', 'subscriber'])
        .where('product', '=', product.name)
        .where('service_epoch', '=', product.serviceEpoch)
        .where('token_id', '=', tokenId)
        .executeTakeFirst();
      let slot: number;
      if (member !== undefined && member.subscriber === subscriber) {
        slot = Number(member.slot);
      } else {
        if (member !== undefined) {
          // The token moved to another subscriber: it leaves the first one's place.
          await leaveIn(trx, product, loaded, tokenId, member.subscriber, Number(member.slot));
        }
        if (loaded.tree.members() >= 2 ** loaded.tree.depth) {
          throw new ApiError(
            'capacity-full',
            `the member tree of ${product.name} is full (${2 ** loaded.tree.depth} members, treeDepth ${loaded.tree.depth}): a token leaves it when its subscriber's entitlement ends; for more members, sell the product at a new serviceEpoch with a larger treeDepth`,
          );
        }
        slot = loaded.tree.admit().slot;
        await trx
          .insertInto('tree_members')
          .values({
            product: product.name,
            service_epoch: product.serviceEpoch,
            token_id: tokenId,
            subscriber,
            slot,
            joined_at: new Date().toISOString(),
          })
          .execute();
        if (member !== undefined) {
          await saveTree(trx, product, loaded);
        }
      }
      const path = loaded.tree.pathKeys(slot);
      return issueMembership(
        {
          depth: loaded.tree.depth,
          service: product.name,
          serviceEpoch: product.serviceEpoch,
          treeId: loaded.treeId,
          treeEpoch: loaded.tree.epoch,
          slot,
          devicePoint,
          pathKeys: lkhPath(loaded.tree.depth, slot).map((node) => path.get(node) as Buffer),
        },
        authority.rootPrivateKey,
      );
    });
  }

  async function leaveIn(
    trx: Kysely<Schema>,
    product: RestrictedProduct,
    loaded: { tree: Tree },
    tokenId: string,
    subscriber: string,
    slot: number,
  ): Promise<Departure> {
    const message = loaded.tree.leave(slot);
    await trx
      .deleteFrom('tree_members')
      .where('product', '=', product.name)
      .where('service_epoch', '=', product.serviceEpoch)
      .where('token_id', '=', tokenId)
      .execute();
    await trx
      .insertInto('tree_rekeys')
      .values({
        product: product.name,
        service_epoch: product.serviceEpoch,
        epoch: loaded.tree.epoch,
        message: message.toString('base64'),
        token_id: tokenId,
        created_at: new Date().toISOString(),
      })
      .execute();
    return { product: product.name, tokenId, subscriber, epoch: loaded.tree.epoch };
  }

  /**
   * Removes every member whose subscriber no entitlement covers now or later (one that ended, or
   * was revoked, counts no more): one rekey message per member removed. Returns the departures.
   */
  async function sweep(nowMs = Date.now()): Promise<Departure[]> {
    const departures: Departure[] = [];
    for (const product of authority.products) {
      const made = await store.writeTransaction(async (trx) => {
        if ((await lockTree(trx, product)) === undefined) {
          return []; // no tree yet: no members
        }
        const members = await trx
          .selectFrom('tree_members')
          .select(['token_id', 'subscriber', 'slot'])
          .where('product', '=', product.name)
          .where('service_epoch', '=', product.serviceEpoch)
          .execute();
        if (members.length === 0) {
          return [];
        }
        const subscribers = [...new Set(members.map((member) => member.subscriber))];
        const rows = await trx
          .selectFrom('entitlements')
          .select(['subscriber', 'service', 'session', 'valid_to'])
          .where('subscriber', 'in', subscribers)
          .where('service', 'in', ['channel', 'pay-as-you-go'])
          .execute();
        const covered = new Set(
          rows
            .filter(
              (row) =>
                (row.session === null || row.session === product.name) &&
                !(row.service === 'pay-as-you-go' && product.pricePerPeriod === 0) &&
                (row.valid_to === null || Date.parse(row.valid_to) > nowMs),
            )
            .map((row) => row.subscriber),
        );
        const leaving = members.filter((member) => !covered.has(member.subscriber));
        if (leaving.length === 0) {
          return [];
        }
        const loaded = await loadTree(trx, product);
        const out: Departure[] = [];
        for (const member of leaving) {
          out.push(
            await leaveIn(trx, product, loaded, member.token_id, member.subscriber, Number(member.slot)),
          );
        }
        await saveTree(trx, product, loaded);
        return out;
      });
      departures.push(...made);
    }
    return departures;
  }

  /**
   * The tree of a product as a source needs it, its group key sealed to `recipient` (X25519, raw),
   * with the rekeys after `since` (the tree epoch the source holds) as well as the newest ones.
   */
  async function forSource(
    name: string,
    recipient: Buffer,
    since?: number,
  ): Promise<TreeForSource | undefined> {
    const product = productNamed(name);
    if (product === undefined) {
      return undefined;
    }
    return store.writeTransaction(async (trx) => {
      const loaded = await loadTree(trx, product, 'share');
      const newestFrom = loaded.tree.epoch - treeRekeysServedMax;
      const from = since === undefined ? newestFrom : Math.min(since, newestFrom);
      const rekeys = await trx
        .selectFrom('tree_rekeys')
        .select('message')
        .where('product', '=', product.name)
        .where('service_epoch', '=', product.serviceEpoch)
        .where('epoch', '>', from)
        .orderBy('epoch', 'desc')
        .limit(treeRekeysFetchedMax)
        .execute();
      const sealed = sealGroupKeyFor(recipient, loaded.tree.groupKey());
      return {
        product: product.name,
        serviceEpoch: product.serviceEpoch,
        treeId: loaded.treeId,
        depth: loaded.tree.depth,
        epoch: loaded.tree.epoch,
        members: loaded.tree.members(),
        ephemeral: sealed.ephemeral,
        wrappedGroupKey: sealed.wrapped,
        rekeys: rekeys.map((row) => Buffer.from(row.message, 'base64')).reverse(),
      };
    });
  }

  return { membershipFor, sweep, forSource, productNamed };
}

export type KeyTrees = ReturnType<typeof createKeyTrees>;
