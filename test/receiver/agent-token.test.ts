/**
 * The agent and restricted sessions (issue 12, item 9): a restricted ticker goes through a
 * retransmit and a repair server to S2; the agent hands it to an unmodified application. With an
 * entitled software token the application reads the source's plaintext, byte for byte; without a
 * token, or with a token not entitled to the service, the application reads nothing and the agent
 * says so once and counts what it dropped.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { buildKeyMessage, generateSigningKey } from '../../src/crypto/authority.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import { newS2Key, type S2Key } from '../../src/crypto/s2-seal.js';
import type { Token } from '../../src/crypto/token.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import { type AgentRestrictedEvent, startAgent, startWatchingAgent } from '../../src/receiver/agent.js';
import { startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import {
  application,
  makeToken,
  newsGrant,
  restrictedKeys,
  restrictedTicker,
  type TestGrant,
} from '../helpers/restricted-bed.js';
import { waitUntil } from '../helpers/wait.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-agent-token-'));
const closers: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
  rmSync(directory, { recursive: true, force: true });
});

const key = controlKey(Buffer.from('agent token test secret, not for use'));
const listen = { address: '127.0.0.1', port: 0, family: 4 as const };
const { source } = restrictedKeys;
const ticks = 600;

let tokens = 0;
/** A software token of this file with `grant` (or none), closed after the tests. */
function token(grant: TestGrant | undefined): Token {
  tokens += 1;
  const opened = makeToken(join(directory, `token-${tokens}.json`), grant);
  closers.push(() => opened.close());
  return opened;
}

/** Retransmit and repair servers from S1 to S2, both given the source key; S2 sealed under `s2Key`. */
async function repairPath(s1: Endpoint, s2: Endpoint, s2Key: S2Key | undefined) {
  const retransmit = await startRetransmitServer({
    joins: [{ group: s1 }],
    iface: loopbackIface,
    listen,
    keys: [key],
    bufferBytesMax: 64 * 1024 * 1024,
    bufferAgeMs: 60_000,
    repairRateBitsPerSecond: 500_000_000,
    announceTo: [],
    peers: [],
    sourcePublicKey: source.publicKey,
  });
  closers.push(() => retransmit.close());
  const repair = await startRepairServer({
    group: s1,
    iface: loopbackIface,
    listen,
    keys: [key],
    retransmit: [retransmit.local],
    emit: s2,
    latencyMs: undefined,
    sourcePublicKey: source.publicKey,
    ...(s2Key === undefined ? {} : { s2Key }),
  });
  closers.push(() => repair.close());
  return repair;
}

/** S1, S2 and the application's group, the repair path, the application and the agent. */
async function bed(
  octet: number,
  options: { token: Token | undefined; sealed: boolean; sourcePublic: boolean },
) {
  const s1 = parseGroup(`239.255.96.${octet}:${freshPort()}`, 's1');
  const s2 = parseGroup(`239.255.96.${octet + 1}:${freshPort()}`, 's2');
  const local = parseGroup(`239.255.96.${octet + 2}:${freshPort()}`, 'application');
  const s2Key = options.sealed ? newS2Key(1) : undefined;
  const repair = await repairPath(s1, s2, s2Key);
  const got = await application(local, closers);
  const events: AgentRestrictedEvent[] = [];
  const agent = await startAgent({
    from: s2,
    fromIface: loopbackIface,
    deliver: local,
    deliverIface: loopbackIface,
    s2Key,
    protection: {
      token: options.token,
      sourcePublicKey: options.sourcePublic ? source.publicKey : undefined,
      onRestricted: (event) => events.push(event),
    },
  });
  closers.push(() => agent.close());
  return { s1, repair, got, events, agent };
}

