// Package activity keeps the live counters that decide whether a backend is
// in use, and tells subscribers when they change.
//
// Updates are atomic and lock-free because every proxied request makes two of
// them; only opening and closing a WebSocket takes a lock.
package activity

import (
	"sync"
	"sync/atomic"
	"time"

	"spawner.dev/common/wire"
)

// Tracker counts in-flight HTTP requests and open WebSockets and remembers
// when the backend was last in use.
type Tracker struct {
	ready      atomic.Bool
	inFlight   atomic.Int64
	websockets atomic.Int64
	lastActive atomic.Int64  // unix nanoseconds at which the last request or socket ended
	lastKind   atomic.Uint32 // what ended then: kindStarted, kindRequest or kindSocket

	// ignoreRequests leaves in-flight requests out of LiveConnections (the
	// backend's policy says only WebSockets keep it); a request's end still
	// counts as activity.
	ignoreRequests bool

	// wsIdle > 0 lets a WebSocket without data frames for that long stop
	// counting as live.
	wsIdle  time.Duration
	mu      sync.Mutex
	sockets map[*Socket]struct{}
	idle    int // sockets idle at the last check; guarded by mu
	// idleWake tells WatchIdle that a socket opened or came back from idle,
	// so that it arms its timer for the time that socket can go idle.
	idleWake chan struct{}

	subMu sync.Mutex                      // serialises Subscribe/cancel
	subs  atomic.Pointer[[]*Subscription] // copy-on-write, read lock-free by notify
}

// What lastKind holds.
const (
	kindStarted uint32 = iota
	kindRequest
	kindSocket
)

// Policy says what keeps a backend alive.
type Policy struct {
	// WSIdle > 0 lets a WebSocket without data frames for that long stop
	// counting as live; 0 disables the rule.
	WSIdle time.Duration
	// IgnoreRequests leaves in-flight HTTP requests (SSE, long-poll) out of
	// LiveConnections; by default they count for as long as they are open.
	IgnoreRequests bool
}

// New returns a tracker with the default policy but for wsIdle (0 disables
// the WebSocket idle rule). The backend counts as last active at its start.
func New(wsIdle time.Duration) *Tracker { return NewWithPolicy(Policy{WSIdle: wsIdle}) }

// NewWithPolicy returns a tracker applying p.
func NewWithPolicy(p Policy) *Tracker {
	t := &Tracker{wsIdle: p.WSIdle, ignoreRequests: p.IgnoreRequests, sockets: map[*Socket]struct{}{}, idleWake: make(chan struct{}, 1)}
	t.lastActive.Store(time.Now().UnixNano())
	t.subs.Store(&[]*Subscription{})
	return t
}

// Snapshot is the state reported on the status port.
type Snapshot struct {
	Ready              bool
	InFlightRequests   int
	WebSockets         int // open upgraded connections, idle or not
	LiveConnections    int // in-flight requests + WebSockets that are not idle
	LastActive         time.Time
	SecondsSinceActive int
	// LastActivity says what LastActive was (a wire.Activity* constant).
	LastActivity string
}

// Event is s as the status stream carries it.
func (s Snapshot) Event() wire.StatusEvent {
	return wire.StatusEvent{
		Ready: s.Ready, LiveConnections: s.LiveConnections, SecondsSinceActive: s.SecondsSinceActive,
		LastActive: s.LastActive, InFlightRequests: s.InFlightRequests, WebSockets: s.WebSockets,
		LastActivity: s.LastActivity,
	}
}

// SameState reports whether two snapshots describe the same state, ignoring
// the passage of time while idle (that alone is not an event).
func (s Snapshot) SameState(o Snapshot) bool {
	s.SecondsSinceActive, o.SecondsSinceActive = 0, 0
	if s.LiveConnections > 0 && o.LiveConnections > 0 {
		s.LastActive, o.LastActive = time.Time{}, time.Time{}
	}
	return s == o
}

// Snapshot returns the current state.
func (t *Tracker) Snapshot() Snapshot { return t.snapshot(time.Now()) }

