/**
 * `gatecast agent --token` on the command line (issue 12, item 9): the options and the token go as
 * for `receive`. A restricted ticker on S2 reaches the application as the source's plaintext
 * through an entitled software token; without --token the agent says once why nothing is delivered
 * and delivers nothing.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseGroup } from '../../src/net/address.js';
import { runGatecast, spawnUntilReady } from '../helpers/cli.js';
import { freshPort } from '../helpers/loopback.js';
import { application, makeToken, newsGrant, restrictedTicker, tokenPin } from '../helpers/restricted-bed.js';
import { gatecastBin } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-cli-agent-token-'));
const closers: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
  rmSync(directory, { recursive: true, force: true });
});
const pinFile = join(directory, 'pin');
writeFileSync(pinFile, `${tokenPin}\n`);
const ticks = 300;

/** Starts `gatecast agent` from `s2` to `local` on loopback, then `extra`; stopped after the tests. */
async function startAgentCommand(s2: string, local: string, extra: string[]) {
  const agent = await spawnUntilReady(
    process.execPath,
    [
      gatecastBin(),
      'agent',
      '--from',
      s2,
      '--from-iface',
      '127.0.0.1',
      '--deliver',
      local,
      '--deliver-iface',
      '127.0.0.1',
      ...extra,
    ],
    /agent: .* -> /,
    'the agent started',
  );
  closers.push(async () => {
    agent.stop();
    await agent.exited;
  });
  return agent;
}

describe('gatecast agent --token FILE --pin-file FILE', () => {
  it('hands the application the plaintext of a restricted session, payload for payload', async () => {
    const tokenFile = join(directory, 'entitled.token');
    makeToken(tokenFile, newsGrant()).close();
    const s2 = parseGroup(`239.255.97.1:${freshPort()}`, 's2');
    const local = parseGroup(`239.255.97.2:${freshPort()}`, 'application');
    const got = await application(local, closers);
    const agent = await startAgentCommand(`${s2.address}:${s2.port}`, `${local.address}:${local.port}`, [
      '--token',
      tokenFile,
      '--pin-file',
      pinFile,
    ]);
    assert.match(agent.stderr(), /restricted sessions decrypted with --token/);
    const sent = await restrictedTicker(s2, 81, ticks);
    await waitUntil('every payload at the application', () => got.length >= ticks, 20_000).catch(
      (error: Error) => {
        throw new Error(`${error.message}: ${got.length} of ${ticks}; ${agent.stderr()}`);
      },
    );
    assert.deepEqual(got, sent);
    agent.stop();
    assert.equal(await agent.exited, 0, agent.stderr());
    assert.doesNotMatch(agent.stderr(), /nothing delivered/);
  });

  it('without --token: nothing reaches the application, and the agent says why once', async () => {
    const s2 = parseGroup(`239.255.97.3:${freshPort()}`, 's2');
    const local = parseGroup(`239.255.97.4:${freshPort()}`, 'application');
    const got = await application(local, closers);
    const agent = await startAgentCommand(`${s2.address}:${s2.port}`, `${local.address}:${local.port}`, []);
    await restrictedTicker(s2, 82, ticks);
    await waitUntil('the agent saying why', () => /nothing delivered/.test(agent.stderr()), 10_000);
    agent.stop();
    assert.equal(await agent.exited, 0, agent.stderr());
    assert.deepEqual(got, [], 'no ciphertext handed on as the stream');
    const said = agent.stderr().match(/restricted session "ticker": no --token; nothing delivered/g) ?? [];
    assert.equal(said.length, 1, agent.stderr());
  });

  it('a wrong PIN or --pkcs11-module without --token: exit 2 naming the option, before anything starts', async () => {
    const tokenFile = join(directory, 'pin.token');
    makeToken(tokenFile, newsGrant()).close();
    const wrongPin = join(directory, 'wrong-pin');
    writeFileSync(wrongPin, '1111\n');
    const base = ['agent', '--from', '239.255.97.5:5000', '--deliver', '239.255.97.6:5000'];
    const wrong = await runGatecast([...base, '--token', tokenFile, '--pin-file', wrongPin]);
    assert.equal(wrong.code, 2, wrong.stderr);
    assert.match(wrong.stderr, /--token/);
    const stray = await runGatecast([...base, '--pkcs11-module', '/usr/lib/softhsm/libsofthsm2.so']);
    assert.equal(stray.code, 2, stray.stderr);
    assert.match(stray.stderr, /--pkcs11-module needs --token pkcs11:LABEL/);
  });
});
