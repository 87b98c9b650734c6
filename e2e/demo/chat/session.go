package chat

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sync"
)

// ClaimHookPath is where the demo receives its session when a spawn claims
// it from a BackendPool with spec.claimHook.path set to it (docs/pools.md):
// the pool's pods started before anyone asked for them, so the room learns
// its name (the spawn's key) here.
const ClaimHookPath = "/spawner/claim"

// Session is what a claim hook receives: the JSON the api-server POSTs.
type Session struct {
	Backend string            `json:"backend"`
	Key     string            `json:"key"`
	Env     map[string]string `json:"env"`
	Labels  map[string]string `json:"labels"`
}

// Claim hook behaviours, for tests of a failing hook (DEMO_CLAIM_HOOK).
const (
	HookAccept = ""     // store the session, answer 204
	HookFail   = "fail" // answer 500
	HookHang   = "hang" // never answer (until the caller gives up)
)

type session struct {
	mu      sync.Mutex
	mode    string
	claimed *Session
}

// SetClaimHook chooses how the room answers its claim hook (Hook*).
func (r *Room) SetClaimHook(mode string) {
	r.session.mu.Lock()
	r.session.mode = mode
	r.session.mu.Unlock()
}

func (r *Room) serveClaim(w http.ResponseWriter, req *http.Request) {
	r.session.mu.Lock()
	mode := r.session.mode
	r.session.mu.Unlock()
	switch mode {
	case HookFail:
		http.Error(w, "this room refuses claims (DEMO_CLAIM_HOOK=fail)", http.StatusInternalServerError)
		return
	case HookHang:
		<-req.Context().Done()
		return
	}
	var s Session
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 64<<10)).Decode(&s); err != nil {
		http.Error(w, "bad session: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.session.mu.Lock()
	r.session.claimed = &s
	r.session.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// serveSession tells the page (and tests) the room's name and what the claim
// hook received. The name is the spawn's key: from the hook for a claimed
// warm pod; for a backend started cold (no hook call), from the
// Spawner-Key header every routed request carries; "lobby" without a key.
func (r *Room) serveSession(w http.ResponseWriter, req *http.Request) {
	r.session.mu.Lock()
	claimed := r.session.claimed
	r.session.mu.Unlock()
	room := "lobby"
	if claimed != nil && claimed.Key != "" {
		room = claimed.Key
	} else if k, err := url.PathUnescape(req.Header.Get("Spawner-Key")); err == nil && k != "" {
		room = k
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"room": room, "claim": claimed})
}
