package proxy_test

// Hostile traffic from both sides, against the sidecar and, as the reference,
// net/http/httputil.ReverseProxy served by net/http. Each row drives raw bytes
// from a client and either a recording net/http app (request-side cases) or a
// scripted app that misbehaves on purpose (response-side cases). A row's check
// must hold for the sidecar; the reference's result is logged when it fails
// the check (there the sidecar is the stricter one). On top, the sidecar must
// never be less strict than the reference: when the reference refuses the
// first request, the sidecar must refuse it too, without contacting the app if
// the reference did not; a row may opt out only by naming the RFC rule the
// sidecar follows instead of net/http's.

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"spawner.dev/common/metrics"
	"spawner.dev/sidecar/activity"
	"spawner.dev/sidecar/proxy"
)

// appLog records what an app received, one line per request, and when a
// scripted app has written its late bytes.
type appLog struct {
	mu       sync.Mutex
	lines    []string
	lateOnce sync.Once
	late     chan struct{}
}

func newAppLog() *appLog { return &appLog{late: make(chan struct{})} }

// lateWritten marks the late bytes as written: on loopback they are then in
// the proxy's receive queue.
func (l *appLog) lateWritten() { l.lateOnce.Do(func() { close(l.late) }) }

func (l *appLog) add(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *appLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// recordingApp is a well-behaved net/http app that answers every request with
// the line it logs: method, target, host, trailers, body and the router
// proof header as it saw them.
func recordingApp(t *testing.T, l *appLog) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var trailers []string
		for k := range r.Trailer {
			trailers = append(trailers, k)
		}
		sort.Strings(trailers)
		line := fmt.Sprintf("%s %s host=%s body=%q trailers=%v proof=%q", r.Method, r.RequestURI, r.Host, body,
			trailers, r.Header.Get("Spawner-Router-Proof"))
		l.add(line)
		io.WriteString(w, line)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// appScript answers the n-th request the scripted app received (counted over
// all its connections) by writing raw bytes to c; returning false closes c.
// It calls l.lateWritten once it has written bytes nobody asked for yet.
type appScript func(c net.Conn, n int, head string, l *appLog) bool

// scriptedApp serves script on a loopback port: it reads request heads (and
// Content-Length bodies), logs them and lets the script answer.
func scriptedApp(t *testing.T, l *appLog, script appScript) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	var count int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					length := 0
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
							length, _ = strconv.Atoi(strings.TrimSpace(v))
						}
						if line == "\r\n" || line == "\n" {
							break
						}
					}
					if _, err := io.CopyN(io.Discard, br, int64(length)); err != nil {
						return
					}
					first, _, _ := strings.Cut(head.String(), "\r\n")
					l.add(first)
					mu.Lock()
					n := count
					count++
					mu.Unlock()
					if !script(c, n, head.String(), l) {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// reply is a well-framed response whose body names the request's number.
func reply(n int) string {
	body := "reply-" + strconv.Itoa(n)
	return "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// firstThen answers request 0 with first (then sleeps late and writes
// late, if set) and every later request with reply(n).
func firstThen(first string, late time.Duration, lateBytes string, closeAfter bool) appScript {
	return func(c net.Conn, n int, _ string, l *appLog) bool {
		if n > 0 {
			io.WriteString(c, reply(n))
			return true
		}
		io.WriteString(c, first)
		if lateBytes != "" {
			time.Sleep(late)
			io.WriteString(c, lateBytes)
			l.lateWritten()
		}
		return !closeAfter
	}
}

// rawResponse is one response as a client read it off the wire.
type rawResponse struct {
	status   int
	head     string // status line and fields, exactly as received
	body     string
	trailers string // trailer lines of a chunked body, as received
	err      error  // no (complete) response
	took     time.Duration
}

func (r rawResponse) field(name string) (values []string) {
	lines := strings.Split(r.head, "\r\n")
	for _, line := range lines[1:] {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			values = append(values, strings.TrimSpace(v))
		}
	}
	return values
}

// readRawResponse reads one final response for method, tolerating what
// http.ReadResponse refuses (transfer codings other than chunked), so that
// the test sees exactly what was sent.
func readRawResponse(br *bufio.Reader, method string) (r rawResponse) {
	for {
		r = rawResponse{}
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				r.err = fmt.Errorf("head: %w (got %q)", err, head.String()+line)
				return r
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		r.head = strings.TrimSuffix(head.String(), "\r\n\r\n")
		statusLine, _, _ := strings.Cut(r.head, "\r\n")
		parts := strings.SplitN(statusLine, " ", 3)
		if len(parts) < 2 {
			r.err = fmt.Errorf("status line %q", statusLine)
			return r
		}
		r.status, _ = strconv.Atoi(parts[1])
		if r.status >= 200 || r.status == 101 {
			break
		}
	}
	if method == "HEAD" || r.status == 204 || r.status == 304 {
		return r
	}
	var body []byte
	var err error
	te := r.field("Transfer-Encoding")
	switch {
	case len(te) > 0 && strings.HasSuffix(strings.ToLower(te[len(te)-1]), "chunked"):
		body, r.trailers, err = readChunked(br)
	case len(te) > 0:
		body, err = io.ReadAll(br)
	case len(r.field("Content-Length")) > 0:
		n, _ := strconv.Atoi(r.field("Content-Length")[0])
		body = make([]byte, n)
		_, err = io.ReadFull(br, body)
	default:
		body, err = io.ReadAll(br)
	}
	r.body = string(body)
	if err != nil {
		r.err = fmt.Errorf("body: %w", err)
	}
	return r
}

func readChunked(br *bufio.Reader) (body []byte, trailers string, err error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return body, "", err
		}
		size, err := strconv.ParseInt(strings.TrimRight(strings.SplitN(line, ";", 2)[0], "\r\n "), 16, 64)
		if err != nil {
			return body, "", fmt.Errorf("chunk size %q", line)
		}
		if size == 0 {
			break
		}
		chunk := make([]byte, size+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return body, "", err
		}
		body = append(body, chunk[:size]...)
	}
	var t strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return body, t.String(), err
		}
		if line == "\r\n" {
			return body, t.String(), nil
		}
		t.WriteString(line)
	}
}

