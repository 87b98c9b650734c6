package sweeper

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
	"spawner.dev/generated/clientset/versioned/fake"
)

// fakeClock runs AfterFunc callbacks when Advance passes their time, in the
// caller's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       *fakeClock
	at      time.Time
	f       func()
	stopped bool
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

// pending counts timers not yet fired or stopped.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// Advance moves time forward by d, firing due timers in time order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
		var due *fakeTimer
		for _, t := range c.timers {
			if !t.stopped && !t.at.After(end) {
				due = t
				break
			}
		}
		if due == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		due.stopped = true
		if due.at.After(c.now) {
			c.now = due.at
		}
		c.mu.Unlock()
		due.f()
	}
}

// fakeSidecar serves /_events like the real sidecar: the current state, then
// one event per change. It can refuse connections (unreachable) or accept and
// stay silent (a dropped network path).
type fakeSidecar struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	state  Event
	subs   map[chan Event]bool
	mode   string // "", "refuse", "silent"
	opened int
	proof  string // when set, required in wire.HeaderRouterProof (403 otherwise), as the sidecar does
	denied int    // requests refused for want of the proof
}

func newFakeSidecar(t *testing.T, state Event) *fakeSidecar {
	f := &fakeSidecar{t: t, state: state, subs: map[chan Event]bool{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSidecar) port() int {
	_, p, _ := net.SplitHostPort(f.srv.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}

func (f *fakeSidecar) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	mode := f.mode
	f.opened++
	f.mu.Unlock()
	if f.proof != "" && r.Header.Get(wire.HeaderRouterProof) != f.proof {
		f.mu.Lock()
		f.denied++
		f.mu.Unlock()
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	switch mode {
	case "refuse":
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
		return
	case "silent":
		<-r.Context().Done()
		return
	}
	if r.URL.Path != "/_events" {
		http.NotFound(w, r)
		return
	}
	ch := make(chan Event, 16)
	f.mu.Lock()
	f.subs[ch] = true
	cur := f.state
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	send := func(ev Event) bool {
		_, err := w.Write(ev.AppendSSE(nil)) // the sidecar's own encoder
		return err == nil && http.NewResponseController(w).Flush() == nil
	}
	if !send(cur) {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok || !send(ev) {
				return
			}
		}
	}
}

// set changes the state and tells every stream.
func (f *fakeSidecar) set(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = ev
	for ch := range f.subs {
		ch <- ev
	}
}

// setMode switches behaviour and cuts existing streams ("silent" keeps them
// open without sending anything more).
func (f *fakeSidecar) setMode(mode string) {
	f.mu.Lock()
	f.mode = mode
	subs := f.subs
	if mode == "refuse" {
		for ch := range subs {
			close(ch)
		}
		f.subs = map[chan Event]bool{}
	}
	if mode == "silent" {
		// Existing streams stay open but their senders are detached.
		f.subs = map[chan Event]bool{}
	}
	f.mu.Unlock()
	if mode == "refuse" {
		f.srv.CloseClientConnections()
	}
}

type harness struct {
	t       *testing.T
	clock   *fakeClock
	client  *fake.Clientset
	s       *Sweeper
	sidecar *fakeSidecar
	t0      time.Time
}

const testGrace = 5 * time.Second

func newHarness(t *testing.T, initial Event, slabConditions ...string) *harness {
	t0 := time.Date(2026, 11, 29, 4, 0, 0, 0, time.UTC)
	h := &harness{t: t, t0: t0, clock: &fakeClock{now: t0}}
	if initial.LastActive.IsZero() {
		initial.LastActive = t0
	}
	h.sidecar = newFakeSidecar(t, initial)
	slab := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: "b1", Namespace: "ns", Generation: 1},
	}
	for _, c := range append([]string{lifecycle.ConditionPodCreated, lifecycle.ConditionScheduled, lifecycle.ConditionRunning}, slabConditions...) {
		lifecycle.Record(&slab.Status, c, c, "", 1)
	}
	h.client = fake.NewSimpleClientset(slab) // NewClientset needs an OpenAPI schema the generated fake lacks
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testLogLevel}))
	h.s = New(Config{
		NodeName: "n", StatusPort: h.sidecar.port(),
		BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		ConfirmTimeout: 300 * time.Millisecond, RetryDelay: 50 * time.Millisecond,
	}, h.client, h.clock, log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	h.s.ctx = ctx
	t.Cleanup(func() { cancel(); h.s.stopAll() })
	return h
}

