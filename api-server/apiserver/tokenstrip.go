package apiserver

import (
	"net/http"
	"net/url"
	"strings"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// The access token never reaches an app. The router authorizes a request by
// the canonical spellings it hands out itself — the query parameter
// spawner_token=… and the cookie spawner_token=… — and, before proxying,
// removes every parameter and cookie whose name some browser or server
// framework would read as spawner_token, and the token from the Referer.
//
// Other spellings are stripped, not refused: a page of another backend (same
// origin, so it can link here and set cookies for /p/<name>/) could otherwise
// break a user's session with a crafted link or cookie. They never authorize.

// isTokenName reports whether a query parameter or cookie name, as sent,
// reads as spawner_token to some server framework:
//   - percent-escapes and '+' decoded (every framework for query names, PHP
//     for cookie names too); decoded repeatedly, for apps that decode twice;
//   - surrounding whitespace ignored (RFC 6265 cookie parsing; PHP drops
//     leading spaces of names);
//   - an array suffix, spawner_token[] or spawner_token[x] (PHP, Rails, qs);
//   - ' ', '.' and '[' read as '_' (PHP's renaming of request variables);
//   - case and Unicode simple folding ignored: ASP.NET Core compares query
//     and cookie names with OrdinalIgnoreCase, under which "ſpawner_token"
//     (U+017F) equals "spawner_token" too.
func isTokenName(raw string) bool {
	// Decoding and folding never make a name shorter than the ASCII target
	// is long: a cheap filter for the common case.
	if len(raw) < len(tokenParam) {
		return false
	}
	n := raw
	for range 3 {
		if !strings.ContainsAny(n, "%+") {
			break
		}
		n = lenientUnescape(n)
	}
	n = strings.TrimSpace(n)
	if i := strings.IndexByte(n, '['); i >= 0 && strings.IndexByte(n[i:], ']') > 0 {
		n = n[:i]
	}
	if len(n) < len(tokenParam) {
		return false
	}
	if strings.ContainsAny(n, " .[") {
		n = strings.Map(func(r rune) rune {
			if r == ' ' || r == '.' || r == '[' {
				return '_'
			}
			return r
		}, n)
	}
	return strings.EqualFold(n, tokenParam)
}

// lenientUnescape decodes '+' to a space and each valid %XX, keeping an
// invalid escape as it is, as PHP and most frameworks do (url.QueryUnescape
// would fail the whole name instead).
func lenientUnescape(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// queryToken reads a raw query: tok is the value of the first canonical
// spawner_token parameter (found says there was one), rest is the query
// without any parameter isTokenName accepts. Pairs are split on '&' and on
// ';' (which Python before 3.9.2, Rails and others also take as a separator),
// so "a=1;spawner_token=x" loses its second half. A query without such a
// parameter is returned as it is, without allocating.
func queryToken(raw string) (tok, rest string, found bool) {
	if raw == "" {
		return "", raw, false
	}
	// First pass: is there anything to strip?
	strip := false
	for part := range strings.SplitSeq(raw, "&") {
		for sub := range strings.SplitSeq(part, ";") {
			if k, _, _ := strings.Cut(sub, "="); isTokenName(k) {
				strip = true
			}
		}
	}
	if !strip {
		return "", raw, false
	}
	var b strings.Builder
	for part := range strings.SplitSeq(raw, "&") {
		kept := 0
		start := b.Len()
		for sub := range strings.SplitSeq(part, ";") {
			k, v, _ := strings.Cut(sub, "=")
			if isTokenName(k) {
				// Only a whole '&'-separated pair is the canonical one.
				if k == tokenParam && sub == part && !found {
					if u, err := url.QueryUnescape(v); err == nil {
						tok = u
					}
					found = true
				}
				continue
			}
			if sub == "" {
				continue
			}
			if kept == 0 && start > 0 {
				b.WriteByte('&')
			}
			if kept > 0 {
				b.WriteByte(';')
			}
			b.WriteString(sub)
			kept++
		}
	}
	return tok, b.String(), found
}

// cookieTokenValid checks every spawner_token cookie against the backend and
// removes all token cookies (any spelling, see isTokenName) from the
// request, so the application never sees the token.
func cookieTokenValid(r *http.Request, slab *spawnerv1.SessionLivedBackend) bool {
	valid := false
	for _, line := range r.Header["Cookie"] {
		for pair := range strings.SplitSeq(line, ";") {
			k, v, _ := strings.Cut(pair, "=")
			if strings.TrimSpace(k) == tokenCookie && !valid && tokenMatches(slab, strings.Trim(strings.TrimSpace(v), `"`)) {
				valid = true
			}
		}
	}
	stripTokenCookie(r)
	return valid
}

// stripTokenCookie removes every cookie isTokenName accepts; the Cookie
// header is left as it was when there is none.
func stripTokenCookie(r *http.Request) {
	lines := r.Header["Cookie"]
	has := false
	for _, line := range lines {
		for pair := range strings.SplitSeq(line, ";") {
			if k, _, _ := strings.Cut(pair, "="); isTokenName(k) {
				has = true
			}
		}
	}
	if !has {
		return
	}
	out := lines[:0:0]
	for _, line := range lines {
		var b strings.Builder
		for pair := range strings.SplitSeq(line, ";") {
			p := strings.TrimSpace(pair)
			if k, _, _ := strings.Cut(p, "="); p == "" || isTokenName(k) {
				continue
			}
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(p)
		}
		if b.Len() > 0 {
			out = append(out, b.String())
		}
	}
	if len(out) == 0 {
		delete(r.Header, "Cookie")
	} else {
		r.Header["Cookie"] = out
	}
}

// stripRefererToken removes the token from the Referer: a backend's pages are
// opened from their token URL, so the browser would otherwise send it to the
// backend's own subresources, and to another backend's app on a link between
// the two (same origin). The rest of the Referer is kept; one that does not
// parse as a URL, or that comes more than once, is dropped.
func stripRefererToken(h http.Header) {
	vs, ok := h["Referer"]
	if !ok {
		return
	}
	if len(vs) != 1 {
		delete(h, "Referer")
		return
	}
	u, err := url.Parse(vs[0])
	if err != nil {
		delete(h, "Referer")
		return
	}
	_, rest, _ := queryToken(u.RawQuery)
	if rest == u.RawQuery && u.Fragment == "" && u.User == nil {
		return
	}
	// Browsers send neither a fragment nor credentials in a Referer.
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment, u.User = rest, false, "", "", nil
	h["Referer"] = []string{u.String()}
}
