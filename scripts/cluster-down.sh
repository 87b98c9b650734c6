#!/usr/bin/env bash
# cluster-down.sh [--keep-state]: stops spawner's cluster and leaves the machine as it was found.
#
# local: deletes all pods while the kubelet still runs (so it unmounts volumes and tears down pod
#   networking), stops exactly the PIDs recorded under $SPAWNER_CLUSTER_DIR/pids, removes remaining
#   sandboxes through CRI, unmounts what is left below the state dir, removes the KUBE-*/CNI-*
#   iptables chains that were not there before `up`, deletes cni0 and leftover veths, restores the
#   sysctls the kubelet and the bridge plugin changed, removes kubepods cgroups and host paths the
#   components created, and finally deletes $SPAWNER_CLUSTER_DIR.
#   --keep-state keeps $SPAWNER_CLUSTER_DIR (certificates, etcd data, images, logs) for a faster next up.
# kind: kind delete cluster --name spawner, then stops the Docker engine if kind-up started it
#   (scripts/kind-docker.sh stop: dockerd by its PID, its iptables chains, bridges, FORWARD policy).
# Safe to run after a half-failed up, or twice. The build cache ($SPAWNER_CACHE) and the Debian
# packages are kept.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

keep=0
for a in "$@"; do
	case "$a" in
	--keep-state) keep=1 ;;
	--purge) keep=0 ;; # the default; accepted for symmetry
	*) die "unknown option $a (usage: cluster-down.sh [--keep-state])" ;;
	esac
done

cluster_lock
if [ ! -d "$CD" ]; then
	echo "==> no cluster state in $CD; nothing to do"
	exit 0
fi

if [ "$(cat "$CD/mode" 2>/dev/null)" = kind ]; then
	KIND=$(command -v kind || echo "$SPAWNER_CACHE/bin/kind")
	if ! docker_works; then
		warn "no working Docker engine: no kind cluster to delete"
	elif [ -x "$KIND" ] || command -v "$KIND" >/dev/null 2>&1; then
		log "deleting kind cluster $SPAWNER_KIND_NAME"
		"$KIND" delete cluster --name "$SPAWNER_KIND_NAME" || die "kind delete cluster --name $SPAWNER_KIND_NAME failed"
	else
		warn "kind is not installed; cannot delete kind cluster $SPAWNER_KIND_NAME"
	fi
	# the Docker engine, only if scripts/kind-docker.sh started it (an existing one is left alone)
	"$SPAWNER_ROOT/scripts/kind-docker.sh" stop || die "stopping the Docker engine kind-up started failed"
	rm -rf "$CD"
	log "kind cluster removed"
	exit 0
fi
require_root

BIN=$(cat "$CD/bin-dir" 2>/dev/null || bin_dir 2>/dev/null || true)

# 1. workloads first, while the kubelet runs: stop the controllers that would recreate pods,
#    then delete every pod and wait until the kubelet has confirmed each one.
if pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null && [ -x "$BIN/k8s" ]; then
	stop_pid kube-controller-manager
	stop_pid kube-scheduler
	if [ -n "$(kc get pods -A -o name 2>/dev/null)" ]; then
		log "deleting all pods (kubelet still running)"
		timeout 90 "$BIN/k8s" kubectl --kubeconfig "$KUBECONFIG_PATH" delete pods --all -A --grace-period=3 --wait=true --timeout=80s >/dev/null 2>&1 ||
			warn "not every pod was deleted in time; removing the rest through CRI"
	fi
	# the kubelet unmounts volumes shortly after the pod object is gone
	for _ in $(seq 1 50); do grep -q " $CD/kubelet/pods/" /proc/self/mounts || break; sleep 0.2; done
fi

