/**
 * Router drivers and their election (docs/ordering.md). Each link has one driver at a time across
 * every order server sharing the store: the server holding the link's lease row
 * (order_driver_leases) drives it and refreshes the lease; when it stops, another takes over once
 * the lease ran out. The driver reconciles the router with the store whenever the link's version
 * changes (an activation or a deactivation), at once when this server made the change, and every
 * orderDriftCheckMs regardless, so a router that restarted, reloaded or was changed behind our back
 * is put back.
 */
import { Value } from '@sinclair/typebox/value';
import {
  orderDriftCheckMs as driftCheckMsDefault,
  orderRouterErrorRepeatMs as errorRepeatMsDefault,
  orderDriverLeaseMs as leaseMsDefault,
  orderDriverPollMs as pollMsDefault,
} from '../limits.js';
import { LinkRouter } from '../protocol/api-order.js';
import type { Store } from '../store/database.js';
import type { OrderBook, RouteWanted } from './book.js';
import { routerPlace } from './place.js';
import { traceOrderStage } from './trace.js';

/** What one reconcile did. */
export interface ReconcileReport {
  readonly added: string[];
  readonly removed: string[];
  readonly errors: string[];
}

/** How a reconcile may learn what the router carries. */
export interface ReconcileOptions {
  /**
   * Ask the router first (a drift check, the first reconcile, or after an error). When false, a
   * driver may start from what it saw and did itself since it last asked: what changed is the
   * store, not the router, and the next drift check asks again.
   */
  readonly fresh: boolean;
  /**
   * The link leaves this router: take away what the link put there, not only its routes (the
   * nftables driver deletes its table, which it otherwise keeps with no route in it).
   */
  readonly final?: boolean;
}

/** Keeps one router equal to what its link should carry. */
export interface RouterDriver {
  reconcile(wanted: readonly RouteWanted[], options?: ReconcileOptions): Promise<ReconcileReport>;
  /**
   * True when the router may have lost what it was told since it was last asked (smcrouted started
   * again): the next reconcile asks it at once instead of waiting for the drift check. Cheap: it is
   * called on every poll.
   */
  stale?(): boolean;
  /**
   * Calls onStale as soon as the router may have lost what it was told (smcrouted started again:
   * a new control socket), instead of leaving it to the next poll. Stops with close().
   */
  watch?(onStale: () => void): void;
  close(): Promise<void>;
}

/** Settings of the drivers of one order server. */
export interface LinkDriversOptions {
  readonly store: Store;
  readonly book: OrderBook;
  /** This server's name in the lease rows (unique per server). */
  readonly holder: string;
  readonly makeDriver: (router: LinkRouter) => RouterDriver;
  /** Told of every reconcile that changed something or failed. */
  readonly onReport?: ((link: string, report: ReconcileReport) => void) | undefined;
  readonly now?: (() => number) | undefined;
  /**
   * A clock that never steps (default performance.now): when to refresh a lease held. The wall
   * clock (now) is what the lease rows shared with other servers are written in.
   */
  readonly monotonic?: (() => number) | undefined;
  readonly pollMs?: number | undefined;
  readonly driftCheckMs?: number | undefined;
  readonly leaseMs?: number | undefined;
  /** How long the same errors of a link are not reported again (default orderRouterErrorRepeatMs). */
  readonly errorRepeatMs?: number | undefined;
}

interface Driven {
  config: string;
  driver: RouterDriver;
  version: number;
  checkedAt: number;
  failing: boolean;
  /** While failing: when to ask the router again unless poked (monotonic clock), and the step. */
  retryAt: number;
  retryStepMs: number;
  /** When this server last wrote its lease on the link (monotonic clock). */
  leaseRefreshedAt: number;
}

/** The drivers of the links this server holds. */
export interface LinkDrivers extends AsyncDisposable {
  /** Reconcile this link now (this server changed it). */
  poke(link: string): void;
  /**
   * Runs one pass over every link and resolves when it is done, the emptying of routers links
   * left included (the background passes do not wait for that).
   */
  pass(): Promise<void>;
  /** The links this server drives now. */
  held(): string[];
  close(): Promise<void>;
}

