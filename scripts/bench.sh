#!/usr/bin/env bash
# Runs the benchmarks (root: they build namespaces) and writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
exec node --import tsx bench/throughput.ts "$@"
