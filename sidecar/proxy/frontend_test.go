package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/proxy"
)

// describeApp answers every request with what it received, so tests can see
// exactly what the proxy forwarded.
func describeApp() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/not-modified":
			w.Header().Set("ETag", `"1"`)
			w.WriteHeader(http.StatusNotModified)
			return
		case "/until-close":
			// A response framed by the end of the connection: no length,
			// no chunking.
			c, brw, _ := http.NewResponseController(w).Hijack()
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nstreamed until close")
			brw.Flush()
			c.Close()
			return
		case "/trailers":
			w.Header().Set("Trailer", "X-Checksum")
			w.Write([]byte("chunk-one;"))
			w.(http.Flusher).Flush()
			w.Write([]byte("chunk-two"))
			w.Header().Set("X-Checksum", "abc")
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s %s len=%d te=%v body=%q trailer=%q expect=%q", r.Method, r.RequestURI, r.Proto,
			r.ContentLength, r.TransferEncoding, body, r.Trailer.Get("X-Sum"), r.Header.Get("Expect"))
	})
}

// rawConn opens a client connection to the proxy for hand-written requests.
func rawConn(t *testing.T, s *stack) (net.Conn, *bufio.Reader) {
	t.Helper()
	return dialRaw(t, s.publicAddr, 5*time.Second)
}

// dialRaw opens a TCP connection to addr, closed when the test ends, that
// fails every read and write after within.
func dialRaw(t *testing.T, addr string, within time.Duration) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(within))
	return conn, bufio.NewReader(conn)
}

// readResponse reads one response for a request with the given method.
func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(body)
}

// assertClosed checks that the proxy ends the connection.
func assertClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection still open: read %q, %v", b, err)
	}
}

