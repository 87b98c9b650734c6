package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

type seen struct {
	Path, RawQuery string
	Header         http.Header
}

// fakeApp stands in for a backend's sidecar: it records what reached it.
type fakeApp struct {
	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	last seen
}

func newFakeApp(t *testing.T) *fakeApp {
	a := &fakeApp{}
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, m, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, append([]byte("echo:"), m...))
		}
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // never ends by itself: the client must see "one" anyway
	})
	mux.HandleFunc("/policy", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Referrer-Policy", "no-referrer")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(seen{Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header})
	})
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		a.mu.Lock()
		a.last = seen{r.URL.Path, r.URL.RawQuery, r.Header.Clone()}
		a.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeApp) port() string {
	_, p, _ := net.SplitHostPort(a.srv.Listener.Addr().String())
	return p
}

func get(t *testing.T, url string, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestRouterAccess(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-r", lifecycle.Ready)
	other := e.addBackend("slab-o", lifecycle.Ready)
	base := e.router.URL + "/p/slab-r"

	// Refused without reaching the backend.
	for _, c := range []struct {
		url  string
		hdr  map[string]string
		want int
	}{
		{base + "/", nil, 403},
		{base + "/?spawner_token=wrong", nil, 403},
		{base + "/?spawner_token=" + other, nil, 403}, // another backend's token
		{base + "/", map[string]string{"Cookie": "spawner_token=wrong"}, 403},
		{base + "/", map[string]string{"Authorization": "Bearer " + testToken}, 403}, // control tokens are not access tokens
		{e.router.URL + "/p/nope/?spawner_token=" + tok, nil, 404},
		{e.router.URL + "/backends", nil, 404},
	} {
		resp := get(t, c.url, c.hdr)
		body := readBody(t, resp)
		if resp.StatusCode != c.want || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %v: %d %s, want %d", c.url, c.hdr, resp.StatusCode, body, c.want)
		}
	}
	if n := app.hits.Load(); n != 0 {
		t.Fatalf("backend saw %d requests", n)
	}

	// Query token: proxied, stripped, exchanged for a cookie scoped to the backend.
	resp := get(t, base+"/some/path?a=1&spawner_token="+tok+"&b=%2F", map[string]string{"Cookie": "theme=dark", "X-Forwarded-For": "6.6.6.6"})
	got := decode[seen](t, resp)
	if resp.StatusCode != 200 || got.Path != "/some/path" || got.RawQuery != "a=1&b=%2F" {
		t.Fatalf("%d %+v", resp.StatusCode, got)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "spawner_token" {
			cookie = c
		}
	}
	if cookie == nil || cookie.Value != tok || cookie.Path != "/p/slab-r/" || !cookie.HttpOnly || cookie.SameSite != http.SameSiteLaxMode {
		t.Fatalf("cookie %+v", cookie)
	}
	if got.Header.Get("X-Forwarded-Prefix") != "/p/slab-r" || got.Header.Get("X-Forwarded-Proto") != "http" ||
		got.Header.Get("X-Forwarded-Host") == "" || got.Header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Fatalf("forwarded headers %v", got.Header)
	}
	if got.Header.Get("Cookie") != "theme=dark" {
		t.Fatalf("cookies reaching the app: %q", got.Header.Get("Cookie"))
	}

	// Cookie token: proxied, the token cookie removed, others kept.
	resp = get(t, base+"/x", map[string]string{"Cookie": "a=1; spawner_token=" + tok + "; b=2"})
	got = decode[seen](t, resp)
	if resp.StatusCode != 200 || got.Path != "/x" || got.Header.Get("Cookie") != "a=1; b=2" {
		t.Fatalf("%d %+v", resp.StatusCode, got)
	}
	// Escaped paths keep their escaping.
	resp = get(t, base+"/a%2Fb/c", map[string]string{"Cookie": "spawner_token=" + tok})
	if got = decode[seen](t, resp); got.Path != "/a/b/c" {
		t.Fatalf("escaped path %+v", got)
	}
	// /p/<name> redirects to /p/<name>/ so the cookie path matches.
	resp = get(t, base+"?spawner_token="+tok, nil)
	if resp.StatusCode/100 != 3 || !strings.HasSuffix(resp.Header.Get("Location"), "/p/slab-r/?spawner_token="+tok) {
		t.Fatalf("redirect %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestRouterNotReadyAndEnded(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-n", lifecycle.Running)
	url := e.router.URL + "/p/slab-n/?spawner_token=" + tok
	resp := get(t, url, nil)
	if body := readBody(t, resp); resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "not ready") {
		t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, body)
	}
	resp = get(t, url, map[string]string{"Accept": "text/html,*/*"})
	if body := readBody(t, resp); resp.StatusCode != 503 || !strings.Contains(body, "<html") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	e.updatePhase("slab-n", lifecycle.Ready)
	if resp := get(t, url, nil); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	e.updatePhase("slab-n", lifecycle.Swept)
	if resp := get(t, url, nil); resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatal(resp.StatusCode, resp.Header)
	}
	// A browser reloading a tab of an ended or unknown backend gets a page
	// that says so, and nothing of the backend's state.
	for _, u := range []string{url, e.router.URL + "/p/slab-never/"} {
		resp := get(t, u, map[string]string{"Accept": "text/html,*/*"})
		body := readBody(t, resp)
		if resp.StatusCode != 404 || !strings.Contains(body, "not available") || strings.Contains(body, "Swept") {
			t.Fatalf("%s: %d %s", u, resp.StatusCode, body)
		}
	}
	if app.hits.Load() != 1 {
		t.Fatalf("backend saw %d requests", app.hits.Load())
	}
}

