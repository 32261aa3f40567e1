#!/usr/bin/env bash
# Runs the benchmarks (root: they build namespaces) and writes docs/benchmarks.md, one section each.
# Only the lossy-edge race: npm run bench:edge (BENCH_EDGE_QUICK=1 for a 10 MB file).
# The repair and edge benchmarks need uftp, the live one rist-tools (Debian packages), installed here when missing.
# The benchmarks run bin/gatecast, which runs dist/: build first, so what is measured is the code here.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build
mkdir -p docs
if ! command -v uftp >/dev/null || ! command -v ristsender >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uftp rist-tools >/dev/null
fi
node --import tsx bench/throughput.ts
node --import tsx bench/repair.ts
node --import tsx bench/edge.ts
node --import tsx bench/live.ts
node --import tsx bench/charges.ts
node --import tsx bench/startup.ts
node --import tsx bench/restricted.ts
node --import tsx bench/rekey-receipts.ts
node --import tsx bench/ordering.ts
