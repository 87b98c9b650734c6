package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/controller/reconciler"
)

// Claims: a spawn naming a BackendPool binds its new slab to one of the
// pool's warm pods. docs/pools.md ("Claiming, and how it stays atomic")
// explains the protocol; the Kubernetes API is its only lock: the slab is
// created first (a keyed name collides there, so one caller of a key goes on
// to claim), already bound to the warm pod it is about to take (preBind),
// then that pod is taken with a patch carrying the pod's resourceVersion.
// Only a claim that lost that pod (or had none to name) binds the slab
// again, with a patch carrying the slab's resourceVersion.

// maxCachedLosses is how many takes of cached pods (preBind's included) a
// spawn may lose before it asks the API for the pool's free pods
// (freshCandidates): a take lost to another spawn says the cache offered a
// pod already taken, and the cache lags most under a burst, when it matters
// most. In a burst of 100 claims against 100 warm pods on the local
// cluster, the replica whose cache lagged lost 70 takes (the other 6), each
// a write of 0.5–1 s under that load, and its claims that passed
// reconciler.ClaimTimeout were closed cold; it then tried up to 8 cached
// pods before the list. Each list costs the API server the whole pool's
// free pods, serialised: with 1 (a list after the first lost take) a burst
// answered at p50 1.9 s, p90 8.1 s; with 2, at p50 1.0 s, max 6.7 s (make
// bench-pool, 2026-12-01 20:19 and 20:41 UTC).
const maxCachedLosses = 2

// fromPool makes slab (built from the request) a backend of pool: the
// pool's spec, with the request's key and, when given, grace period and
// lifetime; the request's labels also go on the pod. The slab starts out
// claiming (spawnerv1.AnnotationPool without AnnotationPod).
func fromPool(slab *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, req *SpawnRequest) *requestError {
	spec := pool.BackendSpec()
	spec.Key = req.Key
	if req.GracePeriodSeconds != nil {
		g := *req.GracePeriodSeconds
		spec.GracePeriodSeconds = &g
	}
	if req.MaxLifetimeSeconds != nil {
		m := *req.MaxLifetimeSeconds
		spec.MaxLifetimeSeconds = &m
	}
	if len(req.Env) > 0 {
		if pool.Spec.ClaimHook == nil {
			return &requestError{http.StatusUnprocessableEntity, field.Forbidden(field.NewPath("env"), fmt.Sprintf(
				"pool %q has no claim hook (spec.claimHook): its warm backends started before this spawn, so per-spawn env cannot reach them", pool.Name)).Error()}
		}
		// A claimed warm pod receives env through the hook; a cold start
		// of the pool's template (the pool had no pod to give) gets it in
		// its app container's environment, as any cold spawn.
		if len(spec.Template.Containers) > 0 {
			app := &spec.Template.Containers[0]
			app.Env = slices.DeleteFunc(app.Env, func(e corev1.EnvVar) bool { _, given := req.Env[e.Name]; return given })
			app.Env = append(app.Env, sortedEnv(req.Env)...)
		}
	}
	for k, v := range req.Labels {
		if spec.Template.Metadata.Labels == nil {
			spec.Template.Metadata.Labels = map[string]string{}
		}
		spec.Template.Metadata.Labels[k] = v
	}
	if errs := spawnerv1.ValidateSpec(&spec, field.NewPath("pool", pool.Name, "spec")); len(errs) > 0 {
		return &requestError{http.StatusUnprocessableEntity, "the pool cannot make a backend: " + errs.ToAggregate().Error()}
	}
	slab.Spec = spec
	slab.Annotations[spawnerv1.AnnotationPool] = pool.Name
	if h := pool.Spec.ClaimHook; h != nil {
		slab.Annotations[spawnerv1.AnnotationClaimHookPath] = h.Path
	}
	return nil
}

