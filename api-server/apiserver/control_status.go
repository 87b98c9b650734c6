package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// StatusResponse is one state of a backend.
type StatusResponse struct {
	State   string `json:"state"`
	Time    string `json:"time"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Activity is why the backend is alive (status.activity, written by the
	// sweeper); in the current state only, absent until first reported.
	Activity *spawnerv1.BackendActivity `json:"activity,omitempty"`
}

// StateDeleted is the last event of a status stream whose backend is gone.
const StateDeleted = "Deleted"

// milestones are the phases in order with their conditions (the stream sends
// them in this order).
var milestones = lifecycle.Milestones()

func formatTime(t metav1.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// transition is the state of phase index i, and false when not reached.
func transition(slab *spawnerv1.SessionLivedBackend, i int) (StatusResponse, bool) {
	m := milestones[i]
	c := meta.FindStatusCondition(slab.Status.Conditions, m.Condition)
	if m.Phase == lifecycle.Pending {
		// Pending starts when the backend is created; PodCreated (if any) explains it.
		st := StatusResponse{State: string(lifecycle.Pending), Time: formatTime(slab.CreationTimestamp), Reason: "Created"}
		if c != nil && c.Status == metav1.ConditionTrue {
			st.Reason, st.Message = c.Reason, c.Message
		}
		return st, true
	}
	if c == nil || c.Status != metav1.ConditionTrue {
		return StatusResponse{}, false
	}
	return StatusResponse{State: string(m.Phase), Time: formatTime(c.LastTransitionTime), Reason: c.Reason, Message: c.Message}, true
}

func phaseIndex(p spawnerv1.BackendPhase) int {
	for i, m := range milestones {
		if m.Phase == p {
			return i
		}
	}
	return 0
}

// currentStatus is the backend's current state.
func currentStatus(slab *spawnerv1.SessionLivedBackend) StatusResponse {
	phase := lifecycle.Phase(slab)
	st, ok := transition(slab, phaseIndex(phase))
	if !ok {
		st, _ = transition(slab, 0)
	}
	if st.Message == "" && phase == lifecycle.Failed {
		st.Message = slab.Status.Message
	}
	st.Activity = activityOf(slab)
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	slab, ok := s.backendOr404(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, currentStatus(slab))
}

// handleStream sends every past transition of a backend, then the live ones,
// as server-sent events, until it failed or is deleted.
// finalStateWait bounds how long a status stream whose backend is gone
// waits for the informer's delete handler to hand it the backend's last
// state (it normally arrives within microseconds of the cache change).
const finalStateWait = 2 * time.Second

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	wake, unsubscribe := s.watchers.subscribe(name)
	defer unsubscribe()
	slab, ok := s.backendOr404(w, r)
	if !ok {
		return
	}
	uid := slab.UID
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(st StatusResponse) {
		b, _ := json.Marshal(st)
		fmt.Fprintf(w, "data: %s\n\n", b)
	}
	// ?activity=true adds an "activity" event (the current state with its
	// status.activity) whenever the sweeper writes a change. They are named
	// events, so an EventSource's onmessage (the waiting page) and clients
	// that only want the transitions never see them.
	wantActivity := r.URL.Query().Get("activity") == "true"
	var lastActivity *spawnerv1.BackendActivity
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	last := -1
	for {
		slab, ok := s.slab(name)
		if !ok || slab.UID != uid {
			// Transitions it made just before it was deleted (Swept, Failed)
			// come first: they say why it ended. The informer updates the
			// cache before it runs the handlers, so the delete handler that
			// records the final state may still be on its way: wait for it
			// briefly.
			if final, ok := s.awaitFinalState(r.Context(), wake, name, uid); ok {
				for i := last + 1; i < len(milestones); i++ {
					if st, ok := transition(final, i); ok {
						send(st)
						last = i
					}
				}
			}
			send(StatusResponse{State: StateDeleted, Time: time.Now().UTC().Format(time.RFC3339), Reason: "Deleted", Message: "the backend no longer exists"})
			rc.Flush()
			return
		}
		for i := last + 1; i < len(milestones); i++ {
			if st, ok := transition(slab, i); ok {
				if i == phaseIndex(lifecycle.Phase(slab)) {
					st.Activity = activityOf(slab)
				}
				send(st)
				last = i
			}
		}
		if a := slab.Status.Activity; wantActivity && a != nil && !equality.Semantic.DeepEqual(a, lastActivity) {
			lastActivity = a.DeepCopy()
			io.WriteString(w, "event: activity\n")
			send(currentStatus(slab))
		}
		rc.Flush()
		if milestones[max(last, 0)].Phase == lifecycle.Failed {
			return
		}
		select {
		case <-wake:
		case <-keepAlive.C:
			io.WriteString(w, ": keep-alive\n\n")
			rc.Flush()
		case <-r.Context().Done():
			return
		case <-s.shuttingDown:
			return
		}
	}
}

// awaitFinalState returns the last state of the deleted backend name (uid),
// waiting up to finalStateWait for the delete handler to record it.
func (s *Server) awaitFinalState(ctx context.Context, wake <-chan struct{}, name string, uid types.UID) (*spawnerv1.SessionLivedBackend, bool) {
	timer := time.NewTimer(finalStateWait)
	defer timer.Stop()
	for {
		if final, ok := s.watchers.finalState(name, uid); ok {
			return final, true
		}
		select {
		case <-wake:
		case <-timer.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

func wantsJSON(r *http.Request) bool {
	a := r.Header.Get("Accept")
	return strings.Contains(a, "application/json") && !strings.Contains(a, "text/html")
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	slab, ok := s.backendOr404(w, r)
	if !ok {
		return
	}
	name := slab.Name
	done := false
	if lifecycle.Phase(slab) != lifecycle.Ready && live(slab) && slab.Annotations[spawnerv1.AnnotationPool] != "" {
		// Part of a claim's burst, as its spawn is: the Ready records
		// of this replica's claims wait for it (recordClaimedAfter).
		s.claims.start()
		defer s.claims.end()
		slab, done = s.awaitClaim(r.Context(), slab)
	}
	st := currentStatus(slab)
	switch phase := lifecycle.Phase(slab); {
	case phase == lifecycle.Ready || (live(slab) && done):
		tok, ok := s.creds.access.tokenFor(slab)
		if !ok {
			writeError(w, http.StatusInternalServerError, "backend has no access-token salt")
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, s.backendURL(name, tok), http.StatusFound)
	case !live(slab):
		if wantsJSON(r) {
			writeJSON(w, http.StatusGone, map[string]any{"error": "backend has ended", "status": st})
			return
		}
		writePage(w, http.StatusGone, endedPage, name, st)
	default:
		w.Header().Set("Retry-After", "1")
		if wantsJSON(r) {
			writeJSON(w, http.StatusConflict, map[string]any{"error": "backend is not ready yet", "status": st})
			return
		}
		writePage(w, http.StatusConflict, awaitingControlPage, name, st)
	}
}

// claimDone reports whether a backend's warm claim is complete, as this
// replica's caches have it: it is bound to a pool's warm pod and holds it
// (the pod was Ready when taken and its claim hook, if any, took the
// session: a slab holds its pod only then). Such a backend is Ready at its
// take: the ready URL redirects it, and the router routes it (routable),
// although its status may say Ready only a write later (recordClaimedAfter
// runs after the spawn answered, once no other claim is in flight here).
func (s *Server) claimDone(slab *spawnerv1.SessionLivedBackend) bool {
	return slab.Annotations[spawnerv1.AnnotationPool] != "" && isWarm(slab) && s.claimOver(slab)
}

// claimCacheWait is how long the ready URL of a pool backend whose claim
// this replica's caches do not show over yet waits for them before it asks
// the API. The client comes straight from the spawn's answer, so the
// claim's events are on their way (milliseconds); a pod GET in their place
// took 37 ms on the local cluster while the claim's other writes ran, and a
// replica whose caches lag seconds (under a burst) asks the API after this.
const claimCacheWait = 50 * time.Millisecond

// awaitClaim is a live pool backend's slab and whether its warm claim is
// done (claimDone): from this replica's caches, waiting up to
// claimCacheWait for them, then from the API: the pod the slab names (the
// cache may not have the take yet), and a cached slab as the API has it
// now (the cache may not have its binding yet, or a lost take bound another
// pod since). A slab the cache does not have was just read from the API:
// it is not read again.
func (s *Server) awaitClaim(ctx context.Context, slab *spawnerv1.SessionLivedBackend) (*spawnerv1.SessionLivedBackend, bool) {
	if s.claimOver(slab) {
		return slab, s.claimDone(slab)
	}
	cached := s.cached(slab)
	if cached {
		wake, unsubscribe := s.watchers.subscribe(slab.Name)
		defer unsubscribe()
		timeout := time.NewTimer(claimCacheWait)
		defer timeout.Stop()
	wait:
		for {
			if cur, ok := s.cachedSlab(slab.Name); ok && cur.UID == slab.UID {
				slab = cur
			}
			if s.claimOver(slab) {
				return slab, s.claimDone(slab)
			}
			select {
			case <-wake:
			case <-timeout.C:
				break wait
			case <-ctx.Done():
				return slab, false
			}
		}
	}
	if s.heldLive(ctx, slab) {
		return slab, true
	}
	if !cached {
		return slab, false
	}
	if cur := s.claimedState(ctx, slab); cur != slab {
		slab = cur
		return slab, s.claimDone(slab) || s.heldLive(ctx, slab)
	}
	return slab, false
}

// heldLive reports whether slab holds the warm pod it names, as the API
// has the pod (or the cache, when it shows it held).
func (s *Server) heldLive(ctx context.Context, slab *spawnerv1.SessionLivedBackend) bool {
	if slab.Annotations[spawnerv1.AnnotationPool] == "" || !isWarm(slab) {
		return false
	}
	name, _ := spawnerv1.PodNameOf(slab)
	p, err := s.cachedOrLivePod(ctx, slab, name)
	return err == nil && spawnerv1.HoldsPod(slab, p)
}

// cached reports whether slab is this replica's cached copy, not one just
// read from the API (s.slab falls back to a GET for a backend the cache
// does not have yet: reading it again would tell nothing new).
func (s *Server) cached(slab *spawnerv1.SessionLivedBackend) bool {
	c, ok := s.cachedSlab(slab.Name)
	return ok && c == slab
}

// claimedState is a pool backend that this replica's cache has neither
// Ready nor done claiming (claimOver), as the API has it (one bound cold
// starts like any cold backend, and the cache follows it: a client polling
// its ready URL made a GET per poll, 634 slab GETs in a burst of 100 claims
// that sent 13 cold). The client may ask a replica whose
// cache is behind the claim: by milliseconds on a quiet cluster, by seconds
// under a burst of claims (70 of 100 burst claims got their 409 "not ready
// yet" from a cache that did not even have the bind yet, with Retry-After:
// 1). One GET answers that; it is only for pool backends the cache has
// neither Ready nor done claiming.
func (s *Server) claimedState(ctx context.Context, slab *spawnerv1.SessionLivedBackend) *spawnerv1.SessionLivedBackend {
	cur, err := s.slabs.SpawnerV1().SessionLivedBackends(slab.Namespace).Get(ctx, slab.Name, metav1.GetOptions{})
	if err != nil || cur.UID != slab.UID {
		return slab
	}
	s.recordSlab(cur)
	return cur
}
