#!/usr/bin/env bash
# ensure-browser.sh: installs Debian's Chromium when no Chrome or Chromium is on PATH, for the
# tests that drive a real browser (common/clustertest/browser: e2e/lifecycle/browser_test.go,
# api-server/test/origins_cluster_test.go). Run by `make e2e` and `make test-cluster`.
# SPAWNER_E2E_CHROMIUM=<binary> uses that browser instead and installs nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ -n "${SPAWNER_E2E_CHROMIUM:-}" ]; then
	[ -x "$SPAWNER_E2E_CHROMIUM" ] || die "SPAWNER_E2E_CHROMIUM=$SPAWNER_E2E_CHROMIUM is not an executable file"
	exit 0
fi
for browser in chromium chromium-browser google-chrome; do
	command -v "$browser" >/dev/null 2>&1 && exit 0
done
install_missing_packages <<'LIST'
chromium chromium
LIST
