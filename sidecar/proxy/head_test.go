package proxy

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestParseRequestHead(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		status     int // 0: accepted
		check      func(t *testing.T, h *requestHead)
	}{
		{name: "simple", head: "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if string(h.method) != "GET" || string(h.target) != "/a?b=1" || h.http10 || h.wantsClose || h.hasBody() {
				t.Errorf("%+v", h)
			}
		}},
		{name: "bare LF lines", head: "GET / HTTP/1.1\nHost: x\nX-A:  spaced \t\n\n", check: func(t *testing.T, h *requestHead) {
			if len(h.fields) != 2 || string(h.fields[1].value) != "spaced" {
				t.Errorf("fields %q", h.fields)
			}
		}},
		{name: "HTTP/1.0 closes by default", head: "GET / HTTP/1.0\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if !h.http10 || !h.wantsClose || h.host != nil {
				t.Errorf("%+v", h)
			}
		}},
		{name: "HTTP/1.0 keep-alive", head: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if h.wantsClose {
				t.Error("keep-alive ignored")
			}
		}},
		{name: "Connection close and listed field", head: "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if !h.wantsClose || !h.listsFields || !listedInConnection(h.fields, []byte("x-hop")) {
				t.Errorf("%+v", h)
			}
		}},
		{name: "Firefox upgrade", head: "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if !h.websocket || h.listsFields {
				t.Errorf("%+v", h)
			}
		}},
		{name: "h2c upgrade is not a WebSocket", head: "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if h.websocket {
				t.Error("h2c taken for a WebSocket")
			}
		}},
		{name: "content length", head: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if h.contentLength != 12 || h.fields[2].kind != fieldHopByHop {
				t.Errorf("%+v", h)
			}
		}},
		{name: "chunked and expect", head: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n", check: func(t *testing.T, h *requestHead) {
			if !h.chunked || !h.expectContinue || !h.hasBody() {
				t.Errorf("%+v", h)
			}
		}},
		{name: "no target", head: "GET  HTTP/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "no version", head: "GET /\r\nHost: x\r\n\r\n", status: 400},
		{name: "lower-case version", head: "GET / http/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "HTTP/2.0", head: "GET / HTTP/2.0\r\nHost: x\r\n\r\n", status: 505},
		{name: "control byte in target", head: "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "bad method", head: "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", status: 400},
		{name: "space before colon", head: "GET / HTTP/1.1\r\nHost : x\r\n\r\n", status: 400},
		{name: "obsolete line folding", head: "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", status: 400},
		{name: "CR in a value", head: "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n", status: 400},
		{name: "no Host", head: "GET / HTTP/1.1\r\n\r\n", status: 400},
		{name: "two Hosts", head: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400},
		{name: "differing lengths", head: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", status: 400},
		{name: "signed length", head: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", status: 400},
		{name: "length and chunked", head: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", status: 400},
		{name: "gzip coding", head: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", status: 501},
		{name: "chunked twice", head: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", status: 501},
		{name: "other expectation", head: "POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n", status: 417},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := headLength([]byte(tc.head), 0); n != len(tc.head) {
				t.Fatalf("headLength %d, want %d", n, len(tc.head))
			}
			var h requestHead
			err := parseRequestHead([]byte(tc.head), &h)
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.status != 0 && (err == nil || err.(*statusError).status != tc.status):
				t.Fatalf("got %v, want %d", err, tc.status)
			case tc.check != nil:
				tc.check(t, &h)
			}
		})
	}
}

func TestHeadLengthResumes(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	scanned := 0
	for i := 1; i <= len(head); i++ {
		n := headLength([]byte(head[:i]), scanned)
		if i < len(head) && n != -1 || i == len(head) && n != len(head) {
			t.Fatalf("prefix %d: %d", i, n)
		}
		scanned = i
	}
}

func TestParseChunkSize(t *testing.T) {
	for line, want := range map[string]int64{"0": 0, "1a": 26, "FF;name=value": 255, "10 ; ext": 16, "7fffffffffffffff": -1,
		"": -1, "x": -1, "1 2": -1, "-1": -1, "1;\x01": -1} {
		got, ok := parseChunkSize([]byte(line))
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("%q: %d, want %d", line, got, want)
		}
	}
}

// FuzzRequestHead checks that any input either is refused with a status or
// parses into a head whose forwarded form parses back to the same request.
func FuzzRequestHead(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p?q HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
		"PUT / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nExpect: 100-continue\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
		"GET http://h:1?q HTTP/1.1\r\nHost: x\r\nSpawner-Router-Proof: p\r\n\r\n",
		"OPTIONS HTTPS://[::1]/a HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n := headLength(data, 0)
		if n < 0 {
			return
		}
		var h requestHead
		if err := parseRequestHead(data[:n], &h); err != nil {
			if _, ok := err.(*statusError); !ok {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		writeRequestHead(w, &h, []byte("127.0.0.1"))
		w.Flush()
		var again requestHead
		if err := parseRequestHead(out.Bytes(), &again); err != nil {
			t.Fatalf("forwarded head %q refused: %v", out.Bytes(), err)
		}
		target := h.target
		if h.authority != nil {
			if len(target) == 0 || target[0] == '?' {
				target = append([]byte("/"), target...)
			}
			if !bytes.Equal(again.host, h.authority) {
				t.Fatalf("absolute-form %q forwarded with Host %q", data[:n], again.host)
			}
		}
		if again.authority != nil || !bytes.Equal(again.method, h.method) || !bytes.Equal(again.target, target) ||
			again.contentLength != h.contentLength || again.chunked != h.chunked || again.websocket != h.websocket {
			t.Fatalf("forwarded head %q differs from %q", out.Bytes(), data[:n])
		}
		for i := range again.fields {
			f := &again.fields[i]
			if f.kind == fieldHopByHop || f.kind == fieldExpect || f.kind == fieldRouterProof ||
				f.kind == fieldOther && h.listsFields && listedInConnection(h.fields, f.name) {
				t.Fatalf("forwarded a hop-by-hop field %q in %q", f.name, out.Bytes())
			}
			if f.kind == fieldConnection && !strings.EqualFold(string(f.value), "upgrade") {
				t.Fatalf("forwarded Connection %q", f.value)
			}
		}
	})
}
