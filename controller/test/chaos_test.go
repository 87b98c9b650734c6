//go:build cluster

package test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
)

// TestChaosKilledLeaders: two controller processes with leader election;
// while 50 backends start, the leader is SIGKILLed three times (a fresh
// standby is started each time). Every slab must end with exactly one pod,
// ever (a watch records every pod UID), all reach Running, and no pod is
// orphaned. Then, with every controller dead, deleting slabs still deletes
// their pods: the garbage collector follows the owner references.
func TestChaosKilledLeaders(t *testing.T) {
	const n = 50
	e := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var (
		mu   sync.Mutex
		uids = map[string]map[types.UID]bool{}
	)
	w, err := e.kube.CoreV1().Pods(e.ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			if p, ok := ev.Object.(*corev1.Pod); ok {
				mu.Lock()
				if uids[p.Name] == nil {
					uids[p.Name] = map[types.UID]bool{}
				}
				uids[p.Name][p.UID] = true
				mu.Unlock()
			}
		}
	}()
	defer w.Stop()

	procs := map[string]*clustertest.Process{}
	start := func(id string) {
		procs[id] = e.startController(
			"--leader-elect=true", "--leader-election-namespace="+e.ns, "--leader-election-identity="+id,
			"--leader-election-lease-duration=4s", "--leader-election-renew-deadline=3s", "--leader-election-retry-period=500ms",
			"--startup-timeout=5m")
	}
	start("c0")
	start("c1")

	began := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			e.newSlab(fmt.Sprintf("chaos-%02d", i), nil)
		}()
	}
	wg.Wait()

	leader := func() string {
		var id string
		clustertest.Eventually(t, 30*time.Second, "a leader among the live controllers", func() (bool, error) {
			l, err := e.kube.CoordinationV1().Leases(e.ns).Get(ctx, "spawner-controller", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			if l.Spec.HolderIdentity == nil || procs[*l.Spec.HolderIdentity] == nil {
				return false, nil
			}
			id = *l.Spec.HolderIdentity
			return true, nil
		})
		return id
	}
	for k := 0; k < 3; k++ {
		id := leader()
		time.Sleep(1500 * time.Millisecond) // let it create some pods and write some status
		procs[id].Kill()
		delete(procs, id)
		t.Logf("%5.1fs: SIGKILLed leader %s", time.Since(began).Seconds(), id)
		start(fmt.Sprintf("c%d", k+2))
	}
	t.Logf("final leader: %s", leader())

	clustertest.Eventually(t, 4*time.Minute, fmt.Sprintf("all %d slabs Running", n), func() (bool, error) {
		list, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		running := 0
		for _, s := range list.Items {
			switch s.Status.Phase {
			case lifecycle.Failed:
				t.Fatalf("slab %s failed: %s", s.Name, describe(&s))
			case lifecycle.Running:
				running++
			}
		}
		return running == n, fmt.Errorf("%d of %d Running", running, n)
	})
	t.Logf("%5.1fs: all %d Running", time.Since(began).Seconds(), n)

	slabs, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := e.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byUID := map[types.UID]*spawnerv1.SessionLivedBackend{}
	for i := range slabs.Items {
		byUID[slabs.Items[i].UID] = &slabs.Items[i]
	}
	owned := map[string]int{}
	for _, p := range pods.Items {
		ref := metav1.GetControllerOf(&p)
		if ref == nil || byUID[ref.UID] == nil || byUID[ref.UID].Name != p.Name {
			t.Errorf("orphan pod %s (controller %+v)", p.Name, ref)
			continue
		}
		owned[p.Name]++
	}
	if len(pods.Items) != n || len(owned) != n {
		t.Errorf("%d pods for %d slabs (%d owned), want exactly one each", len(pods.Items), n, len(owned))
	}
	mu.Lock()
	for name, set := range uids {
		if len(set) != 1 {
			t.Errorf("pod %s existed with %d UIDs: a second pod was created", name, len(set))
		}
	}
	mu.Unlock()

	// Garbage collection without any controller.
	for id, p := range procs {
		p.Kill()
		delete(procs, id)
	}
	for i := 0; i < 10; i++ {
		name := fmt.Sprintf("chaos-%02d", i)
		if err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	clustertest.Eventually(t, 90*time.Second, "pods of 10 deleted slabs collected", func() (bool, error) {
		pods, err := e.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		left := 0
		for _, p := range pods.Items {
			if p.Name < fmt.Sprintf("chaos-%02d", 10) {
				left++
			}
		}
		return left == 0, fmt.Errorf("%d left", left)
	})
}
