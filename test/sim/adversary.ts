/**
 * The attacker of the simulation: one host that sees every datagram on the wire (it has joined
 * the groups and taps the links) and injects, with any source address it likes:
 * - forged data-plane packets of the genuine runs: a HEARTBEAT or END claiming sequence next +
 *   65,000, DATA of another incarnation, DATA a stray 2^31 sequences away, a DESCRIPTOR of a run
 *   that never sends DATA;
 * - replays: old DATA and DESCRIPTORs of earlier runs, captured control messages sent again to
 *   their target (after a restart) or to another server, from the requester's address or a victim's;
 * - forgeries of control messages without the key, and oversize or truncated datagrams.
 *
 * It holds no key, so nothing it sends can be authenticated: anything that moves a role's state
 * beyond what one unauthenticated packet may move is a bug the invariants catch. Forged DATA inside
 * a genuine run's window and forged runs that have both a DESCRIPTOR and DATA are left out: only
 * signed sessions can refuse those. Signed and restricted plans add them (protectedAdversaryActions):
 * DATA inside the window, HEARTBEAT/END/DESCRIPTOR vouched for by a control signature of its own
 * key, KEY messages replayed (an earlier epoch's, or the current one again) or altered.
 */
import type { KeyObject } from 'node:crypto';
import { buildControlSignature } from '../../src/crypto/authority.js';
import type { Endpoint } from '../../src/net/address.js';
import { encodeNack } from '../../src/protocol/control.js';
import {
  encodeData,
  encodeDescriptor,
  encodeProgress,
  headerBytes,
  offsetIncarnation,
  offsetKeyEpoch,
  offsetSequence,
  offsetSessionId,
  offsetType,
  PacketType,
  SessionKind,
} from '../../src/protocol/packet.js';
import { sequenceAdd } from '../../src/protocol/serial.js';
import { authTrailerBytes } from '../../src/protocol/sizes.js';
import type { SendRecord, SimHost, SimNetwork } from './network.js';
import { ed25519FromSeed } from './protection.js';
import { SimRandom } from './random.js';

/** The runs the adversary has seen on one group, newest last. */
interface SeenRun {
  readonly group: Endpoint;
  readonly source: Endpoint;
  readonly sessionId: number;
  readonly incarnation: number;
  /** Highest "next sequence" seen (DATA sequence + 1, or a HEARTBEAT/END's). */
  next: number;
  readonly data: Buffer[];
  descriptor: Buffer | undefined;
}

interface Capture {
  readonly record: SendRecord;
  readonly type: number;
}

/** Captures of each kind the adversary keeps (a bound, like everything else). */
const capturesMax = 256;

/** Names of the adversary's actions, as they appear in the log. */
export const adversaryActions = [
  'forge-heartbeat-ahead',
  'forge-end-ahead',
  'forge-data-other-incarnation',
  'forge-data-stray',
  'forge-descriptor-phantom',
  'replay-old-run',
  'replay-control-same-target',
  'replay-control-other-target',
  'replay-control-victim',
  'forge-control-no-key',
  'oversize',
  'garbage',
] as const;

/** What only signed sessions refuse: drawn in signed and restricted plans only (protection.ts). */
export const protectedAdversaryActions = [
  'forge-data-in-window',
  'forge-signed-control',
  'replay-key',
  'forge-key',
] as const;
export type AdversaryAction = (typeof adversaryActions)[number] | (typeof protectedAdversaryActions)[number];

/** Where the adversary aims. */
export interface AdversaryTargets {
  /** Control endpoints of retransmit and repair servers. */
  readonly servers: readonly Endpoint[];
  /** Addresses it would like servers to flood (hosts that never talk to them). */
  readonly victims: readonly Endpoint[];
}

/** Incarnations the adversary makes up are drawn from this range's complement of genuine ones. */
const phantomSessionId = 0x0bad_0000;

/** The attacker. */
export class Adversary {
  readonly host: SimHost;
  readonly #network: SimNetwork;
  readonly #random: SimRandom;
  readonly #targets: AdversaryTargets;
  readonly #runs: SeenRun[] = [];
  readonly #control: Capture[] = [];
  /** What the adversary did, newest last (shown when a seed fails). */
  readonly log: string[] = [];
  /** Runs (session id, incarnation) the adversary made up; the invariants treat them as empty. */
  readonly phantomRuns = new Set<string>();
  /** Stray DATA sent per run; bounded below the resync threshold of any window rule. */
  readonly #straysSent = new Map<string, number>();
  /** KEY messages seen on groups (restricted plans), newest last, with where they went. */
  readonly #keys: Array<{ readonly record: SendRecord }> = [];
  /** The adversary's own signing key: what it signs verifies, but not against the source's key. */
  readonly #ownKey: KeyObject;

