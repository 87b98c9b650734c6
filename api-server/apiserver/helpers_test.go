package apiserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	slabfake "spawner.dev/generated/clientset/versioned/fake"
)

const (
	testNS    = spawnerv1.DefaultBackendNamespace
	testToken = "test-control-token"
)

type testEnv struct {
	t       testing.TB
	s       *Server
	kube    *kubefake.Clientset
	slabs   *slabfake.Clientset
	control *httptest.Server
	router  *httptest.Server
	// events holds the informers' watch events while closed: a cache that
	// lags the API, as under a burst of claims.
	events *eventGate
}

var nameSeq atomic.Int64

func newTestEnv(t testing.TB, upstreamPort string) *testEnv {
	t.Helper()
	return newTestEnvConfig(t, upstreamPort, nil)
}

// newTestEnvConfig is newTestEnv with the Config changed by edit first.
func newTestEnvConfig(t testing.TB, upstreamPort string, edit func(*Config)) *testEnv {
	t.Helper()
	kube := kubefake.NewClientset()
	slabs := slabfake.NewSimpleClientset() // NewClientset needs the OpenAPI schema, which is not generated
	// The fake tracker does not implement generateName.
	slabs.PrependReactor("create", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.CreateAction).GetObject().(*spawnerv1.SessionLivedBackend)
		if obj.Name == "" && obj.GenerateName != "" {
			obj.Name = fmt.Sprintf("%s%05d", obj.GenerateName, nameSeq.Add(1))
		}
		if obj.CreationTimestamp.IsZero() {
			obj.CreationTimestamp = metav1.Now()
		}
		if obj.UID == "" {
			obj.UID = types.UID("uid-" + obj.Name)
		}
		return false, nil, nil
	})
	events := &eventGate{}
	gated := func(tracker k8stesting.ObjectTracker) k8stesting.WatchReactionFunc {
		return func(a k8stesting.Action) (bool, watch.Interface, error) {
			var opts metav1.ListOptions
			if wa, ok := a.(k8stesting.WatchActionImpl); ok {
				opts = wa.ListOptions
			}
			w, err := tracker.Watch(a.GetResource(), a.GetNamespace(), opts)
			if err != nil {
				return false, nil, err
			}
			return true, events.watch(w), nil
		}
	}
	kube.PrependWatchReactor("*", gated(kube.Tracker()))
	slabs.PrependWatchReactor("*", gated(slabs.Tracker()))
	cfg := Config{
		BackendNamespace: testNS, PublicURL: "http://public.example:8081",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ShutdownTimeout: time.Second,
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg, kube, slabs)
	if err != nil {
		t.Fatal(err)
	}
	if upstreamPort != "" {
		s.upstreamPort = upstreamPort
	}
	s.creds.tokens.store(parseTokens([]byte(testToken + "\n# comment\nsecond-token\n")))
	s.creds.access = &accessKeys{key: []byte("0123456789abcdef0123456789abcdef")}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s.slabFactory.Start(ctx.Done())
	s.podFactory.Start(ctx.Done())
	if s.psa != nil {
		s.psa.factory.Start(ctx.Done())
	}
	if !s.WaitForSync(ctx) {
		t.Fatal("caches did not sync")
	}
	e := &testEnv{t: t, s: s, kube: kube, slabs: slabs, events: events}
	t.Cleanup(events.release)
	e.control = httptest.NewServer(s.ControlHandler())
	e.router = httptest.NewServer(s.RouterHandler())
	t.Cleanup(e.control.Close)
	t.Cleanup(e.router.Close)
	return e
}

// do sends a control API request with the test token.
func (e *testEnv) do(method, path, body string) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.control.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := noRedirect.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func readBody(t testing.TB, r *http.Response) string {
	t.Helper()
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	return string(b)
}

// addBackend creates a slab (as the api-server would) and its pod, in the
// given phase, and waits until both are cached. It returns the access token.
func (e *testEnv) addBackend(name string, phase spawnerv1.BackendPhase) string {
	e.t.Helper()
	salt := newSalt()
	tok := e.s.creds.access.token(salt)
	slab := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: types.UID("uid-" + name), CreationTimestamp: metav1.Now(),
			Annotations: map[string]string{spawnerv1.AnnotationAccessTokenHash: hashToken(tok), spawnerv1.AnnotationAccessTokenSalt: salt}},
		Spec: spawnerv1.SessionLivedBackendSpec{Template: spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: "demo"}}}},
	}
	setPhase(slab, phase)
	ctx := context.Background()
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Create(ctx, slab, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: map[string]string{
			spawnerv1.LabelManagedBy: spawnerv1.ManagedByValue, spawnerv1.LabelBackend: name}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1"},
	}
	if _, err := e.kube.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.eventually(func() bool {
		_, ok1 := e.s.slab(name)
		_, ok2 := e.s.pod(name)
		return ok1 && ok2
	})
	return tok
}

// setPhase records the conditions up to phase, in the order of
// lifecycle.Milestones (Failed: PodCreated, then Failed).
func setPhase(slab *spawnerv1.SessionLivedBackend, phase spawnerv1.BackendPhase) {
	if phase == lifecycle.Failed {
		lifecycle.Record(&slab.Status, lifecycle.ConditionPodCreated, "PodCreated", "", 0)
		lifecycle.Record(&slab.Status, lifecycle.ConditionFailed, lifecycle.ReasonAppExited, "exit 1", 0)
		return
	}
	for _, m := range lifecycle.Milestones() {
		lifecycle.Record(&slab.Status, m.Condition, m.Condition, "", 0)
		if m.Phase == phase {
			break
		}
	}
}

func (e *testEnv) updatePhase(name string, phase spawnerv1.BackendPhase) {
	e.t.Helper()
	ctx := context.Background()
	cur, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	cur.Status = spawnerv1.SessionLivedBackendStatus{}
	setPhase(cur, phase)
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.eventually(func() bool {
		s, ok := e.s.slab(name)
		return ok && lifecycle.Phase(s) == phase
	})
}

func (e *testEnv) eventually(cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func splitHostPort(s string) (string, string, error) { return net.SplitHostPort(s) }

// eventGate passes watch events on while open; hold closes it (the events
// wait, in order) and release opens it again.
type eventGate struct {
	mu   sync.Mutex
	held bool
	open *sync.Cond
}

func (g *eventGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = true
}

func (g *eventGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = false
	if g.open != nil {
		g.open.Broadcast()
	}
}

func (g *eventGate) wait() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == nil {
		g.open = sync.NewCond(&g.mu)
	}
	for g.held {
		g.open.Wait()
	}
}

// watch is w with its events passed through the gate.
func (g *eventGate) watch(w watch.Interface) watch.Interface {
	gw := &gatedWatch{in: w, out: make(chan watch.Event), stop: make(chan struct{})}
	go func() {
		defer close(gw.out)
		for ev := range w.ResultChan() {
			g.wait()
			select {
			case gw.out <- ev:
			case <-gw.stop:
				return
			}
		}
	}()
	return gw
}

type gatedWatch struct {
	in   watch.Interface
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

func (w *gatedWatch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		w.in.Stop()
	})
}

func (w *gatedWatch) ResultChan() <-chan watch.Event { return w.out }
