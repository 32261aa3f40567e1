import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ControlChannel, controlKey } from '../../src/crypto/control-auth.js';
import { announceSessionsMax } from '../../src/limits.js';
import {
  type AnnouncedSession,
  decodeAnnounce,
  decodeQuality,
  ListenState,
  type PeerEndpoint,
} from '../../src/protocol/control.js';
import { Announcer } from '../../src/retransmit/announcer.js';
import { ManualClock } from '../helpers/manual-clock.js';

const key = controlKey(Buffer.from('the operator secret shared by servers'));

function session(sessionId: number): AnnouncedSession {
  return {
    sessionId,
    incarnation: 7,
    firstHeld: 1,
    lastHeld: 9,
    heldCount: 9,
    lossPpm: 100,
    state: ListenState.listening,
  };
}

describe('announcer', () => {
  it('splits announcements and quality reports over messages every decoder takes, to each target', () => {
    const clock = new ManualClock();
    const channel = new ControlChannel([key], { clock });
    const sent: Array<{ datagram: Buffer; to: PeerEndpoint | 'group' }> = [];
    const repairServer = { address: '10.0.0.9', port: 6000 };
    const peer = { address: '10.0.0.8', port: 6001 };
    const announcer = new Announcer({
      clock,
      channel,
      sendTo: (datagram, to) => sent.push({ datagram, to }),
      multicasts: [(datagram) => sent.push({ datagram, to: 'group' })],
      announceTo: [repairServer],
      address: () => ({ address: '10.0.0.1', port: 7000 }),
    });
    const sessions = Array.from({ length: announceSessionsMax + 3 }, (_, i) => session(i + 1));
    announcer.announce(sessions);
    assert.equal(sent.length, 4, 'two messages, each to the repair server and to the group');
    const decoded = sent.map((s) => decodeAnnounce(s.datagram));
    assert.ok(decoded.every((d) => d.ok && d.value.address === '10.0.0.1' && d.value.port === 7000));
    const toServer = decoded.filter((_, i) => sent[i]?.to === repairServer);
    assert.equal(
      toServer.reduce((sum, d) => sum + (d.ok ? d.value.sessions.length : 0), 0),
      sessions.length,
    );
    sent.length = 0;
    announcer.report(
      sessions.map((s) => ({
        sessionId: s.sessionId,
        incarnation: s.incarnation,
        received: 90,
        missing: 10,
        lossPpm: 100_000,
        jitterUs: 5,
        state: s.state,
      })),
      [peer],
    );
    assert.equal(sent.length, 2);
    const quality = decodeQuality(sent[0]?.datagram ?? Buffer.alloc(0));
    assert.ok(quality.ok);
    assert.equal(quality.value.sessions[0]?.missing, 10);
    assert.equal(quality.value.sessions[0]?.received, 90);
  });

  it('announces even with no session (repair servers learn of the server), and reports nothing with no peer', () => {
    const clock = new ManualClock();
    const sent: Buffer[] = [];
    const announcer = new Announcer({
      clock,
      channel: new ControlChannel([key], { clock }),
      sendTo: (datagram) => sent.push(datagram),
      multicasts: [],
      announceTo: [{ address: '10.0.0.9', port: 6000 }],
      address: () => ({ address: '10.0.0.1', port: 7000 }),
    });
    announcer.announce([]);
    announcer.report([], []);
    assert.equal(sent.length, 1);
  });
});
