package apiserver

import (
	"bufio"
	"log/slog"
	"net"
	"net/http"
	"time"

	"spawner.dev/common/metrics"
)

type serverMetrics struct {
	reg *metrics.Registry

	control, router listenerMetrics

	authFailures   *metrics.Counter
	spawnCreated   *metrics.Counter
	spawnExisting  *metrics.Counter
	spawnInvalid   *metrics.Counter
	spawnErrors    *metrics.Counter
	routeDenied    *metrics.Counter
	routeNotFound  *metrics.Counter
	routeNotReady  *metrics.Counter
	routeUpgrades  *metrics.Counter
	upstreamErrors *metrics.Counter

	// Pool claims (control_claim.go).
	claimWarm, claimCold *metrics.Counter
	claimConflicts       *metrics.Counter
	claimFromList        *metrics.Counter
	claimLists           *metrics.Counter
	claimHookFailures    *metrics.Counter
	claimDuration        *metrics.Histogram
}

// listenerMetrics are resolved once, so a request touches only atomics.
type listenerMetrics struct {
	byClass  [6]*metrics.Counter // 1xx..5xx by index, 0 = other
	duration *metrics.Histogram
	inFlight *metrics.Gauge
}

func newServerMetrics(s *Server) *serverMetrics {
	r := metrics.NewRegistry()
	m := &serverMetrics{reg: r}
	reqs := r.NewCounterVec("spawner_api_http_requests_total", "HTTP requests answered, by listener and status class.", "listener", "code")
	dur := map[string]*metrics.Histogram{
		"control": r.NewHistogram("spawner_api_control_request_duration_seconds", "Time to answer a control API request (streams: until they end).", nil),
		"router":  r.NewHistogram("spawner_api_router_request_duration_seconds", "Time to proxy a request through the router (until the body ended).", nil),
	}
	inflight := r.NewGaugeVec("spawner_api_http_in_flight_requests", "Requests being served, by listener (WebSockets and streams included).", "listener")
	for _, l := range []struct {
		name string
		lm   *listenerMetrics
	}{{"control", &m.control}, {"router", &m.router}} {
		for i, c := range []string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"} {
			l.lm.byClass[i] = reqs.WithLabelValues(l.name, c)
		}
		l.lm.duration = dur[l.name]
		l.lm.inFlight = inflight.WithLabelValues(l.name)
	}
	m.authFailures = r.NewCounter("spawner_api_auth_failures_total", "Control API requests refused for a missing or wrong bearer token.")
	spawns := r.NewCounterVec("spawner_api_spawns_total", "POST /spawn outcomes.", "result")
	m.spawnCreated = spawns.WithLabelValues("created")
	m.spawnExisting = spawns.WithLabelValues("existing")
	m.spawnInvalid = spawns.WithLabelValues("invalid")
	m.spawnErrors = spawns.WithLabelValues("error")
	claims := r.NewCounterVec("spawner_api_pool_claims_total", "Spawns naming a pool, by outcome: warm (a warm pod claimed) or cold (the pool had none to give).", "result")
	m.claimWarm = claims.WithLabelValues("warm")
	m.claimCold = claims.WithLabelValues("cold")
	m.claimConflicts = r.NewCounter("spawner_api_pool_claim_conflicts_total", "Warm pods a claim lost to another spawn (or that changed under it) before it took one.")
	m.claimLists = r.NewCounter("spawner_api_pool_claim_lists_total", "Lists of a pool's free pods from the API, sent for claims the cache had no free pod for (claims waiting at once share one).")
	m.claimFromList = r.NewCounter("spawner_api_pool_claims_from_list_total", "Warm claims of a pod the api-server's cache did not offer (not Ready there yet, or a version that changed since): found by listing the pool's pods from the API.")
	m.claimHookFailures = r.NewCounter("spawner_api_pool_claim_hook_failures_total", "Claim hook calls that failed (non-2xx, no connection, timeout); each one's warm pod was deleted, never handed out.")
	m.claimDuration = r.NewHistogram("spawner_api_pool_claim_duration_seconds", "Time from a pool spawn's create request to its claim complete (warm or cold).", nil)
	routes := r.NewCounterVec("spawner_api_router_refused_total", "Router requests not proxied, by reason.", "reason")
	m.routeDenied = routes.WithLabelValues("forbidden")
	m.routeNotFound = routes.WithLabelValues("not_found")
	m.routeNotReady = routes.WithLabelValues("not_ready")
	m.routeUpgrades = r.NewCounter("spawner_api_router_upgrades_total", "Upgrade (WebSocket) requests proxied.")
	m.upstreamErrors = r.NewCounter("spawner_api_router_upstream_errors_total", "Proxied requests whose backend could not be reached.")
	r.NewGaugeFunc("spawner_api_caches_synced", "1 when the backend and pod caches have synced.", func() float64 {
		if s.synced() {
			return 1
		}
		return 0
	})
	r.NewGaugeFunc("spawner_api_backends_cached", "Backends in the cache.", func() float64 { return float64(len(s.slabInf.GetStore().ListKeys())) })
	r.NewGaugeFunc("spawner_api_peer_replicas", "Replicas this one splits the warm pods with, itself included (the ready endpoints of --peer-service); 0: no split (no --peer-service, not synced, or this replica is not a ready endpoint).", func() float64 { return float64(len(s.peers.replicas())) })
	return m
}

// statusRecorder remembers the status; it keeps Flush and Hijack reachable
// (directly and through Unwrap) so streaming and WebSockets work through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	http.NewResponseController(s.ResponseWriter).Flush()
}

func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err == nil && s.status == 0 {
		s.status = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// instrument counts, times and logs requests. Query strings are never logged:
// they may carry access tokens.
func (s *Server) instrument(listener string, h http.Handler) http.Handler {
	lm := &s.metrics.control
	if listener == "router" {
		lm = &s.metrics.router
	}
	logReqs := s.cfg.LogRequests
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		path, method := r.URL.Path, r.Method
		rec := &statusRecorder{ResponseWriter: w}
		lm.inFlight.Inc()
		defer func() {
			lm.inFlight.Dec()
			d := time.Since(start)
			code := rec.status
			if code == 0 {
				code = http.StatusOK
			}
			class := code / 100
			if class < 1 || class > 5 {
				class = 0
			}
			lm.byClass[class].Inc()
			lm.duration.Observe(d.Seconds())
			if logReqs && path != "/healthz" && path != "/readyz" && path != "/metrics" {
				s.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
					slog.String("listener", listener), slog.String("method", method), slog.String("path", path),
					slog.Int("status", code), slog.Duration("duration", d), slog.String("remote", r.RemoteAddr))
			}
		}()
		h.ServeHTTP(rec, r)
	})
}
