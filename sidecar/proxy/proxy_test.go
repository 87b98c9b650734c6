package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/proxy"
)

// stack is an app behind the proxy, both on loopback.
type stack struct {
	app        *httptest.Server
	publicURL  string // http://127.0.0.1:port
	publicAddr string
	tracker    *activity.Tracker
	registry   *metrics.Registry
	appConns   atomic.Int64 // connections the app accepted
}

func newStack(t testing.TB, app http.Handler) *stack {
	t.Helper()
	s := &stack{tracker: activity.New(0), registry: metrics.NewRegistry()}
	s.app = httptest.NewUnstartedServer(app)
	s.app.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.appConns.Add(1)
		}
	}
	s.app.Start()
	t.Cleanup(s.app.Close)
	px := proxy.New(proxy.Config{
		Upstream: s.app.Listener.Addr().String(),
		Tracker:  s.tracker,
		Metrics:  proxy.NewMetrics(s.registry, s.tracker),
		MaxIdle:  64,
	})
	s.publicAddr = serve(t, px)
	s.publicURL = "http://" + s.publicAddr
	return s
}

// serve runs px on a loopback port until the test ends and returns its address.
func serve(t testing.TB, px *proxy.Proxy) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- px.Serve(ln) }()
	t.Cleanup(func() {
		px.Close()
		px.CloseIdle()
		if err := <-done; err != proxy.ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

func (s *stack) wsURL(path string) string {
	return "ws://" + s.publicAddr + path
}

// metric returns one sample line's value from the registry.
func (s *stack) metric(t *testing.T, series string) string {
	t.Helper()
	var b strings.Builder
	s.registry.WriteTo(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	t.Fatalf("no series %s in\n%s", series, b.String())
	return ""
}

// eventually polls cond for up to 2 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func idle(s *stack) func() bool {
	return func() bool { snap := s.tracker.Snapshot(); return snap.LiveConnections == 0 && snap.WebSockets == 0 }
}

func TestHTTPForwarding(t *testing.T) {
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen-XFF", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Seen-Hop", r.Header.Get("X-Hop"))
		w.Header().Set("X-Seen-Length", fmt.Sprint(r.ContentLength, r.TransferEncoding))
		w.Header().Set("X-Seen-Host", r.Host)
		if r.URL.Path == "/chunked" {
			w.Write([]byte("part1-"))
			w.(http.Flusher).Flush()
		}
		fmt.Fprintf(w, "%s %s %s", r.Method, r.RequestURI, body)
	}))
	client := &http.Client{Transport: &http.Transport{}}

	t.Run("GET with query and forwarded headers", func(t *testing.T) {
		req, _ := http.NewRequest("GET", s.publicURL+"/a/b?x=1&y=%20", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("Connection", "X-Hop")
		req.Header.Set("X-Hop", "must not pass")
		req.Host = "example.test"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "GET /a/b?x=1&y=%20 " {
			t.Errorf("body %q", body)
		}
		if got := resp.Header.Get("X-Seen-XFF"); got != "203.0.113.7, 127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q", got)
		}
		if got := resp.Header.Get("X-Seen-Proto"); got != "http" {
			t.Errorf("X-Forwarded-Proto = %q", got)
		}
		if got := resp.Header.Get("X-Seen-Hop"); got != "" {
			t.Errorf("header named in Connection was forwarded: %q", got)
		}
		if got := resp.Header.Get("X-Seen-Host"); got != "example.test" {
			t.Errorf("Host = %q", got)
		}
	})
	t.Run("POST with length", func(t *testing.T) {
		resp, err := client.Post(s.publicURL+"/p", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "POST /p hello" || resp.Header.Get("X-Seen-Length") != "5 []" {
			t.Errorf("body %q, length %q", body, resp.Header.Get("X-Seen-Length"))
		}
	})
	t.Run("POST chunked", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() { pw.Write([]byte("chu")); pw.Write([]byte("nked")); pw.Close() }()
		resp, err := client.Post(s.publicURL+"/c", "text/plain", pr)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "POST /c chunked" || resp.Header.Get("X-Seen-Length") != "-1 [chunked]" {
			t.Errorf("body %q, length %q", body, resp.Header.Get("X-Seen-Length"))
		}
	})
	t.Run("chunked response", func(t *testing.T) {
		resp, err := client.Get(s.publicURL + "/chunked")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "part1-GET /chunked " {
			t.Errorf("body %q", body)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, err := client.Head(s.publicURL + "/h")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("status %d", resp.StatusCode)
		}
	})
	t.Run("keep-alive reuses upstream connections", func(t *testing.T) {
		before := s.appConns.Load()
		for i := 0; i < 50; i++ {
			resp, err := client.Get(s.publicURL + "/k")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if n := s.appConns.Load() - before; n > 1 {
			t.Errorf("50 sequential requests opened %d upstream connections", n)
		}
	})
	eventually(t, "no live connections", idle(s))
	if got := s.metric(t, "sidecar_upstream_errors_total"); got != "0" {
		t.Errorf("upstream errors %s", got)
	}
}

