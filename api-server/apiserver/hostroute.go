package apiserver

import (
	"errors"
	"net/http"
	"strings"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// Host mode (--public-host-suffix): every backend is its own browser origin,
// <scheme>://<name>.<suffix>/, so a page served by one backend cannot read
// another's responses, cookies or storage (the browser's same-origin
// policy), which path mode cannot give: there all backends share the
// router's origin (docs/production.md, "Origins").
//
// The router finds the backend from the Host header alone
// (spawnerv1.PublicRoutes.BackendFromHost, strict: one label before the
// suffix, case folded, port and one trailing dot ignored). A request for a
// backend host is the app's whatever its path — /healthz on a backend host is
// the app's /healthz — and is proxied unchanged (no prefix to strip). A
// malformed host under the suffix is a 400; any other host (the router's
// Service name, a pod IP, the bare suffix) reaches only the router's own
// routes, and /p/ is not routed at all, so that no backend is ever served on
// a shared origin in host mode.

// hostRouter sends requests for <name>.<suffix> to route and every other
// request to own (the router's own routes).
func (s *Server) hostRouter(own http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, err := s.routes.BackendFromHost(r.Host)
		switch {
		case err == nil:
			r.SetPathValue("name", name) // for the logs and pages, as in path mode
			s.route(w, r, name, "")
		case errors.Is(err, spawnerv1.ErrMalformedHost):
			s.metrics.routeNotFound.Inc()
			writeError(w, http.StatusBadRequest, "host "+quoteHost(r.Host)+" does not name a backend: backend hosts are <name>."+
				s.routes.HostSuffix()+" with a backend name of one DNS label")
		default:
			own.ServeHTTP(w, r)
		}
	})
}

// routerNotFound is the message of the router's 404 for a path none of its
// routes take.
func (s *Server) routerNotFound(r *http.Request) string {
	if s.routes.HostMode() && strings.HasPrefix(r.URL.Path, spawnerv1.RoutePrefix) {
		return "this router routes backends by host name, not by path: use the backend's URL, " +
			s.routes.BackendURL("<name>")
	}
	return "not found"
}

// quoteHost quotes a Host header for an error message, shortened: it is the
// client's text.
func quoteHost(h string) string {
	if len(h) > 100 {
		h = h[:100] + "…"
	}
	return `"` + strings.ToValidUTF8(h, "?") + `"`
}
