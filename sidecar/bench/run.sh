#!/usr/bin/env bash
# Measures the sidecar against direct connections to the same app, and nginx
# as a reference proxy when it is installed, in one run, and prints the table
# for docs/sidecar.md. Needs wrk (apt-get install -y wrk; nginx optional).
# Only 127.0.0.1 is used. Usage: sidecar/bench/run.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
SIDECAR_BENCH=1 SIDECAR_BENCH_ROUNDS="${1:-5}" SIDECAR_BENCH_OUT="$out" \
	go test -count=1 -timeout 30m -run '^TestFigures$' -v . >&2
cat "$out"