describe('gatecast agent --token: a restricted session through the repair service', () => {
  it('an entitled token: the application receives every payload of the source, byte for byte, in order', async () => {
    const { s1, repair, got, events, agent } = await bed(1, {
      token: token(newsGrant()),
      sealed: true,
      sourcePublic: true,
    });
    const sent = await restrictedTicker(s1, 71, ticks);
    assert.equal(sent.length, ticks);
    await waitUntil('every payload at the application', () => got.length >= ticks, 20_000).catch((error) => {
      throw new Error(
        `${error}: ${JSON.stringify({ got: got.length, agent: agent.status(), repair: repair.status() })}`,
      );
    });
    assert.deepEqual(got, sent);
    const status = agent.status();
    assert.equal(status.decrypted, ticks);
    assert.equal(status.delivered, ticks);
    assert.equal(status.refused, 0);
    assert.equal(status.restrictedDropped, 0);
    assert.deepEqual(events, []);
  });

  it('no token: nothing reaches the application; the drop is counted and said once', async () => {
    const { s1, repair, got, events, agent } = await bed(11, {
      token: undefined,
      sealed: false,
      sourcePublic: false,
    });
    await restrictedTicker(s1, 72, ticks);
    await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
    await waitUntil(
      'every DATA counted at the agent',
      () => agent.status().restrictedDropped >= ticks,
      20_000,
    );
    assert.deepEqual(got, [], 'no ciphertext handed on as the stream');
    const status = agent.status();
    assert.equal(status.delivered, 0);
    assert.equal(status.decrypted, 0);
    assert.deepEqual(events, [{ kind: 'no-token', session: '"ticker"' }]);
  });

  for (const [name, grant] of [
    [
      'a grant for another service',
      { service: 'sports', notBeforeMs: Date.now() - 60_000, notAfterMs: Date.now() + 3_600_000 },
    ],
    [
      'an expired grant',
      { service: 'news', notBeforeMs: Date.now() - 7_200_000, notAfterMs: Date.now() - 60_000 },
    ],
  ] as const) {
    it(`a token with ${name}: nothing reaches the application; the refusal is said once and counted`, async () => {
      const { s1, repair, got, events, agent } = await bed(name.includes('expired') ? 31 : 21, {
        token: token(grant),
        sealed: true,
        sourcePublic: false,
      });
      await restrictedTicker(s1, name.includes('expired') ? 74 : 73, ticks);
      await waitUntil('the run re-emitted on S2', () => repair.status().sessionsCompleted === 1, 20_000);
      await waitUntil('the refusal', () => agent.status().refused > 0, 20_000);
      assert.deepEqual(got, [], 'nothing handed on');
      const status = agent.status();
      assert.equal(status.delivered, 0);
      assert.equal(status.decrypted, 0);
      assert.equal(events.length, 1, JSON.stringify(events));
      assert.equal(events[0]?.kind, 'refused');
      assert.match(status.refusal ?? '', /news/);
    });
  }
});

describe('a watching agent (--watch --map) with a token', () => {
  it('starts when the application joins and hands it the plaintext of the restricted session', async () => {
    const s1 = parseGroup(`239.255.96.41:${freshPort()}`, 's1');
    const s2 = parseGroup(`239.255.96.42:${freshPort()}`, 's2');
    const local = parseGroup(`239.255.96.43:${freshPort()}`, 'application');
    await repairPath(s1, s2, undefined);
    const agent = await startWatchingAgent({
      mappings: [{ s1, s2, deliver: local }],
      fromIface: loopbackIface,
      deliverIface: loopbackIface,
      pollMs: 20,
      protection: { token: token(newsGrant()) },
    });
    closers.push(() => agent.close());
    const got = await application(local, closers);
    await waitUntil('the agent delivering', () => agent.status().sessions[0]?.active === true, 10_000);
    const sent = await restrictedTicker(s1, 75, ticks);
    await waitUntil('every payload at the application', () => got.length >= ticks, 20_000);
    assert.deepEqual(got, sent);
    assert.equal(agent.status().sessions[0]?.delivery?.decrypted, ticks);
  });
});

describe('forged KEY messages of runs that do not exist', () => {
  it('do not push out the run being decrypted: the application still gets every payload', async () => {
    const s2 = parseGroup(`239.255.96.51:${freshPort()}`, 's2');
    const local = parseGroup(`239.255.96.52:${freshPort()}`, 'application');
    const got = await application(local, closers);
    const agent = await startAgent({
      from: s2,
      fromIface: loopbackIface,
      deliver: local,
      deliverIface: loopbackIface,
      protection: { token: token(newsGrant()) },
    });
    closers.push(() => agent.close());
    // A forger on S2 (plain here, as behind a repair server without --s2-key-file) sends KEY
    // messages of many other runs under a key of its own, while the source's run goes on.
    const forger = createSocket('udp4');
    await new Promise<void>((resolve) => forger.bind(0, loopbackIface, resolve));
    forger.setMulticastInterface(loopbackIface);
    closers.push(() => {
      forger.close();
    });
    const wrongKey = generateSigningKey();
    let forged = 0;
    const forging = setInterval(() => {
      forged += 1;
      const message = buildKeyMessage(
        {
          sessionId: 9000 + forged,
          incarnation: 1,
          sequence: 0,
          timestampUs: Date.now() * 1000,
          keyEpoch: 1,
        },
        { suite: 2, tier: 0, serviceEpoch: 1, cryptoPeriodMs: 10_000, service: 'news' },
        restrictedKeys.serviceKey,
        randomBytes(32),
        wrongKey.privateKey,
      );
      forger.send(message, s2.port, s2.address);
    }, 20);
    try {
      const sent = await restrictedTicker(s2, 76, ticks);
      await waitUntil('every payload at the application', () => got.length >= ticks, 20_000);
      assert.deepEqual(got, sent);
    } finally {
      clearInterval(forging);
    }
    assert.ok(forged > 4 * 4, `${forged} forged KEY messages sent`);
    assert.equal(agent.status().decrypted, ticks);
  });
});
