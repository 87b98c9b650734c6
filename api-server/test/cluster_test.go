//go:build cluster

// Package test runs the api-server as real processes (two replicas) against a
// real cluster (KUBECONFIG), with the controller and the sweeper as host
// processes watching only the test's namespace, and the demo app as backend.
//
//	KUBECONFIG=/var/lib/spawner-localcluster/kubeconfig go test -tags cluster ./test/
//
// Needs localhost/spawner-demo:dev and localhost/spawner-sidecar:dev on the
// node (scripts/build-images.sh).
package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"spawner.dev/common/clustertest"
	"spawner.dev/common/freeport"
	"spawner.dev/generated/clientset/versioned"
)

const controlToken = "cluster-test-control-token-0123456789"

type replica struct {
	control, router string // http://host:port
	proc            *clustertest.Process
}

type env struct {
	t        *testing.T
	cfg      *rest.Config
	kube     kubernetes.Interface
	sp       versioned.Interface
	ns, node string
	a, b     replica
	ctrl     *clustertest.Process
}

// setup: CRD, a namespace, controller + sweeper for it, two api-servers.
func setup(t *testing.T) *env {
	t.Helper()
	ce := clustertest.Setup(t)
	e := &env{t: t, cfg: ce.Config, kube: ce.Kube, sp: versioned.NewForConfigOrDie(ce.Config), ns: ce.Namespace}
	e.node = clustertest.Node(t, e.kube, clustertest.DemoImage, clustertest.SidecarImage)
	kc := "--kubeconfig=" + os.Getenv("KUBECONFIG")

	e.startController()
	clustertest.StartSweeper(t, e.ns, e.node, freeport.Addr(t))

	dir := t.TempDir()
	tokens, key := filepath.Join(dir, "tokens"), filepath.Join(dir, "key")
	os.WriteFile(tokens, []byte(controlToken+"\n"), 0o600)
	os.WriteFile(key, []byte("cluster-test-access-token-key-0123456789"), 0o600)
	bin := clustertest.Binary(t, "api-server")
	// Both replicas hand out URLs on replica a's router, as replicas behind
	// one Service would; tests reach replica b's router by swapping the host.
	publicAddr := freeport.Addr(t)
	start := func(r string) replica {
		c := freeport.Addr(t)
		p := clustertest.Start(t, bin, kc, "--backend-namespace="+e.ns, "--control-addr="+c, "--router-addr="+r,
			"--public-url=http://"+publicAddr, "--token-file="+tokens, "--access-token-key-file="+key, "--log-json=false")
		rep := replica{control: "http://" + c, router: "http://" + r, proc: p}
		clustertest.Eventually(t, 30*time.Second, "api-server /readyz", func() (bool, error) {
			resp, err := http.Get(rep.control + "/readyz")
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == 200, fmt.Errorf("status %d", resp.StatusCode)
		})
		return rep
	}
	e.a, e.b = start(publicAddr), start(freeport.Addr(t))
	return e
}

// startController runs the controller for the test's namespace (again, after
// a test killed it).
func (e *env) startController() {
	e.t.Helper()
	e.ctrl = clustertest.StartController(e.t, e.ns, "--http-address="+freeport.Addr(e.t))
}

var noRedirect = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       30 * time.Second,
}

func (e *env) call(base, method, path, body string) (int, string, http.Header) {
	e.t.Helper()
	code, b, h, err := tryCall(base, method, path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	return code, b, h
}

// tryCall is call for a replica that may be gone (a test killed it).
func tryCall(base, method, path, body string) (int, string, http.Header, error) {
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+controlToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := noRedirect.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp.Header, err
}

type spawnResp struct {
	Name, URL, ReadyURL, StatusURL string
	Spawned                        bool
}

// atOnce runs call n times at once, half of them against each replica's
// control API (base), and returns when all have.
func (e *env) atOnce(n int, call func(base string)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		base := e.a.control
		if i%2 == 1 {
			base = e.b.control
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			call(base)
		}()
	}
	close(start)
	wg.Wait()
}

