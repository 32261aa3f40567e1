/**
 * The store half of the ordering benchmark: sustained orders + cancels per second through the order
 * book, and a zapping burst of 10,000 orders, on SQLite and PostgreSQL. Each run ends by checking
 * that the store agrees with itself: refcounts equal the active orders, the link's used capacity
 * equals the rates of the active services, and never exceeds the link's capacity.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createOrderBook, type OrderBook } from '../src/order/book.js';
import { openStore, type Store } from '../src/store/database.js';
import { activeOrders, type LinkService, makeBoxes, makeLink } from '../test/helpers/order-store.js';

/** `count` services of `rate` bit/s for `link`, named LINK-chN, on groups 239.78.X.Y. */
function channels(link: string, count: number, rate: number): LinkService[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `${link}-ch${i}`,
    rate,
    group: `239.78.${i >> 8}.${i & 255}`,
  }));
}

/** Whether the store agrees with itself on a link. */
export async function linkAgrees(store: Store, link: string): Promise<{ ok: boolean; detail: string }> {
  const { row, active, orderCount, counted } = await activeOrders(store, link);
  const rates = new Map(active.map((a) => [a.service, Number(a.bit_rate)]));
  const refcountsAgree =
    active.length === counted.size && active.every((a) => counted.get(a.service) === Number(a.refcount));
  const expectedUsed = [...counted.keys()].reduce((sum, name) => sum + (rates.get(name) ?? Number.NaN), 0);
  const used = Number(row.used_bits);
  const ok = refcountsAgree && used === expectedUsed && used <= Number(row.capacity_bits);
  return {
    ok,
    detail: `${orderCount} active orders on ${active.length} services, refcounts ${refcountsAgree ? 'agree' : 'DISAGREE'}, used ${used} (expected ${expectedUsed}) of ${Number(row.capacity_bits)} bit/s`,
  };
}

/** A result of one store run. */
export interface StoreRun {
  readonly label: string;
  readonly operations: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly refused: number;
  readonly agrees: { ok: boolean; detail: string };
}

/**
 * Sustained: `concurrency` boxes each order a channel and cancel it, over and over, for `seconds`;
 * an order and a cancel are two operations.
 */
export async function sustained(
  url: string,
  label: string,
  seconds: number,
  concurrency: number,
  groupCommitMax?: number,
): Promise<StoreRun> {
  const store = await openStore(url);
  try {
    await makeLink(store, 'bulk', 1e15, 'reject', channels('bulk', 100, 1_000_000));
    const boxes = Array.from({ length: concurrency }, (_, i) => `sbox${i}`);
    await makeBoxes(store, boxes);
    const book = createOrderBook(store, {
      leaseMs: 600_000,
      ...(groupCommitMax === undefined ? {} : { groupCommitMax }),
    });
    let operations = 0;
    let refused = 0;
    const started = performance.now();
    const until = started + seconds * 1000;
    await Promise.all(
      boxes.map(async (box, i) => {
        let k = i;
        while (performance.now() < until) {
          const outcome = await book.order(box, `bulk-ch${k % 100}`);
          operations += 1;
          k += 7;
          if (outcome.kind !== 'ordered') {
            refused += 1;
            continue;
          }
          await book.cancel(box, outcome.order.id);
          operations += 1;
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    return {
      label,
      operations,
      seconds: elapsed,
      perSecond: operations / elapsed,
      refused,
      agrees: await linkAgrees(store, 'bulk'),
    };
  } finally {
    await store.close();
  }
}

/**
 * Zapping: 2,000 boxes each switch channel five times (order the next, cancel the one before),
 * 10,000 orders in all, with at most `concurrency` requests in flight, on a link that has room
 * for 30 of its 100 channels: many orders are refused, none may overbook.
 */
export async function zapping(
  url: string,
  label: string,
  concurrency: number,
  groupCommitMax?: number,
): Promise<StoreRun> {
  const store = await openStore(url);
  try {
    await makeLink(store, 'zap', 30 * 4_000_000, 'reject', channels('zap', 100, 4_000_000));
    const boxes = Array.from({ length: 2000 }, (_, i) => `zbox${i}`);
    await makeBoxes(store, boxes);
    const book: OrderBook = createOrderBook(store, {
      leaseMs: 600_000,
      ...(groupCommitMax === undefined ? {} : { groupCommitMax }),
    });
    let operations = 0;
    let refused = 0;
    let next = 0;
    const held = new Map<string, string>();
    const started = performance.now();
    const worker = async () => {
      for (;;) {
        const index = next;
        next += 1;
        if (index >= 10_000) {
          return;
        }
        const box = boxes[index % boxes.length] as string;
        // Boxes zap upwards through the channels, each from its own start: popular ones and not.
        const channel = ((index % boxes.length) * 7 + Math.floor(index / boxes.length) * 13) % 100;
        const outcome = await book.order(box, `zap-ch${channel}`);
        operations += 1;
        const before = held.get(box);
        if (outcome.kind === 'ordered') {
          held.set(box, outcome.order.id);
        } else {
          refused += 1;
          held.delete(box);
        }
        if (before !== undefined) {
          await book.cancel(box, before);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const elapsed = (performance.now() - started) / 1000;
    return {
      label,
      operations,
      seconds: elapsed,
      perSecond: operations / elapsed,
      refused,
      agrees: await linkAgrees(store, 'zap'),
    };
  } finally {
    await store.close();
  }
}

/** A throwaway SQLite file's URL, and how to remove it. */
export function sqliteUrl(): { url: string; remove: () => void } {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-bench-order-'));
  return {
    url: `sqlite:${join(directory, 'gatecast.db')}`,
    remove: () => rmSync(directory, { recursive: true, force: true }),
  };
}
