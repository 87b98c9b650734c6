package apiserver

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

const (
	tokenParam  = "spawner_token"
	tokenCookie = "spawner_token"
	// annotationUpstream is set on the trimmed pods in the cache only: the
	// sidecar's host:port, computed once per pod update instead of per request.
	annotationUpstream = "api-server.spawner.dev/upstream"
)

var sidecarPort = strconv.Itoa(spawnerv1.SidecarServePort)

// trimPod keeps what the router needs of a pod: its IP (as the sidecar's
// public host:port; the status port is never used) and whether it is going away.
// port is the sidecar's public port (tests substitute their own).
func trimPod(p *corev1.Pod, port string) *corev1.Pod {
	out := &corev1.Pod{}
	out.Name, out.Namespace, out.UID, out.ResourceVersion = p.Name, p.Namespace, p.UID, p.ResourceVersion
	out.Labels, out.DeletionTimestamp = p.Labels, p.DeletionTimestamp
	out.Status.Phase, out.Status.PodIP = p.Status.Phase, p.Status.PodIP
	if p.Status.PodIP != "" {
		out.Annotations = map[string]string{annotationUpstream: net.JoinHostPort(p.Status.PodIP, port)}
	}
	return out
}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

type routerProxy struct {
	rp        *httputil.ReverseProxy
	transport *http.Transport
}

func newRouterProxy(s *Server) *routerProxy {
	idle := s.cfg.MaxIdleConnsPerHost
	if idle <= 0 {
		idle = 256
	}
	t := &http.Transport{
		Proxy:                 nil, // pod IPs are dialled directly, never through an HTTP proxy
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          0, // no global cap; per host below
		MaxIdleConnsPerHost:   idle,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass bodies through as they are
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
	}
	pool := &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
	trust := s.cfg.TrustForwarded
	rp := &httputil.ReverseProxy{
		Transport:  t,
		BufferPool: pool,
		// FlushInterval 0: responses of unknown length and text/event-stream are
		// flushed after every write (ReverseProxy's own rule), so SSE is immediate.
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The inbound URL was already pointed at the pod by route; Out is its copy.
			if trust {
				if v := pr.In.Header["X-Forwarded-For"]; len(v) > 0 {
					pr.Out.Header["X-Forwarded-For"] = v
				}
			}
			pr.SetXForwarded()
			if trust {
				if v := pr.In.Header["X-Forwarded-Proto"]; len(v) > 0 {
					pr.Out.Header["X-Forwarded-Proto"] = v
				}
				if v := pr.In.Header["X-Forwarded-Host"]; len(v) > 0 {
					pr.Out.Header["X-Forwarded-Host"] = v
				}
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			s.metrics.upstreamErrors.Inc()
			s.log.Warn("proxying to the backend failed", "backend", r.PathValue("name"), "err", err)
			writeError(w, http.StatusBadGateway, "the backend did not answer")
		},
		ErrorLog: nil,
	}
	return &routerProxy{rp: rp, transport: t}
}

// RouterHandler is the public router: /p/<name>/... to the backend's sidecar.
func (s *Server) RouterHandler() http.Handler {
	rt := newRoutes()
	s.commonRoutes(rt)
	rt.handleFunc("/p/{name}/", s.route)
	return s.instrument("router", rt.handler(func(*http.Request) string { return "not found" }))
}

// queryToken finds spawner_token in a raw query and returns the query without it.
func queryToken(raw string) (tok, rest string, found bool) {
	if !strings.Contains(raw, tokenParam) {
		return "", raw, false
	}
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		k, v, _ := strings.Cut(part, "=")
		if k == tokenParam {
			if !found {
				if u, err := url.QueryUnescape(v); err == nil {
					tok = u
				}
			}
			found = true
			continue
		}
		if part == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return tok, b.String(), found
}

// cookieTokenValid checks every spawner_token cookie against the backend and
// removes them from the request, so the application never sees the token.
func cookieTokenValid(r *http.Request, slab *spawnerv1.SessionLivedBackend) bool {
	lines := r.Header["Cookie"]
	if len(lines) == 0 {
		return false
	}
	valid, seen := false, false
	for _, line := range lines {
		if !strings.Contains(line, tokenCookie) {
			continue
		}
		for pair := range strings.SplitSeq(line, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(pair), "=")
			if k == tokenCookie {
				seen = true
				if !valid && tokenMatches(slab, strings.Trim(v, `"`)) {
					valid = true
				}
			}
		}
	}
	if seen {
		stripTokenCookie(r)
	}
	return valid
}

func stripTokenCookie(r *http.Request) {
	lines := r.Header["Cookie"]
	out := lines[:0:0]
	for _, line := range lines {
		if !strings.Contains(line, tokenCookie) {
			out = append(out, line)
			continue
		}
		var b strings.Builder
		for pair := range strings.SplitSeq(line, ";") {
			p := strings.TrimSpace(pair)
			if k, _, _ := strings.Cut(p, "="); k == tokenCookie || p == "" {
				continue
			}
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(p)
		}
		if b.Len() > 0 {
			out = append(out, b.String())
		}
	}
	if len(out) == 0 {
		delete(r.Header, "Cookie")
	} else {
		r.Header["Cookie"] = out
	}
}

