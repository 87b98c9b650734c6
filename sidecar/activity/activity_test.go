package activity

import (
	"testing"
	"time"

	"spawner.dev/common/wire"
)

func TestCountsAndLastActive(t *testing.T) {
	tr := New(0)
	if s := tr.Snapshot(); s.LiveConnections != 0 || s.Ready {
		t.Fatalf("fresh: %+v", s)
	}
	tr.RequestStarted()
	ws := tr.SocketOpened()
	s := tr.Snapshot()
	if s.InFlightRequests != 1 || s.WebSockets != 1 || s.LiveConnections != 2 || s.SecondsSinceActive != 0 {
		t.Fatalf("busy: %+v", s)
	}
	if time.Since(s.LastActive) > time.Second {
		t.Fatalf("last_active while busy should be now, got %v", s.LastActive)
	}
	tr.RequestFinished()
	before := time.Now()
	ws.Closed()
	s = tr.Snapshot()
	if s.LiveConnections != 0 || s.WebSockets != 0 || s.InFlightRequests != 0 {
		t.Fatalf("idle: %+v", s)
	}
	if s.LastActive.Before(before.Add(-time.Millisecond)) || s.LastActive.After(time.Now()) {
		t.Fatalf("last_active %v is not when the socket closed (~%v)", s.LastActive, before)
	}
	// Time passing while idle is not a change of state.
	later := tr.snapshot(time.Now().Add(90 * time.Second))
	if later.SecondsSinceActive < 89 || !later.SameState(s) {
		t.Fatalf("later: %+v vs %+v", later, s)
	}
}

func TestSubscribeNotifiesAndCoalesces(t *testing.T) {
	tr := New(0)
	sub, cancel := tr.Subscribe()
	sub2, cancel2 := tr.Subscribe()
	defer cancel2()
	tr.RequestStarted()
	tr.RequestFinished() // two changes, one pending signal
	for _, c := range []<-chan struct{}{sub.C, sub2.C} {
		select {
		case <-c:
		default:
			t.Fatal("no signal")
		}
		select {
		case <-c:
			t.Fatal("signals were not collapsed")
		default:
		}
	}
	tr.SetReady(true)
	<-sub.C
	tr.SetReady(true) // no flip, no signal
	select {
	case <-sub.C:
		t.Fatal("signal without a change")
	default:
	}
	cancel()
	tr.SetReady(false)
	select {
	case <-sub.C:
		t.Fatal("signal after unsubscribe")
	default:
	}
	<-sub2.C
}

func TestPausedSubscriptionHearsOnlyReadiness(t *testing.T) {
	tr := New(0)
	sub, cancel := tr.Subscribe()
	defer cancel()
	sub.Pause()
	tr.RequestStarted()
	tr.RequestFinished()
	ws := tr.SocketOpened()
	select {
	case <-sub.C:
		t.Fatal("a paused subscription was signalled for requests and sockets")
	default:
	}
	tr.SetReady(true)
	select {
	case <-sub.C:
	default:
		t.Fatal("a readiness flip did not reach the paused subscription")
	}
	sub.Resume()
	ws.Closed()
	select {
	case <-sub.C:
	default:
		t.Fatal("no signal after Resume")
	}
}

func TestIdleWebSockets(t *testing.T) {
	tr := New(100 * time.Millisecond)
	sub, cancel := tr.Subscribe()
	defer cancel()
	ch := sub.C
	ws := tr.SocketOpened()
	<-ch
	if s := tr.Snapshot(); s.LiveConnections != 1 {
		t.Fatalf("new socket not live: %+v", s)
	}
	time.Sleep(150 * time.Millisecond)
	s := tr.Snapshot()
	if s.LiveConnections != 0 || s.WebSockets != 1 {
		t.Fatalf("socket without data should be idle: %+v", s)
	}
	tr.CheckIdle() // going idle is announced
	select {
	case <-ch:
	default:
		t.Fatal("no signal when the socket went idle")
	}
	ws.DataSeen(time.Now()) // back in use: announced too
	select {
	case <-ch:
	default:
		t.Fatal("no signal when the socket came back")
	}
	if s := tr.Snapshot(); s.LiveConnections != 1 {
		t.Fatalf("socket with fresh data not live: %+v", s)
	}
}

