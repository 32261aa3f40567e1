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
import { ed25519Raw, generateSigningKey, issueGrant } from '../../src/crypto/authority.js';
import { controlKey } from '../../src/crypto/control-auth.js';
import { createSenderProtection } from '../../src/crypto/restricted-session.js';
import { newS2Key, type S2Key } from '../../src/crypto/s2-seal.js';
import { initSoftwareToken, openSoftwareToken } from '../../src/crypto/software-token.js';
import { suiteByName } from '../../src/crypto/suites.js';
import type { Token } from '../../src/crypto/token.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import { PriceModel } from '../../src/protocol/restricted.js';
import { type AgentRestrictedEvent, startAgent } from '../../src/receiver/agent.js';
import { startRepairServer } from '../../src/repair/repair.js';
import { startRetransmitServer } from '../../src/retransmit/retransmit.js';
import { openTickerInput, type PayloadInput } from '../../src/source/inputs.js';
import { createSource } from '../../src/source/source.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
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
const root = generateSigningKey();
const source = generateSigningKey();
const serviceKey = randomBytes(32);
const ticks = 600;

let tokens = 0;
/** A software token holding a subscription grant of `service` for the window given (or none). */
function makeToken(grant: { service: string; notBeforeMs: number; notAfterMs: number } | undefined): Token {
  tokens += 1;
  const path = join(directory, `token-${tokens}.json`);
  initSoftwareToken({ path, pin: '2468', rootPublicKey: ed25519Raw(root.publicKey) });
  const token = openSoftwareToken(path, '2468');
  closers.push(() => token.close());
  if (grant !== undefined) {
    token.installGrant(
      issueGrant(
        {
          devicePoint: token.devicePoint(),
          serviceKey,
          tier: 0,
          service: grant.service,
          serviceEpoch: 1,
          notBeforeMs: grant.notBeforeMs,
          notAfterMs: grant.notAfterMs,
          priceModel: PriceModel.subscription,
          currency: 'EUR',
          priceMinor: 0,
          sourcePublicKey: ed25519Raw(source.publicKey),
        },
        root.privateKey,
      ),
    );
  }
  token.prepare(Date.now());
  return token;
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

/** The ticker input, keeping a copy of every payload it hands the source (the plaintext sent). */
function recordingTicker(sent: Buffer[]): PayloadInput {
  const ticker = openTickerInput({ ticksPerSecond: 500, tickCount: ticks });
  return {
    get kind() {
      return ticker.kind;
    },
    get totalBytes() {
      return ticker.totalBytes;
    },
    get sha256() {
      return ticker.sha256;
    },
    get droppedCount() {
      return ticker.droppedCount;
    },
    read(out) {
      const length = ticker.read(out);
      if (length >= 0) {
        sent.push(Buffer.from(out.subarray(0, length)));
      }
      return length;
    },
    waitReadable: () => ticker.waitReadable(),
    close: () => ticker.close(),
  };
}

/** A restricted ticker of the service "news" on S1: returns the payloads it sent, once it ended. */
async function restrictedTicker(s1: Endpoint, sessionId: number): Promise<Buffer[]> {
  const sent: Buffer[] = [];
  await createSource(
    {
      group: s1,
      iface: loopbackIface,
      rateBitsPerSecond: 0,
      packetPayloadBytes: 64,
      sessionName: 'ticker',
      sessionId,
      incarnation: sessionId * 3,
      firstSequence: 1000,
      startDelayMs: 50,
    },
    {
      input: recordingTicker(sent),
      protection: (identity) =>
        createSenderProtection(
          {
            suite: suiteByName('aes-256-gcm', 'test'),
            service: 'news',
            serviceEpoch: 1,
            serviceKey,
            sourcePrivateKey: source.privateKey,
            sourcePublicKey: source.publicKey,
            cryptoPeriodMs: 10_000,
            tier: 0,
            manifestPackets: 32,
          },
          identity,
        ),
    },
  ).run();
  return sent;
}

/** The unmodified application: a plain UDP socket on its own group and port, joined. */
async function application(group: Endpoint): Promise<Buffer[]> {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  const got: Buffer[] = [];
  socket.on('message', (message) => got.push(message));
  await new Promise<void>((resolve) => socket.bind(group.port, group.address, resolve));
  socket.addMembership(group.address, loopbackIface);
  socket.setRecvBufferSize(4 * 1024 * 1024);
  closers.push(() => {
    socket.close();
  });
  return got;
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
  const got = await application(local);
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
    const token = makeToken({
      service: 'news',
      notBeforeMs: Date.now() - 60_000,
      notAfterMs: Date.now() + 3_600_000,
    });
    const { s1, repair, got, events, agent } = await bed(1, { token, sealed: true, sourcePublic: true });
    const sent = await restrictedTicker(s1, 71);
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
    await restrictedTicker(s1, 72);
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
      const token = makeToken(grant);
      const { s1, repair, got, events, agent } = await bed(name.includes('expired') ? 31 : 21, {
        token,
        sealed: true,
        sourcePublic: false,
      });
      await restrictedTicker(s1, name.includes('expired') ? 74 : 73);
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