// claimable reports whether a claim may take pod p for pool at template
// hash: controlled by the pool (unclaimed), of its current template, not
// labelled with a backend, alive and Ready (its app listens). It reads only
// what the api-server's trimmed pod cache keeps (trimPod).
func claimable(p *corev1.Pod, pool *spawnerv1.BackendPool, hash string) bool {
	if p.Labels[spawnerv1.LabelPool] != pool.Name || p.Labels[spawnerv1.LabelBackend] != "" ||
		p.Labels[spawnerv1.LabelPoolTemplateHash] != hash || p.DeletionTimestamp != nil ||
		p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
		return false
	}
	ref := metav1.GetControllerOf(p)
	if ref == nil || ref.Kind != "BackendPool" || ref.UID != pool.UID {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// warmCandidates are the pool's pods a claim may take, from the cache
// (claimable). They come shuffled, so concurrent spawns mostly try
// different pods, and those this replica owns first (peers), so concurrent
// spawns of different replicas do too.
func (s *Server) warmCandidates(pool *spawnerv1.BackendPool, hash string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, obj := range s.podInf.GetStore().List() {
		if p, ok := obj.(*corev1.Pod); ok && claimable(p, pool, hash) {
			out = append(out, p)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return s.peers.mineFirst(out)
}

// preBind names, in a pool backend about to be created, the warm pod its
// claim takes first (AnnotationPod, and the pod's node as the node label):
// when the take wins, which is every claim but the losers of a race, the
// claim is two sequential API writes, the create and the take. A third, the
// bind, was the slowest: 12–36 ms of a ~43 ms warm spawn on the local
// cluster (a merge patch of a CRD whose schema holds a pod template; make
// bench-pool, 2026-12-01). Until the slab holds the pod (HoldsPod) it is
// still claiming, whatever the annotation says: nobody routes to that pod,
// records the slab Ready or deletes the pod for it, and the controller
// closes the claim after ClaimTimeout like an unbound one. It returns the
// pod, reserved in takenHere, or nil (the cache has no claimable pod: the
// slab is created unbound).
func (s *Server) preBind(slab *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, hash string) *corev1.Pod {
	for _, p := range s.warmCandidates(pool, hash) {
		if !s.taken.reserve(p.UID, pool.Name, time.Now()) {
			continue
		}
		s.bindTo(slab, p)
		return p
	}
	return nil
}

// bindTo names warm pod p in a slab about to be created (preBind).
func (s *Server) bindTo(slab *spawnerv1.SessionLivedBackend, p *corev1.Pod) {
	slab.Annotations[spawnerv1.AnnotationPod] = p.Name
	if p.Spec.NodeName != "" {
		slab.Labels[spawnerv1.LabelNode] = p.Spec.NodeName
	}
}

// freshCandidates are the pool's claimable pods as the Kubernetes API has
// them now (a list, not the cache), shuffled. A pod this claim took and
// deleted (its hook failed) is not among them: it is being deleted. A claim
// asks for them (listFree) once, when the cache gave it no pod: the
// cache lags the API (a pod the pool reports Ready may not be Ready in it
// yet, and a cached resourceVersion that changed since makes the take
// conflict although the pod is still free). On the local cluster a claim
// went cold 0.3 s after its pool reported its pod Ready; this list costs one
// request on the way to a cold start (~0.6 s), never on a warm claim that
// the cache could serve.
func (s *Server) freshCandidates(ctx context.Context, pool *spawnerv1.BackendPool, hash string) ([]*corev1.Pod, error) {
	list, err := s.kube.CoreV1().Pods(pool.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: spawnerv1.LabelPool + "=" + pool.Name + ",!" + spawnerv1.LabelBackend})
	if err != nil {
		return nil, err
	}
	var out []*corev1.Pod
	for i := range list.Items {
		// Trimmed as the cache's are: the claim hook is called at the
		// address trimPod records (a listed pod had none, so a claim with
		// a hook failed every listed pod as "no address" and deleted it).
		if p := trimPod(&list.Items[i], s.upstreamPort); claimable(p, pool, hash) {
			out = append(out, p)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return s.peers.mineFirst(out), nil
}

// takenHere is the warm pods this replica's claims are taking or took a
// moment ago (takenHereFor), so that its concurrent claims try other pods
// first: they pick from the same cache, which learns of a take only by
// watch. It is a hint, never a lock: the take's resourceVersion
// precondition is what keeps two spawns, in this replica or another, from
// taking one pod. In a burst of 100 claims against 100 warm pods on the
// local cluster, 247 takes were sent for 100 pods taken (each conflict one
// more write to an API server already seconds behind). A take in flight
// (reserved, not settled or released yet) is also what a claim that found
// no pod waits for (awaitTakes).
type takenHere struct {
	mu sync.Mutex
	at map[types.UID]*takeHere
	// back is when a take of each pool's pods last came back here.
	back map[string]time.Time
}

// takeHere is one pod reserved in takenHere: when, for which pool, and
// done, closed once its take came back (settle, release).
type takeHere struct {
	at   time.Time
	pool string
	done chan struct{}
}

// finishLocked closes e's done, once, and records when in back.
func (t *takenHere) finishLocked(e *takeHere) {
	select {
	case <-e.done:
	default:
		close(e.done)
		if t.back == nil {
			t.back = map[string]time.Time{}
		}
		t.back[e.pool] = time.Now()
	}
}

// lastBack is when a take of pool's pods last came back here.
func (t *takenHere) lastBack(pool string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.back[pool]
}

// takenHereFor is how long a pod taken here is skipped: its take reaches
// this replica's cache by watch in milliseconds, seconds under a burst.
const takenHereFor = 5 * time.Second

// reserve marks pod uid of pool as being taken here, unless a claim here is
// taking it or took it within takenHereFor (then false: try another).
func (t *takenHere) reserve(uid types.UID, pool string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.at == nil {
		t.at = map[types.UID]*takeHere{}
	}
	if e, ok := t.at[uid]; ok && now.Sub(e.at) < takenHereFor {
		return false
	}
	for u, e := range t.at {
		if now.Sub(e.at) >= takenHereFor {
			t.finishLocked(e)
			delete(t.at, u)
		}
	}
	t.at[uid] = &takeHere{at: now, pool: pool, done: make(chan struct{})}
	return true
}

// settle records that the take of pod uid came back won: it stays skipped
// for takenHereFor, and no claim waits for it any more.
func (t *takenHere) settle(uid types.UID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.at[uid]; ok {
		t.finishLocked(e)
	}
}

// release forgets a pod a claim here did not take (it lost the take, or
// its spawn did not create the slab): a later claim may try it again, with
// its current resourceVersion.
func (t *takenHere) release(uid types.UID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.at[uid]; ok {
		t.finishLocked(e)
		delete(t.at, uid)
	}
}

// inFlight is what to wait on for the takes of pool's pods this replica has
// in flight now.
func (t *takenHere) inFlight(pool string) []<-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []<-chan struct{}
	for _, e := range t.at {
		select {
		case <-e.done:
		default:
			if e.pool == pool {
				out = append(out, e.done)
			}
		}
	}
	return out
}

// takesWait bounds how long a claim that found no free pod in the cache
// waits for this replica's takes in flight (awaitTakes). Under a burst of
// 100 claims on the local cluster a take came back in 0.5–1 s.
const takesWait = 2 * time.Second

// awaitTakes waits until the takes of pool's pods that this replica had in
// flight when it was called came back (won or lost), at most takesWait. It
// returns since: a list of the pool's pods sent at or after since has the
// outcome of every take it waited for (listFree).
func (s *Server) awaitTakes(ctx context.Context, pool string) (since time.Time) {
	timeout := time.NewTimer(takesWait)
	defer timeout.Stop()
	for _, done := range s.taken.inFlight(pool) {
		select {
		case <-done:
		case <-timeout.C:
			return time.Now()
		case <-ctx.Done():
			return time.Now()
		}
	}
	return s.taken.lastBack(pool)
}

// poolLists shares one list of a pool's free pods (freshCandidates) among
// the claims of this replica that need one at the same time: in a burst of
// 100 claims against a pool of 20, each of the 80 claims the cache had no
// pod for listed the pool on its own.
type poolLists struct {
	mu    sync.Mutex
	calls map[string]*poolList
}

// poolList is one list of a pool's free pods: sent at started; pods and
// err are set once done is closed.
type poolList struct {
	started time.Time
	done    chan struct{}
	pods    []*corev1.Pod
	err     error
}

// listTimeout bounds a shared list (it serves every claim that joined it,
// not only the request that sent it).
const listTimeout = 10 * time.Second

// listFree is the pool's claimable pods as the API had them at a moment at
// or after since: it joins this replica's list of them in flight if that
// was sent at or after since, else sends one. A list that came back is not
// shared: the pool changes by the millisecond under a burst.
func (s *Server) listFree(ctx context.Context, pool *spawnerv1.BackendPool, hash string, since time.Time) ([]*corev1.Pod, error) {
	key := pool.Name + "/" + hash
	s.lists.mu.Lock()
	if s.lists.calls == nil {
		s.lists.calls = map[string]*poolList{}
	}
	c, ok := s.lists.calls[key]
	if ok && !c.started.Before(since) {
		s.lists.mu.Unlock()
		select {
		case <-c.done:
			return c.pods, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c = &poolList{started: time.Now(), done: make(chan struct{})}
	s.lists.calls[key] = c
	s.lists.mu.Unlock()
	s.metrics.claimLists.Inc()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), listTimeout)
	c.pods, c.err = s.freshCandidates(lctx, pool, hash)
	cancel()
	s.lists.mu.Lock()
	if s.lists.calls[key] == c {
		delete(s.lists.calls, key)
	}
	s.lists.mu.Unlock()
	close(c.done)
	return c.pods, c.err
}

// warmPick is where a pool spawn's claim starts (pickWarm): the pod its slab
// is created bound to, whether that came from the API's list, or cold: the
// slab is created bound to the cold path.
type warmPick struct {
	pod    *corev1.Pod
	listed bool
	cold   bool
}

// pickWarm chooses, before a pool spawn's slab is created, the warm pod its
// claim takes first (preBind). When the cache has none free, it waits for
// this replica's takes in flight (awaitTakes) and then asks the API for the
// pool's free pods (listFree, shared by the claims waiting with it): a
// listed pod it reserves is the one the slab is created bound to; none
// means the pool has no pod to give, and the slab is created bound cold
// (one write: it was created unclaimed, listed the pool, tried the pods
// listed and was bound cold, 4–6 requests).
//
// In a burst of 100 claims against a pool of 20, the 80 claims the cache
// had no pod for each listed the pool at once and tried the pods listed
// while the first 20 were taking them: ~255 lost takes and 80 lists, sent
// to the API server the first 20 were waiting on. keyLive: the spawn's key
// already has a live backend in the cache (it is handed out; no wait, no
// list).
func (s *Server) pickWarm(ctx context.Context, slab *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, hash string, keyLive bool) warmPick {
	if p := s.preBind(slab, pool, hash); p != nil || keyLive {
		return warmPick{pod: p}
	}
	pods, err := s.listFree(ctx, pool, hash, s.awaitTakes(ctx, pool.Name))
	if err != nil {
		// The claim lists again after the create, and goes cold if that
		// fails too.
		s.log.Error("claim: listing the pool's pods failed", "pool", pool.Name, "err", err)
		return warmPick{}
	}
	for _, p := range pods {
		if s.taken.reserve(p.UID, pool.Name, time.Now()) {
			s.bindTo(slab, p)
			return warmPick{pod: p, listed: true}
		}
	}
	return warmPick{cold: true}
}

// claim completes the claim of a slab just created by this spawn: it takes
// pre, the warm pod the slab was created bound to (preBind), if any, else a
// warm pod of pool, else binds the slab to the cold path. It returns the
// bound slab and whether it is warm. session is what the pool's claim hook,
// if it has one, receives before the pod is bound; created is when the
// slab's create was sent.
//
// It tries cached candidates until it lost maxCachedLosses takes (pre
// included); then, or when none is left (the cache had none, or every one was
// lost to a conflict), it asks the API once for the pool's claimable pods
// (listFree: a list in flight that was sent after this claim's lost takes
// came back is shared) and tries every one of those before going cold. Each of them it loses was
// taken by another spawn since the list, so a spawn goes cold only when
// every pod Ready at its list went to others: N concurrent spawns against
// N Ready pods all go warm; stopping after 8 lost takes would let a claim
// go cold while a listed pod is still free (TestClaimTriesEveryListedPod).
func (s *Server) claim(ctx context.Context, slab *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, hash string, session ClaimSession, pre *corev1.Pod, created time.Time) (*spawnerv1.SessionLivedBackend, bool, error) {
	hookCalls, lost := 0, 0
	if pre != nil {
		if bound, ok, done, err := s.take(ctx, slab, pool, pre, session, &hookCalls, true, created); done {
			return bound, ok, err
		}
		lost++
	}
	for round := 0; round < 2 && hookCalls < maxHookAttempts; round++ {
		candidates := s.warmCandidates(pool, hash)
		if round == 1 {
			var err error
			if candidates, err = s.listFree(ctx, pool, hash, s.taken.lastBack(pool.Name)); err != nil {
				s.log.Error("claim: listing the pool's pods failed; going cold", "pool", pool.Name, "err", err)
				break
			}
		}
		for _, p := range candidates {
			if (round == 0 && lost >= maxCachedLosses) || hookCalls == maxHookAttempts {
				break
			}
			// The cached candidates skip a pod another claim of this
			// replica is taking or took (takenHere), and pre, which this
			// claim lost with the version the cache still has. The API's
			// list is tried whole: a pod another claim here was taking
			// may be free again (that take lost), and a claim goes cold
			// only when every listed pod went to another spawn.
			if round == 0 && pre != nil && p.UID == pre.UID {
				continue
			}
			reserved := s.taken.reserve(p.UID, pool.Name, time.Now())
			if round == 0 && !reserved {
				continue
			}
			bound, ok, done, err := s.take(ctx, slab, pool, p, session, &hookCalls, reserved, created)
			if done {
				if ok && round == 1 {
					s.metrics.claimFromList.Inc()
				}
				return bound, ok, err
			}
			lost++
		}
	}
	bound, err := s.bind(ctx, slab, slab.Name, "")
	if err != nil {
		return s.current(ctx, slab, err)
	}
	return bound, false, nil
}

// lateTake is how long after its create a claim that took the pod its slab
// was created bound to (preBind) reads the slab again before it calls the
// claim warm: by then the controller may have closed the claim (it does
// ClaimTimeout after the slab's creationTimestamp, which the API server
// truncates to the second: 9 s at the earliest, after a GET of the pod that
// a take finished before then shows taken). Half of ClaimTimeout leaves the
// rest for clocks that differ between nodes. It was 2 s when ClaimTimeout
// was 5 s; under a burst of 100 claims most takes return after 2 s, and each
// re-read was one more GET to an API server seconds behind.
const lateTake = reconciler.ClaimTimeout / 2

// take tries to claim warm pod p for slab; done reports that the claim is
// over (bound warm, or bound by the controller meanwhile), else the caller
// tries the next pod. reserved: the caller reserved p in takenHere (a lost
// take releases it).
func (s *Server) take(ctx context.Context, slab *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, p *corev1.Pod, session ClaimSession, hookCalls *int, reserved bool, created time.Time) (bound *spawnerv1.SessionLivedBackend, warm, done bool, err error) {
	hook := pool.Spec.ClaimHook
	// Take the pod: its owner becomes the slab (a pod has one controller,
	// so no two spawns hold it), it gets the backend label (the sweeper
	// follows it from now on) and the slab's grace period. The
	// resourceVersion makes the patch fail if anyone changed the pod since
	// we saw it unclaimed. With a claim hook the backend label waits for the
	// hook's success: the sweeper, which records Ready, follows only
	// labelled pods, and a slab holds only a labelled pod (HoldsPod).
	podLabels := map[string]string{}
	if hook == nil {
		podLabels[spawnerv1.LabelBackend] = slab.Name
	}
	for k, v := range slab.Spec.Template.Metadata.Labels {
		if _, ok := p.Labels[k]; !ok {
			podLabels[k] = v
		}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": p.ResourceVersion,
		"labels":          podLabels,
		"annotations": map[string]string{spawnerv1.AnnotationGracePeriodSeconds: strconv.FormatInt(
			int64(slab.Spec.GracePeriod().Seconds()), 10)},
		"ownerReferences": []metav1.OwnerReference{*metav1.NewControllerRef(slab, spawnerv1.SchemeGroupVersion.WithKind("SessionLivedBackend"))},
	}})
	took, err := s.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		if reserved {
			s.taken.release(p.UID)
		}
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			s.metrics.claimConflicts.Inc()
			return nil, false, false, nil // taken or changed by someone else: the next one
		}
		s.log.Error("claim: taking a warm pod failed; going cold", "pool", pool.Name, "pod", p.Name, "err", err)
		bound, err := s.bind(ctx, slab, slab.Name, "")
		if err != nil {
			bound, warm, err = s.current(ctx, slab, err)
		}
		return bound, warm, true, err
	}
	s.recordPod(took)
	if reserved {
		s.taken.settle(p.UID)
	}
	if hook != nil {
		*hookCalls++
		if err := s.deliverSession(ctx, hook, p, session); err != nil {
			// The pod is ours and its app refused the session (or never
			// answered): it is never handed out. Deleting it frees its
			// place in the pool, which starts a new one.
			s.metrics.claimHookFailures.Inc()
			s.log.Info("claim hook failed; deleting the pod and trying another", "pool", pool.Name, "pod", p.Name, "backend", slab.Name, "err", err)
			s.deleteTaken(ctx, p)
			return nil, false, false, nil
		}
	}
	if slab.Annotations[spawnerv1.AnnotationPod] == p.Name {
		// The slab was created bound to this pod (preBind): holding it
		// completes the claim, unless a take this slow came after the
		// controller closed the claim.
		if time.Since(created) < lateTake {
			return slab, true, true, nil
		}
		cur, err := s.slabs.SpawnerV1().SessionLivedBackends(slab.Namespace).Get(ctx, slab.Name, metav1.GetOptions{})
		if err != nil {
			s.log.Error("claim: re-reading a slow claim; taking it as bound", "backend", slab.Name, "pod", p.Name, "err", err)
			return slab, true, true, nil
		}
		if name, _ := spawnerv1.PodNameOf(cur); name == p.Name {
			return cur, true, true, nil
		}
		s.deleteTaken(ctx, p)
		return cur, isWarm(cur), true, nil
	}
	bound, err = s.bind(ctx, slab, p.Name, p.Spec.NodeName)
	if err == nil {
		return bound, true, true, nil
	}
	// The controller closed the claim first (we stalled past its timeout).
	// It binds a stalled claim to the labelled pod the claim took, so the
	// pod may be this backend's after all; if not, free it.
	bound, warm, err = s.current(ctx, slab, err)
	if err == nil {
		if name, ok := spawnerv1.PodNameOf(bound); ok && name == p.Name {
			return bound, true, true, nil
		}
	}
	s.deleteTaken(ctx, p)
	return bound, warm, true, err
}

