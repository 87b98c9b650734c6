#!/usr/bin/env bash
# kind-node-image.sh: makes kind's node image for the pinned Kubernetes without any registry, and
# prints its tag (localhost/spawner-kind-node:<k8s version>-<key>) as the last line of stdout.
# Needs a running Docker engine (scripts/kind-docker.sh start) and root (debootstrap).
#
# Everything comes from Debian packages and the Go module proxy:
#   rootfs      debootstrap (Debian bookworm, minbase) with what kind's node entrypoint needs:
#               systemd, containerd, runc, CNI plugins, iptables, conntrack, iproute2, ...
#   Kubernetes  the local cluster's multi-call k8s binary, etcd and crictl (scripts/lib.sh
#               ensure_binaries: built once, shared) + kubeadm (tool module scripts/kind/kubeadm)
#   images      every image `kubeadm init` and kind's create pull, pre-loaded into the node's
#               containerd under the names kubeadm asks for (`kubeadm config images list`):
#               kube-apiserver/-controller-manager/-scheduler/-proxy = one image on the rootfs
#               (kube-proxy needs iptables) holding k8s and four symlinks; etcd, CoreDNS (tool
#               module scripts/kind/coredns) and pause (spawner-pause) packed by scripts/imagebuilder;
#               the node-network agent (scripts/kind/netagent) on the rootfs (it runs ip/iptables).
#   node        kind's own images/base/files (entrypoint, systemd units, containerd config, kubelet
#               drop-ins; from the pinned kind module, scripts/kind/go.mod) on the rootfs, plus the
#               project's CNI and storage manifests in /kind/manifests (docs/kind.md says why).
#
# Cached in $SPAWNER_CACHE/kind/<key>/ (node-image.tar, logs): <key> hashes every pin
# (the local cluster's binaries' key, the kind, kubeadm and CoreDNS modules, the agent's source,
# this script), so the image is rebuilt exactly when a pin changes. A cached image only needs
# `docker load` (a new Docker data-root after `make down`). kubeadm and CoreDNS are cached in
# $SPAWNER_CACHE/kind/bin/<name>-<hash of their module>, the Debian rootfs in
# $SPAWNER_CACHE/kind/rootfs-<suite>-<hash>.tar. `--rebuild` ignores the image cache.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

rebuild=0
for a in "$@"; do
	case "$a" in
	--rebuild) rebuild=1 ;;
	-h | --help) sed -n '2,26p' "$0"; exit 0 ;;
	*) die "unknown option $a (usage: kind-node-image.sh [--rebuild])" ;;
	esac
done

KS=$SPAWNER_ROOT/scripts/kind
SUITE=bookworm
# The packages kind's base image installs that Debian has (kind builds containerd, runc, crictl
# and the CNI plugins itself; here they are Debian's, crictl is the local cluster's).
PACKAGES=systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,e2fsprogs
PATHENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

docker_works || die "kind-node-image.sh needs a working Docker engine (scripts/kind-docker.sh start)."
go_ok
# ensure_binaries only when something is missing: it also rewrites the kubectl wrapper's default
# kubeconfig, which belongs to whoever brought a cluster up last.
if ! { [ -x "$(bin_dir)/k8s" ] && [ -x "$(bin_dir)/etcd" ] && [ -x "$(bin_dir)/crictl" ]; }; then ensure_binaries >&2; fi
BIN=$(bin_dir)
K8S_V=$(k8s_version)
mod_version() { awk -v m="$2" '($1==m && $2 ~ /^v/) || ($1=="require" && $2==m) {print ($1==m ? $2 : $3); exit}' "$1"; }
[ "$(mod_version "$KS/kubeadm/go.mod" k8s.io/kubernetes)" = "$K8S_V" ] ||
	die "scripts/kind/kubeadm/go.mod pins a different k8s.io/kubernetes than scripts/localcluster/go.mod ($K8S_V); keep them in step."
KIND_V=$(mod_version "$KS/go.mod" sigs.k8s.io/kind)
COREDNS_V=$(mod_version "$KS/coredns/go.mod" github.com/coredns/coredns)

key=$({
	cache_key
	cat "$KS"/go.mod "$KS"/go.sum "$KS"/kubeadm/go.mod "$KS"/kubeadm/go.sum "$KS"/coredns/go.mod "$KS"/coredns/go.sum
	find "$KS/netagent" -name '*.go' -not -name '*_test.go' | sort | xargs cat
	cat "$0"
	go env GOVERSION
} | sha256sum | cut -c1-12)
KD=$SPAWNER_CACHE/kind/$key
IMAGE=localhost/spawner-kind-node:$K8S_V-$key
mkdir -p "$KD/bin"