func TestPipelinedRequests(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	io.WriteString(conn, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"+
		"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"+
		"\r\nGET /4 HTTP/1.1\r\nHost: x\r\n\r\n") // one stray CRLF before a request is allowed
	for _, want := range []string{
		`GET /1 HTTP/1.1 len=0 te=[] body=""`,
		`POST /2 HTTP/1.1 len=5 te=[] body="hello"`,
		`POST /3 HTTP/1.1 len=-1 te=[chunked] body="abc"`,
		`GET /4 HTTP/1.1 len=0 te=[] body=""`,
	} {
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != 200 || !strings.HasPrefix(body, want) {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
	}
	if n := s.appConns.Load(); n != 1 {
		t.Errorf("%d upstream connections for four sequential requests", n)
	}
}

func TestChunkedRequestWithTrailers(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	io.WriteString(conn, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
		"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n")
	resp, body := readResponse(t, br, "POST")
	want := `POST /c HTTP/1.1 len=-1 te=[chunked] body="hello world" trailer="42"`
	if resp.StatusCode != 200 || !strings.HasPrefix(body, want) {
		t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
	}
	if got := s.metric(t, `sidecar_bytes_total{direction="to_app"}`); got != "11" {
		t.Errorf("bytes to app = %s, want the 11 data bytes", got)
	}

	t.Run("malformed chunk is 400", func(t *testing.T) {
		conn, br := rawConn(t, s)
		io.WriteString(conn, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
		resp, _ := readResponse(t, br, "POST")
		if resp.StatusCode != 400 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		assertClosed(t, br)
	})
	t.Run("bare LF after chunk data is 400", func(t *testing.T) {
		conn, br := rawConn(t, s)
		io.WriteString(conn, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n")
		resp, _ := readResponse(t, br, "POST")
		if resp.StatusCode != 400 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

func TestChunkedResponseTrailersPassThrough(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	io.WriteString(conn, "GET /trailers HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, body := readResponse(t, br, "GET")
	if body != "chunk-one;chunk-two" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Fatalf("body %q trailer %v", body, resp.Trailer)
	}
}

func TestHTTP10(t *testing.T) {
	s := newStack(t, describeApp())
	t.Run("closes without keep-alive", func(t *testing.T) {
		conn, br := rawConn(t, s)
		io.WriteString(conn, "GET /old HTTP/1.0\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.Proto != "HTTP/1.0" || !strings.HasPrefix(body, "GET /old HTTP/1.1") {
			t.Fatalf("%s %q", resp.Proto, body)
		}
		assertClosed(t, br)
	})
	t.Run("keep-alive", func(t *testing.T) {
		conn, br := rawConn(t, s)
		for i := 0; i < 2; i++ {
			io.WriteString(conn, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
			resp, body := readResponse(t, br, "GET")
			if resp.Header.Get("Connection") != "keep-alive" || !strings.HasPrefix(body, "GET /ka") {
				t.Fatalf("request %d: %v %q", i, resp.Header, body)
			}
		}
	})
	t.Run("chunked response is decoded", func(t *testing.T) {
		conn, br := rawConn(t, s)
		io.WriteString(conn, "GET /trailers HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if len(resp.TransferEncoding) != 0 || body != "chunk-one;chunk-two" || !resp.Close {
			t.Fatalf("te %v close %v body %q", resp.TransferEncoding, resp.Close, body)
		}
		assertClosed(t, br)
	})
}

func TestExpectContinue(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	io.WriteString(conn, "PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("interim %q %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("interim response not ended: %q", blank)
	}
	io.WriteString(conn, "data")
	resp, body := readResponse(t, br, "PUT")
	// The app does not see the expectation: the proxy has met it.
	if resp.StatusCode != 200 || !strings.HasPrefix(body, `PUT /up HTTP/1.1 len=4 te=[] body="data" trailer="" expect=""`) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestRefusedRequests(t *testing.T) {
	s := newStack(t, describeApp())
	for _, tc := range []struct {
		name, request string
		status        int
	}{
		{"malformed request line", "GET /\r\nHost: x\r\n\r\n", 400},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"length and chunked", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"oversized head", "GET / HTTP/1.1\r\nHost: x\r\nCookie: " + strings.Repeat("c", 70<<10) + "\r\n\r\n", 431},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"unknown coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := rawConn(t, s)
			io.WriteString(conn, tc.request)
			resp, body := readResponse(t, br, "GET")
			if resp.StatusCode != tc.status || !resp.Close || len(body) == 0 || len(body) > 100 {
				t.Fatalf("%d close=%v %q", resp.StatusCode, resp.Close, body)
			}
			assertClosed(t, br)
		})
	}
	if got := s.metric(t, "sidecar_http_requests_total"); got != "0" {
		t.Errorf("refused requests counted as requests: %s", got)
	}
	if n := s.appConns.Load(); n != 0 {
		t.Errorf("the app saw %d connections", n)
	}
}

func TestConnectionClose(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	io.WriteString(conn, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, body := readResponse(t, br, "GET")
	if !resp.Close || !strings.HasPrefix(body, "GET /a") {
		t.Fatalf("close=%v %q", resp.Close, body)
	}
	assertClosed(t, br)
}

// Responses that carry no body must not make the proxy wait for one: the next
// request on the connection still works.
func TestBodylessResponses(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	for _, tc := range []struct{ method, path string }{
		{"HEAD", "/head"}, {"GET", "/no-content"}, {"GET", "/not-modified"}, {"GET", "/after"},
	} {
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\n\r\n", tc.method, tc.path)
		resp, body := readResponse(t, br, tc.method)
		switch tc.path {
		case "/head":
			if resp.StatusCode != 200 || resp.ContentLength <= 0 || body != "" {
				t.Fatalf("HEAD: %d length %d body %q", resp.StatusCode, resp.ContentLength, body)
			}
		case "/no-content", "/not-modified":
			if resp.StatusCode != 204 && resp.StatusCode != 304 || body != "" {
				t.Fatalf("%s: %d %q", tc.path, resp.StatusCode, body)
			}
		default:
			if !strings.HasPrefix(body, "GET /after") {
				t.Fatalf("after: %q", body)
			}
		}
	}
}

func TestResponseEndingAtClose(t *testing.T) {
	s := newStack(t, describeApp())
	conn, br := rawConn(t, s)
	io.WriteString(conn, "GET /until-close HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, body := readResponse(t, br, "GET")
	if body != "streamed until close" || !resp.Close || resp.Header.Get("Date") == "" {
		t.Fatalf("close=%v date=%q body %q", resp.Close, resp.Header.Get("Date"), body)
	}
	assertClosed(t, br)
	if got := s.metric(t, "sidecar_upstream_errors_total"); got != "0" {
		t.Errorf("upstream errors %s", got)
	}
}

func TestTimeouts(t *testing.T) {
	app := newStack(t, describeApp())
	tracker := activity.New(0)
	px := proxy.New(proxy.Config{Upstream: app.app.Listener.Addr().String(), Tracker: tracker,
		Metrics: proxy.NewMetrics(metrics.NewRegistry(), tracker), MaxIdle: 4,
		IdleTimeout: 2 * time.Second, ReadHeaderTimeout: 100 * time.Millisecond})
	addr := serve(t, px)
	dial := func() (net.Conn, *bufio.Reader) { return dialRaw(t, addr, 10*time.Second) }
	t.Run("idle", func(t *testing.T) {
		conn, br := dial()
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		readResponse(t, br, "GET")
		start := time.Now()
		assertClosed(t, br)
		if d := time.Since(start); d < 1500*time.Millisecond || d > 4*time.Second {
			t.Errorf("idle connection closed after %s", d)
		}
	})
	t.Run("slow head", func(t *testing.T) {
		conn, br := dial()
		io.WriteString(conn, "GET / HTTP/1.1\r\n")
		start := time.Now()
		assertClosed(t, br)
		// The header timeout, not the much longer idle one, ends it.
		if d := time.Since(start); d > time.Second {
			t.Errorf("incomplete head allowed %s", d)
		}
	})
}

func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	app := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "done")
	}))
	tracker := activity.New(0)
	px := proxy.New(proxy.Config{Upstream: app.app.Listener.Addr().String(), Tracker: tracker,
		Metrics: proxy.NewMetrics(metrics.NewRegistry(), tracker), MaxIdle: 4})
	addr := serve(t, px)
	idleConn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idleConn.Close()
	io.WriteString(idleConn, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	idleBR := bufio.NewReader(idleConn)
	readResponse(t, idleBR, "GET")

	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	eventually(t, "the slow request in flight", func() bool { return tracker.Snapshot().InFlightRequests == 1 })

	shut := make(chan error, 1)
	go func() { shut <- px.Shutdown(context.Background()) }()
	idleConn.SetDeadline(time.Now().Add(2 * time.Second))
	assertClosed(t, idleBR) // the idle connection is closed at once
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	busy.SetDeadline(time.Now().Add(2 * time.Second))
	busyBR := bufio.NewReader(busy)
	resp, body := readResponse(t, busyBR, "GET")
	if body != "done" || !resp.Close {
		t.Fatalf("in-flight request during shutdown: close=%v %q", resp.Close, body)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

// A client that leaves in the middle of a streamed response ends it too: the
// disconnect watch stays armed while the body is relayed.
func TestClientGoneMidStream(t *testing.T) {
	appSawCancel := make(chan struct{})
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(appSawCancel)
	}))
	conn, br := rawConn(t, s)
	io.WriteString(conn, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: first\n" {
		t.Fatalf("first event %q %v", line, err)
	}
	conn.Close()
	eventually(t, "in-flight count to drop", idle(s))
	select {
	case <-appSawCancel:
	case <-time.After(2 * time.Second):
		t.Fatal("the app's stream was not cancelled")
	}
}
