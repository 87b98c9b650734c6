// Package server assembles the sidecar: the public proxy, the status port and
// the readiness watcher, with a graceful drain on shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"spawner.dev/common/logs"
	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/proxy"
	"spawner.dev/sidecar/readiness"
	"spawner.dev/sidecar/status"
)

// Config is everything main collects from flags and environment (AddFlags).
type Config struct {
	ServePort    int
	UpstreamPort int
	StatusPort   int
	// WSIdle > 0: a WebSocket without data frames for this long stops
	// counting as live.
	WSIdle time.Duration
	// IgnoreRequests: in-flight HTTP requests (SSE, long-poll) do not keep
	// the backend alive; only WebSockets do (their end still counts as
	// activity).
	IgnoreRequests bool
	// StatusBlockFile: while this file exists the status port is closed (tests).
	StatusBlockFile string
	// Drain is the longest the sidecar keeps proxying after SIGTERM while the
	// app finishes its requests.
	Drain time.Duration
	// ProcNet is where the tcp/tcp6 socket tables are read (/proc/net).
	ProcNet string
	// Host is the address to bind the public and status ports on ("" = all).
	Host string
	// BodyIdleTimeout bounds each pause in a request body (0: the proxy's
	// default); see proxy.Config.
	BodyIdleTimeout time.Duration
	// RouterProof, when set, is required from every request on the public
	// port and on the status port's /_events and /metrics (the fence, see
	// docs/architecture.md); main reads it from wire.SidecarRouterProofEnv.
	RouterProof string
	// Log is the process's logging (-v, --log-json); Run sets it up unless
	// Logger is given (tests).
	Log    logs.Options
	Logger *slog.Logger

	// flagErrs are environment variables AddFlags could not read.
	flagErrs []error
}

// Readiness: the socket tables are read every 20 ms until the app listens,
// then after 1 s, doubling to 2 min while it keeps listening (an idle sidecar
// then wakes for it about once per forced GC cycle, which the Go runtime runs
// every 2 min anyway). During the drain they are read every 20 ms, since
// the app closing its listener is what normally ends it.
var readySchedule = readiness.Schedule{Fast: 20 * time.Millisecond, Slow: time.Second, Max: 2 * time.Minute}

// Run serves until ctx ends, then drains: it keeps proxying until nothing is
// in flight and the app has stopped listening, or Drain has passed.
func Run(ctx context.Context, c Config) error {
	logger := c.Logger
	if logger == nil {
		logger = c.Log.Setup()
	}
	if err := errors.Join(c.flagErrs...); err != nil {
		return err
	}
	tracker := activity.NewWithPolicy(activity.Policy{WSIdle: c.WSIdle, IgnoreRequests: c.IgnoreRequests})
	reg := metrics.NewRegistry()
	px := proxy.New(proxy.Config{
		Upstream: net.JoinHostPort("127.0.0.1", strconv.Itoa(c.UpstreamPort)),
		Tracker:  tracker,
		Metrics:  proxy.NewMetrics(reg, tracker),
		MaxIdle:  1024,

		BodyIdleTimeout: c.BodyIdleTimeout,
		RouterProof:     c.RouterProof,
	})

	public, err := net.Listen("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.ServePort)))
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- px.Serve(public) }()

	stop := make(chan struct{})
	defer close(stop)
	go readiness.Watch(c.ProcNet, c.UpstreamPort, readySchedule, tracker.SetReady, stop)
	go tracker.WatchIdle(stop)

	statusCtx, stopStatus := context.WithCancel(context.Background())
	defer stopStatus()
	statusDone := make(chan error, 1)
	go func() {
		statusDone <- status.Serve(statusCtx, net.JoinHostPort(c.Host, strconv.Itoa(c.StatusPort)),
			&status.Handler{Tracker: tracker, Metrics: reg, RouterProof: c.RouterProof}, c.StatusBlockFile)
	}()
	logger.Info("sidecar serving", "public", c.ServePort, "upstream", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.UpstreamPort)), "status", c.StatusPort)

	select {
	case err := <-served:
		return fmt.Errorf("public server: %w", err)
	case err := <-statusDone:
		px.Close()
		return fmt.Errorf("status server: %w", err)
	case <-ctx.Done():
	}

	logger.Info("sidecar draining", "drain", c.Drain.String())
	drain(tracker, c.Drain, func() bool {
		ready, _ := readiness.Listening(c.ProcNet, c.UpstreamPort)
		return ready
	})
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = px.Shutdown(shutdownCtx)
	px.CloseIdle()
	stopStatus()
	<-statusDone
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // streams still open at the end of the drain are cut
	}
	return err
}

// drain waits until the app is gone and nothing is live, or for at most d.
// Until then the public port keeps accepting: in Kubernetes the endpoints may
// still route new requests for a moment after SIGTERM. listening reads the
// socket tables afresh: the watcher may be minutes into its back-off, so the
// drain checks every readySchedule.Fast itself, for at most d.
func drain(t *activity.Tracker, d time.Duration, listening func() bool) {
	deadline := time.Now().Add(d)
	sub, unsubscribe := t.Subscribe()
	defer unsubscribe()
	for {
		t.SetReady(listening())
		s := t.Snapshot()
		if !s.Ready && s.InFlightRequests == 0 && s.WebSockets == 0 {
			return
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return
		}
		select {
		case <-sub.C:
		case <-time.After(min(wait, readySchedule.Fast)):
		}
	}
}
