package proxy

import (
	"io"
	"net"
	"syscall"
)

// copyStream copies src to dst until EOF (nil) or an error, calling observe
// on each piece before it is written. It waits for src to become readable
// without holding a buffer (the buffer is taken only for the read itself), so
// a thousand idle WebSockets cost no buffer memory.
func copyStream(dst io.Writer, src net.Conn, observe func([]byte)) error {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return plainCopy(dst, src, observe)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return plainCopy(dst, src, observe)
	}
	var (
		bufp *[]byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		if bufp == nil {
			bufp = bufPool.Get().(*[]byte)
		}
		for {
			n, rerr = syscall.Read(int(fd), *bufp)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
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
		_, werr := dst.Write(data)
		release()
		if werr != nil {
			return werr
		}
	}
}

func (cr *connReader) init(c net.Conn) {
	cr.conn = c
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			cr.raw = raw
			cr.rawRead = cr.readFD
		}
	}
}

// readFD is the read callback: it takes a buffer only for the read(2) itself
// and gives it back if there is nothing to read yet, so the wait for
// readability holds no buffer.
func (cr *connReader) readFD(fd uintptr) bool {
	cr.acquire()
	for {
		cr.n, cr.err = syscall.Read(int(fd), cr.buf[cr.w:])
		if cr.err != syscall.EINTR {
			break
		}
	}
	if cr.err == syscall.EAGAIN {
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

// peerClosed reports whether the app closed (or wrote unexpectedly on) an
// idle pooled connection, by peeking without blocking.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, perr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = perr != syscall.EAGAIN
		return true
	})
	return closed || err != nil
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
