// Package proxy forwards HTTP/1.1 and WebSocket traffic from the public port
// to the app on loopback, recording activity as it goes.
//
// Requests go over a pool of persistent upstream connections that the handler
// goroutine writes to and reads from directly: no per-connection reader and
// writer goroutines and no channel hand-offs, which is where a general
// http.Transport spends most of its time on tiny requests.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/wsframe"
)

const (
	bufferSize = 32 << 10
	// dialTimeout bounds connecting to the app; on loopback a dead app refuses
	// at once, so this only matters for an app that stopped accepting.
	dialTimeout = 2 * time.Second
	// halfCloseGrace is how long one direction of a WebSocket may stay open
	// after the other ended, so a lost close never pins a socket forever.
	halfCloseGrace = 10 * time.Second
)

// bufPool holds copy buffers; pointers avoid an allocation per Put.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}

// Config configures a Proxy.
type Config struct {
	Upstream string // host:port of the app, normally 127.0.0.1:<port>
	Tracker  *activity.Tracker
	Metrics  *Metrics
	// MaxIdle caps idle upstream connections kept for reuse; size it for the
	// expected concurrency (every in-flight request holds one).
	MaxIdle int
}

// Proxy is the public port's http.Handler.
type Proxy struct {
	tracker *activity.Tracker
	m       *Metrics
	pool    connPool
}

// New returns a proxy for c.
func New(c Config) *Proxy {
	return &Proxy{tracker: c.Tracker, m: c.Metrics, pool: connPool{addr: c.Upstream, max: c.MaxIdle}}
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.tracker.RequestStarted()
	defer p.tracker.RequestFinished()
	p.m.requests.Inc()
	if isWebSocketUpgrade(r.Header) {
		p.serveUpgrade(w, r)
		return
	}
	p.forward(w, r)
}

// forward sends one plain HTTP request upstream and streams the answer back.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	// Only a request without a body can be sent again, and only an idempotent
	// one should be: the app may have acted on it before dropping the
	// connection.
	replayable := r.Body == http.NoBody && isIdempotent(r.Method)
	var (
		uc   *upstreamConn
		resp *http.Response
		stop func() bool
	)
	for {
		var reused bool
		var err error
		uc, reused, err = p.pool.get()
		if err != nil {
			p.badGateway(w)
			return
		}
		// A client that goes away (long poll, SSE) must free the upstream
		// connection and end the request, or it would look active forever.
		stop = context.AfterFunc(r.Context(), uc.abort)
		resp, err = p.roundTrip(uc, r)
		if err == nil {
			break
		}
		stop()
		uc.Close()
		if r.Context().Err() != nil {
			return
		}
		if !(reused && replayable) {
			p.badGateway(w)
			return
		}
		// The app had closed this pooled connection; try another one.
	}
	complete := false
	defer func() { // deferred: copyResponse panics to abort a truncated response
		if stop() && complete && !resp.Close {
			p.pool.put(uc)
		} else {
			uc.Close()
		}
	}()
	// The copy buffer is taken only now, so a long poll waiting for its
	// answer holds none.
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	complete = p.copyResponse(w, resp, uc.br, *bufp)
}

// roundTrip writes r upstream and reads the response head.
func (p *Proxy) roundTrip(uc *upstreamConn, r *http.Request) (*http.Response, error) {
	writeRequestHead(uc.bw, r, false)
	if err := p.writeBody(uc.bw, r); err != nil {
		return nil, err
	}
	if err := uc.bw.Flush(); err != nil {
		return nil, err
	}
	return readResponse(uc.br, r)
}

