package reconciler

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/routerproof"
)

// TestWarmPodIsABackendPodOwnedByItsPool: a warm pod is what BuildPod makes
// of the pool's spec (app with PORT, sidecar with a proof, restricted
// defaults), but owned by the pool, without a backend label (so the sweeper
// never follows it), with the pool and template-hash labels and the startup
// probe on /readyz.
func TestWarmPodIsABackendPodOwnedByItsPool(t *testing.T) {
	replicas := int32(3)
	grace := int64(42)
	pool := &spawnerv1.BackendPool{
		ObjectMeta: metav1.ObjectMeta{Name: "rooms", Namespace: "ns", UID: "pool-uid"},
		Spec: spawnerv1.BackendPoolSpec{
			Replicas: &replicas, HTTPPort: 8081, GracePeriodSeconds: &grace,
			Template: spawnerv1.BackendPodTemplate{
				Metadata:   spawnerv1.PodMetadata{Labels: map[string]string{"team": "a", spawnerv1.LabelBackend: "forged"}},
				Containers: []corev1.Container{{Name: "app", Image: "demo"}},
			},
		},
	}
	pod := BuildWarmPod(pool, "h1", SidecarOptions{Image: "sidecar"}, AppResources{})
	slabPod := BuildPod(&spawnerv1.SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}, Spec: pool.BackendSpec()}, SidecarOptions{Image: "sidecar"})

	if pod.Name != "" || pod.GenerateName != "rooms-" || pod.Namespace != "ns" {
		t.Errorf("name %q generateName %q namespace %q", pod.Name, pod.GenerateName, pod.Namespace)
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "BackendPool" || ref.UID != "pool-uid" || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		t.Errorf("controller ref %+v, want the pool blocking deletion", ref)
	}
	if v, ok := pod.Labels[spawnerv1.LabelBackend]; ok {
		t.Errorf("warm pod has %s=%q: the sweeper would follow (and sweep) it", spawnerv1.LabelBackend, v)
	}
	if pod.Labels[spawnerv1.LabelPool] != "rooms" || pod.Labels[spawnerv1.LabelPoolTemplateHash] != "h1" ||
		pod.Labels[spawnerv1.LabelManagedBy] != spawnerv1.ManagedByValue || pod.Labels["team"] != "a" {
		t.Errorf("labels %v", pod.Labels)
	}
	if pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds] != "42" {
		t.Errorf("grace annotation %q", pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds])
	}
	if len(pod.Spec.Containers) != 2 || pod.Spec.Containers[1].Name != spawnerv1.SidecarContainerName {
		t.Fatalf("containers %v", pod.Spec.Containers)
	}
	app, sc := pod.Spec.Containers[0], pod.Spec.Containers[1]
	if app.Env[len(app.Env)-1] != (corev1.EnvVar{Name: spawnerv1.PortEnvVar, Value: "8081"}) {
		t.Errorf("app env %v", app.Env)
	}
	if routerproof.FromPod(pod, spawnerv1.SidecarContainerName) == "" {
		t.Errorf("sidecar has no router proof")
	}
	if p := sc.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.IntVal != spawnerv1.SidecarStatusPort {
		t.Errorf("sidecar startup probe %+v, want GET :9091/readyz", p)
	}
	if slabPod.Spec.Containers[1].StartupProbe != nil {
		t.Errorf("a cold backend's sidecar got the warm startup probe")
	}
	if pod.Spec.SecurityContext == nil || sc.SecurityContext == nil || pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restricted defaults or restart policy missing")
	}
}
