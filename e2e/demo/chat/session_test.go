package chat

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func sessionOf(t *testing.T, url string, key string) (room string, claim *Session) {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/session", nil)
	if key != "" {
		req.Header.Set("Spawner-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Room  string
		Claim *Session
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	return got.Room, got.Claim
}

// TestRoomNameComesFromTheClaim: the room is named after the key its claim
// hook received; before any claim, after the Spawner-Key header (a backend
// started cold), else "lobby".
func TestRoomNameComesFromTheClaim(t *testing.T) {
	server := httptest.NewServer(NewRoom().Handler())
	defer server.Close()
	if room, claim := sessionOf(t, server.URL, ""); room != "lobby" || claim != nil {
		t.Errorf("unclaimed: %q %v", room, claim)
	}
	if room, _ := sessionOf(t, server.URL, "doc%2042"); room != "doc 42" {
		t.Errorf("cold, keyed: room %q, want doc 42", room)
	}
	resp, err := http.Post(server.URL+ClaimHookPath, "application/json",
		strings.NewReader(`{"backend":"b","key":"doc-7","env":{"A":"1"},"labels":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("claim: %d", resp.StatusCode)
	}
	room, claim := sessionOf(t, server.URL, "other")
	if room != "doc-7" || claim == nil || claim.Backend != "b" || claim.Env["A"] != "1" {
		t.Errorf("claimed: room %q claim %+v", room, claim)
	}
}

func TestClaimHookCanBeMadeToFail(t *testing.T) {
	r := NewRoom()
	r.SetClaimHook(HookFail)
	server := httptest.NewServer(r.Handler())
	defer server.Close()
	resp, err := http.Post(server.URL+ClaimHookPath, "application/json", strings.NewReader(`{"key":"k"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 500 {
		t.Errorf("failing hook: %d", resp.StatusCode)
	}
	if room, claim := sessionOf(t, server.URL, ""); room != "lobby" || claim != nil {
		t.Errorf("a refused claim was kept: %q %v", room, claim)
	}
}