// step is one thing a client does: on connection conn (0 or 1), after the
// app's late bytes are written (if afterLate) and then wait, send bytes and,
// unless method is empty, read one response.
type step struct {
	conn      int
	afterLate bool
	wait      time.Duration
	send      string
	method    string
}

// outcome is what a row observed through one front end.
type outcome struct {
	resp    []rawResponse // one per step that reads
	rest    []rawResponse // further responses on connection 0 until it closed
	closed  bool          // connection 0 ended after the last step
	appSaw  []string
	appSeen int // requests the app had received before the last step
}

func drive(t *testing.T, addr string, steps []step, l *appLog) *outcome {
	t.Helper()
	o := &outcome{}
	var conns [2]net.Conn
	var readers [2]*bufio.Reader
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		conns[i], readers[i] = c, bufio.NewReader(c)
	}
	for _, s := range steps {
		if s.afterLate {
			select {
			case <-l.late:
			case <-time.After(5 * time.Second):
				t.Fatal("the app never wrote its late bytes")
			}
		}
		time.Sleep(s.wait)
		start := time.Now()
		io.WriteString(conns[s.conn], s.send)
		if s.method != "" {
			r := readRawResponse(readers[s.conn], s.method)
			r.took = time.Since(start)
			o.resp = append(o.resp, r)
		}
	}
	o.appSeen = len(l.get())
	// A final probe on connection 0 shows whether it is still in step with
	// the client, then collects whatever else arrives until it closes.
	io.WriteString(conns[0], "GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	conns[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := 0; i < 10; i++ {
		r := readRawResponse(readers[0], "GET")
		if r.err != nil && r.head == "" {
			o.closed = true
			break
		}
		o.rest = append(o.rest, r)
	}
	time.Sleep(20 * time.Millisecond) // let the app log the last request
	o.appSaw = l.get()
	return o
}

// refusal ranks how an outcome treated the first request: 0 forwarded with a
// non-error status, 1 refused after reaching the app (a 5xx made by the
// proxy, or no answer), 2 refused without contacting the app.
func (o *outcome) refusal() int {
	first := o.resp[0]
	if first.err == nil && first.status < 400 {
		return 0
	}
	if len(o.appSaw) == 0 || o.appSeen == 0 {
		return 2
	}
	return 1
}