func (t *Tracker) snapshot(now time.Time) Snapshot {
	s := Snapshot{
		Ready:            t.ready.Load(),
		InFlightRequests: int(t.inFlight.Load()),
		WebSockets:       int(t.websockets.Load()),
	}
	kind := kindNames[t.lastKind.Load()]
	last := t.lastActive.Load()
	idle := 0
	if t.wsIdle > 0 && s.WebSockets > 0 {
		var lastData int64
		idle, lastData = t.idleSockets(now)
		// An idle socket was last in use at its last data frame. Its
		// handshake request ends a moment after the socket opens, so a
		// request that ended within a second of that frame is the socket's
		// own: the backend is idle because the socket went silent.
		if idle > 0 && lastData+int64(time.Second) >= last {
			last, kind = max(last, lastData), wire.ActivityWebSocketMessage
		}
	}
	s.LiveConnections = s.WebSockets - idle
	if !t.ignoreRequests {
		s.LiveConnections += s.InFlightRequests
	}
	switch {
	case s.WebSockets > idle:
		s.LastActive, s.LastActivity = now, wire.ActivityWebSocketOpen
	case s.LiveConnections > 0:
		s.LastActive, s.LastActivity = now, wire.ActivityRequestInFlight
	default:
		s.LastActive, s.LastActivity = time.Unix(0, last), kind
		s.SecondsSinceActive = int(max(now.Sub(s.LastActive), 0) / time.Second)
	}
	return s
}

var kindNames = [...]string{kindStarted: wire.ActivityStarted, kindRequest: wire.ActivityRequestEnded, kindSocket: wire.ActivityWebSocketClosed}

// idleSockets counts open sockets without data for wsIdle and returns the
// latest data time among them.
func (t *Tracker) idleSockets(now time.Time) (idle int, lastData int64) {
	cutoff := now.Add(-t.wsIdle).UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.sockets {
		if d := s.lastData.Load(); d <= cutoff {
			idle++
			lastData = max(lastData, d)
		}
	}
	return idle, lastData
}

// Ready reports whether the app was last seen listening.
func (t *Tracker) Ready() bool { return t.ready.Load() }

// SetReady records whether the app listens; it notifies only on a flip.
func (t *Tracker) SetReady(ready bool) {
	if t.ready.Swap(ready) != ready {
		t.signal(true)
	}
}

// RequestStarted marks an HTTP request as in flight.
func (t *Tracker) RequestStarted() {
	t.inFlight.Add(1)
	t.notify()
}

// RequestFinished ends what RequestStarted began.
func (t *Tracker) RequestFinished() {
	// Stored before the decrement so a reader that sees nothing live also
	// sees this end time.
	t.lastKind.Store(kindRequest)
	t.lastActive.Store(time.Now().UnixNano())
	t.inFlight.Add(-1)
	t.notify()
}

// Socket is one open WebSocket.
type Socket struct {
	t        *Tracker
	lastData atomic.Int64 // unix nanoseconds of the last data frame (or the open)
}

// SocketOpened registers an open WebSocket.
func (t *Tracker) SocketOpened() *Socket {
	s := &Socket{t: t}
	s.lastData.Store(time.Now().UnixNano())
	t.mu.Lock()
	t.sockets[s] = struct{}{}
	t.mu.Unlock()
	t.websockets.Add(1)
	t.notify()
	t.wakeIdleWatch()
	return s
}

func (t *Tracker) wakeIdleWatch() {
	if t.wsIdle == 0 {
		return
	}
	select {
	case t.idleWake <- struct{}{}:
	default:
	}
}

// DataSeen records that a data frame passed at now. A socket coming back from
// idle is a change subscribers hear about.
func (s *Socket) DataSeen(now time.Time) {
	prev := s.lastData.Swap(now.UnixNano())
	if s.t.wsIdle > 0 && now.UnixNano()-prev >= int64(s.t.wsIdle) {
		s.t.CheckIdle()
		s.t.wakeIdleWatch()
	}
}

