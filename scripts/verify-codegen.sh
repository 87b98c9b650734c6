#!/usr/bin/env bash
# Fails when anything generated from apis/ is stale or was edited by hand:
# regenerates into a scratch copy of the repository and compares.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

# The whole tree (without .git and build outputs): codegen resolves packages through go.work.
tar -C "$REPO_ROOT" --exclude=.git --exclude=_output -cf - . | tar -C "$SCRATCH" -xf -
"$SCRATCH/scripts/update-codegen.sh" >/dev/null

stale=0
for path in apis generated deploy/crd; do
  if ! diff -r -q "$REPO_ROOT/$path" "$SCRATCH/$path" >/dev/null; then
    diff -r -u "$REPO_ROOT/$path" "$SCRATCH/$path" | head -40 >&2 || true
    stale=1
  fi
done
if [ "$stale" -ne 0 ]; then
  echo "verify-codegen: generated code or CRD is out of date with apis/ (or was edited by hand); run scripts/update-codegen.sh and commit the result" >&2
  exit 1
fi
echo "verify-codegen: generated code and CRD are up to date"