// inStep is the generic request-side check: every response the app made
// (it echoes its log line) reached the client in order, and the app saw no
// request the client did not get an answer for (a smuggled request).
func inStep(o *outcome) string {
	var got []string
	for _, r := range append(append([]rawResponse(nil), o.resp...), o.rest...) {
		if r.err == nil && r.status == 200 {
			got = append(got, r.body)
		}
	}
	if strings.Join(got, "\n") != strings.Join(o.appSaw, "\n") {
		return fmt.Sprintf("client and app out of step:\n client got %q\n app saw    %q", got, o.appSaw)
	}
	for _, line := range o.appSaw {
		if strings.Contains(line, "smuggled") {
			return "the app saw the request hidden behind ambiguous framing: " + line
		}
	}
	return ""
}

// noPoison checks that no client response carries the app's unsolicited
// bytes and that the second request got its own answer.
func noPoison(o *outcome) string {
	for _, r := range append(append([]rawResponse(nil), o.resp...), o.rest...) {
		if strings.Contains(r.body, "POISON") || strings.Contains(r.head, "POISON") {
			return fmt.Sprintf("a later response carries the app's stray bytes: %q %q", r.head, r.body)
		}
	}
	if len(o.resp) < 2 || o.resp[1].status != 200 || !strings.HasPrefix(o.resp[1].body, "reply-") {
		return fmt.Sprintf("the second request did not get its own response: %+v", o.resp[1:])
	}
	return ""
}

// oneFraming checks that no response carries both Content-Length and
// Transfer-Encoding and that, after a body delimited by close, the client
// connection is closed rather than reused.
func oneFraming(o *outcome) string {
	for _, r := range append(append([]rawResponse(nil), o.resp...), o.rest...) {
		cl, te := r.field("Content-Length"), r.field("Transfer-Encoding")
		if len(cl) > 0 && len(te) > 0 {
			return fmt.Sprintf("both Content-Length and Transfer-Encoding:\n%s", r.head)
		}
	}
	first := o.resp[0]
	te := first.field("Transfer-Encoding")
	if len(te) > 0 && !strings.HasSuffix(strings.ToLower(te[len(te)-1]), "chunked") && len(o.rest) > 0 {
		return "a body delimited by close was followed by more responses on the connection"
	}
	return ""
}

// cleanStatusLines checks that every status line has the form
// HTTP/1.x SP 3DIGIT SP reason with no control bytes.
func cleanStatusLines(o *outcome) string {
	for _, r := range append(append([]rawResponse(nil), o.resp...), o.rest...) {
		line, _, _ := strings.Cut(r.head, "\r\n")
		for _, c := range []byte(line) {
			if c < ' ' && c != '\t' || c == 0x7f {
				return fmt.Sprintf("status line with a control byte: %q", line)
			}
		}
		if r.err == nil && (r.status < 100 || r.status > 999 || !strings.HasPrefix(line, "HTTP/1.")) {
			return fmt.Sprintf("bad status line %q", line)
		}
	}
	return ""
}

// noTrailers returns a check that the client's trailers hold none of names
// (and, when keep is set, that it holds keep).
func noTrailers(keep string, names ...string) func(*outcome) string {
	return func(o *outcome) string {
		r := o.resp[0]
		for _, line := range strings.Split(r.trailers, "\r\n") {
			k, _, _ := strings.Cut(line, ":")
			for _, n := range names {
				if strings.EqualFold(k, n) {
					return fmt.Sprintf("trailer %q passed on: %q", k, r.trailers)
				}
			}
		}
		if keep != "" && !strings.Contains(strings.ToLower(r.trailers), strings.ToLower(keep)) {
			return fmt.Sprintf("trailer %s lost: %q", keep, r.trailers)
		}
		return ""
	}
}

func all(checks ...func(*outcome) string) func(*outcome) string {
	return func(o *outcome) string {
		for _, c := range checks {
			if msg := c(o); msg != "" {
				return msg
			}
		}
		return ""
	}
}

