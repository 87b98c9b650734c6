package proxy

import (
	"bufio"
	"crypto/subtle"
	"errors"
	"io"
	"os"
	"strconv"
	"time"
)

// writeError marks an error from the destination of a copy, as opposed to
// its source.
type writeError struct{ error }

// isWriteError reports a writeError. A type assertion rather than errors.As,
// whose pointer argument would allocate on every request; the copy functions
// return writeError unwrapped.
func isWriteError(err error) bool {
	_, ok := err.(writeError)
	return ok
}

// serveRequest forwards the request whose head is the first headLen buffered
// bytes and relays the response. It reports whether the connection can carry
// another request.
func (cc *clientConn) serveRequest(headLen int) bool {
	h := &cc.req
	if err := parseRequestHead(cc.in.buffered()[:headLen], h); err != nil {
		cc.refuse(err.(*statusError))
		return false
	}
	cc.in.discard(headLen)
	p := cc.p
	if p.routerProof != nil && (h.proofs != 1 || subtle.ConstantTimeCompare(h.proof, p.routerProof) != 1) {
		cc.refuse(errNoRouterProof) // the app is never contacted
		return false
	}
	p.tracker.RequestStarted()
	defer p.tracker.RequestFinished()
	p.m.requests.Inc()

	// The head's slices stay valid until the body is read, which is all a
	// replay needs: only a request without a body is sent again, and only an
	// idempotent one, since the app may have acted on it before dropping the
	// connection.
	headRequest := string(h.method) == "HEAD"
	replayable := !h.hasBody() && isIdempotent(h.method)
	var uc *upstreamConn
	bodyRead := !h.hasBody()
	for {
		var reused bool
		var err error
		if h.websocket {
			uc, err = p.pool.fresh()
		} else {
			uc, reused, err = p.pool.get()
		}
		if err != nil {
			return cc.badGateway(bodyRead, headRequest)
		}
		uc.in.received = 0
		err = cc.sendRequest(uc, &bodyRead)
		if err == nil {
			cc.watch(uc)
			err = uc.readResponseHead(&cc.resp)
			if err != nil && cc.unwatch() {
				uc.close()
				return false
			}
		}
		if err == nil {
			break
		}
		uc.close()
		var se *statusError
		switch {
		case errors.As(err, &se) && se.status < 500:
			cc.refuse(se) // a malformed chunked body from the client
			return false
		case !bodyRead && errors.Is(err, os.ErrDeadlineExceeded):
			cc.refuse(errBodyTimeout) // the client stopped sending its body
			return false
		case !bodyRead && !isWriteError(err):
			return false // the client broke off its body
		case reused && replayable && uc.in.received == 0:
			continue // the app had closed this pooled connection
		}
		return cc.badGateway(bodyRead, headRequest)
	}
	// The watch stays armed while the response is relayed: a stream (SSE,
	// long poll) ends when its client leaves.
	resp := &cc.resp
	if resp.status == 101 {
		clientGone := cc.unwatch()
		switch {
		case !h.websocket: // switching to a protocol nobody asked for
			uc.close()
			return cc.badGateway(true, headRequest)
		case clientGone:
			uc.close()
		default:
			cc.startTunnel(uc)
		}
		return false
	}
	noBody := resp.noBody(headRequest)
	if resp.otherCodings && h.http10 && !noBody {
		// An HTTP/1.0 client knows no transfer codings (RFC 9112 §6.1), and
		// they cannot be undone here.
		uc.close()
		return cc.badGateway(true, headRequest)
	}
	decodeChunks := resp.chunked && h.http10 && !noBody
	closeDelimited := !noBody && !resp.chunked && resp.contentLength < 0
	closeClient := h.wantsClose || closeDelimited || decodeChunks || p.draining.Load()
	w := getWriter(&cc.out)
	defer putWriter(w)
	writeResponseHead(w, resp, h.http10, closeClient, decodeChunks)
	var n int64
	var err error
	switch {
	case noBody:
	case resp.chunked:
		n, err = copyChunked(w, &uc.in, !decodeChunks)
	default:
		n, err = copyBody(w, &uc.in, resp.contentLength)
	}
	p.m.fromApp.bytes.Add(uint64(n))
	clientGone := cc.unwatch()
	switch {
	case isWriteError(err) || clientGone:
		uc.close()
		return false
	case err != nil:
		// The app broke off mid-body. Closing the client connection makes
		// the truncation visible instead of a clean end of response.
		p.m.upstreamErrors.Inc()
		uc.close()
		return false
	}
	// Bytes already buffered after a complete response were not asked for
	// (a second response, a body on a HEAD, 204 or 304): reusing the
	// connection would hand them to the next request, so it is closed, as
	// net/http closes a connection that sends while idle. Bytes that arrive
	// later are caught when the pool hands the connection out (see get).
	if resp.closes || closeDelimited || h.websocket || len(uc.in.buffered()) > 0 {
		uc.close()
	} else {
		p.pool.put(uc)
	}
	return cc.finish(w, closeClient)
}

