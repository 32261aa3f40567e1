/**
 * Truthful exits (issue 9, item 9): each case is an input that once gave a wrong exit code, a
 * stack, a hang or a silent loss, run through the command line as a user would.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runGatecast as run, spawnUntilReady, startReceive } from '../helpers/cli.js';
import { freshPort } from '../helpers/loopback.js';
import { gatecastBin } from '../helpers/testbed.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-exits-'));
after(() => rmSync(directory, { recursive: true, force: true }));

/** A group of this test run: 239.255.62.X, X from the process id, and a fresh port. */
const testGroup = () => ({ address: `239.255.62.${(process.pid % 250) + 1}`, port: freshPort() });

/** Why a test that changes the host's firewall or routes cannot run here, or undefined. */
function rootSkip(command: string): string | false {
  if (process.getuid?.() !== 0) {
    return 'needs root';
  }
  try {
    execFileSync('sh', ['-c', `command -v ${command}`]);
    return false;
  } catch {
    return `needs ${command}`;
  }
}

const noStack = (text: string) => assert.doesNotMatch(text, /\n\s+at .*:\d+/);

describe('send exits non-zero when datagrams did not leave (it exited 0 with "108 send errors")', () => {
  it('a local nftables output drop (EPERM): exit 1, the count and the code', {
    skip: rootSkip('nft'),
  }, async () => {
    const group = testGroup();
    const table = `gatecast_exits_${process.pid}`;
    const nft = (...args: string[]) => execFileSync('nft', args);
    nft('add', 'table', 'inet', table);
    try {
      nft('add', 'chain', 'inet', table, 'out', '{ type filter hook output priority 0; }');
      nft(
        'add',
        'rule',
        'inet',
        table,
        'out',
        'ip',
        'daddr',
        group.address,
        'udp',
        'dport',
        String(group.port),
        'drop',
      );
      const result = await run([
        'send',
        '--group',
        `${group.address}:${group.port}`,
        '--iface',
        '127.0.0.1',
        '--ticker',
        '--ticks',
        '20',
        '--ticks-per-second',
        '200',
      ]);
      assert.equal(result.code, 1, result.stderr);
      assert.match(
        result.stderr,
        /send: datagrams are not leaving: EPERM \(a local firewall refuses the datagrams\)/,
      );
      assert.match(
        result.stderr,
        /NOT SENT session "gatecast" .*: (\d+) of \1 datagrams did not leave \(EPERM x\1\)/,
      );
      noStack(result.stderr);
    } finally {
      nft('delete', 'table', 'inet', table);
    }
  });
});

describe('receive with no interface to join on (it failed with a bare "addMembership ENODEV")', () => {
  it('one line naming --group, --iface and the code, exit 2', { skip: rootSkip('unshare') }, async () => {
    // A network namespace of its own has no routes at all: no multicast route picks an interface.
    const child = spawn('unshare', [
      '--net',
      process.execPath,
      gatecastBin(),
      'receive',
      '--group',
      '239.255.62.1:5000',
      '--timeout',
      '5',
    ]);
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 2, stderr);
    assert.match(
      stderr,
      /^gatecast receive: --group 239\.255\.62\.1: cannot join with no --iface: ENODEV \(.*name one with --iface\)/,
    );
    assert.equal(stderr.trim().split('\n').length, 1, stderr);
    noStack(stderr);
  });
});

