package apiserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"spawner.dev/apis/lifecycle"
)

const testSuffix = "backends.test"

func newHostEnv(t *testing.T, port string) *testEnv {
	return newTestEnvConfig(t, port, func(c *Config) { c.PublicHostSuffix = testSuffix })
}

// onHost sends a request to the router with the given Host header.
func (e *testEnv) onHost(host, path string, hdr http.Header) (*http.Response, string) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.router.URL+path, nil)
	req.Host = host
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, readBody(e.t, resp)
}

func jsonError(body string) string {
	var m struct{ Error string }
	if json.Unmarshal([]byte(body), &m) != nil {
		return ""
	}
	return m.Error
}

// TestHostModeURLs: in host mode the spawn answer, the list and the ready
// redirect give <scheme>://<name>.<suffix>:<port>/?spawner_token=…; the
// status and ready URLs stay on the control API.
func TestHostModeURLs(t *testing.T) {
	e := newHostEnv(t, "")
	resp := e.do("POST", "/spawn", `{"image":"demo:1"}`)
	var sr SpawnResponse
	if err := json.Unmarshal([]byte(readBody(t, resp)), &sr); err != nil || resp.StatusCode != 201 {
		t.Fatalf("spawn: %d %v", resp.StatusCode, err)
	}
	u, err := url.Parse(sr.URL)
	if err != nil || u.Scheme != "http" || u.Host != sr.Name+"."+testSuffix+":8081" || u.Path != "/" || u.Query().Get(tokenParam) == "" {
		t.Fatalf("spawn URL %s", sr.URL)
	}
	if !strings.HasPrefix(sr.ReadyURL, e.control.URL+"/backend/"+sr.Name+"/ready?") {
		t.Errorf("readyUrl %s", sr.ReadyURL)
	}
	tok := e.addBackend("slab-ready", lifecycle.Ready)
	resp = e.do("GET", "/backend/slab-ready/ready", "")
	readBody(t, resp)
	if loc := resp.Header.Get("Location"); resp.StatusCode != 302 || loc != "http://slab-ready."+testSuffix+":8081/?spawner_token="+tok {
		t.Errorf("ready: %d Location %s", resp.StatusCode, loc)
	}
}

