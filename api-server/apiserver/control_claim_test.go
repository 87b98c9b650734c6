package apiserver

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func TestPoolSpawnValidation(t *testing.T) {
	for body, want := range map[string]string{
		`{"pool":"rooms","image":"x"}`:             "image: Forbidden",
		`{"pool":"rooms","port":8081}`:             "port: Forbidden",
		`{"pool":"rooms","args":["x"]}`:            "args: Forbidden",
		`{"pool":"Bad_Name"}`:                      "pool: Invalid",
		`{"pool":"rooms","labels":{"a":"%"}}`:      "labels[a]",
		`{"pool":"rooms","gracePeriodSeconds":-1}`: "gracePeriodSeconds",
	} {
		_, _, rerr := parseSpawn(strings.NewReader(body), "ns", "salt", "hash")
		if rerr == nil || rerr.status != 422 || !strings.Contains(rerr.msg, want) {
			t.Errorf("%s: %v, want 422 mentioning %q", body, rerr, want)
		}
	}
	req, slab, rerr := parseSpawn(strings.NewReader(`{"pool":"rooms","key":"doc","gracePeriodSeconds":7,"labels":{"team":"a"}}`), "ns", "salt", "hash")
	if rerr != nil {
		t.Fatal(rerr)
	}
	replicas := int32(2)
	pool := &spawnerv1.BackendPool{ObjectMeta: metav1.ObjectMeta{Name: "rooms"}, Spec: spawnerv1.BackendPoolSpec{
		Replicas: &replicas, HTTPPort: 8081,
		Template: spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: "demo"}}},
	}}
	if rerr := fromPool(slab, pool, req); rerr != nil {
		t.Fatal(rerr)
	}
	if slab.Spec.Template.Containers[0].Image != "demo" || slab.Spec.HTTPPort != 8081 || slab.Spec.Key != "doc" ||
		*slab.Spec.GracePeriodSeconds != 7 || slab.Spec.Template.Metadata.Labels["team"] != "a" {
		t.Errorf("spec %+v", slab.Spec)
	}
	if name, bound := spawnerv1.PodNameOf(slab); bound || name != "" || slab.Annotations[spawnerv1.AnnotationPool] != "rooms" {
		t.Errorf("a new pool backend is claiming (unbound): got %q bound %v, annotations %v", name, bound, slab.Annotations)
	}
	if pool.Spec.Template.Metadata.Labels != nil {
		t.Errorf("fromPool changed the pool's template: %v", pool.Spec.Template.Metadata.Labels)
	}
}
