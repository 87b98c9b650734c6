package proxy

import (
	"bytes"
	"strconv"
	"strings"

	"spawner.dev/common/wire"
)

// Message heads are parsed in place: field names and values are slices of the
// connection's read buffer, so a request costs no header map and no strings.

const (
	// maxRequestHead bounds a request line plus its fields; a larger head is
	// answered 431. It is far above what browsers send and four times Node's
	// own 16 KiB limit, so the sidecar is never the tighter bound.
	maxRequestHead = 64 << 10
	// maxResponseHead bounds an app's response head (large CSP and cookie
	// headers exist); a larger one is a 502.
	maxResponseHead = 1 << 20
	// maxChunkLine bounds a chunk-size line including extensions.
	maxChunkLine = 4 << 10
)

// fieldKind says what the proxy does with a header field.
type fieldKind uint8

const (
	fieldOther fieldKind = iota
	fieldHopByHop
	fieldHost
	fieldContentLength
	fieldTransferEncoding
	fieldConnection
	fieldUpgrade
	fieldExpect
	fieldForwardedFor
	fieldForwardedProto
	fieldDate
	// fieldRouterProof is the router's proof (wire.HeaderRouterProof): checked
	// when the fence is on, never forwarded to the app.
	fieldRouterProof
)

// routerProofName is wire.HeaderRouterProof in lower case, for classify.
var routerProofName = strings.ToLower(wire.HeaderRouterProof)

type headerField struct {
	name, value []byte
	kind        fieldKind
}

// classify maps a field name to its kind. Hop-by-hop fields describe one
// connection and are never forwarded (RFC 9110 §7.6.1, plus the proxy
// authentication fields this proxy does not consume).
func classify(name []byte) fieldKind {
	is := func(s string) bool { return asciiEqualFold(name, s) }
	if len(name) == len(routerProofName) && is(routerProofName) {
		return fieldRouterProof
	}
	switch len(name) {
	case 2:
		if is("te") {
			return fieldHopByHop
		}
	case 4:
		switch {
		case is("host"):
			return fieldHost
		case is("date"):
			return fieldDate
		}
	case 6:
		if is("expect") {
			return fieldExpect
		}
	case 7:
		if is("upgrade") {
			return fieldUpgrade
		}
	case 10:
		switch {
		case is("connection"):
			return fieldConnection
		case is("keep-alive"):
			return fieldHopByHop
		}
	case 14:
		if is("content-length") {
			return fieldContentLength
		}
	case 15:
		if is("x-forwarded-for") {
			return fieldForwardedFor
		}
	case 16:
		if is("proxy-connection") {
			return fieldHopByHop
		}
	case 17:
		switch {
		case is("transfer-encoding"):
			return fieldTransferEncoding
		case is("x-forwarded-proto"):
			return fieldForwardedProto
		}
	case 18:
		if is("proxy-authenticate") {
			return fieldHopByHop
		}
	case 19:
		if is("proxy-authorization") {
			return fieldHopByHop
		}
	}
	return fieldOther
}

// asciiEqualFold compares b with the lower-case ASCII string s, ignoring case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// tokenChars are the bytes allowed in methods and field names (RFC 9110 §5.6.2).
var tokenChars = alnumAnd("!#$%&'*+-.^_`|~")

// alnumAnd is a byte table of the ASCII letters and digits and the bytes of
// more.
func alnumAnd(more string) (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range more {
		t[c] = true
	}
	return t
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}

// validFieldValue rejects control characters other than HTAB; a CR or LF in a
// value is how requests get smuggled.
func validFieldValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated list contains token, compared
// case-insensitively (RFC 9110 §5.6.1); token is lower case.
func hasToken(list []byte, token string) bool {
	for len(list) > 0 {
		var item []byte
		if i := bytes.IndexByte(list, ','); i >= 0 {
			item, list = list[:i], list[i+1:]
		} else {
			item, list = list, nil
		}
		if asciiEqualFold(trimSpace(item), token) {
			return true
		}
	}
	return false
}

