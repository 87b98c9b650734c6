package apiserver

import (
	"net/http"
	"strings"
	"testing"

	"spawner.dev/apis/lifecycle"
)

// TestAccessCookieSecureWithHTTPSPublicURL: behind a TLS-terminating
// Ingress the router itself sees plain HTTP, so whether the access-token
// cookie is Secure follows --public-url, not the request, in path mode and
// in host mode alike; and the cookie is scoped to the backend (Path
// /p/<name>/, or Path / on the backend's own host, with no Domain).
func TestAccessCookieSecureWithHTTPSPublicURL(t *testing.T) {
	app := newFakeApp(t)
	for _, c := range []struct {
		publicURL, suffix string
		secure            bool
		path              string
	}{
		{"https://spawner.example.com", "", true, "/p/slab-tls/"},
		{"HTTPS://spawner.example.com:8443/", "", true, "/p/slab-tls/"},
		{"http://localhost:30081", "", false, "/p/slab-tls/"},
		{"https://backends.example.com", "backends.example.com", true, "/"},
		{"http://192.0.2.2:30081", "backends.example.com", false, "/"},
	} {
		e := newTestEnvConfig(t, app.port(), func(cfg *Config) { cfg.PublicURL, cfg.PublicHostSuffix = c.publicURL, c.suffix })
		tok := e.addBackend("slab-tls", lifecycle.Ready)
		u := e.router.URL + "/p/slab-tls/?spawner_token=" + tok
		host := ""
		if c.suffix != "" {
			u, host = e.router.URL+"/?spawner_token="+tok, "slab-tls."+c.suffix
		}
		req, _ := http.NewRequest("GET", u, nil)
		req.Host = host
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		var cookie *http.Cookie
		for _, ck := range resp.Cookies() {
			if ck.Name == tokenCookie {
				cookie = ck
			}
		}
		if resp.StatusCode != 200 || cookie == nil || cookie.Secure != c.secure || !cookie.HttpOnly ||
			cookie.SameSite != http.SameSiteLaxMode || cookie.Path != c.path || cookie.Domain != "" {
			t.Errorf("--public-url=%s --public-host-suffix=%q: %d cookie %+v, want Secure=%v Path=%s and no Domain",
				c.publicURL, c.suffix, resp.StatusCode, cookie, c.secure, c.path)
		}
		// And the URL handed out has the public URL's scheme.
		resp = e.do("GET", "/backends", "")
		if body := readBody(t, resp); !strings.Contains(body, strings.ToLower(c.publicURL[:5])) {
			t.Errorf("%s: /backends %s", c.publicURL, body)
		}
	}
}
