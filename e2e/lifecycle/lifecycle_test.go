//go:build cluster

package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/common/clustertest"
	"spawner.dev/e2e/framework"
)

// wsURL turns a backend URL from /spawn into the WebSocket URL of path on
// it, keeping the access token.
func wsURL(t testing.TB, backendURL, path string) string {
	t.Helper()
	u, err := url.Parse(backendURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	return u.String()
}

// httpURL is the same for plain HTTP.
func httpURL(t testing.TB, backendURL, path string) string {
	t.Helper()
	u, err := url.Parse(backendURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	return u.String()
}

func dialRoom(t testing.TB, backendURL string) *websocket.Conn {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
	conn, resp, err := dialer.Dial(wsURL(t, backendURL, "/ws"), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket through the router: %v (HTTP %d)", err, status)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitForMembers waits until the demo room counts n members: a client's
// handshake completes before the room has registered it, and a message sent
// in between would never reach that member.
func waitForMembers(t testing.TB, backendURL string, n int64) {
	t.Helper()
	clustertest.Eventually(t, 10*time.Second, fmt.Sprintf("%d members in the room", n), func() (bool, error) {
		members, err := framework.DemoMembers(httpURL(t, backendURL, "/stats"))
		return err == nil && members == n, err
	})
}

func readMessage(t testing.TB, conn *websocket.Conn) (int, []byte) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	kind, payload, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("reading a message: %v", err)
	}
	return kind, payload
}

// TestBackendLifecycle is the path every user takes: spawn, watch it start,
// talk to it from two browsers, leave, and see it swept and deleted.
func TestBackendLifecycle(t *testing.T) {
	e := framework.Deployed(t)
	const grace = 5
	backend := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, GracePeriodSeconds: framework.Seconds(grace)})
	if !backend.Spawned || backend.Name == "" || backend.URL == "" {
		t.Fatalf("spawn answered %+v", backend)
	}

	seen := e.WaitForState(t, backend.Name, "Ready", 90*time.Second)
	got := strings.Join(framework.States(seen), ",")
	if !strings.HasPrefix(got, "Pending") || !strings.HasSuffix(got, "Ready") || strings.Contains(got, "Failed") {
		t.Fatalf("status stream showed %s, want Pending … Ready", got)
	}

	// The ready URL sends a browser on to the backend. The replica behind
	// the Service may not be the one whose stream said Ready, and its cache
	// can be milliseconds behind: like a client honouring Retry-After, ask
	// again after a 409.
	clustertest.Eventually(t, 5*time.Second, "302 from the ready URL", func() (bool, error) {
		req, _ := http.NewRequest("GET", backend.ReadyURL, nil)
		req.Header.Set("Authorization", "Bearer "+e.Token)
		resp, err := e.HTTP.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusConflict {
			return false, fmt.Errorf("409 (still starting, says this replica)")
		}
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != backend.URL {
			t.Fatalf("ready URL answered %d → %q, want 302 → %s", resp.StatusCode, resp.Header.Get("Location"), backend.URL)
		}
		return true, nil
	})

	alice, bob := dialRoom(t, backend.URL), dialRoom(t, backend.URL)
	waitForMembers(t, backend.URL, 2)
	// Plain HTTP through the router while the sockets are open.
	page, err := http.Get(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != 200 || !bytes.Contains(body, []byte("spawner demo room")) {
		t.Fatalf("GET %s answered %d: %.200s", backend.URL, page.StatusCode, body)
	}

	// Both members receive every message intact, whatever its shape.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	messages := []struct {
		kind    int
		payload []byte
	}{
		{websocket.TextMessage, []byte("hello from alice")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 0xfe, 0xff}},
		{websocket.BinaryMessage, big},
	}
	for _, m := range messages {
		if err := alice.WriteMessage(m.kind, m.payload); err != nil {
			t.Fatal(err)
		}
		for who, conn := range map[string]*websocket.Conn{"alice": alice, "bob": bob} {
			kind, payload := readMessage(t, conn)
			if kind != m.kind || !bytes.Equal(payload, m.payload) {
				t.Fatalf("%s got a %d-byte message of kind %d, want %d bytes of kind %d", who, len(payload), kind, len(m.payload), m.kind)
			}
		}
	}
	// A fragmented text message: three frames on the wire, one message to read.
	w, err := bob.NextWriter(websocket.TextMessage)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"frag", "ment", "ed"} {
		w.Write([]byte(part))
		if f, ok := w.(interface{ Flush() error }); ok {
			f.Flush()
		}
	}
	w.Close()
	if _, payload := readMessage(t, alice); string(payload) != "fragmented" {
		t.Fatalf("alice got %q, want the reassembled \"fragmented\"", payload)
	}

	// Closing the last connection starts the grace period; the backend must
	// be swept after it — not before — and then deleted.
	alice.Close()
	bob.Close()
	closed := time.Now()
	swept := e.WaitForState(t, backend.Name, "Swept", time.Duration(grace+30)*time.Second)
	sweptAt, err := time.Parse(time.RFC3339, swept[len(swept)-1].Time)
	if err != nil {
		t.Fatalf("Swept event time %q: %v", swept[len(swept)-1].Time, err)
	}
	// Condition times have one-second resolution.
	if early := closed.Add(grace * time.Second).Sub(sweptAt); early > time.Second {
		t.Fatalf("swept %v before the grace period ended", early)
	}
	if reason := swept[len(swept)-1].Reason; reason != "Idle" {
		t.Errorf("swept with reason %q, want Idle", reason)
	}
	e.WaitGone(t, backend.Name, 60*time.Second)
}

