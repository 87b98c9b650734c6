//go:build linux && !386

package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// The proxy's sockets are non-blocking, so read(2) and send(2) on them return
// at once; they are issued as raw system calls, without telling the Go
// scheduler a call is under way. A proxied request makes four of them, and
// announcing each (syscall.Read, net.Conn.Write) kept the runtime's monitor
// thread waking every 20 µs to see whether the sidecar's only P should be
// handed to another thread: 29% of the sidecar's CPU under load went to that
// monitor's sleeps, plus futex hand-offs when it did take the P.

// rawRead reads into b with one read(2).
func rawRead(fd uintptr, b []byte) (int, syscall.Errno) {
	return rawTransfer(syscall.SYS_READ, fd, b, 0)
}

// rawSend writes b with one send(2); MSG_NOSIGNAL spares a SIGPIPE on a
// connection the peer has closed.
func rawSend(fd uintptr, b []byte) (int, syscall.Errno) {
	return rawTransfer(syscall.SYS_SENDTO, fd, b, syscall.MSG_NOSIGNAL)
}

// rawTransfer makes one read or sendto call (read ignores the flags and the
// unused address arguments), retrying when a signal interrupts it.
func rawTransfer(trap, fd uintptr, b []byte, flags uintptr) (int, syscall.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	for {
		n, _, errno := syscall.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), flags, 0, 0)
		switch errno {
		case 0:
			return int(n), 0
		case syscall.EINTR:
		default:
			return 0, errno
		}
	}
}

// socketWriter writes to a connection with rawSend, waiting in the poller
// when the socket buffer is full. It is set up once per connection so that a
// write allocates nothing.
type socketWriter struct {
	conn    net.Conn
	raw     syscall.RawConn // nil: fall back to conn.Write
	p       []byte
	n       int
	err     error
	writeFn func(fd uintptr) bool
}

func (sw *socketWriter) init(c net.Conn) {
	sw.conn = c
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			sw.raw = raw
			sw.writeFn = sw.writeFD
		}
	}
}

func (sw *socketWriter) Write(p []byte) (int, error) {
	if sw.raw == nil {
		return sw.conn.Write(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	sw.p, sw.n, sw.err = p, 0, nil
	err := sw.raw.Write(sw.writeFn)
	n := sw.n
	sw.p = nil
	if err == nil && sw.err != nil {
		err = &net.OpError{Op: "write", Net: "tcp", Addr: sw.conn.RemoteAddr(), Err: sw.err}
	}
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// writeFD is the raw write callback: it sends until all of p is out, and
// returns false to wait for writability when the socket buffer is full.
func (sw *socketWriter) writeFD(fd uintptr) bool {
	for sw.n < len(sw.p) {
		n, errno := rawSend(fd, sw.p[sw.n:])
		switch errno {
		case 0:
			sw.n += n
		case syscall.EAGAIN:
			return false
		default:
			sw.err = errno
			return true
		}
	}
	return true
}

// copyStream copies src to dst until EOF (nil) or an error, calling observe
// on each piece before it is written. It waits for src to become readable
// without holding a buffer (the buffer is taken only for the read itself), so
// a thousand idle WebSockets cost no buffer memory.
func copyStream(dst net.Conn, src net.Conn, observe func([]byte)) error {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return plainCopy(dst, src, observe)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return plainCopy(dst, src, observe)
	}
	var out socketWriter
	out.init(dst)
	var (
		bufp *[]byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		if bufp == nil {
			bufp = bufPool.Get().(*[]byte)
		}
		var errno syscall.Errno
		n, errno = rawRead(fd, *bufp)
		rerr = nil
		if errno != 0 {
			rerr = errno
		}
		if errno == syscall.EAGAIN {
			bufPool.Put(bufp)
			bufp = nil
			return false // wait for readability, then call again
		}
		return true
	}
	release := func() {
		if bufp != nil {
			bufPool.Put(bufp)
			bufp = nil
		}
	}
	for {
		if err := rc.Read(read); err != nil {
			release()
			return err
		}
		if rerr != nil {
			release()
			return rerr
		}
		if n == 0 {
			release()
			return nil
		}
		data := (*bufp)[:n]
		observe(data)
		_, werr := out.Write(data)
		release()
		if werr != nil {
			return werr
		}
	}
}

func (cr *connReader) init(c net.Conn) {
	cr.conn = c
	cr.fd = -1
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			cr.raw = raw
			cr.rawRead = cr.readFD
			raw.Control(func(fd uintptr) { cr.fd = int(fd) })
		}
	}
}

// peerSentOrClosed reports whether the peer has closed the connection or
// sent bytes that nobody has read, by peeking without blocking. Only for a
// connection no other goroutine uses (an idle pooled one): the descriptor is
// used directly, without the poller's locks.
func (cr *connReader) peerSentOrClosed() bool {
	if cr.fd < 0 {
		return false
	}
	if len(cr.buffered()) > 0 {
		return true
	}
	var b [1]byte
	_, errno := rawTransfer(syscall.SYS_RECVFROM, uintptr(cr.fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return errno != syscall.EAGAIN
}

// readFD is the read callback: it takes a buffer only for the read(2) itself
// and gives it back if there is nothing to read yet, so the wait for
// readability holds no buffer.
func (cr *connReader) readFD(fd uintptr) bool {
	cr.acquire()
	n, errno := rawRead(fd, cr.buf[cr.w:])
	cr.n, cr.err = n, nil
	if errno != 0 {
		cr.err = errno
	}
	if errno == syscall.EAGAIN {
		cr.release()
		return false
	}
	if cr.n <= 0 {
		cr.n = 0
		if cr.err == nil {
			cr.err = io.EOF
		}
	}
	return true
}

// waitPeerClosed waits until the connection is readable and reports whether
// that is because the peer closed or reset it; it returns false when data
// arrives (a pipelined request) or the wait is cut by a read deadline.
func waitPeerClosed(rc syscall.RawConn) bool {
	closed := false
	err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, perr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if perr == syscall.EAGAIN {
			return false
		}
		closed = n == 0 || perr != nil
		return true
	})
	return err == nil && closed
}
