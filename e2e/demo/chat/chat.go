// Package chat is the demo backend's room: HTTP endpoints for tests and a
// WebSocket endpoint that relays every message to every member.
package chat

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// maxMessageBytes bounds one relayed message; tests send 1 MiB.
const maxMessageBytes = 32 << 20

//go:embed index.html
var indexHTML []byte

// fetchHTML is GET /fetch?url=U: a page whose script fetches U with the
// browser's cookies and shows what it could read ("read" and the answer)
// or that the browser withheld it ("blocked" and the error). It shows, in a
// real browser, what a page served by one backend can read of another
// (api-server/test, TestHostModeIsolatesOriginsInChromium). It writes the
// answer as text, never as markup, and sends nothing anywhere else.
//
//go:embed fetch.html
var fetchHTML []byte

// Room relays messages among its members and counts what it served, so tests
// can tell whether a request ever reached the backend.
type Room struct {
	upgrader websocket.Upgrader

	mu      sync.Mutex
	members map[*member]bool

	requests atomic.Int64
	messages atomic.Int64

	session session // what the claim hook received (session.go)
}

type member struct {
	conn *websocket.Conn
	// writeMu serialises writes: gorilla allows one writer at a time.
	writeMu sync.Mutex
}

// NewRoom returns an empty room.
func NewRoom() *Room {
	return &Room{
		// The router and sidecar pass the browser's Origin through; a demo
		// room accepts every origin.
		upgrader: websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }},
		members:  map[*member]bool{},
	}
}

// Handler serves the room's endpoints.
func (r *Room) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(indexHTML)
	})
	mux.HandleFunc("GET /fetch", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(fetchHTML)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /headers", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"method": req.Method, "path": req.URL.Path, "query": req.URL.RawQuery, "host": req.Host, "headers": req.Header,
		})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		members := len(r.members)
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{
			"requests": r.requests.Load(), "messages": r.messages.Load(), "members": int64(members),
		})
	})
	mux.HandleFunc("POST "+ClaimHookPath, r.serveClaim)
	mux.HandleFunc("GET /session", r.serveSession)
	mux.HandleFunc("GET /sse", r.serveEvents)
	mux.HandleFunc("GET /ws", r.serveWebSocket)
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", req.Header.Get("Content-Type"))
		buf := make([]byte, 32<<10)
		for {
			n, err := req.Body.Read(buf)
			w.Write(buf[:n])
			if err != nil {
				return
			}
		}
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// Asking for the counts is not traffic: tests use /stats to check
		// that a refused request never reached the backend.
		if req.URL.Path != "/stats" {
			r.requests.Add(1)
		}
		mux.ServeHTTP(w, req)
	})
}

// serveEvents sends one event a second until the client goes away: a
// long-lived response, the kind that must keep a backend alive.
func (r *Room) serveEvents(w http.ResponseWriter, req *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for n := 0; ; n++ {
		fmt.Fprintf(w, "data: {\"tick\":%d}\n\n", n)
		flusher.Flush()
		select {
		case <-req.Context().Done():
			return
		case <-tick.C:
		}
	}
}

func (r *Room) serveWebSocket(w http.ResponseWriter, req *http.Request) {
	conn, err := r.upgrader.Upgrade(w, req, nil)
	if err != nil {
		return // the upgrader has answered the client already
	}
	conn.SetReadLimit(maxMessageBytes)
	m := &member{conn: conn}
	r.mu.Lock()
	r.members[m] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.members, m)
		r.mu.Unlock()
		conn.Close()
	}()
	for {
		kind, payload, err := conn.ReadMessage()
		if err != nil {
			return
		}
		r.messages.Add(1)
		r.broadcast(kind, payload)
	}
}

// broadcast sends a message to every member, the sender included, so a lone
// client sees an echo and two clients see each other.
func (r *Room) broadcast(kind int, payload []byte) {
	r.mu.Lock()
	members := make([]*member, 0, len(r.members))
	for m := range r.members {
		members = append(members, m)
	}
	r.mu.Unlock()
	for _, m := range members {
		m.writeMu.Lock()
		m.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		err := m.conn.WriteMessage(kind, payload)
		m.writeMu.Unlock()
		if err != nil {
			m.conn.Close()
		}
	}
}