if [ $rebuild = 0 ]; then
	if docker image inspect "$IMAGE" >/dev/null 2>&1; then
		log "node image $IMAGE is in Docker" >&2
		echo "$IMAGE"
		exit 0
	fi
	if [ -f "$KD/node-image.tar" ]; then
		log "loading the cached node image ($KD/node-image.tar)" >&2
		docker load -i "$KD/node-image.tar" >/dev/null || die "docker load -i $KD/node-image.tar failed"
		echo "$IMAGE"
		exit 0
	fi
fi
exec 3>&1 1>&2 # from here on, progress goes to stderr; the tag alone to fd 3
T0=$SECONDS
log "building kind node image $IMAGE (Kubernetes $K8S_V, kind $KIND_V, CoreDNS $COREDNS_V; cache $KD)"

# ---------------------------------------------------------------------------- binaries
# tool_bin <name> <module dir> <ldflags> <package>: builds a pinned tool once per module state and
# Go version into $SPAWNER_CACHE/kind/bin/<name>-<hash>, links it into $KD/bin.
tool_bin() {
	local n=$1 dir=$2 ld=$3 pkg=$4 h f
	h=$(cat "$dir/go.mod" "$dir/go.sum" <(go env GOVERSION) | sha256sum | cut -c1-12)
	f=$SPAWNER_CACHE/kind/bin/$n-$h
	mkdir -p "$(dirname "$f")"
	[ -x "$f" ] || { _build "$n" "$f.log" "$dir" -ldflags "$ld" -o "$f.tmp" "$pkg" && mv "$f.tmp" "$f"; }
	ln -sfn "$f" "$KD/bin/$n"
}
tool_bin kubeadm "$KS/kubeadm" "$(k8s_ldflags)" k8s.io/kubernetes/cmd/kubeadm
tool_bin coredns "$KS/coredns" "-s -w" github.com/coredns/coredns
_build "spawner-kindnet" "$KD/build-kindnet.log" "$KS" -ldflags "-s -w" -o "$KD/bin/spawner-kindnet" ./netagent
KIND_MOD=$(cd "$KS" && GOWORK=off go mod download sigs.k8s.io/kind && GOWORK=off go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
[ -d "$KIND_MOD/images/base/files" ] || die "kind's module has no images/base/files ($KIND_MOD)"

# The image names kubeadm will ask for.
declare -A WANT=()
while read -r ref; do
	case "$ref" in
	*/kube-apiserver:* | */kube-controller-manager:* | */kube-scheduler:* | */kube-proxy:*) WANT[k8s]+=" $ref" ;;
	*/etcd:*) WANT[etcd]=$ref ;;
	*/coredns:*) WANT[coredns]=$ref ;;
	*/pause:*) WANT[pause]=$ref ;;
	*) die "kubeadm lists an image this script does not know how to build: $ref" ;;
	esac
done < <("$KD/bin/kubeadm" config images list --kubernetes-version "$K8S_V" 2>/dev/null)
for w in k8s etcd coredns pause; do
	[ -n "${WANT[$w]:-}" ] || die "\`kubeadm config images list --kubernetes-version $K8S_V\` names no $w image; run it to see why."
done
[ "${WANT[coredns]##*:}" = "$COREDNS_V" ] ||
	die "kubeadm $K8S_V deploys CoreDNS ${WANT[coredns]##*:}, but scripts/kind/coredns pins $COREDNS_V; pin the same version."
# kind's containerd config names its own sandbox image; it is the same pause binary.
SANDBOX=$(awk -F'"' '/sandbox_image/ {print $2; exit}' "$KIND_MOD/images/base/files/etc/containerd/config.toml")

