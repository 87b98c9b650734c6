#!/usr/bin/env bash
# kind-docker.sh start|stop|status: the Docker engine kind runs on.
#
#   start   If `docker info` works, uses that engine and changes nothing (prints "external").
#           Otherwise installs Debian's docker.io when dockerd is missing, records the host's
#           network state, and starts dockerd itself with every piece of its state under
#           $SPAWNER_CLUSTER_DIR/docker (data-root, PID file, daemon.json, log in logs/dockerd.log),
#           PID in pids/dockerd.pid. Docker sets iptables' FORWARD policy to DROP when it turns
#           on ip_forward itself; that silently drops the local cluster's pod-to-pod traffic (it is
#           routed through the host), so the policy is put back to what it was.
#   stop    Only for an engine that start started: stops it by its recorded PID and undoes what it
#           left on the host (DOCKER* iptables chains and the rules it added, docker0 and br-*
#           bridges, FORWARD policy, sysctls, paths such as /etc/docker/key.json and /lib/modules).
#   status  prints "external", "ours <pid>" or "none".
#
# This VM's capability bounding set lacks CAP_SYS_RESOURCE, and Docker 20.10 asks for every
# capability for --privileged containers (kind's nodes): runc then fails with "unable to apply caps".
# When the bounding set lacks it, dockerd's default runtime is a small runc wrapper that drops that
# one capability from the OCI spec (written to $SPAWNER_CLUSTER_DIR/docker/runc-no-sys-resource).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DK=$CD/docker
DBEFORE=$DK/host-before
# Paths dockerd (and kind's bind mounts) may create outside the state dir.
DOCKER_HOST_PATHS=(/etc/docker /etc/docker/key.json /var/lib/docker /var/run/docker /run/docker /var/run/docker.sock /lib/modules /var/lib/containerd /run/containerd)

engine_status() {
	local p
	if p=$(pid_of dockerd 2>/dev/null); then echo "ours $p"; return; fi
	if docker_works; then echo external; return; fi
	echo none
}

# cap_sys_resource_missing: bit 24 of the capability bounding set.
cap_sys_resource_missing() {
	local bnd
	bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
	[ $(((16#$bnd >> 24) & 1)) = 0 ]
}

forward_policy() { iptables -w 5 -S FORWARD 2>/dev/null | awk '$1=="-P" {print $3; exit}'; }

record_docker_before() {
	rm -rf "$DBEFORE.tmp" && mkdir -p "$DBEFORE.tmp"
	local t s
	for t in "${IPT_TABLES[@]}"; do iptables -w 5 -t "$t" -S 2>/dev/null | sed "s/^/$t /"; done >"$DBEFORE.tmp/iptables"
	forward_policy >"$DBEFORE.tmp/forward-policy"
	ip -o link show | awk -F': ' '{sub(/@.*/,"",$2); print $2}' >"$DBEFORE.tmp/links"
	for s in "${SYSCTLS[@]}"; do v=$(sysctl -n "$s" 2>/dev/null) && echo "$s=$v"; done >"$DBEFORE.tmp/sysctl"
	for s in "${DOCKER_HOST_PATHS[@]}"; do [ -e "$s" ] && echo "$s"; done >"$DBEFORE.tmp/paths"
	rm -rf "$DBEFORE" && mv "$DBEFORE.tmp" "$DBEFORE"
}

start() {
	local st
	st=$(engine_status)
	case $st in
	external)
		echo external
		return 0
		;;
	ours*) log "dockerd already running (pid ${st#ours })"; return 0 ;;
	esac
	require_root
	mkdir -p "$DK" "$LOGS" "$PIDS"
	install_missing_packages <<'EOF'
docker.io dockerd
jq jq
iptables iptables
iproute2 ip
EOF
	record_docker_before
	local runtime=""
	if cap_sys_resource_missing; then
		cat >"$DK/runc-no-sys-resource" <<'SH'
#!/bin/sh
# runc wrapper (written by scripts/kind-docker.sh): this host's capability bounding set lacks
# CAP_SYS_RESOURCE, but Docker 20.10 asks for it for --privileged containers and `exec --privileged`.
# Drop it from the OCI spec (create/run: <bundle>/config.json; exec: --process <file>), then run runc.
bundle= proc= prev=
for a in "$@"; do
	case $prev in --bundle | -b) bundle=$a ;; --process | -p) proc=$a ;; esac
	case $a in --bundle=*) bundle=${a#--bundle=} ;; --process=*) proc=${a#--process=} ;; esac
	prev=$a
done
strip() {
	[ -f "$1" ] || return 0
	jq "($2 // {}) |= with_entries(.value |= map(select(. != \"CAP_SYS_RESOURCE\")))" "$1" >"$1.nsr" && mv "$1.nsr" "$1"
}
[ -n "$bundle" ] && strip "$bundle/config.json" .process.capabilities
[ -n "$proc" ] && strip "$proc" .capabilities
exec runc "$@"
SH
		chmod 755 "$DK/runc-no-sys-resource"
		runtime=$(printf ',\n  "runtimes": {"runc-nsr": {"path": "%s"}},\n  "default-runtime": "runc-nsr"' "$DK/runc-no-sys-resource")
		log "the capability bounding set lacks CAP_SYS_RESOURCE: dockerd's default runtime drops it ($DK/runc-no-sys-resource)"
	fi
	cat >"$DK/daemon.json" <<EOF
{
  "data-root": "$DK/data",
  "pidfile": "$DK/dockerd.pid"$runtime
}
EOF
	local before_policy
	before_policy=$(cat "$DBEFORE/forward-policy")
	# Not lib.sh's start_bg: dockerd must not inherit the caller's descriptors (a `flock` on a
	# lock file held by the caller would stay locked for dockerd's whole life).
	echo "---- $(date -u +%FT%TZ) starting: dockerd --config-file $DK/daemon.json" >>"$LOGS/dockerd.log"
	(
		# shellcheck disable=SC2045 # fd numbers: no spaces or globs, and a glob would list its own directory fd
		for fd in $(ls "/proc/$BASHPID/fd"); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
		# shellcheck disable=SC2016 # $$ and $@ are the inner sh's
		exec setsid sh -c 'echo $$ >"$0"; exec "$@"' "$PIDS/dockerd.pid" dockerd --config-file "$DK/daemon.json" >>"$LOGS/dockerd.log" 2>&1 </dev/null
	) &
	for _ in $(seq 1 50); do [ -s "$PIDS/dockerd.pid" ] && break; sleep 0.02; done
	log "started dockerd (pid $(cat "$PIDS/dockerd.pid"), log $LOGS/dockerd.log)"
	wait_for dockerd 60 "docker info" docker info
	if [ -n "$before_policy" ] && [ "$(forward_policy)" != "$before_policy" ]; then
		iptables -w 5 -P FORWARD "$before_policy"
		log "dockerd changed iptables' FORWARD policy; put it back to $before_policy (the local cluster routes pod traffic through FORWARD)"
	fi
	log "dockerd $(docker info --format '{{.ServerVersion}}') is up (pid $(pid_of dockerd)), state in $DK"
}

