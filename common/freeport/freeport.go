// Package freeport finds loopback ports for tests to start servers and
// spawner processes on. Stdlib only, so the sidecar's tests use it too.
package freeport

import (
	"net"
	"testing"
)

// Addr is a 127.0.0.1:port that was free a moment ago: the listener that
// found it is closed before returning, so a process started next can bind it.
func Addr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Port is the port of Addr.
func Port(t testing.TB) int {
	t.Helper()
	ap, err := net.ResolveTCPAddr("tcp", Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port
}
