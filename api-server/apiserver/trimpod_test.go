package apiserver

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// TestTrimPodIsIdempotent: the pod informer may hand the transform a pod it
// has already trimmed (client-go's watch-list start does); a second pass must
// keep the router proof and the upstream, or the router sends no proof and
// the sidecar refuses the request (403).
func TestTrimPodIsIdempotent(t *testing.T) {
	for _, pool := range []string{"", "rooms"} {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "b-1", Namespace: "ns", UID: "u1", ResourceVersion: "7",
				Labels: map[string]string{spawnerv1.LabelPool: pool}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "app", Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: "not-the-sidecars"}}},
				{Name: spawnerv1.SidecarContainerName, Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: "proof-1"}}},
			}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.9",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
		once := trimPod(p, "8000")
		if got := once.Annotations[annotationRouterProof]; got != "proof-1" {
			t.Fatalf("pool %q: trimmed once, router proof %q, want proof-1", pool, got)
		}
		twice := trimPod(once.DeepCopy(), "8000")
		if !reflect.DeepEqual(once, twice) {
			t.Errorf("pool %q: trimming twice changed the pod:\nonce  %+v\ntwice %+v", pool, once, twice)
		}
	}
}
