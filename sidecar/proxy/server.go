package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The public port is served by a small HTTP/1.1 server of its own rather than
// net/http's: per request net/http starts a background-read goroutine, builds
// header maps and a context, and arms timers, which together cost more CPU
// than the forwarding itself. Here a connection's goroutine reads a request
// head, forwards it with the body, relays the response and loops, with no
// other goroutine involved unless a request lasts long enough to be worth
// watching for the client leaving (see watch).

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Connection states, for Shutdown.
const (
	stateActive int32 = iota // reading or serving a request
	stateIdle                // waiting for the next request
	stateClosed              // closed by Shutdown while idle
)

// clientWatchDelay is how long a request may wait for its response before
// its client connection is watched for a disconnect (a goroutine and a
// read(2)); most requests finish first and never pay for it.
const clientWatchDelay = 10 * time.Millisecond

// lingerTimeout bounds how long a connection being closed is read and
// discarded from after its last response, so unread request bytes don't make
// the kernel reset the connection before the client has read that response.
const lingerTimeout = 500 * time.Millisecond

// maxRetainedFields caps the field slices a connection keeps between requests.
const maxRetainedFields = 64

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

func getWriter(w io.Writer) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writerPool.Put(bw)
}

// Serve accepts connections on ln until Shutdown or Close.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	p.listeners = append(p.listeners, ln)
	p.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.draining.Load() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait and try again,
			// as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		cc := &clientConn{p: p, conn: c}
		if !p.track(cc) {
			c.Close()
			return ErrServerClosed
		}
		go cc.serve()
	}
}

func (p *Proxy) track(cc *clientConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.conns[cc] = struct{}{}
	return true
}

func (p *Proxy) untrack(cc *clientConn) {
	p.mu.Lock()
	delete(p.conns, cc)
	p.mu.Unlock()
}

// Shutdown stops accepting, closes connections waiting for a request, and
// waits for the others to finish their current exchange. When ctx ends first
// it closes them all and returns ctx.Err(). Upgraded connections are not
// waited for (the drain in package server does that).
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.stopAccepting()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.closeIdle() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			p.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close closes the listeners and every connection still being served.
func (p *Proxy) Close() {
	p.stopAccepting()
	p.mu.Lock()
	defer p.mu.Unlock()
	for cc := range p.conns {
		cc.conn.Close()
	}
}

func (p *Proxy) stopAccepting() {
	p.draining.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closing = true
	for _, ln := range p.listeners {
		ln.Close()
	}
	p.listeners = nil
}

// closeIdle closes the connections waiting for a request and returns how
// many connections remain.
func (p *Proxy) closeIdle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for cc := range p.conns {
		if cc.state.CompareAndSwap(stateIdle, stateClosed) {
			cc.conn.Close()
		}
	}
	return len(p.conns)
}

// clientConn is one connection on the public port.
type clientConn struct {
	p     *Proxy
	conn  net.Conn
	in    connReader
	out   socketWriter
	state atomic.Int32
	// Reused for every request on the connection.
	req  requestHead
	resp responseHead
	// remoteHost is the client address for X-Forwarded-For.
	remoteHost []byte
	// tunnelled: the connection now belongs to a WebSocket tunnel.
	tunnelled bool

	// The disconnect watch (see watch); watchTimer is created on first use.
	watchTimer *time.Timer
	watchDone  chan struct{}
	watched    atomic.Pointer[upstreamConn]
	clientGone atomic.Bool
}

func (cc *clientConn) serve() {
	defer func() {
		cc.p.untrack(cc)
		if !cc.tunnelled {
			cc.in.drop()
			cc.conn.Close()
		}
	}()
	cc.in.init(cc.conn)
	cc.out.init(cc.conn)
	host, _, err := net.SplitHostPort(cc.conn.RemoteAddr().String())
	if err != nil {
		host = cc.conn.RemoteAddr().String()
	}
	cc.remoteHost = []byte(host)
	for {
		cc.state.Store(stateIdle)
		if cc.p.draining.Load() {
			return
		}
		cc.conn.SetReadDeadline(time.Now().Add(cc.p.idleTimeout))
		if err := cc.awaitRequest(); err != nil {
			return
		}
		if !cc.state.CompareAndSwap(stateIdle, stateActive) {
			return // closed by Shutdown
		}
		if headLength(cc.in.buffered(), 0) < 0 {
			cc.conn.SetReadDeadline(time.Now().Add(cc.p.readHeaderTimeout))
		}
		n, err := cc.in.readHead(maxRequestHead, errHeadTooLarge)
		if err != nil {
			if se, ok := err.(*statusError); ok {
				cc.refuse(se)
			}
			return
		}
		cc.conn.SetReadDeadline(time.Time{})
		if !cc.serveRequest(n) {
			return
		}
		cc.in.release()
		// A head with many fields must not leave an idle connection holding
		// a large field slice.
		if cap(cc.req.fields) > maxRetainedFields {
			cc.req.fields = nil
		}
		if cap(cc.resp.fields) > maxRetainedFields {
			cc.resp.fields = nil
		}
	}
}

