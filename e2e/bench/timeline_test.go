//go:build cluster

package bench

import (
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/e2e/framework"
	spawnerinformers "spawner.dev/generated/informers/externalversions"
)

// Milestones a watch can see, in the order they normally happen.
const (
	slabSeen     = "slab created"
	podSeen      = "pod created"
	podScheduled = "pod scheduled"
	podHasIP     = "pod IP reported"
	podRunning   = "containers running"
	podReady     = "pod Ready"
	slabReady    = "slab Ready"
)

// timeline records when this process first saw each milestone of each
// object by name, through watches on pods and slabs: the per-hop breakdown
// of a spawn, on one clock.
type timeline struct {
	mu      sync.Mutex
	seen    map[string]map[string]time.Time
	changed chan struct{} // closed and replaced on every new milestone
}

func watchTimeline(t *testing.T, e *framework.Env, namespaces ...string) *timeline {
	t.Helper()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	tl := &timeline{seen: map[string]map[string]time.Time{}, changed: make(chan struct{})}
	// Informers rather than bare watches: a watch the API server ends would
	// silently stop the timeline; a reflector resumes it.
	for _, ns := range namespaces {
		pods := informers.NewSharedInformerFactoryWithOptions(e.Kube, 0, informers.WithNamespace(ns)).Core().V1().Pods().Informer()
		slabs := spawnerinformers.NewSharedInformerFactoryWithOptions(e.Spawner, 0, spawnerinformers.WithNamespace(ns)).Spawner().V1().SessionLivedBackends().Informer()
		for _, inf := range []struct {
			informer   cache.SharedIndexInformer
			milestones func(any) (string, []string)
		}{{pods, podMilestones}, {slabs, slabMilestones}} {
			record := func(obj any) { tl.record(inf.milestones(obj)) }
			if _, err := inf.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc:    record,
				UpdateFunc: func(_, obj any) { record(obj) },
			}); err != nil {
				t.Fatal(err)
			}
			go inf.informer.Run(stop)
			if !cache.WaitForCacheSync(stop, inf.informer.HasSynced) {
				t.Fatal("timeline informers did not sync")
			}
		}
	}
	return tl
}

func (tl *timeline) record(name string, reached []string) {
	now := time.Now()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	m := tl.seen[name]
	if m == nil {
		m = map[string]time.Time{}
		tl.seen[name] = m
	}
	fresh := false
	for _, r := range reached {
		if _, ok := m[r]; !ok {
			m[r] = now
			fresh = true
		}
	}
	if fresh {
		close(tl.changed)
		tl.changed = make(chan struct{})
	}
}

func podMilestones(obj any) (string, []string) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return "", nil
	}
	reached := []string{podSeen}
	if pod.Spec.NodeName != "" {
		reached = append(reached, podScheduled)
	}
	if pod.Status.PodIP != "" {
		reached = append(reached, podHasIP)
	}
	running := len(pod.Status.ContainerStatuses) == len(pod.Spec.Containers)
	for _, c := range pod.Status.ContainerStatuses {
		running = running && c.State.Running != nil
	}
	if running {
		reached = append(reached, podRunning)
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			reached = append(reached, podReady)
		}
	}
	return pod.Name, reached
}

func slabMilestones(obj any) (string, []string) {
	slab, ok := obj.(*spawnerv1.SessionLivedBackend)
	if !ok {
		return "", nil
	}
	reached := []string{slabSeen}
	if slab.Status.Phase == lifecycle.Ready {
		reached = append(reached, slabReady)
	}
	return slab.Name, reached
}

// since returns, for each milestone name reached by name, its time after start.
func (tl *timeline) since(name string, start time.Time) map[string]time.Duration {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	out := map[string]time.Duration{}
	for m, at := range tl.seen[name] {
		out[m] = at.Sub(start)
	}
	return out
}

// waitFor returns when name reached milestone, as seen by the watch.
func (tl *timeline) waitFor(t *testing.T, name, milestone string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.After(timeout)
	for {
		tl.mu.Lock()
		at, ok := tl.seen[name][milestone]
		changed := tl.changed
		tl.mu.Unlock()
		if ok {
			return at
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: no %q within %v", name, milestone, timeout)
		}
	}
}
