import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import * as limits from '../src/limits.js';
import type { DecodeErrorReason } from '../src/protocol/errors.js';
import { repoRoot } from './helpers/testbed.js';

const read = (...parts: string[]) => readFileSync(join(repoRoot, ...parts), 'utf8');

function sources(directory: string): string[] {
  return readdirSync(directory).flatMap((name) => {
    const path = join(directory, name);
    return statSync(path).isDirectory() ? sources(path) : path.endsWith('.ts') ? [path] : [];
  });
}

describe('docs stay true to the code', () => {
  it('docs/api.md names every route of the OpenAPI document, with its methods', async () => {
    const { openStore } = await import('../src/store/database.js');
    const { buildServerApp: buildSubscriptionApp } = await import('../src/cli/server-app.js');
    const store = await openStore('sqlite::memory:');
    const app = await buildSubscriptionApp({ store, trustedOperatorToken: 'docs-test-token-000' });
    const paths = (app.swagger() as { paths: Record<string, Record<string, unknown>> }).paths;
    await app.close();
    await store.close();
    const doc = read('docs', 'api.md');
    assert.ok(Object.keys(paths).length >= 15);
    for (const [path, methods] of Object.entries(paths)) {
      for (const method of Object.keys(methods)) {
        const pattern = new RegExp(`${method.toUpperCase()}[^|\\n]*${path.replaceAll(/[{}]/g, '\\$&')}`);
        assert.match(doc, pattern, `${method.toUpperCase()} ${path} is missing from docs/api.md`);
      }
    }
  });

  it('docs/limits.md lists every limit', () => {
    const doc = read('docs', 'limits.md');
    for (const name of Object.keys(limits)) {
      assert.match(doc, new RegExp(`\\| \`${name}\` \\|`), `${name} is missing from docs/limits.md`);
    }
  });

  it('docs/errors.md lists every error code and decode reason', () => {
    const doc = read('docs', 'errors.md');
    const codes = new Set(
      sources(join(repoRoot, 'src')).flatMap(
        (path) => readFileSync(path, 'utf8').match(/GATECAST_ERR_[A-Z_]+/g) ?? [],
      ),
    );
    assert.ok(codes.size >= 5);
    for (const code of codes) {
      assert.match(doc, new RegExp(`\`${code}\``), `${code} is missing from docs/errors.md`);
    }
    const reasons: DecodeErrorReason[] = [
      'truncated',
      'bad-magic',
      'bad-version',
      'unknown-type',
      'unsupported-type',
      'bad-flags',
      'reserved-not-zero',
      'length-mismatch',
      'bad-field',
    ];
    for (const reason of reasons) {
      assert.match(doc, new RegExp(`\`${reason}\``));
    }
  });

  it('the README opens with the two set-up commands', () => {
    const head = read('README.md').split('\n').slice(0, 8).join('\n');
    assert.match(head, /npm ci && npm start/);
    assert.match(head, /npm test/);
  });
});
