// Package proxy forwards HTTP/1.1 and WebSocket traffic from the public port
// to the app on loopback, recording activity as it goes.
//
// Requests go over a pool of persistent upstream connections that the client
// connection's goroutine writes to and reads from directly: no per-connection
// reader and writer goroutines and no channel hand-offs, which is where a
// general http.Transport spends most of its time on tiny requests.
package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
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

// bufPool holds the WebSocket pumps' copy buffers; pointers avoid an
// allocation per Put.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}

// Config configures a Proxy.
type Config struct {
	Upstream string // host:port of the app, normally 127.0.0.1:<port>
	Tracker  *activity.Tracker
	Metrics  *Metrics
	// MaxIdle caps idle upstream connections kept for reuse; size it for the
	// expected concurrency (every in-flight request holds one).
	MaxIdle int
	// IdleTimeout ends a client connection that sends no new request for
	// this long (default 5 minutes).
	IdleTimeout time.Duration
	// ReadHeaderTimeout bounds the arrival of a request head once its first
	// bytes are in (default 1 minute).
	ReadHeaderTimeout time.Duration
	// BodyIdleTimeout bounds the wait for each next piece of a request body
	// (default DefaultBodyIdleTimeout); a stalled upload is answered 408 and
	// stops counting as in flight.
	BodyIdleTimeout time.Duration
	// RouterProof, when not empty, is the value every request must carry in
	// the wire.HeaderRouterProof field; any other request is answered 403
	// and never reaches the app. The field is never forwarded to the app,
	// whether or not this is set.
	RouterProof string
}

// DefaultBodyIdleTimeout is how long a request body may pause between two
// reads. nginx bounds the same gap (client_body_timeout) at 60 s; half that
// still outlasts the longest silence a live TCP sender produces while it
// retransmits a few lost segments (with a 1 s initial RTO and doubling:
// 1+2+4+8 = 15 s for four losses in a row), and a dead upload then holds its
// backend open for at most half a minute.
const DefaultBodyIdleTimeout = 30 * time.Second

// Proxy serves the public port (see Serve).
type Proxy struct {
	tracker                        *activity.Tracker
	m                              *Metrics
	pool                           connPool
	idleTimeout, readHeaderTimeout time.Duration
	bodyIdleTimeout                time.Duration
	routerProof                    []byte // nil: no fence

	draining  atomic.Bool
	mu        sync.Mutex
	closing   bool // guarded by mu, set with draining
	listeners []net.Listener
	conns     map[*clientConn]struct{}
}

