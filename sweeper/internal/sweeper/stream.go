package sweeper

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"spawner.dev/common/wire"
)

// stream is one open GET /_events on a sidecar's status port.
//
// It is HTTP/1.1 written by hand on a plain TCP connection rather than
// net/http's client, for two reasons: every read gets a deadline (a sidecar
// whose node dropped off the network yields silence, not an error, and
// silence longer than two keep-alives must end the stream), and 500 idle
// streams cost 500 connections with small buffers and nothing else.
type stream struct {
	conn net.Conn
	body io.ReadCloser
	sse  *sseReader
	stop func() bool
}

// deadlineConn renews the read deadline before every read.
type deadlineConn struct {
	net.Conn
	idle time.Duration
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

// streamKeepAlive is the TCP keep-alive of every stream: after 15 s without a
// packet from the sidecar the kernel probes every 5 s, and 3 unanswered probes
// fail the stream's read. That finds a network path that drops packets
// within 30 s without waking either process: the probes and their answers
// are the kernels' business. The sidecar's own keep-alive comment is
// therefore rare (once a minute), and readIdle only catches a sidecar whose
// kernel answers but whose process no longer writes.
var streamKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

// openStream connects to addr and reads the response header; readIdle is the
// longest silence tolerated (the sidecar sends a keep-alive every 60 s).
// Cancelling ctx closes the stream. It is openStreamWithProof for a sidecar
// without a router proof.
func openStream(ctx context.Context, addr string, connectTimeout, readIdle time.Duration) (*stream, error) {
	return openStreamWithProof(ctx, addr, "", connectTimeout, readIdle)
}

// openStreamWithProof is openStream that sends proof, the pod's router
// proof, when it is not empty: a sidecar that has one answers 403 to a
// request without it.
func openStreamWithProof(ctx context.Context, addr, proof string, connectTimeout, readIdle time.Duration) (*stream, error) {
	d := net.Dialer{Timeout: connectTimeout, KeepAliveConfig: streamKeepAlive}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (*stream, error) {
		stop()
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(connectTimeout))
	req := "GET /_events HTTP/1.1\r\nHost: " + addr + "\r\nAccept: text/event-stream\r\nUser-Agent: spawner-sweeper\r\n"
	if proof != "" {
		// The value comes from the pod spec; it is base64url as the controller
		// draws it, but anything that could end the header line is refused
		// rather than written.
		if strings.ContainsAny(proof, "\r\n") {
			return fail(fmt.Errorf("the pod's router proof contains a line break"))
		}
		req += wire.HeaderRouterProof + ": " + proof + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(err)
	}
	dc := &deadlineConn{Conn: conn, idle: connectTimeout}
	br := bufio.NewReaderSize(dc, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(fmt.Errorf("reading /_events response: %w", err))
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fail(fmt.Errorf("/_events answered %s", resp.Status))
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return fail(fmt.Errorf("/_events answered Content-Type %q, want text/event-stream", resp.Header.Get("Content-Type")))
	}
	conn.SetWriteDeadline(time.Time{})
	dc.idle = readIdle
	return &stream{conn: conn, body: resp.Body, sse: newSSEReader(bufio.NewReaderSize(resp.Body, 512)), stop: stop}, nil
}

// Next blocks for the next state report.
func (s *stream) Next() (Event, error) { return s.sse.NextEvent() }

// Close ends the stream; it is safe to call more than once and from another
// goroutine than the reader's.
func (s *stream) Close() {
	s.stop()
	s.conn.Close()
}

// readOnce opens a fresh stream, reads its first event (the sidecar's current
// state) and closes it: a read of the state that is fresh by construction.
func readOnce(ctx context.Context, addr, proof string, timeout time.Duration) (Event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s, err := openStreamWithProof(ctx, addr, proof, timeout, timeout)
	if err != nil {
		return Event{}, err
	}
	defer s.Close()
	return s.Next()
}