type hostileCase struct {
	name   string
	app    appScript // nil: recordingApp
	steps  []step
	check  func(*outcome) string
	refuse bool // the sidecar must refuse the first request
	// rfc names the rule the sidecar follows where net/http refuses.
	rfc string
	// headForwarded: both proxies pass the head on before the case shows
	// (a stalled body), so whether the app logged it yet says nothing.
	headForwarded bool
	// Settings of this row for the sidecar and for the reference's server.
	sidecar   func(*proxy.Config)
	reference func(*http.Server)
}

func get(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n" }

func hostileCases() []hostileCase {
	post := func(fields, body string) string {
		return "POST /p HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n" + body
	}
	one := func(req string) []step { return []step{{send: req, method: "GET"}} }
	chunkedResp := func(fields, trailers string) string {
		return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + fields + "\r\n5\r\nhello\r\n0\r\n" + trailers + "\r\n"
	}
	return []hostileCase{
		// Request side (the app is net/http; nothing may be smuggled past).
		{name: "CL.TE", refuse: true, check: inStep, steps: one(post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
			"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))},
		{name: "TE.CL", refuse: true, check: inStep, steps: one(post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
			"2c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX-Pad: 12345\r\n\r\n0\r\n\r\n"))},
		{name: "TE with obs-fold", refuse: true, check: inStep, steps: one(post("Transfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n",
			"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))},
		{name: "TE not chunked", refuse: true, check: inStep, steps: one(post("Transfer-Encoding: gzip\r\n", "abc"))},
		{name: "TE chunked twice", refuse: true, check: inStep, steps: one(post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
			"0\r\n\r\n"))},
		{name: "duplicate lengths", refuse: true, check: inStep, steps: one(post("Content-Length: 3\r\nContent-Length: 40\r\n",
			"abcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"))},
		{name: "signed length", refuse: true, check: inStep, steps: one(post("Content-Length: +3\r\n", "abc"))},
		{name: "length list", refuse: true, check: inStep, steps: one(post("Content-Length: 3, 3\r\n", "abc"))},
		{name: "obs-fold", refuse: true, check: inStep, steps: one("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n")},
		{name: "bare CR in a field", refuse: true, check: inStep, steps: one("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n")},
		{name: "bare CR in the request line", refuse: true, check: inStep, steps: one("GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n")},
		{name: "space before colon", refuse: true, check: inStep, steps: one("GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n")},
		{name: "bare LF after chunk data", refuse: true, check: inStep, steps: one(post("Transfer-Encoding: chunked\r\n",
			"3\r\nabc\n0\r\n\r\n"))},
		{name: "chunk size overflow", refuse: true, check: inStep, steps: one(post("Transfer-Encoding: chunked\r\n",
			"10000000000000003\r\nabc\r\n0\r\n\r\n"))},
		{name: "10k header fields", refuse: true, check: inStep, steps: one("GET / HTTP/1.1\r\nHost: x\r\n" +
			strings.Repeat("X-N: v\r\n", 10000) + "\r\n")},
		{name: "two Hosts", refuse: true, check: inStep, steps: one("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")},
		{name: "absolute-form target", steps: one("GET http://example.test/abs?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"),
			check: all(inStep, appSawPrefix("GET /abs?q=1 host=example.test "))},
		{name: "absolute-form without path", steps: one("GET http://example.test:8080?q HTTP/1.1\r\nHost: example.test:8080\r\n\r\n"),
			check: all(inStep, appSawPrefix("GET /?q host=example.test:8080 "))},
		{name: "absolute-form with userinfo", refuse: true, check: inStep, steps: one("GET http://u:p@example.test/ HTTP/1.1\r\nHost: x\r\n\r\n")},
		{name: "stalled request body", refuse: true, headForwarded: true, steps: one(post("Content-Length: 10\r\n", "abc")),
			// net/http has no idle-between-reads bound for bodies; its
			// ReadTimeout (whole request) is the nearest setting.
			sidecar:   func(c *proxy.Config) { c.BodyIdleTimeout = 300 * time.Millisecond },
			reference: func(s *http.Server) { s.ReadTimeout = 300 * time.Millisecond },
			check: func(o *outcome) string {
				if r := o.resp[0]; r.err == nil && r.status < 400 || r.took > 2*time.Second {
					return fmt.Sprintf("a stalled body got %d (%v) after %s", r.status, r.err, r.took)
				}
				return ""
			}},
		{name: "no router proof", refuse: true, steps: one(get("/f")),
			sidecar: func(c *proxy.Config) { c.RouterProof = "proof" },
			check: func(o *outcome) string {
				if o.appSeen != 0 {
					return fmt.Sprintf("the app saw %q", o.appSaw)
				}
				return ""
			}},
		{name: "router proof never forwarded", steps: one("GET /f HTTP/1.1\r\nHost: x\r\nSpawner-Router-Proof: proof\r\n\r\n"),
			sidecar: func(c *proxy.Config) { c.RouterProof = "proof" },
			check:   all(inStep, appSawPrefix(`GET /f host=x body="" trailers=[] proof=""`))},
		{name: "request trailers", steps: one(post("Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n",
			"3\r\nabc\r\n0\r\nX-Sum: 1\r\nHost: evil\r\nContent-Length: 9\r\nTransfer-Encoding: gzip\r\nSpawner-Router-Proof: forged\r\n\r\n")),
			check: all(inStep, appSawPrefix(`POST /p host=x body="abc" trailers=[X-Sum] proof=""`))},

		// Response side (the app misbehaves).
		{name: "two responses in one segment", check: noPoison,
			app:   firstThen(reply(0)+"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", 0, "", false),
			steps: []step{{send: get("/1"), method: "GET"}, {conn: 1, wait: 50 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "second response in a later segment", check: noPoison,
			app:   firstThen(reply(0), 20*time.Millisecond, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", false),
			steps: []step{{send: get("/1"), method: "GET"}, {conn: 1, afterLate: true, wait: 30 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "body on a HEAD response", check: noPoison,
			app:   firstThen("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", 0, "", false),
			steps: []step{{send: "HEAD /1 HTTP/1.1\r\nHost: x\r\n\r\n", method: "HEAD"}, {wait: 50 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "late body on a HEAD response", check: noPoison,
			app:   firstThen("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", 20*time.Millisecond, "POISON", false),
			steps: []step{{send: "HEAD /1 HTTP/1.1\r\nHost: x\r\n\r\n", method: "HEAD"}, {afterLate: true, wait: 30 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "body on a 204", check: noPoison,
			app:   firstThen("HTTP/1.1 204 No Content\r\n\r\nPOISON", 0, "", false),
			steps: []step{{send: get("/1"), method: "GET"}, {wait: 50 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "late body on a 304", check: noPoison,
			app:   firstThen("HTTP/1.1 304 Not Modified\r\n\r\n", 20*time.Millisecond, "POISON", false),
			steps: []step{{send: get("/1"), method: "GET"}, {conn: 1, afterLate: true, wait: 30 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "body on a 1xx", check: func(o *outcome) string {
			if o.resp[0].status != 502 && o.resp[0].err == nil {
				return fmt.Sprintf("got %d", o.resp[0].status)
			}
			return noPoison(o)
		},
			app:   firstThen("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nPOISON"+reply(0), 0, "", false),
			steps: []step{{send: get("/1"), method: "GET"}, {conn: 1, wait: 50 * time.Millisecond, send: get("/2"), method: "GET"}}},
		{name: "chunked and Content-Length", check: oneFraming,
			app:   firstThen(chunkedResp("Content-Length: 100\r\n", ""), 0, "", false),
			steps: one(get("/1"))},
		{name: "gzip coding and Content-Length", check: oneFraming,
			rfc:   "RFC 9112 §6.3 (4): a coding other than a final chunked is read until the app closes; the client connection is closed after it",
			app:   firstThen("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef", 0, "", true),
			steps: one(get("/1"))},
		{name: "gzip then chunked and Content-Length", check: oneFraming,
			rfc: "RFC 9112 §6.3 (4): a final chunked frames the body, Content-Length is dropped",
			app: firstThen("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
				0, "", false),
			steps: one(get("/1"))},
		{name: "chunked not final", check: oneFraming,
			rfc:   "RFC 9112 §6.3 (4): chunked not final means the body runs until the app closes",
			app:   firstThen("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabcdef", 0, "", true),
			steps: one(get("/1"))},
		{name: "chunked twice", check: oneFraming,
			app:   firstThen(chunkedResp("Transfer-Encoding: chunked\r\n", ""), 0, "", false),
			steps: one(get("/1"))},
		{name: "bare CR in the reason", check: cleanStatusLines,
			app: firstThen("HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nok", 0, "", false), steps: one(get("/1"))},
		{name: "bad status code", check: cleanStatusLines,
			app: firstThen("HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", 0, "", false), steps: one(get("/1"))},
		{name: "status code below 100", check: cleanStatusLines,
			app: firstThen("HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok", 0, "", false), steps: one(get("/1"))},
		{name: "bad version", check: cleanStatusLines,
			app: firstThen("HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, "", false), steps: one(get("/1"))},
		{name: "lower-case version", check: cleanStatusLines,
			app: firstThen("http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0, "", false), steps: one(get("/1"))},
		{name: "forbidden response trailers", check: noTrailers("X-Ok", "Content-Length", "Transfer-Encoding", "Host", "Authorization",
			"Set-Cookie", "Cache-Control", "Content-Type", "Trailer", "Location", "If-Match"),
			app: firstThen(chunkedResp("Trailer: X-Ok\r\n", "X-Ok: 1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n"+
				"Authorization: x\r\nSet-Cookie: a=b\r\nCache-Control: no-cache\r\nContent-Type: text/html\r\nTrailer: X-Ok\r\n"+
				"Location: /x\r\nIf-Match: *\r\n"), 0, "", false),
			steps: one(get("/1"))},
	}
}

// appSawPrefix checks the recording app's first log line.
func appSawPrefix(prefix string) func(*outcome) string {
	return func(o *outcome) string {
		if len(o.appSaw) == 0 || !strings.HasPrefix(o.appSaw[0], prefix) {
			return fmt.Sprintf("the app saw %q, want a line starting %q", o.appSaw, prefix)
		}
		return ""
	}
}

// sidecarFront serves the sidecar's proxy in front of upstream.
func sidecarFront(t *testing.T, upstream string, tc hostileCase) string {
	tracker := activity.New(0)
	c := proxy.Config{Upstream: upstream, Tracker: tracker,
		Metrics: proxy.NewMetrics(metrics.NewRegistry(), tracker), MaxIdle: 8}
	if tc.sidecar != nil {
		tc.sidecar(&c)
	}
	return serve(t, proxy.New(c))
}

// referenceFront serves httputil.ReverseProxy in front of upstream, with a
// transport of its own so no connection is shared between rows.
func referenceFront(t *testing.T, upstream string, tc hostileCase) string {
	target := &url.URL{Scheme: "http", Host: upstream}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	srv := httptest.NewUnstartedServer(&httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		Transport: tr,
		ErrorLog:  log.New(io.Discard, "", 0),
	})
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tc.reference != nil {
		tc.reference(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func TestHostileTrafficAgainstReference(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			run := func(front func(*testing.T, string, hostileCase) string) *outcome {
				l := newAppLog()
				var upstream string
				if tc.app == nil {
					upstream = recordingApp(t, l)
				} else {
					upstream = scriptedApp(t, l, tc.app)
				}
				return drive(t, front(t, upstream, tc), tc.steps, l)
			}
			side, ref := run(sidecarFront), run(referenceFront)
			if msg := tc.check(side); msg != "" {
				t.Errorf("sidecar: %s", msg)
			}
			if msg := tc.check(ref); msg != "" {
				t.Logf("reference (net/http) fails the same check, the sidecar is stricter: %s", msg)
			}
			if tc.refuse && side.refusal() == 0 {
				t.Errorf("sidecar forwarded what it must refuse: %+v", side.resp[0])
			}
			s, r := side.refusal(), ref.refusal()
			if tc.headForwarded {
				s, r = min(s, 1), min(r, 1)
			}
			if s < r {
				if tc.rfc == "" {
					t.Errorf("sidecar less strict than net/http: refusal %d < %d\n sidecar:   %+v\n reference: %+v", s, r, side.resp[0], ref.resp[0])
				} else {
					t.Logf("net/http refuses (%d), the sidecar follows %s", ref.resp[0].status, tc.rfc)
				}
			}
		})
	}
}
