package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// hookApp stands in for the sidecars of a pool's warm pods (all on
// 127.0.0.1, one port): it records the claim hook calls and answers each
// with the next of its statuses (200 once they run out).
type hookApp struct {
	srv      *httptest.Server
	mu       sync.Mutex
	statuses []int
	calls    []hookCall
}

type hookCall struct {
	path    string
	session ClaimSession
	header  http.Header
}

func newHookApp(t *testing.T, statuses ...int) *hookApp {
	a := &hookApp{statuses: statuses}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s ClaimSession
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &s)
		a.mu.Lock()
		a.calls = append(a.calls, hookCall{r.URL.Path, s, r.Header.Clone()})
		status := 200
		if len(a.statuses) > 0 {
			status, a.statuses = a.statuses[0], a.statuses[1:]
		}
		a.mu.Unlock()
		if status == 0 { // never answers within any hook timeout
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *hookApp) port() string {
	_, p, _ := splitHostPort(a.srv.Listener.Addr().String())
	return p
}

func (a *hookApp) recorded() []hookCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]hookCall(nil), a.calls...)
}

// addPool creates a pool with the given hook and n Ready warm pods (each
// with a router proof) and waits until the api-server caches them.
func (e *testEnv) addPool(name string, hook *spawnerv1.ClaimHook, n int) *spawnerv1.BackendPool {
	e.t.Helper()
	ctx := context.Background()
	replicas := int32(n)
	pool := &spawnerv1.BackendPool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: types.UID("uid-pool-" + name)},
		Spec: spawnerv1.BackendPoolSpec{Replicas: &replicas, HTTPPort: 8080, ClaimHook: hook,
			Template: spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: "demo"}}}},
	}
	pool, err := e.slabs.SpawnerV1().BackendPools(testNS).Create(ctx, pool, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	pool.UID = types.UID("uid-pool-" + name)
	for i := 0; i < n; i++ {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, i), Namespace: testNS, UID: types.UID(fmt.Sprintf("uid-%s-%d", name, i)),
				Labels: map[string]string{spawnerv1.LabelManagedBy: spawnerv1.ManagedByValue, spawnerv1.LabelPool: name,
					spawnerv1.LabelPoolTemplateHash: pool.TemplateHash()},
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(pool, spawnerv1.SchemeGroupVersion.WithKind("BackendPool"))}},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app"}, {Name: spawnerv1.SidecarContainerName,
				Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: "proof-" + fmt.Sprint(i)}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
		}
		if _, err := e.kube.CoreV1().Pods(testNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
	e.eventually(func() bool {
		_, err := e.s.poolLister.Get(name)
		return err == nil && len(e.s.warmCandidates(pool, pool.TemplateHash())) == n
	})
	return pool
}

type spawnAnswer struct {
	Name     string
	Warm     *bool
	ReadyURL string `json:"readyUrl"`
}

func (e *testEnv) spawnPool(body string) (int, spawnAnswer, string) {
	e.t.Helper()
	resp := e.do("POST", "/spawn", body)
	raw := readBody(e.t, resp)
	var a spawnAnswer
	_ = json.Unmarshal([]byte(raw), &a)
	return resp.StatusCode, a, raw
}

// podState is a pod as the API has it: gone, or its backend label.
func (e *testEnv) podState(name string) (exists bool, backend string) {
	p, err := e.kube.CoreV1().Pods(testNS).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, ""
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return true, p.Labels[spawnerv1.LabelBackend]
}

