//go:build cluster

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"spawner.dev/common/clustertest"
	"spawner.dev/common/freeport"
)

const hostSuffix = "backends.test"

// hostModeAPI is an api-server in host mode on e's namespace.
type hostModeAPI struct {
	control, routerAddr string
}

// startHostMode runs one more api-server, with --public-host-suffix, whose
// public URL is its own router: backend URLs are
// http://<name>.backends.test:<router port>/.
func (e *env) startHostMode() hostModeAPI {
	e.t.Helper()
	dir := e.t.TempDir()
	tokens, key := filepath.Join(dir, "tokens"), filepath.Join(dir, "key")
	os.WriteFile(tokens, []byte(controlToken+"\n"), 0o600)
	os.WriteFile(key, []byte("cluster-test-access-token-key-0123456789"), 0o600)
	c, r := freeport.Addr(e.t), freeport.Addr(e.t)
	clustertest.Start(e.t, clustertest.Binary(e.t, "api-server"), "--kubeconfig="+os.Getenv("KUBECONFIG"),
		"--backend-namespace="+e.ns, "--control-addr="+c, "--router-addr="+r, "--public-url=http://"+r,
		"--public-host-suffix="+hostSuffix, "--token-file="+tokens, "--access-token-key-file="+key, "--log-json=false")
	api := hostModeAPI{control: "http://" + c, routerAddr: r}
	clustertest.Eventually(e.t, 30*time.Second, "host-mode api-server /readyz", func() (bool, error) {
		resp, err := http.Get(api.control + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, fmt.Errorf("status %d", resp.StatusCode)
	})
	return api
}

// client dials every *.backends.test (and anything else) at the router,
// as wildcard DNS pointing at it would.
func (h hostModeAPI) client() *http.Client {
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, h.routerAddr)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (h hostModeAPI) dialer() *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: 10 * time.Second, NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, h.routerAddr)
	}}
}

func getBody(t *testing.T, c *http.Client, u string, hdr http.Header) (int, string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp
}

// TestHostModeRoutesHTTPAndWebSocketByHost: with --public-host-suffix the
// backend URLs are http://<name>.backends.test:<port>/, the ready redirect
// points there, and the router reaches each backend's pod by Host — HTTP
// (the path is the app's own, no prefix) and WebSocket — while one
// backend's token or cookie does not open another's host, a malformed host
// is a 400 and /p/ is not routed.
func TestHostModeRoutesHTTPAndWebSocketByHost(t *testing.T) {
	e := setup(t)
	h := e.startHostMode()
	c := h.client()
	_, a := e.spawn(h.control, demoBody(""))
	_, b := e.spawn(h.control, demoBody(""))
	for _, sr := range []spawnResp{a, b} {
		u, err := url.Parse(sr.URL)
		_, port, _ := net.SplitHostPort(h.routerAddr)
		if err != nil || u.Host != sr.Name+"."+hostSuffix+":"+port || u.Path != "/" {
			t.Fatalf("spawn URL %s, want http://%s.%s:%s/?spawner_token=…", sr.URL, sr.Name, hostSuffix, port)
		}
		if loc := e.waitReady(h.control, sr.Name); loc != sr.URL {
			t.Errorf("ready redirect %s, want the spawn URL %s", loc, sr.URL)
		}
	}

	// HTTP: the token in the query becomes a host-only cookie; the app sees
	// its own path and no X-Forwarded-Prefix.
	tokA := strings.SplitN(a.URL, "spawner_token=", 2)[1]
	baseA := strings.SplitN(a.URL, "?", 2)[0]
	code, body, resp := getBody(t, c, baseA+"headers?spawner_token="+tokA, nil)
	if code != 200 || strings.Contains(body, "X-Forwarded-Prefix") || strings.Contains(body, tokA) {
		t.Fatalf("GET /headers on A's host: %d %s", code, body)
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "spawner_token" {
			cookie = ck
		}
	}
	if cookie == nil || cookie.Path != "/" || cookie.Domain != "" {
		t.Fatalf("cookie %+v, want Path=/ and no Domain", cookie)
	}
	withCookie := http.Header{"Cookie": {"spawner_token=" + tokA}}
	if code, body, _ := getBody(t, c, baseA+"healthz", withCookie); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("the app's /healthz on A's host with the cookie: %d %s", code, body)
	}

	// WebSocket on A's host, by cookie.
	ws, wresp, err := h.dialer().Dial("ws"+strings.TrimPrefix(baseA, "http")+"ws", withCookie)
	if err != nil {
		t.Fatalf("websocket on A's host: %v %v", err, wresp)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	ws.WriteMessage(websocket.TextMessage, []byte("hello by host"))
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "hello by host" {
		t.Fatalf("echo %q %v", m, err)
	}
	ws.Close()

	// A's credentials do not open B, on HTTP or WebSocket.
	baseB := strings.SplitN(b.URL, "?", 2)[0]
	if code, body, _ := getBody(t, c, baseB+"headers", withCookie); code != 403 {
		t.Errorf("A's cookie on B's host: %d %s", code, body)
	}
	if code, body, _ := getBody(t, c, baseB+"headers?spawner_token="+tokA, nil); code != 403 {
		t.Errorf("A's token on B's host: %d %s", code, body)
	}
	if _, wresp, err := h.dialer().Dial("ws"+strings.TrimPrefix(baseB, "http")+"ws", withCookie); err == nil || wresp == nil || wresp.StatusCode != 403 {
		t.Errorf("A's cookie on B's WebSocket: %v %v", err, wresp)
	}

	// Strictness: case and a trailing dot name the same backend; a
	// malformed host is a 400; /p/ is not routed on the router's own host.
	upper := strings.Replace(baseA, a.Name+"."+hostSuffix, strings.ToUpper(a.Name)+"."+hostSuffix+".", 1)
	if code, _, _ := getBody(t, c, upper+"healthz", withCookie); code != 200 {
		t.Errorf("%s: %d", upper, code)
	}
	bad := strings.Replace(baseA, a.Name+".", "x."+a.Name+".", 1)
	var msg struct{ Error string }
	code, body, _ = getBody(t, c, bad+"healthz", withCookie)
	if json.Unmarshal([]byte(body), &msg); code != 400 || !strings.Contains(msg.Error, "does not name a backend") {
		t.Errorf("%s: %d %s, want a 400 JSON error", bad, code, body)
	}
	code, body, _ = getBody(t, c, "http://"+h.routerAddr+"/p/"+a.Name+"/?spawner_token="+tokA, nil)
	if json.Unmarshal([]byte(body), &msg); code != 404 || !strings.Contains(msg.Error, "by host name") {
		t.Errorf("/p/ on the router's own host: %d %s", code, body)
	}
}
