package apiserver

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"spawner.dev/apis/lifecycle"
)

// BenchmarkRouterServeHTTP measures the router's own work per proxied request
// (lookup, token check, rewrite, proxy) against a local upstream.
func BenchmarkRouterServeHTTP(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer upstream.Close()
	_, port, _ := splitHostPort(upstream.Listener.Addr().String())
	e := newTestEnv(b, port)
	tok := e.addBackend("slab-b", lifecycle.Ready)
	h := e.s.RouterHandler()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest("GET", "/p/slab-b/x?a=1", nil)
		req.Header.Set("Cookie", "spawner_token="+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// BenchmarkBaselineReverseProxy is the same round trip through a bare
// httputil.ReverseProxy, to tell the router's own cost from the proxying's.
func BenchmarkBaselineReverseProxy(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest("GET", "/x?a=1", nil)
		req.Header.Set("Cookie", "spawner_token=abc")
		rec := httptest.NewRecorder()
		rp.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
