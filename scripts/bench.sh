#!/usr/bin/env bash
# Runs the benchmarks (root: they build namespaces) and writes docs/benchmarks.md, one section each.
# The repair benchmark needs uftp (Debian package uftp), installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
if ! command -v uftp >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uftp >/dev/null
fi
node --import tsx bench/throughput.ts
node --import tsx bench/repair.ts
