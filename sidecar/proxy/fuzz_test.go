package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http/httputil"
	"testing"
	"time"
)

// FuzzResponseHead checks that any app response head is either refused as a
// 502 or parsed into one whose relayed form parses back to the same status
// and framing, with a clean status line, never both Content-Length and
// Transfer-Encoding, and no hop-by-hop field.
func FuzzResponseHead(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
		"HTTP/1.0 204\r\nKeep-Alive: timeout=5\r\nDate: Mon, 30 Nov 2026 20:00:00 GMT\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 O\rK\r\n\r\n",
		"HTTP/1.1 099 X\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 1\nContent-Length: 1\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n := headLength(data, 0)
		if n < 0 {
			return
		}
		var h responseHead
		if err := parseResponseHead(data[:n], &h); err != nil {
			if err != errMalformedResponse {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if h.status < 100 || h.status > 999 || !validFieldValue(h.statusRest) {
			t.Fatalf("accepted status line %q", h.statusRest)
		}
		if h.codings && h.contentLength >= 0 || h.chunked && !h.codings {
			t.Fatalf("framing %+v", h)
		}
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		writeResponseHead(w, &h, false, false, false)
		w.Flush()
		var again responseHead
		if err := parseResponseHead(out.Bytes(), &again); err != nil {
			t.Fatalf("relayed head %q refused: %v", out.Bytes(), err)
		}
		if again.status != h.status || again.chunked != h.chunked || again.codings != h.codings ||
			again.otherCodings != h.otherCodings || again.contentLength != h.contentLength {
			t.Fatalf("relayed head %q frames differently from %q", out.Bytes(), data[:n])
		}
		var length, coding bool
		for i := range again.fields {
			switch again.fields[i].kind {
			case fieldHopByHop, fieldConnection, fieldUpgrade:
				t.Fatalf("relayed a hop-by-hop field in %q", out.Bytes())
			case fieldContentLength:
				length = true
			case fieldTransferEncoding:
				coding = true
			}
		}
		if length && coding {
			t.Fatalf("relayed both Content-Length and Transfer-Encoding: %q", out.Bytes())
		}
	})
}

// FuzzChunkedBody checks that copyChunked either refuses a chunked body or
// relays one that net/http decodes to the same data, that parses again to
// the same bytes, and that carries no forbidden trailer; decoding for an
// HTTP/1.0 client yields the same data.
func FuzzChunkedBody(f *testing.F) {
	for _, seed := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=\"v\"\r\nhello\r\n6 ; e\r\n world\r\n0\r\nX-Sum: 1\r\nContent-Length: 5\r\nHost: h\r\n\r\n",
		"ffffffffffffffff\r\n",
		"3\r\nabc\n0\r\n\r\n",
		"0\r\nTransfer-Encoding: chunked\r\nX-A: a\rb\r\n\r\n",
		"A\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		framed, n, err := relayChunked(data, true)
		if err != nil {
			var se *statusError
			if !errors.As(err, &se) && !errors.Is(err, io.EOF) && err != errLineTooLong {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		decoded, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(framed)))
		if err != nil || int64(len(decoded)) != n {
			t.Fatalf("relayed %q: net/http reads %d bytes (%v), relayed %d", framed, len(decoded), err, n)
		}
		again, n2, err := relayChunked(framed, true)
		if err != nil || n2 != n || !bytes.Equal(again, framed) {
			t.Fatalf("relayed %q does not relay to itself: %q %v", framed, again, err)
		}
		plain, _, err := relayChunked(data, false)
		if err != nil || !bytes.Equal(plain, decoded) {
			t.Fatalf("decoded %q, want %q (%v)", plain, decoded, err)
		}
		// The trailer section follows the last chunk, "0\r\n".
		trailers := framed[bytes.LastIndex(framed, []byte("0\r\n"))+3:]
		for _, line := range bytes.Split(trailers, []byte("\r\n")) {
			if name, _, ok := bytes.Cut(line, []byte(":")); ok && forbiddenTrailer(name) {
				t.Fatalf("relayed trailer %q", line)
			}
		}
	})
}

// relayChunked runs copyChunked over data, delivered a few bytes per read so
// that lines and chunks straddle reads.
func relayChunked(data []byte, framing bool) ([]byte, int64, error) {
	var src connReader
	src.init(&trickleConn{data: data})
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	n, err := copyChunked(w, &src, framing)
	w.Flush()
	return out.Bytes(), n, err
}

// trickleConn is a net.Conn that reads data at most 7 bytes at a time.
type trickleConn struct {
	net.Conn
	data []byte
}

func (c *trickleConn) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), 7)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *trickleConn) SetReadDeadline(time.Time) error { return nil }
