package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/proxy"
)

// The fence: with RouterProof set, a request without exactly that proof is
// answered 403 and the app never sees it; the proof is never forwarded,
// fence or not, on plain requests and WebSocket upgrades alike.
func TestRouterProof(t *testing.T) {
	var l appLog
	upstream := recordingApp(t, &l)
	front := func(proof string) string {
		tracker := activity.New(0)
		return serve(t, proxy.New(proxy.Config{Upstream: upstream, Tracker: tracker,
			Metrics: proxy.NewMetrics(metrics.NewRegistry(), tracker), MaxIdle: 8, RouterProof: proof}))
	}
	fenced, open := front("s3cret-proof"), front("")
	send := func(addr, req string) rawResponse {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		return readRawResponse(bufio.NewReader(c), "GET")
	}
	for _, tc := range []struct {
		name, addr, fields string
		status             int
	}{
		{"no proof", fenced, "", 403},
		{"wrong proof", fenced, "Spawner-Router-Proof: s3cret-prooF\r\n", 403},
		{"prefix of the proof", fenced, "Spawner-Router-Proof: s3cret\r\n", 403},
		{"empty proof", fenced, "Spawner-Router-Proof: \r\n", 403},
		{"proof twice", fenced, "Spawner-Router-Proof: s3cret-proof\r\nspawner-router-proof: other\r\n", 403},
		{"right proof", fenced, "spawner-router-PROOF: s3cret-proof\r\n", 200},
		{"right proof on an HTTP/1.0 request", fenced, "Spawner-Router-Proof: s3cret-proof\r\n", 200},
		{"no fence, proof sent anyway", open, "Spawner-Router-Proof: anything\r\n", 200},
		{"no fence, no proof", open, "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(l.get())
			version := "HTTP/1.1"
			if strings.Contains(tc.name, "1.0") {
				version = "HTTP/1.0"
			}
			r := send(tc.addr, "GET /f "+version+"\r\nHost: x\r\n"+tc.fields+"\r\n")
			if r.err != nil || r.status != tc.status {
				t.Fatalf("status %d (%v), want %d", r.status, r.err, tc.status)
			}
			time.Sleep(10 * time.Millisecond)
			saw := l.get()[before:]
			if tc.status == 403 {
				if len(saw) != 0 || len(r.body) == 0 || len(r.body) > 100 {
					t.Fatalf("refused request reached the app (%q) or body %q", saw, r.body)
				}
				return
			}
			if len(saw) != 1 || !strings.HasSuffix(saw[0], `proof=""`) {
				t.Fatalf("the app saw %q", saw)
			}
		})
	}
	t.Run("WebSocket upgrade", func(t *testing.T) {
		upgrade := "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
		before := len(l.get())
		if r := send(fenced, upgrade+"\r\n"); r.status != 403 {
			t.Fatalf("upgrade without proof: %d", r.status)
		}
		// The recording app answers the handshake with a plain 200, which
		// the proxy relays; what matters is what the app saw.
		for _, addr := range []string{fenced, open} {
			if r := send(addr, upgrade+"Spawner-Router-Proof: s3cret-proof\r\n\r\n"); r.status != 200 {
				t.Fatalf("upgrade with proof: %d %v", r.status, r.err)
			}
		}
		time.Sleep(10 * time.Millisecond)
		saw := l.get()[before:]
		if len(saw) != 2 || !strings.HasSuffix(saw[0], `proof=""`) || !strings.HasSuffix(saw[1], `proof=""`) {
			t.Fatalf("the app saw %q", saw)
		}
	})
}

// A client that stops sending its body gets 408 once the body has been idle
// for BodyIdleTimeout, and the request stops counting as in flight; a slow
// but steady one is not cut.
func TestBodyIdleTimeout(t *testing.T) {
	var l appLog
	upstream := recordingApp(t, &l)
	tracker := activity.New(0)
	addr := serve(t, proxy.New(proxy.Config{Upstream: upstream, Tracker: tracker,
		Metrics: proxy.NewMetrics(metrics.NewRegistry(), tracker), MaxIdle: 8, BodyIdleTimeout: 300 * time.Millisecond}))
	dial := func() (net.Conn, *bufio.Reader) { return dialRaw(t, addr, 10*time.Second) }
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprint("stalled, chunked=", chunked), func(t *testing.T) {
			c, br := dial()
			if chunked {
				io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
			} else {
				io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
			}
			start := time.Now()
			eventually(t, "the request in flight", func() bool { return tracker.Snapshot().InFlightRequests == 1 })
			r := readRawResponse(br, "POST")
			if r.status != 408 {
				t.Fatalf("status %d %v", r.status, r.err)
			}
			if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
				t.Errorf("stalled body ended after %s", d)
			}
			eventually(t, "no request in flight", func() bool { return tracker.Snapshot().InFlightRequests == 0 })
		})
	}
	t.Run("slow but steady", func(t *testing.T) {
		c, br := dial()
		io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
		for _, b := range "abcdef" {
			time.Sleep(100 * time.Millisecond)
			io.WriteString(c, string(b))
		}
		r := readRawResponse(br, "POST")
		if r.status != 200 || !strings.Contains(r.body, `body="abcdef"`) {
			t.Fatalf("%d %q %v", r.status, r.body, r.err)
		}
		// The deadline is gone once the body is in: the connection stays
		// usable well past the body timeout.
		time.Sleep(500 * time.Millisecond)
		io.WriteString(c, get("/after"))
		if r := readRawResponse(br, "GET"); r.status != 200 {
			t.Fatalf("next request: %d %v", r.status, r.err)
		}
	})
}
