package pool

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"
)

// TestToCreateKeepsStartsBounded: a pool short of pods creates toward its
// replicas, at most a batch per sync and never more than maxStarting
// starting at once (a refill after a burst of claims started as many pods
// as were claimed, all at once).
func TestToCreateKeepsStartsBounded(t *testing.T) {
	for _, c := range []struct{ want, current, starting, max, batch, out int }{
		{100, 0, 0, 10, 16, 10},  // empty pool of 100: ten at a time
		{100, 10, 10, 10, 16, 0}, // ten starting: wait for one to be Ready
		{100, 20, 7, 10, 16, 3},  // 13 Ready, 7 starting: three more
		{5, 2, 0, 10, 16, 3},     // small pool: what is missing
		{40, 0, 0, 50, 16, 16},   // a large maxStarting: the batch bounds a sync
		{10, 12, 0, 10, 16, 0},   // more than wanted: none
		{10, 5, 12, 10, 16, 0},   // above the cap (lowered meanwhile): none, never negative
	} {
		if got := toCreate(c.want, c.current, c.starting, c.max, c.batch); got != c.out {
			t.Errorf("toCreate(want %d, current %d, starting %d, max %d, batch %d) = %d, want %d", c.want, c.current, c.starting, c.max, c.batch, got, c.out)
		}
	}
}

func TestRefillWaitsForABurstOfClaims(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name        string
		first, last time.Duration // after t0
		now         time.Duration
		recording   bool // a claim awaits its Ready record
		want        time.Duration
	}{
		{"no claim", -1, -1, 0, false, 0},
		{"no claim, a backend of the pool awaiting its record", -1, -1, 0, true, 0},
		{"a claim just now", 0, 0, 100 * time.Millisecond, false, refillQuiet - 100*time.Millisecond},
		{"quiet since the last claim", 0, 0, refillQuiet, false, 0},
		{"quiet since the last claim, whose record is pending", 0, 0, refillQuiet, true, refillRecheck},
		{"claims still coming", 0, 3 * time.Second, 3*time.Second + 100*time.Millisecond, false, refillQuiet - 100*time.Millisecond},
		{"a burst past the longest deferral", 0, refillMaxDefer - 100*time.Millisecond, refillMaxDefer, false, 0},
		{"a burst past the longest deferral, records pending", 0, 0, refillMaxDefer, true, 0},
		{"a burst near the longest deferral, records pending", 0, 0, refillMaxDefer - 50*time.Millisecond, true, 50 * time.Millisecond},
	} {
		var b claimBurst
		if c.first >= 0 {
			b = claimBurst{first: t0.Add(c.first), last: t0.Add(c.last)}
		}
		if got := refillWait(b, c.recording, t0.Add(c.now)); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestRecordingSeesAClaimAwaitingItsRecord: a pool's refill waits while a
// backend claimed (or claiming) from it awaits its Ready record, which its
// api-server writes once its burst of claims is over; not for a backend of
// another pool, bound cold, already Ready, or older than
// lifecycle.ClaimRecordWait.
func TestRecordingSeesAClaimAwaitingItsRecord(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	slab := func(name, pool, pod string, age time.Duration, ready bool) *spawnerv1.SessionLivedBackend {
		s := &spawnerv1.SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns",
			CreationTimestamp: metav1.NewTime(now.Add(-age)),
			Annotations:       map[string]string{spawnerv1.AnnotationPool: pool}}}
		if pod != "" {
			s.Annotations[spawnerv1.AnnotationPod] = pod
		}
		if ready {
			lifecycle.RecordClaimed(&s.Status, "claimed", 1)
		}
		return s
	}
	for _, c := range []struct {
		name string
		slab *spawnerv1.SessionLivedBackend
		want bool
	}{
		{"bound to a warm pod, not recorded yet", slab("a", "rooms", "rooms-x", time.Second, false), true},
		{"claiming", slab("a", "rooms", "", time.Second, false), true},
		{"recorded Ready", slab("a", "rooms", "rooms-x", time.Second, true), false},
		{"bound cold", slab("a", "rooms", "a", time.Second, false), false},
		{"of another pool", slab("a", "halls", "halls-x", time.Second, false), false},
		{"older than the record's wait", slab("a", "rooms", "rooms-x", lifecycle.ClaimRecordWait, false), false},
	} {
		idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		if err := idx.Add(c.slab); err != nil {
			t.Fatal(err)
		}
		ctl := &Controller{o: Options{Slabs: spawnerlisters.NewSessionLivedBackendLister(idx)}}
		if got := ctl.recording("ns", "rooms", now); got != c.want {
			t.Errorf("%s: recording %v, want %v", c.name, got, c.want)
		}
	}
}

// TestRefillWaitsForAClaimNotNotedYet: a sync of a pool short of pods while
// a backend claimed from it awaits its Ready record defers the refill even
// before noteClaim saw the take (the pod event reaches it through another
// handler, which may run after the sync), and no longer than refillMaxDefer.
func TestRefillWaitsForAClaimNotNotedYet(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := idx.Add(&spawnerv1.SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "ns",
		CreationTimestamp: metav1.NewTime(now),
		Annotations:       map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-x"}}}); err != nil {
		t.Fatal(err)
	}
	clock := now
	ctl := &Controller{claims: map[string]claimBurst{}, o: Options{Slabs: spawnerlisters.NewSessionLivedBackendLister(idx), Now: func() time.Time { return clock }}}
	if d := ctl.refillDelay("ns/rooms"); d <= 0 {
		t.Errorf("refill delay %v with a claim awaiting its record, want > 0", d)
	}
	clock = now.Add(refillMaxDefer)
	if d := ctl.refillDelay("ns/rooms"); d != 0 {
		t.Errorf("refill delay %v after %v, want 0", d, refillMaxDefer)
	}
}
