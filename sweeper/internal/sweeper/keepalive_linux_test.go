package sweeper

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// Every stream carries TCP keep-alive at 15 s idle, 5 s interval, 3 probes:
// that, not the sidecar's once-a-minute comment, is what drops a stream
// whose network path went silent within 30 s (TestUnreachableSidecarIsNeverSwept
// in sweeper/test shows it against iptables DROP in a real pod).
func TestStreamHasTCPKeepAlive(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("data: {\"ready\":true,\"live_connections\":0,\"last_active\":\"2026-01-01T00:00:00Z\"}\n\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	st, err := openStream(context.Background(), srv.Listener.Addr().String(), time.Second, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	raw, err := st.conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name       string
		level, opt int
		value      int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 15},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 5},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 3},
	}
	raw.Control(func(fd uintptr) {
		for _, w := range want {
			got, err := syscall.GetsockoptInt(int(fd), w.level, w.opt)
			if err != nil || got != w.value {
				t.Errorf("%s = %d (%v), want %d", w.name, got, err, w.value)
			}
		}
	})
}
