package v1

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// PublicRoutes is where browsers reach backends through the router: the one
// definition of a backend's public URL (the controller's status.url, the
// api-server's url and ready redirect) and of how the router finds the
// backend a request is for. docs/api.md, "Routing", describes both modes.
//
//   - Path mode (the default): <base>/p/<name>/. Every backend shares the
//     router's origin.
//   - Host mode (a host suffix is set): <scheme>://<name>.<suffix>[:<port>]/,
//     scheme and port taken from the base URL. Each backend is its own
//     browser origin; the router routes by the Host header.
//
// +k8s:deepcopy-gen=false
type PublicRoutes struct {
	base   string // the base URL without a trailing slash
	scheme string // http or https
	port   string // the base URL's explicit port, "" when none
	suffix string // host mode: lower case, no leading or trailing dot
}

// NewPublicRoutes checks a base URL (absolute http or https) and an optional
// host suffix (a DNS name such as backends.example.com; empty: path mode).
func NewPublicRoutes(baseURL, hostSuffix string) (PublicRoutes, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" {
		return PublicRoutes{}, fmt.Errorf("public URL %q must be an absolute http(s) URL without user, query or fragment", baseURL)
	}
	p := PublicRoutes{base: u.Scheme + "://" + u.Host + strings.TrimRight(u.EscapedPath(), "/"), scheme: u.Scheme, port: u.Port()}
	if hostSuffix == "" {
		return p, nil
	}
	s := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(hostSuffix, "."), "."))
	if msgs := validation.IsDNS1123Subdomain(s); len(msgs) > 0 || !strings.Contains(s, ".") {
		return PublicRoutes{}, fmt.Errorf("public host suffix %q must be a DNS name with at least two labels, such as backends.example.com (%s)",
			hostSuffix, strings.Join(msgs, "; "))
	}
	// A backend's host, <name>.<suffix>, must stay a valid DNS name.
	if len(s) > validation.DNS1123SubdomainMaxLength-validation.DNS1123LabelMaxLength-1 {
		return PublicRoutes{}, fmt.Errorf("public host suffix %q is too long: <backend name>.<suffix> must fit in %d characters",
			hostSuffix, validation.DNS1123SubdomainMaxLength)
	}
	p.suffix = s
	return p, nil
}

// HostMode reports whether each backend has its own host (and origin).
func (p PublicRoutes) HostMode() bool { return p.suffix != "" }

// HostSuffix is the host-mode suffix ("" in path mode).
func (p PublicRoutes) HostSuffix() string { return p.suffix }

// Base is the base URL, without a trailing slash.
func (p PublicRoutes) Base() string { return p.base }

// Secure reports whether browsers reach the router over https, so the
// cookies it sets must be Secure.
func (p PublicRoutes) Secure() bool { return p.scheme == "https" }

// BackendPath is the path a backend's own URL space starts at: /p/<name>/
// in path mode, / in host mode. The router scopes the access-token cookie to it.
func (p PublicRoutes) BackendPath(name string) string {
	if p.HostMode() {
		return "/"
	}
	return RoutePrefix + name + "/"
}

// BackendHost is a backend's host (without port) in host mode, "" in path mode.
func (p PublicRoutes) BackendHost(name string) string {
	if !p.HostMode() {
		return ""
	}
	return name + "." + p.suffix
}

// BackendURL is the public URL of backend name, ending in "/".
func (p PublicRoutes) BackendURL(name string) string {
	if !p.HostMode() {
		return p.base + p.BackendPath(name)
	}
	host := p.BackendHost(name)
	if p.port != "" {
		host = net.JoinHostPort(host, p.port)
	}
	return p.scheme + "://" + host + "/"
}

// Errors of BackendFromHost.
var (
	// ErrNotBackendHost: the host is not under the suffix (the router's own
	// name, an IP, the Service's name): the request is for the router itself.
	ErrNotBackendHost = errors.New("not a backend host")
	// ErrMalformedHost: the host is under the suffix but is not
	// <name>.<suffix> with one valid label as name, or has a bad port.
	ErrMalformedHost = errors.New("malformed backend host")
)

// BackendFromHost finds the backend a Host header names in host mode,
// strictly: an optional numeric port is ignored, case is folded, one
// trailing dot is allowed, and the part before the suffix must be exactly
// one DNS label (a backend name has no dot). Anything else under the suffix
// is ErrMalformedHost; a host not under it is ErrNotBackendHost. It never
// guesses: no two hosts name the same backend except by case, port and the
// trailing dot, and a malformed host names none.
func (p PublicRoutes) BackendFromHost(hostport string) (string, error) {
	if !p.HostMode() {
		return "", ErrNotBackendHost
	}
	host := hostport
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.HasSuffix(hostport, "]") {
		h, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return "", ErrNotBackendHost // an IPv6 literal or junk: not one of ours either way
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(h, ".")), "."+p.suffix) {
				return "", ErrMalformedHost
			}
			return "", ErrNotBackendHost
		}
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 {
			return "", ErrNotBackendHost // not ASCII: no backend name is
		}
	}
	host = strings.ToLower(host)
	name, ok := strings.CutSuffix(host, "."+p.suffix)
	if !ok {
		return "", ErrNotBackendHost
	}
	if len(validation.IsDNS1123Label(name)) > 0 {
		return "", ErrMalformedHost
	}
	return name, nil
}
