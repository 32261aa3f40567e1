/**
 * docs/benchmarks.md is written section by section: each benchmark replaces its own section
 * (between markers) and leaves the others as they are.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../test/helpers/testbed.js';

const path = join(repoRoot, 'docs', 'benchmarks.md');
const preamble = `# Benchmarks

Written by \`npm run bench\` (\`bash scripts/bench.sh\`, as root). Figures are from one run on a shared
machine: compare within a section (measured in the same run), not across runs.
`;

/** Replaces (or appends) the section called name. */
export function writeSection(name: string, markdown: string): void {
  const start = `<!-- bench:${name} -->`;
  const end = `<!-- /bench:${name} -->`;
  let text = existsSync(path) ? readFileSync(path, 'utf8') : preamble;
  if (!text.startsWith('# Benchmarks')) {
    text = preamble;
  }
  const block = `${start}\n${markdown.trim()}\n${end}`;
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  text =
    from >= 0 && to > from
      ? `${text.slice(0, from)}${block}${text.slice(to + end.length)}`
      : `${text.trimEnd()}\n\n${block}\n`;
  writeFileSync(path, text);
}
