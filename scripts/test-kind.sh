#!/usr/bin/env bash
# test-kind.sh [nodes...] (make test-kind): spawner on kind, end to end, and a leak check.
#
# For each cluster size (default: 1 3; SPAWNER_KIND_NODES semantics: 1 = a single node, N = one
# control-plane node and N-1 workers):
#   1. snapshot what kind and its Docker engine could leave on the host;
#   2. `make up` on kind (scripts/up.sh: Docker engine if there is none, kind, node image, images
#      loaded with `kind load image-archive`, deploy/local through scripts/deploy.sh, a demo
#      backend spawned and its URL reached from this host);
#   3. `make e2e` unchanged (the browser test included) against kind's kubeconfig;
#   4. with two or more workers, the multi-node suite (./e2e/multinode: spread, per-node sweepers,
#      cross-node routing, a worker lost and restarted);
#   5. `make down`, then CHECK that the snapshot equals the one before: no dockerd, containerd or
#      shim of Docker's, no kubectl/kind still pointed at the cluster, no docker0/br-* bridge, no DOCKER* iptables chain or rule, the same FORWARD
#      policy and sysctls, no path Docker or kind created, no state directory.
# It uses its own SPAWNER_CLUSTER_DIR (default /var/lib/spawner-kind) and router host port (default
# 18081), so that it can run on a machine whose local cluster is up. Durations go to $SPAWNER_CACHE/kind/test-kind-<date>.log.
# Exits non-zero with a sentence naming what failed; SPAWNER_TEST_KEEP=1 keeps a failed cluster.
set -euo pipefail
export SPAWNER_CLUSTER_DIR=${SPAWNER_CLUSTER_DIR:-/var/lib/spawner-kind}
export SPAWNER_CLUSTER=kind
# 127.0.0.1:30081 is the local cluster's router NodePort when one runs here (its kube-proxy takes
# localhost NodePorts before Docker's port mapping sees them): publish kind's router elsewhere.
export SPAWNER_KIND_ROUTER_PORT=${SPAWNER_KIND_ROUTER_PORT:-18081}
. "$(dirname "$0")/lib.sh"
require_root
export KUBECONFIG=$KUBECONFIG_PATH PATH=$SPAWNER_CACHE/bin:$PATH

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1 3)
fail() { echo "FAIL: test-kind: $*" >&2; exit 1; }
mkdir -p "$SPAWNER_CACHE/kind"
REPORT=$SPAWNER_CACHE/kind/test-kind-$(date -u +%Y%m%dT%H%M%SZ).log
note() { echo "$*" | tee -a "$REPORT"; }

# kind_snapshot: what a kind cluster and the Docker engine kind-up may start can leave behind.
kind_snapshot() (
	set +e
	ps -eo comm=,args= | awk '$1=="dockerd" || $1=="docker-proxy" || ($1 ~ /^containerd/ && $0 ~ /docker/) {print "process " $1}' | sort | uniq -c
	# kubectl (the multi-call k8s), kind or docker still pointed at this cluster: a port-forward
	# that up.sh or a test left running, say
	for p in /proc/[0-9]*; do
		case "$(cat "$p/comm" 2>/dev/null)" in k8s | kubectl | kind | docker) ;; *) continue ;; esac
		if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "KUBECONFIG=$CD/kubeconfig" || tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$CD"; then
			echo "process $(cat "$p/comm") $(tr '\0' ' ' <"$p/cmdline" | cut -c1-120)"
		fi
	done
	ip -o link show | awk -F': ' '{sub(/@.*/,"",$2); print $2}' | grep -E '^(docker0|br-)' | sed 's/^/link /'
	for t in filter nat mangle raw; do
		iptables -w 5 -t "$t" -S 2>/dev/null | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' | sed "s/^/iptables $t /"
	done
	iptables -w 5 -S FORWARD 2>/dev/null | awk '$1=="-P" {print "forward-policy " $3}'
	for s in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory kernel.panic kernel.panic_on_oops; do
		echo "sysctl $s=$(sysctl -n "$s" 2>/dev/null)"
	done
	for p in /etc/docker/key.json /var/lib/docker /var/run/docker /run/docker /var/run/docker.sock /lib/modules "$CD"; do
		[ -e "$p" ] && echo "path $p"
	done
	grep -E ' (/var/lib/docker|/var/run/docker|'"$CD"')' /proc/self/mounts | awk '{print "mount " $2}'
	command -v kind >/dev/null && docker info >/dev/null 2>&1 && kind get clusters 2>/dev/null | sed 's/^/kind-cluster /'
	true
)

