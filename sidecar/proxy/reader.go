package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// readBufferSize is the pooled read buffer of a connection while it carries a
// message; heads that do not fit get a larger, unpooled buffer.
const readBufferSize = 8 << 10

var readBufPool = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

var errLineTooLong = errors.New("line too long")

// connReader buffers reads from one connection. It holds a pooled buffer only
// while bytes are buffered or a read is under way, so a client connection
// waiting for its next request, or an idle pooled upstream connection, holds
// none (see rawRead).
type connReader struct {
	conn net.Conn
	raw  syscall.RawConn // nil when the platform offers none: reads then hold the buffer while blocked
	fd   int             // the socket's descriptor, for peerSentOrClosed; -1 when unknown
	buf  []byte
	// pooled is the pool's pointer to buf, kept so that returning it does not
	// allocate; nil when buf was grown beyond the pooled size.
	pooled *[]byte
	r, w   int

	// Results of rawRead, which runs as a callback.
	n       int
	err     error
	rawRead func(fd uintptr) bool
	// received counts bytes read; the exchange code resets it per request.
	received int64
	// idleTimeout > 0 makes each fill wait at most this long for a byte
	// (a request body); deadlineSet says a deadline is then armed.
	idleTimeout time.Duration
	deadlineSet bool
}

// endIdleTimeout ends the per-fill timeout set in idleTimeout.
func (cr *connReader) endIdleTimeout() {
	cr.idleTimeout = 0
	if cr.deadlineSet {
		cr.deadlineSet = false
		cr.conn.SetReadDeadline(time.Time{})
	}
}

func (cr *connReader) buffered() []byte { return cr.buf[cr.r:cr.w] }

func (cr *connReader) discard(n int) { cr.r += n }

func (cr *connReader) acquire() {
	if cr.buf == nil {
		cr.pooled = readBufPool.Get().(*[]byte)
		cr.buf = *cr.pooled
		cr.r, cr.w = 0, 0
	}
}

// release returns the buffer to the pool when nothing is buffered.
func (cr *connReader) release() {
	if cr.buf == nil || cr.r != cr.w {
		return
	}
	if cr.pooled != nil {
		readBufPool.Put(cr.pooled)
	}
	cr.buf, cr.pooled, cr.r, cr.w = nil, nil, 0, 0
}

// drop discards whatever is buffered and releases the buffer.
func (cr *connReader) drop() {
	cr.r = cr.w
	cr.release()
}

// detach hands over the buffered bytes (copied) and drops the buffer.
func (cr *connReader) detach() []byte {
	b := bytes.Clone(cr.buffered())
	cr.r = cr.w
	cr.release()
	return b
}

// yieldForReply lets the other runnable goroutines go first when the next
// bytes are an answer to something just sent (the app's response to a
// request, a client's next request after a response) and so are unlikely to
// be there yet. Reading at once would mostly find nothing: a wasted read(2)
// returning EAGAIN, then a park and a wake-up through the poller. After the
// others have run, the answer has often arrived; under load this halved the
// failed reads (1.8 to 0.8 per proxied request). With nothing else runnable
// it returns at once, so an idle sidecar answers as fast as before.
func (cr *connReader) yieldForReply() {
	if len(cr.buffered()) == 0 {
		runtime.Gosched()
	}
}

// fill reads at least one more byte after those buffered.
func (cr *connReader) fill() error {
	if cr.r == cr.w {
		cr.r, cr.w = 0, 0
	} else if cr.w == len(cr.buf) {
		copy(cr.buf, cr.buf[cr.r:cr.w])
		cr.w -= cr.r
		cr.r = 0
		if cr.w == len(cr.buf) {
			return errLineTooLong
		}
	}
	if cr.idleTimeout > 0 {
		cr.conn.SetReadDeadline(time.Now().Add(cr.idleTimeout))
		cr.deadlineSet = true
	}
	var n int
	var err error
	if cr.raw != nil {
		if err = cr.raw.Read(cr.rawRead); err == nil {
			n, err = cr.n, cr.err
		}
	} else {
		cr.acquire()
		n, err = cr.conn.Read(cr.buf[cr.w:])
	}
	cr.w += n
	cr.received += int64(n)
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// makeRoom ensures the buffer can take more bytes without dropping unread
// ones, growing it up to limit. It reports false when limit is reached.
func (cr *connReader) makeRoom(limit int) bool {
	cr.acquire()
	if cr.w < len(cr.buf) {
		return true
	}
	if cr.r > 0 {
		copy(cr.buf, cr.buf[cr.r:cr.w])
		cr.w -= cr.r
		cr.r = 0
		return true
	}
	if len(cr.buf) >= limit {
		return false
	}
	grown := make([]byte, min(2*len(cr.buf), limit))
	copy(grown, cr.buf[:cr.w])
	if cr.pooled != nil {
		readBufPool.Put(cr.pooled)
		cr.pooled = nil
	}
	cr.buf = grown
	return true
}

// readHead waits for a complete message head of at most limit bytes at the
// start of the buffer and returns its length; tooLarge is returned beyond
// the limit.
func (cr *connReader) readHead(limit int, tooLarge error) (int, error) {
	scanned := 0
	for {
		b := cr.buffered()
		if n := headLength(b, scanned); n >= 0 {
			if n > limit {
				return 0, tooLarge
			}
			return n, nil
		}
		scanned = len(b)
		if scanned >= limit || !cr.makeRoom(limit) {
			return 0, tooLarge
		}
		if err := cr.fill(); err != nil {
			return 0, err
		}
	}
}

// readCRLFLine returns the next line without its CRLF; a bare LF is refused,
// since chunk framing is where lenient parsers get smuggled past.
func (cr *connReader) readCRLFLine(limit int) ([]byte, error) {
	for {
		b := cr.buffered()
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			if i == 0 || b[i-1] != '\r' || i-1 > limit {
				return nil, errMalformedChunk
			}
			cr.discard(i + 1)
			return b[:i-1], nil
		}
		if len(b) > limit || !cr.makeRoom(readBufferSize) {
			return nil, errMalformedChunk
		}
		if err := cr.fill(); err != nil {
			return nil, err
		}
	}
}
