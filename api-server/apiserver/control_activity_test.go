package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/wire"
)

// setActivity writes status.activity as the sweeper would.
func (e *testEnv) setActivity(name string, a *spawnerv1.BackendActivity) {
	e.t.Helper()
	ctx := context.Background()
	cur, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	cur.Status.Activity = a
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.eventually(func() bool {
		s, ok := e.s.slab(name)
		return ok && s.Status.Activity != nil && s.Status.Activity.Connections == a.Connections
	})
}

// TestStatusCarriesActivityAndTheStreamFollowsIt: GET status answers with
// status.activity, and ?activity=true adds an "activity" event per change.
func TestStatusCarriesActivityAndTheStreamFollowsIt(t *testing.T) {
	e := newTestEnv(t, "")
	e.addBackend("slab-act", lifecycle.Ready)
	if st := decode[StatusResponse](t, e.do("GET", "/backend/slab-act/status", "")); st.Activity != nil {
		t.Fatalf("activity before the sweeper wrote any: %+v", st.Activity)
	}
	idle := metav1.NewTime(time.Now().Add(-time.Minute).Truncate(time.Second))
	e.setActivity("slab-act", &spawnerv1.BackendActivity{Connections: 0, LastActivity: wire.ActivityWebSocketClosed, LastActivityTime: &idle, IdleSince: &idle})
	st := decode[StatusResponse](t, e.do("GET", "/backend/slab-act/status", ""))
	if st.State != "Ready" || st.Activity == nil || st.Activity.LastActivity != wire.ActivityWebSocketClosed || !st.Activity.IdleSince.Equal(&idle) {
		t.Fatalf("status %+v activity %+v", st, st.Activity)
	}

	req, _ := http.NewRequest("GET", e.control.URL+"/backend/slab-act/status/stream?activity=true", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := make(chan [2]string, 32) // event name, data
	go func() {
		sc := bufio.NewScanner(resp.Body)
		name := ""
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				name = n
			} else if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events <- [2]string{name, d}
				name = ""
			}
		}
		close(events)
	}()
	next := func() (string, StatusResponse) {
		t.Helper()
		select {
		case ev := <-events:
			var st StatusResponse
			if err := json.Unmarshal([]byte(ev[1]), &st); err != nil {
				t.Fatal(err)
			}
			return ev[0], st
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
		return "", StatusResponse{}
	}
	// The transitions as before, the current one with its activity, then
	// the activity event.
	var name string
	for name, st = next(); st.State != "Ready"; name, st = next() {
		if name != "" || st.Activity != nil {
			t.Fatalf("transition %s %+v", name, st)
		}
	}
	if st.Activity == nil || name != "" {
		t.Fatalf("current transition without its activity: %+v", st)
	}
	if name, st = next(); name != "activity" || st.Activity == nil || st.Activity.Connections != 0 {
		t.Fatalf("first activity event %q %+v", name, st)
	}
	e.setActivity("slab-act", &spawnerv1.BackendActivity{Connections: 2, WebSockets: 2, LastActivity: wire.ActivityWebSocketOpen})
	if name, st = next(); name != "activity" || st.State != "Ready" || st.Activity.Connections != 2 || st.Activity.IdleSince != nil {
		t.Fatalf("activity event %q %+v", name, st.Activity)
	}
}

// TestKeepalive: POST keepalive records keepaliveTime (and, while idle, a new
// sweepAfter) in status.activity; it needs the control token and a live
// backend.
func TestKeepalive(t *testing.T) {
	e := newTestEnv(t, "")
	tok := e.addBackend("slab-ka", lifecycle.Ready)
	before := time.Now().Truncate(time.Second)
	r := e.do("POST", "/backend/slab-ka/keepalive", "")
	if r.StatusCode != 200 {
		t.Fatalf("keepalive %d %s", r.StatusCode, readBody(t, r))
	}
	var kr KeepaliveResponse
	json.NewDecoder(r.Body).Decode(&kr)
	r.Body.Close()
	slab, _ := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), "slab-ka", metav1.GetOptions{})
	a := slab.Status.Activity
	if a == nil || a.KeepaliveTime == nil || a.KeepaliveTime.Time.Before(before.Truncate(time.Microsecond)) || a.LastActivity != wire.ActivityKeepalive ||
		a.SweepAfter == nil || !a.SweepAfter.Time.Equal(a.KeepaliveTime.Time.Add(slab.Spec.GracePeriod()).Truncate(time.Second)) || kr.SweepAfter == "" {
		t.Fatalf("activity after keepalive: %+v (answer %+v)", a, kr)
	}
	if len(slab.Status.Conditions) == 0 || lifecycle.Phase(slab) != lifecycle.Ready {
		t.Fatalf("keepalive touched the conditions: %+v", slab.Status)
	}
	// A backend token is not a control token.
	req, _ := http.NewRequest("POST", e.control.URL+"/backend/slab-ka/keepalive?spawner_token="+tok, nil)
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != 401 {
		t.Fatalf("keepalive with a backend token: %d", resp.StatusCode)
	}
	if r := e.do("GET", "/backend/slab-ka/keepalive", ""); r.StatusCode != 405 {
		t.Fatalf("GET keepalive: %d", r.StatusCode)
	}
	if r := e.do("POST", "/backend/nope/keepalive", ""); r.StatusCode != 404 {
		t.Fatalf("unknown backend: %d", r.StatusCode)
	}
	e.updatePhase("slab-ka", lifecycle.Swept)
	if r := e.do("POST", "/backend/slab-ka/keepalive", ""); r.StatusCode != 409 || !strings.Contains(readBody(t, r), "ended") {
		t.Fatalf("keepalive on a swept backend: %d", r.StatusCode)
	}
}
