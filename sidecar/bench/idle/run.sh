#!/usr/bin/env bash
# Measures what idle backends cost at rest: N real sidecars, each in front of
# its own idle app, all followed by the sweeper's per-backend stream code, and
# prints the table for docs/sidecar.md. CPU time and wake-ups come from the
# kernel's accounting of each process (/proc/<pid>/stat, schedstat, status).
#
# Usage: sidecar/bench/idle/run.sh [N] [window seconds]   (defaults 50, 60)
# SIDECAR_IDLE_BENCH_WS=1 also leaves one WebSocket open through each sidecar.
# As root it runs in a network namespace of its own (unshare -n), so that
# the socket tables the sidecars read hold the benchmark's sockets only.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/sidecar" spawner.dev/sidecar
go test -c -o "$tmp/follower" spawner.dev/sweeper/internal/sweeper
go test -c -o "$tmp/idle.test" .
export SIDECAR_IDLE_BENCH_SIDECAR="$tmp/sidecar" SIDECAR_IDLE_BENCH_FOLLOWER="$tmp/follower" \
	SIDECAR_IDLE_BENCH_N="${1:-50}" SIDECAR_IDLE_BENCH_WINDOW="${2:-60}" SIDECAR_IDLE_BENCH_OUT="$tmp/out"
cmd=("$tmp/idle.test" -test.run '^TestIdleCost$' -test.count=1 -test.timeout=30m -test.v)
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
	unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}" >&2
else
	echo "not root: running in this network namespace; the sidecars' socket tables include the host's sockets" >&2
	"${cmd[@]}" >&2
fi
cat "$tmp/out"
