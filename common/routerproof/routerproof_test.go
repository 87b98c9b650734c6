package routerproof

import (
	"encoding/base64"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"spawner.dev/common/wire"
)

func TestNewIsRandomAndURLSafe(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		p := New()
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil || len(b) != Size || len(p) != 43 {
			t.Fatalf("%q: %d bytes, %v", p, len(b), err)
		}
		if seen[p] {
			t.Fatalf("%q drawn twice", p)
		}
		seen[p] = true
	}
}

func TestFromPodReadsOnlyTheNamedContainer(t *testing.T) {
	env := func(v string) []corev1.EnvVar {
		return []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: wire.SidecarRouterProofEnv, Value: v}}
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "app", Env: env("from-the-app")},
		{Name: "sidecar", Env: env("right")},
	}}}
	if got := FromPod(pod, "sidecar"); got != "right" {
		t.Errorf("got %q, want the sidecar's value", got)
	}
	if got := FromPod(pod, "missing"); got != "" {
		t.Errorf("no such container: got %q", got)
	}
	pod.Spec.Containers[1].Env = nil
	if got := FromPod(pod, "sidecar"); got != "" {
		t.Errorf("sidecar without the env: got %q (the app's value must not count)", got)
	}
}