func testPod(port int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "b1", Namespace: "ns", UID: "u1",
			Labels:      map[string]string{spawnerv1.LabelManagedBy: spawnerv1.ManagedByValue, spawnerv1.LabelBackend: "b1"},
			Annotations: map[string]string{spawnerv1.AnnotationGracePeriodSeconds: "5"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
			{Name: spawnerv1.SidecarContainerName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
		}},
	}
}

func (h *harness) follow() *backend {
	h.s.syncPod(testPod(h.sidecar.port()))
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	b := h.s.backends["ns/b1"]
	if b == nil {
		h.t.Fatal("pod not followed")
	}
	return b
}

func (h *harness) slab() *spawnerv1.SessionLivedBackend {
	s, err := h.client.SpawnerV1().SessionLivedBackends("ns").Get(context.Background(), "b1", metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) phase() spawnerv1.BackendPhase { return lifecycle.Phase(h.slab()) }

// waitFor polls cond (real time; the stream reader runs on its own).
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitState waits until b has processed an event equal to ev on a live stream
// and armed (or disarmed) its timer accordingly.
func (h *harness) waitState(b *backend, ev Event) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("state %+v", ev), func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.live && b.last.LiveConnections == ev.LiveConnections && b.last.LastActive.Equal(ev.LastActive) &&
			b.last.Ready == ev.Ready && (b.readyDone || !ev.Ready) &&
			(b.timer != nil || !b.readyDone || b.ended || ev.LiveConnections > 0)
	})
}

func TestReadyFastPath(t *testing.T) {
	h := newHarness(t, Event{Ready: false})
	b := h.follow()
	h.waitState(b, Event{LastActive: h.t0})
	if p := h.phase(); p != lifecycle.Running {
		t.Fatalf("phase %s before the app listens", p)
	}
	h.sidecar.set(Event{Ready: true, LastActive: h.t0})
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })
	st := h.slab().Status
	if st.ReadyTime == nil || st.LastActiveTime == nil || !st.LastActiveTime.Time.Equal(h.t0) {
		t.Errorf("readyTime %v lastActiveTime %v", st.ReadyTime, st.LastActiveTime)
	}
	c := st.Conditions[len(st.Conditions)-1]
	if c.Type != lifecycle.ConditionReady || c.Reason != lifecycle.ReasonAppListening {
		t.Errorf("last condition %+v", c)
	}
	if n := countActions(h.client, "update"); n != 1 {
		t.Errorf("%d status updates, want exactly 1", n)
	}
}

func countActions(c *fake.Clientset, verb string) int {
	n := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == verb {
			n++
		}
	}
	return n
}

func TestIdleSweepAtDeadlineAndActivityResets(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })

	// A connection opens at t0+2s: no deadline while it lives.
	h.clock.Advance(2 * time.Second)
	live := Event{Ready: true, LiveConnections: 1, LastActive: h.t0.Add(2 * time.Second)}
	h.sidecar.set(live)
	h.waitState(b, live)
	h.clock.Advance(time.Minute)
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept while a connection was live: %s", p)
	}
	// It closes at t0+62s: swept at t0+67s, not a moment earlier.
	closed := Event{Ready: true, LastActive: h.t0.Add(62 * time.Second)}
	h.sidecar.set(closed)
	h.waitState(b, closed)
	h.clock.Advance(4900 * time.Millisecond) // t0+66.9s
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept 100ms early: %s", p)
	}
	h.clock.Advance(100 * time.Millisecond)
	if p := h.phase(); p != lifecycle.Swept {
		t.Fatalf("phase %s at the deadline, want Swept", p)
	}
	st := h.slab().Status
	c := st.Conditions[len(st.Conditions)-1]
	if c.Type != lifecycle.ConditionSwept || c.Reason != lifecycle.ReasonIdle || !st.LastActiveTime.Time.Equal(closed.LastActive) {
		t.Errorf("condition %+v lastActiveTime %v", c, st.LastActiveTime)
	}
	if h.s.m.sweeps.Value() != 1 {
		t.Errorf("sweeps metric %d", h.s.m.sweeps.Value())
	}
}

