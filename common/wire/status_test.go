package wire

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestStatusEventRoundTrip encodes events as the sidecar does and decodes
// them as the sweeper does: every field survives, with and without the
// optional last_activity.
func TestStatusEventRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 3, 4, 5, 123456789, time.FixedZone("x", 3600))
	for _, in := range []StatusEvent{
		{Ready: true, LiveConnections: 3, LastActive: at, InFlightRequests: 1, WebSockets: 2, LastActivity: ActivityWebSocketOpen},
		{Ready: false, SecondsSinceActive: 42, LastActive: at, LastActivity: ActivityWebSocketClosed},
		{Ready: true, LastActive: at, WebSockets: 1, LastActivity: ActivityWebSocketMessage},
		{Ready: true, LastActive: at}, // an older sidecar: no last_activity
	} {
		b := in.AppendSSE(nil)
		if !bytes.HasPrefix(b, []byte("data: ")) || !bytes.HasSuffix(b, []byte("\n\n")) || bytes.Count(b, []byte("\n")) != 2 {
			t.Fatalf("not one SSE event: %q", b)
		}
		out, err := ParseStatusEvent(bytes.TrimSuffix(bytes.TrimPrefix(b, []byte("data: ")), []byte("\n\n")))
		if err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		if !out.LastActive.Equal(in.LastActive) {
			t.Errorf("last_active %v, want %v", out.LastActive, in.LastActive)
		}
		out.LastActive = in.LastActive
		if out != in {
			t.Errorf("round trip of %q: got %+v, want %+v", b, out, in)
		}
		if in.LastActivity == "" && strings.Contains(string(b), "last_activity") {
			t.Errorf("empty last_activity written: %q", b)
		}
	}
}

func TestParseStatusEventRefuses(t *testing.T) {
	for _, data := range []string{
		`{"ready":true,"live_connections":0}`, // no last_active: never "idle since the epoch"
		`{"ready":true,"live_connections":-1,"last_active":"2026-12-01T00:00:00Z"}`,
		`{"ready":true,"websockets":-1,"last_active":"2026-12-01T00:00:00Z"}`,
		`{"ready":`,
		`[]`,
	} {
		if ev, err := ParseStatusEvent([]byte(data)); err == nil {
			t.Errorf("%s: accepted as %+v", data, ev)
		}
	}
}

func BenchmarkAppendSSE(b *testing.B) {
	ev := StatusEvent{Ready: true, LiveConnections: 1, LastActive: time.Now(), WebSockets: 1, LastActivity: ActivityWebSocketOpen}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = ev.AppendSSE(buf[:0])
	}
}