// lastToken returns the last item of a comma-separated list.
func lastToken(list []byte) []byte {
	if i := bytes.LastIndexByte(list, ','); i >= 0 {
		list = list[i+1:]
	}
	return trimSpace(list)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// headLength returns the length of the message head at the start of b,
// through the empty line that ends it, or -1 if b does not hold all of it.
// Scanning resumes at from (a previous call's len(b)) so a head arriving in
// many small pieces is not rescanned from the start each time.
func headLength(b []byte, from int) int {
	i := max(from-3, 0)
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

// nextLine splits off the first line of b, without its CRLF (or bare LF,
// which RFC 9112 §2.2 lets a recipient accept in a head).
func nextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// parseFields parses the field lines of a head (after its start line) into
// fields, which is reused to avoid allocating per message.
func parseFields(b []byte, fields []headerField) ([]headerField, bool) {
	fields = fields[:0]
	for {
		var line []byte
		line, b = nextLine(b)
		if len(line) == 0 {
			return fields, true
		}
		colon := bytes.IndexByte(line, ':')
		// No space is allowed before the colon, and obsolete line folding
		// (a line starting with whitespace) is refused (RFC 9112 §5).
		if colon <= 0 || !isToken(line[:colon]) {
			return fields, false
		}
		value := trimSpace(line[colon+1:])
		if !validFieldValue(value) {
			return fields, false
		}
		fields = append(fields, headerField{name: line[:colon], value: value, kind: classify(line[:colon])})
	}
}

// parseContentLength accepts only digits, with no sign and no list.
func parseContentLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// statusError is a request the proxy answers itself, with status and a
// one-line reason.
type statusError struct {
	status int
	reason string
}

func (e *statusError) Error() string { return strconv.Itoa(e.status) + " " + e.reason }

var (
	errMalformedRequestLine = &statusError{400, "malformed request line"}
	errMalformedField       = &statusError{400, "malformed header field"}
	errMissingHost          = &statusError{400, "missing or repeated Host"}
	errBadContentLength     = &statusError{400, "invalid Content-Length"}
	errLengthAndChunked     = &statusError{400, "both Content-Length and Transfer-Encoding"}
	errHeadTooLarge         = &statusError{431, "request header fields too large"}
	errUnsupportedCoding    = &statusError{501, "unsupported Transfer-Encoding"}
	errUnsupportedVersion   = &statusError{505, "HTTP version not supported"}
	errUnknownExpectation   = &statusError{417, "unsupported Expect"}
	errMalformedChunk       = &statusError{400, "malformed chunked body"}
	errNoRouterProof        = &statusError{403, "this port only takes requests from the router"}
	errBodyTimeout          = &statusError{408, "request body stalled"}
)

// requestHead is a parsed request head. Its slices point into the read
// buffer and are valid until the buffer is compacted to read more.
type requestHead struct {
	method, target []byte
	http10         bool
	fields         []headerField
	host           []byte
	contentLength  int64 // -1 when absent
	chunked        bool
	// wantsClose: the client asked for the connection to end after this
	// exchange (Connection: close, or HTTP/1.0 without keep-alive).
	wantsClose     bool
	expectContinue bool
	websocket      bool
	forwardedProto bool
	// listsFields: Connection names fields other than close, keep-alive and
	// upgrade, which are then hop-by-hop too.
	listsFields bool
	// authority is the host of an absolute-form target, which replaces the
	// Host field (RFC 9112 §3.2.2); target then holds the path and query
	// only. nil for an origin-form target.
	authority []byte
	// proof is the last router-proof field's value; proofs counts them.
	proof  []byte
	proofs int
}

// hasBody reports whether a request body follows the head.
func (h *requestHead) hasBody() bool { return h.chunked || h.contentLength > 0 }

// parseRequestHead parses head (request line through the empty line).
func parseRequestHead(head []byte, h *requestHead) error {
	line, rest := nextLine(head)
	sp1 := bytes.IndexByte(line, ' ')
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp1 <= 0 || sp2 <= sp1+1 {
		return errMalformedRequestLine
	}
	h.method, h.target = line[:sp1], line[sp1+1:sp2]
	version := line[sp2+1:]
	if !isToken(h.method) {
		return errMalformedRequestLine
	}
	for _, c := range h.target {
		if c <= ' ' || c == 0x7f {
			return errMalformedRequestLine
		}
	}
	h.authority = nil
	if h.target[0] != '/' && string(h.target) != "*" {
		// Absolute-form, which the app gets in origin-form as net/http's
		// server and Transport make it. Authority-form (CONNECT) and other
		// schemes are refused: the sidecar is not a forward proxy.
		var ok bool
		if h.authority, h.target, ok = splitAbsoluteTarget(h.target); !ok {
			return errMalformedRequestLine
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		h.http10 = false
	case "HTTP/1.0":
		h.http10 = true
	default:
		if len(version) == 8 && string(version[:5]) == "HTTP/" && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]) {
			return errUnsupportedVersion
		}
		return errMalformedRequestLine
	}
	var ok bool
	if h.fields, ok = parseFields(rest, h.fields); !ok {
		return errMalformedField
	}
	h.host, h.contentLength, h.chunked = nil, -1, false
	h.expectContinue, h.websocket, h.forwardedProto, h.listsFields = false, false, false, false
	h.proof, h.proofs = nil, 0
	hosts := 0
	var connection, upgrade bool
	keepAlive, closeRequested := false, false
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case fieldHost:
			hosts++
			h.host = f.value
		case fieldContentLength:
			n, ok := parseContentLength(f.value)
			if !ok || h.contentLength >= 0 && n != h.contentLength {
				return errBadContentLength
			}
			if h.contentLength >= 0 {
				f.kind = fieldHopByHop // an identical repeat is dropped
			}
			h.contentLength = n
		case fieldTransferEncoding:
			if h.http10 || h.chunked {
				return errUnsupportedCoding
			}
			if !asciiEqualFold(f.value, "chunked") {
				return errUnsupportedCoding
			}
			h.chunked = true
		case fieldConnection:
			connection = true
			c := parseConnection(f.value)
			closeRequested = closeRequested || c.close
			keepAlive = keepAlive || c.keepAlive
			upgrade = upgrade || c.upgrade
			h.listsFields = h.listsFields || c.others
		case fieldUpgrade:
			if hasToken(f.value, "websocket") {
				h.websocket = true
			}
		case fieldExpect:
			if !asciiEqualFold(f.value, "100-continue") {
				return errUnknownExpectation
			}
			h.expectContinue = true
		case fieldForwardedProto:
			h.forwardedProto = true
		case fieldRouterProof:
			h.proof = f.value
			h.proofs++
		}
	}
	h.websocket = h.websocket && connection && upgrade
	if !h.http10 && hosts != 1 || hosts > 1 {
		return errMissingHost
	}
	if h.chunked && h.contentLength >= 0 {
		return errLengthAndChunked
	}
	if h.http10 {
		h.wantsClose = closeRequested || !keepAlive
		h.expectContinue = false // a 1.0 client cannot read 100 Continue
	} else {
		h.wantsClose = closeRequested
	}
	return nil
}

