package sweeper

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// Writing status.activity: the sweeper already follows every sidecar's
// status stream on its node, so it is the one writer of what keeps each
// backend alive. Writes are coalesced per backend:
//
//   - a change between busy and idle (and the first write after the slab
//     became Ready, or after this sweeper started) goes out at once, or
//     ActivityMinGap after the backend's previous write, whichever is later;
//   - any other change (the number of connections while busy, a keepalive
//     while idle) waits until ActivityRefresh after the previous write;
//   - an unchanged state is never written again (a stable busy backend costs
//     no writes however many frames its sockets carry).
//
// So a backend causes at most one write per ActivityMinGap (2 s) and, while
// its state does not flip, one per ActivityRefresh (10 s) at most. Each
// write is one JSON merge patch of the status subresource: no read, no
// resourceVersion, so it never conflicts and never clobbers another writer's
// condition (it sets nothing but status.activity's own fields, and never
// keepaliveTime, which the api-server owns).

// activityState is what one write records, second-truncated as metav1.Time
// serialises it, so that a state equal to the last one written is not
// written again.
type activityState struct {
	busy                       bool
	conns, websockets, flights int
	last                       string
	lastAt                     time.Time
	idleSince, sweepAfter      time.Time // zero while busy
}

// activityLocked is the state to write now from the latest event; ok is false
// when there is nothing to write (stream not live, slab not Ready yet, or
// ended).
func (b *backend) activityLocked() (a activityState, ok bool) {
	if !b.live || !b.readyDone || b.ended {
		return activityState{}, false
	}
	ev := b.last
	a = activityState{
		busy:       ev.LiveConnections > 0,
		conns:      ev.LiveConnections,
		websockets: ev.WebSockets,
		flights:    ev.InFlightRequests,
	}
	if a.busy {
		a.last = ev.LastActivity
		return a, true
	}
	a.last, a.lastAt = lastActivity(ev, b.keepalive)
	a.lastAt = a.lastAt.Truncate(time.Second)
	a.idleSince = a.lastAt
	if d, ok := idleDeadline(ev, b.readySince, b.keepalive, b.t.grace); ok {
		a.sweepAfter = d.Truncate(time.Second)
	}
	return a, true
}

// lastActivity is what the backend last did and when: the sidecar's report,
// or a later keepalive.
func lastActivity(ev Event, keepalive time.Time) (string, time.Time) {
	if keepalive.After(ev.LastActive) {
		return wire.ActivityKeepalive, keepalive
	}
	what := ev.LastActivity
	if what == "" {
		what = "activity" // a sidecar older than last_activity
	}
	return what, ev.LastActive
}

// noteActivityLocked writes, or schedules the write of, the current state
// when it differs from the last one written.
func (b *backend) noteActivityLocked() {
	want, ok := b.activityLocked()
	if !ok || b.actWriting || (b.actWritten && want == b.actLast) {
		return
	}
	gap := b.s.cfg.ActivityRefresh
	if !b.actWritten || want.busy != b.actLast.busy {
		gap = b.s.cfg.ActivityMinGap
	}
	now := b.s.clock.Now()
	at := b.actLastWrite.Add(gap)
	if b.actTimer != nil {
		if !at.Before(b.actTimerAt) {
			return // already due no later than this change needs
		}
		b.actTimer.Stop()
		b.actTimer = nil
	}
	if !at.After(now) {
		b.actWriting = true
		go b.writeActivity()
		return
	}
	b.actTimerAt = at
	b.actTimer = b.s.clock.AfterFunc(at.Sub(now), func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.actTimer = nil
		b.noteActivityLocked()
	})
}

// activityPatch is the merge patch setting status.activity to a; the times
// of an idle backend are cleared while it is busy.
func activityPatch(a activityState, now time.Time) []byte {
	t := func(v time.Time) any {
		if v.IsZero() {
			return nil // merge patch: remove the field
		}
		return metav1.NewTime(v)
	}
	lastAt := a.lastAt
	if a.busy {
		lastAt = now
	}
	act := map[string]any{
		"connections":      a.conns,
		"webSockets":       a.websockets,
		"inFlightRequests": a.flights,
		"lastActivity":     a.last,
		"lastActivityTime": t(lastAt),
		"idleSince":        t(a.idleSince),
		"sweepAfter":       t(a.sweepAfter),
		"updateTime":       metav1.NewTime(now),
	}
	body, _ := json.Marshal(map[string]any{"status": map[string]any{"activity": act}})
	return body
}

// writeActivity writes the current state (one merge patch), then schedules
// whatever changed while it was on the way.
func (b *backend) writeActivity() {
	b.mu.Lock()
	a, ok := b.activityLocked()
	t := b.t
	b.mu.Unlock()
	var (
		res *spawnerv1.SessionLivedBackend
		err error
	)
	now := b.s.clock.Now()
	if ok {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		res, err = b.s.slabs.SpawnerV1().SessionLivedBackends(t.namespace).Patch(ctx, t.slab,
			types.MergePatchType, activityPatch(a, now), metav1.PatchOptions{}, "status")
		cancel()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.actWriting = false
	if !ok {
		return
	}
	b.actLastWrite = now
	switch {
	case err == nil:
		b.s.m.activityWrites.Inc()
		b.actWritten, b.actLast = true, a
		if act := res.Status.Activity; act != nil && act.KeepaliveTime != nil && act.KeepaliveTime.After(b.keepalive) {
			b.keepalive = act.KeepaliveTime.Time
			b.rearmLocked()
		}
	case apierrors.IsNotFound(err):
		b.ended = true // the slab is gone; its pod follows
		return
	default:
		if b.ctx.Err() != nil {
			return
		}
		b.s.m.apiErrors.Inc()
		b.log.Error("writing activity", "err", err)
	}
	b.noteActivityLocked()
}

// stopActivityLocked drops a scheduled write.
func (b *backend) stopActivityLocked() {
	if b.actTimer != nil {
		b.actTimer.Stop()
		b.actTimer = nil
	}
}

// sweptMessage is the Swept condition's message (and so the Event the
// controller records for it): how long the backend was idle, what its last
// activity was and when.
func sweptMessage(ev Event, keepalive, now time.Time, grace time.Duration) string {
	what, at := lastActivity(ev, keepalive)
	return fmt.Sprintf("idle %d s, last activity: %s at %s (grace period %d s)",
		int64(now.Sub(at)/time.Second), what, at.UTC().Format(time.RFC3339), int64(grace/time.Second))
}

// setSweptActivity is the activity a sweep records with Swept.
func setSweptActivity(st *spawnerv1.SessionLivedBackendStatus, ev Event, keepalive, deadline, now time.Time) {
	what, at := lastActivity(ev, keepalive)
	act := st.Activity
	if act == nil {
		act = &spawnerv1.BackendActivity{}
		st.Activity = act
	}
	last, sweep, upd := metav1.NewTime(at), metav1.NewTime(deadline), metav1.NewTime(now)
	act.Connections, act.WebSockets, act.InFlightRequests = 0, int32(ev.WebSockets), int32(ev.InFlightRequests)
	act.LastActivity, act.LastActivityTime = what, &last
	act.IdleSince, act.SweepAfter, act.UpdateTime = last.DeepCopy(), &sweep, &upd
}
