/**
 * The significant events of a running role, found by comparing its status with the one before
 * (so no role's hot path logs anything): a session starts or ends, a retransmit server's election
 * state changes, a repair server fails over to the next retransmit server or gives packets up, a
 * controller or an agent is refused. Each becomes one structured log line (src/net/log.ts).
 */
import type { EventLog } from '../net/log.js';

type Status = Record<string, unknown>;
type Emit = (name: string, fields: Record<string, unknown>) => void;

const num = (status: Status | undefined, key: string) => {
  const value = status?.[key];
  return typeof value === 'number' ? value : 0;
};
const list = (status: Status | undefined, key: string): Status[] => {
  const value = status?.[key];
  return Array.isArray(value) ? (value as Status[]) : [];
};

function retransmitEvents(before: Status | undefined, now: Status, emit: Emit): void {
  const previous = new Map(list(before, 'sessions').map((s) => [String(s.group), s]));
  for (const session of list(now, 'sessions')) {
    const old = previous.get(String(session.group));
    if (session.sessionId !== undefined && old?.sessionId !== session.sessionId) {
      emit('session-start', { group: session.group, sessionId: session.sessionId });
    }
    if (old !== undefined && old.state !== session.state) {
      emit('election-change', {
        group: session.group,
        from: old.state,
        to: session.state,
        lossPercent: session.lossPercent,
      });
    }
  }
}

function repairEvents(before: Status | undefined, now: Status, emit: Emit): void {
  if (
    now.sessionId !== undefined &&
    (before?.sessionId !== now.sessionId || before?.incarnation !== now.incarnation)
  ) {
    emit('session-start', { sessionId: now.sessionId, incarnation: now.incarnation, emit: now.emit });
  }
  const completed = num(now, 'sessionsCompleted') - num(before, 'sessionsCompleted');
  const incomplete = num(now, 'sessionsIncomplete') - num(before, 'sessionsIncomplete');
  if (completed > 0 || incomplete > 0) {
    emit('session-end', {
      outcome: incomplete > 0 ? 'source-silent' : 'complete',
      recovered: num(now, 'recovered'),
      unrecoverable: num(now, 'unrecoverable'),
    });
  }
  const timeouts = num(now, 'timeouts') - num(before, 'timeouts');
  if (before !== undefined && timeouts > 0) {
    emit('failover', {
      timeouts,
      servers: list(now, 'servers').map((s) => ({ address: s.address, timeouts: s.timeouts })),
    });
  }
  const given = num(now, 'unrecoverable') - num(before, 'unrecoverable');
  if (before !== undefined && given > 0) {
    emit('unrecoverable', { packets: given, total: num(now, 'unrecoverable') });
  }
}

function controllerEvents(before: Status | undefined, now: Status, emit: Emit): void {
  const refusals = num(now, 'refusals') - num(before, 'refusals');
  if (before !== undefined && refusals > 0) {
    emit('refusal', { refusals, total: num(now, 'refusals') });
  }
  const grants = num(now, 'grants') - num(before, 'grants');
  if (before !== undefined && grants > 0) {
    emit('grant', { grants, total: num(now, 'grants') });
  }
}

function agentEvents(before: Status | undefined, now: Status, emit: Emit): void {
  const previous = new Map(list(before, 'sessions').map((s) => [String(s.s1), s]));
  for (const session of list(now, 'sessions')) {
    const old = previous.get(String(session.s1));
    if (session.active !== (old?.active ?? false)) {
      emit(session.active ? 'session-start' : 'session-end', { s1: session.s1, s2: session.s2 });
    }
    if (session.refused !== undefined && session.refused !== old?.refused) {
      emit('refusal', { s1: session.s1, reason: session.refused });
    }
  }
}

/** Compares each status with the previous one and logs what changed. */
export function eventWatcher(log: EventLog): (status: unknown) => void {
  let before: Status | undefined;
  return (value) => {
    if (typeof value !== 'object' || value === null) {
      return;
    }
    const now = value as Status;
    const emit: Emit = (name, fields) => log.event(name, { role: now.role, ...fields });
    switch (now.role) {
      case 'retransmit':
        retransmitEvents(before, now, emit);
        break;
      case 'repair':
        repairEvents(before, now, emit);
        break;
      case 'repair-controller':
        controllerEvents(before, now, emit);
        break;
      case 'agent':
        agentEvents(before, now, emit);
        break;
    }
    before = now;
  };
}