// recordClaimed records a backend just bound to a warm pod Ready: one
// status write of every milestone up to Ready (lifecycle.RecordClaimed) with
// readyTime and lastActiveTime at the claim, so the grace clock starts
// there. The pod was Ready when taken (claimable; the API's list when the
// cache lagged) and its hook, if any, succeeded. handleSpawn runs it after
// it answered (recordClaimedAfter): the answer does not wait for it, nor does
// the ready URL, which redirects a live backend bound to a warm pod
// (claimDone). It was the last of a claim's four sequential API writes, ~24
// ms of a warm spawn's ~100 ms on the local cluster (make bench-pool,
// 2026-12-01; docs/benchmarks.md). Without it the sweeper records Ready once
// it follows the claimed pod (p50 ~200 ms later), and it keeps this
// readyTime when it comes after. A write that fails leaves it to the
// sweeper.
// at is when the claim completed: readyTime and lastActiveTime.
func (s *Server) recordClaimed(ctx context.Context, bound *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, pod string, at time.Time) *spawnerv1.SessionLivedBackend {
	client := s.slabs.SpawnerV1().SessionLivedBackends(bound.Namespace)
	now := metav1.NewTime(at)
	cur := bound
	for attempt := 1; ; attempt++ {
		next := cur.DeepCopy()
		if !lifecycle.RecordClaimed(&next.Status, fmt.Sprintf("claimed warm pod %s of pool %s; its application already listens", pod, pool.Name), next.Generation) {
			return cur
		}
		next.Status.ReadyTime = &now
		next.Status.LastActiveTime = &now
		// What the controller would write on its first sync after the
		// bind, so that it has nothing left to write (it waits for this
		// write: lifecycle.ClaimRecordPending).
		if next.Status.URL == "" {
			next.Status.URL = s.routes.BackendURL(next.Name)
		}
		if p, ok := s.pod(pod); ok {
			if next.Status.NodeName == "" {
				next.Status.NodeName = p.Spec.NodeName
			}
			if next.Status.PodIP == "" {
				next.Status.PodIP = p.Status.PodIP
			}
		}
		written, err := client.UpdateStatus(ctx, next, metav1.UpdateOptions{})
		if err == nil {
			s.recordSlab(written)
			return written
		}
		if apierrors.IsNotFound(err) {
			return cur // terminated before its record was due
		}
		if !apierrors.IsConflict(err) || attempt == 4 {
			s.log.Error("recording a claimed backend Ready; the sweeper will", "backend", bound.Name, "pod", pod, "err", err)
			return cur
		}
		// The controller wrote its status meanwhile (it follows the bind).
		got, gerr := client.Get(ctx, bound.Name, metav1.GetOptions{})
		if gerr != nil {
			return cur
		}
		if name, ok := spawnerv1.PodNameOf(got); !ok || name != pod {
			return got
		}
		cur = got
	}
}

