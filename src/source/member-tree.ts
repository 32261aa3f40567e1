/**
 * A restricted source following its product's member tree on the subscription server (docs/security.md,
 * "Rekey on leave"): it fetches the tree's group key, sealed to an X25519 key of its own made for this
 * process, and the newest rekey messages, at start and then every treePollMs. The source protection
 * (src/crypto/restricted-session.ts) wraps each period's tree share under the newest group key and
 * repeats the rekey messages in-band.
 */
import { generateKeyPairSync } from 'node:crypto';
import { openGroupKey, type TreeGroupKey, x25519Raw } from '../crypto/authority.js';
import type { SourceTree } from '../crypto/restricted-session.js';
import { treePollMs, treeRekeyKeptMs, treeRekeysServedMax } from '../limits.js';
import { requestApi } from '../net/api-client.js';
import { TreeForSource } from '../protocol/api-tokens.js';
import { RegistrationError } from './registration.js';

/** Group keys of recent tree epochs a source keeps (a period's KEY may be of an earlier one). */
const groupKeysKept = 16;

/** Follows one product's tree; `start` fetches it once (throws RegistrationError), then polls. */
export function followMemberTree(settings: {
  server: string;
  token: string;
  product: string;
  serviceEpoch: number;
  /** Told when a poll fails or the tree moves on (the source keeps what it had on a failure). */
  onEvent?: (
    event: { kind: 'tree'; epoch: number; members: number } | { kind: 'tree-poll-failed'; message: string },
  ) => void;
  pollMs?: number;
}) {
  const recipient = generateKeyPairSync('x25519');
  const recipientHex = x25519Raw(recipient.publicKey).toString('hex');
  const groupKeys = new Map<number, TreeGroupKey>();
  let newest: TreeGroupKey | undefined;
  let rekeys: readonly Buffer[] = [];
  /** The rekey messages learned, by tree epoch, with when: the newest are kept, and every recent one. */
  const learned = new Map<number, { message: Buffer; atMs: number }>();
  let timer: NodeJS.Timeout | undefined;
  let failing = false;
  const url = `${settings.server.replace(/\/+$/, '')}/v1/products/${encodeURIComponent(settings.product)}/tree?recipient=${recipientHex}`;

  /**
   * Takes the rekeys of a fetch: each one new is kept for treeRekeyKeptMs at least, and the newest
   * treeRekeysServedMax always, so that a burst of leaves between two polls is repeated whole.
   */
  const learn = (fetched: readonly string[], nowMs: number) => {
    for (const text of fetched) {
      const message = Buffer.from(text, 'base64');
      if (message.length < 16) {
        continue;
      }
      const epoch = message.readUInt32BE(8);
      if (!learned.has(epoch)) {
        learned.set(epoch, { message, atMs: nowMs });
      }
    }
    const epochs = [...learned.keys()].sort((a, b) => a - b);
    epochs.forEach((epoch, index) => {
      const kept = learned.get(epoch);
      if (
        kept !== undefined &&
        index < epochs.length - treeRekeysServedMax &&
        nowMs - kept.atMs >= treeRekeyKeptMs
      ) {
        learned.delete(epoch);
      }
    });
    rekeys = [...learned.keys()]
      .sort((a, b) => a - b)
      .map((epoch) => (learned.get(epoch) as { message: Buffer }).message);
  };

  async function fetchOnce(): Promise<void> {
    let answer: Awaited<ReturnType<typeof requestApi<typeof TreeForSource>>>;
    const since = newest === undefined ? '' : `&since=${newest.treeEpoch}`;
    try {
      answer = await requestApi(`${url}${since}`, TreeForSource, {
        token: settings.token,
        timeoutMs: 10_000,
      });
    } catch (error) {
      throw new RegistrationError(
        `the subscription server at ${new URL(url).origin} cannot be reached for ${settings.product}'s key tree: ${(error as Error).message}`,
      );
    }
    if (!answer.ok) {
      throw new RegistrationError(
        `the subscription server gave no key tree of ${settings.product}: ${answer.status} ${answer.error}: ${answer.message}`,
      );
    }
    const tree = answer.body;
    if (tree.serviceEpoch !== settings.serviceEpoch) {
      throw new RegistrationError(
        `the subscription server sells ${settings.product} at service epoch ${tree.serviceEpoch}, this source sends epoch ${settings.serviceEpoch} (--service-epoch): its tokens could not decode`,
      );
    }
    const groupKey = openGroupKey(
      recipient.privateKey,
      Buffer.from(tree.ephemeral, 'hex'),
      Buffer.from(tree.wrappedGroupKey, 'hex'),
    );
    if (groupKey === undefined || groupKey.length !== 32) {
      throw new RegistrationError(
        `the key tree of ${settings.product} came with a group key that does not open`,
      );
    }
    if (newest !== undefined && tree.treeId !== newest.treeId) {
      groupKeys.clear(); // a new tree (the server's store was replaced): its epochs are another count
      learned.clear();
    }
    if (newest === undefined || tree.treeId !== newest.treeId || tree.epoch > newest.treeEpoch) {
      newest = { treeId: tree.treeId, treeEpoch: tree.epoch, groupKey };
      groupKeys.set(tree.epoch, newest);
      for (const epoch of groupKeys.keys()) {
        if (groupKeys.size <= groupKeysKept) {
          break;
        }
        groupKeys.delete(epoch);
      }
      settings.onEvent?.({ kind: 'tree', epoch: tree.epoch, members: tree.members });
    }
    learn(tree.rekeys, Date.now());
  }

  const tree: SourceTree = {
    current: () => newest,
    groupKey: (treeEpoch) => groupKeys.get(treeEpoch),
    rekeys: () => rekeys,
  };

  return {
    tree,
    async start(): Promise<void> {
      await fetchOnce();
      timer = setInterval(() => {
        fetchOnce().then(
          () => {
            failing = false;
          },
          (error: Error) => {
            if (!failing) {
              failing = true;
              settings.onEvent?.({ kind: 'tree-poll-failed', message: error.message });
            }
          },
        );
      }, settings.pollMs ?? treePollMs);
      timer.unref();
    },
    /** Fetches the tree once more now (start polls every treePollMs); throws RegistrationError. */
    poll: fetchOnce,
    stop(): void {
      clearInterval(timer);
      for (const key of groupKeys.values()) {
        key.groupKey.fill(0);
      }
    },
  };
}
