/**
 * The real roles as a RoleKit: createSource, createReceiver, startRetransmitServer and
 * startRepairServer, each handed the runtime of its simulated host and nothing else from outside.
 */
import { createHash } from 'node:crypto';
import {
  datagramBytesMax,
  pendingBytesMax,
  pendingPacketsMax,
  progressAheadPacketsMax,
  repairHoldPacketsMax,
  retransmitGroupsMax,
} from '../../src/limits.js';
import { SessionKind } from '../../src/protocol/packet.js';
import { createReceiver, type PayloadSink } from '../../src/receiver/receiver.js';
import { type RepairStatus, startRepairServer } from '../../src/repair/repair.js';
import { type RetransmitStatus, startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { inputEnded, type PayloadInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { runKey } from './adversary.js';
import type { RoleKit } from './scenario.js';

/** A file-like input over a buffer: the payload a seed made. */
function memoryInput(payload: Buffer): PayloadInput {
  let offset = 0;
  return {
    kind: SessionKind.file,
    totalBytes: payload.length,
    sha256: createHash('sha256').update(payload).digest(),
    droppedCount: 0,
    read(out) {
      if (offset >= payload.length) {
        return inputEnded;
      }
      const length = payload.copy(out, 0, offset, Math.min(payload.length, offset + out.length));
      offset += length;
      return length;
    },
    waitReadable: () => Promise.resolve(),
    close: async () => undefined,
  };
}

/** The real roles. */
export const realKit: RoleKit = {
  name: 'real',
  async runSource(spec, runtime) {
    const source = createSource(
      {
        group: spec.group,
        rateBitsPerSecond: spec.rateBitsPerSecond,
        packetPayloadBytes: spec.packetBytes,
        sessionName: 'sim',
        sessionId: spec.sessionId,
        firstSequence: spec.firstSequence,
      },
      {
        input: memoryInput(spec.payload),
        runtime,
        ...(spec.protection === undefined ? {} : { protection: spec.protection }),
      },
    );
    await source.run();
  },
  runReceiver(group, timeoutMs, write, runtime, guard) {
    const sink: PayloadSink = { write, close: async () => undefined };
    const receiver = createReceiver(
      { group, timeoutMs },
      { sink, runtime, signed: guard?.signed, protection: guard?.protection },
    );
    return {
      result: receiver.run().then((summary) => ({
        outcome: summary.outcome,
        run:
          summary.sessionId === undefined || summary.incarnation === undefined
            ? undefined
            : runKey(summary.sessionId, summary.incarnation),
        missing: summary.packetsMissing,
      })),
      status: () => receiver.summary,
    };
  },
  async startRetransmit(spec, runtime) {
    return startRetransmitServer(
      {
        joins: spec.groups.map((group) => ({ group })),
        listen: spec.listen,
        keys: spec.keys,
        bufferBytesMax: spec.bufferBytesMax,
        bufferAgeMs: spec.bufferAgeMs,
        repairRateBitsPerSecond: 200_000_000,
        announceTo: spec.announceTo,
        peers: spec.peers,
        election: spec.election,
        sourcePublicKey: spec.sourcePublicKey,
      },
      { runtime },
    );
  },
  async startRepair(spec, runtime) {
    return startRepairServer(
      {
        group: spec.group,
        listen: spec.listen,
        keys: spec.keys,
        retransmit: spec.retransmit,
        emit: spec.emit,
        latencyMs: spec.latencyMs,
        sourcePublicKey: spec.sourcePublicKey,
      },
      { runtime },
    );
  },
  recoveredOf: (status) => (status as RepairStatus).recovered,
  joinedGroups: (status) => (status as RetransmitStatus).sessions.map((session) => session.group),
  checkLimits(role, status) {
    if (role === 'retransmit') {
      const s = status as RetransmitStatus;
      if (s.sessions.length > retransmitGroupsMax) {
        return `retransmit: ${s.sessions.length} groups joined, more than ${retransmitGroupsMax}`;
      }
      for (const session of s.sessions) {
        if (session.bufferBytes > simBufferBytesMax + datagramBytesMax) {
          return `retransmit: ${session.bufferBytes} bytes buffered for ${session.group}, more than ${simBufferBytesMax}`;
        }
      }
      return undefined;
    }
    if (role === 'repair') {
      const s = status as RepairStatus;
      return over([
        ['packets held', s.holding, repairHoldPacketsMax],
        ['gaps', s.missingNow, repairHoldPacketsMax + progressAheadPacketsMax],
        ['packets pending a DESCRIPTOR', s.pendingPackets, pendingPacketsMax],
        ['bytes pending a DESCRIPTOR', s.pendingBytes, pendingBytesMax],
      ]);
    }
    return undefined;
  },
};

/** The buffer bound the scenario gives retransmit servers. */
const simBufferBytesMax = 64 * 1024 * 1024;

function over(bounds: ReadonlyArray<readonly [string, number, number]>): string | undefined {
  for (const [what, value, max] of bounds) {
    if (value > max) {
      return `${value} ${what}, more than ${max}`;
    }
  }
  return undefined;
}
