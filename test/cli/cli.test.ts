import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runGatecast as run, startReceive } from '../helpers/cli.js';
import { gatecastBin } from '../helpers/testbed.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-cli-'));
after(() => rmSync(directory, { recursive: true, force: true }));

/** `stb order` against a server nobody runs: only a refusal before any request exits 2 naming the option. */
const stbOrder = (every: string) => [
  'stb',
  'order',
  '--service',
  'news',
  '--server',
  'http://127.0.0.1:59998',
  '--token',
  'a-box-token',
  '--renew-every',
  every,
];

/** `repair` of `join` emitting on `emit`, listening on 127.0.0.1:7000, reliable, then `extra`. */
const repairArgs = (join: string, emit: string, ...extra: string[]) => [
  'repair',
  '--join',
  join,
  '--emit',
  emit,
  '--listen',
  '127.0.0.1:7000',
  '--reliable',
  ...extra,
];

/** `repair --controller` selling from the S2 `pool`, listening on `listen`, reliable, then `extra`. */
const controllerArgs = (pool: string, listen: string, ...extra: string[]) => [
  'repair',
  '--controller',
  '127.0.0.1:8090',
  '--subscription',
  'http://127.0.0.1:8080',
  '--s2-pool',
  pool,
  '--listen',
  listen,
  '--reliable',
  ...extra,
];