// WatchIdle announces a socket going idle when its time is up, not at the
// next tick of a poll, and has no timer while no socket can go idle.
func TestWatchIdleFiresAtTheSocketsTime(t *testing.T) {
	const wsIdle = 60 * time.Millisecond
	tr := New(wsIdle)
	stop := make(chan struct{})
	defer close(stop)
	go tr.WatchIdle(stop)
	sub, cancel := tr.Subscribe()
	defer cancel()
	for round := range 3 {
		// The tracker keeps wall-clock times (they go out as last_active),
		// so the test measures by the wall clock too (Round(0) drops the
		// monotonic reading): a clock slew on a loaded machine then cannot
		// make the announcement look early.
		ws := tr.SocketOpened()
		opened := time.Now().Round(0)
		<-sub.C
		for tr.Snapshot().LiveConnections != 0 {
			select {
			case <-sub.C:
			case <-time.After(time.Second):
				t.Fatalf("round %d: the socket never went idle", round)
			}
		}
		// Announced at wsIdle; a 250 ms poll announced it at its next tick.
		if d := time.Now().Round(0).Sub(opened); d < wsIdle || d > wsIdle+100*time.Millisecond {
			t.Errorf("round %d: idle announced after %s, want %s", round, d, wsIdle)
		}
		ws.DataSeen(time.Now()) // back, and it can go idle again
		<-sub.C
		back := time.Now()
		for tr.Snapshot().LiveConnections != 0 {
			select {
			case <-sub.C:
			case <-time.After(time.Second):
				t.Fatalf("round %d: the socket never went idle again", round)
			}
		}
		if d := time.Since(back); d > wsIdle+100*time.Millisecond {
			t.Errorf("round %d: idle again announced after %s, want %s", round, d, wsIdle)
		}
		ws.Closed()
		<-sub.C
	}
	if _, ok := tr.nextIdle(time.Now()); ok {
		t.Error("a deadline remains with no socket open")
	}
}

func BenchmarkRequest(b *testing.B) {
	tr := New(0)
	_, cancel := tr.Subscribe()
	defer cancel()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tr.RequestStarted()
			tr.RequestFinished()
		}
	})
}

// TestLastActivitySaysWhat: the snapshot names what the last activity was,
// which the sweeper quotes in the slab's status and its sweep Event.
func TestLastActivitySaysWhat(t *testing.T) {
	tr := New(50 * time.Millisecond)
	want := func(step, kind string, live int) {
		t.Helper()
		if s := tr.Snapshot(); s.LastActivity != kind || s.LiveConnections != live {
			t.Fatalf("%s: last activity %q, live %d; want %q, %d", step, s.LastActivity, s.LiveConnections, kind, live)
		}
	}
	want("fresh", wire.ActivityStarted, 0)
	tr.RequestStarted()
	want("request open", wire.ActivityRequestInFlight, 1)
	tr.RequestFinished()
	want("request ended", wire.ActivityRequestEnded, 0)
	ws := tr.SocketOpened()
	want("socket open", wire.ActivityWebSocketOpen, 1)
	time.Sleep(20 * time.Millisecond)
	ws.DataSeen(time.Now())
	time.Sleep(80 * time.Millisecond)
	want("socket silent past wsIdle", wire.ActivityWebSocketMessage, 0)
	ws.Closed()
	want("socket closed", wire.ActivityWebSocketClosed, 0)
}

// TestIgnoreRequestsPolicy: with the policy, an open request (a long-poll)
// does not keep the backend alive, its end still counts as activity, and
// WebSockets still do.
func TestIgnoreRequestsPolicy(t *testing.T) {
	tr := NewWithPolicy(Policy{IgnoreRequests: true})
	tr.RequestStarted()
	if s := tr.Snapshot(); s.LiveConnections != 0 || s.InFlightRequests != 1 || s.LastActivity != wire.ActivityStarted {
		t.Fatalf("long-poll open, requests ignored: %+v", s)
	}
	before := time.Now()
	tr.RequestFinished()
	if s := tr.Snapshot(); s.LastActive.Before(before) || s.LastActivity != wire.ActivityRequestEnded {
		t.Fatalf("a request's end is still activity: %+v", s)
	}
	ws := tr.SocketOpened()
	if s := tr.Snapshot(); s.LiveConnections != 1 {
		t.Fatalf("a WebSocket still counts: %+v", s)
	}
	ws.Closed()
}

// TestSilentSocketAfterItsHandshake: the upgrade request ends just after the
// socket opens; once the socket goes silent, the reason is the socket, not
// that request.
func TestSilentSocketAfterItsHandshake(t *testing.T) {
	tr := New(30 * time.Millisecond)
	tr.RequestStarted()
	ws := tr.SocketOpened()
	tr.RequestFinished()
	time.Sleep(60 * time.Millisecond)
	if s := tr.Snapshot(); s.LiveConnections != 0 || s.LastActivity != wire.ActivityWebSocketMessage {
		t.Fatalf("silent socket: %+v", s)
	}
	ws.Closed()
}
