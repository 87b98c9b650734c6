package apiserver

import (
	"bufio"
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

	"spawner.dev/apis/lifecycle"
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
