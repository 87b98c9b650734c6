//go:build cluster

package crd

import (
	"context"
	"strings"
	"testing"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/generated/clientset/versioned"
)

func pool(name string) *spawnerv1.BackendPool {
	return &spawnerv1.BackendPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       spawnerv1.BackendPoolSpec{Template: demoTemplate()},
	}
}

// TestPoolDefaultsScaleAndColumns: a BackendPool gets the slab's defaults
// plus one replica, `kubectl scale bpool` works through the scale
// subresource (spec.replicas and the status it reports), and `kubectl get
// bpool` shows desired, ready, starting and claimed counts.
func TestPoolDefaultsScaleAndColumns(t *testing.T) {
	cfg := clustertest.Config(t)
	clustertest.EnsureCRD(t, cfg)
	ns := clustertest.Namespace(t, cfg)
	client := versioned.NewForConfigOrDie(cfg).SpawnerV1().BackendPools(ns)
	ctx := context.Background()

	created, err := client.Create(ctx, pool("rooms"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if created.Spec.Replicas == nil || *created.Spec.Replicas != 1 || created.Spec.HTTPPort != 8080 ||
		created.Spec.GracePeriodSeconds == nil || *created.Spec.GracePeriodSeconds != 300 {
		t.Errorf("defaults not applied: replicas %v, httpPort %d, gracePeriodSeconds %v",
			created.Spec.Replicas, created.Spec.HTTPPort, created.Spec.GracePeriodSeconds)
	}

	// What `kubectl scale bpool rooms --replicas=7` does.
	scale, err := client.GetScale(ctx, "rooms", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("GetScale: %v", err)
	}
	scale.Spec.Replicas = 7
	if _, err := client.UpdateScale(ctx, "rooms", scale, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("UpdateScale: %v", err)
	}
	got, err := client.Get(ctx, "rooms", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.DesiredReplicas() != 7 {
		t.Fatalf("spec.replicas %d after scaling to 7", got.DesiredReplicas())
	}
	// A negative count is refused by the schema.
	bad := &autoscalingv1.Scale{ObjectMeta: scale.ObjectMeta, Spec: autoscalingv1.ScaleSpec{Replicas: -1}}
	bad.ResourceVersion = ""
	if _, err := client.UpdateScale(ctx, "rooms", bad, metav1.UpdateOptions{}); err == nil {
		t.Errorf("scaling to -1 was accepted")
	}

	got.Status.Replicas, got.Status.ReadyReplicas, got.Status.StartingReplicas, got.Status.ClaimedReplicas = 5, 4, 1, 3
	got.Status.Selector = spawnerv1.LabelPool + "=rooms"
	if _, err := client.UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("UpdateStatus: %v", err)
	}
	scale, err = client.GetScale(ctx, "rooms", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if scale.Status.Replicas != 5 || scale.Status.Selector != spawnerv1.LabelPool+"=rooms" {
		t.Errorf("scale status %+v, want 5 replicas and the pool's selector", scale.Status)
	}

	// What `kubectl get bpool` prints.
	names, rows := clustertest.Table(t, kubernetes.NewForConfigOrDie(cfg), ns, "backendpools", "")
	if got := strings.Join(names, ","); got != "Name,Desired,Ready,Starting,Claimed,Age" {
		t.Fatalf("columns %s, want Name,Desired,Ready,Starting,Claimed,Age", got)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rows))
	}
	cells := rows[0]
	// JSON numbers decode as float64.
	if cells[1] != float64(7) || cells[2] != float64(4) || cells[3] != float64(1) || cells[4] != float64(3) {
		t.Errorf("row %v, want desired 7, ready 4, starting 1, claimed 3", cells)
	}
}
