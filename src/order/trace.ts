/**
 * Stage timestamps of the order path (docs/ordering.md "Tracing the order path"), published on a
 * Node diagnostics channel as undici and Node's HTTP server publish theirs: nothing is built or sent
 * unless something subscribed (a benchmark's preloaded module, a profiler), so the path pays one
 * `hasSubscribers` check per stage. Times are `process.hrtime.bigint()`: the monotonic clock, the
 * same in every process and network namespace on the host, so stages timed in the order server,
 * in a box and in the benchmark line up.
 */
import { channel } from 'node:diagnostics_channel';

/** The diagnostics channel's name. */
export const orderTraceChannelName = 'gatecast:order:stage';

/**
 * A stage of the order path:
 * - `order-requested`, `cancel-requested`: the handler called the book (the request was parsed and its
 *   token checked);
 * - `batch-queued`: a group commit was started for what arrived in this turn of the event loop;
 * - `batch-begun`: its transaction holds the store (SQLite's write lock, or PostgreSQL's connection);
 * - `batch-committed`: the transaction committed (flushed);
 * - `link-poked`: the book told the drivers a link's routed set changed (`queued` when a pass was running);
 * - `reconcile-begun`, `routes-read`: a driver starts on a link and has read what it should carry;
 * - `router-sent`, `router-answered`: one command to the router (`detail`: the command) and its answer;
 * - `reconcile-done`;
 * - `background-begun`, `background-done`: work of the role's own timers on the same thread
 *   (`detail`: the driver's poll, the expiry sweep or the billing of orders).
 */
export type OrderStage =
  | 'order-requested'
  | 'cancel-requested'
  | 'batch-queued'
  | 'batch-begun'
  | 'batch-committed'
  | 'link-poked'
  | 'reconcile-begun'
  | 'routes-read'
  | 'router-sent'
  | 'router-answered'
  | 'reconcile-done'
  | 'background-begun'
  | 'background-done';

/** What the channel carries. */
export interface OrderStageMessage {
  readonly stage: OrderStage;
  /** process.hrtime.bigint() when the stage was reached. */
  readonly atNs: bigint;
  readonly link?: string | undefined;
  /** The router command, the batch's size, or why a poke waited. */
  readonly detail?: string | undefined;
}

const stages = channel(orderTraceChannelName);

/** Publishes a stage when something listens; the detail is built only then. */
export function traceOrderStage(stage: OrderStage, link?: string, detail?: () => string): void {
  if (!stages.hasSubscribers) {
    return;
  }
  const message: OrderStageMessage = {
    stage,
    atNs: process.hrtime.bigint(),
    link,
    detail: detail?.(),
  };
  stages.publish(message);
}
