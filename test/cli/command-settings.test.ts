/**
 * The settings schemas of send, receive, stb, admin and token (src/cli/command-settings.ts): each
 * command's --config is checked by the same schema as its flags (an unknown key or a value of the
 * wrong type names the file, the line and the field), and the defaults come from the schema,
 * filled in only where they belong.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { TObject } from '@sinclair/typebox';
import {
  adminSettings,
  receiveSettings,
  sendSettings,
  stbSettings,
  tokenCommandSettings,
} from '../../src/cli/command-settings.js';
import { ConfigError, formatHelp, parseCommand, parseOptions } from '../../src/cli/options.js';

const directory = mkdtempSync(join(tmpdir(), 'gatecast-command-settings-'));
after(() => rmSync(directory, { recursive: true, force: true }));

let files = 0;
/** Writes a config file and returns its path. */
function config(text: string): string {
  files += 1;
  const path = join(directory, `config-${files}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** The ConfigError message of parsing `--config FILE` against a command's schema. */
function configError(schema: TObject, text: string): { path: string; message: string } {
  const path = config(text);
  try {
    parseCommand(['--config', path], schema);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return { path, message: error.message };
  }
  assert.fail(`the config was taken: ${text}`);
}

const commands: Array<[string, TObject, string, string, RegExp]> = [
  // [command, schema, a valid key and value, a key with a wrong type, what the message says]
  ['send', sendSettings, 'ttl: 8', 'ticker: "yes"', /field "ticker" must be true or false/],
  ['receive', receiveSettings, 'timeout: 5', 'timeout: [5]', /field "timeout" must be a string or a number/],
  ['stb', stbSettings, 'server: http://127.0.0.1:8080', 'once: 1', /field "once" must be true or false/],
  ['admin', adminSettings, 'db: sqlite:./x.db', 'repair: "on"', /field "repair" must be true or false/],
  ...Object.entries(tokenCommandSettings).map(([name, schema]): [string, TObject, string, string, RegExp] => {
    const [first] = Object.keys(schema.properties);
    return [`token ${name}`, schema, `${first}: x`, `${first}: {a: 1}`, new RegExp(`field "${first}" must`)];
  }),
];

describe('the settings of send, receive, stb, admin and token', () => {
  for (const [command, schema, valid, wrongType, says] of commands) {
    it(`${command}: an unknown key and a wrong type in --config name the file, the line and the field`, () => {
      const unknown = configError(schema, `${valid}\ncolour: blue\n`);
      assert.equal(
        unknown.message,
        `config ${unknown.path}:2:1: field "colour" is not an option of this command`,
      );
      const wrong = configError(schema, `# ${command}\n${wrongType}\n`);
      assert.ok(wrong.message.startsWith(`config ${wrong.path}:2:1: `), wrong.message);
      assert.match(wrong.message, says);
      // Aliases that expand without bound are the file's mistake, not an internal error.
      const aliases = ['a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]']
        .concat(
          Array.from(
            { length: 8 },
            (_, i) =>
              `b${i}: &a${i} [${Array(10)
                .fill(i === 0 ? '*a' : `*a${i - 1}`)
                .join(', ')}]`,
          ),
        )
        .join('\n');
      const bomb = configError(schema, `${aliases}\n`);
      assert.match(
        bomb.message,
        new RegExp(`^config ${bomb.path.replaceAll('.', '\\.')}: not valid YAML: Excessive alias count`),
      );
      // A key every JavaScript object carries is an unknown key, not a crash.
      for (const key of ['constructor', '__proto__', 'toString']) {
        const inherited = configError(schema, `${valid}\n${key}: 1\n`);
        assert.equal(
          inherited.message,
          `config ${inherited.path}:2:1: field "${key}" is not an option of this command`,
        );
      }
      // The valid key alone is taken, numbers as text.
      const [key, value] = valid.split(': ') as [string, string];
      assert.equal(parseCommand(['--config', config(`${valid}\n`)], schema).values[key], value);
    });
  }

  it('send: the defaults come from the schema; those that go with another flag only with it', () => {
    const plain = parseOptions(['--group', '239.1.1.1:5000', '--stdin'], sendSettings);
    assert.equal(plain.ttl, '16');
    assert.equal(plain['packet-size'], '1400');
    assert.equal(plain['socket-buffer'], '4M');
    // Given by default, these would read as given without the flag they need (and be refused).
    for (const name of ['suite', 'service-epoch', 'crypto-period', 'tier', 'manifest-packets', 'linger']) {
      assert.equal(plain[name], undefined, name);
    }
    assert.equal(plain['ticks-per-second'], undefined);
    const restricted = parseOptions(['--restricted', '--ticker'], sendSettings);
    assert.equal(restricted.suite, 'aes-256-gcm');
    assert.equal(restricted['service-epoch'], '1');
    assert.equal(restricted['crypto-period'], '10');
    assert.equal(restricted.tier, '0');
    // Sized to the session's DATA datagrams by send itself (test/cli/manifest-packets.test.ts).
    assert.equal(restricted['manifest-packets'], undefined);
    assert.equal(restricted['ticks-per-second'], '20');
    const lastResort = parseOptions(['--retransmit-listen', '127.0.0.1:7000'], sendSettings);
    assert.equal(lastResort.linger, '60');
    assert.equal(lastResort['buffer-bytes'], String(256 * 1024 * 1024));
  });

  it('the command line wins over --config, and --config over the defaults', () => {
    const path = config('ttl: 8\npacket-size: 1000\nrestricted: true\nsuite: chacha20-poly1305\n');
    const values = parseOptions(['--config', path, '--ttl', '4'], sendSettings);
    assert.equal(values.ttl, '4');
    assert.equal(values['packet-size'], '1000');
    assert.equal(values.suite, 'chacha20-poly1305');
    assert.equal(values.tier, '0');
    const receive = parseOptions(['--config', config('out: /tmp/x\n')], receiveSettings);
    assert.equal(receive.out, '/tmp/x');
    assert.equal(receive.timeout, '30');
    assert.equal(parseOptions([], receiveSettings).out, '-');
  });

  it('admin takes its words and its options, from the command line and from --config', () => {
    const path = config('server: http://127.0.0.1:8080\ntoken-file: /tmp/token\n');
    const parsed = parseCommand(
      ['--config', path, 'grant', 'alice', 'repair', '--monthly', '499'],
      adminSettings,
    );
    assert.deepEqual(parsed.positionals, ['grant', 'alice', 'repair']);
    assert.equal(parsed.values.server, 'http://127.0.0.1:8080');
    assert.equal(parsed.values.monthly, '499');
    assert.throws(
      () => parseCommand(['sessions', '--colour', 'x'], adminSettings),
      /Unknown option '--colour'/,
    );
  });

  it('token grant: its defaults come from the schema and show in its help', () => {
    const values = parseOptions([], tokenCommandSettings.grant);
    assert.equal(values.currency, 'EUR');
    assert.equal(values.tier, '0');
    assert.equal(values['service-epoch'], '1');
    const help = formatHelp('gatecast token grant [options]', '', tokenCommandSettings.grant);
    assert.match(help, /--currency ISO-4217 +currency of the rate card \(default EUR\)/);
    assert.match(help, /--config FILE/);
  });
});
