#!/usr/bin/env bash
# test-localcluster.sh (make test): end-to-end test of the local cluster.
#
# Full cycle (when no cluster is up): snapshot the host, bring the local cluster up from nothing,
# build and import a locally built image (localhost/spawner-hello:dev), run a Pod from it with
# imagePullPolicy: Never, wait for Running, curl it by pod IP from the host, tear the cluster down,
# then CHECK that no process, mount, network namespace, iptables chain, nft table, network
# interface (cni0, veth*), kubepods cgroup, sysctl change or host path it created is left, by
# diffing host snapshots taken before `up` and after `down`.
#
# Reuse (when a cluster is already up): runs the same Pod checks on it, deletes its Pod, and leaves
# the cluster running (no teardown checks, since the cluster is not ours to stop).
#
# SPAWNER_TEST_KEEP=1 keeps a failed full-cycle cluster up for debugging.
# Exits non-zero with a sentence naming what failed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

POD=spawner-localcluster-test
fail() { echo "FAIL: test-localcluster: $*" >&2; exit 1; }

running=0
if [ -f "$CD/mode" ]; then
	if [ "$(cat "$CD/mode")" = kind ] || pid_of kube-apiserver >/dev/null; then running=1; fi
fi

if [ $running = 1 ]; then
	echo "==> a cluster is already up ($(cat "$CD/mode")): reusing it, running the Pod checks only, and leaving it up"
	full=0
else
	full=1
	export SPAWNER_CLUSTER=local
	ensure_packages # installing packages is not a change this test undoes; do it before the snapshot
	if [ -d "$CD" ]; then
		echo "==> leftover state in $CD from an earlier run; cleaning it up first"
		"$SPAWNER_ROOT/scripts/cluster-down.sh" >/dev/null || fail "cluster-down.sh could not clean up the leftover state in $CD"
	fi
	SNAP=$(mktemp -d /tmp/spawner-test-localcluster.XXXXXX)
	host_snapshot >"$SNAP/before"
	on_exit() {
		local rc=$?
		if [ $rc != 0 ] && [ -d "$CD" ]; then
			if [ "${SPAWNER_TEST_KEEP:-0}" = 1 ]; then
				echo "==> SPAWNER_TEST_KEEP=1: leaving the failed cluster up; logs in $LOGS" >&2
			else
				echo "==> test failed; tearing the cluster down (logs were in $LOGS)" >&2
				mkdir -p "$SNAP/logs" && cp -r "$LOGS/." "$SNAP/logs/" 2>/dev/null && echo "==> copied the logs to $SNAP/logs" >&2
				"$SPAWNER_ROOT/scripts/cluster-down.sh" >&2 || true
			fi
		fi
		exit $rc
	}
	trap on_exit EXIT
	t0=$SECONDS
	"$SPAWNER_ROOT/scripts/cluster-up.sh" || fail "cluster-up.sh failed (see its message above)"
	echo "==> cluster up in $((SECONDS - t0))s"
fi

# shellcheck disable=SC2034 # read by lib.sh (kc)
BIN=$(cat "$CD/bin-dir" 2>/dev/null || bin_dir)
[ "$(cat "$CD/mode")" = local ] || echo "==> note: pod-IP reachability from the host is only checked on the local cluster"

"$SPAWNER_ROOT/scripts/build-images.sh" spawner-hello || fail "building/importing the test image localhost/spawner-hello:dev failed"

kc delete pod "$POD" --ignore-not-found --wait=true >/dev/null 2>&1 || true
cat <<EOF | kc apply -f - >/dev/null || fail "creating Pod $POD failed"
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: default
  labels: {app: $POD}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: hello
    image: localhost/spawner-hello:dev
    imagePullPolicy: Never
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    ports: [{containerPort: 8080, name: http}]
    securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false}
EOF
t0=$(date +%s.%N)
kc wait --for=jsonpath='{.status.phase}'=Running "pod/$POD" --timeout=120s >/dev/null 2>&1 || {
	kc describe pod "$POD" | tail -n 20 >&2
	fail "Pod $POD (image localhost/spawner-hello:dev, imagePullPolicy Never) did not reach Running within 120s; kubelet log: $LOGS/kubelet.log"
}
echo "==> Pod $POD Running $(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')s after create"

if [ "$(cat "$CD/mode")" = local ]; then
	IP=$(kc get pod "$POD" -o jsonpath='{.status.podIP}')
	[ -n "$IP" ] || fail "Pod $POD is Running but has no pod IP"
	out=""
	for _ in $(seq 1 50); do out=$(curl -sS -m 2 "http://$IP:8080/" 2>&1) && break; sleep 0.2; done
	echo "$out" | grep -q "hello from" || fail "curl http://$IP:8080/ from the host did not reach the Pod: $out"
	echo "==> reached the Pod by its IP from the host: $out"
fi

if [ $full = 0 ]; then
	kc delete pod "$POD" --wait=true --timeout=60s >/dev/null || fail "deleting Pod $POD failed"
	echo "PASS: test-localcluster (reused the running cluster; left it up)"
	exit 0
fi

# ---- teardown and leftover checks
# An orphan in the pods' cgroups, as a container whose shim died leaves one (reparented to init,
# unknown to containerd): cluster-down.sh must stop it too. It is named like the pause process so
# the host snapshot counts it.
orphan_dir=$(mktemp -d /tmp/spawner-orphan.XXXXXX)
cp "$(command -v sleep)" "$orphan_dir/spawner-pause"
for c in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/kubepods; do
	[ -d "$c" ] || continue
	mkdir -p "$c/spawner-orphan-test"
	# started from a subshell that exits, so init (not this script) reaps it
	("$orphan_dir/spawner-pause" 600 >/dev/null 2>&1 & echo $! >"$orphan_dir/pid")
	orphan=$(cat "$orphan_dir/pid")
	echo "$orphan" >"$c/spawner-orphan-test/cgroup.procs" || fail "cannot move the orphan test process into $c"
	echo "==> orphan test process $orphan placed in $c/spawner-orphan-test"
	break
done
pids=$(cat "$PIDS"/*.pid 2>/dev/null | tr '\n' ' ')
"$SPAWNER_ROOT/scripts/cluster-down.sh" || fail "cluster-down.sh failed"
trap - EXIT
host_snapshot >"$SNAP/after"
problems=()
for p in $pids; do
	kill -0 "$p" 2>/dev/null && problems+=("process $p ($(cat "/proc/$p/comm" 2>/dev/null)) started by cluster-up.sh is still running")
done
[ -z "${orphan:-}" ] || ! kill -0 "$orphan" 2>/dev/null || problems+=("the orphan test process $orphan in the pods' cgroups is still running")
[ ! -e "$CD" ] || problems+=("state directory $CD still exists")
if ! diff -u "$SNAP/before" "$SNAP/after" >"$SNAP/diff"; then
	while read -r line; do problems+=("host differs after down: $line"); done < <(grep -E '^[-+][^-+]' "$SNAP/diff")
fi
if [ ${#problems[@]} != 0 ]; then
	printf '  %s\n' "${problems[@]}" >&2
	fail "the cluster left things behind after cluster-down.sh (snapshots: $SNAP/before, $SNAP/after)"
fi
rm -rf "$SNAP" "$orphan_dir"
echo "PASS: test-localcluster (full cycle: up, local image Pod Running, pod IP reachable, down left nothing behind)"
