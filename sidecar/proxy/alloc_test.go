package proxy_test

import (
	"bytes"
	"net"
	"testing"

	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/proxy"
)

// TestSmallExchangeAllocatesNothing guards the hot path: once a keep-alive
// connection is warm, a small GET through the proxy and its response must
// cost no heap allocation. The client and the app here are hand-written on
// raw sockets with fixed buffers and allocate nothing themselves, so every
// allocation the process makes during the run is the proxy's.
func TestSmallExchangeAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	appAddr := serveFixedResponse(t, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n")
	tracker := activity.New(0)
	px := proxy.New(proxy.Config{
		Upstream: appAddr,
		Tracker:  tracker,
		Metrics:  proxy.NewMetrics(metrics.NewRegistry(), tracker),
		MaxIdle:  8,
	})
	conn, err := net.Dial("tcp", serve(t, px))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	request := []byte("GET /x?y=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-test\r\nAccept: */*\r\n\r\n")
	buf := make([]byte, 4096)
	exchange := func() {
		if _, err := conn.Write(request); err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			m, err := conn.Read(buf[n:])
			if err != nil {
				t.Fatal(err)
			}
			n += m
			if end := bytes.Index(buf[:n], []byte("\r\n\r\n")); end >= 0 && n >= end+4+13 {
				return
			}
		}
	}
	for range 10 { // warm the pools and the upstream connection
		exchange()
	}
	if allocs := testing.AllocsPerRun(2000, exchange); allocs > 0.01 {
		t.Errorf("a proxied GET allocates %.2f times on average; want none", allocs)
	}
	if !bytes.HasSuffix(buf[:bytes.Index(buf, []byte("\r\n\r\n"))+4+13], []byte("hello, world\n")) {
		t.Errorf("unexpected response:\n%s", buf)
	}
}

// serveFixedResponse answers every request head on every connection with
// response, reading with a fixed buffer; it allocates nothing per request.
func serveFixedResponse(t *testing.T, response string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	resp := []byte(response)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 8192)
				n := 0
				for {
					m, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += m
					// Requests here have no body: a head ends at a blank line.
					for {
						end := bytes.Index(buf[:n], []byte("\r\n\r\n"))
						if end < 0 {
							break
						}
						if _, err := c.Write(resp); err != nil {
							return
						}
						n = copy(buf, buf[end+4:n])
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
