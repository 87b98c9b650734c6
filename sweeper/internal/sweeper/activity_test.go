package sweeper

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

func (h *harness) activity() *spawnerv1.BackendActivity {
	h.t.Helper()
	a := h.slab().Status.Activity
	if a == nil {
		h.t.Fatal("no status.activity")
	}
	return a
}

func (h *harness) waitWrites(n uint64) {
	h.t.Helper()
	h.waitFor("activity writes", func() bool { return h.s.m.activityWrites.Value() == n })
	time.Sleep(20 * time.Millisecond) // nothing more arrives
	if got := h.s.m.activityWrites.Value(); got != n {
		h.t.Fatalf("%v activity writes, want %v", got, n)
	}
}

// TestActivityWritesAreCoalesced: the first state and every change between
// busy and idle are written at once (or ActivityMinGap after the previous
// write); other changes wait for ActivityRefresh; repeats are not written.
func TestActivityWritesAreCoalesced(t *testing.T) {
	h := newHarness(t, Event{Ready: true, LastActivity: wire.ActivityStarted})
	h.s.cfg.ActivityMinGap, h.s.cfg.ActivityRefresh = 2*time.Second, 10*time.Second
	grace := time.Minute
	pod := testPod(h.sidecar.port())
	pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds] = "60"
	h.s.syncPod(pod)
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })
	h.waitWrites(1)
	a := h.activity()
	if a.Connections != 0 || a.IdleSince == nil || !a.IdleSince.Time.Equal(h.t0) || a.SweepAfter == nil ||
		!a.SweepAfter.Time.Equal(h.t0.Add(grace)) || a.LastActivity != wire.ActivityStarted {
		t.Fatalf("idle at start: %+v", a)
	}

	// Busy at t0+1s: written at t0+2s (2 s after the last write), not before.
	h.clock.Advance(time.Second)
	h.sidecar.set(Event{Ready: true, LiveConnections: 1, WebSockets: 1, LastActive: h.clock.Now(), LastActivity: wire.ActivityWebSocketOpen})
	h.waitFor("busy seen", func() bool { b := h.s.backends["ns/b1"]; b.mu.Lock(); defer b.mu.Unlock(); return b.actTimer != nil })
	h.waitWrites(1)
	h.clock.Advance(time.Second)
	h.waitWrites(2)
	if a := h.activity(); a.Connections != 1 || a.WebSockets != 1 || a.IdleSince != nil || a.SweepAfter != nil || a.LastActivity != wire.ActivityWebSocketOpen {
		t.Fatalf("busy: %+v", a)
	}

	// More connections at t0+3s and t0+4s: one write, at t0+12s.
	for i := 2; i <= 3; i++ {
		h.clock.Advance(time.Second)
		h.sidecar.set(Event{Ready: true, LiveConnections: i, WebSockets: i, LastActive: h.clock.Now(), LastActivity: wire.ActivityWebSocketOpen})
		h.waitFor("count seen", func() bool {
			b := h.s.backends["ns/b1"]
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.last.LiveConnections == i
		})
	}
	h.clock.Advance(7900 * time.Millisecond) // t0+11.9s
	h.waitWrites(2)
	h.clock.Advance(100 * time.Millisecond)
	h.waitWrites(3)
	if a := h.activity(); a.Connections != 3 {
		t.Fatalf("after the refresh: %+v", a)
	}

	// All close at t0+13s: idle is written at t0+14s with what happened last.
	h.clock.Advance(time.Second)
	closed := h.clock.Now()
	h.sidecar.set(Event{Ready: true, LastActive: closed, LastActivity: wire.ActivityWebSocketClosed})
	h.waitFor("idle seen", func() bool { b := h.s.backends["ns/b1"]; b.mu.Lock(); defer b.mu.Unlock(); return b.actTimer != nil })
	h.clock.Advance(time.Second)
	h.waitWrites(4)
	a = h.activity()
	if a.Connections != 0 || a.LastActivity != wire.ActivityWebSocketClosed || !a.LastActivityTime.Time.Equal(closed) ||
		!a.IdleSince.Time.Equal(closed) || !a.SweepAfter.Time.Equal(closed.Add(grace)) {
		t.Fatalf("idle again: %+v", a)
	}
}

// TestKeepalivePostponesTheSweep: a keepalive call recorded on the slab
// (by the api-server) moves the deadline, even one this sweeper learns of
// only when the deadline fires; the Swept message then names it.
func TestKeepalivePostponesTheSweep(t *testing.T) {
	h := newHarness(t, Event{Ready: true, LastActivity: wire.ActivityRequestEnded})
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.waitWrites(1)
	kept := h.t0.Add(3 * time.Second)
	slab := h.slab()
	slab.Status.Activity.KeepaliveTime = &metav1.MicroTime{Time: kept}
	if _, err := h.client.SpawnerV1().SessionLivedBackends("ns").UpdateStatus(context.Background(), slab, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(testGrace) // the sidecar's deadline: the slab shows the keepalive
	h.waitFor("deadline moved", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.keepalive.Equal(kept) && !b.sweeping })
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept despite a keepalive 2 s before the deadline: %s", p)
	}
	h.clock.Advance(2900 * time.Millisecond)
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept before keepalive + grace: %s", p)
	}
	h.clock.Advance(100 * time.Millisecond)
	h.waitFor("Swept", func() bool { return h.phase() == lifecycle.Swept })
	c := h.slab().Status.Conditions
	msg := c[len(c)-1].Message
	if want := "idle 5 s, last activity: keepalive at " + kept.Format(time.RFC3339); !strings.HasPrefix(msg, want) {
		t.Errorf("Swept message %q, want it to start %q", msg, want)
	}
	if a := h.slab().Status.Activity; a.SweepAfter == nil || !a.SweepAfter.Time.Equal(kept.Add(testGrace)) || a.LastActivity != wire.ActivityKeepalive {
		t.Errorf("activity at the sweep: %+v", a)
	}
}

// TestSweptMessageNamesTheLastActivity: the Swept condition (and so the
// Event the controller records) says how long the backend was idle and what
// it last did.
func TestSweptMessageNamesTheLastActivity(t *testing.T) {
	h := newHarness(t, Event{Ready: true, LastActivity: wire.ActivityWebSocketClosed})
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.clock.Advance(testGrace)
	h.waitFor("Swept", func() bool { return h.phase() == lifecycle.Swept })
	st := h.slab().Status
	msg := st.Conditions[len(st.Conditions)-1].Message
	if want := "idle 5 s, last activity: WebSocket closed at 2026-11-29T04:00:00Z (grace period 5 s)"; msg != want {
		t.Errorf("Swept message %q, want %q", msg, want)
	}
	if a := st.Activity; a == nil || a.Connections != 0 || a.LastActivity != wire.ActivityWebSocketClosed || a.SweepAfter == nil || !a.SweepAfter.Time.Equal(h.t0.Add(testGrace)) {
		t.Errorf("activity at the sweep: %+v", a)
	}
}
