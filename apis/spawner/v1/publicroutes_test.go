package v1

import (
	"errors"
	"testing"
)

func TestPublicRoutesPathMode(t *testing.T) {
	p, err := NewPublicRoutes("https://spawner.example.com/", "")
	if err != nil {
		t.Fatal(err)
	}
	if p.HostMode() || !p.Secure() {
		t.Fatalf("HostMode %v Secure %v", p.HostMode(), p.Secure())
	}
	if got := p.BackendURL("slab-x"); got != "https://spawner.example.com/p/slab-x/" {
		t.Errorf("BackendURL = %s", got)
	}
	if got := p.BackendPath("slab-x"); got != "/p/slab-x/" {
		t.Errorf("BackendPath = %s", got)
	}
	if _, err := p.BackendFromHost("slab-x.spawner.example.com"); !errors.Is(err, ErrNotBackendHost) {
		t.Errorf("path mode routed a host: %v", err)
	}
}

func TestPublicRoutesHostMode(t *testing.T) {
	p, err := NewPublicRoutes("http://192.0.2.2:30081", ".Backends.Example.com.")
	if err != nil {
		t.Fatal(err)
	}
	if !p.HostMode() || p.Secure() || p.HostSuffix() != "backends.example.com" {
		t.Fatalf("HostMode %v Secure %v suffix %q", p.HostMode(), p.Secure(), p.HostSuffix())
	}
	if got := p.BackendURL("slab-x"); got != "http://slab-x.backends.example.com:30081/" {
		t.Errorf("BackendURL = %s", got)
	}
	if got := p.BackendPath("slab-x"); got != "/" {
		t.Errorf("BackendPath = %s", got)
	}
	tls, _ := NewPublicRoutes("https://backends.example.com", "backends.example.com")
	if got := tls.BackendURL("k-0123-1"); got != "https://k-0123-1.backends.example.com/" || !tls.Secure() {
		t.Errorf("BackendURL = %s, Secure %v", got, tls.Secure())
	}
	for host, want := range map[string]string{
		"slab-x.backends.example.com":                "slab-x",
		"slab-x.backends.example.com:30081":          "slab-x",
		"SLAB-X.Backends.Example.COM":                "slab-x",
		"slab-x.backends.example.com.":               "slab-x",
		"slab-x.backends.example.com.:443":           "slab-x",
		"k-0123456789abcdef-12.backends.example.com": "k-0123456789abcdef-12",
	} {
		if got, err := p.BackendFromHost(host); err != nil || got != want {
			t.Errorf("BackendFromHost(%q) = %q, %v; want %q", host, got, err, want)
		}
	}
	for host, want := range map[string]error{
		"backends.example.com":                  ErrNotBackendHost, // the suffix itself: the router's own host
		"backends.example.com:80":               ErrNotBackendHost,
		"192.0.2.2:30081":                       ErrNotBackendHost,
		"[::1]:8081":                            ErrNotBackendHost,
		"[::1]":                                 ErrNotBackendHost,
		"localhost":                             ErrNotBackendHost,
		"":                                      ErrNotBackendHost,
		"slab-x.backends.example.com.evil.test": ErrNotBackendHost,
		"slab-xbackends.example.com":            ErrNotBackendHost,
		"slab-x.backénds.example.com":           ErrNotBackendHost,
		"a.b.backends.example.com":              ErrMalformedHost, // two labels: no backend name has a dot
		".backends.example.com":                 ErrMalformedHost,
		"-x.backends.example.com":               ErrMalformedHost,
		"slab_x.backends.example.com":           ErrMalformedHost,
		"slab-x.backends.example.com:":          ErrMalformedHost,
		"slab-x.backends.example.com:abc":       ErrMalformedHost,
		"slab-x.backends.example.com:0443":      ErrMalformedHost,
		"slab-x.backends.example.com:99999":     ErrMalformedHost,
		"slab-x.backends.example.com..":         ErrNotBackendHost,
		"slab%2fx.backends.example.com":         ErrMalformedHost,
	} {
		if got, err := p.BackendFromHost(host); !errors.Is(err, want) {
			t.Errorf("BackendFromHost(%q) = %q, %v; want %v", host, got, err, want)
		}
	}
}

func TestNewPublicRoutesRefusesBadInput(t *testing.T) {
	for _, c := range [][2]string{
		{"", ""}, {"ftp://x", ""}, {"/relative", ""}, {"http://u:p@x", ""}, {"http://x?q=1", ""},
		{"http://x", "localhost"}, {"http://x", "bad_suffix.example.com"}, {"http://x", "a..b"},
	} {
		if _, err := NewPublicRoutes(c[0], c[1]); err == nil {
			t.Errorf("NewPublicRoutes(%q, %q) accepted", c[0], c[1])
		}
	}
}
