/**
 * The peers a retransmit server fetches from (docs/protocol.md, "Peer fetch"): those configured
 * (`--peer`) first, then those heard lately — within three periods — in an authenticated ANNOUNCE
 * (the announced address, sealed in it), most recent first, at most retransmitPeersLearnedMax
 * learned, never the server itself. A QUALITY keeps a learned peer but never adds one: its source
 * address is not sealed (test/sim/found.md #6). No socket: a clock and the server's own endpoints.
 */
import { sameEndpoint } from '../crypto/control-auth.js';
import type { RoleClock } from '../net/runtime.js';
import type { PeerEndpoint } from '../protocol/control.js';

/** What the peer book needs. */
export interface PeerBookOptions {
  readonly clock: Pick<RoleClock, 'nowMs'>;
  /** Peers configured, asked first. */
  readonly configured: readonly PeerEndpoint[];
  /** Peers learned at most. */
  readonly learnedMax: number;
  /** A learned peer not heard for longer is not asked. */
  readonly freshMs: number;
  /** The server's own endpoints: never its own peer. */
  readonly own: () => readonly PeerEndpoint[];
}

/** Configured and learned peers. */
export class PeerBook {
  readonly #options: PeerBookOptions;
  /** Learned peers by endpoint key, most recent last. */
  readonly #learned = new Map<string, { endpoint: PeerEndpoint; atMs: number }>();

  constructor(options: PeerBookOptions) {
    this.#options = options;
  }

  /** A peer announced itself (authenticated ANNOUNCE): learned, or refreshed. */
  learn(endpoint: PeerEndpoint): void {
    const key = keyOf(endpoint);
    this.#learned.delete(key);
    this.#learned.set(key, {
      endpoint: { address: endpoint.address, port: endpoint.port },
      atMs: this.#options.clock.nowMs(),
    });
    while (this.#learned.size > this.#options.learnedMax) {
      const oldest = this.#learned.keys().next().value;
      if (oldest === undefined) {
        break;
      }
      this.#learned.delete(oldest);
    }
  }

  /** An authenticated QUALITY came from `remote`: it refreshes a learned peer there, never adds one. */
  refresh(remote: PeerEndpoint): void {
    if (this.#learned.has(keyOf(remote))) {
      this.learn(remote);
    }
  }

  /** Peers to fetch from: configured first, then those heard lately (most recent first), never ourselves. */
  peers(): PeerEndpoint[] {
    const now = this.#options.clock.nowMs();
    const own = this.#options.own();
    const list: PeerEndpoint[] = [...this.#options.configured];
    for (const { endpoint, atMs } of [...this.#learned.values()].reverse()) {
      if (now - atMs <= this.#options.freshMs && !list.some((known) => sameEndpoint(known, endpoint))) {
        list.push(endpoint);
      }
    }
    return list.filter((peer) => !own.some((self) => sameEndpoint(self, peer)));
  }
}

function keyOf(endpoint: PeerEndpoint): string {
  return `${endpoint.address}/${endpoint.port}`;
}
