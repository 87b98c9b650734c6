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
		o.Sidecar.MemoryRequest.String() != "4Mi" {
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
		{"--sidecar-cpu-request=lots"},
		{"--startup-timeout=-1s"},
	} {
		c, _ := parse(t, args...)
		if _, err := c.Options(); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
