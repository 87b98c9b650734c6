package apiserver

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

func rvPod(rv, label string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "uid-p", ResourceVersion: rv, Labels: map[string]string{"v": label}}}
}

func labelOf(obj runtime.Object, ok bool) string {
	if !ok || obj == nil {
		return "none"
	}
	return obj.(*corev1.Pod).Labels["v"]
}

// TestOwnWrites: a write's result is read over a cache that is behind it,
// never over one that caught up; an informer event retires it unless known
// older; a deletion retires it and keeps a late result of the deleted object
// out; versions that do not parse as integers never panic (they tell
// nothing: the write holds until an event comes).
func TestOwnWrites(t *testing.T) {
	now := time.Unix(1000, 0)
	o := newOwnWrites()
	o.now = func() time.Time { return now }
	old, mine, newer := rvPod("10", "cache"), rvPod("11", "mine"), rvPod("12", "newer")

	if got := labelOf(o.get("ns/p", old, true)); got != "cache" {
		t.Errorf("nothing written: got %s, want the cache's", got)
	}
	o.record(mine)
	if got := labelOf(o.get("ns/p", old, true)); got != "mine" {
		t.Errorf("cache behind the write: got %s, want the write's", got)
	}
	if got := labelOf(o.get("ns/p", nil, false)); got != "mine" {
		t.Errorf("cache without the object (a create it has not seen): got %s, want the write's", got)
	}
	o.observe(old) // an event older than the write: the write still holds
	if got := labelOf(o.get("ns/p", old, true)); got != "mine" {
		t.Errorf("after an older event: got %s, want the write's", got)
	}
	o.record(old) // an older result does not replace a newer one
	if got := labelOf(o.get("ns/p", nil, false)); got != "mine" {
		t.Errorf("after recording an older result: got %s, want the newer write's", got)
	}
	if got := labelOf(o.get("ns/p", newer, true)); got != "newer" {
		t.Errorf("cache ahead of the write: got %s, want the cache's", got)
	}
	if got := labelOf(o.get("ns/p", nil, false)); got != "none" {
		t.Errorf("a write the cache overtook is forgotten: got %s", got)
	}

	o.record(mine)
	o.observe(mine) // the informer delivered the write itself
	if got := labelOf(o.get("ns/p", nil, false)); got != "none" {
		t.Errorf("after the write's own event: got %s, want it retired", got)
	}

	o.record(mine)
	o.observeDelete(cache.DeletedFinalStateUnknown{Key: "ns/p", Obj: newer})
	if got := labelOf(o.get("ns/p", nil, false)); got != "none" {
		t.Errorf("after the object's deletion: got %s, want nothing", got)
	}
	o.record(mine) // a write's result arriving after the deletion's event
	if got := labelOf(o.get("ns/p", nil, false)); got != "none" {
		t.Errorf("a result of a deleted object recorded late: got %s, want nothing", got)
	}

	// Opaque versions (the fake clientset's are empty): the write holds
	// until any event of the object, and never panics.
	o2 := newOwnWrites()
	o2.now = func() time.Time { return now }
	o2.record(rvPod("", "mine"))
	if got := labelOf(o2.get("ns/p", rvPod("stale", "cache"), true)); got != "mine" {
		t.Errorf("opaque versions: got %s, want the write's", got)
	}
	o2.observe(rvPod("", "event"))
	if got := labelOf(o2.get("ns/p", rvPod("", "cache"), true)); got != "cache" {
		t.Errorf("opaque versions after an event: got %s, want the cache's", got)
	}

	// The TTL: a write whose events never come is dropped.
	o2.record(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "q", UID: types.UID("uid-q"), ResourceVersion: "5"}})
	now = now.Add(ownWritesTTL)
	if _, ok := o2.get("ns/q", nil, false); ok {
		t.Error("a write older than ownWritesTTL is still read")
	}
}
