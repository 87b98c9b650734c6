package apiserver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func (s *Server) backendURL(name, tok string) string {
	return s.routes.BackendURL(name) + "?" + tokenParam + "=" + url.QueryEscape(tok)
}

func (s *Server) spawnResponse(r *http.Request, slab *spawnerv1.SessionLivedBackend, spawned bool) (SpawnResponse, error) {
	tok, ok := s.creds.access.tokenFor(slab)
	if !ok {
		return SpawnResponse{}, fmt.Errorf("backend %s has no %s annotation; its URL cannot be derived", slab.Name, spawnerv1.AnnotationAccessTokenSalt)
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
	if rerr == nil && req.Pool == "" {
		rerr = s.checkPodSecurity(slab) // a pool spawn's, once it is the pool's (below)
	}
	if rerr != nil {
		s.metrics.spawnInvalid.Inc()
		writeError(w, rerr.status, rerr.msg)
		return
	}
	slab.Labels[spawnerv1.LabelTokenID] = tid
	var pool *spawnerv1.BackendPool
	if req.Pool != "" {
		s.claims.start() // until answered: the claims' Ready records wait for it
		defer s.claims.end()
		p, err := s.poolLister.Get(req.Pool)
		if err != nil {
			s.metrics.spawnInvalid.Inc()
			writeError(w, http.StatusNotFound, fmt.Sprintf("no BackendPool named %q in namespace %s", req.Pool, s.cfg.BackendNamespace))
			return
		}
		rerr := fromPool(slab, p, req)
		if rerr == nil {
			rerr = s.checkPodSecurity(slab)
		}
		if rerr != nil {
			s.metrics.spawnInvalid.Inc()
			writeError(w, rerr.status, rerr.msg)
			return
		}
		pool = p
	}
	// The cap applies to new backends only: asking again for a key that has
	// a live backend hands that one out.
	keyLive := req.Key != "" && oldestLive(s.slabsForKey(req.Key)) != nil
	if !keyLive {
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
		pre     *corev1.Pod
		pick    warmPick
	)
	if pool != nil {
		pick = s.pickWarm(r.Context(), slab, pool, pool.TemplateHash(), keyLive)
		pre = pick.pod
	}
	created := time.Now()
	switch {
	case req.Key != "":
		got, spawned, err = s.getOrCreate(r.Context(), req.Key, slab, pick.cold)
	case pick.cold:
		got, err = s.createNamed(r.Context(), slab)
		spawned = err == nil
	default:
		slab.GenerateName = slabNamePrefix
		got, err = s.slabs.SpawnerV1().SessionLivedBackends(s.cfg.BackendNamespace).Create(r.Context(), slab, metav1.CreateOptions{})
		spawned = err == nil
	}
	if pre != nil && !spawned {
		s.taken.release(pre.UID) // not ours to claim
	}
	if spawned {
		s.recordSlab(got)
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
	var warm *bool
	if pool != nil {
		warmNow := isWarm(got) && s.claimOver(got) // a slab created bound to a pod is warm once it holds it
		if spawned && pick.cold {
			// Created bound cold: the pool had no free pod (pickWarm).
			warmNow = false
			s.metrics.claimDuration.Observe(time.Since(created).Seconds())
			s.metrics.claimCold.Inc()
		} else if spawned {
			// Ours to claim: bind it to a warm pod or to the cold path. A
			// claim that fails half-way leaves the slab claiming; the
			// controller binds it within its claim timeout, so the answer
			// still names a backend that will start.
			session := ClaimSession{Backend: got.Name, Key: req.Key, Env: req.Env, Labels: req.Labels}
			bound, ok, err := s.claim(r.Context(), got, pool, pool.TemplateHash(), session, pre, created)
			if err == nil && ok && pick.listed {
				if name, _ := spawnerv1.PodNameOf(bound); name == pre.Name {
					s.metrics.claimFromList.Inc()
				}
			}
			if err != nil {
				s.log.Error("claim failed; the controller will bind the backend", "name", got.Name, "pool", pool.Name, "err", err)
			} else {
				got, warmNow = bound, ok
				s.metrics.claimDuration.Observe(time.Since(created).Seconds())
				if warmNow {
					s.metrics.claimWarm.Inc()
					// Its status says Ready a write later; the answer
					// and the ready URL (claimDone) need not wait.
					pod, _ := spawnerv1.PodNameOf(got)
					s.recordClaimedAfter(r.Context(), got, pool, pod, created)
				} else {
					s.metrics.claimCold.Inc()
				}
			}
		} else if !s.claimOver(got) {
			// Another spawn of this key (in any replica) is claiming
			// this backend right now: answer once it is bound, so that
			// "warm" says what every caller of the key gets.
			got = s.awaitBind(r.Context(), got)
			warmNow = isWarm(got) && s.claimOver(got)
		}
		warm = &warmNow
	}
	resp, err := s.spawnResponse(r, got, spawned)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	resp.Warm = warm
	code := http.StatusOK
	if spawned {
		s.limits.created(tid, got.Namespace+"/"+got.Name)
		code = http.StatusCreated
		s.metrics.spawnCreated.Inc()
		s.log.Info("backend spawned", "name", got.Name, "image", req.Image, "key", req.Key, "pool", req.Pool, "warm", warm != nil && *warm)
	} else {
		s.metrics.spawnExisting.Inc()
	}
	writeJSON(w, code, resp)
}

// live reports whether a backend may still serve (and so be handed out for its key).
func live(slab *spawnerv1.SessionLivedBackend) bool {
	return slab.DeletionTimestamp == nil && !lifecycle.IsEnding(lifecycle.Phase(slab))
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
// cold: the slab is created bound cold (its pod annotation is its own
// name: pickWarm found no free pod in its pool).
func (s *Server) getOrCreate(ctx context.Context, key string, slab *spawnerv1.SessionLivedBackend, cold bool) (*spawnerv1.SessionLivedBackend, bool, error) {
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
		if cold {
			bindCold(obj)
		}
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

// bindCold binds a pool backend about to be created to the cold path: its
// pod is named after it, as any cold backend's (spawnerv1.PodNameOf), and
// no warm pod's node label stays.
func bindCold(slab *spawnerv1.SessionLivedBackend) {
	slab.Annotations[spawnerv1.AnnotationPod] = slab.Name
	delete(slab.Labels, spawnerv1.LabelNode)
}

// createNamed creates an unkeyed pool backend bound cold: its name must be
// known before the create (bindCold), so it draws it here as the API
// server's generateName would (slabNamePrefix and five random characters),
// and draws again when the name is taken.
func (s *Server) createNamed(ctx context.Context, slab *spawnerv1.SessionLivedBackend) (*spawnerv1.SessionLivedBackend, error) {
	client := s.slabs.SpawnerV1().SessionLivedBackends(s.cfg.BackendNamespace)
	for attempt := 0; ; attempt++ {
		obj := slab.DeepCopy()
		obj.Name = slabNamePrefix + randomSuffix(5)
		bindCold(obj)
		created, err := client.Create(ctx, obj, metav1.CreateOptions{})
		if err == nil || !apierrors.IsAlreadyExists(err) || attempt == 7 {
			return created, err
		}
	}
}

// randomSuffix is n characters of the alphabet the API server's
// generateName draws from (no vowels, no look-alikes).
func randomSuffix(n int) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}