// TestKeyedSpawnGivesEveryCallerTheSameRoom: many callers ask for the same
// key at once; exactly one backend starts, and all of them talk in it.
func TestKeyedSpawnGivesEveryCallerTheSameRoom(t *testing.T) {
	e := framework.Deployed(t)
	key := fmt.Sprintf("e2e-room-%d", time.Now().UnixNano())
	const callers = 40
	answers := make([]framework.SpawnResponse, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, Key: key, GracePeriodSeconds: framework.Seconds(5)})
		}()
	}
	wg.Wait()
	created := 0
	for _, a := range answers {
		if a.Name != answers[0].Name {
			t.Fatalf("callers got different backends: %s and %s", answers[0].Name, a.Name)
		}
		if a.Spawned {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d callers were told they spawned the backend, want exactly 1", created)
	}
	var list struct {
		Backends []struct {
			Name string `json:"name"`
		} `json:"backends"`
	}
	e.Do(t, "GET", "/backends?key="+url.QueryEscape(key), nil, &list)
	if len(list.Backends) != 1 || list.Backends[0].Name != answers[0].Name {
		t.Fatalf("GET /backends?key= lists %+v, want just %s", list.Backends, answers[0].Name)
	}

	e.WaitForState(t, answers[0].Name, "Ready", 90*time.Second)
	members := []*websocket.Conn{dialRoom(t, answers[0].URL), dialRoom(t, answers[callers/2].URL), dialRoom(t, answers[callers-1].URL)}
	waitForMembers(t, answers[0].URL, 3)
	if err := members[1].WriteMessage(websocket.TextMessage, []byte("one room")); err != nil {
		t.Fatal(err)
	}
	for i, m := range members {
		if _, payload := readMessage(t, m); string(payload) != "one room" {
			t.Fatalf("member %d got %q", i, payload)
		}
	}
}

// TestFailuresEndWithAReason: a backend that cannot run ends Failed with a
// reason a user can act on, and its pod does not linger.
func TestFailuresEndWithAReason(t *testing.T) {
	e := framework.Deployed(t)
	cases := map[string]struct {
		req    framework.SpawnRequest
		reason string
	}{
		"image that does not exist": {framework.SpawnRequest{Image: "localhost/spawner-no-such-image:dev"}, "ImagePullFailed"},
		"app that exits":            {framework.SpawnRequest{Image: framework.DemoImage, Env: map[string]string{"DEMO_EXIT_AFTER_SECONDS": "1", "DEMO_EXIT_CODE": "3"}}, "AppExited"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			backend := e.Spawn(t, tc.req)
			seen := e.WaitForState(t, backend.Name, "Failed", 120*time.Second)
			last := seen[len(seen)-1]
			if last.Reason != tc.reason || last.Message == "" {
				t.Errorf("Failed with reason %q message %q, want reason %s and a message", last.Reason, last.Message, tc.reason)
			}
			clustertest.Eventually(t, 60*time.Second, "pod of the failed backend deleted", func() (bool, error) {
				_, err := e.Kube.CoreV1().Pods(framework.BackendNamespace).Get(context.Background(), backend.Name, metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			})
		})
	}
}