// awaitRequest waits for the first bytes of a request, skipping the empty
// lines some clients send after a body (RFC 9112 §2.2).
func (cc *clientConn) awaitRequest() error {
	for {
		b := cc.in.buffered()
		skip := 0
		for skip < len(b) && (b[skip] == '\r' || b[skip] == '\n') {
			skip++
		}
		cc.in.discard(skip)
		if skip < len(b) {
			return nil
		}
		cc.in.yieldForReply()
		if err := cc.in.fill(); err != nil {
			return err
		}
	}
}

// refuse answers a request the proxy will not forward and ends the connection.
func (cc *clientConn) refuse(e *statusError) {
	w := getWriter(&cc.out)
	defer putWriter(w)
	writeShortResponse(w, false, e.status, e.reason, true, false)
	cc.finish(w, true)
}

// writeShortResponse writes a complete plain-text response made by the proxy.
func writeShortResponse(w *bufio.Writer, http10 bool, status int, reason string, closing, headRequest bool) {
	text := statusText(status)
	body := itoa(status) + " " + text + ": " + reason + "\n"
	if http10 {
		w.WriteString("HTTP/1.0 ")
	} else {
		w.WriteString("HTTP/1.1 ")
	}
	w.WriteString(itoa(status) + " " + text + "\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n")
	w.WriteString("Content-Length: " + itoa(len(body)) + "\r\n")
	if closing {
		w.WriteString("Connection: close\r\n")
	} else if http10 {
		w.WriteString("Connection: keep-alive\r\n")
	}
	w.WriteString("\r\n")
	if !headRequest {
		w.WriteString(body)
	}
}

func statusText(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 408:
		return "Request Timeout"
	case 417:
		return "Expectation Failed"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Error"
}

// linger half-closes the connection and reads what the client still sends
// for a moment, so a response followed by unread bytes is not destroyed by a
// reset; the deferred Close in serve then ends it.
func (cc *clientConn) linger() {
	cw, ok := cc.conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	cc.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	for discarded := 0; discarded < 256<<10; {
		cc.in.drop()
		if cc.in.fill() != nil {
			return
		}
		discarded += len(cc.in.buffered())
	}
}

// watch arms the disconnect watch for a request now waiting on uc: if the
// exchange is still going after clientWatchDelay, a goroutine waits for the
// client connection to become readable, and if the client has gone, aborts
// uc so the exchange ends at once.
func (cc *clientConn) watch(uc *upstreamConn) {
	if cc.in.raw == nil {
		return // no way to wait without reading; see peekClosed
	}
	cc.watched.Store(uc)
	if cc.watchTimer == nil {
		cc.watchDone = make(chan struct{}, 1)
		cc.watchTimer = time.AfterFunc(clientWatchDelay, cc.watchClient)
		return
	}
	cc.watchTimer.Reset(clientWatchDelay)
}

// unwatch ends the watch armed by watch and reports whether the client left.
func (cc *clientConn) unwatch() (clientGone bool) {
	if cc.watchTimer == nil || cc.watchTimer.Stop() {
		return false
	}
	// The watcher started: wake it if it still waits and wait for it, so it
	// cannot abort uc once uc is back in the pool.
	cc.conn.SetReadDeadline(time.Unix(1, 0))
	<-cc.watchDone
	cc.conn.SetReadDeadline(time.Time{})
	return cc.clientGone.Load()
}

func (cc *clientConn) watchClient() {
	if waitPeerClosed(cc.in.raw) {
		cc.clientGone.Store(true)
		cc.watched.Load().abort()
	}
	cc.watchDone <- struct{}{}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
