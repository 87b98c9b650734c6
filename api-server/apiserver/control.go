package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// ControlHandler is the control API: spawn, status, ready, terminate, list.
func (s *Server) ControlHandler() http.Handler {
	rt := newRoutes()
	s.commonRoutes(rt)
	rt.handle("POST /spawn", s.authed(s.handleSpawn, false))
	rt.handle("GET /backends", s.authed(s.handleList, false))
	rt.handle("GET /backend/{name}/status", s.authed(s.handleStatus, true))
	rt.handle("GET /backend/{name}/status/stream", s.authed(s.handleStream, true))
	rt.handle("GET /backend/{name}/ready", s.authed(s.handleReady, true))
	rt.handle("POST /backend/{name}/terminate", s.authed(s.handleTerminate, false))
	return s.instrument("control", rt.handler(func(r *http.Request) string {
		return "no such endpoint: " + r.Method + " " + r.URL.Path
	}))
}

func (s *Server) commonRoutes(rt *routes) {
	rt.handleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	rt.handleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		select {
		case <-s.shuttingDown:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		default:
		}
		if !s.synced() || !s.creds.tokens.loaded.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "caches not synced\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	rt.handle("GET /metrics", s.metrics.reg)
}

// writeJSON answers with a JSON body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError answers {"error": msg}.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// bearer extracts the token of an Authorization: Bearer header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return "", false
	}
	return strings.TrimSpace(h[7:]), true
}