// splitAbsoluteTarget splits an absolute-form target (RFC 9112 §3.2.2) with
// an http or https scheme into its authority and the rest (path and query,
// possibly empty). A target with userinfo is refused (RFC 9110 §4.2.4 says
// to treat it as an error), as is an empty or malformed authority.
func splitAbsoluteTarget(target []byte) (authority, rest []byte, ok bool) {
	i := bytes.Index(target, []byte("://"))
	if i < 0 || !asciiEqualFold(target[:i], "http") && !asciiEqualFold(target[:i], "https") {
		return nil, nil, false
	}
	authority = target[i+3:]
	end := bytes.IndexAny(authority, "/?#")
	if end < 0 {
		end = len(authority)
	}
	authority, rest = authority[:end], authority[end:]
	if len(authority) == 0 || len(rest) > 0 && rest[0] == '#' {
		return nil, nil, false
	}
	for _, c := range authority {
		if !authorityChars[c] {
			return nil, nil, false
		}
	}
	return authority, rest, true
}

// authorityChars are the bytes of a host and port: unreserved, sub-delims,
// percent-encoding, ':' and the brackets of an IP literal (RFC 3986 §3.2.2);
// '@' (userinfo) is not among them.
var authorityChars = alnumAnd("-._~!$&'()*+,;=%:[]")

// connectionOptions are the tokens of one Connection field.
type connectionOptions struct {
	close, keepAlive, upgrade bool
	// others: it names fields, which are then hop-by-hop for this message.
	others bool
}