// sendRequest writes the request head and body to uc. bodyRead is set once
// the body has been read from the client in full.
func (cc *clientConn) sendRequest(uc *upstreamConn, bodyRead *bool) error {
	h := &cc.req
	w := uc.writer()
	writeRequestHead(w, h, cc.remoteHost)
	if !*bodyRead {
		if h.expectContinue && len(cc.in.buffered()) == 0 {
			// The client waits for this before sending the body; it is sent
			// only once the app is known to be reachable.
			if _, err := cc.out.Write(continueResponse); err != nil {
				return err
			}
		}
		var n int64
		var err error
		cc.in.idleTimeout = cc.p.bodyIdleTimeout
		if h.chunked {
			n, err = copyChunked(w, &cc.in, true)
		} else {
			n, err = copyBody(w, &cc.in, h.contentLength)
		}
		cc.in.endIdleTimeout()
		cc.p.m.toApp.bytes.Add(uint64(n))
		if err != nil {
			return err
		}
		*bodyRead = true
	}
	if err := w.Flush(); err != nil {
		return writeError{err}
	}
	return nil
}

var continueResponse = []byte("HTTP/1.1 100 Continue\r\n\r\n")

// writeRequestHead writes the request line and fields as received, minus
// hop-by-hop fields, plus the proxy's own.
func writeRequestHead(w *bufio.Writer, h *requestHead, remoteHost []byte) {
	w.Write(h.method)
	w.WriteByte(' ')
	if h.authority != nil && (len(h.target) == 0 || h.target[0] == '?') {
		w.WriteByte('/') // http://host?q in origin-form is /?q
	}
	w.Write(h.target)
	w.WriteString(" HTTP/1.1\r\n")
	if h.host == nil {
		// An HTTP/1.0 client may omit it; HTTP/1.1 needs one.
		w.WriteString("Host: ")
		w.Write(h.authority)
		w.WriteString("\r\n")
	}
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case fieldHopByHop, fieldConnection, fieldUpgrade, fieldTransferEncoding, fieldExpect, fieldForwardedFor, fieldRouterProof:
			continue
		case fieldHost:
			if h.authority != nil {
				// An absolute-form target's authority replaces Host
				// (RFC 9112 §3.2.2), as net/http's server makes it.
				writeField(w, f.name, h.authority)
				continue
			}
		case fieldOther, fieldDate, fieldForwardedProto:
			if h.listsFields && listedInConnection(h.fields, f.name) {
				continue
			}
		}
		writeField(w, f.name, f.value)
	}
	w.WriteString("X-Forwarded-For: ")
	for i := range h.fields {
		if h.fields[i].kind == fieldForwardedFor {
			w.Write(h.fields[i].value)
			w.WriteString(", ")
		}
	}
	w.Write(remoteHost)
	w.WriteString("\r\n")
	if !h.forwardedProto {
		w.WriteString("X-Forwarded-Proto: http\r\n")
	}
	if h.websocket {
		w.WriteString("Connection: Upgrade\r\n")
		for i := range h.fields {
			if h.fields[i].kind == fieldUpgrade {
				writeField(w, h.fields[i].name, h.fields[i].value)
			}
		}
	}
	if h.chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	w.WriteString("\r\n")
}

func writeField(w *bufio.Writer, name, value []byte) {
	w.Write(name)
	w.WriteString(": ")
	w.Write(value)
	w.WriteString("\r\n")
}

// httpDateLayout is the IMF-fixdate form of RFC 9110 §5.6.7, in UTC.
const httpDateLayout = "Mon, 02 Jan 2006 15:04:05 GMT"

// writeResponseHead writes the app's response head for the client: its
// fields as received minus hop-by-hop ones, with the connection handling of
// this hop.
func writeResponseHead(w *bufio.Writer, h *responseHead, http10, closing, decodeChunks bool) {
	if http10 {
		w.WriteString("HTTP/1.0 ")
	} else {
		w.WriteString("HTTP/1.1 ")
	}
	w.Write(h.statusRest)
	w.WriteString("\r\n")
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case fieldHopByHop, fieldConnection, fieldUpgrade:
			continue
		case fieldTransferEncoding:
			if decodeChunks {
				continue
			}
		case fieldContentLength:
			if h.codings {
				continue // Transfer-Encoding wins; both must not be sent
			}
		default:
			if h.listsFields && listedInConnection(h.fields, f.name) {
				continue
			}
		}
		writeField(w, f.name, f.value)
	}
	if !h.hasDate {
		// RFC 9110 §6.6.1: a recipient with a clock adds a missing Date.
		w.WriteString("Date: ")
		// Formatted into the writer's free space: a local array would
		// escape through Write and cost an allocation per response.
		w.Write(time.Now().UTC().AppendFormat(w.AvailableBuffer(), httpDateLayout))
		w.WriteString("\r\n")
	}
	if closing {
		w.WriteString("Connection: close\r\n")
	} else if http10 {
		w.WriteString("Connection: keep-alive\r\n")
	}
	w.WriteString("\r\n")
}

