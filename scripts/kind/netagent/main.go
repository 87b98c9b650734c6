// Command spawner-kindnet is the node-network agent of spawner's locally built kind node image:
// the small part of kind's kindnetd that spawner needs, on Debian's CNI plugins, standard
// library only. One runs on every node (a hostNetwork DaemonSet, /kind/manifests/default-cni.yaml
// in the node image). Every few seconds it lists the Nodes and
//
//   - writes this node's CNI config (ptp + host-local on the node's spec.podCIDR, plus portmap),
//     which is what turns the node Ready;
//   - routes every other node's pod CIDR via that node's InternalIP (all kind nodes share one
//     Docker bridge, so a plain route is enough: no overlay);
//   - masquerades traffic from pods to anything outside the cluster's pod subnet.
//
// Why not kindnetd: the kindnetd of kind v0.32.0 and later needs a pseudo-version of
// sigs.k8s.io/kube-network-policies that the Go module proxy refuses, and no kindnetd is
// published as a module at all (see docs/kind.md). Network policies are not enforced.
//
// Configuration (environment): NODE_NAME (downward API), POD_SUBNET (the cluster's pod subnet;
// kind templates it in), CONTROL_PLANE_ENDPOINT (host:port of the API server; kind patches it
// in so the agent does not wait for kube-proxy), CNI_CONF_DIR (default /etc/cni/net.d).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

const (
	saDir        = "/var/run/secrets/kubernetes.io/serviceaccount"
	confName     = "10-spawner-kindnet.conflist"
	masqComment  = "spawner-kindnet: masquerade pod traffic leaving the pod subnet"
	syncInterval = 5 * time.Second
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		log.Error("bad configuration", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("agent stopped", "err", err)
		os.Exit(1)
	}
}

// Config is what the agent needs to know about its node and cluster.
type Config struct {
	NodeName    string
	PodSubnet   netip.Prefix
	APIServer   string // https://host:port
	CNIConfDir  string
	TokenFile   string
	CAFile      string
	IPCommand   string
	IPTablesCmd string
}

func configFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		NodeName:    getenv("NODE_NAME"),
		CNIConfDir:  getenv("CNI_CONF_DIR"),
		TokenFile:   saDir + "/token",
		CAFile:      saDir + "/ca.crt",
		IPCommand:   "ip",
		IPTablesCmd: "iptables",
	}
	if c.NodeName == "" {
		return c, errors.New("NODE_NAME is not set (set it from the downward API: spec.nodeName)")
	}
	if c.CNIConfDir == "" {
		c.CNIConfDir = "/etc/cni/net.d"
	}
	p, err := netip.ParsePrefix(getenv("POD_SUBNET"))
	if err != nil {
		return c, fmt.Errorf("POD_SUBNET %q is not an IPv4 CIDR: %v", getenv("POD_SUBNET"), err)
	}
	if !p.Addr().Is4() {
		return c, fmt.Errorf("POD_SUBNET %s: only IPv4 clusters are supported", p)
	}
	c.PodSubnet = p.Masked()
	ep := getenv("CONTROL_PLANE_ENDPOINT")
	if ep == "" {
		host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return c, errors.New("neither CONTROL_PLANE_ENDPOINT nor KUBERNETES_SERVICE_HOST/PORT is set")
		}
		ep = net.JoinHostPort(host, port)
	}
	c.APIServer = "https://" + ep
	return c, nil
}