// TestClaimHookDeliversTheSession: a claim from a pool with a hook POSTs
// the spawn's backend, key, env and labels as JSON to the hook path with
// the pod's router proof and nothing of the caller's credentials, and the
// pod is labelled with its backend (what the sweeper follows) only then.
func TestClaimHookDeliversTheSession(t *testing.T) {
	app := newHookApp(t)
	e := newTestEnv(t, app.port())
	e.addPool("rooms", &spawnerv1.ClaimHook{Path: "/spawner/claim", TimeoutSeconds: 1}, 1)

	code, got, raw := e.spawnPool(`{"pool":"rooms","key":"doc 42","env":{"ROOM_TOPIC":"cats"},"labels":{"team":"a"}}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim", code, raw)
	}
	calls := app.recorded()
	if len(calls) != 1 {
		t.Fatalf("%d hook calls, want 1", len(calls))
	}
	c := calls[0]
	want := ClaimSession{Backend: got.Name, Key: "doc 42", Env: map[string]string{"ROOM_TOPIC": "cats"}, Labels: map[string]string{"team": "a"}}
	if c.path != "/spawner/claim" || fmt.Sprint(c.session) != fmt.Sprint(want) {
		t.Errorf("hook got %s %+v, want /spawner/claim %+v", c.path, c.session, want)
	}
	if c.header.Get(wire.HeaderRouterProof) != "proof-0" || c.header.Get(wire.HeaderBackend) != got.Name || c.header.Get(wire.HeaderKey) != "doc%2042" {
		t.Errorf("hook headers %v: want the pod's router proof and the session headers", c.header)
	}
	for _, h := range []string{"Authorization", "Cookie"} {
		if c.header.Get(h) != "" {
			t.Errorf("the hook got the caller's %s header", h)
		}
	}
	if exists, backend := e.podState("rooms-0"); !exists || backend != got.Name {
		t.Errorf("claimed pod: exists %v, backend label %q, want %q", exists, backend, got.Name)
	}
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if slab.Annotations[spawnerv1.AnnotationClaimHookPath] != "/spawner/claim" || slab.Annotations[spawnerv1.AnnotationPod] != "rooms-0" {
		t.Errorf("slab annotations %v", slab.Annotations)
	}
	// env on the slab's spec is for a cold start of the template only.
	if env := slab.Spec.Template.Containers[0].Env; len(env) != 1 || env[0].Name != "ROOM_TOPIC" {
		t.Errorf("slab app env %v", env)
	}
}

// TestClaimHookFailureTriesAnotherPodThenCold: a hook answering 500, or not
// within its timeout, fails the claim of that pod: the pod is deleted, never
// bound, and the spawn takes another warm pod; after maxHookAttempts
// failures it starts cold, leaving the remaining warm pods alone.
func TestClaimHookFailureTriesAnotherPodThenCold(t *testing.T) {
	app := newHookApp(t, 500, 0, 503)
	e := newTestEnv(t, app.port())
	e.addPool("flaky", &spawnerv1.ClaimHook{Path: "/hook", TimeoutSeconds: 1}, 4)

	// First spawn: 500 on one pod, then a hook that never answers on
	// another: cold, both pods deleted.
	start := time.Now()
	code, got, raw := e.spawnPool(`{"pool":"flaky"}`)
	if code != 201 || got.Warm == nil || *got.Warm {
		t.Fatalf("spawn with failing hooks: %d %s, want a cold backend", code, raw)
	}
	if d := time.Since(start); d < time.Second || d > 4*time.Second {
		t.Errorf("spawn took %v: want one hook timeout (1 s) and not much more", d)
	}
	calls := app.recorded()
	if len(calls) != maxHookAttempts {
		t.Fatalf("%d hook calls, want %d", len(calls), maxHookAttempts)
	}
	slab, _ := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
	if p, _ := spawnerv1.PodNameOf(slab); p != got.Name {
		t.Errorf("bound to %q, want cold (its own name)", p)
	}
	deleted := 0
	for i := 0; i < 4; i++ {
		exists, backend := e.podState(fmt.Sprintf("flaky-%d", i))
		if backend != "" {
			t.Errorf("pod flaky-%d labelled with backend %q after a failed hook", i, backend)
		}
		if !exists {
			deleted++
		}
	}
	if deleted != maxHookAttempts {
		t.Errorf("%d pods deleted, want the %d whose hook failed", deleted, maxHookAttempts)
	}

	// Second spawn: 503 on one of the two left, then 200 on the other: warm.
	e.eventually(func() bool {
		return len(e.s.warmCandidates(e.pool("flaky"), e.pool("flaky").TemplateHash())) == 2
	})
	code, got, raw = e.spawnPool(`{"pool":"flaky","key":"k"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("second spawn: %d %s, want warm on the pod whose hook succeeded", code, raw)
	}
	left := 0
	for i := 0; i < 4; i++ {
		if exists, backend := e.podState(fmt.Sprintf("flaky-%d", i)); exists {
			left++
			if backend != got.Name {
				t.Errorf("pod flaky-%d left with backend %q, want %q", i, backend, got.Name)
			}
		}
	}
	if left != 1 {
		t.Errorf("%d pods left, want only the claimed one", left)
	}
}

func (e *testEnv) pool(name string) *spawnerv1.BackendPool {
	p, err := e.s.poolLister.Get(name)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestEnvNeedsAClaimHook: env given to a pool without a claim hook is a 422
// that names the missing hook; with a hook it is accepted.
func TestEnvNeedsAClaimHook(t *testing.T) {
	app := newHookApp(t)
	e := newTestEnv(t, app.port())
	e.addPool("plain", nil, 1)
	code, _, raw := e.spawnPool(`{"pool":"plain","env":{"A":"b"}}`)
	if code != 422 || !strings.Contains(raw, "claim hook") || !strings.Contains(raw, "spec.claimHook") {
		t.Errorf("env to a hookless pool: %d %s, want 422 naming spec.claimHook", code, raw)
	}
	if len(app.recorded()) != 0 {
		t.Error("a hookless pool's app was called")
	}
	code, _, raw = e.spawnPool(`{"pool":"plain","env":{"PORT":"1"}}`)
	if code != 422 || !strings.Contains(raw, "env[PORT]") {
		t.Errorf("PORT in env: %d %s, want 422", code, raw)
	}
}

func TestIsClaimHookPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/spawner/claim": true, "/spawner/claim/": true, "/SPAWNER/claim": true, "//spawner/./claim": true,
		"/x/../spawner/claim": true, "/spawner/claim/a": true, "spawner/claim": true,
		"/spawner/claimx": false, "/spawner": false, "/": false, "": false,
	} {
		if got := isClaimHookPath(p, "/spawner/claim"); got != want {
			t.Errorf("isClaimHookPath(%q): %v, want %v", p, got, want)
		}
	}
	if isClaimHookPath("/anything", "") {
		t.Error("no hook: nothing is its path")
	}
}