  constructor(network: SimNetwork, host: SimHost, seed: number, targets: AdversaryTargets) {
    this.host = host;
    this.#network = network;
    this.#random = SimRandom.fork(seed, 'adversary');
    this.#ownKey = ed25519FromSeed(SimRandom.fork(seed, 'adversary/key').bytes(32)).privateKey;
    this.#targets = targets;
    network.onSend((record) => this.#capture(record));
  }

  /** Runs one action (a random one unless named); returns what it did. */
  act(action: AdversaryAction = this.#random.pick(adversaryActions)): string {
    const done = this.#perform(action);
    const line = `t=${this.#network.scheduler.nowMs.toFixed(1)} ${action}: ${done}`;
    this.log.push(line);
    if (this.log.length > 200) {
      this.log.shift();
    }
    this.#network.scheduler.note(`adversary ${line}`);
    return line;
  }

  #capture(record: SendRecord): void {
    if (record.spoofed || record.host === this.host || record.datagram.length < headerBytes) {
      return;
    }
    const type = record.datagram[offsetType] ?? 0;
    if (type === PacketType.key && record.multicast) {
      this.#keys.push({ record });
      if (this.#keys.length > capturesMax) {
        this.#keys.splice(0, 1);
      }
      return;
    }
    if (type >= PacketType.nack) {
      this.#control.push({ record, type });
      if (this.#control.length > capturesMax) {
        this.#control.splice(0, 1);
      }
      return;
    }
    if (!record.multicast || type < PacketType.data || type > PacketType.descriptor) {
      return;
    }
    const datagram = record.datagram;
    const sessionId = datagram.readUInt32BE(offsetSessionId);
    const incarnation = datagram.readUInt32BE(offsetIncarnation);
    const sequence = datagram.readUInt32BE(offsetSequence);
    let run = this.#runs.find(
      (r) =>
        r.sessionId === sessionId &&
        r.incarnation === incarnation &&
        r.group.address === record.to.address &&
        r.group.port === record.to.port,
    );
    if (run === undefined) {
      run = {
        group: record.to,
        source: record.from,
        sessionId,
        incarnation,
        next: sequence,
        data: [],
        descriptor: undefined,
      };
      this.#runs.push(run);
      if (this.#runs.length > 32) {
        this.#runs.shift();
      }
    }
    const next = type === PacketType.data ? sequenceAdd(sequence, 1) : sequence;
    if (((next - run.next) | 0) > 0) {
      run.next = next;
    }
    if (type === PacketType.data) {
      run.data.push(datagram);
      if (run.data.length > capturesMax) {
        run.data.splice(0, 1);
      }
    } else if (type === PacketType.descriptor) {
      run.descriptor = datagram;
    }
  }

  #send(from: Endpoint, to: Endpoint, datagram: Buffer): void {
    this.#network.inject(this.host, from, to, datagram);
  }

  #latestRun(): SeenRun | undefined {
    return this.#runs[this.#runs.length - 1];
  }

  #perform(action: AdversaryAction): string {
    const r = this.#random;
    const run = this.#latestRun();
    const nowUs = this.host.clock.wallUs();
    switch (action) {
      case 'forge-heartbeat-ahead':
      case 'forge-end-ahead': {
        if (run === undefined) {
          return 'no run seen yet';
        }
        const ahead = r.pick([65_000, 100_000, 0x4000_0000, r.int(9000, 70_000)]);
        const sequence = sequenceAdd(run.next, ahead);
        const type = action === 'forge-end-ahead' ? PacketType.end : PacketType.heartbeat;
        const fields = {
          sessionId: run.sessionId,
          incarnation: run.incarnation,
          sequence,
          timestampUs: nowUs,
        };
        this.#send(
          run.source,
          run.group,
          encodeProgress(type, fields, { packetCount: ahead, byteCount: ahead * 1000 }),
        );
        return `run ${hex(run.sessionId)}/${hex(run.incarnation)} next ${run.next} + ${ahead}`;
      }
      case 'forge-data-other-incarnation': {
        if (run === undefined) {
          return 'no run seen yet';
        }
        const incarnation = r.nonZero();
        this.phantomRuns.add(runKey(run.sessionId, incarnation));
        const count = r.int(1, 20);
        for (let i = 0; i < count; i++) {
          const sequence = sequenceAdd(run.next, r.int(-50, 50));
          const fields = { sessionId: run.sessionId, incarnation, sequence, timestampUs: nowUs };
          this.#send(run.source, run.group, encodeData(fields, r.bytes(r.int(0, 1400))));
        }
        return `${count} DATA of incarnation ${hex(incarnation)} near ${run.next}`;
      }
      case 'forge-data-stray': {
        if (run === undefined) {
          return 'no run seen yet';
        }
        const key = runKey(run.sessionId, run.incarnation);
        const sent = this.#straysSent.get(key) ?? 0;
        if (sent >= 2) {
          return 'stray budget of this run spent';
        }
        this.#straysSent.set(key, sent + 1);
        const sequence = sequenceAdd(run.next, r.pick([0x8000_0000, 0x7fff_ff00, 0x8000_0100, 0x1_0000]));
        const fields = {
          sessionId: run.sessionId,
          incarnation: run.incarnation,
          sequence,
          timestampUs: nowUs,
        };
        this.#send(run.source, run.group, encodeData(fields, r.bytes(200)));
        return `run ${hex(run.sessionId)}/${hex(run.incarnation)} sequence ${sequence} (next ${run.next})`;
      }
      case 'forge-descriptor-phantom': {
        if (run === undefined) {
          return 'no run seen yet';
        }
        const sessionId = r.chance(0.5) ? run.sessionId : phantomSessionId + r.int(0, 0xffff);
        const incarnation = r.nonZero();
        this.phantomRuns.add(runKey(sessionId, incarnation));
        const fields = { sessionId, incarnation, sequence: run.next, timestampUs: nowUs };
        const descriptor = encodeDescriptor(fields, {
          firstSequence: run.next,
          packetPayloadBytes: 512,
          kind: SessionKind.file,
          totalBytes: 1024,
          rateBitsPerSecond: 0,
          sha256: r.bytes(32),
          name: 'phantom',
        });
        this.#send(run.source, run.group, descriptor);
        return `DESCRIPTOR of phantom run ${hex(sessionId)}/${hex(incarnation)}`;
      }
      case 'replay-old-run': {
        const old = this.#runs.length > 1 ? this.#runs[r.int(0, this.#runs.length - 2)] : run;
        if (old === undefined || old.data.length === 0) {
          return 'nothing captured';
        }
        const withDescriptor = old.descriptor !== undefined && r.chance(0.5);
        if (withDescriptor && old.descriptor !== undefined) {
          this.#send(old.source, old.group, old.descriptor);
        }
        const start = r.int(0, old.data.length - 1);
        const count = Math.min(old.data.length - start, r.int(1, 64));
        for (let i = 0; i < count; i++) {
          this.#send(old.source, old.group, old.data[start + i] as Buffer);
        }
        return `${withDescriptor ? 'its DESCRIPTOR and ' : ''}${count} DATA of run ${hex(old.sessionId)}/${hex(old.incarnation)} again`;
      }
      case 'replay-control-same-target':
      case 'replay-control-other-target':
      case 'replay-control-victim': {
        if (this.#control.length === 0) {
          return 'no control message captured';
        }
        // A captured SETUP (a leave, above all) is the prize: half the time, replay one of those.
        const setups = this.#control.filter((c) => c.type === PacketType.setup);
        const capture = setups.length > 0 && r.chance(0.5) ? r.pick(setups) : r.pick(this.#control);
        const { record } = capture;
        let to = record.to;
        let from = record.from;
        if (action === 'replay-control-other-target') {
          const others = this.#targets.servers.filter((s) => s.address !== to.address || s.port !== to.port);
          if (others.length === 0) {
            return 'no other server';
          }
          to = r.pick(others);
        } else if (action === 'replay-control-victim') {
          from = r.pick(this.#targets.victims);
          if (r.chance(0.5)) {
            to = r.pick(this.#targets.servers);
          }
        }
        const copies = r.int(1, 3);
        for (let i = 0; i < copies; i++) {
          this.#send(from, to, record.datagram);
        }
        return `type ${capture.type} captured at t=${record.atMs.toFixed(1)} from ${ep(record.from)} to ${ep(record.to)}, sent ${copies}x from ${ep(from)} to ${ep(to)}`;
      }
      case 'forge-control-no-key': {
        if (this.#targets.servers.length === 0) {
          return 'no server';
        }
        const to = r.pick(this.#targets.servers);
        const from = r.pick(this.#targets.victims);
        const sessionId = run?.sessionId ?? r.nonZero();
        const nack = encodeNack(
          {
            sessionId,
            incarnation: run?.incarnation ?? r.nonZero(),
            sequence: run?.next ?? 0,
            timestampUs: nowUs,
          },
          {
            replyTo: { address: from.address, port: from.port },
            ranges: [{ start: sequenceAdd(run?.next ?? 0, -4000), count: 4000 }],
          },
        );
        r.bytes(authTrailerBytes).copy(nack, nack.length - authTrailerBytes);
        this.#send(from, to, nack);
        return `NACK with a made-up trailer from ${ep(from)} to ${ep(to)}`;
      }
      case 'forge-data-in-window': {
        if (run === undefined || run.data.length === 0) {
          return 'no run seen yet';
        }
        // A genuine DATA's header (its key epoch too) with other bytes: sequence near the next.
        const model = run.data[run.data.length - 1] as Buffer;
        const count = r.int(1, 10);
        for (let i = 0; i < count; i++) {
          const forged = Buffer.from(model);
          forged.writeUInt32BE(sequenceAdd(run.next, r.int(-40, 40)), offsetSequence);
          r.bytes(forged.length - headerBytes).copy(forged, headerBytes);
          this.#send(run.source, run.group, forged);
        }
        return `${count} DATA of run ${hex(run.sessionId)}/${hex(run.incarnation)} near ${run.next}`;
      }
      case 'forge-signed-control': {
        if (run === undefined) {
          return 'no run seen yet';
        }
        const ahead = r.pick([65_000, r.int(100, 9000)]);
        const fields = {
          sessionId: run.sessionId,
          incarnation: run.incarnation,
          sequence: sequenceAdd(run.next, ahead),
          timestampUs: nowUs,
        };
        const type = r.pick([PacketType.heartbeat, PacketType.end]);
        const control = encodeProgress(type, fields, { packetCount: ahead, byteCount: ahead * 100 });
        this.#send(run.source, run.group, buildControlSignature(control, this.#ownKey));
        this.#send(run.source, run.group, control);
        return `type ${type} of run ${hex(run.sessionId)}/${hex(run.incarnation)} at next + ${ahead}, signed by another key`;
      }
      case 'replay-key':
      case 'forge-key': {
        if (this.#keys.length === 0) {
          return 'no KEY message seen';
        }
        // An older one half the time: an earlier epoch's, or an earlier run's.
        const { record } = r.chance(0.5) ? (this.#keys[0] as { record: SendRecord }) : r.pick(this.#keys);
        const datagram = Buffer.from(record.datagram);
        if (action === 'forge-key') {
          const at = r.int(headerBytes, datagram.length - 1);
          datagram[at] = (datagram[at] as number) ^ (1 << r.int(0, 7));
        }
        const copies = r.int(1, 3);
        for (let i = 0; i < copies; i++) {
          this.#send(record.from, record.to, datagram);
        }
        return `KEY of epoch ${datagram.readUInt16BE(offsetKeyEpoch)} run ${hex(datagram.readUInt32BE(offsetSessionId))}/${hex(datagram.readUInt32BE(offsetIncarnation))} captured at t=${record.atMs.toFixed(1)}, sent ${copies}x${action === 'forge-key' ? ' with a bit flipped' : ''}`;
      }
      case 'oversize': {
        const to =
          run !== undefined && r.chance(0.5)
            ? run.group
            : r.pick(this.#targets.servers.concat(run?.group ?? []));
        if (to === undefined) {
          return 'no target';
        }
        const length = r.pick([65_507, 65_508, 70_000, 65_439 + headerBytes]);
        const datagram = r.bytes(length);
        if (run !== undefined && r.chance(0.5)) {
          // A header that looks right with a body that does not fit any budget.
          encodeData(
            { sessionId: run.sessionId, incarnation: r.nonZero(), sequence: run.next, timestampUs: nowUs },
            Buffer.alloc(0),
          ).copy(datagram);
          datagram.writeUInt16BE(Math.min(0xffff, length - headerBytes), 24);
        }
        this.#send(run?.source ?? this.#endpoint(), to, datagram);
        return `${length} bytes to ${ep(to)}`;
      }
      case 'garbage': {
        const to = r.pick(this.#targets.servers.concat(run?.group ?? []));
        if (to === undefined) {
          return 'no target';
        }
        const source = run?.data[r.int(0, Math.max(0, (run?.data.length ?? 1) - 1))];
        let datagram: Buffer;
        if (source !== undefined && r.chance(0.7)) {
          datagram = Buffer.from(source.subarray(0, r.int(0, source.length)));
          if (datagram.length > 0 && r.chance(0.5)) {
            const at = r.int(0, datagram.length - 1);
            datagram[at] = (datagram[at] as number) ^ (1 << r.int(0, 7));
          }
        } else {
          datagram = r.bytes(r.int(0, 100));
        }
        this.#send(run?.source ?? this.#endpoint(), to, datagram);
        return `${datagram.length} bytes of garbage to ${ep(to)}`;
      }
    }
  }

  #endpoint(): Endpoint {
    return { address: this.host.address, port: 6666, family: 4 };
  }
}

/** The key the invariants use for a run. */
export function runKey(sessionId: number, incarnation: number): string {
  return `${hex(sessionId)}/${hex(incarnation)}`;
}

function hex(value: number): string {
  return (value >>> 0).toString(16).padStart(8, '0');
}

function ep(endpoint: Endpoint): string {
  return `${endpoint.address}:${endpoint.port}`;
}
