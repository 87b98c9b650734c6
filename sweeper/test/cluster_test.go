//go:build cluster

package test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

const grace = 5 * time.Second

// openWS opens a WebSocket to the demo through the sidecar's public port and
// checks that a message comes back. proof is the pod's router proof, which
// the sidecar requires as it would from the router.
func openWS(t *testing.T, ip, proof string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s:%d/ws", ip, spawnerv1.SidecarServePort), http.Header{wire.HeaderRouterProof: {proof}})
	if err != nil {
		t.Fatalf("WebSocket to %s: %v", ip, err)
	}
	echo(t, c, "hello")
	return c
}

func echo(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("WebSocket write: %v", err)
	}
	if _, _, err := c.ReadMessage(); err != nil {
		t.Fatalf("WebSocket read: %v", err)
	}
}

// closeWS closes the socket with a close handshake and returns when it is done.
func closeWS(c *websocket.Conn) time.Time {
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			break
		}
	}
	c.Close()
	return time.Now()
}

// A WebSocket open for 20 s keeps a grace-5s backend alive; once it closes the
// backend is swept grace later (within 1 s) and the controller deletes it.
func TestWebSocketKeepsAliveThenSwept(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startSweeper()
	e.newSlab("ws", 5)
	ip := e.ready("ws")
	c := openWS(t, ip, e.proof("ws"))
	e.assertStaysReady("ws", 20*time.Second)
	echo(t, c, "still here")
	closed := closeWS(c)
	e.sweptAfter("ws", closed, grace)
	e.gone("ws")
}

// A long HTTP response (SSE) keeps it alive the same way.
func TestSSERequestKeepsAliveThenSwept(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startSweeper()
	e.newSlab("sse", 5)
	ip := e.ready("sse")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s:%d/sse", ip, spawnerv1.SidecarServePort), nil)
	req.Header.Set(wire.HeaderRouterProof, e.proof("sse"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan int, 1)
	go func() {
		n := 0
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if len(sc.Text()) > 5 && sc.Text()[:5] == "data:" {
				n++
			}
		}
		events <- n
	}()
	e.assertStaysReady("sse", 20*time.Second)
	cancel()
	resp.Body.Close()
	closed := time.Now()
	if n := <-events; n < 15 {
		t.Errorf("only %d SSE events in 20 s", n)
	}
	e.sweptAfter("sse", closed, grace)
	e.gone("sse")
}

// The sweeper killed (SIGKILL) mid-grace: its replacement sweeps at the
// original deadline, the sidecar's clock, not grace after its own start.
func TestRestartedSweeperKeepsDeadline(t *testing.T) {
	t.Parallel()
	const g = 8 * time.Second
	e := setup(t)
	sw := e.startSweeper()
	e.newSlab("restart", 8)
	ip := e.ready("restart")
	c := openWS(t, ip, e.proof("restart"))
	closed := closeWS(c)
	time.Sleep(3 * time.Second)
	sw.Kill()
	time.Sleep(time.Second)
	e.startSweeper() // ~4.5 s into the grace
	e.sweptAfter("restart", closed, g)
	e.gone("restart")
}

// The status port blocked (packets dropped in the pod's network namespace,
// so the stream goes silent rather than failing) for 60 s while a WebSocket
// is live: never swept. The WebSocket closes while the port is still
// blocked: still not swept (an unreachable sidecar is not an idle one).
// Unblocked: swept as soon as the sweeper reads the sidecar again.
func TestUnreachableSidecarIsNeverSwept(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startSweeper()
	e.newSlab("blocked", 5)
	ip := e.ready("blocked")
	c := openWS(t, ip, e.proof("blocked"))
	pid := netnsOf(t, ip)
	// Both directions, so the open stream goes silent (with only inbound
	// dropped, the sidecar's keep-alives would still arrive).
	rules := [][]string{
		{"INPUT", "-p", "tcp", "--dport", strconv.Itoa(spawnerv1.SidecarStatusPort), "-j", "DROP"},
		{"OUTPUT", "-p", "tcp", "--sport", strconv.Itoa(spawnerv1.SidecarStatusPort), "-j", "DROP"},
	}
	for _, r := range rules {
		iptables(t, pid, append([]string{"-I"}, r...)...)
	}
	unblocked := false
	unblock := func() {
		if !unblocked {
			for _, r := range rules {
				iptables(t, pid, append([]string{"-D"}, r...)...)
			}
			unblocked = true
		}
	}
	defer unblock()

	for i := range 6 {
		e.assertStaysReady("blocked", 10*time.Second)
		echo(t, c, fmt.Sprintf("blocked %d", i))
	}
	if open := e.metric("spawner_sweeper_streams_open"); open != 0 {
		t.Errorf("streams open after 60 s of silence: %v, want 0 (a silent stream must be dropped)", open)
	}
	if r := e.metric("spawner_sweeper_reconnects_total"); r < 2 {
		t.Errorf("reconnects %v, want several", r)
	}
	closeWS(c)
	e.assertStaysReady("blocked", grace+2*time.Second)
	unblock()
	unblockedAt := time.Now()
	_, seen := e.waitSwept("blocked", 30*time.Second)
	// At worst a connect attempt in flight (2 s timeout) then the capped
	// 5 s backoff, a connect, a confirming read and a status write.
	if d := seen.Sub(unblockedAt); d > 8*time.Second {
		t.Errorf("swept %v after the sidecar became reachable, want ≤ 8 s", d)
	} else {
		t.Logf("swept %v after the sidecar became reachable", d.Round(time.Millisecond))
	}
	e.gone("blocked")
}