describe('bad input: one clear line naming the value, exit code 2, no stack trace', () => {
  const badConfig = join(directory, 'bad.json');
  writeFileSync(badConfig, '{"group": "239.1.1.1:5000", "colour": "blue"}');
  const brokenConfig = join(directory, 'broken.json');
  writeFileSync(brokenConfig, '{"group": ');
  const fifoConfig = join(directory, 'config.fifo');
  execFileSync('mkfifo', [fifoConfig]);
  const hugeConfig = join(directory, 'huge.json');
  writeFileSync(hugeConfig, `{"session": "${'x'.repeat(2 * 1024 * 1024)}"}`);
  const tokenFile = join(directory, 'source.token');
  writeFileSync(tokenFile, 'gct_a_source_token_for_the_cli_test\n');
  const cases: Array<[string, string[], RegExp]> = [
    [
      'a group that is not multicast',
      ['send', '--group', '10.1.2.3:5000', '--ticker'],
      /--group: 10\.1\.2\.3 is not a multicast group/,
    ],
    ['a port out of range', ['receive', '--group', '239.1.1.1:65536'], /--group: port 65536 is out of range/],
    [
      'an unknown interface',
      ['send', '--group', '239.1.1.1:5000', '--iface', 'nosuch9', '--ticker'],
      /unknown interface "nosuch9"/,
    ],
    [
      'a missing file',
      ['send', '--group', '239.1.1.1:5000', '--file', '/nonexistent/x'],
      /--file: cannot read \/nonexistent\/x/,
    ],
    [
      'an unreadable config',
      ['send', '--config', '/nonexistent.json'],
      /config \/nonexistent\.json: cannot read: ENOENT/,
    ],
    [
      'a config with an unknown field',
      ['send', '--config', badConfig],
      /config .*bad\.json:1:29: field "colour" is not an option/,
    ],
    [
      'a config that is not JSON',
      ['send', '--config', brokenConfig],
      /config .*broken\.json: not valid JSON/,
    ],
    // A --config that is not a regular file of bounded size hung the command (a FIFO waits for a
    // writer, /dev/zero never ends): it is refused before a byte is read, like the secret files.
    [
      'a config on a FIFO',
      ['serve', '--config', fifoConfig],
      /config .*config\.fifo: .* is not a regular file/,
    ],
    [
      'a config on /dev/zero',
      ['send', '--config', '/dev/zero'],
      /config \/dev\/zero: \/dev\/zero is not a regular file/,
    ],
    [
      'a config on /dev/stdin',
      ['receive', '--config', '/dev/stdin'],
      // Standard input here is a socket, which the system will not open by path (ENXIO).
      /config \/dev\/stdin: (.* is not a regular file|cannot read: ENXIO)$/m,
    ],
    ['a config that is a directory', ['send', '--config', directory], /config .*: .* is not a regular file/],
    [
      'a config larger than configFileBytesMax',
      ['send', '--config', hugeConfig],
      /config .*huge\.json: .* more than the 1048576 allowed/,
    ],
    ['an unknown option', ['send', '--colour'], /Unknown option '--colour'/],
    [
      'buying repair without a subscription server',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--buy-repair'],
      /--buy-repair and --source-address need --subscription URL/,
    ],
    [
      'a subscription server nobody runs',
      [
        'send',
        '--group',
        '239.1.1.1:5000',
        '--ticker',
        '--ticks',
        '1',
        '--subscription',
        'http://127.0.0.1:59998',
        '--token-file',
        tokenFile,
      ],
      /the subscription server at http:\/\/127\.0\.0\.1:59998 cannot be reached: ECONNREFUSED/,
    ],
    [
      'a repair controller with a zero lease',
      controllerArgs('239.1.1.1:5000', '127.0.0.1:7000', '--lease', '0', '--token-file', tokenFile),
      /--lease: 0 is shorter than 1 second/,
    ],
    [
      'a controller journal that cannot be written',
      controllerArgs(
        '239.1.1.1:5000',
        '127.0.0.1:7000',
        '--token-file',
        tokenFile,
        '--secret-file',
        tokenFile,
        '--journal',
        `${tokenFile}/usage.journal`,
      ),
      /--journal: cannot create the folder of .*source\.token\/usage\.journal: (EEXIST|ENOTDIR)/,
    ],
    [
      'an agent with both --map and --controller',
      ['agent', '--watch', '--map', '239.1.1.1:1=239.1.1.2:1', '--controller', 'http://127.0.0.1:1'],
      /--watch needs one of --map S1=S2,\.\.\. or --controller URL --sessions S1,\.\.\./,
    ],
    [
      'two inputs',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--stdin'],
      /choose one input, not --stdin and --ticker/,
    ],
    [
      'no input',
      ['send', '--group', '239.1.1.1:5000'],
      /one of --file, --stdin, --ticker or --relay is required/,
    ],
    [
      'a bad rate',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--rate', 'fast'],
      /--rate: "fast" is not a rate/,
    ],
    ['IPv6 without brackets', ['send', '--group', 'ff3e::1:5000', '--ticker'], /write IPv6 as \[ADDR\]:PORT/],
    [
      'send --duration 0 (it sent nothing and exited 0)',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--duration', '0'],
      /--duration: 0 s is less than the 0\.001 s it takes at least/,
    ],
    [
      'receive --timeout 0 (it timed out at once)',
      ['receive', '--group', '239.1.1.1:5000', '--timeout', '0'],
      /--timeout: 0 s is less than the 0\.001 s it takes at least/,
    ],
    [
      'retransmit --buffer-age 0 (it kept nothing to serve)',
      ['retransmit', '--join', '239.1.1.1:5000', '--listen', '127.0.0.1:7000', '--buffer-age', '0'],
      /--buffer-age: 0 s is less than the 0\.1 s it takes at least/,
    ],
    [
      'retransmit --period 0 (a timer that spins)',
      ['retransmit', '--join', '239.1.1.1:5000', '--listen', '127.0.0.1:7000', '--period', '0'],
      /--period: 0 s is less than the 0\.01 s it takes at least/,
    ],
    [
      'retransmit --join with one group twice (two sockets buffered every packet twice, and a SETUP leave left one)',
      ['retransmit', '--join', '239.1.1.1:5000,239.1.1.1:5000', '--listen', '127.0.0.1:7000'],
      /--join: 239\.1\.1\.1:5000 is given twice/,
    ],
    [
      'retransmit --election-loss 101 without --peer (it was checked only with one)',
      ['retransmit', '--join', '239.1.1.1:5000', '--listen', '127.0.0.1:7000', '--election-loss', '101'],
      /--election-loss: 101 is out of range \(0-100\)/,
    ],
    [
      'a rate of 0 (it sent unpaced)',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--rate', '0'],
      /--rate: 0 is not a rate; for no pacing write --rate unlimited/,
    ],
    [
      'a packet size whose REPAIR would not fit (65416 crashed every retransmit server)',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--packet-size', '65416'],
      /--packet-size: 65416 is above the maximum of \d+ bytes \(a REPAIR must carry the whole DATA packet\)/,
    ],
    [
      'a packet size below the minimum names the whole range (it named 2^53 as the maximum)',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--packet-size', '15'],
      /--packet-size: 15 is below the minimum of 16 bytes \(the range is 16-\d{5}\)/,
    ],
    [
      'a ticker whose packets are smaller than a quote (each quote was cut, and taken as whole)',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--packet-size', '79'],
      /--packet-size: 79 bytes is less than a ticker quote may take \(80\): give at least 80 with --ticker/,
    ],
    [
      'send: an IPv6 group with an IPv4 interface address',
      ['send', '--group', '[ff3e::1]:5000', '--iface', '127.0.0.1', '--ticker'],
      /--iface: 127\.0\.0\.1 is an IPv4 address but --group \[ff3e::1\]:5000 is IPv6/,
    ],
    [
      'receive: an IPv4 group with an IPv6 interface address',
      ['receive', '--group', '239.1.1.1:5000', '--iface', '::1'],
      /--iface: ::1 is an IPv6 address but --group 239\.1\.1\.1:5000 is IPv4/,
    ],
    [
      'receive: an IPv4 group with an IPv6 source',
      ['receive', '--group', '239.1.1.1:5000', '--source', 'fd00::1'],
      /--source: fd00::1 is an IPv6 address but --group 239\.1\.1\.1:5000 is IPv4/,
    ],
    [
      'retransmit: an IPv6 group with an IPv4 interface address',
      ['retransmit', '--join', '[ff3e::1]:5000', '--iface', '127.0.0.1', '--listen', '127.0.0.1:7000'],
      /--iface: 127\.0\.0\.1 is an IPv4 address but --join \[ff3e::1\]:5000 is IPv6/,
    ],
    [
      'repair: an IPv6 emit group with an IPv4 emit interface',
      repairArgs('239.1.1.1:5000', '[ff3e::2]:5000', '--emit-iface', '127.0.0.1'),
      /--emit-iface: 127\.0\.0\.1 is an IPv4 address but --emit \[ff3e::2\]:5000 is IPv6/,
    ],
    [
      'agent: an IPv6 group with an IPv4 interface address',
      ['agent', '--from', '[ff3e::1]:5000', '--from-iface', '127.0.0.1', '--deliver', '[ff3e::2]:5000'],
      /--from-iface: 127\.0\.0\.1 is an IPv4 address but --from \[ff3e::1\]:5000 is IPv6/,
    ],
    [
      'receive: a link-local group without an interface (bind EINVAL)',
      ['receive', '--group', '[ff02::1234]:5000'],
      /--group: ff02::1234 is a link-local group \(scope 2\): name the link with --iface NAME/,
    ],
    [
      'send: a scoped group without an interface',
      ['send', '--group', '[ff12::1]:5000', '--ticker'],
      /--group: ff12::1 is a link-local group \(scope 2\): name the link with --iface NAME/,
    ],
    [
      'retransmit: a link-local group without an interface',
      ['retransmit', '--join', '[ff02::1]:5000', '--listen', '127.0.0.1:7000'],
      /--join: ff02::1 is a link-local group \(scope 2\): name the link with --iface NAME/,
    ],
    [
      'repair: a link-local group without an interface',
      repairArgs('[ff02::1]:5000', '[ff3e::2]:5000'),
      /--join: ff02::1 is a link-local group \(scope 2\): name the link with --iface NAME/,
    ],
    [
      'agent: a link-local group without an interface',
      ['agent', '--from', '[ff02::1]:5000', '--deliver', '[ff3e::2]:5000'],
      /--from: ff02::1 is a link-local group \(scope 2\): name the link with --from-iface NAME/,
    ],
    [
      'a zone written into the group',
      ['receive', '--group', '[ff02::1%eth0]:5000'],
      /--group: "ff02::1%eth0": give the interface with its own option/,
    ],
    [
      'send: --adapt-rate without the endpoint where FEEDBACK arrives',
      ['send', '--group', '239.1.1.1:5000', '--file', 'README.md', '--adapt-rate'],
      /--adapt-rate needs --retransmit-listen ADDR:PORT: repair servers send their FEEDBACK there/,
    ],
    [
      'send: --rate-floor with a fixed rate',
      ['send', '--group', '239.1.1.1:5000', '--ticker', '--rate-floor', '1M'],
      /--rate-floor needs an adaptive rate/,
    ],
    // A box renewing every 0 s asked the order server in a loop without pause, and a bad
    // --renew-every was noticed only after the order was placed: refused before any request.
    [
      'stb: renewing every 0 seconds',
      stbOrder('0'),
      /^gatecast stb: --renew-every: 0 is shorter than 1 second$/m,
    ],
    [
      'stb: renewing less often than a timer can wait',
      stbOrder('99999999999'),
      /--renew-every: 99999999999 s is more than the 2147483 s a timer can wait/,
    ],
    ['stb: renewing every "soon"', stbOrder('soon'), /--renew-every: "soon" is not a number of seconds/],
  ];
  for (const [name, args, message] of cases) {
    it(name, async () => {
      const result = await run(args);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, message);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
      assert.doesNotMatch(result.stderr, /at .*\.ts:\d+/);
    });
  }

  it('demo: a --port whose 8 ports go past 65535 is refused before anything starts', async () => {
    const result = await run(['demo', '--port', '65529', '--file-size', '1000', '--ticks', '1']);
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /--port: 65529 is out of range \(1-65528\)/);
    assert.equal(result.stdout, '', 'no part of the demo ran');
  });

  it('repair --controller: a --listen port that leaves no port for the last module of the pool', async () => {
    const result = await run(
      controllerArgs(
        '239.1.1.1:5000/4',
        '127.0.0.1:65533',
        '--token-file',
        tokenFile,
        '--secret-file',
        tokenFile,
      ),
    );
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /--listen: port 65533 leaves no room for 4 S2 modules .* up to 65532, or 0/);
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
  });

  it('a name of Object’s (constructor, __proto__, toString) is an unknown command, subcommand or action', async () => {
    for (const name of ['constructor', '__proto__', 'toString']) {
      const token = await run(['token', name, '--help']);
      assert.equal(token.code, 2, `token ${name} --help: ${token.stdout}`);
      assert.match(token.stderr, new RegExp(`unknown subcommand "${name}"`));
      const command = await run([name, '--help']);
      assert.equal(command.code, 2, `${name} --help: ${command.stdout}`);
      assert.match(command.stderr, new RegExp(`unknown command "${name}"`));
    }
    const stb = await run([
      'stb',
      'constructor',
      '--server',
      'http://127.0.0.1:1',
      '--token',
      'gct_a_box_token',
    ]);
    assert.equal(stb.code, 2);
    assert.match(stb.stderr, /unknown action "constructor"/);
  });

  it('an unknown command lists the commands', async () => {
    const result = await run(['sned']);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /unknown command "sned"[\s\S]*send +multicast/);
  });
});

