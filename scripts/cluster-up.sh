#!/usr/bin/env bash
# cluster-up.sh: brings up spawner's Kubernetes cluster and writes its kubeconfig to
# $SPAWNER_CLUSTER_DIR/kubeconfig (default /var/lib/spawner-localcluster/kubeconfig).
#
#   kind   when `docker info` works and `kind` is installed (or SPAWNER_CLUSTER=kind): scripts/kind-up.sh
#   local  otherwise (or SPAWNER_CLUSTER=local): a real single-node cluster on this machine, no Docker:
#          containerd (Debian) + etcd + kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy
#          built from Go modules (scripts/localcluster), all state and logs under $SPAWNER_CLUSTER_DIR.
#
# Idempotent: running it again reuses a running cluster and (re)starts only what is not running.
# Undo with scripts/cluster-down.sh. Details and pitfalls: docs/local-cluster.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mode=$(cluster_mode)
if [ "$mode" = kind ]; then exec "$SPAWNER_ROOT/scripts/kind-up.sh"; fi
require_root
cluster_lock

ensure_packages
ensure_binaries
BIN=$(bin_dir)
K8S_V=$(k8s_version)

# ---------------------------------------------------------------------------- host facts
HOST_IP=${SPAWNER_NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="src") {print $(i+1); exit}}')}
[ -n "$HOST_IP" ] || HOST_IP=$(ip -4 -o addr show scope global | awk '{sub(/\/.*/,"",$4); print $4; exit}')
[ -n "$HOST_IP" ] || die "cannot find this machine's IPv4 address (no default route, no global address); set SPAWNER_NODE_IP."
NODE=$SPAWNER_NODE_NAME
[ -d /sys/fs/cgroup ] || die "/sys/fs/cgroup is missing; the kubelet needs cgroups."

mkdir -p "$CD" "$LOGS" "$PIDS" "$PKI" "$CONF" "$CD/run" "$CD/etcd" "$CD/kubelet" "$CD/pod-logs" "$CD/cni/net.d" "$CD/cni/networks"
echo local >"$CD/mode"
echo "$BIN" >"$CD/bin-dir"
record_host_before