// badGateway answers 502 and reports whether the connection can go on.
func (cc *clientConn) badGateway(bodyRead, headRequest bool) bool {
	cc.p.m.upstreamErrors.Inc()
	closing := !bodyRead || cc.req.wantsClose || cc.p.draining.Load()
	w := getWriter(&cc.out)
	defer putWriter(w)
	writeShortResponse(w, cc.req.http10, 502, "the app is not answering", closing, headRequest)
	return cc.finish(w, closing)
}

// finish flushes a response and reports whether the connection can go on:
// not when the flush failed, nor when the response closes it (it lingers).
func (cc *clientConn) finish(w *bufio.Writer, closing bool) bool {
	if w.Flush() != nil {
		return false
	}
	if closing {
		cc.linger()
		return false
	}
	return true
}

// readResponseHead reads the app's next final response head (or 101),
// dropping informational ones: 100 Continue was already answered to the
// client by the proxy.
func (uc *upstreamConn) readResponseHead(h *responseHead) error {
	uc.in.yieldForReply()
	for {
		n, err := uc.in.readHead(maxResponseHead, errMalformedResponse)
		if err != nil {
			return err
		}
		if err := parseResponseHead(uc.in.buffered()[:n], h); err != nil {
			return err
		}
		uc.in.discard(n)
		if h.status >= 200 || h.status == 101 {
			return nil
		}
	}
}

// copyBody copies n bytes (n < 0: until the source ends) from src to dst,
// flushing dst whenever src has nothing more buffered, so a stream goes out
// as it arrives while a small message still leaves in one write.
func copyBody(dst *bufio.Writer, src *connReader, n int64) (int64, error) {
	var copied int64
	for n < 0 || copied < n {
		if len(src.buffered()) == 0 {
			if err := flushIfDrained(dst, src); err != nil {
				return copied, err
			}
			if err := src.fill(); err != nil {
				if n < 0 && errors.Is(err, io.EOF) {
					return copied, nil
				}
				return copied, err
			}
		}
		b := src.buffered()
		if n >= 0 {
			b = b[:min(int64(len(b)), n-copied)]
		}
		if _, err := dst.Write(b); err != nil {
			return copied, writeError{err}
		}
		src.discard(len(b))
		copied += int64(len(b))
	}
	return copied, nil
}

// copyChunked copies a chunked body from src to dst and returns the number of
// data bytes. With framing the chunked coding is kept (chunk extensions
// dropped, trailer fields passed on); without, only the data is written, for
// an HTTP/1.0 client.
func copyChunked(dst *bufio.Writer, src *connReader, framing bool) (int64, error) {
	var total int64
	for {
		if err := flushIfDrained(dst, src); err != nil {
			return total, err
		}
		line, err := src.readCRLFLine(maxChunkLine)
		if err != nil {
			return total, err
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return total, errMalformedChunk
		}
		if framing {
			var b [20]byte
			dst.Write(strconv.AppendUint(b[:0], uint64(size), 16))
			dst.WriteString("\r\n")
		}
		if size == 0 {
			break
		}
		n, err := copyBody(dst, src, size)
		total += n
		if err != nil {
			return total, err
		}
		if err := flushIfDrained(dst, src); err != nil {
			return total, err
		}
		if line, err := src.readCRLFLine(0); err != nil || len(line) != 0 {
			return total, errMalformedChunk
		}
		if framing {
			dst.WriteString("\r\n")
		}
	}
	for trailers := 0; ; {
		if err := flushIfDrained(dst, src); err != nil {
			return total, err
		}
		line, err := src.readCRLFLine(readBufferSize)
		if err != nil {
			return total, err
		}
		if trailers += len(line); trailers > maxRequestHead {
			return total, errMalformedChunk
		}
		if len(line) == 0 {
			if framing {
				dst.WriteString("\r\n")
			}
			return total, nil
		}
		fields, ok := parseFields(line, nil)
		if !ok || len(fields) != 1 {
			return total, errMalformedChunk
		}
		if framing && !forbiddenTrailer(fields[0].name) {
			dst.Write(line)
			dst.WriteString("\r\n")
		}
	}
}

// flushIfDrained flushes dst before src has to wait for more input, so what
// has arrived so far is passed on first.
func flushIfDrained(dst *bufio.Writer, src *connReader) error {
	if len(src.buffered()) == 0 {
		if err := dst.Flush(); err != nil {
			return writeError{err}
		}
	}
	return nil
}

// parseChunkSize parses a chunk-size line: hex digits, then optionally
// whitespace and chunk extensions, which are ignored.
func parseChunkSize(line []byte) (int64, bool) {
	var size int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i >= 15 {
			return 0, false
		}
		size = size<<4 | int64(d)
	}
rest:
	if i == 0 {
		return 0, false
	}
	ext := trimSpace(line[i:])
	if len(ext) > 0 && ext[0] != ';' || !validFieldValue(ext) {
		return 0, false
	}
	return size, true
}

func isIdempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}