func parseConnection(list []byte) (c connectionOptions) {
	for len(list) > 0 {
		var item []byte
		if i := bytes.IndexByte(list, ','); i >= 0 {
			item, list = trimSpace(list[:i]), list[i+1:]
		} else {
			item, list = trimSpace(list), nil
		}
		switch {
		case asciiEqualFold(item, "close"):
			c.close = true
		case asciiEqualFold(item, "keep-alive"):
			c.keepAlive = true
		case asciiEqualFold(item, "upgrade"):
			c.upgrade = true
		case len(item) > 0:
			c.others = true
		}
	}
	return c
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// listedInConnection reports whether Connection names the field, which makes
// it hop-by-hop for this message.
func listedInConnection(fields []headerField, name []byte) bool {
	for i := range fields {
		if fields[i].kind != fieldConnection {
			continue
		}
		for list := fields[i].value; len(list) > 0; {
			var item []byte
			if j := bytes.IndexByte(list, ','); j >= 0 {
				item, list = list[:j], list[j+1:]
			} else {
				item, list = list, nil
			}
			if bytes.EqualFold(trimSpace(item), name) {
				return true
			}
		}
	}
	return false
}

// responseHead is a parsed response head; slices point into the upstream
// connection's read buffer.
type responseHead struct {
	status int
	// statusRest is the status line after the version: "200 OK".
	statusRest    []byte
	fields        []headerField
	contentLength int64 // -1 when absent or overridden by Transfer-Encoding
	chunked       bool
	// codings: a Transfer-Encoding is present. Its Content-Length, if any,
	// is then dropped (RFC 9112 §6.3: Transfer-Encoding wins, and a sender
	// must not send both).
	codings bool
	// otherCodings: a transfer coding other than one final chunked is
	// applied; without a final chunked the body runs until the app closes.
	otherCodings bool
	// closes: the app will close the connection after this response.
	closes      bool
	hasDate     bool
	listsFields bool
}

var errMalformedResponse = &statusError{502, "malformed response from the app"}

// parseResponseHead parses the app's response head. It is as strict as the
// request side: the status line must be HTTP/1.x SP 3-digit code (100-999,
// as net/http accepts) with an optional SP reason that holds no control byte
// but tab, fields as for requests. Transfer-Encoding follows RFC 9112 §6.3:
// a final chunked frames the body; other codings alone mean it ends when the
// app closes; chunked twice, an empty coding, or Transfer-Encoding on an
// HTTP/1.0 response (§6.1: faulty framing) are refused.
func parseResponseHead(head []byte, h *responseHead) error {
	line, rest := nextLine(head)
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || !isDigit(line[7]) || line[8] != ' ' {
		return errMalformedResponse
	}
	http10 := line[7] == '0'
	h.statusRest = line[9:]
	code := h.statusRest[:3]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || code[0] == '0' ||
		len(h.statusRest) > 3 && (h.statusRest[3] != ' ' || !validFieldValue(h.statusRest[4:])) {
		return errMalformedResponse
	}
	h.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	var ok bool
	if h.fields, ok = parseFields(rest, h.fields); !ok {
		return errMalformedResponse
	}
	h.contentLength, h.chunked, h.codings, h.otherCodings, h.hasDate, h.listsFields = -1, false, false, false, false, false
	keepAlive, closeRequested := false, false
	chunkedCount := 0
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case fieldContentLength:
			n, ok := parseContentLength(f.value)
			if !ok || h.contentLength >= 0 && n != h.contentLength {
				return errMalformedResponse
			}
			if h.contentLength >= 0 {
				f.kind = fieldHopByHop
			}
			h.contentLength = n
		case fieldTransferEncoding:
			if http10 {
				return errMalformedResponse
			}
			h.codings = true
			for list := f.value; ; {
				var item []byte
				if j := bytes.IndexByte(list, ','); j >= 0 {
					item, list = trimSpace(list[:j]), list[j+1:]
				} else {
					item, list = trimSpace(list), nil
				}
				switch {
				case len(item) == 0:
					return errMalformedResponse
				case asciiEqualFold(item, "chunked"):
					chunkedCount++
					h.chunked = true
				default:
					h.otherCodings = true
					h.chunked = false // chunked only counts as the final coding
				}
				if list == nil {
					break
				}
			}
		case fieldConnection:
			c := parseConnection(f.value)
			closeRequested = closeRequested || c.close
			keepAlive = keepAlive || c.keepAlive
			h.listsFields = h.listsFields || c.others
		case fieldDate:
			h.hasDate = true
		}
	}
	if chunkedCount > 1 {
		return errMalformedResponse // chunked applied twice (RFC 9112 §6.1)
	}
	if h.codings {
		h.contentLength = -1
		if !h.chunked {
			closeRequested = true // delimited by the app's close
		}
	}
	h.closes = closeRequested || http10 && !keepAlive
	return nil
}

// forbiddenTrailer reports a trailer field that must not be passed on: the
// fields RFC 9110 §6.5.1 says a trailer must not hold (framing, routing,
// request modifiers, authentication, response control, content processing),
// net/http's list of disallowed trailers, the hop-by-hop fields, and the
// router's proof, which never reaches the app.
func forbiddenTrailer(name []byte) bool {
	if classify(name) != fieldOther {
		return true // Host, Content-Length, Transfer-Encoding, Connection, TE, Expect, proof, ...
	}
	for _, s := range forbiddenTrailers {
		if asciiEqualFold(name, s) {
			return true
		}
	}
	return len(name) > 3 && asciiEqualFold(name[:3], "if-") // conditionals
}

var forbiddenTrailers = []string{
	"authorization", "cache-control", "content-encoding", "content-range", "content-type",
	"cookie", "set-cookie", "max-forwards", "pragma", "range", "realm", "trailer",
	"www-authenticate", "age", "expires", "location", "retry-after", "vary", "warning",
	"content-location", "authentication-info", "proxy-authentication-info",
}

// noBody reports whether a response to method carries no body whatever its
// fields say (RFC 9112 §6.3).
func (h *responseHead) noBody(head bool) bool {
	return head || h.status < 200 || h.status == 204 || h.status == 304
}