// Closed unregisters the socket; call it once.
func (s *Socket) Closed() {
	t := s.t
	t.lastKind.Store(kindSocket)
	t.lastActive.Store(time.Now().UnixNano())
	t.mu.Lock()
	delete(t.sockets, s)
	t.mu.Unlock()
	t.websockets.Add(-1)
	t.notify()
}

// CheckIdle notifies subscribers when the number of idle WebSockets changed
// since the last check. Sockets go idle by the passage of time alone, so with
// the idle rule on WatchIdle calls it when the next one can.
func (t *Tracker) CheckIdle() {
	if t.wsIdle == 0 {
		return
	}
	idle, _ := t.idleSockets(time.Now())
	t.mu.Lock()
	changed := idle != t.idle
	t.idle = idle
	t.mu.Unlock()
	if changed {
		t.notify()
	}
}

// nextIdle is the earliest time at which an open socket that is not idle yet
// can go idle (its last data frame + wsIdle); ok is false when there is none.
func (t *Tracker) nextIdle(now time.Time) (at time.Time, ok bool) {
	cutoff := now.Add(-t.wsIdle).UnixNano()
	var first int64
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.sockets {
		if d := s.lastData.Load(); d > cutoff && (!ok || d < first) {
			first, ok = d, true
		}
	}
	return time.Unix(0, first).Add(t.wsIdle), ok
}

// WatchIdle calls CheckIdle whenever an open socket can have gone idle, until
// stop is closed; it returns at once when the idle rule is off. Its timer is
// armed only while a socket is open and not idle yet, for the earliest time
// one can go idle: a sidecar without live WebSockets makes no wake-ups for it
// (a 250 ms ticker did before, four wake-ups a second whatever the state).
// A socket that carries data keeps moving its time forward; the timer then
// fires at most once per wsIdle and finds nothing to do.
func (t *Tracker) WatchIdle(stop <-chan struct{}) {
	if t.wsIdle == 0 {
		return
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		t.CheckIdle()
		var fire <-chan time.Time
		if at, ok := t.nextIdle(time.Now()); ok {
			timer.Reset(time.Until(at))
			fire = timer.C
		}
		select {
		case <-stop:
			return
		case <-t.idleWake:
			timer.Stop()
		case <-fire:
		}
	}
}

// Subscription delivers change signals to one subscriber.
type Subscription struct {
	// C receives a value after changes; several changes may collapse into
	// one value, and the subscriber reads the state itself.
	C      <-chan struct{}
	ch     chan struct{}
	paused atomic.Bool
}

// Pause stops signals for ordinary changes until Resume; a readiness flip is
// still signalled. A subscriber that is holding changes back anyway (the
// status stream's coalescing window) pauses, so that the two updates every
// proxied request makes do not wake it for nothing.
func (s *Subscription) Pause() { s.paused.Store(true) }

// Resume restarts signals. Changes made while paused were not signalled:
// read the state after calling it.
func (s *Subscription) Resume() { s.paused.Store(false) }

// Subscribe returns a new subscription and a function to end it.
func (t *Tracker) Subscribe() (*Subscription, func()) {
	ch := make(chan struct{}, 1)
	sub := &Subscription{C: ch, ch: ch}
	t.subMu.Lock()
	old := *t.subs.Load()
	next := append(old[:len(old):len(old)], sub)
	t.subs.Store(&next)
	t.subMu.Unlock()
	return sub, func() {
		t.subMu.Lock()
		defer t.subMu.Unlock()
		cur := *t.subs.Load()
		next := make([]*Subscription, 0, len(cur))
		for _, s := range cur {
			if s != sub {
				next = append(next, s)
			}
		}
		t.subs.Store(&next)
	}
}

func (t *Tracker) notify() { t.signal(false) }

// signal wakes the subscribers; urgent ones (readiness) reach paused ones too.
func (t *Tracker) signal(urgent bool) {
	for _, s := range *t.subs.Load() {
		if !urgent && s.paused.Load() {
			continue
		}
		select {
		case s.ch <- struct{}{}:
		default: // a signal is already pending; the subscriber will read fresh state
		}
	}
}
