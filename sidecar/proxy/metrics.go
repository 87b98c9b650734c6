package proxy

import (
	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
)

// Metrics are the proxy's Prometheus series. Children of labelled families are
// resolved once here so the hot path only does atomic adds.
type Metrics struct {
	requests       *metrics.Counter
	upgrades       *metrics.Counter
	upstreamErrors *metrics.Counter
	uninterpreted  *metrics.Counter
	toApp, fromApp direction
}

// direction holds the counters for one way through the proxy.
type direction struct {
	bytes    *metrics.Counter // HTTP bodies and WebSocket streams
	frames   *metrics.Counter
	messages *metrics.Counter
}

// NewMetrics registers the proxy's series on r, including gauges read from t.
func NewMetrics(r *metrics.Registry, t *activity.Tracker) *Metrics {
	bytes := r.NewCounterVec("sidecar_bytes_total", "Body and WebSocket bytes proxied, by direction.", "direction")
	frames := r.NewCounterVec("sidecar_websocket_frames_total", "WebSocket frames proxied, by direction.", "direction")
	messages := r.NewCounterVec("sidecar_websocket_messages_total", "WebSocket data messages proxied, by direction.", "direction")
	dir := func(name string) direction {
		return direction{bytes.WithLabelValues(name), frames.WithLabelValues(name), messages.WithLabelValues(name)}
	}
	m := &Metrics{
		requests:       r.NewCounter("sidecar_http_requests_total", "HTTP requests received on the public port, upgrades included."),
		upgrades:       r.NewCounter("sidecar_websocket_upgrades_total", "WebSocket upgrades the app accepted."),
		upstreamErrors: r.NewCounter("sidecar_upstream_errors_total", "Requests answered 502 or cut short because the app failed."),
		uninterpreted:  r.NewCounter("sidecar_websocket_uninterpreted_total", "WebSocket directions whose bytes stopped parsing as frames (still forwarded)."),
		toApp:          dir("to_app"),
		fromApp:        dir("from_app"),
	}
	gauge := func(name, help string, v func(activity.Snapshot) int) {
		r.NewGaugeFunc(name, help, func() float64 { return float64(v(t.Snapshot())) })
	}
	gauge("sidecar_live_connections", "In-flight HTTP requests plus WebSockets that are not idle.",
		func(s activity.Snapshot) int { return s.LiveConnections })
	gauge("sidecar_in_flight_requests", "HTTP requests in flight.", func(s activity.Snapshot) int { return s.InFlightRequests })
	gauge("sidecar_websockets", "Open WebSockets.", func(s activity.Snapshot) int { return s.WebSockets })
	gauge("sidecar_ready", "1 when the app listens on its port.", func(s activity.Snapshot) int {
		if s.Ready {
			return 1
		}
		return 0
	})
	gauge("sidecar_seconds_since_active", "Seconds since the backend was last in use (0 while in use).",
		func(s activity.Snapshot) int { return s.SecondsSinceActive })
	return m
}
