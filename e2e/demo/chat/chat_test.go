package chat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func dial(t *testing.T, server *httptest.Server) *websocket.Conn {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(server.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestEveryMemberReceivesEveryMessageIntact(t *testing.T) {
	server := httptest.NewServer(NewRoom().Handler())
	defer server.Close()
	alice, bob := dial(t, server), dial(t, server)
	waitForMembers(t, server, 2)

	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 1<<18) // 1 MiB
	if err := alice.WriteMessage(websocket.BinaryMessage, big); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*websocket.Conn{alice, bob} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		kind, got, err := c.ReadMessage()
		if err != nil || kind != websocket.BinaryMessage || !bytes.Equal(got, big) {
			t.Fatalf("member got kind %d, %d bytes, err %v; want the 1 MiB binary message", kind, len(got), err)
		}
	}
}

func TestStatsCountRequestsButNotThemselves(t *testing.T) {
	server := httptest.NewServer(NewRoom().Handler())
	defer server.Close()
	http.Get(server.URL + "/healthz")
	var stats map[string]int64
	for range 2 {
		resp, err := http.Get(server.URL + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&stats)
		resp.Body.Close()
	}
	if stats["requests"] != 1 {
		t.Errorf("requests = %d, want 1 (only /healthz)", stats["requests"])
	}
}

func TestEventStreamTicksUntilTheClientLeaves(t *testing.T) {
	server := httptest.NewServer(NewRoom().Handler())
	defer server.Close()
	resp, err := http.Get(server.URL + "/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: {\"tick\":0}\n" {
		t.Fatalf("first line %q, err %v", line, err)
	}
}

func waitForMembers(t *testing.T, server *httptest.Server, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(server.URL + "/stats")
		if err == nil {
			var stats map[string]int64
			json.NewDecoder(resp.Body).Decode(&stats)
			resp.Body.Close()
			if stats["members"] == n {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("room never had %d members", n)
}

// TestFetchPageShowsTheOutcomeAsText: GET /fetch is the page the origin
// isolation test loads; it reports in #outcome and writes what it read as
// text (a page that put another backend's answer into its markup would run
// that backend's scripts).
func TestFetchPageShowsTheOutcomeAsText(t *testing.T) {
	server := httptest.NewServer(NewRoom().Handler())
	defer server.Close()
	resp, err := http.Get(server.URL + "/fetch?url=/headers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page bytes.Buffer
	page.ReadFrom(resp.Body)
	s := page.String()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(s, `id="outcome"`) || !strings.Contains(s, `credentials: "include"`) || strings.Contains(s, "innerHTML") {
		t.Fatalf("GET /fetch: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), s)
	}
}