// recordClaimedAfter runs recordClaimed for warm pod pod of pool in the
// background, so that the spawn answers first, once this replica's claims
// are quiet (claimsInFlight: no pool spawn in flight, nor a ready URL of a
// pool backend, for recordQuiet), at most recordDeferMax after the slab's
// create (created). Nothing waits for the record: the ready URL and the
// router take a backend that holds its claimed pod as Ready (claimDone).
// Under a burst of 100 claims on the local cluster each record was a
// status write of 0.9 s on average, sent while later claims' creates and
// takes waited for the same API server, and each one brought the
// controller's Ready Event with it; the same burst without any record had
// all 100 Ready in 2.5 s at 5.3 CPU-seconds, against 3.6 s and 7.5 with
// records sent once the spawns were answered (the ready URLs that followed
// them still ran; docs/pools.md). It has its own deadline, not the
// request's (the client may hang up once answered); Run waits for it on
// shutdown.
func (s *Server) recordClaimedAfter(ctx context.Context, bound *spawnerv1.SessionLivedBackend, pool *spawnerv1.BackendPool, pod string, created time.Time) {
	at := time.Now()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordClaimedTimeout)
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		defer cancel()
		deadline := time.NewTimer(time.Until(created.Add(recordDeferMax)))
		defer deadline.Stop()
		select {
		case <-s.claims.quiet():
		case <-deadline.C:
		case <-ctx.Done():
		}
		s.recordClaimed(ctx, bound, pool, pod, at)
	}()
}

