package apiserver

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func (e *testEnv) slabCount() int {
	e.t.Helper()
	list, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(list.Items)
}

// wantLimited checks a 429 with Retry-After and a JSON error.
func wantLimited(t *testing.T, resp *http.Response, retryAfter, says string) {
	t.Helper()
	body := readBody(t, resp)
	var e struct{ Error string }
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != retryAfter ||
		json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, says) {
		t.Fatalf("got %d Retry-After %q %s; want 429, Retry-After %s and an error saying %q", resp.StatusCode, resp.Header.Get("Retry-After"), body, retryAfter, says)
	}
}

func TestSpawnRateLimitPerToken(t *testing.T) {
	e := newTestEnv(t, "")
	now := time.Unix(1_000_000, 0)
	e.s.limits = newSpawnLimits(0.5, 2, 0, e.s.slabInf)
	e.s.limits.now = func() time.Time { return now }
	for i := range 2 {
		if resp := e.do("POST", "/spawn", `{"image":"demo"}`); resp.StatusCode != http.StatusCreated {
			t.Fatalf("spawn %d within the burst: %d %s", i, resp.StatusCode, readBody(t, resp))
		}
	}
	wantLimited(t, e.do("POST", "/spawn", `{"image":"demo"}`), "2", "rate limit")
	if n := e.slabCount(); n != 2 {
		t.Errorf("%d backends after a refused spawn, want 2", n)
	}
	// Another token has its own bucket.
	req, _ := http.NewRequest("POST", e.control.URL+"/spawn", strings.NewReader(`{"image":"demo"}`))
	req.Header.Set("Authorization", "Bearer second-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("another token: %d %s", resp.StatusCode, readBody(t, resp))
	}
	resp.Body.Close()
	// The bucket refills at 0.5/s: one more after 2 s.
	now = now.Add(2 * time.Second)
	if resp := e.do("POST", "/spawn", `{"image":"demo"}`); resp.StatusCode != http.StatusCreated {
		t.Fatalf("after the refill: %d %s", resp.StatusCode, readBody(t, resp))
	}
}

func TestLiveBackendCapPerToken(t *testing.T) {
	e := newTestEnv(t, "")
	e.s.limits = newSpawnLimits(0, 0, 2, e.s.slabInf)
	var names []string
	for i := range 2 {
		resp := e.do("POST", "/spawn", `{"image":"demo","key":"k`+string(rune('0'+i))+`"}`)
		var sr SpawnResponse
		json.Unmarshal([]byte(readBody(t, resp)), &sr)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("spawn %d under the cap: %d", i, resp.StatusCode)
		}
		names = append(names, sr.Name)
	}
	// Refused at once, before the cache has seen the two (counted as just created).
	wantLimited(t, e.do("POST", "/spawn", `{"image":"demo"}`), "10", "cap is 2")
	if n := e.slabCount(); n != 2 {
		t.Errorf("%d backends after a refused spawn, want 2", n)
	}
	e.eventually(func() bool { _, err := e.s.slabLister.Get(names[1]); return err == nil })
	// Asking again for a live key is not a new backend: no cap.
	if resp := e.do("POST", "/spawn", `{"image":"demo","key":"k1"}`); resp.StatusCode != http.StatusOK {
		t.Fatalf("existing key under a full cap: %d %s", resp.StatusCode, readBody(t, resp))
	}
	// One ends: room for one more.
	e.updatePhase(names[0], lifecycle.Terminating)
	e.eventually(func() bool { s, err := e.s.slabLister.Get(names[0]); return err == nil && !live(s) })
	if resp := e.do("POST", "/spawn", `{"image":"demo"}`); resp.StatusCode != http.StatusCreated {
		t.Fatalf("after one ended: %d %s", resp.StatusCode, readBody(t, resp))
	}
	wantLimited(t, e.do("POST", "/spawn", `{"image":"demo"}`), "10", "cap is 2")
}

func TestSpawnLabelsTheToken(t *testing.T) {
	e := newTestEnv(t, "")
	resp := e.do("POST", "/spawn", `{"image":"demo"}`)
	var sr SpawnResponse
	json.Unmarshal([]byte(readBody(t, resp)), &sr)
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), sr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := slab.Labels[spawnerv1.LabelTokenID]; got != tokenID(testToken) || len(got) != 32 || strings.Contains(got, testToken) {
		t.Errorf("label %s=%q, want the token's 128-bit hash", spawnerv1.LabelTokenID, got)
	}
}
