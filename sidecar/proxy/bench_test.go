package proxy_test

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkProxyGET measures one small GET through the proxy, client and app
// in the same process; see sidecar/bench for the ratio-to-direct figures.
func BenchmarkProxyGET(b *testing.B) {
	hello := []byte("hello, world\n")
	s := newStack(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(hello) }))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(s.publicURL + "/")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
