/**
 * The retransmit servers a repair server asks, and in which order (docs/architecture.md, "Repair
 * server", the ranking part): those that answer first, then those that listen, then the lowest
 * loss, then configuration order; and how long to wait for each one's answer (RFC 6298 style, from
 * its measured round trip, with Karn's rule left to the caller). Pure: no clock, no socket.
 */
import { nackTimeoutMsInitial, nackTimeoutMsMax, nackTimeoutMsMin } from '../limits.js';
import { type Endpoint, formatEndpoint } from '../net/address.js';

/** One retransmit server as the repair server knows it. */
export interface RankedServer {
  readonly endpoint: Endpoint;
  /** Its endpoint as text: the key it is known by. */
  readonly key: string;
  /** Its place in the configuration; announced servers come after every configured one. */
  readonly staticIndex: number;
  /** Loss it measured on its own reception (its ANNOUNCE), parts per million. */
  lossPpm: number;
  /** Whether it still listens to the session (its ANNOUNCE: not withdrawn by the election). */
  listening: boolean;
  announcedAtMs: number | undefined;
  /** NACKs it left unanswered since it last answered one. */
  consecutiveTimeouts: number;
  /** Smoothed round trip and its variation, milliseconds (RFC 6298); undefined before a sample. */
  srttMs: number | undefined;
  rttvarMs: number;
}

/** Announced servers rank after every configured one. */
export const announcedIndex = Number.MAX_SAFE_INTEGER;

/** The known retransmit servers, best first on demand. */
export class ServerRanking {
  readonly #servers = new Map<string, RankedServer>();

  /** Servers known. */
  get size(): number {
    return this.#servers.size;
  }

  /** The server at an endpoint, added when not known yet (at the given configuration place). */
  add(endpoint: Endpoint, staticIndex = announcedIndex): RankedServer {
    const key = formatEndpoint(endpoint);
    let server = this.#servers.get(key);
    if (server === undefined) {
      server = {
        endpoint,
        key,
        staticIndex,
        lossPpm: 0,
        listening: true,
        announcedAtMs: undefined,
        consecutiveTimeouts: 0,
        srttMs: undefined,
        rttvarMs: 0,
      };
      this.#servers.set(key, server);
    }
    return server;
  }

  /** Servers best first: answering ones, then listening, then lowest loss, then configuration order. */
  ranked(): RankedServer[] {
    return [...this.#servers.values()].sort(
      (a, b) =>
        Math.min(a.consecutiveTimeouts, 3) - Math.min(b.consecutiveTimeouts, 3) ||
        Number(b.listening) - Number(a.listening) ||
        a.lossPpm - b.lossPpm ||
        a.staticIndex - b.staticIndex,
    );
  }

  /**
   * How long to wait for a server's answer to a packet asked for `attempts` times before: RFC 6298
   * from its round trip (nackTimeoutMsInitial before any sample), doubled once per round over every
   * server (at most 16 times), within [nackTimeoutMsMin, nackTimeoutMsMax].
   */
  timeoutFor(server: RankedServer, attempts: number): number {
    const base = server.srttMs === undefined ? nackTimeoutMsInitial : 2 * server.srttMs + 4 * server.rttvarMs;
    const backoff = 2 ** Math.min(Math.floor(attempts / Math.max(1, this.#servers.size)), 4);
    return Math.min(nackTimeoutMsMax, Math.max(nackTimeoutMsMin, base) * backoff);
  }

  /** The server answered a NACK: it is answering again. */
  answered(server: RankedServer): void {
    server.consecutiveTimeouts = 0;
  }

  /** A round trip measured on a packet's first NACK (Karn's rule is the caller's). */
  sampleRoundTrip(server: RankedServer, sampleMs: number): void {
    if (server.srttMs === undefined) {
      server.srttMs = sampleMs;
      server.rttvarMs = sampleMs / 2;
    } else {
      server.rttvarMs = 0.75 * server.rttvarMs + 0.25 * Math.abs(server.srttMs - sampleMs);
      server.srttMs = 0.875 * server.srttMs + 0.125 * sampleMs;
    }
  }
}
