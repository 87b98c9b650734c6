//go:build cluster

package test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/generated/clientset/versioned"
)

// TestThroughputBenchmark measures how fast the controller gives slabs their
// pods: N slabs (default 1000) whose pods the scheduler cannot place
// (nodeSelector nobody matches), so only the controller and the API server
// are measured, not the kubelet. Two runs, each in a fresh namespace:
//
//   - live:   the controller runs; the slabs are created at once (64 parallel
//     clients); time from the first create until every slab has its Pod.
//   - backlog: the slabs exist before the controller starts; time from the
//     controller's start until every slab has its Pod (and PodCreated).
//
// It is a benchmark, not a test: it runs only with SPAWNER_CONTROLLER_BENCH=1.
// SPAWNER_BENCH_SLABS sets N; SPAWNER_BENCH_ARGS adds controller flags
// (e.g. "--kube-api-qps=300 --kube-api-burst=600").
//
//	SPAWNER_CONTROLLER_BENCH=1 go test -tags cluster -run TestThroughputBenchmark -v -timeout 30m ./test/
func TestThroughputBenchmark(t *testing.T) {
	if os.Getenv("SPAWNER_CONTROLLER_BENCH") == "" {
		t.Skip("benchmark: set SPAWNER_CONTROLLER_BENCH=1 to run")
	}
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("SPAWNER_BENCH_SLABS")); err == nil && v > 0 {
		n = v
	}
	args := append([]string{"--startup-timeout=30m", "-v=1"}, strings.Fields(os.Getenv("SPAWNER_BENCH_ARGS"))...)
	for _, mode := range []string{"live", "backlog"} {
		t.Run(mode, func(t *testing.T) {
			e := setup(t)
			// A fast client for creating the slabs, so creation is not the bottleneck.
			fast := rest.CopyConfig(e.cfg)
			fast.QPS, fast.Burst = 2000, 4000
			sp := versioned.NewForConfigOrDie(fast)
			kube := kubernetes.NewForConfigOrDie(fast)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// An informer, not a bare watch: it relists if the API server drops
			// the watch under the burst of 1000 pod events.
			allPods := make(chan time.Time, 1)
			factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(e.ns))
			var mu sync.Mutex
			seen := map[string]bool{}
			factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc: func(obj interface{}) {
					p, ok := obj.(*corev1.Pod)
					if !ok {
						return
					}
					mu.Lock()
					defer mu.Unlock()
					if !seen[p.Name] {
						seen[p.Name] = true
						if len(seen) == n {
							allPods <- time.Now()
						}
					}
				},
			})
			factory.Start(ctx.Done())
			factory.WaitForCacheSync(ctx.Done())
			defer func() { cancel(); factory.Shutdown() }()

			create := func() (time.Time, time.Duration) {
				began := time.Now()
				var wg sync.WaitGroup
				next := make(chan int)
				for g := 0; g < 64; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range next {
							s := benchSlab(e.ns, fmt.Sprintf("bench-%04d", i))
							if _, err := sp.SpawnerV1().SessionLivedBackends(e.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
								t.Errorf("creating slab %d: %v", i, err)
							}
						}
					}()
				}
				for i := 0; i < n; i++ {
					next <- i
				}
				close(next)
				wg.Wait()
				return began, time.Since(began)
			}

			var start time.Time
			if mode == "live" {
				e.startController(args...)
				time.Sleep(2 * time.Second) // caches synced
				var took time.Duration
				start, took = create()
				t.Logf("created %d slabs in %.2fs (%.0f/s)", n, took.Seconds(), float64(n)/took.Seconds())
			} else {
				_, took := create()
				t.Logf("created %d slabs in %.2fs before starting the controller", n, took.Seconds())
				start = time.Now()
				e.startController(args...)
			}
			var done time.Time
			select {
			case done = <-allPods:
			case <-time.After(15 * time.Minute):
				t.Fatal("not every slab got its pod within 15 minutes")
			}
			d := done.Sub(start)
			t.Logf("RESULT %s: %d pods in %.2fs = %.1f slabs/s (args %v)", mode, n, d.Seconds(), float64(n)/d.Seconds(), args)

			// Status follows: every slab records PodCreated.
			deadline := time.Now().Add(5 * time.Minute)
			for {
				list, err := sp.SpawnerV1().SessionLivedBackends(e.ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					t.Fatal(err)
				}
				withStatus := 0
				for _, s := range list.Items {
					if meta.IsStatusConditionTrue(s.Status.Conditions, lifecycle.ConditionPodCreated) {
						withStatus++
					}
				}
				if withStatus == n {
					d := time.Since(start)
					t.Logf("RESULT %s: %d slabs with PodCreated status in %.2fs = %.1f slabs/s", mode, n, d.Seconds(), float64(n)/d.Seconds())
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d slabs have PodCreated after 5m", withStatus, n)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if code, body := e.httpGet("/metrics"); code == 200 {
				for _, line := range strings.Split(body, "\n") {
					if (strings.HasPrefix(line, "spawner_controller_reconcile") || strings.HasPrefix(line, "spawner_controller_pods_created")) && !strings.Contains(line, "_bucket") {
						t.Log(line)
					}
				}
			}
			// Cleanup: the namespace (slabs, pods) is deleted by setup's cleanup.
		})
	}
}

func benchSlab(ns, name string) *spawnerv1.SessionLivedBackend {
	return &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: spawnerv1.SessionLivedBackendSpec{
			Template: spawnerv1.BackendPodTemplate{
				Containers:   []corev1.Container{{Name: "app", Image: clustertest.DemoImage}},
				NodeSelector: map[string]string{"spawner.dev/bench-no-such-node": "true"},
			},
		},
	}
}