stop() {
	local p
	if ! p=$(pid_of dockerd 2>/dev/null); then
		[ -d "$DBEFORE" ] || return 0 # nothing of ours
	else
		# containers left (kind deletes its nodes before this runs): remove them while dockerd runs
		local ids
		ids=$(docker ps -aq 2>/dev/null || true)
		# shellcheck disable=SC2086 # $ids is a list of container IDs, one word each
		[ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || warn "could not remove containers $ids"
		stop_pid dockerd
	fi
	# shims of dockerd's own containerd are reparented to init when it stops
	local s
	for s in $(pgrep -f "containerd-shim.*-address /var/run/docker/containerd/containerd.sock" 2>/dev/null); do
		kill -KILL "$s" 2>/dev/null || true
	done
	[ -d "$DBEFORE" ] || return 0
	restore_host
	rm -rf "$DK"
	log "dockerd stopped and the host's network state restored"
}

# restore_host undoes what dockerd left: rules it added (those naming DOCKER*, docker0 or a br-
# bridge), its chains, its bridges, the FORWARD policy, sysctls and the paths it created.
restore_host() {
	local t line c
	for t in "${IPT_TABLES[@]}"; do
		{ iptables -w 5 -t "$t" -S 2>/dev/null || true; } | { grep -E '^-A .*(DOCKER|docker0|br-[0-9a-f]{12})' || true; } | while read -r line; do
			grep -qxF -- "$t $line" "$DBEFORE/iptables" && continue
			eval "iptables -w 5 -t $t -D ${line#-A }" 2>/dev/null || true
		done
		for c in $(iptables -w 5 -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^DOCKER/ {print $2}'); do
			grep -qxF -- "$t -N $c" "$DBEFORE/iptables" && continue
			iptables -w 5 -t "$t" -F "$c" 2>/dev/null || true
		done
		for c in $(iptables -w 5 -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^DOCKER/ {print $2}'); do
			grep -qxF -- "$t -N $c" "$DBEFORE/iptables" && continue
			iptables -w 5 -t "$t" -X "$c" 2>/dev/null || warn "cannot delete iptables -t $t chain $c"
		done
	done
	local pol
	pol=$(cat "$DBEFORE/forward-policy" 2>/dev/null)
	[ -z "$pol" ] || [ "$(forward_policy)" = "$pol" ] || iptables -w 5 -P FORWARD "$pol"
	for c in $(ip -o link show | awk -F': ' '{sub(/@.*/,"",$2); print $2}'); do
		case "$c" in docker0 | br-*) ;; *) continue ;; esac
		grep -qx "$c" "$DBEFORE/links" && continue
		ip link del "$c" 2>/dev/null || warn "cannot delete link $c"
	done
	# Sysctls: dockerd turns on forwarding, and kind nodes' kubelets set the kernel tunables of
	# the whole host (vm.overcommit_memory, kernel.panic, ...). A kubelet still running here now
	# belongs to a cluster on the host itself (kind's nodes are gone), which needs the same values:
	# then leave them.
	if pgrep -x kubelet >/dev/null 2>&1; then
		log "a kubelet runs on this host (the local cluster?): leaving sysctls as they are"
	else
		while IFS='=' read -r k v; do
			[ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -qw "$k=$v" >/dev/null 2>&1 || warn "cannot restore sysctl $k=$v"
		done <"$DBEFORE/sysctl"
	fi
	for c in "${DOCKER_HOST_PATHS[@]}"; do
		[ -e "$c" ] || continue
		grep -qx "$c" "$DBEFORE/paths" && continue
		case "$c" in
		/lib/modules) rmdir "$c" 2>/dev/null || true ;; # only the empty mount point kind made
		*) rm -rf "$c" ;;
		esac
	done
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) engine_status ;;
*) die "usage: $(basename "$0") start|stop|status" ;;
esac
