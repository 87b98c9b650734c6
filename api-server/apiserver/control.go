package apiserver

import (
	"io"
	"net/http"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// ControlHandler is the control API: spawn, status, ready, terminate, list.
func (s *Server) ControlHandler() http.Handler {
	rt := newRoutes()
	s.commonRoutes(rt)
	rt.handle("POST /spawn", s.authed(s.handleSpawn, false))
	rt.handle("GET /backends", s.authed(s.handleList, false))
	rt.handle("GET /backend/{name}/status", s.authed(s.handleStatus, true))
	rt.handle("GET /backend/{name}/status/stream", s.authed(s.handleStream, true))
	rt.handle("GET /backend/{name}/ready", s.authed(s.handleReady, true))
	rt.handle("POST /backend/{name}/terminate", s.authed(s.handleTerminate, false))
	rt.handle("POST /backend/{name}/keepalive", s.authed(s.handleKeepalive, false))
	return s.instrument("control", rt.handler(func(r *http.Request) string {
		return "no such endpoint: " + r.Method + " " + r.URL.Path
	}))
}

// backendOr404 is the backend a /backend/{name}/... request names, or false
// once it has answered 404 for it.
func (s *Server) backendOr404(w http.ResponseWriter, r *http.Request) (*spawnerv1.SessionLivedBackend, bool) {
	name := r.PathValue("name")
	slab, ok := s.slab(name)
	if !ok {
		writeError(w, http.StatusNotFound, "no backend named "+name)
	}
	return slab, ok
}

// writeBackendWriteError answers a failed write to the backend name: 404 when
// it is gone, else 502 "<what>: <err>". It reports whether err was an error.
func writeBackendWriteError(w http.ResponseWriter, name, what string, err error) bool {
	switch {
	case err == nil:
		return false
	case apierrors.IsNotFound(err):
		writeError(w, http.StatusNotFound, "no backend named "+name)
	default:
		writeError(w, http.StatusBadGateway, what+": "+err.Error())
	}
	return true
}

func (s *Server) commonRoutes(rt *routes) {
	rt.handleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	rt.handleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		select {
		case <-s.shuttingDown:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		default:
		}
		if !s.synced() || !s.creds.tokens.loaded.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "caches not synced\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	rt.handle("GET /metrics", s.metrics.reg)
}

// BackendInfo is one entry of GET /backends.
type BackendInfo struct {
	Name    string         `json:"name"`
	Key     string         `json:"key,omitempty"`
	Created string         `json:"created"`
	Status  StatusResponse `json:"status"`
	URL     string         `json:"url,omitempty"`
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	var slabs []*spawnerv1.SessionLivedBackend
	if key, ok := r.URL.Query()["key"]; ok {
		slabs = s.slabsForKey(key[0])
	} else {
		slabs, _ = s.slabLister.List(labels.Everything())
	}
	sort.Slice(slabs, func(i, j int) bool {
		if !slabs[i].CreationTimestamp.Equal(&slabs[j].CreationTimestamp) {
			return slabs[i].CreationTimestamp.Before(&slabs[j].CreationTimestamp)
		}
		return slabs[i].Name < slabs[j].Name
	})
	out := make([]BackendInfo, 0, len(slabs))
	for _, sl := range slabs {
		bi := BackendInfo{Name: sl.Name, Key: sl.Spec.Key, Created: formatTime(sl.CreationTimestamp), Status: currentStatus(sl)}
		if tok, ok := s.creds.access.tokenFor(sl); ok {
			bi.URL = s.backendURL(sl.Name, tok)
		}
		out = append(out, bi)
	}
	writeJSON(w, http.StatusOK, map[string]any{"backends": out})
}
