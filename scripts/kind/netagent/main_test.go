package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mkNode(name, cidr, ip string) node {
	var n node
	n.Metadata.Name = name
	n.Spec.PodCIDR = cidr
	if cidr != "" {
		n.Spec.PodCIDRs = []string{cidr}
	}
	if ip != "" {
		n.Status.Addresses = append(n.Status.Addresses, struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		}{"Hostname", name}, struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		}{"InternalIP", ip})
	}
	return n
}

func TestPlanRoutesOtherNodesPodCIDRsViaTheirInternalIP(t *testing.T) {
	nodes := []node{
		mkNode("w2", "10.244.2.0/24", "172.18.0.4"),
		mkNode("cp", "10.244.0.0/24", "172.18.0.2"),
		mkNode("w1", "10.244.1.0/24", "172.18.0.3"),
		mkNode("joining", "", "172.18.0.5"), // no pod CIDR yet: left out
	}
	own, routes, err := plan(nodes, "w1")
	if err != nil {
		t.Fatal(err)
	}
	if own.String() != "10.244.1.0/24" {
		t.Errorf("own pod CIDR = %v, want 10.244.1.0/24", own)
	}
	want := []route{
		{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParseAddr("172.18.0.2")},
		{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParseAddr("172.18.0.4")},
	}
	if len(routes) != len(want) {
		t.Fatalf("routes = %v, want %v", routes, want)
	}
	for i := range want {
		if routes[i] != want[i] {
			t.Errorf("route %d = %v, want %v", i, routes[i], want[i])
		}
	}
}

func TestPlanFailsWhenTheNodeIsMissing(t *testing.T) {
	if _, _, err := plan([]node{mkNode("cp", "10.244.0.0/24", "172.18.0.2")}, "w1"); err == nil {
		t.Fatal("plan for a node that is not in the list succeeded")
	}
}

func TestCNIConfigUsesTheNodesPodCIDR(t *testing.T) {
	var conf struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(cniConfig(netip.MustParsePrefix("10.244.3.0/24")), &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Plugins) != 2 || conf.Plugins[0].Type != "ptp" || conf.Plugins[1].Type != "portmap" {
		t.Fatalf("plugins = %+v, want ptp then portmap", conf.Plugins)
	}
	if got := conf.Plugins[0].IPAM.Ranges[0][0].Subnet; got != "10.244.3.0/24" {
		t.Errorf("IPAM subnet = %q, want 10.244.3.0/24", got)
	}
}

func TestWriteIfChangedRewritesOnlyOnChange(t *testing.T) {
	p := filepath.Join(t.TempDir(), "net.d", "x.conflist")
	for i, c := range []struct {
		data    string
		changed bool
	}{{"a", true}, {"a", false}, {"b", true}} {
		got, err := writeIfChanged(p, []byte(c.data))
		if err != nil || got != c.changed {
			t.Errorf("write %d (%q) = %v, %v; want changed=%v", i, c.data, got, err, c.changed)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "b" {
		t.Errorf("file holds %q, want b", b)
	}
}

func TestConfigFromEnvRejectsBadInput(t *testing.T) {
	env := map[string]string{"NODE_NAME": "w1", "POD_SUBNET": "10.244.0.0/16", "CONTROL_PLANE_ENDPOINT": "cp:6443"}
	get := func(k string) string { return env[k] }
	c, err := configFromEnv(get)
	if err != nil || c.APIServer != "https://cp:6443" || c.CNIConfDir != "/etc/cni/net.d" {
		t.Fatalf("good env: %+v, %v", c, err)
	}
	for k, v := range map[string]string{"NODE_NAME": "", "POD_SUBNET": "fd00::/64", "CONTROL_PLANE_ENDPOINT": ""} {
		old := env[k]
		env[k] = v
		if _, err := configFromEnv(get); err == nil {
			t.Errorf("%s=%q accepted", k, v)
		} else if !strings.Contains(err.Error(), k[:4]) && k != "CONTROL_PLANE_ENDPOINT" {
			t.Errorf("%s=%q: error %q does not name the variable", k, v, err)
		}
		env[k] = old
	}
	env["POD_SUBNET"] = "not-a-cidr"
	if _, err := configFromEnv(get); err == nil {
		t.Error("POD_SUBNET=not-a-cidr accepted")
	}
}