# 2. stop components (reverse start order), removing sandboxes while containerd still runs
stop_pid kube-controller-manager
stop_pid kube-scheduler
stop_pid kubelet
if pid_of containerd >/dev/null && [ -x "$BIN/crictl" ]; then
	if [ -n "$("$BIN/crictl" --runtime-endpoint "unix://$SOCK" pods -q 2>/dev/null)" ]; then
		log "removing remaining pod sandboxes through CRI"
		"$BIN/crictl" --runtime-endpoint "unix://$SOCK" --timeout 30s rmp -a -f >/dev/null 2>&1 || warn "crictl rmp -a -f failed"
	fi
fi
stop_pid kube-proxy
stop_pid kube-apiserver
stop_pid etcd
stop_pid containerd
# containerd-shims are reparented to init; they are ours when they serve our containerd's socket
for p in $(pgrep -f "containerd-shim.*-address $SOCK" 2>/dev/null); do
	log "stopping leftover containerd-shim (pid $p)"
	kill -KILL "$p" 2>/dev/null || true
done
# A container process whose shim is gone (killed above, or died) was reparented to init and keeps
# running: after a down of a node with ~200 pods, where `crictl rmp` ran out of time, 77
# spawner-pause processes were left this way. Every process in a kubepods cgroup that this
# cluster's kubelet put in the top-level kubepods cgroups is ours (kind's nodes nest theirs under
# docker/, not matched here), even when those cgroups already existed before `up`: an earlier
# cluster's leftover kubepods cgroup is reused by the next kubelet, and skipping it left 6 orphans.
pod_cgroup_procs() {
	local c
	for c in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods*; do
		[ -d "$c" ] || continue
		find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -un
}
for _ in 1 2 3 4 5; do
	procs=$(pod_cgroup_procs)
	[ -n "$procs" ] || break
	log "stopping $(echo "$procs" | wc -l) container process(es) left in the pods' cgroups"
	# shellcheck disable=SC2086 # one PID a word
	kill -KILL $procs 2>/dev/null || true
	sleep 0.2
done
for f in "$PIDS"/*.pid; do [ -e "$f" ] && rm -f "$f"; done

# 3. host cleanup: everything below was recorded by cluster-up.sh before it changed anything
if [ -x "$BIN/k8s" ]; then "$BIN/k8s" kube-proxy --cleanup >/dev/null 2>&1 || true; fi

# mounts below the state dir (kubelet volumes, its rshared root-dir bind, overlay rootfs, shm)
grep -oE " ${CD}[^ ]*" /proc/self/mounts | sed 's/^ //' | sort -r | while read -r m; do
	umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
done
# network namespaces created by CNI for our pods
if [ -d /run/netns ]; then
	for ns in /run/netns/cni-*; do
		[ -e "$ns" ] || continue
		grep -qx "$(basename "$ns")" "$BEFORE/netns" 2>/dev/null && continue
		umount "$ns" 2>/dev/null; rm -f "$ns"
	done
fi

# iptables chains: remove jumps into our chains, then flush and delete them
chains_before() { cat "$BEFORE/chains" 2>/dev/null; }
for ipt in $(ipt_cmds); do
	for t in "${IPT_TABLES[@]}"; do
		rules=$($ipt -w 5 -t "$t" -S 2>/dev/null) || continue
		mine=$(echo "$rules" | awk '$1=="-N" && ($2 ~ /^(KUBE|CNI)-/) {print $2}' | while read -r c; do
			chains_before | grep -qx "$ipt $t $c" || echo "$c"; done)
		[ -n "$mine" ] || continue
		echo "$rules" | grep '^-A ' | while read -r line; do
			target=$(echo "$line" | grep -oE -- '-j [^ ]+' | awk '{print $2}')
			from=$(echo "$line" | awk '{print $2}')
			if echo "$mine" | grep -qx -- "$target" && ! echo "$mine" | grep -qx -- "$from"; then
				eval "$ipt -w 5 -t $t -D ${line#-A }" 2>/dev/null || true
			fi
		done
		for c in $mine; do $ipt -w 5 -t "$t" -F "$c" 2>/dev/null || true; done
		for c in $mine; do $ipt -w 5 -t "$t" -X "$c" 2>/dev/null || warn "cannot delete $ipt -t $t chain $c"; done
	done
done

# network interfaces: cni0 and veths that were not there before
for l in $(ip -o link show | awk -F': ' '{sub(/@.*/,"",$2); print $2}'); do
	case "$l" in cni0 | veth*) ;; *) continue ;; esac
	grep -qx "$l" "$BEFORE/links" 2>/dev/null && continue
	ip link del "$l" 2>/dev/null || true
done

# sysctls back to their recorded values
if [ -f "$BEFORE/sysctl" ]; then
	while IFS='=' read -r k v; do
		[ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -qw "$k=$v" >/dev/null 2>&1 || warn "cannot restore sysctl $k=$v"
	done <"$BEFORE/sysctl"
fi

# kubepods cgroups (created by the kubelet with the cgroupfs driver)
for c in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods*; do
	[ -d "$c" ] || continue
	grep -qx "$c" "$BEFORE/cgroups" 2>/dev/null && continue
	find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || warn "cannot remove cgroup $c"
done

# host paths the components created (only those that did not exist before up)
if [ -f "$BEFORE/paths" ]; then
	for p in "${HOST_PATHS[@]}"; do
		[ -e "$p" ] || continue
		grep -qx "$p" "$BEFORE/paths" && continue
		case "$p" in
		/run/netns) rmdir "$p" 2>/dev/null || true ;; # only if empty
		*) rm -rf "$p" ;;
		esac
	done
fi

if [ $keep = 1 ]; then
	rm -rf "$CD/run" "$BEFORE"
	log "cluster stopped; state kept in $CD (--keep-state)"
else
	rm -rf "$CD"
	log "cluster stopped and $CD removed"
fi
