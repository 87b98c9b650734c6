package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
)

func decode[T any](t *testing.T, resp *http.Response) T {
	t.Helper()
	var v T
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSpawnCreatesBackend(t *testing.T) {
	e := newTestEnv(t, "")
	resp := e.do("POST", "/spawn", `{"image":"localhost/spawner-demo:dev","env":{"A":"1"}}`)
	if resp.StatusCode != 201 {
		t.Fatalf("status %d: %s", resp.StatusCode, readBody(t, resp))
	}
	sr := decode[SpawnResponse](t, resp)
	if !sr.Spawned || !strings.HasPrefix(sr.Name, "slab-") {
		t.Fatalf("%+v", sr)
	}
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), sr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := e.s.creds.access.tokenFor(slab)
	if sr.URL != "http://public.example:8081/p/"+sr.Name+"/?spawner_token="+tok {
		t.Fatalf("url %q", sr.URL)
	}
	if !tokenMatches(slab, tok) {
		t.Fatal("stored hash does not match the token in the URL")
	}
	if !strings.HasPrefix(sr.ReadyURL, e.control.URL+"/backend/"+sr.Name+"/ready?spawner_token=") ||
		!strings.HasPrefix(sr.StatusURL, e.control.URL+"/backend/"+sr.Name+"/status?spawner_token=") {
		t.Fatalf("ready/status urls %q %q", sr.ReadyURL, sr.StatusURL)
	}
	// Nothing is created on a 4xx.
	for _, body := range []string{`{"image":"nginx","bogus":1}`, `{"image":"nginx","port":9091}`} {
		if r := e.do("POST", "/spawn", body); r.StatusCode/100 != 4 {
			t.Fatalf("%s: %d", body, r.StatusCode)
		}
	}
	list, _ := e.slabs.SpawnerV1().SessionLivedBackends(testNS).List(context.Background(), metav1.ListOptions{})
	if len(list.Items) != 1 {
		t.Fatalf("%d backends", len(list.Items))
	}
}

func TestGetOrCreateByKey(t *testing.T) {
	e := newTestEnv(t, "")
	const callers = 100
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		names   = map[string]int{}
		urls    = map[string]bool{}
		spawned int
	)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := e.do("POST", "/spawn", `{"image":"nginx","key":"room-1"}`)
			sr := decode[SpawnResponse](t, resp)
			mu.Lock()
			defer mu.Unlock()
			names[sr.Name]++
			urls[sr.URL] = true
			if sr.Spawned {
				spawned++
				if resp.StatusCode != 201 {
					t.Errorf("spawned with %d", resp.StatusCode)
				}
			} else if resp.StatusCode != 200 {
				t.Errorf("existing with %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if len(names) != 1 || spawned != 1 || len(urls) != 1 {
		t.Fatalf("names %v, spawned %d, urls %d", names, spawned, len(urls))
	}
	first := keyedName("room-1", 1)
	if names[first] != callers {
		t.Fatalf("want %s, got %v", first, names)
	}
	// A swept backend's key gets a fresh backend, and then that one again.
	e.eventually(func() bool { _, ok := e.s.slab(first); return ok })
	e.updatePhase(first, lifecycle.Swept)
	sr := decode[SpawnResponse](t, e.do("POST", "/spawn", `{"image":"nginx","key":"room-1"}`))
	if !sr.Spawned || sr.Name != keyedName("room-1", 2) {
		t.Fatalf("after sweep: %+v", sr)
	}
	sr2 := decode[SpawnResponse](t, e.do("POST", "/spawn", `{"image":"nginx","key":"room-1"}`))
	if sr2.Spawned || sr2.Name != sr.Name || sr2.URL != sr.URL {
		t.Fatalf("second call after sweep: %+v vs %+v", sr2, sr)
	}
	// Another key is independent.
	if sr := decode[SpawnResponse](t, e.do("POST", "/spawn", `{"image":"nginx","key":"room-2"}`)); !sr.Spawned {
		t.Fatal("room-2 not spawned")
	}
	bl := decode[struct{ Backends []BackendInfo }](t, e.do("GET", "/backends?key=room-1", ""))
	if len(bl.Backends) != 2 || bl.Backends[0].Status.State != "Swept" || bl.Backends[1].Key != "room-1" {
		t.Fatalf("list %+v", bl)
	}
	all := decode[struct{ Backends []BackendInfo }](t, e.do("GET", "/backends", ""))
	if len(all.Backends) != 3 {
		t.Fatalf("list all %+v", all)
	}
}