func TestRouterWebSocketAndSSE(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-w", lifecycle.Ready)
	wsURL := "ws" + strings.TrimPrefix(e.router.URL, "http") + "/p/slab-w/ws?spawner_token=" + tok
	c, resp, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("hello %d", i)
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, m, err := c.ReadMessage()
		if err != nil || string(m) != "echo:"+msg {
			t.Fatalf("%q %v", m, err)
		}
	}
	// A WebSocket with a wrong token is refused before the backend.
	before := app.hits.Load()
	if _, resp, err := websocket.DefaultDialer.Dial(strings.Replace(wsURL, tok, "bad", 1), nil); err == nil || resp.StatusCode != 403 {
		t.Fatalf("bad token dial: %v %v", err, resp)
	}
	if app.hits.Load() != before {
		t.Fatal("backend reached")
	}

	// SSE: the first event arrives while the response is still open.
	resp = get(t, e.router.URL+"/p/slab-w/sse?spawner_token="+tok, nil)
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "data: one\n" {
			t.Fatalf("%q", l)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("SSE event not flushed")
	}
}

func TestQueryToken(t *testing.T) {
	for _, c := range []struct{ raw, tok, rest string }{
		{"", "", ""},
		{"a=1", "", "a=1"},
		{"spawner_token=abc", "abc", ""},
		{"a=1&spawner_token=abc&b=2", "abc", "a=1&b=2"},
		{"spawner_token=a%2Bb&spawner_token=x", "a+b", ""},
		{"xspawner_token=1", "", "xspawner_token=1"},
		{"a=1;spawner_token=x;b=2&c=3", "", "a=1;b=2&c=3"},
		{"spawner%5Ftoken=x&a=1&&b=2", "", "a=1&b=2"},
		{"SPAWNER_TOKEN=x&spawner_token=y", "y", ""},
		{"spawner_tokens=1&a=%zz", "", "spawner_tokens=1&a=%zz"},
	} {
		tok, rest, _ := queryToken(c.raw)
		if tok != c.tok || rest != c.rest {
			t.Errorf("%q: %q %q", c.raw, tok, rest)
		}
	}
}