// writeRequestHead writes the request line and headers, minus hop-by-hop ones.
func writeRequestHead(bw *bufio.Writer, r *http.Request, upgrade bool) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.RequestURI) // as received, byte for byte
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	connection := r.Header["Connection"]
	for k, vv := range r.Header {
		if isHopByHop(k) || isRewrittenRequestHeader(k) || listedInConnection(k, connection) {
			continue
		}
		for _, v := range vv {
			writeHeaderLine(bw, k, v)
		}
	}
	bw.WriteString("X-Forwarded-For: ")
	for _, prior := range r.Header["X-Forwarded-For"] {
		bw.WriteString(prior)
		bw.WriteString(", ")
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if _, ok := r.Header["X-Forwarded-Proto"]; !ok {
		bw.WriteString("X-Forwarded-Proto: http\r\n")
	}
	if upgrade {
		bw.WriteString("Connection: Upgrade\r\n")
		for _, v := range r.Header["Upgrade"] {
			writeHeaderLine(bw, "Upgrade", v)
		}
	}
	switch {
	case r.ContentLength > 0 || r.ContentLength == 0 && r.Header["Content-Length"] != nil:
		bw.WriteString("Content-Length: ")
		var num [20]byte
		bw.Write(strconv.AppendInt(num[:0], r.ContentLength, 10))
		bw.WriteString("\r\n")
	case r.ContentLength < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
}

func writeHeaderLine(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// writeBody copies the request body upstream, re-chunking a body of unknown
// length (net/http has already decoded the client's chunking).
func (p *Proxy) writeBody(bw *bufio.Writer, r *http.Request) error {
	if r.Body == http.NoBody || r.Body == nil {
		return nil
	}
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	buf := *bufp
	chunked := r.ContentLength < 0
	var total int64
	defer func() { p.m.toApp.bytes.Add(uint64(total)) }()
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			total += int64(n)
			if chunked {
				var num [16]byte
				bw.Write(strconv.AppendInt(num[:0], int64(n), 16))
				bw.WriteString("\r\n")
			}
			if _, werr := bw.Write(buf[:n]); werr != nil {
				return werr
			}
			if chunked {
				bw.WriteString("\r\n")
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if chunked {
		_, err := bw.WriteString("0\r\n\r\n")
		return err
	}
	return nil
}

// readResponse reads the next final response head, dropping informational
// ones (100 Continue was already answered to the client by net/http).
func readResponse(br *bufio.Reader, r *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, r)
		if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, err
		}
	}
}

// copyResponse sends resp to the client and reports whether its body was
// read to the end, which is when the upstream connection can be reused.
// Data is flushed whenever the upstream has nothing more buffered, so
// streamed responses (SSE, long polls) reach the client as they come while
// ordinary responses still go out in one write.
func (p *Proxy) copyResponse(w http.ResponseWriter, resp *http.Response, upstream *bufio.Reader, buf []byte) bool {
	h := w.Header()
	connection := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if isHopByHop(k) || listedInConnection(k, connection) {
			continue
		}
		h[k] = vv
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	var total int64
	defer func() { p.m.fromApp.bytes.Add(uint64(total)) }()
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			total += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false // the client went away
			}
			more := resp.ContentLength < 0 || total < resp.ContentLength
			if err == nil && more && upstream.Buffered() == 0 && flusher != nil {
				flusher.Flush()
			}
		}
		if err == io.EOF {
			return true
		}
		if err != nil {
			// The app broke off mid-body. Abort the client connection too, so
			// the truncation is visible instead of a clean end of response.
			p.m.upstreamErrors.Inc()
			panic(http.ErrAbortHandler)
		}
	}
}

func (p *Proxy) badGateway(w http.ResponseWriter) {
	p.m.upstreamErrors.Inc()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusBadGateway)
	io.WriteString(w, "502 Bad Gateway: the app is not answering\n")
}

func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// serveUpgrade forwards a WebSocket handshake and, once the app switches
// protocols, splices the two connections with a frame parser on each way.
func (p *Proxy) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	conn, err := p.pool.dial()
	if err != nil {
		p.badGateway(w)
		return
	}
	uc := newUpstreamConn(conn)
	stop := context.AfterFunc(r.Context(), uc.abort)
	writeRequestHead(uc.bw, r, true)
	err = uc.bw.Flush()
	var resp *http.Response
	if err == nil {
		resp, err = readResponse(uc.br, r)
	}
	if !stop() {
		uc.Close() // the client went away during the handshake
		return
	}
	if err != nil {
		uc.Close()
		p.badGateway(w)
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The app refused the upgrade; relay its answer as a normal response.
		bufp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bufp)
		defer uc.Close()
		p.copyResponse(w, resp, uc.br, *bufp)
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		uc.Close()
		return
	}
	// The public server's header timeout must not end a long-lived socket.
	client.SetDeadline(time.Time{})
	// The 101 head goes out as the app wrote it: its Upgrade, Connection and
	// Sec-WebSocket-* headers are the handshake.
	brw.WriteString("HTTP/1.1 " + resp.Status + "\r\n")
	resp.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		client.Close()
		uc.Close()
		return
	}
	p.m.upgrades.Inc()
	// Bytes already read past the heads belong to the streams. They are
	// copied out so the 4 KiB bufio buffers can be freed: idle sockets then
	// hold no buffers at all.
	t := &tunnel{p: p, client: client, app: uc.Conn, socket: p.tracker.SocketOpened()}
	fromClient := bufferedBytes(brw.Reader)
	fromApp := bufferedBytes(uc.br)
	go t.pump(client, uc.Conn, fromClient, &p.m.toApp)
	go t.pump(uc.Conn, client, fromApp, &p.m.fromApp)
}

