// Package status serves the node-local status port: the /_events stream the
// sweeper follows, /healthz, /readyz and /metrics.
package status

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"os"
	"time"

	"spawner.dev/common/wire"
	"spawner.dev/sidecar/activity"
)

// Timing of the /_events stream.
const (
	// MinEventInterval coalesces bursts: after an event, further changes wait
	// this long and go out as one event with the latest state. The first
	// change after a quiet period, and any readiness flip, go out at once.
	MinEventInterval = 200 * time.Millisecond
	// KeepAliveEvery spaces the ": keep-alive" comments of an idle stream.
	// Each one wakes the sidecar and the sweeper, and the Go runtime's
	// monitor thread around it: at 15 s they were most of an idle sidecar's
	// remaining wake-ups (docs/sidecar.md, Idle cost). The sweeper finds a
	// dead network path by TCP keep-alive, which costs neither process a
	// wake-up; the comment only proves the sidecar process still writes.
	KeepAliveEvery = time.Minute
)

// Handler serves /_events, /healthz, /readyz and /metrics.
type Handler struct {
	Tracker *activity.Tracker
	Metrics http.Handler
	// RouterProof, when set, is required in the wire.HeaderRouterProof
	// header of every request but /healthz and /readyz (403 otherwise):
	// the sweeper sends it, other pods cannot. /healthz and /readyz stay
	// open for the kubelet's probes (they tell only that the sidecar runs
	// and whether the app listened).
	// Empty: no check (tests, benches, a sidecar run by hand).
	RouterProof string
	// KeepAlive overrides KeepAliveEvery (tests).
	KeepAlive time.Duration
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !h.allowed(w, r) {
		return // every other path, unknown ones too: a stranger learns nothing
	}
	switch r.URL.Path {
	case "/_events":
		h.events(w, r)
	case "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	case "/readyz":
		// The startup probe of a warm pool pod (docs/pools.md): 200 once the
		// app listens on its port, so the pod's Ready condition says a claim
		// can take it; the pool does not stream /_events.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !h.Tracker.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("app not listening\n"))
			return
		}
		w.Write([]byte("ready\n"))
	case "/metrics":
		h.Metrics.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// allowed checks the router proof (in constant time, so the answer's timing
// tells nothing about how much of a guess was right) and answers 403 when
// it is wrong or missing.
func (h *Handler) allowed(w http.ResponseWriter, r *http.Request) bool {
	if h.RouterProof == "" {
		return true
	}
	got := r.Header.Values(wire.HeaderRouterProof)
	if len(got) == 1 && subtle.ConstantTimeCompare([]byte(got[0]), []byte(h.RouterProof)) == 1 {
		return true
	}
	http.Error(w, "forbidden: only the sweeper may read this sidecar's status", http.StatusForbidden)
	return false
}

func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	sub, unsubscribe := h.Tracker.Subscribe()
	defer unsubscribe()
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)

	every := h.KeepAlive
	if every == 0 {
		every = KeepAliveEvery
	}
	keepAlive := time.NewTicker(every)
	defer keepAlive.Stop()
	coalesce := time.NewTimer(0)
	<-coalesce.C
	pending := false

	var last activity.Snapshot
	var lastSent time.Time
	buf := make([]byte, 0, 256)
	send := func(force bool) bool {
		s := h.Tracker.Snapshot()
		if !force && s.SameState(last) {
			return true
		}
		last, lastSent = s, time.Now()
		ev := s.Event()
		buf = ev.AppendSSE(buf[:0])
		if _, err := w.Write(buf); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(true) {
		return
	}
	lastSent = time.Time{} // the initial state is not a change: the next one goes out at once
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sub.C:
			// A readiness flip skips the window: the sweeper's Ready fast path
			// waits on it, and it happens at most once per poll.
			if h.Tracker.Ready() != last.Ready {
				if !send(false) {
					return
				}
				continue
			}
			if pending {
				continue
			}
			if wait := MinEventInterval - time.Since(lastSent); wait > 0 {
				pending = true
				sub.Pause()
				coalesce.Reset(wait)
				continue
			}
			if !send(false) {
				return
			}
		case <-coalesce.C:
			pending = false
			sub.Resume() // before send reads the state, so no change falls in between
			if !send(false) {
				return
			}
		case <-keepAlive.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

// Serve runs h on addr until ctx ends. While blockFile (if set) exists the
// port is closed: existing streams are cut and new connections refused,
// which is how tests simulate an unreachable sidecar. It is polled every
// blockPoll.
func Serve(ctx context.Context, addr string, h http.Handler, blockFile string) error {
	const blockPoll = 50 * time.Millisecond
	blocked := func() bool {
		if blockFile == "" {
			return false
		}
		_, err := os.Stat(blockFile)
		return err == nil
	}
	for {
		for blocked() {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(blockPoll):
			}
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		watch := time.NewTicker(blockPoll)
		if blockFile == "" {
			watch.Stop()
		}
	running:
		for {
			select {
			case <-ctx.Done():
				watch.Stop()
				srv.Close()
				return nil
			case err := <-served:
				watch.Stop()
				if !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			case <-watch.C:
				if blocked() {
					break running
				}
			}
		}
		watch.Stop()
		srv.Close()
		<-served
	}
}
