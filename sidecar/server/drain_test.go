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

// The app closing its listener ends the drain at once, even when the
// readiness watcher has backed off and would not look again for seconds.
func TestDrainEndsWhenTheAppStopsListening(t *testing.T) {
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appSrv := &http.Server{Handler: http.NotFoundHandler()}
	go appSrv.Serve(appLn)
	defer appSrv.Close()
	c := Config{
		ServePort:    freeport.Port(t),
		UpstreamPort: appLn.Addr().(*net.TCPAddr).Port,
		StatusPort:   freeport.Port(t),
		Drain:        10 * time.Second,
		ProcNet:      "/proc/net",
		Host:         "127.0.0.1",
		Logger:       slog.New(slog.DiscardHandler),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, c) }()
	status := "http://127.0.0.1:" + strconv.Itoa(c.StatusPort)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(status + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), "sidecar_ready 1\n") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
	}
	// The watcher checks again 1 s after the app listened, then 2 s later:
	// stop in between, when its next look is well over a second away.
	time.Sleep(1500 * time.Millisecond)
	cancel()
	appSrv.Close() // as an app does on SIGTERM
	closed := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(closed); d > 500*time.Millisecond {
			t.Errorf("drain ended %s after the app stopped listening, want within the 20 ms poll", d)
		} else {
			t.Logf("drain ended %s after the app stopped listening", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the drain did not end when the app stopped listening")
	}
}
