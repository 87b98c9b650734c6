package apiserver

import (
	"net/http"
	"testing"

	"spawner.dev/apis/lifecycle"
)

// TestAccessCookieSecureWithHTTPSPublicURL: behind a TLS-terminating
// Ingress the router itself sees plain HTTP, so whether the access-token
// cookie is Secure follows --public-url, not the request.
func TestAccessCookieSecureWithHTTPSPublicURL(t *testing.T) {
	for _, c := range []struct {
		publicURL string
		secure    bool
	}{
		{"https://spawner.example.com", true},
		{"HTTPS://spawner.example.com:8443/", true},
		{"http://localhost:30081", false},
	} {
		s, err := New(Config{PublicURL: c.publicURL, Logger: discardLogger()}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if s.secureCookie != c.secure {
			t.Errorf("--public-url=%s: secure cookie %v, want %v", c.publicURL, s.secureCookie, c.secure)
		}
	}

	app := newFakeApp(t)
	for _, secure := range []bool{true, false} {
		e := newTestEnv(t, app.port())
		e.s.secureCookie = secure
		tok := e.addBackend("slab-tls", lifecycle.Ready)
		resp := get(t, e.router.URL+"/p/slab-tls/?spawner_token="+tok, nil)
		readBody(t, resp)
		var cookie *http.Cookie
		for _, ck := range resp.Cookies() {
			if ck.Name == tokenParam {
				cookie = ck
			}
		}
		if resp.StatusCode != 200 || cookie == nil || cookie.Secure != secure || !cookie.HttpOnly {
			t.Errorf("secure=%v: %d cookie %+v", secure, resp.StatusCode, cookie)
		}
	}
}