// A sidecar whose status port opens a moment after the pod status says it
// runs (a slow start on a busy node) is found within a startup retry, not
// after a doubling backoff.
func TestStartingSidecarIsRetriedPromptly(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	h.s.cfg.BackoffMin, h.s.cfg.BackoffMax = 2*time.Second, 5*time.Second
	h.s.cfg.StartupRetry = 20 * time.Millisecond
	h.sidecar.setMode("refuse")
	b := h.follow()
	h.waitFor("several refused attempts", func() bool { return h.s.m.reconnects.Value() >= 3 })
	opened := time.Now()
	h.sidecar.setMode("")
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	if d := time.Since(opened); d > time.Second {
		t.Errorf("first stream opened %v after the sidecar listened; the startup retry is 20 ms", d)
	}
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })

	// Once a stream has worked, a lost one backs off as before.
	h.sidecar.setMode("refuse")
	h.waitFor("stream down", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return !b.live })
	before := h.s.m.reconnects.Value()
	time.Sleep(500 * time.Millisecond)
	if n := h.s.m.reconnects.Value() - before; n > 1 {
		t.Errorf("%d reconnects within 500 ms of losing an established stream; want the 2 s backoff", n)
	}
}

func TestUnreachableSidecarIsNotIdle(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })
	h.clock.Advance(2 * time.Second)

	// The status port goes away mid-grace: the timer must stop with the stream.
	h.sidecar.setMode("refuse")
	h.waitFor("stream down", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return !b.live })
	before := h.s.m.reconnects.Value()
	h.waitFor("reconnect attempts", func() bool { return h.s.m.reconnects.Value() >= before+3 })
	h.clock.Advance(10 * time.Minute)
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept a backend whose sidecar was unreachable: %s", p)
	}
	if n := h.clock.pending(); n != 0 {
		t.Errorf("%d timers armed while the stream is down", n)
	}
	// Reachable again and still idle: swept at once (its grace passed long ago).
	h.sidecar.setMode("")
	h.waitFor("swept after reconnect", func() bool { h.clock.Advance(0); return h.phase() == lifecycle.Swept })
}

func TestSilentStreamIsNotIdle(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })
	// The network path drops silently: the stream stays open, new connections
	// hang. The deadline passes, but the confirming read fails: no sweep.
	h.sidecar.setMode("silent")
	h.clock.Advance(testGrace + time.Second)
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept on a stale stream: %s", p)
	}
	if h.s.m.confirmFailures.Value() != 1 {
		t.Errorf("confirm failures %d, want 1", h.s.m.confirmFailures.Value())
	}
	h.waitFor("stale stream dropped", func() bool { b.mu.Lock(); defer b.mu.Unlock(); return !b.live })
}

func TestRestartedSweeperKeepsTheSidecarsDeadline(t *testing.T) {
	// The backend became Ready and idle at t0 under a previous sweeper; this
	// one starts at t0+3s and must sweep at t0+5s, not t0+8s.
	h := newHarness(t, Event{Ready: true}, lifecycle.ConditionReady)
	slab := h.slab()
	rt := metav1.NewTime(h.t0.Add(-time.Minute))
	slab.Status.ReadyTime = &rt
	h.client.SpawnerV1().SessionLivedBackends("ns").UpdateStatus(context.Background(), slab, metav1.UpdateOptions{})
	h.clock.Advance(3 * time.Second)
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.clock.Advance(1900 * time.Millisecond)
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept early: %s", p)
	}
	h.clock.Advance(100 * time.Millisecond)
	if p := h.phase(); p != lifecycle.Swept {
		t.Fatalf("not swept at the original deadline: %s", p)
	}
}

