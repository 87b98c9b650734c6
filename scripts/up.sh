#!/usr/bin/env bash
# up.sh (make up): cluster (kind when `docker info` works and kind is installed, else the local
# cluster) + spawner images + `kubectl apply -k deploy/overlays/local` + rollout + one demo backend
# spawned through the api-server, ending with its URL and the curl line to run next.
# Steps whose inputs do not exist yet (component main.go, deploy overlay, api-server) are skipped
# with a note, and the script says where it stopped.
#
# Spawn settings (see docs/architecture.md; override if the deployment differs):
#   SPAWNER_API_SERVICE  (spawner-api)        Service of the api-server in spawner-system, control port 8080
#   SPAWNER_API_SECRET   (spawner-api-tokens) Secret in spawner-system holding the control token
#   SPAWNER_API_SECRET_KEY (token)            key inside that Secret
#   SPAWNER_DEMO_BODY    ({"image":"localhost/spawner-demo:dev"})   JSON body of POST /spawn
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NS=spawner-system
API_SVC=${SPAWNER_API_SERVICE:-spawner-api}
API_SECRET=${SPAWNER_API_SECRET:-spawner-api-tokens}
API_SECRET_KEY=${SPAWNER_API_SECRET_KEY:-token}
DEMO_BODY=${SPAWNER_DEMO_BODY:-'{"image":"localhost/spawner-demo:dev"}'}

"$SPAWNER_ROOT/scripts/cluster-up.sh"
"$SPAWNER_ROOT/scripts/build-images.sh"

if command -v kubectl >/dev/null 2>&1 && [ "$(cluster_mode)" = kind ]; then KUBECTL=kubectl; else KUBECTL="$SPAWNER_CACHE/bin/kubectl"; fi
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

stop_here() {
	echo "==> make up stopped after: $1"
	echo "    $2"
	echo "    kubeconfig: $KUBECONFIG_PATH   (export KUBECONFIG=$KUBECONFIG_PATH PATH=$SPAWNER_CACHE/bin:\$PATH)"
	exit 0
}

# the local overlay: deploy/overlays/local (issue wording) or deploy/local (as written by the deploy owner)
OVERLAY=""
for d in deploy/overlays/local deploy/local; do
	[ -f "$SPAWNER_ROOT/$d/kustomization.yaml" ] && { OVERLAY=$d; break; }
done
[ -n "$OVERLAY" ] ||
	stop_here "cluster + images" "deploy/overlays/local/kustomization.yaml (or deploy/local/) does not exist yet, so spawner is not deployed."

log "applying $OVERLAY"
k apply -k "$SPAWNER_ROOT/$OVERLAY" || die "kubectl apply -k $OVERLAY failed"
k -n "$NS" get deploy,ds -o name 2>/dev/null | while read -r w; do
	k -n "$NS" rollout status "$w" --timeout=180s || die "$w did not roll out within 180s (kubectl -n $NS describe $w; kubectl -n $NS logs $w)"
done
log "spawner is deployed in namespace $NS"

k -n "$NS" get svc "$API_SVC" >/dev/null 2>&1 ||
	stop_here "cluster + images + deploy" "the api-server Service $NS/$API_SVC does not exist, so no demo backend was spawned."
[ -f "$SPAWNER_ROOT/e2e/demo/main.go" ] ||
	stop_here "cluster + images + deploy" "e2e/demo does not exist yet, so no demo backend was spawned."

API_IP=$(k -n "$NS" get svc "$API_SVC" -o jsonpath='{.spec.clusterIP}')
TOKEN=$(k -n "$NS" get secret "$API_SECRET" -o jsonpath="{.data.$API_SECRET_KEY}" 2>/dev/null | base64 -d || true)
[ -n "$TOKEN" ] || die "cannot read the control token from Secret $NS/$API_SECRET key $API_SECRET_KEY (set SPAWNER_API_SECRET / SPAWNER_API_SECRET_KEY)"
CONTROL=http://$API_IP:8080
if [ "$(cluster_mode)" = kind ]; then
	# ClusterIPs of a kind cluster are not routable from the host: go through a port-forward.
	k -n "$NS" port-forward "svc/$API_SVC" 18080:8080 >/dev/null 2>&1 &
	PF=$!
	trap 'kill $PF 2>/dev/null' EXIT
	CONTROL=http://127.0.0.1:18080
	sleep 2
fi

log "spawning a demo backend: POST $CONTROL/spawn"
resp=""
for _ in $(seq 1 30); do
	resp=$(curl -sS -m 30 -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$DEMO_BODY" "$CONTROL/spawn" 2>&1) && break
	sleep 1
done
url=$(printf '%s' "$resp" | grep -o '"url" *: *"[^"]*"' | head -n1 | sed 's/.*: *"//; s/"$//')
[ -n "$url" ] || die "POST $CONTROL/spawn did not return a url; response: $resp"
log "demo backend spawned"
echo
echo "    backend URL: $url"
echo "    try it:      curl -sS '$url'"
echo "    control API: $CONTROL (token: kubectl -n $NS get secret $API_SECRET -o jsonpath='{.data.$API_SECRET_KEY}' | base64 -d)"
echo "    kubeconfig:  $KUBECONFIG_PATH"
