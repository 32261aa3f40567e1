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
# Node's own summary counts skipped tests but not skipped suites (a whole file that cannot run
# here, such as the namespace tests on a kernel without multicast routing): both are counted after
# it, with their reasons.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# A file that hangs (a process stuck in a wait) is cancelled and fails after
# GATECAST_TEST_FILE_TIMEOUT_MS (15 minutes; on Node 20 the bound holds for each file as a whole,
# and the longest takes a few minutes), instead of holding up the run until it is killed.
node --import tsx --test --test-concurrency=1 --test-timeout="${GATECAST_TEST_FILE_TIMEOUT_MS:-900000}" \
  "$@" "${files[@]}" | tee "$log"
status=${PIPESTATUS[0]}
set -e
skips=$(grep -c '# SKIP' "$log" || true)
echo "# skipped tests and suites: $skips"
if ((skips > 0)); then
  grep '# SKIP' "$log" | sed 's/.*# SKIP */#   /' | sort | uniq -c
fi
exit "$status"