func TestNeverSweptBeforeReadyNorTwice(t *testing.T) {
	h := newHarness(t, Event{Ready: false})
	b := h.follow()
	h.waitState(b, Event{LastActive: h.t0})
	h.clock.Advance(time.Hour)
	if p := h.phase(); p != lifecycle.Running {
		t.Fatalf("a backend whose app never listened was swept: %s", p)
	}
	// The app listens an hour in: it gets its full grace from then.
	h.sidecar.set(Event{Ready: true, LastActive: h.t0})
	h.waitFor("Ready", func() bool { return h.phase() == lifecycle.Ready })
	h.waitFor("timer", func() bool { return h.clock.pending() == 1 })
	h.clock.Advance(testGrace - 100*time.Millisecond)
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept before its grace after ready: %s", p)
	}
	h.clock.Advance(200 * time.Millisecond)
	if p := h.phase(); p != lifecycle.Swept {
		t.Fatalf("phase %s", p)
	}
	updates := countActions(h.client, "update")
	h.sidecar.set(Event{Ready: true, LastActive: h.t0.Add(time.Hour)})
	time.Sleep(50 * time.Millisecond)
	h.clock.Advance(time.Hour)
	if n := countActions(h.client, "update"); n != updates {
		t.Errorf("%d more status writes after the sweep", n-updates)
	}
}

func TestEndedSlabIsLeftAlone(t *testing.T) {
	// The api-server swept it already (termination requested): no Ready, no Idle.
	h := newHarness(t, Event{Ready: true}, lifecycle.ConditionSwept)
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.clock.Advance(time.Hour)
	if n := countActions(h.client, "update"); n != 0 {
		t.Errorf("%d status writes to an ending slab", n)
	}
}

func TestPodGoneStopsStream(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	pod := testPod(h.sidecar.port())
	pod.Status.Phase = corev1.PodFailed
	h.s.syncPod(pod)
	select {
	case <-b.done:
	case <-time.After(2 * time.Second):
		t.Fatal("stream reader still running after the pod failed")
	}
	h.clock.Advance(time.Hour)
	if p := h.phase(); p != lifecycle.Ready {
		t.Errorf("a failed pod was swept: %s", p)
	}
	if h.s.m.streamsOpen.Value() != 0 {
		t.Errorf("streams open %v", h.s.m.streamsOpen.Value())
	}
}

func TestTargetOf(t *testing.T) {
	s := New(Config{NodeName: "n"}, nil, nil, nil, nil)
	p := testPod(0)
	tg, ok := s.targetOf(p)
	if !ok || tg.addr != "127.0.0.1:9091" || tg.grace != 5*time.Second || tg.slab != "b1" {
		t.Errorf("target %+v %v", tg, ok)
	}
	p.Annotations = nil
	if tg, _ := s.targetOf(p); tg.grace != 300*time.Second {
		t.Errorf("grace without annotation %v", tg.grace)
	}
	for name, mut := range map[string]func(*corev1.Pod){
		"no IP":           func(p *corev1.Pod) { p.Status.PodIP = "" },
		"sidecar waiting": func(p *corev1.Pod) { p.Status.ContainerStatuses[1].State = corev1.ContainerState{} },
		"deleting":        func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} },
		"succeeded":       func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		"no backend":      func(p *corev1.Pod) { delete(p.Labels, spawnerv1.LabelBackend) },
	} {
		p := testPod(0)
		mut(p)
		if _, ok := s.targetOf(p); ok {
			t.Errorf("%s: followed", name)
		}
	}
}

// TestManyBackendsOneGoroutineEach checks the cost of 500 streams: goroutines
// stay at one per backend (plus the fake sidecar's own).
func TestStreamAgainstRawServer(t *testing.T) {
	// A keep-alive comment and chunked encoding from a hand-written server.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil || l == "\r\n" {
				break
			}
		}
		body := ": keep-alive\n\ndata: {\"ready\":true,\"live_connections\":0,\"last_active\":\"2026-01-01T00:00:00Z\"}\n\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(body), body)
		io.Copy(io.Discard, c)
	}()
	ev, err := readOnce(context.Background(), ln.Addr().String(), "", time.Second)
	if err != nil || !ev.Ready {
		t.Fatalf("readOnce: %+v %v", ev, err)
	}
}

