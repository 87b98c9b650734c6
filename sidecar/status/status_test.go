package status

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"spawner.dev/common/metrics"
	"spawner.dev/common/wire"
	"spawner.dev/sidecar/activity"
)

type event struct {
	Ready              bool   `json:"ready"`
	LiveConnections    int    `json:"live_connections"`
	SecondsSinceActive int    `json:"seconds_since_active"`
	LastActive         string `json:"last_active"`
	InFlightRequests   int    `json:"in_flight_requests"`
	WebSockets         int    `json:"websockets"`
}

// stream reads SSE events (and comments) from a status server.
type stream struct {
	t     *testing.T
	lines chan string
}

func openStream(t *testing.T, url string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/_events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	s := &stream{t: t, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() != "" {
				s.lines <- sc.Text()
			}
		}
		close(s.lines)
	}()
	return s
}

func (s *stream) next(within time.Duration) (string, time.Duration) {
	s.t.Helper()
	start := time.Now()
	select {
	case l, ok := <-s.lines:
		if !ok {
			s.t.Fatal("stream ended")
		}
		return l, time.Since(start)
	case <-time.After(within):
		s.t.Fatalf("no event within %s", within)
		return "", 0
	}
}

func (s *stream) nextEvent(within time.Duration) (event, time.Duration) {
	s.t.Helper()
	line, d := s.next(within)
	data, ok := strings.CutPrefix(line, "data: ")
	if !ok {
		s.t.Fatalf("not an event: %q", line)
	}
	var e event
	if err := json.Unmarshal([]byte(data), &e); err != nil {
		s.t.Fatalf("bad JSON %q: %v", data, err)
	}
	if _, err := time.Parse(time.RFC3339Nano, e.LastActive); err != nil {
		s.t.Fatalf("last_active %q: %v", e.LastActive, err)
	}
	return e, d
}

func (s *stream) quiet(d time.Duration) {
	s.t.Helper()
	select {
	case l := <-s.lines:
		s.t.Fatalf("unexpected %q", l)
	case <-time.After(d):
	}
}

func newServer(t *testing.T, tr *activity.Tracker, keepAlive time.Duration) *httptest.Server {
	srv := httptest.NewServer(&Handler{Tracker: tr, Metrics: metrics.NewRegistry(), KeepAlive: keepAlive})
	t.Cleanup(srv.Close)
	return srv
}

func TestEventsOrderAndContent(t *testing.T) {
	tr := activity.New(0)
	srv := newServer(t, tr, time.Hour)
	s := openStream(t, srv.URL)

	first, _ := s.nextEvent(time.Second)
	if first.Ready || first.LiveConnections != 0 || first.WebSockets != 0 || first.InFlightRequests != 0 {
		t.Fatalf("initial state %+v", first)
	}
	// The first change after a quiet period goes out at once: this is the
	// sweeper's Ready fast path.
	tr.SetReady(true)
	e, d := s.nextEvent(time.Second)
	if !e.Ready || d > 50*time.Millisecond {
		t.Fatalf("ready event %+v after %s", e, d)
	}
	time.Sleep(MinEventInterval)

	tr.RequestStarted()
	e, _ = s.nextEvent(time.Second)
	if e.InFlightRequests != 1 || e.LiveConnections != 1 || e.SecondsSinceActive != 0 {
		t.Fatalf("request started: %+v", e)
	}
	ws := tr.SocketOpened()
	e, _ = s.nextEvent(time.Second) // within the coalescing window: delayed, still delivered
	if e.WebSockets != 1 || e.LiveConnections != 2 {
		t.Fatalf("socket opened: %+v", e)
	}
	tr.RequestFinished()
	ws.Closed()
	e, _ = s.nextEvent(time.Second)
	if e.LiveConnections != 0 || e.WebSockets != 0 || e.InFlightRequests != 0 {
		t.Fatalf("all ended: %+v", e)
	}
	if la, _ := time.Parse(time.RFC3339Nano, e.LastActive); time.Since(la) > time.Second {
		t.Fatalf("last_active %s is not the end of the last connection", e.LastActive)
	}
	s.quiet(2 * MinEventInterval) // nothing changed: nothing sent
}

