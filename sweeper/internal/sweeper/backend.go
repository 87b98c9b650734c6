package sweeper

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/apis/lifecycle"
)

// target is what the sweeper needs to know about one backend pod.
type target struct {
	uid       types.UID
	namespace string
	slab      string // the SessionLivedBackend's name (pod label spawner.dev/backend)
	addr      string // podIP:statusPort
	proof     string // the pod's router proof, sent with every request to the sidecar ("" for none)
	grace     time.Duration
}

// idleDeadline says when a backend may be swept given the sidecar's latest
// state: grace after it was last active or kept alive by a keepalive call
// (never before it became ready, so a slow-starting app gets its full grace
// once it listens). ok is false while anything is live: such a backend has
// no deadline.
func idleDeadline(ev Event, readySince, keepalive time.Time, grace time.Duration) (deadline time.Time, ok bool) {
	if ev.LiveConnections > 0 {
		return time.Time{}, false
	}
	base := ev.LastActive
	if readySince.After(base) {
		base = readySince
	}
	if keepalive.After(base) {
		base = keepalive
	}
	return base.Add(grace), true
}

// backend follows one pod's sidecar: one goroutine (run) reads its /_events
// stream; one timer waits for its idle deadline.
type backend struct {
	s      *Sweeper
	key    string
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger

	mu         sync.Mutex
	t          target
	cur        *stream   // the open stream, nil while (re)connecting
	live       bool      // cur has delivered an event: last is the sidecar's current state
	last       Event     // the latest state from a live stream
	readyDone  bool      // the slab's Ready is recorded (by us or before us)
	readySince time.Time // when the slab became Ready, as far as we know
	readySeen  time.Time // the first event that said the app is ready
	ended      bool      // slab gone, swept or failed: nothing left to decide
	sweeping   bool      // fire is confirming or writing
	timer      Timer
	timerGen   uint64
	keepalive  time.Time // the slab's latest status.activity.keepaliveTime seen

	// Writing status.activity (activity.go).
	actWriting   bool          // a write is on its way
	actWritten   bool          // actLast was written
	actLast      activityState // the state last written
	actLastWrite time.Time     // when the last write (or failed attempt) was made
	actTimer     Timer         // a scheduled write
	actTimerAt   time.Time     // when actTimer fires
}

func newBackend(s *Sweeper, key string, t target) *backend {
	ctx, cancel := context.WithCancel(s.ctx)
	return &backend{
		s: s, key: key, ctx: ctx, cancel: cancel, done: make(chan struct{}), t: t,
		log: s.log.With("backend", key),
	}
}

// stop ends the stream and the timer; run returns soon after.
func (b *backend) stop() {
	b.cancel()
	b.mu.Lock()
	b.ended = true
	b.stopTimerLocked()
	b.stopActivityLocked()
	b.mu.Unlock()
}

func (b *backend) setGrace(g time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.t.grace != g {
		b.t.grace = g
		b.rearmLocked()
	}
}

