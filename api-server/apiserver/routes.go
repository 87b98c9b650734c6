package apiserver

import (
	"net/http"
	"strings"
)

// routes is a ServeMux that also answers what none of its routes take, in
// JSON like every other error: 405 with an Allow header when the path is
// known under other methods (curl -X GET /spawn), 404 otherwise.
type routes struct {
	mux     *http.ServeMux
	methods map[string][]string // path pattern → methods registered for it
}

func newRoutes() *routes {
	return &routes{mux: http.NewServeMux(), methods: map[string][]string{}}
}

// handle registers h for "METHOD /path" (a method is required: the others
// are answered with 405) or for "/prefix/" patterns serving every method.
func (rt *routes) handle(pattern string, h http.Handler) {
	rt.mux.Handle(pattern, h)
	if method, path, ok := strings.Cut(pattern, " "); ok {
		rt.methods[path] = append(rt.methods[path], method)
		if method == http.MethodGet {
			rt.methods[path] = append(rt.methods[path], http.MethodHead) // ServeMux serves HEAD with GET
		}
	}
}

func (rt *routes) handleFunc(pattern string, h http.HandlerFunc) { rt.handle(pattern, h) }

// handler returns the finished mux, with notFound as the message of a 404.
func (rt *routes) handler(notFound func(*http.Request) string) http.Handler {
	known := http.NewServeMux()
	for path, methods := range rt.methods {
		allow := strings.Join(methods, ", ")
		known.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+allow)
		})
	}
	rt.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := known.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusNotFound, notFound(r))
	})
	return rt.mux
}
