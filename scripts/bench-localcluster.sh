#!/usr/bin/env bash
# bench-localcluster.sh [--cold-build] [--pods N]: measures the figures quoted in docs/local-cluster.md.
#
#   cold build   (only with --cold-build) `go build` of the k8s multi-call binary with an EMPTY
#                temporary GOCACHE, same flags as scripts/lib.sh (needs ~7 min and ~4 GB of disk)
#   warm up      scripts/cluster-up.sh from nothing (no cluster state) with the binaries cached
#   node Ready   from the start of cluster-up.sh to the node reporting Ready
#   second up    scripts/cluster-up.sh on the running cluster (idempotent reuse)
#   Pod create -> Running   p50/p95 over N (default 20) Pods of a local image (imagePullPolicy
#                Never), timed with curl against the API (POST, then a watch until phase Running)
#   memory       RSS and PSS (smaps_rollup) of every cluster process, idle with one Pod
#
# It needs the machine to itself: if a cluster is up it is torn down first (and left down at the end
# unless --leave-up).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

cold=0 npods=20 leave=0
while [ $# -gt 0 ]; do
	case "$1" in
	--cold-build) cold=1 ;;
	--pods) npods=$2; shift ;;
	--leave-up) leave=1 ;;
	*) die "usage: bench-localcluster.sh [--cold-build] [--pods N] [--leave-up]" ;;
	esac
	shift
done
export SPAWNER_CLUSTER=local
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a-b}'; }

echo "# bench-localcluster.sh on $(hostname), $(nproc) CPUs, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(date -u +%FT%TZ)"
echo "# k8s $(k8s_version), etcd $(etcd_version), $(go env GOVERSION), containerd $(containerd --version 2>/dev/null | awk '{print $3}')"

if [ $cold = 1 ]; then
	gc=$(mktemp -d /var/tmp/spawner-coldbuild.XXXXXX)
	t0=$(now)
	tv=(); [ ! -x /usr/bin/time ] || tv=(/usr/bin/time -v)
	(cd "$LC_SRC" && GOCACHE=$gc GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 "${tv[@]}" go build -trimpath -ldflags "$(k8s_ldflags)" -o "$gc/k8s" .) 2>"$gc.time" ||
		die "cold build failed; see $gc.time"
	echo "cold build of k8s (empty GOCACHE): $(sub "$(now)" "$t0") s, peak RSS $(awk -F': ' '/Maximum resident/{printf "%.1f GiB", $2/1048576; f=1} END{if(!f) printf "n/a"}' "$gc.time"), GOCACHE $(du -sh "$gc" | cut -f1), binary $(du -h "$gc/k8s" | cut -f1)"
	rm -rf "$gc" "$gc.time"
fi

ensure_packages
ensure_binaries >/dev/null
# shellcheck disable=SC2034 # read by lib.sh (kc)
BIN=$(bin_dir)
"$SPAWNER_ROOT/scripts/build-images.sh" --no-load spawner-pause spawner-hello >/dev/null
[ ! -d "$CD" ] || "$SPAWNER_ROOT/scripts/cluster-down.sh" >/dev/null

out=$(mktemp)
t0=$(now)
_T0=$t0 "$SPAWNER_ROOT/scripts/cluster-up.sh" >"$out" 2>&1 || { cat "$out"; die "cluster-up.sh failed"; }
up=$(sub "$(now)" "$t0")
ready=$(grep -m1 'is Ready' "$out" | sed -E 's/^==> \[ *([0-9.]+)s\].*/\1/')
echo "warm up from nothing (binaries cached): ${up} s; node Ready after ${ready} s"
t0=$(now)
"$SPAWNER_ROOT/scripts/cluster-up.sh" >/dev/null 2>&1 || die "second cluster-up.sh failed"
echo "second up (cluster already running): $(sub "$(now)" "$t0") s"
rm -f "$out"

"$SPAWNER_ROOT/scripts/build-images.sh" spawner-hello >/dev/null
API=https://127.0.0.1:6443
cu() { curl -sS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"; }
times=()
for i in $(seq 1 "$npods"); do
	name=bench-$i
	body='{"apiVersion":"v1","kind":"Pod","metadata":{"name":"'$name'"},"spec":{"restartPolicy":"Never","terminationGracePeriodSeconds":1,"containers":[{"name":"hello","image":"localhost/spawner-hello:dev","imagePullPolicy":"Never"}]}}'
	t0=$(now)
	rv=$(cu -X POST -H 'Content-Type: application/json' -d "$body" "$API/api/v1/namespaces/default/pods" | grep -o '"resourceVersion": *"[0-9]*"' | head -n1 | grep -o '[0-9]*')
	[ -n "$rv" ] || die "creating Pod $name through the API failed"
	# watch from the creation's resourceVersion until the phase is Running
	exec 3< <(exec timeout 60 curl -sSN --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
		"$API/api/v1/namespaces/default/pods?watch=1&fieldSelector=metadata.name=$name&resourceVersion=$rv")
	wpid=$!
	grep -m1 -q '"phase":"Running"' <&3 || die "Pod $name did not reach Running within 60s"
	kill "$wpid" 2>/dev/null || true
	exec 3<&-
	times+=("$(sub "$(now)" "$t0")")
	[ "$i" = "$npods" ] || cu -X DELETE "$API/api/v1/namespaces/default/pods/$name" >/dev/null
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
p() { echo "$sorted" | awk -v q="$1" '{a[NR]=$1} END{i=int(q*NR+0.999999); if(i<1)i=1; print a[i]}'; }
echo "Pod create -> Running (local image, n=$npods): p50 $(p 0.50) s, p95 $(p 0.95) s, min $(p 0) s, max $(p 1) s"

# memory: wait for the other pods to be gone so one Pod is left, then let things settle
for _ in $(seq 1 60); do [ "$(kc get pods -o name | wc -l)" -le 1 ] && break; sleep 1; done
sleep 10
printf '%-26s %9s %9s\n' process "RSS MiB" "PSS MiB"
tr=0 tp=0
mem() { awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{printf "%d %d\n", r/1024, p/1024}' "/proc/$1/smaps_rollup" 2>/dev/null; }
for c in "${COMPONENTS[@]}"; do
	pid=$(pid_of "$c") || continue
	read -r r p < <(mem "$pid")
	printf '%-26s %9d %9d\n' "$c" "$r" "$p"
	tr=$((tr + r)) tp=$((tp + p))
done
r=0 p=0
for pid in $(pgrep -f "containerd-shim.*-address $SOCK") $(for s in $(pgrep -f "containerd-shim.*-address $SOCK"); do pgrep -P "$s"; done); do
	read -r a b < <(mem "$pid"); r=$((r + a)) p=$((p + b))
done
printf '%-26s %9d %9d\n' "shims + pause + test pod" "$r" "$p"
tr=$((tr + r)) tp=$((tp + p))
printf '%-26s %9d %9d\n' total "$tr" "$tp"

if [ $leave = 0 ]; then
	"$SPAWNER_ROOT/scripts/cluster-down.sh" >/dev/null
	echo "# cluster torn down"
fi
