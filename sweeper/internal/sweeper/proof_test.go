package sweeper

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// withProof is the pod as the controller builds it (the proof in the
// sidecar's env) after the informer's transform.
func withProof(p *corev1.Pod, proof string) *corev1.Pod {
	p.Spec.Containers = []corev1.Container{
		{Name: "app", Image: "app", Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: "not-the-sidecars"}}},
		{Name: spawnerv1.SidecarContainerName, Image: "sidecar", Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: proof}}},
	}
	obj, _ := trimPod(p)
	return obj.(*corev1.Pod)
}

// The cached pod keeps the sidecar's proof (and nothing else of the spec).
func TestTrimPodKeepsTheRouterProof(t *testing.T) {
	p := withProof(testPod(0), "p1")
	if len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Image != "" || len(p.Spec.Containers[0].Env) != 1 {
		t.Fatalf("trimmed spec %+v", p.Spec)
	}
	s := New(Config{NodeName: "n"}, nil, nil, nil, nil)
	if tg, ok := s.targetOf(p); !ok || tg.proof != "p1" {
		t.Fatalf("target %+v %v", tg, ok)
	}
}

// A sidecar with a proof is followed with it: the stream (Ready fast path)
// and the fresh read before a sweep both carry the header, so a fenced
// backend still becomes Ready and is still swept.
func TestStreamsCarryThePodsRouterProof(t *testing.T) {
	h := newHarness(t, Event{Ready: false})
	h.sidecar.proof = "proof-b1"
	h.s.syncPod(withProof(testPod(h.sidecar.port()), "proof-b1"))
	h.s.mu.Lock()
	b := h.s.backends["ns/b1"]
	h.s.mu.Unlock()
	h.waitState(b, Event{LastActive: h.t0})
	h.sidecar.set(Event{Ready: true, LastActive: h.t0})
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.clock.Advance(testGrace)
	if p := h.phase(); p != lifecycle.Swept {
		t.Fatalf("phase %s at the deadline, want Swept", p)
	}
	h.sidecar.mu.Lock()
	defer h.sidecar.mu.Unlock()
	if h.sidecar.denied != 0 {
		t.Fatalf("%d requests without the proof", h.sidecar.denied)
	}
}

// Without the right proof the sidecar's 403 is an unreachable sidecar: the
// backend is neither made Ready nor swept from it.
func TestWrongProofIsNeverReadyNorIdle(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	h.sidecar.proof = "the-real-one"
	h.s.syncPod(withProof(testPod(h.sidecar.port()), "a-stale-one"))
	h.waitFor("refused attempts", func() bool {
		h.sidecar.mu.Lock()
		defer h.sidecar.mu.Unlock()
		return h.sidecar.denied >= 3
	})
	h.clock.Advance(time.Hour)
	if p := h.phase(); p != lifecycle.Running {
		t.Fatalf("phase %s from a sidecar that refused every request", p)
	}
}