# ---------------------------------------------------------------------------- certificates
# All keys are ECDSA P-256 (fast to generate). Files are only created when missing, so a second
# `up` keeps the CA and every client's identity. Serving certs are renewed if the node IP changed.
gen_pki() {
	cd "$PKI"
	umask 077
	if [ -f host-ip ] && [ "$(cat host-ip)" != "$HOST_IP" ]; then
		log "node IP changed ($(cat host-ip) -> $HOST_IP): renewing serving certificates and kubeconfigs"
		rm -f apiserver.crt kubelet-serving.crt ./*.kubeconfig
	fi
	newkey() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null; }
	ca() { # ca <name> <CN>
		[ -f "$1.crt" ] && return 0
		newkey "$1"
		openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "/CN=$2" -out "$1.crt" 2>/dev/null
	}
	cert() { # cert <name> <subject> <serverAuth|clientAuth> [subjectAltName] [ca]
		local n=$1 subj=$2 eku=$3 san=${4:-} cca=${5:-ca}
		[ -f "$n.crt" ] && return 0
		[ -f "$n.key" ] || newkey "$n"
		{
			echo "basicConstraints=CA:FALSE"
			echo "keyUsage=critical,digitalSignature,keyEncipherment"
			echo "extendedKeyUsage=$eku"
			[ -z "$san" ] || echo "subjectAltName=$san"
		} >"$n.ext"
		openssl req -new -key "$n.key" -subj "$subj" 2>/dev/null |
			openssl x509 -req -CA "$cca.crt" -CAkey "$cca.key" -CAcreateserial -days 3650 -sha256 -extfile "$n.ext" -out "$n.crt" 2>/dev/null
		rm -f "$n.ext"
	}
	ca ca spawner-localcluster-ca
	ca front-proxy-ca spawner-localcluster-front-proxy-ca
	[ -f sa.key ] || { newkey sa && openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null; }
	cert apiserver "/CN=kube-apiserver" serverAuth \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE,DNS:$(hostname),IP:127.0.0.1,IP:$HOST_IP,IP:$SERVICE_IP"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	cert admin "/O=system:masters/CN=spawner-admin" clientAuth
	cert controller-manager "/CN=system:kube-controller-manager" clientAuth
	cert scheduler "/CN=system:kube-scheduler" clientAuth
	cert kube-proxy "/CN=system:kube-proxy" clientAuth
	cert kubelet "/O=system:nodes/CN=system:node:$NODE" clientAuth
	cert kubelet-serving "/CN=$NODE" serverAuth "DNS:$NODE,DNS:localhost,IP:127.0.0.1,IP:$HOST_IP"
	cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
	echo "$HOST_IP" >host-ip
	local k
	for k in admin controller-manager scheduler kube-proxy kubelet; do
		[ -f "$k.kubeconfig" ] && continue
		cat >"$k.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: spawner-local
  cluster:
    certificate-authority-data: $(base64 -w0 ca.crt)
    server: https://$HOST_IP:6443
users:
- name: $k
  user:
    client-certificate-data: $(base64 -w0 "$k.crt")
    client-key-data: $(base64 -w0 "$k.key")
contexts:
- name: spawner-local
  context: {cluster: spawner-local, user: $k}
current-context: spawner-local
EOF
	done
	cp admin.kubeconfig "$KUBECONFIG_PATH.tmp" && mv "$KUBECONFIG_PATH.tmp" "$KUBECONFIG_PATH"
	cd - >/dev/null
}
(gen_pki)
log "certificates and kubeconfigs ready in $PKI"

# ---------------------------------------------------------------------------- configuration files
# write_conf <path> < content: replaces the file only when the content changed (kube-proxy exits
# when its config file changes under it).
write_conf() {
	cat >"$1.tmp"
	if cmp -s "$1.tmp" "$1"; then rm -f "$1.tmp"; else mv "$1.tmp" "$1"; fi
}
write_conf "$CONF/containerd.toml" <<EOF
# containerd config of spawner's local cluster (generated by scripts/cluster-up.sh).
# Its own root, state and socket: the machine's /etc/containerd/config.toml is never used or changed.
version = 2
root = "$CD/containerd"
state = "$CD/run/containerd"
oom_score = 0

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$CD/run/containerd-debug.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    disable_apparmor = true
    # Required on machines that withhold CAP_SYS_RESOURCE (such as this VM): without it runc cannot
    # lower a sandbox's oom_score_adj to -998 and every pod fails with
    # "can't get final child's PID from pipe: EOF". Clamps scores to >= containerd's own (0).
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true   # pod netns under the state dir, not /run/netns
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$CD/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CD/containerd/opt"
EOF

# ptp, not bridge: every pod gets its own host-side veth and /32 route, so a
# pod IP handed out again (host-local IPAM cycles through the /24 within
# minutes when backends come and go) never meets a neighbour entry still
# holding the previous pod's MAC. On a shared bridge such a stale entry drops
# connections to the new pod for 5-8 s (delay_first_probe_time, then three
# unanswered unicast probes) until ARP starts over; the sweeper and the router
# are the first to connect to a new backend and felt exactly that.
rm -f "$CD"/cni/net.d/*.conflist
write_conf "$CD/cni/net.d/10-spawner-ptp.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "spawner",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CD/cni/networks",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF

write_conf "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
failCgroupV1: false          # hybrid cgroup v1 hosts: the kubelet refuses to start otherwise (default true since 1.35)
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDomain: cluster.local
clusterDNS: []               # no CoreDNS: in-cluster clients use KUBERNETES_SERVICE_HOST
resolvConf: /etc/resolv.conf
podLogsDir: $CD/pod-logs
staticPodPath: ""
serializeImagePulls: false
# The default of 110 pods leaves no room for a burst of 100 backends plus the
# system pods and pods still terminating from earlier tests.
maxPods: 250
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
  nodefs.inodesFree: "2%"
EOF

write_conf "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $PKI/kube-proxy.kubeconfig
hostnameOverride: $NODE
clusterCIDR: $CLUSTER_CIDR
bindAddress: 0.0.0.0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
iptables:
  localhostNodePorts: false  # keeps kube-proxy from setting net.ipv4.conf.all.route_localnet=1
conntrack:                   # 0 = leave the host's conntrack sysctls alone
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0               # the default -999 needs CAP_SYS_RESOURCE
EOF

# ---------------------------------------------------------------------------- port conflicts
# check_ports <component> <port...>: a port held by a process that is not ours is a clear error.
check_ports() {
	local n=$1 port line; shift
	for port in "$@"; do
		line=$(ss -Htlnp "sport = :$port" 2>/dev/null | head -n1)
		[ -z "$line" ] || die "port $port, needed by $n, is already in use by another process ($(echo "$line" | grep -o 'users:.*')); stop it or run scripts/cluster-down.sh."
	done
}

# ---------------------------------------------------------------------------- start components
# containerd
if ! pid_of containerd >/dev/null; then
	if [ -S "$SOCK" ] && ctr_ --connect-timeout 1s version >/dev/null 2>&1; then
		die "a containerd not started by cluster-up.sh answers on $SOCK; stop it (or use another SPAWNER_CLUSTER_DIR)."
	fi
	rm -f "$SOCK" "$SOCK.ttrpc"
	start_bg containerd containerd --config "$CONF/containerd.toml"
fi
wait_for containerd 30 "its socket $SOCK" ctr_ --connect-timeout 1s version
# The sandbox (pause) image must be in containerd before the kubelet creates any pod.
images=$(ctr_ -n k8s.io images ls -q)
if ! grep -qx "$PAUSE_IMAGE" <<<"$images"; then
	"$SPAWNER_ROOT/scripts/build-images.sh" --no-load spawner-pause
	ctr_ -n k8s.io images import "$SPAWNER_ROOT/_output/images/spawner-pause.tar" >/dev/null ||
		die "importing $PAUSE_IMAGE into containerd failed; containerd log: $LOGS/containerd.log"
	log "imported $PAUSE_IMAGE"
fi

# etcd: plain HTTP on loopback only
if ! pid_of etcd >/dev/null; then
	check_ports etcd 2379 2380 2381
	start_bg etcd "$BIN/etcd" --name spawner --data-dir "$CD/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster spawner=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
		--log-level warn
fi
wait_for etcd 30 "/health" curl -sf http://127.0.0.1:2381/health

if ! pid_of kube-apiserver >/dev/null; then
	check_ports kube-apiserver 6443
	start_bg kube-apiserver "$BIN/kube-apiserver" --v=1 \
		--etcd-servers=http://127.0.0.1:2379 \
		--bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$HOST_IP" \
		--anonymous-auth=false \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP,Hostname \
		--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
		--allow-privileged=true --endpoint-reconciler-type=lease --cert-dir="$CD/run/apiserver"
fi
wait_for kube-apiserver 90 "/readyz" curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" https://127.0.0.1:6443/readyz

if ! pid_of kube-controller-manager >/dev/null; then
	check_ports kube-controller-manager 10257
	start_bg kube-controller-manager "$BIN/kube-controller-manager" --v=1 \
		--kubeconfig="$PKI/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
		--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --client-ca-file="$PKI/ca.crt" \
		--bind-address=127.0.0.1 --leader-elect=false --cert-dir="$CD/run/kcm" \
		--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
		--use-service-account-credentials=true \
		--allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
		--service-cluster-ip-range="$SERVICE_CIDR" --controllers='*,bootstrapsigner,tokencleaner'
fi
if ! pid_of kube-scheduler >/dev/null; then
	check_ports kube-scheduler 10259
	start_bg kube-scheduler "$BIN/kube-scheduler" --v=1 \
		--kubeconfig="$PKI/scheduler.kubeconfig" \
		--authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
		--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --client-ca-file="$PKI/ca.crt" \
		--bind-address=127.0.0.1 --leader-elect=false --cert-dir="$CD/run/scheduler"
fi
if ! pid_of kubelet >/dev/null; then
	check_ports kubelet 10250 10248
	start_bg kubelet "$BIN/kubelet" --v=1 --config="$CONF/kubelet.yaml" \
		--kubeconfig="$PKI/kubelet.kubeconfig" --root-dir="$CD/kubelet" \
		--hostname-override="$NODE" --node-ip="$HOST_IP" --oom-score-adj=0
fi
if ! pid_of kube-proxy >/dev/null; then
	check_ports kube-proxy 10249 10256
	start_bg kube-proxy "$BIN/kube-proxy" --v=1 --config="$CONF/kube-proxy.yaml"
fi

wait_for kube-controller-manager 60 "/healthz" curl -sfk https://127.0.0.1:10257/healthz
wait_for kube-scheduler 60 "/healthz" curl -sfk https://127.0.0.1:10259/healthz
wait_for kubelet 60 "/healthz" curl -sf http://127.0.0.1:10248/healthz
wait_for kubelet 90 "node $NODE registered" kc get node "$NODE"
wait_for kubelet 120 "node $NODE Ready" kc wait --for=condition=Ready "node/$NODE" --timeout=2s
log "node $NODE is Ready"
wait_for kube-proxy 60 "/healthz" curl -sf http://127.0.0.1:10256/healthz
# Pods are rejected until the controller-manager has created the default ServiceAccount.
wait_for kube-controller-manager 60 "the default ServiceAccount" kc -n default get serviceaccount default
date +%s >"$CD/ready-since"

log "cluster is up: Kubernetes $K8S_V, node $NODE ($HOST_IP), pods $POD_CIDR, services $SERVICE_CIDR"
cat <<EOF
    kubeconfig: $KUBECONFIG_PATH
    use it:     export KUBECONFIG=$KUBECONFIG_PATH PATH=$SPAWNER_CACHE/bin:\$PATH; kubectl get nodes
    logs:       $LOGS/<component>.log      stop: scripts/cluster-down.sh
EOF