// recordDeferMax bounds how long after its slab's create a claim's Ready
// record waits for the other claims in flight (recordClaimedAfter): the
// controller and the sweeper leave that record to the claim for
// lifecycle.ClaimRecordWait after the slab's creation timestamp, which the
// API server truncates to the second, so 9 s at the earliest; half of it
// leaves the write 4 s. A burst of 100 claims against 100 warm pods lasted
// 3–4 s on the local cluster, longer than the 2.5 s this was before, so
// its first records were still written inside it.
const recordDeferMax = lifecycle.ClaimRecordWait / 2

// recordQuiet is how long a replica's claims must have been quiet
// (claimsInFlight) before the Ready records waiting for that are written:
// under a burst the spawns and the ready URLs that follow them arrive
// milliseconds apart, and a lull shorter than that is no end of the burst.
// A claim on its own is recorded this long after its ready URL.
const recordQuiet = 250 * time.Millisecond

// claimsInFlight counts this replica's pool spawns between their start and
// their answer, and the ready URLs of pool backends not recorded Ready
// yet, and says when none has been in flight for recordQuiet.
type claimsInFlight struct {
	mu    sync.Mutex
	n     int
	lull  time.Duration // recordQuiet when 0; a test may shorten it
	none  chan struct{} // closed once n has been 0 for the lull
	timer *time.Timer   // closes none, while n is 0
}

