#!/usr/bin/env bash
# Runs shellcheck on every shell script under scripts/ (`make verify` calls it).
# Installs Debian's shellcheck when it is missing, as the other scripts install
# what they need. A finding fails the run: fix it, or silence that one line
# with a `# shellcheck disable=SCxxxx` comment that says why.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SPAWNER_ROOT"

install_missing_packages <<'PKGS'
shellcheck shellcheck
PKGS

mapfile -t files < <(git ls-files 'scripts/*.sh' 'scripts/**/*.sh' 2>/dev/null || find scripts -name '*.sh')
[ ${#files[@]} -gt 0 ] || die "verify-shell: no shell scripts found under scripts/"
# -x follows `. lib.sh` (each script names its source with a directive).
shellcheck -x "${files[@]}"
echo "verify-shell: shellcheck finds nothing in ${#files[@]} scripts"
