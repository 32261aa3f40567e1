import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { receiveBufferBytesDefault, socketBufferBytesMax } from '../../src/limits.js';
import { type Endpoint, parseGroup } from '../../src/net/address.js';
import { SocketError } from '../../src/net/errors.js';
import {
  openControlSocket,
  openReceiverSocket,
  openSenderSocket,
  setSocketBufferBytes,
  socketBufferReport,
} from '../../src/net/udp.js';
import { runGatecast } from '../helpers/cli.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { gatecastBin } from '../helpers/testbed.js';
import { waitUntil } from '../helpers/wait.js';

/** net.core.rmem_max / wmem_max, or undefined off Linux. */
function cap(name: 'rmem_max' | 'wmem_max'): number | undefined {
  try {
    return Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8').trim());
  } catch {
    return undefined;
  }
}

/** A control socket on loopback, on a port the kernel picks. */
const anyLoopbackPort: Endpoint = { address: '127.0.0.1', port: 0, family: 4 };

/** What Linux grants for a request (socket(7): capped at the sysctl, then doubled). */
const linuxGrant = (asked: number, sysctl: number) => 2 * Math.min(asked, sysctl);

describe('socket buffers: the size asked is applied to every socket and what the kernel granted is reported', () => {
  after(() => setSocketBufferBytes(receiveBufferBytesDefault));

  it('receiver, sender and control sockets ask for the set size; the report holds the kernel figures', async () => {
    const rmem = cap('rmem_max');
    const wmem = cap('wmem_max');
    const asked = 256 * 1024;
    setSocketBufferBytes(asked);
    const group = parseGroup(`239.255.64.1:${freshPort()}`, 'g');
    const opened: Array<{ close(): Promise<void> }> = [];
    try {
      const receiver = await openReceiverSocket({ group, iface: loopbackIface }, () => undefined);
      opened.push(receiver);
      opened.push(await openSenderSocket({ group, iface: loopbackIface }));
      opened.push(await openControlSocket(anyLoopbackPort, () => undefined));
      const report = socketBufferReport().slice(-4);
      assert.deepEqual(
        report.map((grant) => [grant.kind, grant.askedBytes]),
        [
          ['receive', asked],
          ['send', asked],
          ['receive', asked],
          ['send', asked],
        ],
      );
      assert.match(report[0]?.socket ?? '', /^receive 239\.255\.64\.1:\d+$/);
      assert.equal(report[0]?.grantedBytes, receiver.receiveBufferBytes, 'the figure the socket reports');
      if (rmem !== undefined && wmem !== undefined) {
        for (const grant of report) {
          const sysctl: number = grant.kind === 'receive' ? rmem : wmem;
          assert.equal(grant.grantedBytes, linuxGrant(asked, sysctl), JSON.stringify(grant));
          assert.equal(grant.capBytes, sysctl);
          assert.equal(grant.capped, asked > sysctl);
        }
      }
    } finally {
      await Promise.all(opened.map((socket) => socket.close()));
    }
  });

  it('a request above net.core.rmem_max is reported capped, with what was granted', async (t) => {
    const rmem = cap('rmem_max');
    if (rmem === undefined || rmem * 2 > socketBufferBytesMax) {
      t.skip('net.core.rmem_max is not readable or too large to exceed here');
      return;
    }
    setSocketBufferBytes(rmem * 2);
    const control = await openControlSocket(anyLoopbackPort, () => undefined);
    try {
      const grant = socketBufferReport().find((g) => g.kind === 'receive' && g.askedBytes === rmem * 2);
      assert.ok(grant !== undefined);
      assert.equal(grant.capped, true);
      assert.equal(grant.grantedBytes, 2 * rmem, 'the kernel gives the cap (doubled), not the request');
    } finally {
      await control.close();
    }
  });

  it('a size out of range is refused with a clear error and changes nothing', () => {
    setSocketBufferBytes(receiveBufferBytesDefault);
    for (const bytes of [0, 1000, socketBufferBytesMax + 1, 1.5 * 1024 * 1024 + 0.5]) {
      assert.throws(() => setSocketBufferBytes(bytes), SocketError);
    }
  });
});

describe('--socket-buffer on the command line', () => {
  it('is refused with the option named when it is not a size or out of range (exit 2, one line)', async () => {
    for (const [value, message] of [
      ['10', /--socket-buffer: 10 is out of range \(64K-1G\)/],
      ['2G', /--socket-buffer: 2G is out of range/],
      ['8MB', /--socket-buffer: "8MB" is not a size in bytes/],
    ] as const) {
      for (const command of ['send', 'receive', 'retransmit', 'repair', 'agent']) {
        const result = await runGatecast([command, '--socket-buffer', value]);
        assert.equal(result.code, 2, `${command}: ${result.stderr}`);
        assert.match(result.stderr, message);
        assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
      }
    }
  });

  it('receive applies it and reports the grant on its line and in its --json summary', async () => {
    const port = freshPort();
    const result = await runGatecast([
      'receive',
      '--group',
      `239.255.64.2:${port}`,
      '--iface',
      loopbackIface,
      '--socket-buffer',
      '512K',
      '--timeout',
      '0.2',
      '--out',
      '/dev/null',
      '--json',
    ]);
    assert.equal(result.code, 1, 'no session came: not whole');
    assert.match(
      result.stderr,
      /receive: socket buffers: receive asked 512 KiB, granted [\d.]+ [KM]iB on 1 socket/,
    );
    const summary = JSON.parse(result.stderr.trim().split('\n').pop() ?? '{}') as {
      socketBuffers: Array<{ kind: string; askedBytes: number; grantedBytes: number }>;
    };
    assert.deepEqual(
      summary.socketBuffers.map((grant) => [grant.kind, grant.askedBytes]),
      [['receive', 512 * 1024]],
    );
    const rmem = cap('rmem_max');
    if (rmem !== undefined) {
      assert.equal(summary.socketBuffers[0]?.grantedBytes, linuxGrant(512 * 1024, rmem));
    }
  });

  it("a server's GET /status lists what its sockets were granted", async () => {
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-socket-buffer-'));
    const secret = join(directory, 'secret');
    writeFileSync(secret, 'socket buffer test secret, local\n');
    const statusPort = freshPort();
    const child = spawn(
      process.execPath,
      [
        gatecastBin(),
        'retransmit',
        '--listen',
        `127.0.0.1:${freshPort()}`,
        '--secret-file',
        secret,
        '--socket-buffer',
        '128K',
        '--status',
        `127.0.0.1:${statusPort}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    try {
      await waitUntil(
        'the socket buffer line of gatecast retransmit',
        () => /retransmit: socket buffers: receive asked 128 KiB/.test(stderr),
        20_000,
      );
      const status = (await (await fetch(`http://127.0.0.1:${statusPort}/status`)).json()) as {
        socketBuffers: Array<{ kind: string; socket: string; askedBytes: number }>;
      };
      const control = status.socketBuffers.filter((grant) => grant.socket.startsWith('control '));
      assert.deepEqual(
        control.map((grant) => [grant.kind, grant.askedBytes]),
        [
          ['receive', 128 * 1024],
          ['send', 128 * 1024],
        ],
      );
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
      rmSync(directory, { recursive: true, force: true });
    }
  });
});