func TestEventsCoalesceUnderLoad(t *testing.T) {
	tr := activity.New(0)
	srv := newServer(t, tr, time.Hour)
	s := openStream(t, srv.URL)
	s.nextEvent(time.Second)
	stop := time.Now().Add(time.Second)
	for time.Now().Before(stop) {
		tr.RequestStarted()
		tr.RequestFinished()
	}
	n := 0
	for {
		select {
		case <-s.lines:
			n++
			continue
		case <-time.After(2 * MinEventInterval):
		}
		break
	}
	if max := int(time.Second/MinEventInterval) + 2; n == 0 || n > max {
		t.Fatalf("%d events for a second of requests, want 1..%d", n, max)
	}
}

func TestKeepAliveComment(t *testing.T) {
	srv := newServer(t, activity.New(0), 50*time.Millisecond)
	s := openStream(t, srv.URL)
	s.nextEvent(time.Second)
	if l, _ := s.next(time.Second); l != ": keep-alive" {
		t.Fatalf("got %q", l)
	}
}

func TestHealthzAndMetrics(t *testing.T) {
	reg := metrics.NewRegistry()
	reg.NewCounter("probe_total", "x").Inc()
	srv := httptest.NewServer(&Handler{Tracker: activity.New(0), Metrics: reg})
	defer srv.Close()
	for path, want := range map[string]string{"/healthz": "ok\n", "/metrics": "probe_total 1\n"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		bufio.NewReader(resp.Body).WriteTo(&b)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(b.String(), want) {
			t.Errorf("%s: %d %q", path, resp.StatusCode, b.String())
		}
	}
}

func TestBlockFileClosesThePort(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	block := filepath.Join(t.TempDir(), "block")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, addr, &Handler{Tracker: activity.New(0), Metrics: metrics.NewRegistry()}, block)
	}()
	defer func() { cancel(); <-done }()

	reachable := func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}
	waitUntil := func(want bool) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if reachable() == want {
				return
			}
		}
		t.Fatalf("reachable never became %v", want)
	}
	waitUntil(true)
	s := openStream(t, "http://"+addr)
	s.nextEvent(time.Second)

	os.WriteFile(block, nil, 0o644)
	waitUntil(false)
	select { // the open stream was cut too
	case _, ok := <-s.lines:
		if ok {
			t.Fatal("stream still delivering")
		}
	case <-time.After(time.Second):
		t.Fatal("stream not cut")
	}
	os.Remove(block)
	waitUntil(true)
}

// With a router proof configured, /_events, /metrics and any other path but
// /healthz answer 403 without exactly that value in Spawner-Router-Proof (and never start a stream);
// /healthz stays open.
// TestReadyzFollowsTheApp: /readyz (a warm pool pod's startup probe) is
// 503 until the app listens, then 200, without the router proof.
func TestReadyzFollowsTheApp(t *testing.T) {
	tr := activity.New(0)
	srv := httptest.NewServer(&Handler{Tracker: tr, Metrics: metrics.NewRegistry(), RouterProof: "some-proof"})
	defer srv.Close()
	get := func() int {
		t.Helper()
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before the app listens: %d, want 503", code)
	}
	tr.SetReady(true)
	if code := get(); code != http.StatusOK {
		t.Errorf("/readyz once the app listens: %d, want 200", code)
	}
}

func TestRouterProofGuardsEventsAndMetrics(t *testing.T) {
	const proof = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
	tr := activity.New(0)
	srv := httptest.NewServer(&Handler{Tracker: tr, Metrics: metrics.NewRegistry(), RouterProof: proof})
	defer srv.Close()
	do := func(path string, values ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		for _, v := range values {
			req.Header.Add(wire.HeaderRouterProof, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Content-Type")
	}
	for _, path := range []string{"/_events", "/metrics", "/", "/unknown"} {
		for _, vs := range [][]string{nil, {""}, {"wrong"}, {proof[:len(proof)-1]}, {proof + "x"}, {"wrong", proof}, {proof, proof}} {
			if code, ct := do(path, vs...); code != 403 || ct == "text/event-stream" {
				t.Errorf("%s with proof %q: %d %s, want 403", path, vs, code, ct)
			}
		}
	}
	if code, _ := do("/metrics", proof); code != 200 {
		t.Errorf("/metrics with the proof: %d", code)
	}
	if code, _ := do("/healthz"); code != 200 {
		t.Errorf("/healthz without the proof: %d, want 200", code)
	}
	// With the proof, the stream starts with the current state.
	req, _ := http.NewRequest("GET", srv.URL+"/_events", nil)
	req.Header.Set(wire.HeaderRouterProof, proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if resp.StatusCode != 200 || !strings.HasPrefix(line, `data: {"ready":false`) {
		t.Fatalf("%d %q", resp.StatusCode, line)
	}
}