func acceptsHTML(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// routable looks a backend up in the caches only — the router is open to
// anyone, so an unknown name must cost no API request — and reports its slab
// and, once it is Ready with a running pod, the sidecar's address.
func (s *Server) routable(name string) (slab *spawnerv1.SessionLivedBackend, upstream string) {
	slab, err := s.slabLister.Get(name)
	if err != nil || phaseOf(slab) != lifecycle.Ready {
		return slab, ""
	}
	if pod, ok := s.pod(name); ok && pod.DeletionTimestamp == nil && pod.Status.Phase == corev1.PodRunning {
		upstream = pod.Annotations[annotationUpstream]
	}
	return slab, upstream
}

// awaitRoutable is routable that, for a backend not yet known or not yet
// ready, waits for the informers: a browser sent here straight from
// POST /spawn meets a backend that is still starting, or one another replica
// created a moment ago. An unknown name waits briefly (cache lag); a
// starting backend up to --router-ready-wait.
func (s *Server) awaitRoutable(r *http.Request, name string) (*spawnerv1.SessionLivedBackend, string) {
	slab, upstream := s.routable(name)
	if upstream != "" || (slab != nil && !live(slab)) {
		return slab, upstream
	}
	wake, unsubscribe := s.watchers.subscribe(name)
	defer unsubscribe()
	unknownDeadline := time.Now().Add(unknownBackendWait)
	deadline := time.NewTimer(s.cfg.RouterReadyWait)
	defer deadline.Stop()
	for {
		// Re-check after subscribing: an update may have come in between.
		slab, upstream = s.routable(name)
		switch {
		case upstream != "", slab != nil && !live(slab), slab == nil && time.Now().After(unknownDeadline):
			return slab, upstream
		}
		var unknownExpired <-chan time.Time
		if slab == nil {
			unknownExpired = time.After(time.Until(unknownDeadline))
		}
		select {
		case <-wake:
		case <-unknownExpired:
		case <-deadline.C:
			return slab, upstream
		case <-r.Context().Done():
			return slab, upstream
		}
	}
}

// unknownBackendWait is how long the router waits for a name its cache has
// not seen: long enough for another replica's create to arrive by watch.
const unknownBackendWait = 2 * time.Second

// backendUnavailable answers for a backend that does not exist or has ended:
// a page for a browser (typically a tab left open, reloaded), JSON otherwise.
func (s *Server) backendUnavailable(w http.ResponseWriter, r *http.Request) {
	s.metrics.routeNotFound.Inc()
	if acceptsHTML(r) {
		writePage(w, http.StatusNotFound, unavailableRouterPage, r.PathValue("name"), StatusResponse{})
		return
	}
	writeError(w, http.StatusNotFound, "no such backend")
}

// route authorizes and proxies one request to /p/{name}/...
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	slab, upstream := s.routable(name)
	if slab == nil {
		// Not in the cache (yet): another replica may have just created it.
		slab, upstream = s.awaitRoutable(r, name)
	}
	if slab == nil || !live(slab) {
		s.backendUnavailable(w, r)
		return
	}
	tok, rest, fromQuery := queryToken(r.URL.RawQuery)
	authorized := false
	if fromQuery {
		authorized = tokenMatches(slab, tok)
		if r.Header["Cookie"] != nil {
			stripTokenCookie(r)
		}
	} else {
		authorized = cookieTokenValid(r, slab)
	}
	if !authorized {
		s.metrics.routeDenied.Inc()
		writeError(w, http.StatusForbidden, "missing or invalid access token")
		return
	}
	// Prefix of the original path, "/p/<name>" (a substring: no allocation).
	prefix := r.URL.Path[:len("/p/")+len(name)]
	if fromQuery {
		http.SetCookie(w, &http.Cookie{
			Name: tokenCookie, Value: tok, Path: prefix + "/",
			HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: s.secureCookie,
		})
		r.URL.RawQuery = rest
		r.URL.ForceQuery = false
	}
	if upstream == "" {
		// Authorized but still starting: hold the request a while (only now,
		// so a request without the token is refused at once).
		if slab, upstream = s.awaitRoutable(r, name); slab == nil || !live(slab) {
			s.backendUnavailable(w, r)
			return
		}
	}
	if upstream == "" {
		s.metrics.routeNotReady.Inc()
		w.Header().Set("Retry-After", "1")
		if acceptsHTML(r) {
			writePage(w, http.StatusServiceUnavailable, awaitingRouterPage, name, currentStatus(slab))
			return
		}
		writeError(w, http.StatusServiceUnavailable, "backend is not ready yet")
		return
	}
	r.URL.Scheme = "http"
	r.URL.Host = upstream
	r.URL.Path = r.URL.Path[len(prefix):]
	if r.URL.RawPath != "" {
		// The escaped path has the same three segments before the rest.
		if i := strings.IndexByte(r.URL.RawPath[len("/p/"):], '/'); i >= 0 {
			r.URL.RawPath = r.URL.RawPath[len("/p/")+i:]
		} else {
			r.URL.RawPath = ""
		}
	}
	r.Header["X-Forwarded-Prefix"] = []string{prefix}
	if r.Header.Get("Upgrade") != "" {
		s.metrics.routeUpgrades.Inc()
	}
	s.proxy.rp.ServeHTTP(w, r)
}