// An app closing idle keep-alive connections (as Node does after 5 s) must not
// turn into 502s.
func TestStaleUpstreamConnection(t *testing.T) {
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	get := func() int {
		resp, err := http.Get(s.publicURL + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != 200 {
		t.Fatalf("status %d", code)
	}
	s.app.CloseClientConnections() // the pooled upstream connection dies
	if code := get(); code != 200 {
		t.Fatalf("after the app closed the idle connection: status %d", code)
	}
}

func TestDeadUpstreamIs502(t *testing.T) {
	s := newStack(t, http.NotFoundHandler())
	s.app.Close()
	start := time.Now()
	resp, err := http.Get(s.publicURL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || len(body) == 0 || len(body) > 100 {
		t.Errorf("status %d body %q", resp.StatusCode, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("502 took %s", d)
	}
	if got := s.metric(t, "sidecar_upstream_errors_total"); got != "1" {
		t.Errorf("upstream errors %s", got)
	}
	// A WebSocket upgrade to a dead app fails the same way.
	_, resp, err = websocket.DefaultDialer.Dial(s.wsURL("/ws"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("upgrade to dead app: %v %v", resp, err)
	}
}

// A streamed response (SSE) reaches the client as it is written and keeps the
// backend active until it ends.
func TestSSEStreamsAndKeepsActive(t *testing.T) {
	release := make(chan struct{})
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "data: last\n\n")
	}))
	resp, err := http.Get(s.publicURL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q %v", line, err)
	}
	time.Sleep(50 * time.Millisecond)
	if snap := s.tracker.Snapshot(); snap.InFlightRequests != 1 || snap.LiveConnections != 1 || snap.SecondsSinceActive != 0 {
		t.Fatalf("during the stream: %+v", snap)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: last\n\n" {
		t.Errorf("rest %q", rest)
	}
	eventually(t, "stream to end", idle(s))
}

// A client that gives up on a long poll ends the request at once.
func TestClientGoneEndsRequest(t *testing.T) {
	appSawCancel := make(chan struct{})
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(appSawCancel)
	}))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", s.publicURL+"/poll", nil)
	go func() {
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("request succeeded")
	}
	eventually(t, "in-flight count to drop", idle(s))
	select {
	case <-appSawCancel:
	case <-time.After(2 * time.Second):
		t.Fatal("the app's request was not cancelled")
	}
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func echoApp(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			http.Error(w, "no sockets here", http.StatusForbidden)
			return
		}
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(64 << 20)
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return // including the close handshake, which gorilla answers
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	})
}