// A starting backend is waited for (--router-ready-wait) only once the
// request is authorized: without the token the answer is immediate.
func TestRouterWaitsOnlyForAuthorized(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	e.s.cfg.RouterReadyWait = 5 * time.Second
	tok := e.addBackend("slab-wait", lifecycle.Running)
	start := time.Now()
	if resp := get(t, e.router.URL+"/p/slab-wait/", nil); resp.StatusCode != 403 || time.Since(start) > time.Second {
		t.Fatalf("unauthorized: %d after %v", resp.StatusCode, time.Since(start))
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		e.updatePhase("slab-wait", lifecycle.Ready)
	}()
	start = time.Now()
	resp := get(t, e.router.URL+"/p/slab-wait/x?spawner_token="+tok, nil)
	if resp.StatusCode != 200 || time.Since(start) > 4*time.Second {
		t.Fatalf("authorized: %d after %v", resp.StatusCode, time.Since(start))
	}
}

// Every spelling of the token's name that a browser or a server framework
// decodes to spawner_token is stripped before the app; only the canonical
// spellings authorize; everything else of the query and the cookies arrives.
func TestRouterStripsEveryTokenSpelling(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-sp", lifecycle.Ready)
	other := e.addBackend("slab-sp2", lifecycle.Ready)
	base := e.router.URL + "/p/slab-sp/x"

	for _, c := range []struct{ query, wantQuery string }{
		{"spawner%5Ftoken=" + other + "&a=1", "a=1"},
		{"%73pawner_token=" + other + "&a=1", "a=1"},
		{"spawner%5ftoken=" + other, ""},
		{"SPAWNER_TOKEN=" + other + "&a=1", "a=1"},            // ASP.NET reads query names case-insensitively
		{"%C5%BFpawner_token=" + other + "&a=1", "a=1"},       // ſ (U+017F): OrdinalIgnoreCase equals it to s
		{"spawner.token=" + other + "&a=1", "a=1"},            // PHP renames . to _
		{"spawner+token=" + other + "&spawner%20token=x", ""}, // and a space
		{"spawner[token=" + other + "&a=1", "a=1"},            // and an unmatched [
		{"spawner_token[]=" + other + "&spawner_token[0]=" + other + "&a=1", "a=1"},
		{"+spawner_token=" + other + "&a=1", "a=1"},
		// ; separates pairs for some frameworks (ReverseProxy then drops
		// what url.ParseQuery cannot read: pairs joined by ;).
		{"a=1;spawner_token=" + other + ";b=2&c=3", "c=3"},
		{"spawner%255Ftoken=" + other + "&a=1", "a=1"}, // decoded twice
		{"spawner_token=" + tok + "&spawner_token=" + other + "&a=1", "a=1"},
		// Not the token: kept as they are.
		{"spawner_tokens=1&my_spawner_token=2&spawner=3&token=4", "spawner_tokens=1&my_spawner_token=2&spawner=3&token=4"},
	} {
		resp := get(t, base+"?"+c.query, map[string]string{"Cookie": "spawner_token=" + tok})
		got := decode[seen](t, resp)
		if resp.StatusCode != 200 || got.RawQuery != c.wantQuery {
			t.Errorf("?%s: %d, the app saw query %q, want %q", c.query, resp.StatusCode, got.RawQuery, c.wantQuery)
		}
		if strings.Contains(fmt.Sprint(got.Header), tok) || strings.Contains(fmt.Sprint(got.Header), other) {
			t.Errorf("?%s: a token reached the app: %v", c.query, got.Header)
		}
	}

	for _, c := range []struct{ cookie, wantCookie string }{
		{"spawner_token=" + tok + "; Spawner_Token=" + other + "; a=1", "a=1"},
		{"spawner_token=" + tok + "; SPAWNER_TOKEN=" + other, ""},
		{"spawner_token =" + other + "; spawner_token=" + tok + "; b=2", "b=2"},
		{"a=1;spawner_token=" + tok + ";  spawner%5Ftoken=" + other, "a=1"},
		{"spawner_token=" + tok + "; spawner.token=" + other + "; spawner_token[x]=" + other, ""},
		{"spawner_token=" + tok + "; spawner_token=" + other + "; c=3", "c=3"},
		{"spawner_token=" + tok + "; spawner_tokens=1; xspawner_token=2", "spawner_tokens=1; xspawner_token=2"},
	} {
		resp := get(t, base, map[string]string{"Cookie": c.cookie})
		got := decode[seen](t, resp)
		if resp.StatusCode != 200 || got.Header.Get("Cookie") != c.wantCookie || len(got.Header["Cookie"]) > 1 {
			t.Errorf("Cookie %q: %d, the app saw %q, want %q", c.cookie, resp.StatusCode, got.Header["Cookie"], c.wantCookie)
		}
	}

	// Other spellings never authorize.
	before := app.hits.Load()
	for _, u := range []string{base + "?spawner%5Ftoken=" + tok, base + "?SPAWNER_TOKEN=" + tok} {
		if resp := get(t, u, nil); resp.StatusCode != 403 {
			t.Errorf("%s: %d, want 403", u, resp.StatusCode)
		}
	}
	for _, ck := range []string{"Spawner_Token=" + tok, "spawner%5Ftoken=" + tok} {
		if resp := get(t, base, map[string]string{"Cookie": ck}); resp.StatusCode != 403 {
			t.Errorf("Cookie %s: %d, want 403", ck, resp.StatusCode)
		}
	}
	if app.hits.Load() != before {
		t.Error("a refused request reached the backend")
	}
}