// run holds the stream open for as long as the pod is followed, reconnecting
// with capped backoff (a sidecar still starting is retried at a short, flat
// interval instead). A lost stream never counts as idleness: while it is
// down no timer runs, and a deadline can only be armed again from a fresh
// event on a new stream.
func (b *backend) run() {
	defer close(b.done)
	bo := newBackoff(b.s.cfg.BackoffMin, b.s.cfg.BackoffMax)
	startupEnds := time.Now().Add(b.s.cfg.StartupWindow)
	everConnected := false
	for {
		got, err := b.streamOnce()
		if b.ctx.Err() != nil {
			return
		}
		if got {
			bo.Reset()
			everConnected = true
		}
		b.s.m.reconnects.Inc()
		d := b.s.cfg.StartupRetry
		if everConnected || time.Now().After(startupEnds) {
			d = bo.Next()
		}
		b.log.Debug("status stream lost; reconnecting", "err", err, "in", d)
		t := time.NewTimer(d)
		select {
		case <-b.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// streamOnce opens one stream and feeds its events until it ends. got says
// whether it delivered any event (a working connection resets the backoff).
func (b *backend) streamOnce() (got bool, err error) {
	b.mu.Lock()
	addr, proof := b.t.addr, b.t.proof
	b.mu.Unlock()
	st, err := openStreamWithProof(b.ctx, addr, proof, b.s.cfg.ConnectTimeout, b.s.cfg.ReadIdle)
	if err != nil {
		return false, err
	}
	b.s.m.streamsOpen.Inc()
	b.mu.Lock()
	b.cur = st
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.cur, b.live = nil, false
		b.stopTimerLocked()
		b.mu.Unlock()
		st.Close()
		b.s.m.streamsOpen.Dec()
	}()
	for {
		ev, err := st.Next()
		if err != nil {
			return got, err
		}
		got = true
		b.handle(ev, b.s.clock.Now())
	}
}

// handle takes one state report from the live stream.
func (b *backend) handle(ev Event, received time.Time) {
	b.mu.Lock()
	b.last, b.live = ev, true
	if ev.Ready && b.readySeen.IsZero() {
		b.readySeen = received
	}
	needReady := ev.Ready && !b.readyDone && !b.ended && b.claimReadWaitLocked(received) == 0
	at := received
	if b.warmClaim() {
		at = b.readySeen
	}
	b.mu.Unlock()
	if needReady {
		b.s.markReady(b, ev, at)
	}
	b.mu.Lock()
	b.rearmLocked()
	b.noteActivityLocked()
	b.mu.Unlock()
}

// readyRecorded is markReady's outcome; keepalive is the slab's last
// keepalive (zero for none).
func (b *backend) readyRecorded(since time.Time, ended bool, keepalive time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.readyDone = true
	b.readySince = since
	b.ended = b.ended || ended
	if keepalive.After(b.keepalive) {
		b.keepalive = keepalive
	}
}

func (b *backend) stopTimerLocked() {
	b.timerGen++
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
}

// rearmLocked replaces the idle timer according to the latest state: armed
// only while the stream is live, the slab is Ready and nothing is live.
func (b *backend) rearmLocked() {
	b.stopTimerLocked()
	if !b.live || b.ended || b.sweeping {
		return
	}
	if !b.readyDone {
		if b.last.Ready {
			// A warm claim's slab is read once its Ready record is due;
			// otherwise recording Ready failed (API trouble), or the
			// claim's record is late: try again shortly.
			d := b.s.cfg.RetryDelay
			if w := b.claimReadWaitLocked(b.s.clock.Now()); w > 0 {
				d = w
			}
			b.armLocked(d, b.retryReady)
		}
		return
	}
	deadline, ok := idleDeadline(b.last, b.readySince, b.keepalive, b.t.grace)
	if !ok {
		return
	}
	gen := b.timerGen
	b.armLocked(max(deadline.Sub(b.s.clock.Now()), 0), func() { b.fire(gen) })
}

// warmClaim reports whether the followed pod is a pool's warm pod that a
// claim took: it keeps its own name (a cold backend's pod is named after its
// slab).
func (b *backend) warmClaim() bool {
	return b.key != b.t.namespace+"/"+b.t.slab
}

// claimReadWaitLocked is how long, at now, a warm claim's Ready still waits
// before the sweeper reads its slab: until the claim's own Ready record is
// due (lifecycle.ClaimRecordWait after the sweeper first saw its app ready,
// which is at the take), and never past half its grace period. The
// api-server that claimed records the claim's Ready itself, right after it
// answered; the sweeper follows the pod from the take. Reading the slab
// right away found the record missing (it was on its way) and read it again
// every RetryDelay, and the first status.activity write followed at once: in
// a burst of 100 claims against 100 warm pods on the local cluster, ~250
// requests to an API server that the claims themselves were waiting on.
// With no sweeper on the node at all, one such burst had all 100 Ready in
// 2.4 s at 4.9 CPU-seconds of work, against 3.8 s and 7.7 with it
// (2026-12-02, docs/pools.md). The idle clock loses nothing: it counts from
// the first ready event (markReady's received), not from the read.
func (b *backend) claimReadWaitLocked(now time.Time) time.Duration {
	if !b.warmClaim() || b.readySeen.IsZero() {
		return 0
	}
	d := min(lifecycle.ClaimRecordWait, b.t.grace/2)
	return max(0, b.readySeen.Add(d).Sub(now))
}

func (b *backend) armLocked(d time.Duration, f func()) {
	b.timer = b.s.clock.AfterFunc(d, f)
}

func (b *backend) retryReady() {
	b.mu.Lock()
	ev, live := b.last, b.live
	b.mu.Unlock()
	if live && b.ctx.Err() == nil {
		b.handle(ev, b.s.clock.Now())
	}
}

// fire runs at the idle deadline. It sweeps only after a fresh read of the
// sidecar's state (a new connection's first event) agrees that the backend
// has been idle for its grace period: a stream that went silent without
// breaking (a dropped network path) cannot make a stale "idle" look current.
func (b *backend) fire(gen uint64) {
	b.mu.Lock()
	if gen != b.timerGen || !b.live || b.ended || b.sweeping || b.ctx.Err() != nil {
		b.mu.Unlock()
		return
	}
	deadline, ok := idleDeadline(b.last, b.readySince, b.keepalive, b.t.grace)
	if !ok {
		b.mu.Unlock()
		return
	}
	if b.s.clock.Now().Before(deadline) {
		b.rearmLocked()
		b.mu.Unlock()
		return
	}
	b.sweeping = true
	t, readySince, keepalive := b.t, b.readySince, b.keepalive
	b.mu.Unlock()

	// The slab is read while the sidecar is confirmed, saving a round trip.
	prefetch := b.s.prefetchSlab(b.ctx, t)
	ev, err := readOnce(b.ctx, t.addr, t.proof, b.s.cfg.ConfirmTimeout)
	if err != nil {
		// Not readable now: not idle as far as we know. Drop the stream
		// (it may be a silent dead one) and decide again from a new one.
		b.s.m.confirmFailures.Inc()
		b.log.Info("idle deadline reached but the sidecar is unreachable; not sweeping", "err", err)
		b.mu.Lock()
		b.sweeping = false
		cur := b.cur
		b.mu.Unlock()
		if cur != nil {
			cur.Close()
		}
		return
	}
	deadline, ok = idleDeadline(ev, readySince, keepalive, t.grace)
	if !ok || b.s.clock.Now().Before(deadline) {
		// Activity the stream had not delivered yet; it will.
		b.mu.Lock()
		b.sweeping = false
		if b.live {
			b.last = ev
		}
		b.rearmLocked()
		b.mu.Unlock()
		return
	}
	_, keptAlive, err := b.s.markSwept(b.ctx, t, ev, keepalive, deadline, prefetch)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweeping = false
	if err == nil && keptAlive.After(b.keepalive) {
		// A keepalive call this sweeper had not seen: a new deadline.
		b.keepalive = keptAlive
		if b.live {
			b.last = ev
		}
		b.rearmLocked()
		b.noteActivityLocked()
		return
	}
	if err != nil {
		if b.ctx.Err() == nil {
			b.log.Error("recording Swept failed; retrying", "err", err)
			b.stopTimerLocked()
			g := b.timerGen
			b.armLocked(b.s.cfg.RetryDelay, func() { b.fire(g) })
		}
		return
	}
	b.ended = true
	b.stopTimerLocked()
}