// TestHostModeRouting: the Host header alone picks the backend; the path is
// the app's own (nothing stripped, no X-Forwarded-Prefix); the token becomes
// a host-only cookie; another backend's host refuses that token and cookie;
// malformed hosts get a 400 and unknown names a 404, both JSON; the router's
// own routes answer on other hosts, and /p/ is not routed at all.
func TestHostModeRouting(t *testing.T) {
	app := newFakeApp(t)
	e := newHostEnv(t, app.port())
	tokA := e.addBackend("slab-a", lifecycle.Ready)
	tokB := e.addBackend("slab-b", lifecycle.Ready)
	hostA := "slab-a." + testSuffix

	resp, body := e.onHost(hostA, "/some/path?x=1&spawner_token="+tokA, http.Header{"X-Forwarded-Prefix": {"/forged"}})
	var got seen
	json.Unmarshal([]byte(body), &got)
	if resp.StatusCode != 200 || got.Path != "/some/path" || got.RawQuery != "x=1" || got.Header.Get("X-Forwarded-Prefix") != "" {
		t.Fatalf("through host A: %d %+v", resp.StatusCode, got)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == tokenCookie {
			cookie = c
		}
	}
	if cookie == nil || cookie.Path != "/" || cookie.Domain != "" || !cookie.HttpOnly {
		t.Fatalf("cookie %+v, want a host-only cookie with Path /", cookie)
	}
	withCookie := http.Header{"Cookie": {tokenCookie + "=" + tokA}}
	// Case, port and a trailing dot name the same backend; the cookie alone lets in.
	for _, h := range []string{hostA, "SLAB-A.Backends.Test", hostA + ".", hostA + ":8081", hostA + ".:443"} {
		resp, body := e.onHost(h, "/healthz", withCookie)
		json.Unmarshal([]byte(body), &got)
		if resp.StatusCode != 200 || got.Path != "/healthz" {
			t.Errorf("Host %q with A's cookie: %d %s (want the app's own /healthz)", h, resp.StatusCode, body)
		}
	}

	// A's token and cookie do not open B, and B's token does not open A.
	before := app.hits.Load()
	for _, c := range []struct {
		host, path string
		hdr        http.Header
	}{
		{"slab-b." + testSuffix, "/", withCookie},
		{"slab-b." + testSuffix, "/?spawner_token=" + tokA, nil},
		{hostA, "/?spawner_token=" + tokB, nil},
	} {
		if resp, body := e.onHost(c.host, c.path, c.hdr); resp.StatusCode != 403 || jsonError(body) == "" {
			t.Errorf("%s%s %v: %d %s, want a 403 JSON error", c.host, c.path, c.hdr, resp.StatusCode, body)
		}
	}
	if app.hits.Load() != before {
		t.Fatal("a refused request reached a backend")
	}

	// Malformed backend hosts: 400, never a backend.
	for _, h := range []string{"a.slab-a." + testSuffix, "slab_a." + testSuffix, "." + testSuffix, hostA + ":x", hostA + ":0"} {
		resp, body := e.onHost(h, "/?spawner_token="+tokA, withCookie)
		if resp.StatusCode != 400 || !strings.Contains(jsonError(body), "does not name a backend") {
			t.Errorf("Host %q: %d %s, want a 400 JSON error", h, resp.StatusCode, body)
		}
	}
	// An unknown name: 404 (after the short wait for another replica's create).
	start := time.Now()
	if resp, body := e.onHost("slab-none."+testSuffix, "/", nil); resp.StatusCode != 404 || jsonError(body) != "no such backend" {
		t.Errorf("unknown backend host: %d %s", resp.StatusCode, body)
	}
	t.Logf("unknown backend answered after %s", time.Since(start).Round(time.Millisecond))
	if app.hits.Load() != before {
		t.Fatal("a malformed or unknown host reached a backend")
	}

	// Other hosts: the router's own routes; no path routing in host mode.
	for _, h := range []string{testSuffix, "spawner-router.spawner-system", "127.0.0.1:8081"} {
		if resp, body := e.onHost(h, "/healthz", nil); resp.StatusCode != 200 || body != "ok\n" {
			t.Errorf("Host %q /healthz: %d %q", h, resp.StatusCode, body)
		}
		resp, body := e.onHost(h, "/p/slab-a/?spawner_token="+tokA, nil)
		if resp.StatusCode != 404 || !strings.Contains(jsonError(body), "by host name") {
			t.Errorf("Host %q /p/slab-a/: %d %s, want a 404 saying backends are routed by host", h, resp.StatusCode, body)
		}
	}
	if app.hits.Load() != before {
		t.Fatal("a request for the router itself reached a backend")
	}
}

// TestHostModeWebSocket: a WebSocket to <name>.<suffix> reaches that
// backend, with the token in the query or the cookie; a wrong one is refused.
func TestHostModeWebSocket(t *testing.T) {
	app := newFakeApp(t)
	e := newHostEnv(t, app.port())
	tok := e.addBackend("slab-w", lifecycle.Ready)
	e.addBackend("slab-v", lifecycle.Ready)
	wsURL := "ws" + strings.TrimPrefix(e.router.URL, "http") + "/ws"
	for name, hdr := range map[string]http.Header{
		"query":  {"Host": {"slab-w." + testSuffix}},
		"cookie": {"Host": {"slab-w." + testSuffix}, "Cookie": {tokenCookie + "=" + tok}},
	} {
		u := wsURL
		if name == "query" {
			u += "?spawner_token=" + tok
		}
		c, resp, err := websocket.DefaultDialer.Dial(u, hdr)
		if err != nil {
			t.Fatalf("%s: dial: %v (%v)", name, err, resp)
		}
		msg := fmt.Sprintf("hello by %s", name)
		c.WriteMessage(websocket.TextMessage, []byte(msg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, m, err := c.ReadMessage(); err != nil || string(m) != "echo:"+msg {
			t.Fatalf("%s: %q %v", name, m, err)
		}
		c.Close()
	}
	before := app.hits.Load()
	_, resp, err := websocket.DefaultDialer.Dial(wsURL, http.Header{"Host": {"slab-v." + testSuffix}, "Cookie": {tokenCookie + "=" + tok}})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("slab-w's cookie on slab-v's host: %v %v", err, resp)
	}
	if app.hits.Load() != before {
		t.Fatal("backend reached")
	}
}

func TestHostModeRefusesBadSuffix(t *testing.T) {
	for _, suffix := range []string{"localhost", "bad_name.example.com", "a..b"} {
		if _, err := New(Config{PublicURL: "http://x", PublicHostSuffix: suffix, Logger: discardLogger()}, nil, nil); err == nil ||
			!strings.Contains(err.Error(), "--public-host-suffix") {
			t.Errorf("--public-host-suffix=%s: %v", suffix, err)
		}
	}
}