// The Referer loses the token and keeps the rest; one that does not parse is
// dropped. Every response carries a Referrer-Policy, unless the app set its own.
func TestRouterStripsTheTokenFromReferer(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-ref", lifecycle.Ready)
	other := e.addBackend("slab-ref2", lifecycle.Ready)
	base := e.router.URL + "/p/slab-ref/x?spawner_token=" + tok
	for _, c := range []struct{ referer, want string }{
		// A backend's page opened from its token URL, and a link from another backend.
		{"http://public.example:8081/p/slab-ref/?spawner_token=" + tok, "http://public.example:8081/p/slab-ref/"},
		{"http://public.example:8081/p/slab-ref2/page?a=1&spawner_token=" + other + "&b=2", "http://public.example:8081/p/slab-ref2/page?a=1&b=2"},
		{"http://h/p/x/?spawner%5Ftoken=" + other + "&SPAWNER_TOKEN=" + other, "http://h/p/x/"},
		{"http://h/p/x/?a=1", "http://h/p/x/?a=1"},
		{"http://h/p/x/", "http://h/p/x/"},
		{"http://h/%zz?spawner_token=" + other, ""}, // not a URL
		{"http://user:pw@h/p/x/#frag", "http://h/p/x/"},
	} {
		resp := get(t, base, map[string]string{"Referer": c.referer})
		got := decode[seen](t, resp)
		if resp.StatusCode != 200 || got.Header.Get("Referer") != c.want || (c.want == "" && got.Header["Referer"] != nil) {
			t.Errorf("Referer %q: %d, the app saw %q, want %q", c.referer, resp.StatusCode, got.Header["Referer"], c.want)
		}
		if p := resp.Header.Values("Referrer-Policy"); len(p) != 1 || p[0] != "same-origin" {
			t.Errorf("Referrer-Policy %q, want same-origin", p)
		}
	}
	// The router's own answers carry it too.
	for _, u := range []string{e.router.URL + "/p/slab-ref/", e.router.URL + "/p/slab-ref?spawner_token=" + tok, e.router.URL + "/p/nope/"} {
		if resp := get(t, u, nil); resp.Header.Get("Referrer-Policy") != "same-origin" {
			t.Errorf("%s: %d with Referrer-Policy %q", u, resp.StatusCode, resp.Header.Get("Referrer-Policy"))
		}
	}
	// An app's own policy is the only one.
	resp := get(t, e.router.URL+"/p/slab-ref/policy?spawner_token="+tok, nil)
	if p := resp.Header.Values("Referrer-Policy"); len(p) != 1 || p[0] != "no-referrer" {
		t.Errorf("app's policy: got %q, want only no-referrer", p)
	}
}