// New returns a proxy for c.
func New(c Config) *Proxy {
	p := &Proxy{
		tracker:           c.Tracker,
		m:                 c.Metrics,
		pool:              connPool{addr: c.Upstream, max: c.MaxIdle},
		idleTimeout:       c.IdleTimeout,
		readHeaderTimeout: c.ReadHeaderTimeout,
		bodyIdleTimeout:   c.BodyIdleTimeout,
		conns:             map[*clientConn]struct{}{},
	}
	if c.RouterProof != "" {
		p.routerProof = []byte(c.RouterProof)
	}
	if p.bodyIdleTimeout <= 0 {
		p.bodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if p.idleTimeout <= 0 {
		p.idleTimeout = 5 * time.Minute
	}
	if p.readHeaderTimeout <= 0 {
		p.readHeaderTimeout = time.Minute
	}
	return p
}

// startTunnel writes the app's 101 to the client and splices the two
// connections with a frame parser on each way. The 101 head goes out as the
// app wrote it: its Upgrade, Connection and Sec-WebSocket-* fields are the
// handshake.
func (cc *clientConn) startTunnel(uc *upstreamConn) {
	p := cc.p
	w := getWriter(&cc.out)
	w.WriteString("HTTP/1.1 ")
	w.Write(cc.resp.statusRest)
	w.WriteString("\r\n")
	for i := range cc.resp.fields {
		writeField(w, cc.resp.fields[i].name, cc.resp.fields[i].value)
	}
	w.WriteString("\r\n")
	err := w.Flush()
	putWriter(w)
	if err != nil {
		uc.close()
		return
	}
	p.m.upgrades.Inc()
	// Bytes already read past the heads belong to the streams. They are
	// copied out so the read buffers go back to the pool: idle sockets then
	// hold no buffers at all.
	fromClient := cc.in.detach()
	fromApp := uc.in.detach()
	uc.releaseBuffers()
	cc.tunnelled = true
	t := &tunnel{p: p, client: cc.conn, app: uc.Conn, socket: p.tracker.SocketOpened()}
	go t.pump(cc.conn, uc.Conn, fromClient, &p.m.toApp)
	go t.pump(uc.Conn, cc.conn, fromApp, &p.m.fromApp)
}

// tunnel is one upgraded connection: two pumps, one per direction.
type tunnel struct {
	p           *Proxy
	client, app net.Conn
	socket      *activity.Socket
	finished    atomic.Int32
	// closeFrames counts the directions whose close frame has passed; at two
	// the close handshake is complete and the WebSocket is over for activity,
	// whenever the TCP connections go (RFC 6455 §7.1.1).
	closeFrames atomic.Int32
	ended       atomic.Bool
}

// end tells the tracker the WebSocket is over, once.
func (t *tunnel) end() {
	if t.ended.CompareAndSwap(false, true) {
		t.socket.Closed()
	}
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
		wasClosed := parser.Closed()
		c := parser.Feed(b)
		if !wasClosed && parser.Closed() && t.closeFrames.Add(1) == 2 {
			t.end()
		}
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
	t.end()
}

// upstreamConn is one connection to the app. Its buffers are held only
// while it carries an exchange, not while it waits in the pool.
type upstreamConn struct {
	net.Conn
	in   connReader
	sock socketWriter
	out  *bufio.Writer // nil while idle
}

func newUpstreamConn(c net.Conn) *upstreamConn {
	uc := &upstreamConn{Conn: c}
	uc.in.init(c)
	uc.sock.init(c)
	return uc
}

func (uc *upstreamConn) writer() *bufio.Writer {
	if uc.out == nil {
		uc.out = getWriter(&uc.sock)
	}
	return uc.out
}

func (uc *upstreamConn) releaseBuffers() {
	if uc.out != nil {
		putWriter(uc.out)
		uc.out = nil
	}
	uc.in.release()
}

func (uc *upstreamConn) close() {
	uc.in.drop()
	uc.releaseBuffers()
	uc.Conn.Close()
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
		// Every reuse first peeks at the socket without blocking: an app
		// that closed the connection, or wrote to it unasked (a second
		// response, a late body on a HEAD), would otherwise hand the next
		// request a stale or foreign response. net/http's Transport keeps
		// a reader on every idle connection for the same reason. The peek
		// is one recvfrom(2): 1.3 µs of CPU on the 2-vCPU test VM, where
		// any system call costs about 1 µs, so some 4% of the ~33 µs a
		// proxied request costs the sidecar there (an alternating A/B
		// with wrk: 33.2 → 35.7 µs median, on a busy machine).
		if !uc.in.peerSentOrClosed() {
			return uc, true, nil
		}
		uc.close()
		uc = nil
	}
	uc, err = p.fresh()
	return uc, false, err
}

// fresh dials a new connection to the app.
func (p *connPool) fresh() (*upstreamConn, error) {
	c, err := net.DialTimeout("tcp", p.addr, dialTimeout)
	if err != nil {
		return nil, err
	}
	return newUpstreamConn(c), nil
}

func (p *connPool) put(uc *upstreamConn) {
	uc.releaseBuffers()
	p.mu.Lock()
	if len(p.idle) < p.max {
		p.idle = append(p.idle, uc)
		uc = nil
	}
	p.mu.Unlock()
	if uc != nil {
		uc.close()
	}
}

// CloseIdle closes the pooled connections (at shutdown).
func (p *Proxy) CloseIdle() {
	p.pool.mu.Lock()
	idle := p.pool.idle
	p.pool.idle = nil
	p.pool.mu.Unlock()
	for _, uc := range idle {
		uc.close()
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
