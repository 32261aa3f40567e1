/**
 * The announcer of a retransmit server (docs/protocol.md, "ANNOUNCE" and "QUALITY"): once a
 * period it tells repair servers where it takes NACKs and what it holds (ANNOUNCE, by unicast to
 * each known repair server and by multicast on the announcement and repair groups), and tells its
 * peers how well it receives (QUALITY). A server holding more sessions than one message carries
 * sends several (docs/protocol.md, "Size budgets").
 */
import { announceSessionsMax } from '../limits.js';
import type { RoleClock } from '../net/runtime.js';
import {
  type AnnouncedSession,
  encodeAnnounce,
  encodeQuality,
  type PeerEndpoint,
  type SessionQuality,
} from '../protocol/control.js';

/** What the announcer needs of a control channel (src/crypto/control-auth.ts). */
export interface AnnounceSealer {
  /** Seals for the peer at `to` (its learned id as the target), or for no one (target 0). */
  seal(packet: Buffer, to?: PeerEndpoint): Buffer;
}

/** The announcer's parts. */
export interface AnnouncerOptions {
  readonly clock: RoleClock;
  readonly channel: AnnounceSealer;
  /** Sends by unicast on the control socket. */
  readonly sendTo: (datagram: Buffer, to: PeerEndpoint) => void;
  /** Multicast senders an ANNOUNCE also goes to (announcement group, repair group). */
  readonly multicasts: ReadonlyArray<(datagram: Buffer) => void>;
  /** Repair servers to announce to by unicast. */
  readonly announceTo: readonly PeerEndpoint[];
  /** Where this server takes NACKs. */
  readonly address: () => PeerEndpoint;
}

/** Sends one period's ANNOUNCE and QUALITY messages. */
export class Announcer {
  readonly #options: AnnouncerOptions;

  constructor(options: AnnouncerOptions) {
    this.#options = options;
  }

  /** ANNOUNCEs of what is held: sealed once per repair server, and once for the groups (target 0). */
  announce(sessions: readonly AnnouncedSession[]): void {
    const { channel, announceTo, multicasts, sendTo } = this.#options;
    const own = this.#options.address();
    for (let i = 0; i === 0 || i < sessions.length; i += announceSessionsMax) {
      const body = {
        address: own.address,
        port: own.port,
        sessions: sessions.slice(i, i + announceSessionsMax),
      };
      for (const target of announceTo) {
        sendTo(channel.seal(encodeAnnounce(this.#header(), body), target), target);
      }
      if (multicasts.length > 0) {
        const announce = channel.seal(encodeAnnounce(this.#header(), body));
        for (const multicast of multicasts) {
          multicast(announce);
        }
      }
    }
  }

  /** QUALITY reports to each peer, sealed for it. */
  report(sessions: readonly SessionQuality[], peers: readonly PeerEndpoint[]): void {
    if (peers.length === 0) {
      return;
    }
    for (let i = 0; i === 0 || i < sessions.length; i += announceSessionsMax) {
      const slice = sessions.slice(i, i + announceSessionsMax);
      for (const peer of peers) {
        this.#options.sendTo(
          this.#options.channel.seal(encodeQuality(this.#header(), { sessions: slice }), peer),
          peer,
        );
      }
    }
  }

  #header() {
    return { sessionId: 0, sequence: 0, timestampUs: this.#options.clock.wallUs() };
  }
}
