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
	"spawner.dev/common/routerproof"
	"spawner.dev/common/wire"
)

const (
	tokenParam  = spawnerv1.AccessTokenParam
	tokenCookie = spawnerv1.AccessTokenCookie
	// annotationUpstream is set on the trimmed pods in the cache only: the
	// sidecar's host:port, computed once per pod update instead of per request.
	annotationUpstream = "api-server.spawner.dev/upstream"
	// annotationRouterProof is also cache-only: the pod's router proof (the
	// sidecar's env wire.SidecarRouterProofEnv), sent to the sidecar as
	// wire.HeaderRouterProof on every proxied request.
	annotationRouterProof = "api-server.spawner.dev/router-proof"

	// referrerPolicy is sent with every router response whose app did not
	// choose its own. same-origin: a page keeps its full URL (which holds
	// the token while the address bar shows the token URL) for requests to
	// the router's own origin — all of which pass the router, which strips
	// the token from the Referer — and sends no Referer at all to any other
	// origin, so neither the token nor the backend's name reaches a third
	// party. strict-origin would also keep the token out, but would take the
	// path from the app's own same-origin requests for nothing in return.
	referrerPolicy = "same-origin"
)

var sidecarPort = strconv.Itoa(spawnerv1.SidecarServePort)

// trimPod keeps what the router needs of a pod: its IP (as the sidecar's
// public host:port; the status port is never used), its router proof and
// whether it is going away. port is the sidecar's public port (tests
// substitute their own).
//
// It is idempotent, as client-go asks of a transform: the informer may pass
// it a pod it already trimmed. client-go v0.37's watch-list start does (the
// reflector's temporary store transforms, then the FIFO's Replace again), so
// a replica that started after a pod was created held it with no router
// proof, and its sidecar refused every request that replica routed there
// with 403: half of a backend's requests after a replica was replaced.
func trimPod(p *corev1.Pod, port string) *corev1.Pod {
	out := &corev1.Pod{}
	out.Name, out.Namespace, out.UID, out.ResourceVersion = p.Name, p.Namespace, p.UID, p.ResourceVersion
	out.Labels, out.DeletionTimestamp = p.Labels, p.DeletionTimestamp
	out.Status.Phase, out.Status.PodIP = p.Status.Phase, p.Status.PodIP
	if p.Labels[spawnerv1.LabelPool] != "" {
		// A claim picks warm pods from this cache (control_claim.go): it
		// needs the owner (unclaimed: the pool), the Ready condition and
		// the node (the bind labels the backend with it).
		out.OwnerReferences = p.OwnerReferences
		out.Spec.NodeName = p.Spec.NodeName
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				out.Status.Conditions = []corev1.PodCondition{c}
			}
		}
	}
	out.Annotations = map[string]string{}
	if p.Status.PodIP != "" {
		out.Annotations[annotationUpstream] = net.JoinHostPort(p.Status.PodIP, port)
	}
	proof := routerproof.FromPod(p, spawnerv1.SidecarContainerName)
	if proof == "" && len(p.Spec.Containers) == 0 {
		// Trimmed before (a pod from the API has at least one container).
		proof = p.Annotations[annotationRouterProof]
	}
	if proof != "" {
		out.Annotations[annotationRouterProof] = proof
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
			// Set here, on the outbound request, so that no hop-by-hop
			// handling of the inbound one (Connection: Spawner-Router-Proof)
			// can remove it; route put the pod's value on the inbound request
			// after deleting whatever the client sent.
			for _, h := range []string{wire.HeaderRouterProof, wire.HeaderBackend, wire.HeaderKey} {
				if v := pr.In.Header[h]; len(v) > 0 {
					pr.Out.Header[h] = v
				} else {
					delete(pr.Out.Header, h)
				}
			}
			if trust {
				if v := pr.In.Header["X-Forwarded-Proto"]; len(v) > 0 {
					pr.Out.Header["X-Forwarded-Proto"] = v
				}
				if v := pr.In.Header["X-Forwarded-Host"]; len(v) > 0 {
					pr.Out.Header["X-Forwarded-Host"] = v
				}
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if _, ok := resp.Header["Referrer-Policy"]; !ok {
				resp.Header["Referrer-Policy"] = []string{referrerPolicy}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			w.Header()["Referrer-Policy"] = []string{referrerPolicy}
			s.metrics.upstreamErrors.Inc()
			s.log.Warn("proxying to the backend failed", "backend", r.PathValue("name"), "err", err)
			writeError(w, http.StatusBadGateway, "the backend did not answer")
		},
		ErrorLog: nil,
	}
	return &routerProxy{rp: rp, transport: t}
}