func TestStatusReadyTerminate(t *testing.T) {
	e := newTestEnv(t, "")
	tok := e.addBackend("slab-st", lifecycle.Running)
	st := decode[StatusResponse](t, e.do("GET", "/backend/slab-st/status", ""))
	if st.State != "Running" || st.Reason != lifecycle.ConditionRunning || st.Time == "" {
		t.Fatalf("%+v", st)
	}
	if r := e.do("GET", "/backend/nope/status", ""); r.StatusCode != 404 {
		t.Fatal(r.StatusCode)
	}
	// Not ready: 409 with the waiting page (or JSON).
	req, _ := http.NewRequest("GET", e.control.URL+"/backend/slab-st/ready?spawner_token="+tok, nil)
	req.Header.Set("Accept", "text/html")
	resp, _ := noRedirect.Do(req)
	if body := readBody(t, resp); resp.StatusCode != 409 || !strings.Contains(body, "EventSource") {
		t.Fatalf("ready while running: %d %s", resp.StatusCode, body)
	}
	if r := e.do("GET", "/backend/nope/ready", ""); r.StatusCode != 404 {
		t.Fatal(r.StatusCode)
	}
	e.updatePhase("slab-st", lifecycle.Ready)
	r := e.do("GET", "/backend/slab-st/ready", "")
	if r.StatusCode != 302 || r.Header.Get("Location") != "http://public.example:8081/p/slab-st/?spawner_token="+tok {
		t.Fatalf("ready: %d %q", r.StatusCode, r.Header.Get("Location"))
	}
	// Soft terminate records Swept/TerminationRequested.
	r = e.do("POST", "/backend/slab-st/terminate", "")
	if r.StatusCode != 202 {
		t.Fatalf("terminate %d %s", r.StatusCode, readBody(t, r))
	}
	slab, _ := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), "slab-st", metav1.GetOptions{})
	if slab.Status.Phase != lifecycle.Swept {
		t.Fatalf("phase %s", slab.Status.Phase)
	}
	if c := meta.FindStatusCondition(slab.Status.Conditions, lifecycle.ConditionSwept); c == nil || c.Reason != lifecycle.ReasonTerminationRequested {
		t.Fatalf("swept condition %+v", c)
	}
	if r := e.do("POST", "/backend/slab-st/terminate", `{"hard":false,"x":1}`); r.StatusCode != 400 {
		t.Fatal("unknown field accepted")
	}
	// Hard terminate deletes pod and slab.
	r = e.do("POST", "/backend/slab-st/terminate", `{"hard":true}`)
	if r.StatusCode != 202 {
		t.Fatalf("hard terminate %d", r.StatusCode)
	}
	if _, err := e.kube.CoreV1().Pods(testNS).Get(context.Background(), "slab-st", metav1.GetOptions{}); err == nil {
		t.Fatal("pod not deleted")
	}
	e.eventually(func() bool { _, ok := e.s.slab("slab-st"); return !ok })
	if r := e.do("POST", "/backend/slab-st/terminate", ""); r.StatusCode != 404 {
		t.Fatal(r.StatusCode)
	}
}

func TestStatusStream(t *testing.T) {
	e := newTestEnv(t, "")
	e.addBackend("slab-ss", lifecycle.Scheduled)
	resp := e.do("GET", "/backend/slab-ss/status/stream", "")
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatal(resp.Header)
	}
	events := make(chan StatusResponse, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var st StatusResponse
				json.Unmarshal([]byte(d), &st)
				events <- st
			}
		}
	}()
	next := func() string {
		select {
		case st, ok := <-events:
			if !ok {
				return "<closed>"
			}
			return st.State
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
		return ""
	}
	if a, b := next(), next(); a != "Pending" || b != "Scheduled" {
		t.Fatalf("past: %s %s", a, b)
	}
	e.updatePhase("slab-ss", lifecycle.Ready) // Running and Ready at once
	if a, b := next(), next(); a != "Running" || b != "Ready" {
		t.Fatalf("live: %s %s", a, b)
	}
	e.slabs.SpawnerV1().SessionLivedBackends(testNS).Delete(context.Background(), "slab-ss", metav1.DeleteOptions{})
	if a, b := next(), next(); a != StateDeleted || b != "<closed>" {
		t.Fatalf("end: %s %s", a, b)
	}
}

func TestStatusStreamEndsOnFailed(t *testing.T) {
	e := newTestEnv(t, "")
	e.addBackend("slab-f", lifecycle.Failed)
	resp := e.do("GET", "/backend/slab-f/status/stream", "")
	body := readBody(t, resp) // returns only because the stream ended
	if !strings.Contains(body, `"state":"Pending"`) || !strings.Contains(body, `"state":"Failed","time"`) || !strings.Contains(body, "AppExited") {
		t.Fatal(body)
	}
}

// TestStatusStreamShowsSweptBeforeDeleted: the controller deletes a swept
// backend moments after writing Swept; a stream that wakes only after both
// reached the cache still says Swept (why it ended) before Deleted. The
// stream's wakeups are held back (watchers' lock) until the cache has lost
// the backend, which is the order an e2e run met.
func TestStatusStreamShowsSweptBeforeDeleted(t *testing.T) {
	e := newTestEnv(t, "")
	e.addBackend("slab-sw", lifecycle.Ready)
	resp := e.do("GET", "/backend/slab-sw/status/stream", "")
	defer resp.Body.Close()
	states := make(chan string, 16)
	go func() {
		defer close(states)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var st StatusResponse
				json.Unmarshal([]byte(d), &st)
				states <- st.State
			}
		}
	}()
	for _, want := range []string{"Pending", "Scheduled", "Running", "Ready"} {
		if got := <-states; got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}

	e.s.watchers.mu.Lock()
	ctx := context.Background()
	cur, _ := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(ctx, "slab-sw", metav1.GetOptions{})
	lifecycle.Record(&cur.Status, lifecycle.ConditionSwept, lifecycle.ReasonIdle, "idle 8 s", 0)
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.slabs.SpawnerV1().SessionLivedBackends(testNS).Delete(ctx, "slab-sw", metav1.DeleteOptions{})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := e.s.slabLister.Get("slab-sw"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cache kept the deleted backend")
		}
	}
	e.s.watchers.mu.Unlock()

	var rest []string
	for st := range states {
		rest = append(rest, st)
	}
	if strings.Join(rest, " ") != "Swept "+StateDeleted {
		t.Fatalf("after Ready the stream said %v, want [Swept %s]", rest, StateDeleted)
	}
}