describe('send with no route to the group (it printed an internal-error stack, then hung)', () => {
  it('one line naming the error, exit 2, no hang', { skip: rootSkip('ip') }, async () => {
    const group = testGroup();
    const route = ['route', 'add', 'unreachable', `${group.address}/32`];
    execFileSync('ip', route);
    try {
      for (const input of [['--ticker'], ['--stdin']]) {
        const startedMs = performance.now();
        const result = await run(['send', '--group', `${group.address}:${group.port}`, ...input]);
        assert.equal(result.code, 2, result.stderr);
        assert.match(
          result.stderr,
          /^gatecast send: connect 239\.255\.62\.\d+:\d+: E(HOST|NET)UNREACH \(no route to the group/,
        );
        assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
        assert.ok(performance.now() - startedMs < 20_000, 'no hang');
      }
    } finally {
      execFileSync('ip', ['route', 'del', 'unreachable', `${group.address}/32`]);
    }
  });
});

describe('receive | head -c 100 (it died with an EPIPE stack)', () => {
  it('ends quietly with exit 0 once its reader is gone; the bytes it wrote are the session, in order', async () => {
    const group = testGroup();
    const endpoint = `${group.address}:${group.port}`;
    const file = join(directory, 'epipe.bin');
    const bytes = randomBytes(300_000);
    writeFileSync(file, bytes);
    const head = join(directory, 'head.out');
    const shell = await spawnUntilReady(
      'bash',
      [
        '-c',
        `set -o pipefail; "${process.execPath}" "${gatecastBin()}" receive --group ${endpoint} --iface 127.0.0.1 --timeout 10 | head -c 100 > "${head}"`,
      ],
      /joined/,
      'receive joined',
    );
    const sent = await run([
      'send',
      '--group',
      endpoint,
      '--iface',
      '127.0.0.1',
      '--file',
      file,
      '--rate',
      '50M',
    ]);
    assert.equal(sent.code, 0, sent.stderr);
    assert.equal(await shell.exited, 0, shell.stderr());
    assert.match(
      shell.stderr(),
      /stopped: standard output closed by its reader after .* of session "epipe\.bin", written in order/,
    );
    noStack(shell.stderr());
    assert.deepEqual(readFileSync(head), bytes.subarray(0, 100));
  });
});

describe('receive into an output that fails (a full disk) stops with one line, not a stack', () => {
  it('--out /dev/full: exit 2 naming --out and ENOSPC', {
    skip: process.platform !== 'linux' ? 'needs /dev/full' : false,
  }, async () => {
    const group = testGroup();
    const endpoint = `${group.address}:${group.port}`;
    const receive = await startReceive([
      '--group',
      endpoint,
      '--iface',
      '127.0.0.1',
      '--out',
      '/dev/full',
      '--timeout',
      '10',
    ]);
    const sent = await run(['send', '--group', endpoint, '--iface', '127.0.0.1', '--ticker', '--ticks', '5']);
    assert.equal(sent.code, 0, sent.stderr);
    assert.equal(await receive.exited, 2, receive.stderr());
    assert.match(receive.stderr(), /gatecast receive: --out: cannot write \/dev\/full: ENOSPC after 0 bytes/);
    noStack(receive.stderr());
  });
});

describe('a relay passes zero-length datagrams on (they vanished uncounted)', () => {
  it('relays them as empty packets and says so in the summary', async () => {
    const group = testGroup();
    const endpoint = `${group.address}:${group.port}`;
    const relayPort = freshPort();
    const output = join(directory, 'relayed.out');
    const receive = await startReceive([
      '--group',
      endpoint,
      '--iface',
      '127.0.0.1',
      '--out',
      output,
      '--timeout',
      '10',
      '--json',
    ]);
    const sender = await spawnUntilReady(
      process.execPath,
      [
        gatecastBin(),
        'send',
        '--group',
        endpoint,
        '--iface',
        '127.0.0.1',
        '--relay',
        `127.0.0.1:${relayPort}`,
        '--duration',
        '1',
      ],
      /send: relaying/,
      'send relaying',
    );
    const client = createSocket('udp4');
    for (const datagram of [Buffer.from('one'), Buffer.alloc(0), Buffer.from('two'), Buffer.alloc(0)]) {
      await new Promise((resolve) => client.send(datagram, relayPort, '127.0.0.1', resolve));
    }
    client.close();
    assert.equal(await sender.exited, 0, sender.stderr());
    assert.match(
      sender.stderr(),
      /sent session "gatecast" .*: 4 packets, 6 B .*, 2 of them empty \(relayed zero-length datagrams\)/,
    );
    assert.equal(await receive.exited, 0, receive.stderr());
    const summary = JSON.parse(receive.stderr().trim().split('\n').pop() ?? '{}') as {
      packetsDelivered: number;
    };
    assert.equal(summary.packetsDelivered, 4);
    assert.equal(readFileSync(output, 'latin1'), 'onetwo');
  });
});

/** An up interface with the multicast flag and an IPv6 address, for a link-local group. */
function ipv6MulticastInterface(): string | undefined {
  for (const [name, addresses] of Object.entries(networkInterfaces())) {
    try {
      const flags = Number(readFileSync(`/sys/class/net/${name}/flags`, 'utf8'));
      if ((flags & 0x1001) === 0x1001 && (addresses ?? []).some((entry) => entry.family === 'IPv6')) {
        return name;
      }
    } catch {
      // not Linux
    }
  }
  return undefined;
}

describe('a link-local group takes its scope from --iface (receive [ff02::1234]:5000 --iface eth0: bind EINVAL)', () => {
  const iface = ipv6MulticastInterface();
  it('receives a session sent to ff02::1234 on the named interface', {
    skip: iface === undefined ? 'no interface with IPv6 multicast' : false,
  }, async () => {
    const endpoint = `[ff02::1234]:${freshPort()}`;
    const output = join(directory, 'scoped.out');
    const receive = await startReceive([
      '--group',
      endpoint,
      '--iface',
      String(iface),
      '--out',
      output,
      '--timeout',
      '10',
    ]);
    const sent = await run([
      'send',
      '--group',
      endpoint,
      '--iface',
      String(iface),
      '--ttl',
      '1',
      '--ticker',
      '--ticks',
      '5',
    ]);
    assert.equal(sent.code, 0, sent.stderr);
    assert.equal(await receive.exited, 0, receive.stderr());
    assert.match(receive.stderr(), /received session "gatecast" whole: 5 packets/);
    assert.equal(readFileSync(output, 'latin1').trim().split('\n').length, 5);
  });
});

/** Sends a file of `size` random bytes named `name` to a fresh group over loopback, with `options`. */
function sendFile(name: string, size: number, options: string[]) {
  const group = testGroup();
  const file = join(directory, name);
  writeFileSync(file, randomBytes(size));
  return run([
    'send',
    '--group',
    `${group.address}:${group.port}`,
    '--iface',
    '127.0.0.1',
    '--file',
    file,
    ...options,
  ]);
}

describe('send --file stopped by --duration before its end (it exited 0 "sent session")', () => {
  it('exit 1, INCOMPLETE with the bytes sent of the file', async () => {
    // 2 MB at 1 Mbit/s takes 16 s: a 1 s duration stops it a long way before its end.
    const result = await sendFile('cut.bin', 2_000_000, ['--rate', '1M', '--duration', '1']);
    assert.equal(result.code, 1, result.stderr);
    assert.match(
      result.stderr,
      /INCOMPLETE session "cut\.bin" .*: stopped after [\d.]+ kB of the file's 2\.0 MB/,
    );
    assert.doesNotMatch(result.stderr, /^sent session/m);
    noStack(result.stderr);
  });

  it('a file sent to its end within --duration exits 0 "sent session"', async () => {
    const result = await sendFile('small.bin', 10_000, ['--duration', '20']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /sent session "small\.bin" .*: 8 packets, 10\.0 kB/);
  });
});