func TestWebSocketEchoCountsAndClose(t *testing.T) {
	s := newStack(t, echoApp(t))
	c, _, err := websocket.DefaultDialer.Dial(s.wsURL("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "socket to count", func() bool {
		snap := s.tracker.Snapshot()
		return snap.WebSockets == 1 && snap.LiveConnections == 1 && snap.InFlightRequests == 0
	})
	for i := 0; i < 10; i++ {
		want := fmt.Sprintf("message %d", i)
		if err := c.WriteMessage(websocket.TextMessage, []byte(want)); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.ReadMessage(); err != nil || string(got) != want {
			t.Fatalf("echo %q %v", got, err)
		}
	}
	// Second socket: the count goes up and down independently.
	c2, _, err := websocket.DefaultDialer.Dial(s.wsURL("/ws2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "two sockets", func() bool { return s.tracker.Snapshot().WebSockets == 2 })
	c2.Close() // abrupt: no close handshake
	eventually(t, "back to one", func() bool { return s.tracker.Snapshot().WebSockets == 1 })

	// Close handshake: the app echoes the close frame, then both sides close.
	err = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("close handshake: %v", err)
	}
	c.Close()
	eventually(t, "socket to close", idle(s))
	for series, want := range map[string]string{
		`sidecar_websocket_messages_total{direction="to_app"}`:   "10",
		`sidecar_websocket_messages_total{direction="from_app"}`: "10",
		`sidecar_websocket_frames_total{direction="to_app"}`:     "11", // + close
		`sidecar_websocket_frames_total{direction="from_app"}`:   "11",
		`sidecar_websocket_upgrades_total`:                       "2",
		`sidecar_websocket_uninterpreted_total`:                  "0",
	} {
		if got := s.metric(t, series); got != want {
			t.Errorf("%s = %s, want %s", series, got, want)
		}
	}
}

// A WebSocket ends when its close handshake completes (RFC 6455 §7.1.1: a
// close frame sent and received), not when the TCP connections are torn down.
// Under load, or with an app that is slow to close its end after replying,
// the teardown lagged the handshake by up to halfCloseGrace (10 s), and with
// 200 backends closed at once sweeps came 10-12 s past grace (docs/density.md).
func TestWebSocketEndsAtCloseHandshake(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				<-hold // gorilla answered the close frame; keep the TCP connection open
				return
			}
		}
	}))
	c, _, err := websocket.DefaultDialer.Dial(s.wsURL("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eventually(t, "socket to count", func() bool { return s.tracker.Snapshot().WebSockets == 1 })
	err = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err = c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("close handshake: %v", err)
	}
	// Neither side has closed its TCP connection yet.
	eventually(t, "socket to end at the handshake", func() bool { return s.tracker.Snapshot().WebSockets == 0 })
	c.Close()
	eventually(t, "connection to go", idle(s))
	if got := s.tracker.Snapshot().WebSockets; got != 0 {
		t.Fatalf("socket counted again after the TCP close: %d", got)
	}
}

// A close frame in one direction only is not the end: the other side may
// still send data (RFC 6455 §5.5.1), so the socket keeps counting.
func TestWebSocketOneCloseFrameStillCounts(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetCloseHandler(func(int, string) error { return nil }) // no reply
		c.ReadMessage()
		<-hold
	}))
	c, _, err := websocket.DefaultDialer.Dial(s.wsURL("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eventually(t, "socket to count", func() bool { return s.tracker.Snapshot().WebSockets == 1 })
	err = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := s.tracker.Snapshot().WebSockets; got != 1 {
		t.Fatalf("a close frame one way only ended the socket: WebSockets = %d", got)
	}
}

func TestWebSocketLargeMessage(t *testing.T) {
	s := newStack(t, echoApp(t))
	c, _, err := websocket.DefaultDialer.Dial(s.wsURL("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadLimit(64 << 20)
	msg := make([]byte, 16<<20)
	rand.Read(msg)
	go c.WriteMessage(websocket.BinaryMessage, msg)
	typ, got, err := c.ReadMessage()
	if err != nil || typ != websocket.BinaryMessage || !bytes.Equal(got, msg) {
		t.Fatalf("16 MiB echo: type %d, %d bytes, err %v", typ, len(got), err)
	}
	if got := s.metric(t, `sidecar_websocket_messages_total{direction="from_app"}`); got != "1" {
		t.Errorf("messages from app = %s", got)
	}
}

// TestWebSocketCompressedPassesAndCounts: with permessage-deflate, as
// browsers offer it, frames carry RSV1 and compressed payloads; the reader
// still counts every message and the bytes arrive unchanged.
func TestWebSocketCompressedPassesAndCounts(t *testing.T) {
	compressing := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }, EnableCompression: true}
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := compressing.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if c.WriteMessage(typ, msg) != nil {
				return
			}
		}
	}))
	dialer := websocket.Dialer{EnableCompression: true}
	c, resp, err := dialer.Dial(s.wsURL("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("compression not negotiated through the proxy: %q", ext)
	}
	text := bytes.Repeat([]byte("compressible text "), 4096) // 72 KiB, deflates to little
	for i := 0; i < 5; i++ {
		if err := c.WriteMessage(websocket.TextMessage, text); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.ReadMessage(); err != nil || !bytes.Equal(got, text) {
			t.Fatalf("compressed echo %d: %d bytes, %v", i, len(got), err)
		}
	}
	for series, want := range map[string]string{
		`sidecar_websocket_messages_total{direction="to_app"}`:   "5",
		`sidecar_websocket_messages_total{direction="from_app"}`: "5",
		`sidecar_websocket_uninterpreted_total`:                  "0",
	} {
		if got := s.metric(t, series); got != want {
			t.Errorf("%s = %s, want %s", series, got, want)
		}
	}
	// Compressed on the wire: far fewer bytes than the 360 KiB sent.
	sent, _ := strconv.Atoi(s.metric(t, `sidecar_bytes_total{direction="to_app"}`))
	if sent == 0 || sent > len(text) {
		t.Errorf("%d bytes to the app for 5 × %d bytes of text: not compressed, or not counted", sent, len(text))
	}
}