func (c *claimsInFlight) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		if c.timer != nil && c.timer.Stop() {
			// A lull too short: the same wait goes on.
		} else {
			c.none = make(chan struct{})
		}
		c.timer = nil
	}
	c.n++
}

func (c *claimsInFlight) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	if c.n > 0 {
		return
	}
	none, d := c.none, c.lull
	if d == 0 {
		d = recordQuiet
	}
	c.timer = time.AfterFunc(d, func() { close(none) })
}

// quiet is closed once no pool spawn or ready URL of a claim has been in
// flight for recordQuiet.
func (c *claimsInFlight) quiet() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.none == nil {
		done := make(chan struct{})
		close(done)
		return done
	}
	return c.none
}

// recordClaimedTimeout bounds recordClaimedAfter's wait, writes and re-reads.
const recordClaimedTimeout = 10 * time.Second

// deliverSession calls the claim hook on a pod this claim took and, once it
// succeeded, labels the pod with its backend: from then on the sweeper
// follows it (and records Ready) and a stalled claim may be bound to it.
func (s *Server) deliverSession(ctx context.Context, hook *spawnerv1.ClaimHook, p *corev1.Pod, session ClaimSession) error {
	if err := callClaimHook(ctx, hook, p, session); err != nil {
		return fmt.Errorf("claim hook POST %s: %w", hook.Path, err)
	}
	label, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels": map[string]string{spawnerv1.LabelBackend: session.Backend},
	}})
	labelled, err := s.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, label, metav1.PatchOptions{})
	if err != nil {
		// Gone: the controller closed the claim meanwhile (and deleted the
		// pod, whose hook it could not know had succeeded).
		return fmt.Errorf("labelling the pod after its claim hook: %w", err)
	}
	s.recordPod(labelled)
	return nil
}