# ---------------------------------------------------------------------------- Debian rootfs
ROOTFS_TAR=$SPAWNER_CACHE/kind/rootfs-$SUITE-$(echo "$PACKAGES" | sha256sum | cut -c1-8).tar
ROOTFS_IMG=localhost/spawner-kind-rootfs:$SUITE-$(basename "$ROOTFS_TAR" .tar | awk -F- '{print $NF}')
if [ ! -f "$ROOTFS_TAR" ]; then
	require_root
	install_missing_packages <<<"debootstrap debootstrap"
	mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2; exit}')
	[ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2; exit}')
	mirror=${mirror:-http://deb.debian.org/debian}
	R=$KD/rootfs
	rm -rf "$R"
	log "debootstrap $SUITE from $mirror (log: $KD/debootstrap.log)"
	debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$R" "$mirror" >"$KD/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$KD/debootstrap.log" >&2; die "debootstrap failed; log: $KD/debootstrap.log"; }
	rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc "$R"/usr/share/man "$R"/usr/share/locale
	tar -C "$R" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
	rm -rf "$R"
	log "rootfs cached in $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi
docker image inspect "$ROOTFS_IMG" >/dev/null 2>&1 ||
	docker import -c "ENV $PATHENV" "$ROOTFS_TAR" "$ROOTFS_IMG" >/dev/null || die "docker import $ROOTFS_TAR failed"

# ---------------------------------------------------------------------------- component images
"$SPAWNER_ROOT/scripts/build-images.sh" --no-load spawner-pause >/dev/null
IB=$SPAWNER_ROOT/_output/bin/imagebuilder
C=$KD/ctx
rm -rf "$C" && mkdir -p "$C"
cp "$BIN/k8s" "$KD/bin/spawner-kindnet" "$C/"
dbuild() { # dbuild <tag> <Dockerfile text>: docker build (legacy builder: no COPY --chmod) in $C
	printf '%s\n' "$2" | docker build -q -f - -t "$1" "$C" >/dev/null || die "docker build of $1 failed"
}
log "building the component images"
# shellcheck disable=SC2086 # WANT[k8s] is several image names, split on purpose
set -- ${WANT[k8s]}
dbuild "$1" "FROM $ROOTFS_IMG
COPY k8s /usr/local/bin/k8s
RUN for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do ln -s k8s /usr/local/bin/\$c; done"
for t in "${@:2}"; do docker tag "$1" "$t"; done
AGENT_IMG=localhost/spawner-kindnet:$key
dbuild "$AGENT_IMG" "FROM $ROOTFS_IMG
COPY spawner-kindnet /usr/local/bin/spawner-kindnet
ENTRYPOINT [\"/usr/local/bin/spawner-kindnet\"]"
# etcd and CoreDNS: one static binary each, like spawner's own images. Both run as root:
# kubeadm's etcd writes to a root-owned hostPath, and CoreDNS binds port 53.
"$IB" -binary "$BIN/etcd" -name etcd -uid 0 -tag "${WANT[etcd]}" -out "$KD/etcd.tar" >/dev/null
"$IB" -binary "$KD/bin/coredns" -name coredns -uid 0 -tag "${WANT[coredns]}" -out "$KD/coredns.tar" >/dev/null
for t in etcd coredns; do docker load -i "$KD/$t.tar" >/dev/null || die "docker load -i $KD/$t.tar failed"; done
docker load -i "$SPAWNER_ROOT/_output/images/spawner-pause.tar" >/dev/null
docker tag localhost/spawner-pause:dev "${WANT[pause]}"
docker tag localhost/spawner-pause:dev "$SANDBOX"
# shellcheck disable=SC2206 # WANT[k8s] is several image names, split on purpose
IMGS=(${WANT[k8s]} "${WANT[etcd]}" "${WANT[coredns]}" "${WANT[pause]}" "$SANDBOX" "$AGENT_IMG")
docker save -o "$KD/images.tar" "${IMGS[@]}"

# ---------------------------------------------------------------------------- manifests
N=$KD/ctx-node
rm -rf "$N" && mkdir -p "$N/bin" "$N/manifests"
# The CNI manifest kind applies at create: "template" and "patch" are kind's markers for filling in
# the pod subnet and the API server's address (actions/installcni in kind's module).
cat >"$N/manifests/default-cni.yaml" <<EOF
# spawner's node-network agent (scripts/kind/netagent). kind: would you kindly template this file
# kind: would you kindly patch this file
apiVersion: v1
kind: ServiceAccount
metadata: {name: spawner-kindnet, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: spawner-kindnet}
rules:
  - {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: spawner-kindnet}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: spawner-kindnet}
subjects: [{kind: ServiceAccount, name: spawner-kindnet, namespace: kube-system}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: spawner-kindnet, namespace: kube-system, labels: {app: spawner-kindnet}}
spec:
  selector: {matchLabels: {app: spawner-kindnet}}
  template:
    metadata: {labels: {app: spawner-kindnet}}
    spec:
      hostNetwork: true
      serviceAccountName: spawner-kindnet
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      containers:
        - name: spawner-kindnet
          image: $AGENT_IMG
          imagePullPolicy: Never
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
            - {name: POD_SUBNET, value: "{{ .PodSubnet }}"}
          securityContext:
            capabilities: {add: [NET_ADMIN, NET_RAW]}
          resources: {requests: {cpu: 10m, memory: 20Mi}, limits: {memory: 50Mi}}
          volumeMounts:
            - {name: cni-conf, mountPath: /etc/cni/net.d}
            - {name: xtables-lock, mountPath: /run/xtables.lock}
            - {name: lib-modules, mountPath: /lib/modules, readOnly: true}
      volumes:
        - {name: cni-conf, hostPath: {path: /etc/cni/net.d, type: DirectoryOrCreate}}
        - {name: xtables-lock, hostPath: {path: /run/xtables.lock, type: FileOrCreate}}
        - {name: lib-modules, hostPath: {path: /lib/modules}}
EOF
# No dynamic volume provisioning (spawner needs no volumes): a default StorageClass for volumes
# created by hand (local PersistentVolumes), so a PVC waits for one instead of failing.
cat >"$N/manifests/default-storage.yaml" <<'EOF'
# spawner's kind node image ships no volume provisioner (docs/kind.md): claims bind to PersistentVolumes made by hand.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF

# ---------------------------------------------------------------------------- node image
cp -r "$KIND_MOD/images/base/files" "$N/files"
chmod -R u+w,go-w,a+rX "$N/files"
chmod 0755 "$N"/files/usr/local/bin/* "$N"/files/kind/bin/*
cp -L "$KD/bin/kubeadm" "$BIN/k8s" "$BIN/crictl" "$N/bin/"
log "building the node layer"
# The steps of kind's images/base/Dockerfile, with Debian's containerd, runc and CNI plugins.
cat >"$N/Dockerfile" <<EOF
FROM $ROOTFS_IMG
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
COPY bin/kubeadm bin/k8s /usr/bin/
COPY bin/crictl /usr/local/bin/crictl
COPY manifests/ /kind/manifests/
RUN chmod 755 /kind /kind/bin /kind/bin/* \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
    /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
    /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo ReadKMsg=no >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests /opt/cni/bin \\
 && ln -s /usr/bin/containerd /usr/local/bin/containerd \\
 && for p in host-local loopback ptp portmap; do cp /usr/lib/cni/\$p /opt/cni/bin/; done \\
 && ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
    | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \\
 && ln -s k8s /usr/bin/kubelet && ln -s k8s /usr/bin/kubectl \\
 && echo $K8S_V > /kind/version \\
 && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]
EOF
# restrict_oom_score_adj: on a host without CAP_SYS_RESOURCE nothing in the node may lower an
# oom_score_adj; containerd then clamps a pod's request instead of failing it (kind's entrypoint
# does the same for rootless nodes).
docker build -q -t "$IMAGE-base" "$N" >/dev/null || die "docker build of the node layer failed"

# Pre-load the images into the node's containerd, as `kind build node-image` does: containerd runs
# in a container of the image (--init reaps it when it stops), imports them without unpacking and
# pins them so the kubelet's image GC keeps them.
log "pre-loading ${#IMGS[@]} images into the node's containerd"
cid=$(docker run -d --init --privileged --entrypoint=sleep -v "$KD/images.tar:/kind/images.tar:ro" "$IMAGE-base" infinity)
trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
docker exec "$cid" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 & echo $! >/tmp/containerd.pid'
for _ in $(seq 1 30); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 1; done
docker exec "$cid" ctr -n k8s.io images import --all-platforms --no-unpack --digests /kind/images.tar >/dev/null ||
	die "importing the images into the node's containerd failed"
docker exec "$cid" bash -c 'for i in $(ctr -n k8s.io images ls -q); do ctr -n k8s.io images label "$i" io.cri-containerd.pinned=pinned >/dev/null; done'
docker exec "$cid" bash -c 'kill $(cat /tmp/containerd.pid); while kill -0 $(cat /tmp/containerd.pid) 2>/dev/null; do sleep 0.2; done; rm -f /tmp/containerd.*'
docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' "$cid" "$IMAGE" >/dev/null
docker rm -f "$cid" >/dev/null
trap - EXIT
docker rmi "$IMAGE-base" >/dev/null 2>&1 || true
log "saving the node image to $KD/node-image.tar"
docker save -o "$KD/node-image.tar.tmp" "$IMAGE" && mv "$KD/node-image.tar.tmp" "$KD/node-image.tar"
rm -rf "$C" "$N" "$KD/images.tar" "$KD/etcd.tar" "$KD/coredns.tar"
log "node image $IMAGE built in $((SECONDS - T0))s ($(du -h "$KD/node-image.tar" | cut -f1))"
echo "$IMAGE" >&3