// authed requires a bearer token; with backendToken, the backend's own access
// token (query spawner_token) is accepted too, for read-only per-backend
// endpoints a browser may open (ready, status, status/stream).
func (s *Server) authed(h http.HandlerFunc, backendToken bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := bearer(r); ok && s.creds.tokens.valid(tok) {
			h(w, r)
			return
		}
		if backendToken {
			if t := r.URL.Query().Get(tokenParam); t != "" {
				if slab, ok := s.slab(r.PathValue("name")); ok && tokenMatches(slab, t) {
					h(w, r)
					return
				}
			}
		}
		s.metrics.authFailures.Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="spawner"`)
		writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
	})
}

// controlBase is the base URL of the control API for links in answers.
func (s *Server) controlBase(r *http.Request) string {
	if s.cfg.ControlURL != "" {
		return strings.TrimRight(s.cfg.ControlURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) backendURL(name, tok string) string {
	return s.publicBase + "/p/" + name + "/?" + tokenParam + "=" + url.QueryEscape(tok)
}

func (s *Server) spawnResponse(r *http.Request, slab *spawnerv1.SessionLivedBackend, spawned bool) (SpawnResponse, error) {
	tok, ok := s.creds.access.tokenFor(slab)
	if !ok {
		return SpawnResponse{}, fmt.Errorf("backend %s has no %s annotation; its URL cannot be derived", slab.Name, AnnotationAccessTokenSalt)
	}
	base := s.controlBase(r) + "/backend/" + slab.Name
	q := "?" + tokenParam + "=" + url.QueryEscape(tok)
	return SpawnResponse{
		Name: slab.Name, URL: s.backendURL(slab.Name, tok),
		ReadyURL: base + "/ready" + q, StatusURL: base + "/status" + q, Spawned: spawned,
	}, nil
}

func (s *Server) handleSpawn(w http.ResponseWriter, r *http.Request) {
	tok, _ := bearer(r) // authed checked it
	tid := tokenID(tok)
	if le := s.limits.allow(tid); le != nil {
		s.log.Info("spawn refused: rate limit", "tokenID", tid, "retryAfter", le.retryAfter)
		le.write(w)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxSpawnBody)
	salt := newSalt()
	req, slab, rerr := parseSpawn(r.Body, s.cfg.BackendNamespace, salt, hashToken(s.creds.access.token(salt)))
	if rerr != nil {
		s.metrics.spawnInvalid.Inc()
		writeError(w, rerr.status, rerr.msg)
		return
	}
	slab.Labels[LabelTokenID] = tid
	// The cap applies to new backends only: asking again for a key that has
	// a live backend hands that one out.
	if req.Key == "" || oldestLive(s.slabsForKey(req.Key)) == nil {
		if le := s.limits.admit(tid); le != nil {
			s.log.Info("spawn refused: live-backend cap", "tokenID", tid)
			le.write(w)
			return
		}
	}
	var (
		got     *spawnerv1.SessionLivedBackend
		spawned bool
		err     error
	)
	if req.Key == "" {
		slab.GenerateName = slabNamePrefix
		got, err = s.slabs.SpawnerV1().SessionLivedBackends(s.cfg.BackendNamespace).Create(r.Context(), slab, metav1.CreateOptions{})
		spawned = err == nil
	} else {
		got, spawned, err = s.getOrCreate(r.Context(), req.Key, slab)
	}
	if err != nil {
		s.metrics.spawnErrors.Inc()
		status, msg := http.StatusBadGateway, "creating the backend: "+err.Error()
		var se apierrors.APIStatus
		if errors.As(err, &se) && apierrors.IsInvalid(err) {
			status = http.StatusUnprocessableEntity
		} else if apierrors.IsForbidden(err) || apierrors.IsTooManyRequests(err) {
			status = http.StatusServiceUnavailable // e.g. a ResourceQuota is exhausted
		}
		s.log.Error("spawn failed", "key", req.Key, "err", err)
		writeError(w, status, msg)
		return
	}
	resp, err := s.spawnResponse(r, got, spawned)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	code := http.StatusOK
	if spawned {
		s.limits.created(tid, got.Namespace+"/"+got.Name)
		code = http.StatusCreated
		s.metrics.spawnCreated.Inc()
		s.log.Info("backend spawned", "name", got.Name, "image", req.Image, "key", req.Key)
	} else {
		s.metrics.spawnExisting.Inc()
	}
	writeJSON(w, code, resp)
}

// live reports whether a backend may still serve (and so be handed out for its key).
func live(slab *spawnerv1.SessionLivedBackend) bool {
	return slab.DeletionTimestamp == nil && !lifecycle.IsEnding(phaseOf(slab))
}

func phaseOf(slab *spawnerv1.SessionLivedBackend) spawnerv1.BackendPhase {
	if slab.Status.Phase != "" {
		return slab.Status.Phase
	}
	return lifecycle.PhaseOf(slab.Status.Conditions)
}

// generationOf parses the generation of a keyed name k-<hash16>-<n>.
func generationOf(name, key string) int {
	prefix := "k-" + keyHash(key)[:16] + "-"
	if !strings.HasPrefix(name, prefix) {
		return 0
	}
	n, err := strconv.Atoi(name[len(prefix):])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// oldestLive picks the backend to hand out among a key's backends.
func oldestLive(slabs []*spawnerv1.SessionLivedBackend) *spawnerv1.SessionLivedBackend {
	var best *spawnerv1.SessionLivedBackend
	for _, sl := range slabs {
		if !live(sl) {
			continue
		}
		if best == nil || sl.CreationTimestamp.Before(&best.CreationTimestamp) ||
			(sl.CreationTimestamp.Equal(&best.CreationTimestamp) && generationOf(sl.Name, sl.Spec.Key) < generationOf(best.Name, best.Spec.Key)) {
			best = sl
		}
	}
	return best
}

// getOrCreate returns the key's live backend, creating one when there is
// none. Atomicity comes from the API server: backends of a key have
// deterministic names k-<hash>-<generation>, so concurrent creators of the
// same generation (in any replica) collide on AlreadyExists and all but one
// adopt the winner's backend. A generation whose backend ended is skipped.
func (s *Server) getOrCreate(ctx context.Context, key string, slab *spawnerv1.SessionLivedBackend) (*spawnerv1.SessionLivedBackend, bool, error) {
	cached := s.slabsForKey(key)
	if l := oldestLive(cached); l != nil {
		return l, false, nil
	}
	client := s.slabs.SpawnerV1().SessionLivedBackends(s.cfg.BackendNamespace)
	// Slow path: the cache may lag; ask the API server (a consistent list).
	list, err := client.List(ctx, metav1.ListOptions{LabelSelector: spawnerv1.LabelKeyHash + "=" + keyHashLabel(key)})
	if err != nil {
		return nil, false, err
	}
	fresh := make([]*spawnerv1.SessionLivedBackend, 0, len(list.Items))
	gen := 0
	for i := range list.Items {
		if list.Items[i].Spec.Key == key {
			fresh = append(fresh, &list.Items[i])
		}
	}
	if l := oldestLive(fresh); l != nil {
		return l, false, nil
	}
	for _, sl := range append(cached, fresh...) {
		gen = max(gen, generationOf(sl.Name, key))
	}
	gen++
	for attempts := 0; attempts < 64; attempts++ {
		obj := slab.DeepCopy()
		obj.Name = keyedName(key, gen)
		created, err := client.Create(ctx, obj, metav1.CreateOptions{})
		if err == nil {
			return created, true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, false, err
		}
		existing, err := client.Get(ctx, obj.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue // deleted in between: try the same generation again
		case err != nil:
			return nil, false, err
		case existing.Spec.Key == key && live(existing):
			return existing, false, nil
		}
		gen++ // that generation ended (or a hash collision took the name)
	}
	return nil, false, fmt.Errorf("no free backend name for key %q after 64 attempts", key)
}

// StatusResponse is one state of a backend.
type StatusResponse struct {
	State   string `json:"state"`
	Time    string `json:"time"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// StateDeleted is the last event of a status stream whose backend is gone.
const StateDeleted = "Deleted"

// phaseConditions maps phases, in order, to the condition that records them.
var phaseConditions = []struct {
	phase     spawnerv1.BackendPhase
	condition string
}{
	{lifecycle.Pending, lifecycle.ConditionPodCreated},
	{lifecycle.Scheduled, lifecycle.ConditionScheduled},
	{lifecycle.Running, lifecycle.ConditionRunning},
	{lifecycle.Ready, lifecycle.ConditionReady},
	{lifecycle.Swept, lifecycle.ConditionSwept},
	{lifecycle.Terminating, lifecycle.ConditionTerminating},
	{lifecycle.Failed, lifecycle.ConditionFailed},
}

func formatTime(t metav1.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// transition is the state of phase index i, and false when not reached.
func transition(slab *spawnerv1.SessionLivedBackend, i int) (StatusResponse, bool) {
	pc := phaseConditions[i]
	var c *metav1.Condition
	for j := range slab.Status.Conditions {
		if slab.Status.Conditions[j].Type == pc.condition {
			c = &slab.Status.Conditions[j]
		}
	}
	if pc.phase == lifecycle.Pending {
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
	return StatusResponse{State: string(pc.phase), Time: formatTime(c.LastTransitionTime), Reason: c.Reason, Message: c.Message}, true
}

func phaseIndex(p spawnerv1.BackendPhase) int {
	for i, pc := range phaseConditions {
		if pc.phase == p {
			return i
		}
	}
	return 0
}

// currentStatus is the backend's current state.
func currentStatus(slab *spawnerv1.SessionLivedBackend) StatusResponse {
	st, ok := transition(slab, phaseIndex(phaseOf(slab)))
	if !ok {
		st, _ = transition(slab, 0)
	}
	if st.Message == "" && phaseOf(slab) == lifecycle.Failed {
		st.Message = slab.Status.Message
	}
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	slab, ok := s.slab(r.PathValue("name"))
	if !ok {
		writeError(w, http.StatusNotFound, "no backend named "+r.PathValue("name"))
		return
	}
	writeJSON(w, http.StatusOK, currentStatus(slab))
}

// handleStream sends every past transition of a backend, then the live ones,
// as server-sent events, until it failed or is deleted.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	wake, unsubscribe := s.watchers.subscribe(name)
	defer unsubscribe()
	slab, ok := s.slab(name)
	if !ok {
		writeError(w, http.StatusNotFound, "no backend named "+name)
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
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	last := -1
	for {
		slab, ok := s.slab(name)
		if !ok || slab.UID != uid {
			send(StatusResponse{State: StateDeleted, Time: time.Now().UTC().Format(time.RFC3339), Reason: "Deleted", Message: "the backend no longer exists"})
			rc.Flush()
			return
		}
		for i := last + 1; i < len(phaseConditions); i++ {
			if st, ok := transition(slab, i); ok {
				send(st)
				last = i
			}
		}
		rc.Flush()
		if phaseConditions[max(last, 0)].phase == lifecycle.Failed {
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

func wantsJSON(r *http.Request) bool {
	a := r.Header.Get("Accept")
	return strings.Contains(a, "application/json") && !strings.Contains(a, "text/html")
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	slab, ok := s.slab(name)
	if !ok {
		writeError(w, http.StatusNotFound, "no backend named "+name)
		return
	}
	st := currentStatus(slab)
	switch phase := phaseOf(slab); {
	case phase == lifecycle.Ready:
		tok, ok := s.creds.access.tokenFor(slab)
		if !ok {
			writeError(w, http.StatusInternalServerError, "backend has no access-token salt")
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, s.backendURL(name, tok), http.StatusFound)
	case lifecycle.IsEnding(phase) || slab.DeletionTimestamp != nil:
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

// TerminateRequest is the optional body of POST /backend/{name}/terminate.
type TerminateRequest struct {
	Hard bool `json:"hard"`
}

func (s *Server) handleTerminate(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req TerminateRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body too large")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
			return
		}
	}
	if _, ok := s.slab(name); !ok {
		writeError(w, http.StatusNotFound, "no backend named "+name)
		return
	}
	ns := s.cfg.BackendNamespace
	ctx := r.Context()
	if req.Hard {
		zero := int64(0)
		bg := metav1.DeletePropagationBackground
		if err := s.kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			writeError(w, http.StatusBadGateway, "deleting the pod: "+err.Error())
			return
		}
		if err := s.slabs.SpawnerV1().SessionLivedBackends(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
			writeError(w, http.StatusBadGateway, "deleting the backend: "+err.Error())
			return
		}
		s.log.Info("backend terminated (hard)", "name", name)
		writeJSON(w, http.StatusAccepted, map[string]any{"name": name, "state": StateDeleted, "hard": true})
		return
	}
	client := s.slabs.SpawnerV1().SessionLivedBackends(ns)
	var final spawnerv1.BackendPhase
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		final = phaseOf(cur)
		if lifecycle.IsEnding(final) || cur.DeletionTimestamp != nil {
			return nil // already on its way out
		}
		if !lifecycle.Record(&cur.Status, lifecycle.ConditionSwept, lifecycle.ReasonTerminationRequested,
			"termination requested through the api-server", cur.Generation) {
			return nil
		}
		updated, err := client.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err == nil {
			final = updated.Status.Phase
		}
		return err
	})
	switch {
	case apierrors.IsNotFound(err):
		writeError(w, http.StatusNotFound, "no backend named "+name)
		return
	case err != nil:
		writeError(w, http.StatusBadGateway, "recording the termination request: "+err.Error())
		return
	}
	s.log.Info("backend termination requested", "name", name, "phase", final)
	writeJSON(w, http.StatusAccepted, map[string]any{"name": name, "state": final, "hard": false})
}

// BackendInfo is one entry of GET /backends.
type BackendInfo struct {
	Name    string         `json:"name"`
	Key     string         `json:"key,omitempty"`
	Created string         `json:"created"`
	Status  StatusResponse `json:"status"`
	URL     string         `json:"url,omitempty"`
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	var slabs []*spawnerv1.SessionLivedBackend
	if key, ok := r.URL.Query()["key"]; ok {
		slabs = s.slabsForKey(key[0])
	} else {
		slabs, _ = s.slabLister.List(labels.Everything())
	}
	sort.Slice(slabs, func(i, j int) bool {
		if !slabs[i].CreationTimestamp.Equal(&slabs[j].CreationTimestamp) {
			return slabs[i].CreationTimestamp.Before(&slabs[j].CreationTimestamp)
		}
		return slabs[i].Name < slabs[j].Name
	})
	out := make([]BackendInfo, 0, len(slabs))
	for _, sl := range slabs {
		bi := BackendInfo{Name: sl.Name, Key: sl.Spec.Key, Created: formatTime(sl.CreationTimestamp), Status: currentStatus(sl)}
		if tok, ok := s.creds.access.tokenFor(sl); ok {
			bi.URL = s.backendURL(sl.Name, tok)
		}
		out = append(out, bi)
	}
	writeJSON(w, http.StatusOK, map[string]any{"backends": out})
}

var _ = corev1.PodRunning