// TestRouterRefusesTheClaimHookPath: outside requests never reach a
// backend's claim hook, however the path is spelled.
func TestRouterRefusesTheClaimHookPath(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-hook", lifecycle.Ready)
	ctx := context.Background()
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(ctx, "slab-hook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slab.Annotations[spawnerv1.AnnotationClaimHookPath] = "/spawner/claim"
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Update(ctx, slab, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(func() bool {
		s, ok := e.s.slab("slab-hook")
		return ok && s.Annotations[spawnerv1.AnnotationClaimHookPath] != ""
	})
	// (Unclean paths such as //spawner/./claim are redirected by the
	// router's mux before they get here; isClaimHookPath cleans anyway.)
	for _, p := range []string{"/spawner/claim", "/spawner/claim/", "/Spawner/Claim", "/spawner%2Fclaim", "/spawner/claim/sub"} {
		resp := get(t, e.router.URL+"/p/slab-hook"+p+"?spawner_token="+tok, nil)
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Errorf("%s: %d, want 403", p, resp.StatusCode)
		}
	}
	if n := app.hits.Load(); n != 0 {
		t.Errorf("the app got %d requests for its claim hook", n)
	}
	for _, p := range []string{"/spawner/claimx", "/spawner", "/"} {
		resp := get(t, e.router.URL+"/p/slab-hook"+p+"?spawner_token="+tok, nil)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d, want 200", p, resp.StatusCode)
		}
	}
}

// TestClaimHookOfAListedPod: a pool with a claim hook whose only Ready pod
// the cache does not offer yet: the claim takes it from the API's list and
// calls its hook at the pod's address, as for a cached pod. Before, a
// listed pod had no address: its hook "failed" without a call, and the
// healthy pod was deleted.
func TestClaimHookOfAListedPod(t *testing.T) {
	app := newHookApp(t)
	e := newTestEnv(t, app.port())
	e.addPool("rooms", &spawnerv1.ClaimHook{Path: "/hook", TimeoutSeconds: 1}, 1)
	e.lagCache("rooms-0", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse })
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim of the listed pod", code, raw)
	}
	if calls := app.recorded(); len(calls) != 1 {
		t.Errorf("%d hook calls, want 1", len(calls))
	}
	if exists, backend := e.podState("rooms-0"); !exists || backend != got.Name {
		t.Errorf("pod rooms-0: exists %v, backend %q, want claimed by %s", exists, backend, got.Name)
	}
}