var testLogLevel = func() slog.Level {
	if os.Getenv("SWEEPER_TEST_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}()

// TestClaimedBackendGetsItsGraceFromTheClaim: the api-server recorded Ready
// at a warm claim 10.7 s after the pod started (its sidecar idle since
// then); the API keeps readyTime to the second (10 s). The sweeper, which
// follows the pod from the claim on, sweeps it a full grace period after the
// claim (15.7 s), not after the truncated readyTime (15 s: 0.7 s early).
func TestClaimedBackendGetsItsGraceFromTheClaim(t *testing.T) {
	h := newHarness(t, Event{Ready: true}, lifecycle.ConditionReady)
	slab := h.slab()
	rt := metav1.NewTime(h.t0.Add(10 * time.Second)) // 10.7 s, as stored
	slab.Status.ReadyTime = &rt
	h.client.SpawnerV1().SessionLivedBackends("ns").UpdateStatus(context.Background(), slab, metav1.UpdateOptions{})
	h.clock.Advance(10700 * time.Millisecond)
	b := h.follow()
	h.waitState(b, Event{Ready: true, LastActive: h.t0})
	h.waitFor("timer", func() bool { return h.clock.pending() == 1 })
	h.clock.Advance(testGrace - 100*time.Millisecond) // 15.6 s
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept %v before its grace period after the claim ended: %s", 100*time.Millisecond, p)
	}
	h.clock.Advance(200 * time.Millisecond)
	if p := h.phase(); p != lifecycle.Swept {
		t.Fatalf("not swept a grace period after the claim: %s", p)
	}
}

func TestReadyAtRoundsATruncatedTimeUpToNow(t *testing.T) {
	s := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct{ now, want time.Duration }{
		{700 * time.Millisecond, 700 * time.Millisecond}, // just recorded: now
		{time.Hour, time.Second},                         // long ago: the latest it can have been
		{-5 * time.Millisecond, 0},                       // now a hair before the stored second: the stored time
	} {
		if got := readyAt(s, s.Add(c.now)); !got.Equal(s.Add(c.want)) {
			t.Errorf("readyAt(s, s%+v) = s%+v, want s%+v", c.now, got.Sub(s), c.want)
		}
	}
}

// TestSweeperLeavesAClaimsReadyToTheClaim: the sweeper follows a claimed
// warm pod from the take, before its slab is bound, and its app already
// listens. It leaves recording Ready to the claim (reason WarmPodClaimed)
// and counts the grace period from the claim's readyTime; only when no
// record came within lifecycle.ClaimRecordWait of the slab's creation does it record
// Ready itself. Before, it wrote Ready (AppListening) at once: its write made
// the claim's bind conflict, and the backend's Ready said AppListening.
func TestSweeperLeavesAClaimsReadyToTheClaim(t *testing.T) {
	for _, claimRecords := range []bool{true, false} {
		h := newHarness(t, Event{Ready: true})
		slab := h.slab()
		slab.CreationTimestamp = metav1.NewTime(h.t0)
		slab.Annotations = map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-x1"}
		if _, err := h.client.SpawnerV1().SessionLivedBackends("ns").Update(context.Background(), slab, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		b := h.follow()
		h.waitFor("the retry timer", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.live && b.last.Ready && h.clock.pending() == 1
		})
		if p := h.phase(); p == lifecycle.Ready {
			t.Fatalf("the sweeper recorded a claim's Ready (%+v)", h.slab().Status.Conditions)
		}
		if claimRecords {
			s := h.slab()
			lifecycle.RecordClaimed(&s.Status, "claimed", s.Generation)
			rt := metav1.NewTime(h.t0)
			s.Status.ReadyTime = &rt
			if _, err := h.client.SpawnerV1().SessionLivedBackends("ns").UpdateStatus(context.Background(), s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			h.clock.Advance(50 * time.Millisecond) // RetryDelay
			h.waitFor("the idle timer", func() bool {
				b.mu.Lock()
				defer b.mu.Unlock()
				return b.readyDone
			})
			if c := meta.FindStatusCondition(h.slab().Status.Conditions, lifecycle.ConditionReady); c == nil || c.Reason != lifecycle.ReasonWarmPodClaimed {
				t.Errorf("Ready %+v, want the claim's (%s)", c, lifecycle.ReasonWarmPodClaimed)
			}
			continue
		}
		for i := 0; i < int(2*lifecycle.ClaimRecordWait/(50*time.Millisecond)) && h.phase() != lifecycle.Ready; i++ {
			h.waitFor("the retry timer", func() bool { return h.clock.pending() == 1 })
			h.clock.Advance(50 * time.Millisecond)
			h.waitFor("the retry", func() bool { return h.clock.pending() == 1 || h.phase() == lifecycle.Ready })
		}
		c := meta.FindStatusCondition(h.slab().Status.Conditions, lifecycle.ConditionReady)
		if c == nil || c.Reason != lifecycle.ReasonAppListening {
			t.Fatalf("no claim recorded Ready within %v; the sweeper's Ready %+v, want %s", lifecycle.ClaimRecordWait, c, lifecycle.ReasonAppListening)
		}
		if at := h.clock.Now().Sub(h.t0); at < lifecycle.ClaimRecordWait {
			t.Errorf("the sweeper recorded Ready %v after the slab's creation, before lifecycle.ClaimRecordWait (%v)", at, lifecycle.ClaimRecordWait)
		}
	}
}

// TestAWarmClaimsSlabIsReadOnceWhenItsRecordIsDue: the sweeper follows a
// claimed warm pod (named apart from its slab) from the take. The api-server
// that claimed records the claim's Ready; the sweeper reads the slab only
// when that record is due (half the grace period here, under
// lifecycle.ClaimRecordWait), once, and still sweeps a full grace period
// after it first saw the app ready, to the 100 ms. Before, it read the slab
// at once, found the record on its way and read it again every RetryDelay:
// ~250 requests to the API server during a burst of 100 claims.
func TestAWarmClaimsSlabIsReadOnceWhenItsRecordIsDue(t *testing.T) {
	h := newHarness(t, Event{Ready: true})
	var gets atomic.Int32
	h.client.PrependReactor("get", "sessionlivedbackends", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets.Add(1)
		return false, nil, nil
	})
	// The claim, 300 ms into the second its readyTime keeps.
	slab := h.slab()
	lifecycle.RecordClaimed(&slab.Status, "claimed warm pod rooms-x1", slab.Generation)
	rt := metav1.NewTime(h.t0)
	slab.Status.ReadyTime = &rt
	if _, err := h.client.SpawnerV1().SessionLivedBackends("ns").UpdateStatus(context.Background(), slab, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(300 * time.Millisecond)
	claimed := h.clock.Now()
	gets.Store(0)

	p := testPod(h.sidecar.port())
	p.Name, p.UID = "rooms-x1", "u-warm"
	p.Labels[spawnerv1.LabelPool] = "rooms"
	h.s.syncPod(p)
	h.s.mu.Lock()
	b := h.s.backends["ns/rooms-x1"]
	h.s.mu.Unlock()
	if b == nil {
		t.Fatal("claimed warm pod not followed")
	}
	h.waitFor("the app ready and a timer armed", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.live && b.last.Ready && h.clock.pending() == 1
	})
	if n := gets.Load(); n != 0 {
		t.Fatalf("the sweeper read the slab %d time(s) at the take, want none before the claim's record is due", n)
	}
	h.clock.Advance(testGrace/2 - 100*time.Millisecond)
	if n := gets.Load(); n != 0 {
		t.Fatalf("the sweeper read the slab %d time(s) before the claim's record was due", n)
	}
	h.clock.Advance(100 * time.Millisecond)
	h.waitFor("Ready taken from the claim", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.readyDone && h.clock.pending() == 1
	})
	if n := gets.Load(); n != 1 {
		t.Errorf("the sweeper read the slab %d times, want once", n)
	}
	h.clock.Advance(claimed.Add(testGrace - 100*time.Millisecond).Sub(h.clock.Now()))
	if p := h.phase(); p != lifecycle.Ready {
		t.Fatalf("swept 100 ms before its grace period after the claim ended: %s", p)
	}
	h.clock.Advance(200 * time.Millisecond)
	h.waitFor("the sweep", func() bool { return h.phase() == lifecycle.Swept })
}
