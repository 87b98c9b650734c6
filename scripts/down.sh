#!/usr/bin/env bash
# down.sh (make down): removes spawner and the cluster it runs on (local or kind) and leaves
# the machine as found. Arguments are passed to cluster-down.sh (e.g. --keep-state).
set -euo pipefail
exec "$(dirname "$0")/cluster-down.sh" "$@"
