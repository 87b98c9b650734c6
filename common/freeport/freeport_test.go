package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestAddrCanBeListenedOn(t *testing.T) {
	for _, addr := range []string{Addr(t), "127.0.0.1:" + strconv.Itoa(Port(t))} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		ln.Close()
	}
}
