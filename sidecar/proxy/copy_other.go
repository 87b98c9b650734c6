//go:build !linux || 386

package proxy

import (
	"net"
	"syscall"
)

func (cr *connReader) init(c net.Conn) { cr.conn = c; cr.fd = -1 }

// peerSentOrClosed cannot peek portably: only bytes already buffered are
// seen, and a stale connection is caught by the retry of idempotent requests.
func (cr *connReader) peerSentOrClosed() bool { return len(cr.buffered()) > 0 }

// socketWriter is the connection itself where raw system calls are not used.
type socketWriter struct{ net.Conn }

func (sw *socketWriter) init(c net.Conn) { sw.Conn = c }

func copyStream(dst net.Conn, src net.Conn, observe func([]byte)) error {
	return plainCopy(dst, src, observe)
}

// waitPeerClosed is never called here: without a raw connection the client
// is not watched, and a departed client is noticed when a write to it fails.
func waitPeerClosed(syscall.RawConn) bool { return false }