describe('help and version', () => {
  it("prints each command's options", async () => {
    const send = await run(['send', '--help']);
    assert.equal(send.code, 0);
    assert.match(send.stdout, /--relay ADDR:PORT/);
    const receive = await run(['receive', '--help']);
    assert.match(receive.stdout, /exits 1 and says how many packets are missing/);
    const version = await run(['version']);
    assert.match(version.stdout, /^gatecast \d+\.\d+\.\d+/);
  });
});

describe('send --stdin to receive over loopback, through the command line', () => {
  it('delivers standard input byte for byte', async () => {
    const { spawn } = await import('node:child_process');
    const { randomBytes, createHash } = await import('node:crypto');
    const group = `239.255.60.1:${41_000 + (process.pid % 1000) * 2}`;
    const output = join(directory, 'stdin-out.bin');
    const receiver = await startReceive([
      '--group',
      group,
      '--iface',
      '127.0.0.1',
      '--out',
      output,
      '--timeout',
      '10',
    ]);
    const bytes = randomBytes(300_000);
    const sender = spawn(process.execPath, [
      gatecastBin(),
      'send',
      '--group',
      group,
      '--iface',
      '127.0.0.1',
      '--stdin',
      '--rate',
      '50M',
    ]);
    sender.stdin.end(bytes);
    const senderCode = await new Promise((resolve) => sender.on('close', resolve));
    const receiverCode = await receiver.exited;
    assert.equal(senderCode, 0);
    assert.equal(receiverCode, 0, receiver.stderr());
    const { readFileSync } = await import('node:fs');
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    assert.equal(sha(readFileSync(output)), sha(bytes));
    assert.match(receiver.stderr(), /received session "gatecast" whole/);
  });
});

