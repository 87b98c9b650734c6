#!/usr/bin/env bash
# kind-up.sh: brings up spawner's cluster with kind (`kind create cluster --name spawner`) and writes
# its kubeconfig to the same known path as the local cluster: $SPAWNER_CLUSTER_DIR/kubeconfig.
# Needs a working Docker engine (`docker info`) and kind in PATH. Idempotent. Undo: cluster-down.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

docker_works || die "kind needs a working Docker engine, but 'docker info' fails; use the local cluster instead (SPAWNER_CLUSTER=local scripts/cluster-up.sh)."
command -v kind >/dev/null 2>&1 || die "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation); or use SPAWNER_CLUSTER=local."
if [ -f "$CD/mode" ] && [ "$(cat "$CD/mode")" != kind ]; then
	die "a $(cat "$CD/mode") cluster is already set up in $CD; run scripts/cluster-down.sh first."
fi
mkdir -p "$CD"
echo kind >"$CD/mode"
if kind get clusters 2>/dev/null | grep -qx "$SPAWNER_KIND_NAME"; then
	log "kind cluster $SPAWNER_KIND_NAME already exists; reusing it"
	kind export kubeconfig --name "$SPAWNER_KIND_NAME" --kubeconfig "$KUBECONFIG_PATH" >/dev/null
else
	log "creating kind cluster $SPAWNER_KIND_NAME"
	kind create cluster --name "$SPAWNER_KIND_NAME" --kubeconfig "$KUBECONFIG_PATH" --wait 120s ||
		die "kind create cluster --name $SPAWNER_KIND_NAME failed (see its output above)"
fi

KUBECTL=$(command -v kubectl || true)
if [ -z "$KUBECTL" ]; then ensure_binaries; KUBECTL="$SPAWNER_CACHE/bin/kubectl"; fi
"$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" wait --for=condition=Ready nodes --all --timeout=120s >/dev/null ||
	die "the kind node did not become Ready within 120s (see: kind export logs --name $SPAWNER_KIND_NAME)"
for _ in $(seq 1 60); do "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" -n default get sa default >/dev/null 2>&1 && break; sleep 1; done
log "kind cluster $SPAWNER_KIND_NAME is up"
echo "    kubeconfig: $KUBECONFIG_PATH"
echo "    use it:     export KUBECONFIG=$KUBECONFIG_PATH; kubectl get nodes"