// rawUpgrade performs a handshake by hand so tests control every byte.
func rawUpgrade(t *testing.T, s *stack, connectionHeader string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", s.publicAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 Firefox/140.0\r\n"+
		"Connection: %s\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", connectionHeader)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("Sec-WebSocket-Accept %q", got)
	}
	return conn, br
}

// clientFrame encodes a masked client frame.
func clientFrame(fin bool, opcode byte, payload []byte) []byte {
	b := []byte{opcode}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := []byte{9, 8, 7, 6}
	b = append(b, key...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// Firefox sends "Connection: keep-alive, Upgrade"; the message is fragmented
// with a ping between its frames, and all of it is delivered byte by byte.
func TestWebSocketFirefoxFormFragmentedBytewise(t *testing.T) {
	s := newStack(t, echoApp(t))
	conn, br := rawUpgrade(t, s, "keep-alive, Upgrade")
	var frames []byte
	frames = append(frames, clientFrame(false, 0x1, []byte("hello, "))...)
	frames = append(frames, clientFrame(true, 0x9, []byte("ping"))...)
	frames = append(frames, clientFrame(false, 0x0, bytes.Repeat([]byte("x"), 300))...)
	frames = append(frames, clientFrame(true, 0x0, []byte("!"))...)
	for _, b := range frames {
		if _, err := conn.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	// The app answers the ping with a pong, then echoes the whole message.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	pong := make([]byte, 6)
	if _, err := io.ReadFull(br, pong); err != nil || pong[0] != 0x8A || string(pong[2:]) != "ping" {
		t.Fatalf("pong %q %v", pong, err)
	}
	want := "hello, " + strings.Repeat("x", 300) + "!"
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(br, hdr); err != nil || hdr[0] != 0x81 || hdr[1] != 126 || int(binary.BigEndian.Uint16(hdr[2:])) != len(want) {
		t.Fatalf("echo header %x %v", hdr, err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
		t.Fatalf("echo %q %v", got, err)
	}
	for series, want := range map[string]string{
		`sidecar_websocket_frames_total{direction="to_app"}`:     "4",
		`sidecar_websocket_messages_total{direction="to_app"}`:   "1",
		`sidecar_websocket_frames_total{direction="from_app"}`:   "2",
		`sidecar_websocket_messages_total{direction="from_app"}`: "1",
	} {
		if got := s.metric(t, series); got != want {
			t.Errorf("%s = %s, want %s", series, got, want)
		}
	}
}

// Bytes that are not frames still flow; the parser just stops counting.
func TestWebSocketGarbageStillFlows(t *testing.T) {
	const garbage = "\xff\xfegarbage!!!"
	upstreamGot := make(chan []byte, 1)
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nnot a frame from the app")
		brw.Flush()
		b := make([]byte, len(garbage))
		io.ReadFull(brw, b)
		upstreamGot <- b
	}))
	conn, br := rawUpgrade(t, s, "Upgrade")
	conn.Write([]byte(garbage))
	got := make([]byte, len("not a frame from the app"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "not a frame from the app" {
		t.Fatalf("from app %q %v", got, err)
	}
	if b := <-upstreamGot; string(b) != garbage {
		t.Fatalf("to app %q", b)
	}
	if got := s.metric(t, "sidecar_websocket_uninterpreted_total"); got != "2" {
		t.Errorf("uninterpreted = %s", got)
	}
}

func TestUpgradeRefusedIsRelayed(t *testing.T) {
	s := newStack(t, echoApp(t))
	_, resp, err := websocket.DefaultDialer.Dial(s.wsURL("/refuse"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("got %v %v", resp, err)
	}
	eventually(t, "nothing live", idle(s))
}

func TestIdleWebSocketStopsCounting(t *testing.T) {
	s := newStack(t, echoApp(t))
	s.tracker = activity.New(150 * time.Millisecond)
	px := proxy.New(proxy.Config{Upstream: s.app.Listener.Addr().String(), Tracker: s.tracker,
		Metrics: proxy.NewMetrics(metrics.NewRegistry(), s.tracker), MaxIdle: 4})
	c, _, err := websocket.DefaultDialer.Dial("ws://"+serve(t, px)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eventually(t, "socket live", func() bool { return s.tracker.Snapshot().LiveConnections == 1 })
	// Pings are not use.
	for i := 0; i < 5; i++ {
		c.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
		time.Sleep(50 * time.Millisecond)
	}
	snap := s.tracker.Snapshot()
	if snap.LiveConnections != 0 || snap.WebSockets != 1 {
		t.Fatalf("after pings only: %+v", snap)
	}
	c.WriteMessage(websocket.TextMessage, []byte("back"))
	c.ReadMessage()
	if snap := s.tracker.Snapshot(); snap.LiveConnections != 1 || snap.SecondsSinceActive != 0 {
		t.Fatalf("after a message: %+v", snap)
	}
}

func TestHTTPEdgeCases(t *testing.T) {
	s := newStack(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, n)
		case "/truncated":
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "only part")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the app dies mid-body
		default:
			io.WriteString(w, r.Proto)
		}
	}))
	addr := s.publicAddr

	t.Run("8 MiB upload with Expect: 100-continue", func(t *testing.T) {
		body := bytes.Repeat([]byte("u"), 8<<20)
		req, _ := http.NewRequest("PUT", s.publicURL+"/upload", bytes.NewReader(body))
		req.Header.Set("Expect", "100-continue")
		resp, err := (&http.Client{Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(got) != fmt.Sprint(len(body)) {
			t.Fatalf("app received %s bytes", got)
		}
	})
	t.Run("HTTP/1.0 client", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		all, err := io.ReadAll(conn) // HTTP/1.0 without keep-alive: the proxy closes
		if err != nil || !strings.HasPrefix(string(all), "HTTP/1.0 200") || !strings.HasSuffix(string(all), "HTTP/1.1") {
			t.Fatalf("%q %v", all, err)
		}
	})
	t.Run("pipelined requests", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		for i := 0; i < 2; i++ {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if string(b) != "HTTP/1.1" {
				t.Fatalf("response %d: %q", i, b)
			}
		}
	})
	t.Run("app dies mid-body", func(t *testing.T) {
		resp, err := http.Get(s.publicURL + "/truncated")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			t.Fatalf("a truncated response looked complete (status %d)", resp.StatusCode)
		}
		if got := s.metric(t, "sidecar_upstream_errors_total"); got != "1" {
			t.Errorf("upstream errors = %s", got)
		}
	})
	eventually(t, "nothing live", idle(s))
}
