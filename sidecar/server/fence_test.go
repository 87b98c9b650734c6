package server

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"spawner.dev/common/wire"
)

// With a router proof, the assembled sidecar lets through only requests that
// carry it: on the public port (the app never sees the others, nor the
// header) and on the status port's /_events and /metrics; /healthz stays open.
func TestRouterProofFencesBothPorts(t *testing.T) {
	const proof = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"
	var hits atomic.Int64
	var sawProof atomic.Bool
	public, status, _ := runSidecar(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if _, ok := r.Header[wire.HeaderRouterProof]; ok {
			sawProof.Store(true)
		}
		io.WriteString(w, "app")
	}), time.Second, func(c *Config) { c.RouterProof = proof })

	do := func(url, value string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if value != "" {
			req.Header.Set(wire.HeaderRouterProof, value)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, u := range []string{public + "/", public + "/ws", status + "/_events", status + "/metrics"} {
		for _, v := range []string{"", "wrong", strings.ToLower(proof)} {
			if code := do(u, v); code != 403 {
				t.Errorf("%s with proof %q: %d, want 403", u, v, code)
			}
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the app saw %d refused requests", n)
	}
	if code := do(status+"/healthz", ""); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code := do(public+"/", proof); code != 200 || hits.Load() != 1 {
		t.Errorf("with the proof: %d, app hits %d", code, hits.Load())
	}
	if sawProof.Load() {
		t.Error("the proof reached the app")
	}
	if code := do(status+"/metrics", proof); code != 200 {
		t.Errorf("status /metrics with the proof: %d", code)
	}
}