// The router sends the pod's router proof, and only it, to the sidecar; a
// client's own Spawner-Router-Proof header never gets through.
func TestRouterSendsThePodsRouterProof(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	tok := e.addBackend("slab-pf", lifecycle.Ready)
	e.setRouterProof("slab-pf", "proof-of-slab-pf")
	base := e.router.URL + "/p/slab-pf/x?spawner_token=" + tok
	for _, hdr := range []map[string]string{
		nil,
		{"Spawner-Router-Proof": "forged"},
		{"Spawner-Router-Proof": "forged", "Connection": "Spawner-Router-Proof"},
	} {
		got := decode[seen](t, get(t, base, hdr))
		if v := got.Header.Values("Spawner-Router-Proof"); len(v) != 1 || v[0] != "proof-of-slab-pf" {
			t.Errorf("client headers %v: the sidecar got proof %q", hdr, v)
		}
	}
	// The WebSocket handshake carries it as well.
	wsURL := "ws" + strings.TrimPrefix(e.router.URL, "http") + "/p/slab-pf/ws?spawner_token=" + tok
	c, _, err := websocket.DefaultDialer.Dial(wsURL, http.Header{"Spawner-Router-Proof": {"forged"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	app.mu.Lock()
	v := app.last.Header.Values("Spawner-Router-Proof")
	app.mu.Unlock()
	if len(v) != 1 || v[0] != "proof-of-slab-pf" {
		t.Errorf("WebSocket: the sidecar got proof %q", v)
	}
	// A pod without a proof (built before the fence): nothing is sent, and a
	// client's header is still removed.
	tok2 := e.addBackend("slab-np", lifecycle.Ready)
	got := decode[seen](t, get(t, e.router.URL+"/p/slab-np/x?spawner_token="+tok2, map[string]string{"Spawner-Router-Proof": "forged"}))
	if v := got.Header.Values("Spawner-Router-Proof"); len(v) != 0 {
		t.Errorf("pod without a proof: the sidecar got %q", v)
	}
}

// setRouterProof gives the backend's pod a sidecar container with the proof
// in its env, as the controller builds it, and waits for the cache.
func (e *testEnv) setRouterProof(name, proof string) {
	e.t.Helper()
	ctx := context.Background()
	pod, err := e.kube.CoreV1().Pods(testNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	pod.Spec.Containers = []corev1.Container{
		{Name: "app", Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: "the-apps-own-env-does-not-count"}}},
		{Name: spawnerv1.SidecarContainerName, Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: proof}}},
	}
	if _, err := e.kube.CoreV1().Pods(testNS).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.eventually(func() bool {
		p, ok := e.s.pod(name)
		return ok && p.Annotations[annotationRouterProof] == proof
	})
}

