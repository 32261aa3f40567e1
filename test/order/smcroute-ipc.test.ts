/**
 * smcrouted's control protocol, checked against the installed smcroute: the requests gatecast
 * encodes are byte for byte what `smcroutectl` sends (captured on a unix socket of our own, no root
 * needed), and a real smcrouted in its own namespace (root) takes them: add (S,G) and (*,G), show,
 * remove, and its refusal of a route it does not have.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { smcrouteCommandTimeoutMs } from '../../src/limits.js';
import { createSmcrouteDriver, parseShowRoutes, smcrouteRequest } from '../../src/order/smcroute.js';
import { ProtocolEncodeError } from '../../src/protocol/errors.js';
import {
  decodeSmcrouteReply,
  encodeSmcrouteRequest,
  smcrouteHeaderBytes,
  smcrouteRequestBytesMax,
} from '../../src/protocol/smcroute-ipc.js';
import { testbedSkip } from '../helpers/testbed.js';

const smcroutectl = ['/usr/sbin/smcroutectl', '/usr/bin/smcroutectl'].find((path) => existsSync(path));

/** Skip options when smcroutectl is missing (fails instead under GATECAST_REQUIRE_PACKAGES=1). */
function smcroutectlSkip(): { skip?: string } {
  if (smcroutectl !== undefined) {
    return {};
  }
  const reason = 'needs smcroutectl (Debian package smcroute) to compare requests with';
  if (process.env.GATECAST_REQUIRE_PACKAGES === '1') {
    throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but ${reason}`);
  }
  return { skip: reason };
}

describe('smcroute control protocol: codec', () => {
  it('encodes add (S,G) as smcroute 2.5 lays it out (golden bytes)', () => {
    const request = encodeSmcrouteRequest('add', ['eth0', '10.0.0.1', '239.1.1.1', 'eth1']);
    assert.equal(smcrouteHeaderBytes, 16);
    assert.equal(
      request.toString('hex'),
      '2e00000000000000610004000000000065746830003130' +
        '2e302e302e3100' +
        '3233392e312e312e3100' +
        '6574683100' +
        '00',
    );
  });

  it('refuses empty arguments, a NUL inside one, and requests smcrouted would not read', () => {
    assert.throws(() => encodeSmcrouteRequest('remove', ['eth0', '']), ProtocolEncodeError);
    assert.throws(() => encodeSmcrouteRequest('remove', ['eth0', 'a\0b']), ProtocolEncodeError);
    assert.throws(
      () => encodeSmcrouteRequest('add', ['eth0', 'x'.repeat(smcrouteRequestBytesMax)]),
      ProtocolEncodeError,
    );
    assert.throws(
      () =>
        encodeSmcrouteRequest(
          'add',
          Array.from({ length: 36 }, () => 'e'),
        ),
      ProtocolEncodeError,
    );
  });

  it('decodes answers: empty is done, text is the message, no NUL or bytes after it are malformed', () => {
    assert.deepEqual(decodeSmcrouteReply(Buffer.from([0])), { ok: true, value: '' });
    assert.deepEqual(decodeSmcrouteReply(Buffer.from('no such route\0')), {
      ok: true,
      value: 'no such route',
    });
    assert.equal(decodeSmcrouteReply(Buffer.alloc(0)).ok, false);
    assert.equal(decodeSmcrouteReply(Buffer.from('cut short')).ok, false);
    assert.equal(decodeSmcrouteReply(Buffer.from('a\0b\0')).ok, false);
  });
});

describe(
  'smcroute control protocol: the installed smcroutectl sends the same bytes',
  smcroutectlSkip(),
  () => {
    let directory: string;
    let server: Server;
    const received: Buffer[] = [];
    let socket: string;

    before(async () => {
      directory = mkdtempSync(join(tmpdir(), 'gatecast-smcipc-'));
      socket = join(directory, 'capture.sock');
      server = createServer((connection) => {
        const chunks: Buffer[] = [];
        connection.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          const request = Buffer.concat(chunks);
          // The request is whole once it is as long as its first field says.
          if (request.length >= 8 && Number(request.readBigUInt64LE(0)) === request.length) {
            received.push(request);
            connection.end(Buffer.from([0]));
          }
        });
      });
      await new Promise<void>((resolve) => server.listen(socket, resolve));
    });
    after(async () => {
      await new Promise((resolve) => server.close(resolve));
      rmSync(directory, { recursive: true, force: true });
    });

    const cases: Array<{ argv: string[]; command: 'add' | 'remove' | 'show'; args: string[] }> = [
      {
        argv: ['add', 'eth0', '10.9.1.5', '239.1.1.1', 'eth1'],
        command: 'add',
        args: ['eth0', '10.9.1.5', '239.1.1.1', 'eth1'],
      },
      { argv: ['add', 'eth0', '239.1.1.2', 'eth1'], command: 'add', args: ['eth0', '239.1.1.2', 'eth1'] },
      {
        argv: ['remove', 'eth0', '10.9.1.5', '239.1.1.1'],
        command: 'remove',
        args: ['eth0', '10.9.1.5', '239.1.1.1'],
      },
      { argv: ['remove', 'eth0', 'ff3e::1:2'], command: 'remove', args: ['eth0', 'ff3e::1:2'] },
      { argv: ['-p', 'show', 'routes'], command: 'show', args: ['routes'] },
    ];
    for (const { argv, command, args } of cases) {
      it(`smcroutectl ${argv.join(' ')}`, async () => {
        const before = received.length;
        // Not execFileSync: this process answers smcroutectl meanwhile.
        await new Promise<void>((resolve, reject) =>
          execFile(smcroutectl as string, ['-u', socket, ...argv], { timeout: 10_000 }, (error) =>
            error === null ? resolve() : reject(error),
          ),
        );
        assert.equal(received.length, before + 1);
        assert.equal(
          (received[before] as Buffer).toString('hex'),
          encodeSmcrouteRequest(command, args).toString('hex'),
        );
      });
    }
  },
);

describe('smcroute driver: close', () => {
  it('ends at once when smcrouted took the connection and never answers (not after the command timeout)', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'gatecast-smcmute-'));
    const socket = join(directory, 'mute.sock');
    let connected!: () => void;
    const connectedOnce = new Promise<void>((resolve) => {
      connected = resolve;
    });
    const held: Socket[] = [];
    const mute = createServer((connection) => {
      held.push(connection);
      connected();
    });
    await new Promise<void>((resolve) => mute.listen(socket, resolve));
    try {
      const driver = createSmcrouteDriver({ socket, inbound: 'eth0', outbound: 'eth1' });
      const report = driver.reconcile([]);
      await connectedOnce;
      const started = performance.now();
      await driver.close();
      const tookMs = performance.now() - started;
      assert.ok(tookMs < smcrouteCommandTimeoutMs / 2, `close took ${tookMs.toFixed(0)} ms`);
      const settled = await report;
      assert.ok(settled.errors.length > 0, 'the aborted reconcile reports an error, not a success');
    } finally {
      for (const connection of held) {
        connection.destroy();
      }
      await new Promise((resolve) => mute.close(resolve));
      rmSync(directory, { recursive: true, force: true });
    }
  });
});

describe('smcroute control protocol: a real smcrouted', testbedSkip([], { smcroute: true }), () => {
  const prefix = `gi${randomBytes(2).toString('hex')}`;
  const ns = `${prefix}-r`;
  let directory: string;
  let socket: string;
  let daemon: ChildProcess | undefined;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });

  before(async () => {
    directory = mkdtempSync(join(tmpdir(), 'gatecast-smcipc-'));
    socket = join(directory, 'smcroute.sock');
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1');
    ip('-n', ns, 'addr', 'add', '10.232.1.1/24', 'dev', 'eth0');
    ip('-n', ns, 'addr', 'add', '10.232.2.1/24', 'dev', 'eth1');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'eth1', 'up');
    const conf = join(directory, 'smcroute.conf');
    writeFileSync(conf, 'phyint eth0 enable\nphyint eth1 enable\n');
    daemon = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        'smcrouted',
        '-n',
        '-N',
        '-f',
        conf,
        '-i',
        `${prefix}r`,
        '-u',
        socket,
        '-P',
        join(directory, 'pid'),
        '-l',
        'info',
      ],
      { stdio: 'ignore' },
    );
    const deadline = performance.now() + 15_000;
    while ((await smcrouteRequest(socket, 'show', ['routes'])).ok === false) {
      assert(performance.now() < deadline, 'smcrouted did not answer within 15 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  });
  after(async () => {
    if (daemon !== undefined && daemon.exitCode === null) {
      const exited = new Promise((resolve) => daemon?.once('exit', resolve));
      daemon.kill('SIGTERM');
      await exited;
    }
    try {
      ip('netns', 'delete', ns);
    } catch {
      // already gone
    }
    rmSync(directory, { recursive: true, force: true });
  });

  it('adds (S,G) and (*,G) routes, shows them as smcroutectl does, and removes them', async () => {
    assert.deepEqual(await smcrouteRequest(socket, 'add', ['eth0', '10.232.1.10', '239.5.1.1', 'eth1']), {
      ok: true,
      output: '',
    });
    assert.deepEqual(await smcrouteRequest(socket, 'add', ['eth0', '239.5.1.2', 'eth1']), {
      ok: true,
      output: '',
    });
    const shown = await smcrouteRequest(socket, 'show', ['routes']);
    assert.equal(shown.ok, true);
    const routes = parseShowRoutes(shown.output);
    assert.deepEqual(
      routes
        .map((route) => `${route.source ?? '*'},${route.group} ${route.inbound}>${route.outbound.join(' ')}`)
        .sort(),
      ['*,239.5.1.2 eth0>eth1', '10.232.1.10,239.5.1.1 eth0>eth1'],
    );
    // What smcroutectl prints of the same table agrees.
    const printed = execFileSync('smcroutectl', ['-u', socket, '-p', 'show', 'routes'], { encoding: 'utf8' });
    assert.deepEqual(parseShowRoutes(printed), routes);
    // The kernel forwards the (S,G) route.
    assert.match(
      execFileSync('ip', ['-n', ns, 'mroute', 'show'], { encoding: 'utf8' }),
      /10\.232\.1\.10,239\.5\.1\.1/,
    );
    assert.deepEqual(await smcrouteRequest(socket, 'remove', ['eth0', '10.232.1.10', '239.5.1.1']), {
      ok: true,
      output: '',
    });
    assert.deepEqual(await smcrouteRequest(socket, 'remove', ['eth0', '239.5.1.2']), {
      ok: true,
      output: '',
    });
    const after = await smcrouteRequest(socket, 'show', ['routes']);
    assert.deepEqual(parseShowRoutes(after.output), []);
  });

  it('answers with its error when a route to remove is not there; an unreachable socket is not done', async () => {
    const missing = await smcrouteRequest(socket, 'remove', ['eth0', '10.232.1.99', '239.5.1.9']);
    assert.equal(missing.ok, false);
    assert.notEqual(missing.output, '');
    const nowhere = await smcrouteRequest(join(directory, 'nothing.sock'), 'show', ['routes']);
    assert.equal(nowhere.ok, false);
    assert.match(nowhere.output, /ENOENT/);
  });

  it('carries a table of 300 routes in one answer', async () => {
    for (let i = 0; i < 300; i++) {
      const added = await smcrouteRequest(socket, 'add', [
        'eth0',
        '10.232.1.10',
        `239.6.${i >> 8}.${i & 255}`,
        'eth1',
      ]);
      assert.equal(added.ok, true, added.output);
    }
    const shown = await smcrouteRequest(socket, 'show', ['routes']);
    assert.equal(shown.ok, true);
    assert.equal(
      parseShowRoutes(shown.output).filter((route) => route.group.startsWith('239.6.')).length,
      300,
    );
  });
});
