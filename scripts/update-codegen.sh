#!/usr/bin/env bash
# Regenerates everything derived from the Go types in apis/:
#   - deepcopy functions next to the types (apis/spawner/v1/zz_generated.deepcopy.go)
#   - clientset, listers, informers and apply configurations under generated/
#   - the CRD manifest deploy/crd/spawner.dev_sessionlivedbackends.yaml
# The generators are pinned in scripts/codegen/go.mod; nobody edits their output by hand.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ROOT="$REPO_ROOT"
TOOLS="$REPO_ROOT/scripts/codegen"
BOILERPLATE="$TOOLS/boilerplate.go.txt"

# kube_codegen.sh installs the generators with `go install`; keep them out of
# the user's GOPATH/bin, in a cache keyed by nothing but the pinned versions.
GOBIN="${SPAWNER_CACHE:-$HOME/.cache/spawner}/codegen-bin/$(sha256sum "$TOOLS/go.sum" | cut -c1-12)"
export GOBIN
mkdir -p "$GOBIN"

CODEGEN_PKG="$(cd "$TOOLS" && GOWORK=off go list -m -f '{{.Dir}}' k8s.io/code-generator)"
if [ -z "$CODEGEN_PKG" ] || [ ! -f "$CODEGEN_PKG/kube_codegen.sh" ]; then
  (cd "$TOOLS" && GOWORK=off go mod download k8s.io/code-generator)
  CODEGEN_PKG="$(cd "$TOOLS" && GOWORK=off go list -m -f '{{.Dir}}' k8s.io/code-generator)"
fi
# shellcheck source=/dev/null
source "$CODEGEN_PKG/kube_codegen.sh"

cd "$ROOT"
kube::codegen::gen_helpers --boilerplate "$BOILERPLATE" "$ROOT/apis"

kube::codegen::gen_client \
  --with-watch \
  --with-applyconfig \
  --output-dir "$ROOT/generated" \
  --output-pkg spawner.dev/generated \
  --boilerplate "$BOILERPLATE" \
  "$ROOT/apis"

# The CRD comes from the same types, through controller-gen, with the field
# descriptions `kubectl explain` shows. trimcrd then removes those of the core
# types embedded under spec.template (Container, Volume, Affinity...): they are
# the Pod's own documentation (`kubectl explain pod.spec.containers`), and
# described in full they triple the manifest (445 KB) and bring the
# last-applied annotation client-side `kubectl apply` writes to 237 KB, within
# 10% of its 256 KiB limit (55 KB trimmed).
(cd "$TOOLS" && GOWORK=off go build -o "$GOBIN/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
(cd "$TOOLS" && GOWORK=off go build -o "$GOBIN/trimcrd" ./trimcrd)
mkdir -p "$ROOT/deploy/crd"
(cd "$ROOT/apis" && "$GOBIN/controller-gen" crd paths=./spawner/... output:crd:dir="$ROOT/deploy/crd")
for crd in sessionlivedbackends backendpools; do
  "$GOBIN/trimcrd" "$ROOT/deploy/crd/spawner.dev_$crd.yaml"
done
echo "generated: apis/spawner/v1/zz_generated.deepcopy.go, generated/, deploy/crd/"