describe('the servers refuse bad configuration with one line', () => {
  const secret = join(directory, 'short-secret');
  writeFileSync(secret, 'short\n');
  const strongSecret = join(directory, 'strong-secret');
  writeFileSync(strongSecret, 'a secret of the cli tests, long enough\n');
  const cases: Array<[string, string[], RegExp]> = [
    ['no secret', repairArgs('239.1.1.1:5000', '239.1.1.2:5000'), /--secret-file is required/],
    [
      'a weak secret',
      ['retransmit', '--join', '239.1.1.1:5000', '--listen', '127.0.0.1:7000', '--secret-file', secret],
      /holds 5 bytes; a secret needs at least 16/,
    ],
    [
      'both modes',
      repairArgs('239.1.1.1:5000', '239.1.1.2:5000', '--latency', '100'),
      /choose one of --reliable/,
    ],
    [
      'a unicast emit group',
      repairArgs('239.1.1.1:5000', '10.0.0.1:5000'),
      /--emit: 10\.0\.0\.1 is not a multicast group/,
    ],
    [
      'a repair server emitting S2 on the group it joins, on the same link (a loop)',
      repairArgs('239.1.1.1:5000', '239.1.1.1:5000', '--secret-file', strongSecret),
      /--emit: 239\.1\.1\.1:5000 is the group it joins \(--join\) on the same link/,
    ],
    [
      'a retransmit server listening on a multicast group',
      ['retransmit', '--join', '239.1.1.1:5000', '--listen', '239.1.1.9:7000', '--secret-file', strongSecret],
      /--listen: 239\.1\.1\.9 is a multicast group; this option takes a unicast address/,
    ],
    [
      'a repair server asking a multicast group as its retransmit server',
      repairArgs(
        '239.1.1.1:5000',
        '239.1.1.2:5000',
        '--secret-file',
        strongSecret,
        '--retransmit',
        '127.0.0.1:7100,239.1.1.9:7000',
      ),
      /--retransmit: 239\.1\.1\.9 is a multicast group; this option takes a unicast address/,
    ],
    [
      'a retransmit server announcing to a multicast group with --announce-to',
      [
        'retransmit',
        '--join',
        '239.1.1.1:5000',
        '--listen',
        '127.0.0.1:7000',
        '--secret-file',
        strongSecret,
        '--announce-to',
        '[ff3e::9]:7000',
      ],
      /--announce-to: ff3e::9 is a multicast group; this option takes a unicast address/,
    ],
    [
      'a bad map',
      ['agent', '--watch', '--map', '239.1.1.1:5000'],
      /--map: "239\.1\.1\.1:5000" is not S1GROUP:PORT=S2GROUP:PORT/,
    ],
  ];
  for (const [name, args, message] of cases) {
    it(name, async () => {
      const result = await run(args);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, message);
      assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    });
  }
});
