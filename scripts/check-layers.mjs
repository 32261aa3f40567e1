#!/usr/bin/env node
// Enforces the layering rule of the house style: roles never import each other, and the
// layers at the bottom (protocol, net, crypto, store) never import a role. The CLI may import
// everything. Exits 1 and names each offending import.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..', 'src');
const layers = new Set(['protocol', 'net', 'crypto', 'store']);
const roles = new Set([
  'source',
  'retransmit',
  'repair',
  'receiver',
  'subscription',
  'billing',
  'order',
  'console',
]);

/** Lists every .ts file below a directory. */
function walk(directory) {
  const files = [];
  for (const name of readdirSync(directory)) {
    const path = join(directory, name);
    if (statSync(path).isDirectory()) {
      files.push(...walk(path));
    } else if (name.endsWith('.ts')) {
      files.push(path);
    }
  }
  return files;
}

/** The top folder under src/ a path belongs to, or '' for files directly in src/. */
function topFolder(path) {
  const parts = relative(root, path).split(sep);
  return parts.length > 1 ? parts[0] : '';
}

const importPattern = /(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;
const problems = [];
for (const file of walk(root)) {
  const from = topFolder(file);
  const text = readFileSync(file, 'utf8');
  for (const match of text.matchAll(importPattern)) {
    const specifier = match[1] ?? match[2];
    if (!specifier?.startsWith('.')) {
      continue;
    }
    const to = topFolder(resolve(dirname(file), specifier));
    const fromIsLayer = layers.has(from) || from === '';
    const badLayer = fromIsLayer && roles.has(to);
    const badRole = roles.has(from) && roles.has(to) && from !== to;
    if (badLayer || badRole) {
      problems.push(`${relative(process.cwd(), file)}: imports ${specifier} (${from || 'src'} -> ${to})`);
    }
  }
}
if (problems.length > 0) {
  console.error('layering violations (roles never import each other; layers never import roles):');
  for (const problem of problems) {
    console.error(`  ${problem}`);
  }
  process.exit(1);
}
console.log('layers: ok');
