package kubeclient

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`

func TestFlagsRaiseClientGoRateLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	var o Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--kubeconfig", path}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.Config("spawner-test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QPS <= 5 || cfg.Burst <= 10 {
		t.Errorf("QPS/Burst = %v/%d, want above client-go's 5/10", cfg.QPS, cfg.Burst)
	}
	if cfg.Host != "https://127.0.0.1:6443" || cfg.UserAgent != "spawner-test" {
		t.Errorf("host %q user agent %q", cfg.Host, cfg.UserAgent)
	}
}

func TestBadSettingsAreReportedNotPanicked(t *testing.T) {
	o := Options{Kubeconfig: filepath.Join(t.TempDir(), "missing"), QPS: 1, Burst: 1}
	if _, err := o.Config("x"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing kubeconfig: err = %v, want one naming the file", err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(path, []byte(kubeconfig), 0o600)
	o = Options{Kubeconfig: path, QPS: 0, Burst: 1}
	if _, err := o.Config("x"); err == nil {
		t.Error("zero QPS accepted")
	}
}

func TestNewClientsBuildsBothOnOneConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{Kubeconfig: path, QPS: 100, Burst: 200}
	var seen *rest.Config
	c, err := NewClients(&o, "spawner-test", func(cfg *rest.Config) (string, error) { seen = cfg; return "spawner", nil })
	if err != nil {
		t.Fatal(err)
	}
	if c.Kube == nil || c.Spawner != "spawner" || seen != c.Config || c.Config.UserAgent != "spawner-test" {
		t.Errorf("clients %+v", c)
	}
	if _, err := NewClients(&o, "x", func(*rest.Config) (int, error) { return 0, errors.New("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a failing spawner client gave %v", err)
	}
	bad := Options{Kubeconfig: filepath.Join(t.TempDir(), "missing")}
	if _, err := NewClients(&bad, "x", func(*rest.Config) (int, error) { return 0, nil }); err == nil {
		t.Error("a missing kubeconfig gave no error")
	}
}
