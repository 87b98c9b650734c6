package workloop

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

var gone = apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "x")

func pod(ns, name, owner string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"owner": owner}}}
}

// The loop syncs every queued key once per change, requeues a failed one
// with back-off, and reports Synced only after the caches synced.
func TestLoopSyncsQueuedKeysAndRetriesFailures(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan struct{})
	l := New("test", func(_ context.Context, key string) (time.Duration, error) {
		mu.Lock()
		defer mu.Unlock()
		seen[key]++
		if key == "ns/flaky" && seen[key] < 3 {
			return 0, errors.New("try again")
		}
		if seen["ns/a"] >= 1 && seen["ns/flaky"] >= 3 && seen["ns/b"] >= 1 {
			select {
			case <-done:
			default:
				close(done)
			}
		}
		return 0, nil
	}, slog.New(slog.DiscardHandler))
	h := Handler(l, func(p *corev1.Pod) string {
		if p.Labels["owner"] == "" {
			return ""
		}
		return p.Namespace + "/" + p.Labels["owner"]
	})
	l.Enqueue(pod("ns", "a", ""))
	h.OnAdd(pod("ns", "p1", "flaky"), false)
	h.OnAdd(pod("ns", "p2", ""), false) // of no interest
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/p3", Obj: pod("ns", "p3", "b")})
	if l.Synced() {
		t.Fatal("Synced before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- l.Run(ctx, 2, func() bool { return true }) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("keys synced: %v", seen)
	}
	if !l.Synced() {
		t.Error("not Synced while running")
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen["ns/a"] != 1 || seen["ns/b"] != 1 || seen["ns/flaky"] != 3 {
		t.Errorf("synced %v, want ns/a and ns/b once, ns/flaky three times", seen)
	}
}

func TestGetAndIgnoreGone(t *testing.T) {
	p, found, err := Get("ns/a", func(ns, name string) (*corev1.Pod, error) { return pod(ns, name, ""), nil })
	if !found || err != nil || p.Name != "a" || p.Namespace != "ns" {
		t.Errorf("Get of a present object: %v %v %v", p, found, err)
	}
	if _, found, err := Get("ns/a", func(string, string) (*corev1.Pod, error) { return nil, gone }); found || err != nil {
		t.Errorf("Get of a gone object: found %v, err %v", found, err)
	}
	boom := errors.New("boom")
	if _, found, err := Get("ns/a", func(string, string) (*corev1.Pod, error) { return nil, boom }); found || err != boom {
		t.Errorf("Get on an error: found %v, err %v", found, err)
	}
	if _, found, err := Get("a/b/c", func(string, string) (*corev1.Pod, error) { panic("called") }); found || err != nil {
		t.Errorf("Get of a malformed key: found %v, err %v", found, err)
	}
	conflict := apierrors.NewConflict(schema.GroupResource{Resource: "pods"}, "x", errors.New("changed"))
	if IgnoreGone(gone) != nil || IgnoreGone(conflict) != nil || IgnoreGone(nil) != nil || IgnoreGone(boom) != boom {
		t.Error("IgnoreGone")
	}
}
