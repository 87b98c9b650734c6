package server

import (
	"bytes"
	"context"
	"flag"
	"os/exec"
	"strings"
	"testing"
	"time"

	"spawner.dev/sidecar/proxy"
)

func parseFlags(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("spawner-sidecar", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	c.AddFlags(fs)
	return c, fs.Parse(args)
}

func TestFlagDefaults(t *testing.T) {
	c, err := parseFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{ServePort: 9090, UpstreamPort: 8080, StatusPort: 9091, Drain: 10 * time.Second,
		ProcNet: "/proc/net", BodyIdleTimeout: proxy.DefaultBodyIdleTimeout}
	if c.ServePort != want.ServePort || c.UpstreamPort != want.UpstreamPort || c.StatusPort != want.StatusPort ||
		c.Drain != want.Drain || c.ProcNet != want.ProcNet || c.BodyIdleTimeout != want.BodyIdleTimeout ||
		c.WSIdle != 0 || c.IgnoreRequests || c.Host != "" || c.StatusBlockFile != "" || c.RouterProof != "" {
		t.Errorf("defaults %+v", c)
	}
}

func TestFlagsFromEnvironmentAndCommandLine(t *testing.T) {
	t.Setenv("SIDECAR_SERVE_PORT", "7000")
	t.Setenv("SIDECAR_WS_IDLE_SECONDS", "30")
	t.Setenv("SIDECAR_COUNT_REQUESTS", "false")
	t.Setenv("SIDECAR_DRAIN_SECONDS", "3")
	t.Setenv("SIDECAR_LISTEN_HOST", "127.0.0.2")
	t.Setenv("SIDECAR_ROUTER_PROOF", "proof")
	c, err := parseFlags(t, "--serve-port=7001", "--drain-seconds=4", "-v")
	if err != nil {
		t.Fatal(err)
	}
	if c.ServePort != 7001 || c.WSIdle != 30*time.Second || !c.IgnoreRequests || c.Drain != 4*time.Second ||
		c.Host != "127.0.0.2" || c.RouterProof != "proof" || c.Log.Verbosity != 4 {
		t.Errorf("got %+v", c)
	}
	c, err = parseFlags(t, "--count-requests=true", "--body-idle-timeout-seconds=2")
	if err != nil {
		t.Fatal(err)
	}
	if c.IgnoreRequests || c.BodyIdleTimeout != 2*time.Second {
		t.Errorf("command line did not win: %+v", c)
	}
}

func TestBadFlagsAreRefusedWithASentence(t *testing.T) {
	for _, tc := range []struct{ arg, want string }{
		{"--ws-idle-seconds=-1", "must be at least 0, not -1"},
		{"--body-idle-timeout-seconds=0", "must be at least 1, not 0"},
		{"--drain-seconds=soon", `"soon" is not a number of seconds`},
		{"--serve-port=x", "invalid value"},
	} {
		if _, err := parseFlags(t, tc.arg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.arg, err, tc.want)
		}
	}
	t.Setenv("SIDECAR_UPSTREAM_PORT", "eighty")
	t.Setenv("SIDECAR_BODY_IDLE_TIMEOUT_SECONDS", "0")
	c, err := parseFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), `SIDECAR_UPSTREAM_PORT="eighty" is not a number`) ||
		!strings.Contains(err.Error(), `SIDECAR_BODY_IDLE_TIMEOUT_SECONDS="0": must be at least 1, not 0`) {
		t.Errorf("Run with bad environment: %v", err)
	}
}

// The sidecar runs in every backend pod and carries no Kubernetes code:
// nothing it builds from may import k8s.io (docs/architecture.md).
func TestSidecarImportsNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "spawner.dev/sidecar").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.Contains(p, "k8s.io") {
			t.Errorf("the sidecar imports %s", p)
		}
	}
}