func (e *env) spawn(base, body string) (int, spawnResp) {
	e.t.Helper()
	code, b, _ := e.call(base, "POST", "/spawn", body)
	var sr spawnResp
	if code/100 == 2 {
		if err := json.Unmarshal([]byte(b), &sr); err != nil {
			e.t.Fatalf("spawn answer %q: %v", b, err)
		}
	} else {
		e.t.Fatalf("spawn: %d %s", code, b)
	}
	return code, sr
}

func demoBody(extra string) string {
	return `{"image":"` + clustertest.DemoImage + `","gracePeriodSeconds":60` + extra + `}`
}

// waitReady polls /ready on a replica until it redirects, and returns the Location.
func (e *env) waitReady(base, name string) string {
	e.t.Helper()
	var loc string
	clustertest.Eventually(e.t, 90*time.Second, name+" ready", func() (bool, error) {
		code, body, h := e.call(base, "GET", "/backend/"+name+"/ready", "")
		loc = h.Get("Location")
		if code == 409 {
			return false, nil
		}
		return code == 302, fmt.Errorf("ready: %d %s", code, body)
	})
	return loc
}

// onRouter rewrites a backend URL to another replica's router.
func onRouter(rawURL, router string) string {
	u, _ := url.Parse(rawURL)
	r, _ := url.Parse(router)
	u.Host = r.Host
	return u.String()
}

func readStream(t *testing.T, resp *http.Response) <-chan string {
	states := make(chan string, 32)
	go func() {
		defer close(states)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var st struct{ State string }
				json.Unmarshal([]byte(d), &st)
				states <- st.State
			}
		}
	}()
	return states
}

