/**
 * What the agent does with restricted sessions on S2 (docs/architecture.md, "Agent"). A restricted
 * session's DATA is sealed under a traffic key that only an entitled token releases from the
 * in-band KEY messages (docs/protocol.md, "Restricted sessions"). With a token, the agent asks it
 * for each epoch's key exactly as `gatecast receive` does (src/crypto/restricted-session.ts: the
 * token checks the grant's window, the purse and the tier) and hands on the opened DATA; when the
 * token refuses, nothing more of that session is delivered. Without a token, ciphertext is never
 * handed to the application as if it were the stream: it is counted and dropped.
 */

import type { TokenRefused } from '../crypto/errors.js';
import {
  createReceiverProtection,
  type ReceiverProtection,
  type ReceiverProtectionStats,
} from '../crypto/restricted-session.js';
import type { Token } from '../crypto/token.js';
import { agentRestrictedRunsMax } from '../limits.js';
import {
  decodeDescriptor,
  headerBytes,
  headerProblem,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSessionId,
  offsetType,
  PacketType,
} from '../protocol/packet.js';

/** Told once per restricted run the agent cannot deliver. */
export type AgentRestrictedEvent =
  | { readonly kind: 'no-token'; readonly session: string }
  | { readonly kind: 'refused'; readonly session: string; readonly refusal: TokenRefused };

/** Counters of restricted sessions (part of AgentStatus). */
export interface AgentRestrictedStatus {
  /** Sealed DATA opened with a traffic key the token released (then delivered unless duplicate). */
  decrypted: number;
  /** DATA of a run whose keys the token refused: dropped. */
  refused: number;
  /** DATA of a restricted run with no token to open it: dropped, never delivered as ciphertext. */
  restrictedDropped: number;
  /** The token's last refusal ("not entitled to news until …", "purse empty"). */
  refusal: string | undefined;
  /** KEY and DATA counters of the latest restricted run whose keys the token released (with a token). */
  keys: Readonly<ReceiverProtectionStats> | undefined;
}

/** A restricted run the agent follows (bounded: agentRestrictedRunsMax). */
interface RestrictedRun {
  readonly sessionId: number;
  readonly incarnation: number;
  protection: ReceiverProtection | undefined;
  refused: boolean;
  told: boolean;
}

/** The filter between S2 (opened, authenticated) and delivery. */
export interface AgentRestrictedFilter {
  /** Takes a datagram; passes on what may be delivered or counted (opened DATA, plain datagrams). */
  filter(datagram: Buffer): void;
  status(): AgentRestrictedStatus;
}

/**
 * Builds the filter. `pass` gets plain datagrams of plain sessions as they are, and the opened
 * DATA of restricted ones; it never gets sealed DATA.
 */
export function createAgentRestrictedFilter(
  token: Token | undefined,
  onEvent: ((event: AgentRestrictedEvent) => void) | undefined,
  pass: (datagram: Buffer) => void,
): AgentRestrictedFilter {
  let decryptedBefore = 0;
  let refused = 0;
  let restrictedDropped = 0;
  let refusal: string | undefined;
  /** The runs followed, by "sessionId/incarnation", oldest first. */
  const runs = new Map<string, RestrictedRun>();
  /** The name of the last run a DESCRIPTOR named, for the messages. */
  let named: { sessionId: number; incarnation: number; name: string } | undefined;

  const sessionName = (sessionId: number, incarnation: number) =>
    named?.sessionId === sessionId && named.incarnation === incarnation
      ? `"${named.name}"`
      : `${sessionId}/${incarnation}`;

  const released = (run: RestrictedRun) => (run.protection?.stats.keysAccepted ?? 0) > 0;

  /**
   * Follows a new run, making room first: the oldest run without a released key goes, else the
   * oldest. Only the token's release authenticates a run, so KEY messages of runs that do not
   * exist cannot push out the one being delivered.
   */
  const startRun = (sessionId: number, incarnation: number): RestrictedRun => {
    if (runs.size >= agentRestrictedRunsMax) {
      const [name, oldest] = [...runs].find(([, candidate]) => !released(candidate)) ?? [...runs][0] ?? [];
      if (name !== undefined && oldest !== undefined) {
        runs.delete(name);
        decryptedBefore += oldest.protection?.stats.packetsOpened ?? 0;
      }
    }
    const next: RestrictedRun = {
      sessionId,
      incarnation,
      protection: undefined,
      refused: false,
      told: false,
    };
    runs.set(`${sessionId}/${incarnation}`, next);
    if (token === undefined) {
      return next;
    }
    next.protection = createReceiverProtection(token, (refusedBy) => {
      // Each later KEY epoch is refused again: the run's refusal is told once.
      if (next.refused) {
        return;
      }
      next.refused = true;
      refusal = refusedBy.message;
      onEvent?.({ kind: 'refused', session: sessionName(sessionId, incarnation), refusal: refusedBy });
    });
    return next;
  };

  const filter = (datagram: Buffer) => {
    if (
      datagram.length < headerBytes ||
      (datagram[offsetType] === PacketType.data && headerProblem(datagram) !== undefined)
    ) {
      pass(datagram); // counted malformed or ignored by delivery; a malformed DATA starts no run
      return;
    }
    const type = datagram[offsetType];
    const sessionId = datagram.readUInt32BE(offsetSessionId);
    const incarnation = datagram.readUInt32BE(offsetIncarnation);
    if (type === PacketType.descriptor) {
      const decoded = decodeDescriptor(datagram);
      if (decoded.ok) {
        named = { sessionId, incarnation, name: decoded.value.name };
      }
      pass(datagram);
      return;
    }
    const run = runs.get(`${sessionId}/${incarnation}`);
    if (type === PacketType.rekey) {
      // A member-tree rekey of a run this agent decodes: for its token; of any other: nothing to do.
      if (run?.protection !== undefined && !run.refused) {
        run.protection.filter(datagram, pass);
      }
      return;
    }
    const sealed = type === PacketType.data && datagram.readUInt16BE(offsetKeyEpoch) !== 0;
    // KEY messages and sealed DATA make a run restricted; plain DATA of such a run is for the
    // protection to drop (it is never written), plain DATA of any other run is delivered.
    if (type !== PacketType.key && !sealed && !(run !== undefined && type === PacketType.data)) {
      pass(datagram);
      return;
    }
    const current = run ?? startRun(sessionId, incarnation);
    if (current.protection === undefined) {
      if (type !== PacketType.data) {
        pass(datagram); // a KEY message: counted ignored
        return;
      }
      restrictedDropped++;
      if (!current.told) {
        current.told = true;
        onEvent?.({ kind: 'no-token', session: sessionName(sessionId, incarnation) });
      }
      return;
    }
    if (current.refused) {
      if (type === PacketType.data) {
        refused++;
      }
      return;
    }
    current.protection.filter(datagram, pass);
  };

  return {
    filter,
    status: () => {
      const followed = [...runs.values()];
      return {
        decrypted: followed.reduce(
          (sum, run) => sum + (run.protection?.stats.packetsOpened ?? 0),
          decryptedBefore,
        ),
        refused,
        restrictedDropped,
        refusal,
        keys: followed.filter(released).at(-1)?.protection?.stats,
      };
    },
  };
}
