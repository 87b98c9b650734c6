package apiserver

import (
	"encoding/json"
	"net/http"
	"strings"
)

// writeJSON answers with a JSON body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError answers {"error": msg}.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// bearer extracts the token of an Authorization: Bearer header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return "", false
	}
	return strings.TrimSpace(h[7:]), true
}

// authed requires a bearer token; with backendToken, the backend's own access
// token (query spawner_token) is accepted too, for read-only per-backend
// endpoints a browser may open (ready, status, status/stream).
func (s *Server) authed(h http.HandlerFunc, backendToken bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := bearer(r); ok && s.creds.tokens.valid(tok) {
			h(w, r)
			return
		}
		if backendToken {
			if t := r.URL.Query().Get(tokenParam); t != "" {
				if slab, ok := s.slab(r.PathValue("name")); ok && tokenMatches(slab, t) {
					h(w, r)
					return
				}
			}
		}
		s.metrics.authFailures.Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="spawner"`)
		writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
	})
}

// controlBase is the base URL of the control API for links in answers.
func (s *Server) controlBase(r *http.Request) string {
	if s.cfg.ControlURL != "" {
		return strings.TrimRight(s.cfg.ControlURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