func bufferedBytes(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return bytes.Clone(b)
}

// tunnel is one upgraded connection: two pumps, one per direction.
type tunnel struct {
	p           *Proxy
	client, app net.Conn
	socket      *activity.Socket
	finished    atomic.Int32
}

func (t *tunnel) pump(src, dst net.Conn, early []byte, d *direction) {
	var parser wsframe.Parser
	observe := func(b []byte) {
		d.bytes.Add(uint64(len(b)))
		if !parser.Interpreting() {
			// Unknown bytes are assumed to be data: better to keep a backend
			// than to sweep one that is in use.
			t.socket.DataSeen(time.Now())
			return
		}
		c := parser.Feed(b)
		d.frames.Add(uint64(c.Frames))
		d.messages.Add(uint64(c.Messages))
		if c.Carried() || !parser.Interpreting() {
			t.socket.DataSeen(time.Now())
		}
		if !parser.Interpreting() {
			t.p.m.uninterpreted.Inc()
		}
	}
	var err error
	if len(early) > 0 {
		observe(early)
		_, err = dst.Write(early)
	}
	if err == nil {
		err = copyStream(dst, src, observe)
	}
	if t.finished.Add(1) == 1 {
		if err == nil {
			// A clean end of one direction (TCP FIN) is passed on as a
			// half-close; the other direction may still finish the close
			// handshake, within a bound so a lost FIN never pins the socket.
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				dst.SetReadDeadline(time.Now().Add(halfCloseGrace))
				return
			}
		}
		// Closing both ends wakes the other pump, which then finishes.
		t.client.Close()
		t.app.Close()
		return
	}
	t.client.Close()
	t.app.Close()
	t.socket.Closed()
}

// upstreamConn is one connection to the app with its buffered reader/writer.
type upstreamConn struct {
	net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

func newUpstreamConn(c net.Conn) *upstreamConn {
	return &upstreamConn{Conn: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}
}

// abort makes any blocked read or write on the connection fail at once.
func (uc *upstreamConn) abort() { uc.SetDeadline(time.Unix(1, 0)) }

// connPool keeps idle upstream connections, newest first.
type connPool struct {
	addr string
	max  int
	mu   sync.Mutex
	idle []*upstreamConn
}

// staleCheckAfter is how long a connection may sit idle before it is checked
// for having been closed by the app (Node's default keep-alive timeout is 5 s).
const staleCheckAfter = time.Second

func (p *connPool) get() (uc *upstreamConn, reused bool, err error) {
	for {
		p.mu.Lock()
		if n := len(p.idle); n > 0 {
			uc = p.idle[n-1]
			p.idle[n-1] = nil
			p.idle = p.idle[:n-1]
		}
		p.mu.Unlock()
		if uc == nil {
			break
		}
		if time.Since(uc.idleSince) < staleCheckAfter || !peerClosed(uc.Conn) {
			return uc, true, nil
		}
		uc.Close()
		uc = nil
	}
	c, err := p.dial()
	if err != nil {
		return nil, false, err
	}
	return newUpstreamConn(c), false, nil
}

func (p *connPool) dial() (net.Conn, error) {
	return net.DialTimeout("tcp", p.addr, dialTimeout)
}

func (p *connPool) put(uc *upstreamConn) {
	uc.idleSince = time.Now()
	p.mu.Lock()
	if len(p.idle) < p.max {
		p.idle = append(p.idle, uc)
		uc = nil
	}
	p.mu.Unlock()
	if uc != nil {
		uc.Close()
	}
}

// CloseIdle closes the pooled connections (at shutdown).
func (p *Proxy) CloseIdle() {
	p.pool.mu.Lock()
	idle := p.pool.idle
	p.pool.idle = nil
	p.pool.mu.Unlock()
	for _, uc := range idle {
		uc.Close()
	}
}

var errShortWrite = errors.New("short write")

// plainCopy is the portable copy loop: it holds a buffer while blocked in
// Read, which copyStream avoids where the platform allows.
func plainCopy(dst io.Writer, src io.Reader, observe func([]byte)) error {
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	for {
		n, err := src.Read(*bufp)
		if n > 0 {
			observe((*bufp)[:n])
			w, werr := dst.Write((*bufp)[:n])
			if werr != nil {
				return werr
			}
			if w != n {
				return errShortWrite
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
