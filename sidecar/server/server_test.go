package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"spawner.dev/common/freeport"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runSidecar starts Run against an app and returns the public and status base
// URLs and a function that stops the sidecar and waits for it.
func runSidecar(t *testing.T, app http.Handler, drain time.Duration, opts ...func(*Config)) (public, status string, stop func() error) {
	t.Helper()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appSrv := &http.Server{Handler: app}
	go appSrv.Serve(appLn)
	t.Cleanup(func() { appSrv.Close() })
	c := Config{
		ServePort:    freeport.Port(t),
		UpstreamPort: appLn.Addr().(*net.TCPAddr).Port,
		StatusPort:   freeport.Port(t),
		Drain:        drain,
		ProcNet:      "/proc/net",
		Host:         "127.0.0.1",
		Logger:       slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(&c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, c) }()
	public = "http://127.0.0.1:" + strconv.Itoa(c.ServePort)
	status = "http://127.0.0.1:" + strconv.Itoa(c.StatusPort)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if resp, err := http.Get(status + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("status port never came up")
		}
	}
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop() })
	return public, status, stop
}

// The status paths on the public port belong to the app.
func TestStatusPortIsSeparate(t *testing.T) {
	public, status, _ := runSidecar(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "app saw "+r.URL.Path)
	}), time.Second)
	for _, path := range []string{"/_events", "/healthz", "/metrics"} {
		if code, body := get(t, public+path); code != 200 || body != "app saw "+path {
			t.Errorf("public %s: %d %q", path, code, body)
		}
	}
	if code, body := get(t, status+"/metrics"); code != 200 || !strings.Contains(body, "sidecar_http_requests_total 3\n") {
		t.Errorf("status /metrics: %d %q", code, body)
	}
	if code, _ := get(t, status+"/anything-else"); code != 404 {
		t.Errorf("status port proxies? %d", code)
	}
	// The app listens, so the readiness watcher reports it.
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, body := get(t, status+"/metrics"); strings.Contains(body, "sidecar_ready 1\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// On SIGTERM a request in flight still completes.
func TestShutdownDrainsInFlight(t *testing.T) {
	started := make(chan struct{})
	public, _, stop := runSidecar(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "finished")
	}), time.Second) // the app keeps listening, so the drain runs its full second
	result := make(chan string, 1)
	go func() {
		_, body := get(t, public+"/slow")
		result <- body
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	if body := <-result; body != "finished" {
		t.Fatalf("in-flight request got %q", body)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
}