// node is the part of a v1.Node the agent reads.
type node struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR  string   `json:"podCIDR"`
		PodCIDRs []string `json:"podCIDRs"`
	} `json:"spec"`
	Status struct {
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

// podCIDR is the node's IPv4 pod CIDR, or an invalid prefix if it has none yet.
func (n *node) podCIDR() netip.Prefix {
	for _, s := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

func (n *node) internalIP() netip.Addr {
	for _, a := range n.Status.Addresses {
		if a.Type != "InternalIP" {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

// route is one pod CIDR reached through another node.
type route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// plan computes, from the Node list, this node's pod CIDR and the routes to the other nodes'
// pod CIDRs. A node without a pod CIDR or InternalIP yet is left out (the next sync adds it).
func plan(nodes []node, self string) (own netip.Prefix, routes []route, err error) {
	found := false
	for i := range nodes {
		n := &nodes[i]
		if n.Metadata.Name == self {
			found = true
			own = n.podCIDR()
			continue
		}
		dst, via := n.podCIDR(), n.internalIP()
		if dst.IsValid() && via.IsValid() {
			routes = append(routes, route{Dst: dst, Via: via})
		}
	}
	if !found {
		return own, nil, fmt.Errorf("node %q is not in the Node list", self)
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Dst.String() < routes[j].Dst.String() })
	return own, routes, nil
}

// cniConfig is the conflist for a node's pod CIDR: ptp (a veth and a /32 host route per pod, no
// bridge), host-local IPAM, and portmap for hostPort.
func cniConfig(podCIDR netip.Prefix) []byte {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "spawner-kindnet",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": false,
				"mtu":    1500,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n')
}

// writeIfChanged writes data to path atomically (temp file + rename) unless it already holds it.
func writeIfChanged(path string, data []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, path)
}

type agent struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	routes map[netip.Prefix]netip.Addr // routes this agent installed
	masqOK bool
}

func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return fmt.Errorf("reading the service account CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("%s holds no PEM certificate", cfg.CAFile)
	}
	a := &agent{
		cfg: cfg, log: log, routes: map[netip.Prefix]netip.Addr{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
	log.Info("starting", "node", cfg.NodeName, "podSubnet", cfg.PodSubnet.String(), "apiServer", cfg.APIServer)
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		if err := a.sync(ctx); err != nil {
			log.Warn("sync failed; retrying", "err", err, "in", syncInterval.String())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (a *agent) listNodes(ctx context.Context) ([]node, error) {
	tok, err := os.ReadFile(a.cfg.TokenFile) // re-read: projected tokens rotate
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.cfg.APIServer+"/api/v1/nodes", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	req.Header.Set("Accept", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v1/nodes: %s", resp.Status)
	}
	var list struct {
		Items []node `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("decoding the Node list: %w", err)
	}
	return list.Items, nil
}

func (a *agent) sync(ctx context.Context) error {
	nodes, err := a.listNodes(ctx)
	if err != nil {
		return err
	}
	own, routes, err := plan(nodes, a.cfg.NodeName)
	if err != nil {
		return err
	}
	if !own.IsValid() {
		return fmt.Errorf("node %s has no IPv4 pod CIDR yet", a.cfg.NodeName)
	}
	changed, err := writeIfChanged(filepath.Join(a.cfg.CNIConfDir, confName), cniConfig(own))
	if err != nil {
		return fmt.Errorf("writing the CNI config: %w", err)
	}
	if changed {
		a.log.Info("wrote CNI config", "podCIDR", own.String())
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, r := range routes {
		want[r.Dst] = r.Via
		// replace every time (cheap): a node container that restarted lost its routes, and
		// one whose IP changed needs the new gateway.
		if err := a.cmd(ctx, a.cfg.IPCommand, "route", "replace", r.Dst.String(), "via", r.Via.String()); err != nil {
			return err
		}
		if a.routes[r.Dst] != r.Via {
			a.log.Info("route set", "dst", r.Dst.String(), "via", r.Via.String())
		}
		a.routes[r.Dst] = r.Via
	}
	for dst, via := range a.routes {
		if _, ok := want[dst]; ok {
			continue
		}
		// The node is gone: its route goes too (an error means it is already gone).
		_ = a.cmd(ctx, a.cfg.IPCommand, "route", "del", dst.String(), "via", via.String())
		delete(a.routes, dst)
		a.log.Info("route removed", "dst", dst.String())
	}
	if !a.masqOK {
		rule := []string{"POSTROUTING", "-s", a.cfg.PodSubnet.String(), "!", "-d", a.cfg.PodSubnet.String(),
			"-m", "comment", "--comment", masqComment, "-j", "MASQUERADE"}
		if a.cmd(ctx, a.cfg.IPTablesCmd, append([]string{"-w", "5", "-t", "nat", "-C"}, rule...)...) != nil {
			if err := a.cmd(ctx, a.cfg.IPTablesCmd, append([]string{"-w", "5", "-t", "nat", "-A"}, rule...)...); err != nil {
				return err
			}
			a.log.Info("masquerade rule added", "podSubnet", a.cfg.PodSubnet.String())
		}
		a.masqOK = true
	}
	return nil
}

func (a *agent) cmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
