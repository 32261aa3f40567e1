#!/usr/bin/env bash
# Runs the demo (what `npm start` runs) N times in a row with --duration 20 and reports each run's
# exit code and duration, then the tally. The output of a failed run is kept in the log directory.
#   scripts/demo-soak.sh [N] [LOG-DIRECTORY]
# The demo runs dist/: build first (npm run build) so what is soaked is the code here.
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
logs="${2:-$(mktemp -d "${TMPDIR:-/tmp}/gatecast-demo-soak-XXXXXX")}"
mkdir -p "$logs"
passed=0
for run in $(seq 1 "$runs"); do
  started=$(date +%s.%N)
  npm start --silent -- --duration 20 >"$logs/run-$run.log" 2>&1
  code=$?
  ended=$(date +%s.%N)
  seconds=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ "$code" -eq 0 ]; then
    passed=$((passed + 1))
    rm -f "$logs/run-$run.log"
    echo "run $run: exit $code in ${seconds} s (load $load)"
  else
    echo "run $run: exit $code in ${seconds} s (load $load), output in $logs/run-$run.log"
  fi
done
echo "demo soak: $passed of $runs runs exited 0"
[ "$passed" -eq "$runs" ]
