package reconciler

import (
	"flag"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return c, nil
}

func TestFlagDefaults(t *testing.T) {
	t.Setenv("SPAWNER_SIDECAR_IMAGE", "")
	c, _ := parse(t)
	o, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	if o.Sidecar.Image != DefaultSidecarImage || o.Sidecar.PullPolicy != corev1.PullIfNotPresent ||
		o.StartupTimeout != 5*time.Minute || o.FailedRetention != 10*time.Minute || o.Sidecar.CPURequest.String() != "1m" ||
		o.Sidecar.MemoryRequest.String() != "4Mi" || o.PoolMaxStarting != 10 {
		t.Errorf("defaults %+v", o)
	}
	if !c.LeaderElect || c.LeaderElectionID != "spawner-controller" || c.Kube.QPS <= 5 || c.Workers < 1 {
		t.Errorf("config defaults %+v", c)
	}
}

func TestFlagsFromEnvAndValidation(t *testing.T) {
	t.Setenv("SPAWNER_SIDECAR_IMAGE", "localhost/spawner-sidecar:dev")
	c, _ := parse(t)
	if c.SidecarImage != "localhost/spawner-sidecar:dev" {
		t.Errorf("sidecar image %q, want from env", c.SidecarImage)
	}
	for _, args := range [][]string{
		{"--sidecar-image-pull-policy=Sometimes"},
		{"--sidecar-image="},
		{"--workers=0"},
		{"--pool-max-starting=-1"},
		{"--sidecar-cpu-request=lots"},
		{"--startup-timeout=-1s"},
		{"--public-host-suffix=backends.example.com"}, // no base URL to take the scheme from
		{"--public-base-url=ftp://x"},
		{"--public-base-url=https://x", "--public-host-suffix=localhost"},
	} {
		c, _ := parse(t, args...)
		if _, err := c.Options(); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestPublicURLBothModes: status.url is the backend's public URL as
// spawnerv1.PublicRoutes builds it, in path and in host mode.
func TestPublicURLBothModes(t *testing.T) {
	for _, c := range []struct{ base, suffix, want string }{
		{"", "", ""},
		{"https://spawner.example.com/", "", "https://spawner.example.com/p/slab-x/"},
		{"https://backends.example.com", "backends.example.com", "https://slab-x.backends.example.com/"},
		{"http://192.0.2.2:30081", "backends.test", "http://slab-x.backends.test:30081/"},
	} {
		cfg, _ := parse(t, "--public-base-url="+c.base, "--public-host-suffix="+c.suffix)
		o, err := cfg.Options()
		if err != nil {
			t.Fatal(err)
		}
		if got := o.publicURL("slab-x"); got != c.want {
			t.Errorf("base %q suffix %q: %q, want %q", c.base, c.suffix, got, c.want)
		}
	}
}