// deleteTaken deletes a warm pod this claim took but does not bind (its
// UID as precondition: never a pod of the same name made since).
func (s *Server) deleteTaken(ctx context.Context, p *corev1.Pod) {
	uid := p.UID
	if err := s.kube.CoreV1().Pods(p.Namespace).Delete(context.WithoutCancel(ctx), p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
		// The slab reconciler deletes it as a stray, or the garbage
		// collector with the slab: it is never bound either way.
		s.log.Error("deleting a taken warm pod", "pod", p.Name, "err", err)
	}
}

// bind sets the slab's pod, with the slab's resourceVersion as precondition,
// and the node label of the pod's node when given (spawnerv1.LabelNode, as
// the controller sets it; one write fewer for it per warm claim), else
// removes a node label preBind set.
// The precondition is there to lose to the controller's close of a stalled
// claim, but any write bumps the resourceVersion: the controller writes a
// new slab's status (its URL, Pending) while the claim runs, and on the
// loaded local cluster that made 2 of 15 sequential claims from a full pool
// conflict, free the pod they had taken and answer cold. So a conflict is
// retried on the slab as it is now while its binding is still the one this
// claim created it with (none, or preBind's pod); once it changed (the
// controller closed the claim) the conflict stands.
func (s *Server) bind(ctx context.Context, slab *spawnerv1.SessionLivedBackend, pod, node string) (*spawnerv1.SessionLivedBackend, error) {
	client := s.slabs.SpawnerV1().SessionLivedBackends(slab.Namespace)
	from := slab.Annotations[spawnerv1.AnnotationPod]
	for attempt := 0; ; attempt++ {
		md := map[string]any{
			"resourceVersion": slab.ResourceVersion,
			"annotations":     map[string]string{spawnerv1.AnnotationPod: pod},
		}
		if node != "" {
			md["labels"] = map[string]string{spawnerv1.LabelNode: node}
		} else if slab.Labels[spawnerv1.LabelNode] != "" {
			md["labels"] = map[string]any{spawnerv1.LabelNode: nil}
		}
		patch, _ := json.Marshal(map[string]any{"metadata": md})
		bound, err := client.Patch(ctx, slab.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err == nil {
			s.recordSlab(bound)
		}
		if err == nil || !apierrors.IsConflict(err) || attempt == 4 {
			return bound, err
		}
		cur, gerr := client.Get(ctx, slab.Name, metav1.GetOptions{})
		if gerr != nil {
			return nil, err
		}
		if cur.Annotations[spawnerv1.AnnotationPod] != from || cur.DeletionTimestamp != nil {
			return nil, err
		}
		slab = cur
	}
}

// current is the slab as someone else bound it after our bind failed with
// err (a conflict: the controller closed the claim).
func (s *Server) current(ctx context.Context, slab *spawnerv1.SessionLivedBackend, err error) (*spawnerv1.SessionLivedBackend, bool, error) {
	if !apierrors.IsConflict(err) {
		return nil, false, fmt.Errorf("binding the claim: %w", err)
	}
	got, gerr := s.slabs.SpawnerV1().SessionLivedBackends(slab.Namespace).Get(ctx, slab.Name, metav1.GetOptions{})
	if gerr != nil {
		return nil, false, gerr
	}
	return got, isWarm(got), nil
}

// isWarm reports whether a backend runs on a claimed warm pod.
func isWarm(slab *spawnerv1.SessionLivedBackend) bool {
	name, ok := spawnerv1.PodNameOf(slab)
	return ok && name != slab.Name
}

// claimOver reports whether a backend's claim, if it came from a pool, is
// over as this replica's caches have it: bound to the cold path, or to a
// warm pod it holds (a slab created bound to a pod is claiming until it
// holds it: preBind), or past its claim (its status records its pod, or it
// has ended).
func (s *Server) claimOver(slab *spawnerv1.SessionLivedBackend) bool {
	name, ok := spawnerv1.PodNameOf(slab)
	switch {
	case !ok:
		return false
	case slab.Annotations[spawnerv1.AnnotationPool] == "" || name == slab.Name || !live(slab) ||
		meta.IsStatusConditionTrue(slab.Status.Conditions, lifecycle.ConditionPodCreated):
		return true
	}
	p, ok := s.pod(name)
	return ok && spawnerv1.HoldsPod(slab, p)
}

// awaitBind waits until a claiming slab (another spawn's claim, maybe in
// another replica) is bound and holds its pod (claimOver), and returns it as
// the cache then has it. A claim completes within milliseconds; one whose
// api-server died is bound by the controller after reconciler.ClaimTimeout,
// so the wait ends a second after that at the latest, with the slab as it
// was.
func (s *Server) awaitBind(ctx context.Context, slab *spawnerv1.SessionLivedBackend) *spawnerv1.SessionLivedBackend {
	wake, unsubscribe := s.watchers.subscribe(slab.Name)
	defer unsubscribe()
	timeout := time.NewTimer(reconciler.ClaimTimeout + time.Second)
	defer timeout.Stop()
	for {
		if cur, ok := s.cachedSlab(slab.Name); ok {
			if s.claimOver(cur) {
				return cur
			}
			slab = cur
		}
		select {
		case <-wake:
		case <-timeout.C:
			return slab
		case <-ctx.Done():
			return slab
		}
	}
}
