package sweeper

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/generated/clientset/versioned/fake"
)

// Test500Backends follows 500 backends on one node: all become Ready, each
// costs exactly one goroutine (its stream reader) and one armed timer, and
// all are swept at their deadline.
func Test500Backends(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 500
	h := newHarness(t, Event{Ready: true})
	var objs []*spawnerv1.SessionLivedBackend
	for i := range n {
		s := &spawnerv1.SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("b%d", i), Namespace: "ns"}}
		lifecycle.Record(&s.Status, lifecycle.ConditionRunning, lifecycle.ReasonContainersStarted, "", 1)
		objs = append(objs, s)
	}
	client := fake.NewSimpleClientset()
	for _, o := range objs {
		client.Tracker().Add(o)
	}
	h.s.slabs = client
	start := time.Now()
	for i := range n {
		p := testPod(h.sidecar.port())
		p.Name, p.UID = fmt.Sprintf("b%d", i), "u"
		p.Labels[spawnerv1.LabelBackend] = p.Name
		h.s.syncPod(p)
	}
	h.waitFor("500 Ready", func() bool { return h.s.m.readies.Value() == n })
	h.waitFor("500 timers", func() bool { return h.clock.pending() == n })
	// Each backend's first activity write (on becoming Ready) is a goroutine
	// of its own until it returns.
	h.waitFor("500 activity writes", func() bool { return h.s.m.activityWrites.Value() == n })
	t.Logf("500 backends followed and Ready in %v", time.Since(start).Round(time.Millisecond))

	readers := 0
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 64<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		readers = 0
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "internal/sweeper.(*backend)") {
				readers++
			}
		}
		if readers == n || time.Now().After(deadline) {
			break
		}
	}
	if readers != n {
		t.Errorf("%d goroutines inside backends, want exactly %d (one stream reader each)", readers, n)
	}
	if open := h.s.m.streamsOpen.Value(); open != n {
		t.Errorf("streams open %v", open)
	}
	h.clock.Advance(testGrace)
	if s := h.s.m.sweeps.Value(); s != n {
		t.Errorf("%d swept at the deadline, want %d", s, n)
	}
}
