// Package probe is the demo binary's second mode, `spawner-demo probe URL...`:
// it sends one GET to each URL and prints what came back, one JSON line per
// URL, then exits. Cluster tests run it in a pod to try a backend's pod IP
// from another pod (the fence: docs/architecture.md), since the images carry
// no shell or curl.
//
// A URL may be prefixed with modifiers:
//
//	upgrade:  a WebSocket handshake (Connection: Upgrade, Upgrade: websocket)
//	forged:   a Spawner-Router-Proof header with a made-up value
package probe

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"spawner.dev/common/wire"
)

// Result is one printed line.
type Result struct {
	URL     string `json:"url"`
	Upgrade bool   `json:"upgrade,omitempty"`
	Forged  bool   `json:"forged,omitempty"`
	Status  int    `json:"status"`          // 0 when no response came
	Error   string `json:"error,omitempty"` // why no response came
}

// Timeout bounds each request; a port a NetworkPolicy drops times out.
const Timeout = 3 * time.Second

// Run probes every URL in args and writes one Result per line to w.
func Run(w io.Writer, args []string) error {
	client := &http.Client{
		Timeout:       Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	enc := json.NewEncoder(w)
	for _, a := range args {
		r := Result{}
		for {
			if rest, ok := strings.CutPrefix(a, "upgrade:"); ok {
				r.Upgrade, a = true, rest
			} else if rest, ok := strings.CutPrefix(a, "forged:"); ok {
				r.Forged, a = true, rest
			} else {
				break
			}
		}
		r.URL = a
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a, nil)
		if err != nil {
			cancel()
			return err
		}
		if r.Upgrade {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		}
		if r.Forged {
			req.Header.Set(wire.HeaderRouterProof, "forged-proof-forged-proof-forged-proof-forg")
		}
		resp, err := client.Do(req)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Status = resp.StatusCode
			resp.Body.Close() // a stream (/_events) is not read
		}
		cancel()
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}
