import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runGatecast as run } from '../helpers/cli.js';
import { startServe } from '../helpers/serve.js';

const operator = 'operator-token-for-the-tls-test-00000';

function openssl(): string | undefined {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    const reason = 'needs openssl to make a test certificate (Debian package openssl)';
    if (process.env.GATECAST_REQUIRE_PACKAGES === '1') {
      throw new Error(`GATECAST_REQUIRE_PACKAGES=1 but the TLS test cannot run: ${reason}`);
    }
    return reason;
  }
}

describe('HTTPS: the bearer tokens travel encrypted', { skip: openssl() }, () => {
  const directory = mkdtempSync(join(tmpdir(), 'gatecast-tls-'));
  const cert = join(directory, 'cert.pem');
  const key = join(directory, 'key.pem');
  const otherKey = join(directory, 'other.pem');
  before(() => {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '2',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    execFileSync(
      'openssl',
      ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', otherKey],
      {
        stdio: 'ignore',
      },
    );
  });
  after(() => rmSync(directory, { recursive: true, force: true }));

  it('serve --tls-cert/--tls-key answers over HTTPS; a client trusting the CA gets through, one that does not is refused', async () => {
    const server = await startServe(
      ['--db', `sqlite:${join(directory, 'tls.db')}`, '--tls-cert', cert, '--tls-key', key],
      { GATECAST_OPERATOR_TOKEN: operator },
    );
    try {
      assert.match(server.url, /^https:/);
      const trusted = await run(['admin', '--server', server.url, 'whoami'], {
        GATECAST_TOKEN: operator,
        NODE_EXTRA_CA_CERTS: cert,
      });
      assert.equal(trusted.code, 0, trusted.stderr);
      assert.equal((JSON.parse(trusted.stdout) as { kind: string }).kind, 'operator');
      const untrusted = await run(['admin', '--server', server.url, 'whoami'], { GATECAST_TOKEN: operator });
      assert.equal(untrusted.code, 2);
      assert.match(
        untrusted.stderr,
        /cannot reach https:\/\/127\.0\.0\.1:\d+: (DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED|UNABLE_TO_VERIFY)/,
      );
      const plain = await run(['admin', '--server', server.url.replace('https:', 'http:'), 'whoami'], {
        GATECAST_TOKEN: operator,
      });
      assert.equal(plain.code, 2, 'plain HTTP to the HTTPS port gets nothing');
    } finally {
      await server.stop();
    }
  });

  it('refuses a key that is not the certificate’s, and a certificate without its key, naming the option', async () => {
    const mismatch = await run(
      ['serve', '--db', 'sqlite::memory:', '--tls-cert', cert, '--tls-key', otherKey],
      {},
    );
    assert.equal(mismatch.code, 2);
    assert.match(mismatch.stderr, /--tls-key: .*other\.pem is not the key of the certificate/);
    const half = await run(['serve', '--db', 'sqlite::memory:', '--tls-cert', cert], {});
    assert.equal(half.code, 2);
    assert.match(half.stderr, /--tls-key: give both --tls-cert and --tls-key/);
  });
});