// TestSpawnRouteTerminate: spawn on one replica, follow the status stream,
// ready redirect, HTTP and WebSocket through both routers, terminate, 404.
func TestSpawnRouteTerminate(t *testing.T) {
	e := setup(t)
	code, sr := e.spawn(e.a.control, demoBody(""))
	if code != 201 || !sr.Spawned || !strings.HasPrefix(sr.Name, "slab-") {
		t.Fatalf("%d %+v", code, sr)
	}
	// The stream from the other replica shows every phase, in order.
	req, _ := http.NewRequest("GET", e.b.control+"/backend/"+sr.Name+"/status/stream", nil)
	req.Header.Set("Authorization", "Bearer "+controlToken)
	var resp *http.Response
	clustertest.Eventually(t, 10*time.Second, "stream on replica b", func() (bool, error) {
		var err error
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		if resp.StatusCode != 200 {
			resp.Body.Close()
			return false, fmt.Errorf("status %d", resp.StatusCode) // replica b's cache may lag a moment
		}
		return true, nil
	})
	states := readStream(t, resp)
	var seen []string
	timeout := time.After(90 * time.Second)
	for done := false; !done; {
		select {
		case s, ok := <-states:
			if !ok {
				t.Fatalf("stream ended early: %v", seen)
			}
			seen = append(seen, s)
			done = s == "Ready" || s == "Failed"
		case <-timeout:
			t.Fatalf("no Ready within 90s: %v", seen)
		}
	}
	t.Logf("status stream: %v", seen)
	if strings.Join(seen, ",") != "Pending,Scheduled,Running,Ready" {
		// Running may be recorded after Ready when the sweeper is faster than the
		// controller; the stream never goes back, so it is skipped then.
		if strings.Join(seen, ",") != "Pending,Scheduled,Ready" {
			t.Fatalf("phases %v", seen)
		}
	}

	loc := e.waitReady(e.b.control, sr.Name)
	if loc != sr.URL {
		t.Fatalf("ready redirect %q, spawn url %q", loc, sr.URL)
	}
	// Replica a reads its own informer cache, which may learn of the Ready that
	// replica b has just served a few milliseconds later.
	clustertest.Eventually(t, 5*time.Second, "Ready in replica a's status", func() (bool, error) {
		st := struct{ State, Time, Reason string }{}
		_, body, _ := e.call(e.a.control, "GET", "/backend/"+sr.Name+"/status", "")
		json.Unmarshal([]byte(body), &st)
		if st.State != "Ready" || st.Time == "" {
			return false, fmt.Errorf("status %s", body)
		}
		return true, nil
	})

	// HTTP through router b: token exchanged for a cookie, prefix stripped.
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	u := onRouter(strings.Replace(sr.URL, "/?", "/headers?x=1&", 1), e.b.router)
	// Replica b may learn of the pod's IP a moment after replica a saw Ready: 503 until then.
	var hresp *http.Response
	clustertest.Eventually(t, 10*time.Second, "GET through router b", func() (bool, error) {
		var err error
		if hresp, err = client.Get(u); err != nil {
			return false, err
		}
		if hresp.StatusCode == http.StatusServiceUnavailable {
			hresp.Body.Close()
			return false, fmt.Errorf("503")
		}
		return true, nil
	})
	var echoed struct {
		Path, Query string
		Headers     http.Header
	}
	json.NewDecoder(hresp.Body).Decode(&echoed)
	hresp.Body.Close()
	if hresp.StatusCode != 200 || echoed.Path != "/headers" || echoed.Query != "x=1" ||
		echoed.Headers.Get("X-Forwarded-Prefix") != "/p/"+sr.Name || strings.Contains(echoed.Headers.Get("Cookie"), "spawner_token") {
		t.Fatalf("%d %+v", hresp.StatusCode, echoed)
	}
	// The cookie alone is enough now (same router host).
	r2, err := client.Get(e.b.router + "/p/" + sr.Name + "/healthz")
	if err != nil || r2.StatusCode != 200 {
		t.Fatalf("cookie request: %v %v", err, r2)
	}
	r2.Body.Close()

	// WebSocket echo through router a, with the token in the URL.
	wsURL := "ws" + strings.TrimPrefix(strings.Replace(sr.URL, "/?", "/ws?", 1), "http")
	var ws *websocket.Conn
	clustertest.Eventually(t, 10*time.Second, "WebSocket through router a", func() (bool, error) {
		var (
			wresp *http.Response
			err   error
		)
		ws, wresp, err = websocket.DefaultDialer.Dial(wsURL, nil)
		if err != nil && wresp != nil && wresp.StatusCode == http.StatusServiceUnavailable {
			return false, err
		}
		if err != nil {
			t.Fatalf("websocket: %v %v", err, wresp)
		}
		return true, nil
	})
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	ws.WriteMessage(websocket.TextMessage, []byte("hello through the router"))
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "hello through the router" {
		t.Fatalf("echo %q %v", m, err)
	}
	ws.Close()

	// Terminate (soft) on replica b: the controller ends it; both routers 404.
	code, body, _ := e.call(e.b.control, "POST", "/backend/"+sr.Name+"/terminate", "")
	if code != 202 {
		t.Fatalf("terminate %d %s", code, body)
	}
	for _, router := range []string{e.a.router, e.b.router} {
		clustertest.Eventually(t, 20*time.Second, "router 404 after terminate", func() (bool, error) {
			resp, err := http.Get(onRouter(sr.URL, router))
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == 404, fmt.Errorf("status %d", resp.StatusCode)
		})
	}
	clustertest.Eventually(t, 60*time.Second, "backend deleted", func() (bool, error) {
		code, _, _ := e.call(e.a.control, "GET", "/backend/"+sr.Name+"/status", "")
		return code == 404, fmt.Errorf("status %d", code)
	})
}

