/**
 * The restricted channel "news" on the routed test bed (test/helpers/testbed.ts): the bed with a
 * SoftHSM2 token and the keys of `gatecast token keys`, a restricted `gatecast send`, a retransmit
 * and repair server pair, and a `socat` capture of a group to look for plaintext in.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runGatecast } from './cli.js';
import { createSoftHsm, type SoftHsm } from './softhsm.js';
import { createTestbed, type HostProcess, sendFrom, startRepairPair, type Testbed } from './testbed.js';

/** What createNewsBed builds; the caller takes it down (bed.down(), hsm.remove(), the directory). */
export interface NewsBed {
  readonly directory: string;
  /** The folder `gatecast token keys` wrote: root.pem, root.pub, source.pem, source.pub, news.key. */
  readonly keys: string;
  readonly hsm: SoftHsm;
  readonly bed: Testbed;
}

/**
 * A fresh directory named from `prefix`, a SoftHSM2 token `card` with `pin` (the PIN the commands
 * this test starts use, through GATECAST_TOKEN_PIN), the test bed, and the keys of news.
 */
export async function createNewsBed(prefix: string, card: string, pin: string): Promise<NewsBed> {
  const directory = mkdtempSync(join(tmpdir(), prefix));
  const hsm = createSoftHsm(); // sets SOFTHSM2_CONF for the commands this test starts
  hsm.initToken(card, pin);
  process.env.GATECAST_TOKEN_PIN = pin;
  const bed = createTestbed();
  const keys = join(directory, 'keys');
  const made = await runGatecast(['token', 'keys', '--out', keys, '--service', 'news']);
  assert.equal(made.code, 0, made.stderr);
  return { directory, keys, hsm, bed };
}

/**
 * Starts `gatecast send --restricted --service news` of `file` onto `group` at `rate`, keyed from
 * `keys` (as createNewsBed made them); `extra` adds options.
 */
export function sendNews(
  bed: Testbed,
  group: string,
  settings: { file: string; keys: string; rate: string; extra?: string[] },
): HostProcess {
  return sendFrom(bed, group, [
    '--file',
    settings.file,
    '--rate',
    settings.rate,
    '--restricted',
    '--service',
    'news',
    '--service-key-file',
    join(settings.keys, 'news.key'),
    '--source-key',
    join(settings.keys, 'source.pem'),
    ...(settings.extra ?? []),
  ]);
}

/**
 * Writes `secretText` to `secret`, starts a retransmit server on rt1 joined to s1 and a repair
 * server on rep (s1 to s2, --latency 100) asking it, and waits until both listen.
 */
export async function startRetransmitAndRepair(
  bed: Testbed,
  settings: { s1: string; s2: string; secret: string; secretText: string },
): Promise<void> {
  const { s1, s2, secret } = settings;
  writeFileSync(secret, settings.secretText);
  const { retransmit, repair } = startRepairPair(bed, { s1, s2, secret, mode: ['--latency', '100'] });
  await Promise.all([retransmit.waitFor(/listening on/), repair.waitFor(/listening on/)]);
}

/**
 * Starts `socat` on rt3 writing every datagram of `group` ("address:port") to `path`, once it
 * listens; stop() ends it and returns what it caught.
 */
export async function captureGroup(
  bed: Testbed,
  group: string,
  path: string,
): Promise<{ stop(): Promise<Buffer> }> {
  const [address, port] = group.split(':');
  const sniffer = bed.spawn('rt3', 'socat', [
    '-d',
    '-d',
    '-u',
    `UDP4-RECV:${port},ip-add-membership=${address}:eth0`,
    `CREATE:${path}`,
  ]);
  await sniffer.waitFor(/starting data transfer loop/);
  return {
    async stop() {
      sniffer.child.kill('SIGTERM');
      await sniffer.finished;
      return readFileSync(path);
    },
  };
}

/** Asserts a capture holds most of a stream of `plaintext` and not one 16-byte sample of it. */
export function assertNoPlaintext(wire: Buffer, plaintext: Buffer): void {
  // The capture's own socket may drop datagrams on a loaded machine: what counts is that it
  // caught most of the stream and none of it is plaintext.
  assert.ok(wire.length > plaintext.length / 2, `the capture holds ${wire.length} bytes`);
  for (let at = 0; at + 16 <= plaintext.length; at += 9_973) {
    assert.equal(wire.indexOf(plaintext.subarray(at, at + 16)), -1, `plaintext at ${at} travelled in clear`);
  }
}