// RouterHandler is the public router: in path mode /p/<name>/... to the
// backend's sidecar, in host mode every request whose Host is
// <name>.<suffix> (hostroute.go). The router's own routes (/healthz,
// /readyz, /metrics) answer on any other host.
func (s *Server) RouterHandler() http.Handler {
	rt := newRoutes()
	s.commonRoutes(rt)
	if !s.routes.HostMode() {
		rt.handleFunc(spawnerv1.RoutePrefix+"{name}/", s.routePath)
	}
	h := rt.handler(s.routerNotFound)
	if s.routes.HostMode() {
		h = s.hostRouter(h)
	}
	// The router's own answers (refusals, pages, the redirect to /p/<name>/
	// that carries the token) get the Referrer-Policy too; route removes it
	// before proxying, so that the app's own choice, if any, is the only one.
	return s.instrument("router", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Referrer-Policy"] = []string{referrerPolicy}
		h.ServeHTTP(w, r)
	}))
}

func acceptsHTML(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// upstream is where the router sends a backend's requests: the sidecar's
// public host:port and the pod's router proof ("" for a pod without one).
type upstream struct{ addr, proof string }

// routable looks a backend up in the caches only — the router is open to
// anyone, so an unknown name must cost no API request — and reports its slab
// and, once it is Ready with a running pod, the sidecar's address. A live
// backend that holds the warm pod it claimed is Ready whatever its status
// says yet (claimDone, as for its ready URL): the claim's status write
// comes after its answer, and under a burst of 100 claims on the local
// cluster such a write took 0.9 s on average, which a browser sent to the
// backend by its ready URL waited for.
func (s *Server) routable(name string) (slab *spawnerv1.SessionLivedBackend, up upstream) {
	slab, ok := s.cachedSlab(name)
	if !ok || (lifecycle.Phase(slab) != lifecycle.Ready && !(live(slab) && s.claimDone(slab))) {
		return slab, up
	}
	podName, bound := spawnerv1.PodNameOf(slab)
	if pod, ok := s.pod(podName); bound && ok && pod.DeletionTimestamp == nil && pod.Status.Phase == corev1.PodRunning {
		up = upstream{addr: pod.Annotations[annotationUpstream], proof: pod.Annotations[annotationRouterProof]}
	}
	return slab, up
}

// awaitRoutable is routable that, for a backend not yet known or not yet
// ready, waits for the informers: a browser sent here straight from
// POST /spawn meets a backend that is still starting, or one another replica
// created a moment ago. An unknown name waits briefly (cache lag); a
// starting backend up to --router-ready-wait.
func (s *Server) awaitRoutable(r *http.Request, name string) (*spawnerv1.SessionLivedBackend, upstream) {
	slab, up := s.routable(name)
	if up.addr != "" || (slab != nil && !live(slab)) {
		return slab, up
	}
	wake, unsubscribe := s.watchers.subscribe(name)
	defer unsubscribe()
	unknownDeadline := time.Now().Add(unknownBackendWait)
	deadline := time.NewTimer(s.cfg.RouterReadyWait)
	defer deadline.Stop()
	for {
		// Re-check after subscribing: an update may have come in between.
		slab, up = s.routable(name)
		switch {
		case up.addr != "", slab != nil && !live(slab), slab == nil && time.Now().After(unknownDeadline):
			return slab, up
		}
		var unknownExpired <-chan time.Time
		if slab == nil {
			unknownExpired = time.After(time.Until(unknownDeadline))
		}
		select {
		case <-wake:
		case <-unknownExpired:
		case <-deadline.C:
			return slab, up
		case <-r.Context().Done():
			return slab, up
		}
	}
}

// unknownBackendWait is how long the router waits for a name its cache has
// not seen: long enough for another replica's create to arrive by watch.
const unknownBackendWait = 2 * time.Second

// backendUnavailable answers for a backend that does not exist or has ended:
// a page for a browser (typically a tab left open, reloaded), JSON otherwise.
func (s *Server) backendUnavailable(w http.ResponseWriter, r *http.Request) {
	// r.PathValue("name") is the backend in both modes (hostRouter sets it).
	s.metrics.routeNotFound.Inc()
	if acceptsHTML(r) {
		writePage(w, http.StatusNotFound, unavailableRouterPage, r.PathValue("name"), StatusResponse{})
		return
	}
	writeError(w, http.StatusNotFound, "no such backend")
}

// routePath serves /p/{name}/... (path mode).
func (s *Server) routePath(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	// Prefix of the original path, "/p/<name>" (a substring: no allocation).
	s.route(w, r, name, r.URL.Path[:len(spawnerv1.RoutePrefix)+len(name)])
}

// route authorizes and proxies one request for backend name. prefix is the
// path prefix the backend is served under ("/p/<name>" in path mode, which
// is removed before proxying; "" in host mode, where the path is the app's).
func (s *Server) route(w http.ResponseWriter, r *http.Request, name, prefix string) {
	slab, up := s.routable(name)
	if slab == nil {
		// Not in the cache (yet): another replica may have just created it.
		slab, up = s.awaitRoutable(r, name)
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
	if fromQuery {
		// Scoped to the backend: Path /p/<name>/ in path mode; in host mode
		// Path / and no Domain, so the browser sends it to <name>.<suffix>
		// only (a host-only cookie), never to another backend's host.
		http.SetCookie(w, &http.Cookie{
			Name: tokenCookie, Value: tok, Path: s.routes.BackendPath(name),
			HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: s.routes.Secure(),
		})
	}
	if rest != r.URL.RawQuery {
		r.URL.RawQuery = rest
		r.URL.ForceQuery = false
	}
	stripRefererToken(r.Header)
	if hook := slab.Annotations[spawnerv1.AnnotationClaimHookPath]; hook != "" && isClaimHookPath(r.URL.Path[len(prefix):], hook) {
		// Only a claim may reach the hook (control_claimhook.go), so that
		// the app can trust the session it receives there.
		s.metrics.routeDenied.Inc()
		writeError(w, http.StatusForbidden, "this path is the backend's claim hook: only spawner calls it")
		return
	}
	if up.addr == "" {
		// Authorized but still starting: hold the request a while (only now,
		// so a request without the token is refused at once).
		if slab, up = s.awaitRoutable(r, name); slab == nil || !live(slab) {
			s.backendUnavailable(w, r)
			return
		}
	}
	if up.addr == "" {
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
	r.URL.Host = up.addr
	// Only the router's own value goes out (Rewrite copies it to the
	// outbound request); the sidecar of a pod without one does not check.
	delete(r.Header, wire.HeaderRouterProof)
	if up.proof != "" {
		r.Header[wire.HeaderRouterProof] = []string{up.proof}
	}
	// Session identity: which backend and key this request is for (set
	// on the outbound request by Rewrite, like the proof).
	r.Header[wire.HeaderBackend] = []string{slab.Name}
	delete(r.Header, wire.HeaderKey)
	if slab.Spec.Key != "" {
		r.Header[wire.HeaderKey] = []string{url.PathEscape(slab.Spec.Key)}
	}
	if prefix != "" {
		r.URL.Path = r.URL.Path[len(prefix):]
		if r.URL.RawPath != "" {
			// The escaped path has the same three segments before the rest.
			if i := strings.IndexByte(r.URL.RawPath[len(spawnerv1.RoutePrefix):], '/'); i >= 0 {
				r.URL.RawPath = r.URL.RawPath[len(spawnerv1.RoutePrefix)+i:]
			} else {
				r.URL.RawPath = ""
			}
		}
		r.Header["X-Forwarded-Prefix"] = []string{prefix}
	} else {
		delete(r.Header, "X-Forwarded-Prefix") // the app is served at /: no client's value goes through
	}
	if r.Header.Get("Upgrade") != "" {
		s.metrics.routeUpgrades.Inc()
	}
	delete(w.Header(), "Referrer-Policy") // ModifyResponse sets it unless the app does
	s.proxy.rp.ServeHTTP(w, r)
}
