#!/usr/bin/env bash
# up.sh (make up): a cluster (kind when `docker info` works and kind is installed, else the local
# cluster built here; SPAWNER_CLUSTER=local|kind decides) + spawner's images + spawner deployed
# from deploy/local (scripts/deploy.sh) + the demo's warm pool (deploy/examples/demo-pool.yaml) + one
# demo backend claimed from it through the control API, ending with its URL and the curl line to run
# next. Safe to run again. Undo: make down.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NS=spawner-system
export PATH=$SPAWNER_CACHE/bin:$PATH # kind (installed there by kind-up.sh) and kubectl
"$SPAWNER_ROOT/scripts/cluster-up.sh"
"$SPAWNER_ROOT/scripts/build-images.sh"
"$SPAWNER_ROOT/scripts/deploy.sh"

if [ "$(cluster_mode)" = kind ] && command -v kubectl >/dev/null 2>&1; then KUBECTL=kubectl; else KUBECTL="$SPAWNER_CACHE/bin/kubectl"; fi
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

TOKEN=$(k -n "$NS" get secret spawner-api-tokens -o jsonpath='{.data.token}' | base64 -d | head -n1)
[ -n "$TOKEN" ] || die "cannot read the control token from Secret $NS/spawner-api-tokens (key: token)"
CONTROL=http://$(k -n "$NS" get svc spawner-api -o jsonpath='{.spec.clusterIP}'):8080
if [ "$(cluster_mode)" = kind ]; then
	# A kind cluster's ClusterIPs are not routable from the host: go through a port-forward, for this
	# script only. Started without the k function, so that $! is kubectl itself (the wrapper execs):
	# killing a subshell that runs a function leaves its kubectl running.
	"$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" -n "$NS" port-forward svc/spawner-api 18080:8080 >/dev/null 2>&1 &
	pf=$!
	trap 'kill $pf 2>/dev/null; wait $pf 2>/dev/null || true' EXIT
	CONTROL=http://127.0.0.1:18080
	sleep 2
fi

# The demo runs from a warm pool: its pods start now, so the spawn below claims one that is
# already Ready instead of waiting for a pod to start.
k apply -f "$SPAWNER_ROOT/deploy/examples/demo-pool.yaml" >/dev/null || die "cannot create the demo BackendPool (deploy/examples/demo-pool.yaml)"
log "waiting for the demo pool's warm backends (kubectl -n spawner-backends get bpool demo)"
k -n spawner-backends wait --for=condition=Ready bpool/demo --timeout=180s >/dev/null ||
	die "the demo pool did not get Ready within 180 s (kubectl -n spawner-backends describe bpool demo)"

log "claiming a demo backend from the pool: POST $CONTROL/spawn"
body='{"pool":"demo","key":"demo-room","gracePeriodSeconds":600}'
resp=$(curl -sS -m 30 --retry 10 --retry-connrefused --retry-delay 1 -X POST \
	-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" "$CONTROL/spawn") ||
	die "POST $CONTROL/spawn failed: $resp"
field() { printf '%s' "$resp" | sed -n "s/.*\"$1\" *: *\"\\([^\"]*\\)\".*/\\1/p"; }
url=$(field url)
name=$(field name)
[ -n "$url" ] || die "POST $CONTROL/spawn did not return a url; response: $resp"
# Poll the ready endpoint (302 once Ready, 409 while starting, 410 once ended). Following the status
# stream through a pipe to grep kept the script waiting up to 15 s after Ready: curl only sees that
# grep has gone when the next keep-alive comes.
deadline=$((SECONDS + 120))
while :; do
	code=$(curl -sS -o /dev/null -w '%{http_code}' -m 5 -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' \
		"$CONTROL/backend/$name/ready" 2>/dev/null) || true
	case $code in
	302) break ;;
	410) die "demo backend $name ended before it was Ready (kubectl -n spawner-backends describe slab $name)" ;;
	esac
	[ $SECONDS -lt $deadline ] || die "demo backend $name did not become Ready within 120 s, last answer $code (kubectl -n spawner-backends describe slab $name)"
	sleep 0.2
done
case $resp in
*'"warm":true'*) log "demo backend $name is Ready (a warm claim from pool demo)" ;;
*) log "demo backend $name is Ready (started cold: the pool had no warm backend to give)" ;;
esac
[ "$(cluster_mode)" != kind ] || PF_HINT="
      kubectl -n $NS port-forward svc/spawner-api 18080:8080 &   # kind: ClusterIPs are not routable from the host"
cat <<EOT

    Open the demo room in a browser (open it twice and chat):
      $url

    or try it with curl:
      curl -sS '${url%%\?*}healthz?${url#*\?}'

    Claim your own room from the demo's warm pool (Ready at once; its name is the key):${PF_HINT:-}
      export SPAWNER_TOKEN=\$(kubectl -n $NS get secret spawner-api-tokens -o jsonpath='{.data.token}' | base64 -d | head -n1)
      curl -sS -H "Authorization: Bearer \$SPAWNER_TOKEN" -d '{"pool":"demo","key":"my-room"}' $CONTROL/spawn
    or start one cold from an image:
      curl -sS -H "Authorization: Bearer \$SPAWNER_TOKEN" -d '{"image":"localhost/spawner-demo:dev"}' $CONTROL/spawn

    kubectl:    export KUBECONFIG=$KUBECONFIG_PATH PATH=$SPAWNER_CACHE/bin:\$PATH; kubectl get slab,bpool -A
    tear down:  make down
EOT