/** Starts driving (polling in the background). */
export function startLinkDrivers(options: LinkDriversOptions): LinkDrivers {
  const { store } = options;
  const now = options.now ?? Date.now;
  const monotonic = options.monotonic ?? (() => performance.now());
  /** Whether a lease written at refreshedAt needs no refresh yet (a stepped wall clock aside). */
  const leaseFresh = (current: Driven | undefined) =>
    current !== undefined && monotonic() - current.leaseRefreshedAt < leaseMs / 2;
  const pollMs = options.pollMs ?? pollMsDefault;
  const driftCheckMs = options.driftCheckMs ?? driftCheckMsDefault;
  const leaseMs = options.leaseMs ?? leaseMsDefault;
  const errorRepeatMs = options.errorRepeatMs ?? errorRepeatMsDefault;
  const driven = new Map<string, Driven>();
  /**
   * What each link's driving is doing now: one thing at a time per link, while links go side by
   * side, so a router that does not answer on one link (up to its command timeout) holds up no
   * order or cancel on another.
   */
  const linkWork = new Map<string, Promise<void>>();
  const serial = (link: string, work: () => Promise<void>): Promise<void> => {
    const next = (linkWork.get(link) ?? Promise.resolve()).then(work, work);
    const settled = next.catch(() => undefined);
    linkWork.set(link, settled);
    void settled.then(() => {
      if (linkWork.get(link) === settled) {
        linkWork.delete(link);
      }
    });
    return next;
  };
  const reported = (link: string) => (error: Error) => {
    options.onReport?.(link, { added: [], removed: [], errors: [error.message] });
  };
  let closed = false;
  let running: Promise<void> | undefined;
  let again = false;
  const poked = new Set<string>();
  let timer: NodeJS.Timeout | undefined;

  /** Takes or keeps the link's lease; true when this server holds it. */
  const holdLease = async (link: string, current: Driven | undefined): Promise<boolean> => {
    if (leaseFresh(current)) {
      return true;
    }
    const at = now();
    const writtenAt = monotonic();
    await store.db
      .insertInto('order_driver_leases')
      .values({ link, holder: options.holder, expires_at_ms: at + leaseMs })
      .onConflict((conflict) => conflict.column('link').doNothing())
      .execute();
    const taken = await store.db
      .updateTable('order_driver_leases')
      .set({ holder: options.holder, expires_at_ms: at + leaseMs })
      .where('link', '=', link)
      .where((eb) => eb.or([eb('holder', '=', options.holder), eb('expires_at_ms', '<', at)]))
      .executeTakeFirst();
    const held = Number(taken.numUpdatedRows) === 1;
    if (held && current !== undefined) {
      current.leaseRefreshedAt = writtenAt;
    }
    return held;
  };

  /**
   * The errors last said of a link's router or of a router it left (by link, or link and config),
   * and when (monotonic clock): the same errors are said again only after errorRepeatMs, so a
   * router that stays unreachable is one line every orderRouterErrorRepeatMs, not one a retry.
   */
  const errorsSaid = new Map<string, { text: string; at: number }>();
  const unrepeated = (key: string, errors: readonly string[]): string[] => {
    if (errors.length === 0) {
      errorsSaid.delete(key);
      return [];
    }
    const text = errors.join('\n');
    const said = errorsSaid.get(key);
    if (said?.text === text && monotonic() - said.at < errorRepeatMs) {
      return [];
    }
    errorsSaid.set(key, { text, at: monotonic() });
    return [...errors];
  };

  /** Reconciles a link this server drives; version: the link row's, when the pass read it. */
  const reconcileDriven = async (name: string, current: Driven, version: number | undefined) => {
    const at = now();
    const fresh =
      current.failing || at - current.checkedAt >= driftCheckMs || current.driver.stale?.() === true;
    // A failing router is asked again after a growing wait (a poll's, doubled up to a drift
    // check's), not on every poll; an order or a change of the link asks it at once.
    const retryDue = !current.failing || monotonic() >= current.retryAt;
    const due =
      poked.delete(name) || (version !== undefined && current.version !== version) || (fresh && retryDue);
    if (!due) {
      return;
    }
    traceOrderStage('reconcile-begun', name, () => (fresh ? 'fresh' : 'from what it saw'));
    const wanted = await options.book.desired(name);
    traceOrderStage('routes-read', name);
    const report = await current.driver.reconcile(wanted, { fresh });
    traceOrderStage('reconcile-done', name);
    if (version !== undefined) {
      current.version = version;
    }
    if (fresh) {
      current.checkedAt = at; // the drift check's clock runs from the last time the router was asked
    }
    current.failing = report.errors.length > 0;
    if (current.failing) {
      current.retryStepMs = Math.min(driftCheckMs, Math.max(pollMs, current.retryStepMs * 2));
      current.retryAt = monotonic() + current.retryStepMs;
    } else {
      current.retryStepMs = 0;
    }
    const errors = unrepeated(name, report.errors);
    if (report.added.length > 0 || report.removed.length > 0 || errors.length > 0) {
      options.onReport?.(name, { added: report.added, removed: report.removed, errors });
    }
  };

  /**
   * When a router a link left may be tried again after its emptying failed (by link and config),
   * and how many times in a row it failed: the wait doubles from a drift check's, up to 30 of them.
   */
  const retireBackoff = new Map<string, { at: number; failures: number }>();
  /**
   * Routers a link left that are being emptied now, beside the link's own work: one that does not
   * answer (up to its command timeout) holds up no order or cancel on the link.
   */
  const retiring = new Map<string, Promise<void>>();

  /**
   * Empties a router the link no longer uses (with the driver that drove it, or a new one), then
   * forgets it; a failure keeps it remembered and is tried again after a drift check's interval.
   */
  const retire = async (link: string, config: string, driver?: RouterDriver): Promise<void> => {
    const key = `${link}\n${config}`;
    if (driver === undefined && now() < (retireBackoff.get(key)?.at ?? 0)) {
      return;
    }
    const router = JSON.parse(config) as unknown;
    let report: ReconcileReport;
    if (driver === undefined && !Value.Check(LinkRouter, router)) {
      report = { added: [], removed: [], errors: ['a former router_config does not fit the schema'] };
    } else {
      const using = driver ?? options.makeDriver(router as LinkRouter);
      report = await using
        .reconcile([], { fresh: true, final: true })
        .catch((error: Error) => ({ added: [], removed: [], errors: [error.message] }));
      await using.close();
    }
    const errors = unrepeated(key, report.errors);
    if (report.removed.length > 0 || errors.length > 0) {
      options.onReport?.(link, { added: report.added, removed: report.removed, errors });
    }
    if (report.errors.length > 0) {
      const failures = (retireBackoff.get(key)?.failures ?? 0) + 1;
      retireBackoff.set(key, { at: now() + driftCheckMs * Math.min(30, 2 ** (failures - 1)), failures });
      return;
    }
    retireBackoff.delete(key);
    await forget(link, config);
  };

  /**
   * Forgets a router the link left, unless the link came back to it meanwhile (then it is the
   * link's router again, recorded so that it is emptied when the link leaves it).
   */
  const forget = async (link: string, config: string) => {
    await store.db
      .deleteFrom('order_link_routers')
      .where('link', '=', link)
      .where('router_config', '=', config)
      .where(({ not, exists, selectFrom }) =>
        not(
          exists(
            selectFrom('order_links')
              .select('name')
              .where('name', '=', link)
              .where('router_config', '=', config),
          ),
        ),
      )
      .execute();
  };

  /**
   * Empties a router the link left in its own lane beside the link's (one that does not answer,
   * up to its command timeout, holds up neither the link's orders nor any pass); with the driver
   * that drove it, when the link moved while this server drove it.
   */
  const retireBeside = (link: string, config: string, driver?: RouterDriver) => {
    const key = `${link}\n${config}`;
    if (retiring.has(key) || (driver === undefined && now() < (retireBackoff.get(key)?.at ?? 0))) {
      if (driver !== undefined) {
        void driver.close();
      }
      return;
    }
    const work = retire(link, config, driver)
      .catch(reported(link))
      .finally(() => {
        retiring.delete(key);
        // The link may wait for this (its router of now is in the same place): drive it now.
        if (!closed) {
          poke(link);
        }
      });
    retiring.set(key, work);
  };

  /** The place of a stored router_config (undefined: none shared, or not a router). */
  const placeOf = (config: string): string | undefined => {
    try {
      const router = JSON.parse(config) as unknown;
      return Value.Check(LinkRouter, router) ? routerPlace(router) : undefined;
    } catch {
      return undefined;
    }
  };

  /**
   * routers: the routers the store says the link's routes may be on. Each but the link's router of
   * now is emptied (the link moved while this server drove it, or while no server ran); the router
   * of now is recorded before anything is routed on it.
   */
  const drive = async (
    link: { name: string; router_config: string; version: number },
    routers: readonly string[],
  ) => {
    let current = driven.get(link.name);
    if (!(await holdLease(link.name, current))) {
      if (current !== undefined) {
        driven.delete(link.name);
        await current.driver.close();
      }
      return;
    }
    // The link moved to another router (or interface): the old one must stop forwarding its
    // channels, or a cancel would never stop them there. (A lost lease or a stop keeps them: the
    // next holder takes the same router over, or empties it if the link left it meanwhile.)
    // A router in the place of the link's router of now (the same daemon and inbound interface,
    // or the same table, written otherwise) is not emptied: the new driver takes the place over,
    // and emptying it would take the link's routes there away.
    let place: string | undefined | null = null; // null: not looked at yet (most passes never do)
    const samePlace = (config: string) => {
      if (place === null) {
        place = placeOf(link.router_config);
      }
      return place !== undefined && placeOf(config) === place;
    };
    const retired = new Set<string>();
    if (current !== undefined && current.config !== link.router_config) {
      driven.delete(link.name);
      retired.add(current.config);
      if (samePlace(current.config)) {
        await current.driver.close();
        await forget(link.name, current.config);
      } else {
        retireBeside(link.name, current.config, current.driver);
      }
      current = undefined;
    }
    for (const config of routers) {
      if (config === link.router_config || retired.has(config)) {
        continue;
      }
      if (samePlace(config)) {
        await forget(link.name, config);
      } else {
        retireBeside(link.name, config);
      }
    }
    // Back on a router (or its place) still being emptied (A, B, A again): not driven until that
    // is done (it pokes the link then), never both at once; nothing waits for it here, so the
    // pass, the other links and the leases go on.
    const emptying = [...retiring.keys()].some((key) => {
      const [owner, config] = [key.slice(0, key.indexOf('\n')), key.slice(key.indexOf('\n') + 1)];
      return owner === link.name && (config === link.router_config || samePlace(config));
    });
    if (emptying || closed) {
      return;
    }
    if (current === undefined) {
      const router = JSON.parse(link.router_config) as unknown;
      if (!Value.Check(LinkRouter, router)) {
        options.onReport?.(link.name, {
          added: [],
          removed: [],
          errors: ['router_config does not fit the schema'],
        });
        return;
      }
      if (!routers.includes(link.router_config)) {
        await store.db
          .insertInto('order_link_routers')
          .values({ link: link.name, router_config: link.router_config })
          .onConflict((conflict) => conflict.columns(['link', 'router_config']).doNothing())
          .execute();
      }
      current = {
        config: link.router_config,
        driver: options.makeDriver(router),
        version: -1,
        checkedAt: 0,
        failing: false,
        retryAt: 0,
        retryStepMs: 0,
        leaseRefreshedAt: monotonic(), // holdLease wrote it just now
      };
      driven.set(link.name, current);
      const watched = current;
      watched.driver.watch?.(() => {
        if (!closed && driven.get(link.name) === watched) {
          poke(link.name);
        }
      });
    }
    await reconcileDriven(link.name, current, link.version);
  };

  /**
   * Only the poked links, when this server drives each of them with a lease well within its time:
   * an order's route goes out without reading every link first. Anything else takes a full pass.
   */
  const pokedPass = async (): Promise<boolean> => {
    const links = [...poked];
    const ready = links.every((name) => leaseFresh(driven.get(name)));
    if (!ready) {
      return false;
    }
    await Promise.all(links.map((name) => reconcilePoked(name)));
    return true;
  };

  /**
   * Reconciles a poked link this server drives, in the link's turn. The link row's version is not
   * read here: the next full pass sees it changed and reconciles again, starting from what this
   * one did (no router command when nothing changed).
   */
  const reconcilePoked = (name: string) =>
    serial(name, async () => {
      const current = driven.get(name);
      if (closed || current === undefined) {
        return;
      }
      await reconcileDriven(name, current, undefined);
    }).catch(reported(name));

  const pass = async (): Promise<void> => {
    const links = await store.db
      .selectFrom('order_links')
      .select(['name', 'router_config', 'version'])
      .execute();
    const routers = await store.db
      .selectFrom('order_link_routers')
      .select(['link', 'router_config'])
      .execute();
    const names = new Set(links.map((link) => link.name));
    for (const [name, current] of driven) {
      if (!names.has(name)) {
        driven.delete(name);
        await current.driver.close();
      }
    }
    const driving = Promise.all(
      links.map((link) =>
        serial(link.name, async () => {
          if (closed) {
            return;
          }
          await drive(
            { ...link, version: Number(link.version) },
            routers.filter((row) => row.link === link.name).map((row) => row.router_config),
          );
        }).catch(reported(link.name)),
      ),
    );
    await driving;
  };

  /** One pass at a time; a poke during a pass runs another right after. */
  let fullWanted = false;
  const run = (full: boolean): Promise<void> => {
    fullWanted ||= full;
    if (running !== undefined) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          const full = fullWanted;
          fullWanted = false;
          if (full || !(await pokedPass())) {
            await pass();
          }
        } while (again && !closed);
      } finally {
        running = undefined;
      }
    })();
    return running;
  };

  const schedule = () => {
    if (closed) {
      return;
    }
    timer = setTimeout(() => {
      traceOrderStage('background-begun', undefined, () => 'driver poll');
      run(true)
        .catch(() => undefined)
        .finally(() => {
          traceOrderStage('background-done', undefined, () => 'driver poll');
          schedule();
        });
    }, pollMs);
    timer.unref();
  };
  schedule();

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      closed = true;
      clearTimeout(timer);
      await running?.catch(() => undefined);
      await Promise.all(linkWork.values());
      await Promise.all(retiring.values());
      for (const [link, current] of driven) {
        await current.driver.close();
        // Let another server take over at once.
        await store.db
          .updateTable('order_driver_leases')
          .set({ expires_at_ms: 0 })
          .where('link', '=', link)
          .where('holder', '=', options.holder)
          .execute()
          .catch(() => undefined);
      }
      driven.clear();
    })();
    return closing;
  };

  const poke = (link: string) => {
    poked.add(link);
    // During a pass, a link this server holds is reconciled in its own turn at once, not after
    // every other link's (a pass waits for the slowest router).
    if (running !== undefined && !closed && leaseFresh(driven.get(link))) {
      traceOrderStage('link-poked', link, () => 'at once, beside a pass');
      reconcilePoked(link).catch(() => undefined);
      return;
    }
    traceOrderStage('link-poked', link, () => (running === undefined ? 'at once' : 'queued behind a pass'));
    run(false).catch(() => undefined);
  };

  return {
    poke,
    pass: async () => {
      await run(true);
      await Promise.all(retiring.values());
    },
    held: () => [...driven.keys()],
    close,
    [Symbol.asyncDispose]: close,
  };
}
