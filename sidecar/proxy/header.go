package proxy

import (
	"net/http"
	"strings"
)

// hasToken reports whether any of the comma-separated header values contains
// token, compared case-insensitively (RFC 9110 §5.6.1 lists).
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// isWebSocketUpgrade recognises the upgrade whichever way the client spells
// it, e.g. Firefox's "Connection: keep-alive, Upgrade".
func isWebSocketUpgrade(h http.Header) bool {
	return hasToken(h["Connection"], "upgrade") && hasToken(h["Upgrade"], "websocket")
}

// isHopByHop reports headers that describe one connection and must not be
// forwarded (RFC 9110 §7.6.1). Keys are canonical, as net/http stores them.
func isHopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// isRewrittenRequestHeader reports request headers the proxy writes itself.
func isRewrittenRequestHeader(k string) bool {
	switch k {
	case "Content-Length", // from the parsed length, since the body may be re-framed
		"Expect",          // 100-continue is answered by the public server
		"X-Forwarded-For": // extended with the client address
		return true
	}
	return false
}

// listedInConnection reports whether header k is named in the message's own
// Connection header, which makes it hop-by-hop too.
func listedInConnection(k string, connection []string) bool {
	return len(connection) > 0 && hasToken(connection, k)
}
