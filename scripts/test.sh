#!/usr/bin/env bash
# Runs the whole suite on Node's own test runner. Node 20 does not expand globs, so the files are
# listed here. Files run one at a time: the namespace tests measure the network and must not
# compete with each other for the two cores. The tests import the TypeScript sources through tsx,
# but the commands they start run bin/gatecast, which runs dist/: build first, so a stale build is
# never what gets tested.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build
mapfile -t files < <(find test -name '*.test.ts' | sort)
exec node --import tsx --test --test-concurrency=1 "$@" "${files[@]}"