// TestRouterTellsTheAppItsSession: every proxied request (HTTP and the
// WebSocket handshake) carries the backend's name and its key
// (percent-encoded), whatever the client sent under those names, and no
// key header for a backend without one.
func TestRouterTellsTheAppItsSession(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	forged := map[string]string{wire.HeaderBackend: "other", wire.HeaderKey: "forged"}
	forgedHop := map[string]string{wire.HeaderBackend: "other", wire.HeaderKey: "forged", "Connection": wire.HeaderBackend + ", " + wire.HeaderKey}

	tok := e.addBackend("slab-nokey", lifecycle.Ready)
	for _, hdr := range []map[string]string{nil, forged, forgedHop} {
		got := decode[seen](t, get(t, e.router.URL+"/p/slab-nokey/x?spawner_token="+tok, hdr))
		if v := got.Header.Values(wire.HeaderBackend); len(v) != 1 || v[0] != "slab-nokey" {
			t.Errorf("client headers %v: the app got backend %q", hdr, v)
		}
		if v := got.Header.Values(wire.HeaderKey); len(v) != 0 {
			t.Errorf("client headers %v: a keyless backend's app got key %q", hdr, v)
		}
	}

	tok = e.addBackend("slab-key", lifecycle.Ready)
	ctx := context.Background()
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(ctx, "slab-key", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slab.Spec.Key = "doc 42/é"
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Update(ctx, slab, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(func() bool { s, ok := e.s.slab("slab-key"); return ok && s.Spec.Key != "" })
	for _, hdr := range []map[string]string{nil, forged, forgedHop} {
		got := decode[seen](t, get(t, e.router.URL+"/p/slab-key/x?spawner_token="+tok, hdr))
		if v := got.Header.Values(wire.HeaderKey); len(v) != 1 || v[0] != "doc%2042%2F%C3%A9" {
			t.Errorf("client headers %v: the app got key %q, want doc%%2042%%2F%%C3%%A9", hdr, v)
		}
		if v := got.Header.Values(wire.HeaderBackend); len(v) != 1 || v[0] != "slab-key" {
			t.Errorf("client headers %v: the app got backend %q", hdr, v)
		}
	}
	wsURL := "ws" + strings.TrimPrefix(e.router.URL, "http") + "/p/slab-key/ws?spawner_token=" + tok
	c, _, err := websocket.DefaultDialer.Dial(wsURL, http.Header{wire.HeaderKey: {"forged"}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	app.mu.Lock()
	v := app.last.Header.Values(wire.HeaderKey)
	app.mu.Unlock()
	if len(v) != 1 || v[0] != "doc%2042%2F%C3%A9" {
		t.Errorf("WebSocket: the app got key %q", v)
	}
}

// TestRouterRoutesAClaimedWarmBackendBeforeItsReadyRecord: a backend that
// holds the warm pod it claimed is routed at once, though its status does
// not say Ready yet (the claim records it after answering; under a burst
// that write took 0.9 s on average). A backend still claiming its pod is
// not routed. Before, the router held both until the status said Ready.
func TestRouterRoutesAClaimedWarmBackendBeforeItsReadyRecord(t *testing.T) {
	app := newFakeApp(t)
	e := newTestEnv(t, app.port())
	e.s.cfg.RouterReadyWait = 300 * time.Millisecond
	e.addPool("rooms", nil, 1)
	claiming, tok := e.addClaiming("b-claimed", "rooms", "rooms-0")
	url := e.router.URL + "/p/b-claimed/x?spawner_token=" + tok
	if resp := get(t, url, nil); resp.StatusCode != http.StatusServiceUnavailable || app.hits.Load() != 0 {
		t.Fatalf("a backend still claiming its pod: %d, %d request(s) reached the pod; want 503 and none", resp.StatusCode, app.hits.Load())
	}
	e.takePod("rooms-0", claiming)
	e.eventually(func() bool { s, ok := e.s.slab("b-claimed"); return ok && e.s.claimDone(s) })
	if s, _ := e.s.slab("b-claimed"); lifecycle.Phase(s) == lifecycle.Ready {
		t.Fatal("the test's backend is Ready already")
	}
	start := time.Now()
	resp := get(t, url, nil)
	readBody(t, resp)
	if resp.StatusCode != http.StatusOK || app.hits.Load() != 1 {
		t.Errorf("a backend holding its claimed pod: %d after %v, %d request(s) reached the pod; want 200 at once and 1", resp.StatusCode, time.Since(start), app.hits.Load())
	}
}