// TestMaxLifetimeEndsABackendInUse: the hard limit holds even while a
// client is connected, and the client sees its connection close.
func TestMaxLifetimeEndsABackendInUse(t *testing.T) {
	e := framework.Deployed(t)
	backend := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage, MaxLifetimeSeconds: framework.Seconds(15), GracePeriodSeconds: framework.Seconds(300)})
	e.WaitForState(t, backend.Name, "Ready", 90*time.Second)
	conn := dialRoom(t, backend.URL)
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, _, err := conn.ReadMessage(); err == nil {
		t.Fatal("read a message from a room nobody wrote to")
	} else if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		t.Fatal("the connection stayed open past the backend's max lifetime")
	}
	var status framework.StatusEvent
	e.Do(t, "GET", "/backend/"+backend.Name+"/status", nil, &status)
	if status.State != "Deleted" && status.Reason != "LifetimeExceeded" {
		t.Errorf("status after the lifetime: %+v, want reason LifetimeExceeded (or gone)", status)
	}
	e.WaitGone(t, backend.Name, 60*time.Second)
}

// TestOnlyTokenHoldersGetIn: the control API needs its bearer token, a
// backend needs its own access token, and the sidecar's status port is not
// reachable through the router.
func TestOnlyTokenHoldersGetIn(t *testing.T) {
	e := framework.Deployed(t)
	resp, err := e.HTTP.Post(e.Control+"/spawn", "application/json", strings.NewReader(`{"image":"`+framework.DemoImage+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("spawn without a token answered %d, want 401", resp.StatusCode)
	}

	backend := e.Spawn(t, framework.SpawnRequest{Image: framework.DemoImage})
	e.WaitForState(t, backend.Name, "Ready", 90*time.Second)
	stats := func() map[string]int64 {
		resp, err := http.Get(httpURL(t, backend.URL, "/stats"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s map[string]int64
		json.NewDecoder(resp.Body).Decode(&s)
		return s
	}
	before := stats()

	u, _ := url.Parse(backend.URL)
	q := u.Query()
	q.Set("spawner_token", strings.Repeat("0", len(q.Get("spawner_token"))))
	u.RawQuery = q.Encode()
	wrong := u.String()
	noToken := strings.SplitN(backend.URL, "?", 2)[0]
	for name, target := range map[string]string{"wrong token": wrong, "no token": noToken} {
		resp, err := http.Get(httpURL(t, target, "/headers"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: router answered %d, want 403", name, resp.StatusCode)
		}
		if _, resp, err := websocket.DefaultDialer.Dial(wsURL(t, target, "/ws"), nil); err == nil {
			t.Errorf("%s: WebSocket upgrade succeeded", name)
		} else if resp != nil && resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: WebSocket upgrade answered %d, want 403", name, resp.StatusCode)
		}
	}
	if after := stats(); after["requests"] != before["requests"] {
		t.Errorf("refused requests reached the backend: %d requests before, %d after", before["requests"], after["requests"])
	}

	// /_events is the sidecar's status endpoint on its status port; through
	// the router it can only ever reach the app (which has no such page).
	for _, path := range []string{"/_events", "/healthz/../_events", "/%2e%2e/_events"} {
		resp, err := http.Get(httpURL(t, backend.URL, path))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(resp.Header.Get("Content-Type"), "event-stream") || bytes.Contains(body, []byte("live_connections")) {
			t.Errorf("GET %s through the router reached the sidecar's status port: %d %q", path, resp.StatusCode, body)
		}
	}
}
