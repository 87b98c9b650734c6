package wire

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// What a backend last did, as the sidecar reports it in StatusEvent.LastActivity.
// They are written for people: the sweeper quotes them in the slab's status
// and in the Event it records when it sweeps ("last activity: WebSocket
// closed at …").
const (
	// ActivityStarted: nothing happened since the sidecar started.
	ActivityStarted = "backend started"
	// ActivityRequestEnded: an HTTP request (SSE and long-poll included) ended.
	ActivityRequestEnded = "request ended"
	// ActivityWebSocketClosed: a WebSocket closed.
	ActivityWebSocketClosed = "WebSocket closed"
	// ActivityWebSocketMessage: the last data frame on a WebSocket that is
	// still open but idle (the backend's wsIdleSeconds rule).
	ActivityWebSocketMessage = "WebSocket went silent"
	// ActivityWebSocketOpen: a WebSocket is open and counts (busy).
	ActivityWebSocketOpen = "WebSocket open"
	// ActivityRequestInFlight: an HTTP request is in flight and counts (busy).
	ActivityRequestInFlight = "request in flight"
	// ActivityKeepalive: the web app called POST /backend/{name}/keepalive
	// (recorded by the api-server, never by the sidecar).
	ActivityKeepalive = "keepalive"
)

// StatusEvent is one state report on the sidecar's status stream
// (GET /_events on the status port, one SSE "data:" line of JSON per event).
// The sidecar encodes it with AppendSSE and the sweeper decodes it with
// ParseStatusEvent; docs/architecture.md ("Sidecar interface") documents the
// JSON.
type StatusEvent struct {
	// Ready: the app was last seen listening on its port.
	Ready bool `json:"ready"`
	// LiveConnections is what keeps the backend alive: in-flight requests
	// (unless the backend's policy leaves them out) plus open WebSockets
	// (minus those idle under the wsIdleSeconds rule). 0 means idle.
	LiveConnections int `json:"live_connections"`
	// SecondsSinceActive is whole seconds since LastActive (0 while live).
	SecondsSinceActive int `json:"seconds_since_active"`
	// LastActive is when the backend was last in use (now while live).
	LastActive time.Time `json:"last_active"`
	// InFlightRequests counts open HTTP requests, SSE and long-poll included,
	// whether or not the policy counts them.
	InFlightRequests int `json:"in_flight_requests"`
	// WebSockets counts open upgraded connections, idle or not.
	WebSockets int `json:"websockets"`
	// LastActivity says what LastActive was (one of the Activity* constants);
	// empty from a sidecar older than this field.
	LastActivity string `json:"last_activity,omitempty"`
}

// AppendSSE appends e as one SSE event ("data: {...}\n\n"). It allocates
// nothing: the sidecar sends one per state change.
func (e *StatusEvent) AppendSSE(b []byte) []byte {
	b = append(b, `data: {"ready":`...)
	b = strconv.AppendBool(b, e.Ready)
	b = append(b, `,"live_connections":`...)
	b = strconv.AppendInt(b, int64(e.LiveConnections), 10)
	b = append(b, `,"seconds_since_active":`...)
	b = strconv.AppendInt(b, int64(e.SecondsSinceActive), 10)
	b = append(b, `,"last_active":"`...)
	b = e.LastActive.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","in_flight_requests":`...)
	b = strconv.AppendInt(b, int64(e.InFlightRequests), 10)
	b = append(b, `,"websockets":`...)
	b = strconv.AppendInt(b, int64(e.WebSockets), 10)
	if e.LastActivity != "" {
		b = append(b, `,"last_activity":`...)
		b = strconv.AppendQuote(b, e.LastActivity) // the constants above: ASCII, so Go quoting is JSON
	}
	return append(b, "}\n\n"...)
}

// ParseStatusEvent decodes the data of one status event and checks what an
// idle decision relies on.
func ParseStatusEvent(data []byte) (StatusEvent, error) {
	var ev StatusEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return StatusEvent{}, fmt.Errorf("sse: bad event %q: %w", truncate(data, 120), err)
	}
	if ev.LastActive.IsZero() {
		// Without the sidecar's clock no idle decision is possible; an event
		// like this must never be read as "idle since the epoch".
		return StatusEvent{}, fmt.Errorf("sse: event without last_active: %q", truncate(data, 120))
	}
	if ev.LiveConnections < 0 || ev.InFlightRequests < 0 || ev.WebSockets < 0 {
		return StatusEvent{}, fmt.Errorf("sse: negative count in %q", truncate(data, 120))
	}
	return ev, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