// TestGetOrCreateRace: 100 concurrent callers over both replicas, one backend.
func TestGetOrCreateRace(t *testing.T) {
	e := setup(t)
	const callers = 100
	body := demoBody(`,"key":"race-room"`)
	var (
		mu      sync.Mutex
		names   = map[string]int{}
		urls    = map[string]bool{}
		spawned int
	)
	e.atOnce(callers, func(base string) {
		code, sr := e.spawn(base, body)
		mu.Lock()
		defer mu.Unlock()
		names[sr.Name]++
		urls[sr.URL] = true
		if sr.Spawned != (code == 201) {
			t.Errorf("spawned %v with %d", sr.Spawned, code)
		}
		if sr.Spawned {
			spawned++
		}
	})
	if len(names) != 1 || spawned != 1 || len(urls) != 1 {
		t.Fatalf("names %v spawned %d urls %d", names, spawned, len(urls))
	}
	list, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("%d backends in the namespace (%v)", len(list.Items), err)
	}
	var name string
	for n := range names {
		name = n
	}
	// The key's backend, once hard-terminated, is replaced by a fresh one.
	if code, b, _ := e.call(e.b.control, "POST", "/backend/"+name+"/terminate", `{"hard":true}`); code != 202 {
		t.Fatalf("hard terminate: %d %s", code, b)
	}
	// (Replica a's cache learns of the deletion within moments; until then it
	// would still hand out the old backend.)
	clustertest.Eventually(t, 20*time.Second, "hard-terminated backend gone from replica a", func() (bool, error) {
		code, _, _ := e.call(e.a.control, "GET", "/backend/"+name+"/status", "")
		return code == 404, fmt.Errorf("status %d", code)
	})
	code, sr := e.spawn(e.a.control, body)
	// Its name may be reused (generation 1 again once the old one is gone
	// entirely), but it is a new backend with a new access token.
	var oldURL string
	for u := range urls {
		oldURL = u
	}
	if code != 201 || !sr.Spawned || sr.URL == oldURL {
		t.Fatalf("after terminate: %d %+v (old %s)", code, sr, oldURL)
	}
	// Replica b lists it as soon as its cache has it.
	clustertest.Eventually(t, 10*time.Second, "new backend listed on replica b", func() (bool, error) {
		_, bl, _ := e.call(e.b.control, "GET", "/backends?key=race-room", "")
		return strings.Contains(bl, sr.URL), fmt.Errorf("list: %s", bl)
	})
}

// TestWrongTokenNeverReachesBackend: 403 for wrong/missing tokens, and the
// demo app's request counter proves nothing reached it.
func TestWrongTokenNeverReachesBackend(t *testing.T) {
	e := setup(t)
	_, sr := e.spawn(e.a.control, demoBody(""))
	e.waitReady(e.a.control, sr.Name)
	base := e.b.router + "/p/" + sr.Name
	for _, c := range []struct{ url, cookie string }{
		{base + "/", ""},
		{base + "/headers?spawner_token=wrong", ""},
		{base + "/headers", "spawner_token=wrong"},
		{base + "/stats?spawner_token=" + strings.Repeat("A", 22), ""},
	} {
		req, _ := http.NewRequest("GET", c.url, nil)
		if c.cookie != "" {
			req.Header.Set("Cookie", c.cookie)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("%s: %d", c.url, resp.StatusCode)
		}
	}
	if _, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(base, "http")+"/ws?spawner_token=wrong", nil); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("websocket with a wrong token: %v %v", err, resp)
	}
	// /stats does not count itself: nothing refused above reached the app.
	if n := e.stats(onRouter(strings.Replace(sr.URL, "/?", "/stats?", 1), e.a.router)); n != 0 {
		t.Fatalf("backend saw %d requests, want 0", n)
	}
	// The sidecar's status port is not reachable through the router: /_events
	// goes to the app (which has no such path) like any other path.
	resp, err := http.Get(onRouter(strings.Replace(sr.URL, "/?", "/_events?", 1), e.b.router))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if strings.Contains(string(b), "live_connections") {
		t.Fatalf("status port reachable through the router: %d %s", resp.StatusCode, b)
	}
}

func (e *env) stats(u string) int64 {
	e.t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		e.t.Fatal(err)
	}
	var stats struct{ Requests int64 }
	json.NewDecoder(resp.Body).Decode(&stats)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("stats: %d", resp.StatusCode)
	}
	return stats.Requests
}
