//go:build cluster

package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/controller/pool"
)

func (e *env) newPool(name string, replicas int32) *spawnerv1.BackendPool {
	e.t.Helper()
	grace := int64(5)
	p := &spawnerv1.BackendPool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: spawnerv1.BackendPoolSpec{
			Replicas: &replicas,
			HTTPPort: 8080,
			Template: spawnerv1.BackendPodTemplate{
				Containers:                    []corev1.Container{{Name: "app", Image: clustertest.DemoImage, ImagePullPolicy: corev1.PullIfNotPresent}},
				TerminationGracePeriodSeconds: &grace,
			},
		},
	}
	created, err := e.sp.SpawnerV1().BackendPools(e.ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("creating pool %s: %v", name, err)
	}
	return created
}

// poolPods are the live pods labelled with the pool: unclaimed (controlled
// by the pool) and the others.
func (e *env) poolPods(name string) (unclaimed, others []corev1.Pod) {
	e.t.Helper()
	list, err := e.kube.CoreV1().Pods(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: spawnerv1.LabelPool + "=" + name})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if pool.OwnedByPool(&p, name) {
			unclaimed = append(unclaimed, p)
		} else {
			others = append(others, p)
		}
	}
	return unclaimed, others
}

// waitWarm waits until the pool reports n Ready warm pods and the cluster
// has exactly n unclaimed live pods of the current template, all Ready and
// none labelled with a backend (which the sweeper would follow).
func (e *env) waitWarm(name string, n int, timeout time.Duration) []corev1.Pod {
	e.t.Helper()
	var pods []corev1.Pod
	var last string
	clustertest.Eventually(e.t, timeout, fmt.Sprintf("pool %s with %d warm pods", name, n), func() (bool, error) {
		p, err := e.sp.SpawnerV1().BackendPools(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		hash := pool.TemplateHash(p)
		unclaimed, _ := e.poolPods(name)
		pods = unclaimed
		ready := 0
		for i := range unclaimed {
			if pool.WarmReady(&unclaimed[i]) && unclaimed[i].Labels[spawnerv1.LabelPoolTemplateHash] == hash {
				ready++
			}
			if v, ok := unclaimed[i].Labels[spawnerv1.LabelBackend]; ok {
				return false, fmt.Errorf("warm pod %s labelled %s=%s", unclaimed[i].Name, spawnerv1.LabelBackend, v)
			}
		}
		last = fmt.Sprintf("status %+v; %d unclaimed pods, %d ready of the current template", p.Status, len(unclaimed), ready)
		return p.Status.ReadyReplicas == int32(n) && len(unclaimed) == n && ready == n && p.Status.ObservedGeneration == p.Generation, nil
	})
	e.t.Logf("pool %s: %s", name, last)
	return pods
}

func (e *env) poolEventReasons(name string) map[string]int {
	e.t.Helper()
	list, err := e.kube.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=BackendPool,involvedObject.name=" + name,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for _, ev := range list.Items {
		out[ev.Reason]++
	}
	return out
}

// TestPoolKeepsWarmPodsReplacesAndRolls drives a pool through its life
// against the real controller process: it starts replicas warm pods (Ready,
// owned by the pool, never labelled with a backend), follows
// `kubectl scale`, replaces a pod that is taken from it (as a claim does:
// its controller becomes a slab) and one that is deleted, rolls only its
// unclaimed pods when the template changes, and when deleted takes its
// unclaimed pods with it while the taken one keeps running.
func TestPoolKeepsWarmPodsReplacesAndRolls(t *testing.T) {
	e := setup(t)
	e.startController()
	ctx := context.Background()
	pools := e.sp.SpawnerV1().BackendPools(e.ns)

	e.newPool("rooms", 2)
	e.waitWarm("rooms", 2, 90*time.Second)

	// kubectl scale bpool rooms --replicas=3
	kubectl(t, "-n", e.ns, "scale", "bpool", "rooms", "--replicas=3")
	warm := e.waitWarm("rooms", 3, 90*time.Second)
	if r := e.poolEventReasons("rooms"); r["ScaledUp"] == 0 {
		t.Errorf("no ScaledUp event on the pool: %v", r)
	}

	// Take one pod away as a claim does: its controller becomes a slab.
	// (The slab has another name, so the slab reconciler starts its own pod;
	// this test is about the pool.)
	claimer := e.newSlab("claimer", nil)
	taken := warm[0].Name
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := e.pod(taken)
		if err != nil {
			return err
		}
		p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(claimer, spawnerv1.SchemeGroupVersion.WithKind("SessionLivedBackend"))}
		p.Labels[spawnerv1.LabelBackend] = claimer.Name
		_, err = e.kube.CoreV1().Pods(e.ns).Update(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("taking pod %s: %v", taken, err)
	}
	warm = e.waitWarm("rooms", 3, 90*time.Second)
	clustertest.Eventually(t, 30*time.Second, "claimed count 1", func() (bool, error) {
		p, err := pools.Get(ctx, "rooms", metav1.GetOptions{})
		return err == nil && p.Status.ClaimedReplicas == 1, err
	})

	// A warm pod that goes away is replaced.
	if err := e.kube.CoreV1().Pods(e.ns).Delete(ctx, warm[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("deleted warm pod", 60*time.Second, func() error { _, err := e.pod(warm[0].Name); return err })
	warm = e.waitWarm("rooms", 3, 90*time.Second)

	// A template change rolls the unclaimed pods, not the taken one.
	oldNames := map[string]bool{}
	for _, p := range warm {
		oldNames[p.Name] = true
	}
	takenUID := func() types.UID {
		p, err := e.pod(taken)
		if err != nil {
			t.Fatalf("the taken pod %s: %v", taken, err)
		}
		return p.UID
	}
	uid := takenUID()
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := pools.Get(ctx, "rooms", metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Spec.Template.Containers[0].Env = []corev1.EnvVar{{Name: "ROLL", Value: "2"}}
		_, err = pools.Update(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	warm = e.waitWarm("rooms", 3, 120*time.Second)
	for _, p := range warm {
		if oldNames[p.Name] {
			t.Errorf("pod %s of the old template is still in the pool", p.Name)
		}
	}
	if takenUID() != uid {
		t.Errorf("the taken pod was replaced by the roll")
	}
	if r := e.poolEventReasons("rooms"); r["Rolled"] == 0 {
		t.Errorf("no Rolled event on the pool: %v", r)
	}

	// Deleting the pool deletes its unclaimed pods, never the taken one.
	if err := pools.Delete(ctx, "rooms", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 60*time.Second, "the pool's unclaimed pods deleted", func() (bool, error) {
		unclaimed, _ := e.poolPods("rooms")
		return len(unclaimed) == 0, nil
	})
	p, err := e.pod(taken)
	if apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil) || (err == nil && p.UID != uid) {
		t.Fatalf("the taken pod %s went with its pool", taken)
	} else if err != nil {
		t.Fatal(err)
	}
}