on_exit() {
	local rc=$?
	if [ $rc != 0 ] && [ -d "$CD" ]; then
		if [ "${SPAWNER_TEST_KEEP:-0}" = 1 ]; then
			echo "==> SPAWNER_TEST_KEEP=1: leaving the failed kind cluster up (KUBECONFIG=$KUBECONFIG)" >&2
		else
			echo "==> test failed; tearing the kind cluster down" >&2
			"$SPAWNER_ROOT/scripts/down.sh" >&2 || true
		fi
	fi
	exit $rc
}
trap on_exit EXIT

if [ -d "$CD" ]; then
	echo "==> leftover state in $CD from an earlier run; cleaning it up first"
	"$SPAWNER_ROOT/scripts/down.sh" >/dev/null || fail "down.sh could not clean up the leftover state in $CD"
fi
note "# test-kind.sh on $(hostname), $(nproc) CPUs, $(date -u +%FT%TZ), sizes: ${sizes[*]}"
T_ALL=$SECONDS
for n in "${sizes[@]}"; do
	SNAP=$(mktemp -d /tmp/spawner-test-kind.XXXXXX)
	kind_snapshot >"$SNAP/before"
	t=$SECONDS
	SPAWNER_KIND_NODES=$n "$SPAWNER_ROOT/scripts/up.sh" || fail "make up on kind ($n node(s)) failed"
	note "nodes=$n up (cluster, images, deploy, demo Ready): $((SECONDS - t)) s; $(tr '\n' ' ' <"$CD/kind-timings")"
	t=$SECONDS
	make -C "$SPAWNER_ROOT" --no-print-directory e2e || fail "make e2e on kind ($n node(s)) failed"
	note "nodes=$n make e2e: $((SECONDS - t)) s"
	if [ "$n" -ge 3 ]; then
		t=$SECONDS
		(cd "$SPAWNER_ROOT" && go test -count=1 -tags cluster -timeout 40m -v ./e2e/multinode/) | tee "$SNAP/multinode.log" ||
			fail "the multi-node suite failed on kind ($n nodes); log: $SNAP/multinode.log"
		grep -E '^(=== RUN|--- (PASS|FAIL|SKIP)|    .*(Failed|Ready again))' "$SNAP/multinode.log" | grep -- '---\|Failed\|Ready again' >>"$REPORT" || true
		note "nodes=$n multi-node suite: $((SECONDS - t)) s"
		grep -q -- '--- SKIP' "$SNAP/multinode.log" && fail "a multi-node test skipped itself on a $n-node cluster"
	fi
	t=$SECONDS
	"$SPAWNER_ROOT/scripts/down.sh" || fail "make down after kind ($n node(s)) failed"
	note "nodes=$n down: $((SECONDS - t)) s"
	kind_snapshot >"$SNAP/after"
	if ! diff -u "$SNAP/before" "$SNAP/after" >"$SNAP/diff"; then
		sed -n '3,$p' "$SNAP/diff" | grep '^[-+]' >&2
		fail "make down left the host different from before (lines with + are left over, - are missing); $SNAP/diff"
	fi
	note "nodes=$n leak check: host as before"
done
note "test-kind.sh: all passed in $((SECONDS - T_ALL)) s (report: $REPORT)"
