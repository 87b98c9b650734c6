// Package pool is the BackendPool reconciler: it keeps spec.replicas warm
// (started, Ready, unclaimed) backend pods per pool, replaces those that are
// claimed or fail, rolls unclaimed ones when the pool's backend spec changes,
// and reports the counts in the pool's status. docs/pools.md describes it.
//
// It has the k8s.io/sample-controller shape, like the slab reconciler it
// runs beside: shared informers for pools and for spawner's pods, a
// rate-limited workqueue of pool keys, and one level-triggered sync per key.
// Creates and deletes it has issued but not yet seen in the pod cache are
// remembered (expectations, as the ReplicaSet controller does), so a lagging
// cache never makes it start or delete a pod twice.
package pool

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/workloop"
	"spawner.dev/generated/clientset/versioned"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"
)

// expectationTimeout: how long a create or delete issued but not yet seen
// in the pod cache is remembered.
const expectationTimeout = 30 * time.Second

// Options wire a pool controller.
type Options struct {
	Kube    kubernetes.Interface
	Spawner versioned.Interface
	// PoolInformer watches BackendPools; PodInformer watches the pods
	// labelled app.kubernetes.io/managed-by=spawner (the slab reconciler's).
	PoolInformer cache.SharedIndexInformer
	Pools        spawnerlisters.BackendPoolLister
	PodInformer  cache.SharedIndexInformer
	Pods         corelisters.PodLister
	// SlabInformer and Slabs: the backends, whose claims from a pool defer
	// its refill until their Ready is recorded (refillWait).
	SlabInformer cache.SharedIndexInformer
	Slabs        spawnerlisters.SessionLivedBackendLister
	Recorder     record.EventRecorder
	// BuildPod makes a warm pod of a pool for a template hash
	// (reconciler.BuildWarmPod with the controller's sidecar and app
	// defaults): the slab reconciler's pod builder, so a claimed warm pod is
	// a backend pod like any other.
	BuildPod func(pool *spawnerv1.BackendPool, templateHash string) *corev1.Pod
	// MaxStarting bounds a pool's warm pods that are starting (created, not
	// Ready) at once; 0 means DefaultMaxStarting.
	MaxStarting int
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
	// Logger is the controller's logger; nil means slog.Default().
	Logger *slog.Logger
}

// Controller reconciles BackendPools with their warm pods.
type Controller struct {
	o      Options
	synced []cache.InformerSynced
	queue  *workloop.Loop
	log    *slog.Logger

	mu      sync.Mutex
	creates map[string]map[string]time.Time // pool key -> pod name -> when created, until the cache has it
	deletes map[types.UID]time.Time         // pods deleted, until the cache sees them go (or deleting)
	claims  map[string]claimBurst           // pool key -> the claims under way, while they defer its refill
}

// claimBurst is a run of claims from one pool, each within refillQuiet of
// the one before: its first and its latest claim as this controller saw
// them (a pod leaving the pool's control).
type claimBurst struct{ first, last time.Time }

// refillQuiet and refillMaxDefer: a pool refills once refillQuiet passed
// without a claim and no claim from it awaits its Ready record, or
// refillMaxDefer after the first claim of a burst at the latest. A claim is
// API writes that a browser waits for; a refill is pod starts nobody waits
// for, which on a 2-core node take the CPU from everything else: in a burst
// of 100 claims against 100 warm pods on the local cluster, the refill's
// starts (10 at a time, load average 30) took the claims' writes to seconds
// each and the last claim to 24 s. A steady stream of claims never defers a
// refill more than refillMaxDefer.
//
// The quiet alone was not enough: under a burst this controller sees the
// takes in clumps, more than 500 ms apart (answers at 0.36, 0.88, 1.57 s),
// and the refill's first 10 pods started in the middle of the burst. An
// api-server records a claim's Ready once it has no other claim in flight
// (at most lifecycle.ClaimRecordWait/2 after the slab's create), so a pool
// backend whose record is pending (lifecycle.ClaimRecordPending) says its
// burst is not over; refillRecheck is how often that is looked at again.
const (
	refillQuiet    = 500 * time.Millisecond
	refillMaxDefer = 5 * time.Second
	refillRecheck  = 200 * time.Millisecond
)

// refillWait is how long a refill still waits for burst b at now (0:
// refill). recording: a claim from the pool awaits its Ready record.
func refillWait(b claimBurst, recording bool, now time.Time) time.Duration {
	if b.last.IsZero() {
		return 0
	}
	wait := b.last.Add(refillQuiet).Sub(now)
	if recording {
		wait = max(wait, refillRecheck)
	}
	return max(0, min(wait, b.first.Add(refillMaxDefer).Sub(now)))
}

// recording reports whether a backend claimed (or claiming) from pool name
// in namespace awaits its claim's Ready record.
func (c *Controller) recording(namespace, name string, now time.Time) bool {
	if c.o.Slabs == nil {
		return false
	}
	slabs, err := c.o.Slabs.SessionLivedBackends(namespace).List(labels.Everything())
	if err != nil {
		return false
	}
	for _, slab := range slabs {
		if slab.Annotations[spawnerv1.AnnotationPool] == name && lifecycle.ClaimRecordPending(slab, now) {
			return true
		}
	}
	return false
}

// noteClaim records a claim: pod old, unclaimed, now controlled by a slab.
func (c *Controller) noteClaim(old, cur *corev1.Pod) {
	pool := cur.Labels[spawnerv1.LabelPool]
	if pool == "" || !OwnedByPool(old, pool) || OwnedByPool(cur, pool) {
		return
	}
	key, now := cur.Namespace+"/"+pool, c.o.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.claims[key]
	if refillWait(b, false, now) == 0 {
		b.first = now
	}
	b.last = now
	c.claims[key] = b
}

// refillDelay is how long pool key's refill still waits for its claims.
func (c *Controller) refillDelay(key string) time.Duration {
	namespace, name, _ := cache.SplitMetaNamespaceKey(key)
	now := c.o.Now()
	recording := c.recording(namespace, name, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.claims[key]
	if recording && b.last.IsZero() {
		// A claim whose take this controller has not noted yet: the pod
		// event that enqueued this sync reaches noteClaim through another
		// handler, which may run after it (a refill of 10 pods started in
		// the middle of a burst that way).
		b = claimBurst{first: now, last: now}
		c.claims[key] = b
	}
	d := refillWait(b, recording, now)
	if d == 0 {
		delete(c.claims, key)
	}
	return d
}

// New wires a pool controller to its informers.
func New(o Options) (*Controller, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Controller{
		o:       o,
		log:     o.Logger,
		synced:  []cache.InformerSynced{o.PoolInformer.HasSynced, o.PodInformer.HasSynced},
		creates: map[string]map[string]time.Time{},
		deletes: map[types.UID]time.Time{},
		claims:  map[string]claimBurst{},
	}
	if o.SlabInformer != nil {
		c.synced = append(c.synced, o.SlabInformer.HasSynced)
	}
	c.queue = workloop.New("pools", c.sync, o.Logger)
	if _, err := o.PoolInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.queue.Enqueue,
		UpdateFunc: func(_, obj interface{}) { c.queue.Enqueue(obj) },
	}); err != nil {
		return nil, err
	}
	if _, err := o.PodInformer.AddEventHandler(workloop.Handler(c.queue, poolKeyOf)); err != nil {
		return nil, err
	}
	if _, err := o.PodInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(old, cur interface{}) {
		o, ok1 := old.(*corev1.Pod)
		p, ok2 := cur.(*corev1.Pod)
		if ok1 && ok2 {
			c.noteClaim(o, p)
		}
	}}); err != nil {
		return nil, err
	}
	return c, nil
}

// poolKeyOf is the key of the pool a pod came from (its spawner.dev/pool
// label: claimed pods keep it, so the pool counts them).
func poolKeyOf(pod *corev1.Pod) string {
	if pod.Labels[spawnerv1.LabelPool] == "" {
		return ""
	}
	return pod.Namespace + "/" + pod.Labels[spawnerv1.LabelPool]
}

// Run waits for the caches, then syncs pools with workers until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	return c.queue.Run(ctx, workers, c.synced...)
}

// TemplateHash is the pool's spawnerv1.BackendPool.TemplateHash.
func TemplateHash(pool *spawnerv1.BackendPool) string { return pool.TemplateHash() }

// Selector selects a pool's unclaimed pods: a claim sets spawner.dev/backend.
func Selector(pool string) string {
	return spawnerv1.LabelPool + "=" + pool + ",!" + spawnerv1.LabelBackend
}

// OwnedByPool reports whether pod is controlled by the pool named name:
// unclaimed. A claim replaces that owner reference with the slab's.
func OwnedByPool(pod *corev1.Pod, name string) bool {
	ref := metav1.GetControllerOf(pod)
	return ref != nil && ref.Kind == "BackendPool" && ref.APIVersion == spawnerv1.SchemeGroupVersion.String() && ref.Name == name
}

// WarmReady reports whether an unclaimed pod can be claimed now: running,
// not being deleted, and Ready (its sidecar's startup probe saw the app
// listen).
func WarmReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// finished reports a pod that will never serve: ended, or a container
// terminated (restartPolicy Never: it will not come back).
func finished(pod *corev1.Pod) (bool, string) {
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		return true, "pod " + string(pod.Status.Phase)
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			return true, fmt.Sprintf("container %s terminated (%s, exit code %d)", cs.Name, t.Reason, t.ExitCode)
		}
	}
	return false, ""
}

// counts is what one sync found among a pool's pods.
type counts struct {
	ready, starting []*corev1.Pod // unclaimed, current template, alive
	old             []*corev1.Pod // unclaimed, an older template, alive
	failed          []*corev1.Pod // unclaimed, will never serve
	claimed         int
	pendingCreates  int // created by us, not in the cache yet
}

func (c *Controller) classify(key string, pool *spawnerv1.BackendPool, hash string, pods []*corev1.Pod) counts {
	now := c.o.Now()
	var n counts
	inCache := map[string]bool{}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pod := range pods {
		inCache[pod.Name] = true
		if at, ok := c.deletes[pod.UID]; ok {
			if pod.DeletionTimestamp == nil && now.Sub(at) < expectationTimeout {
				continue // our delete is on its way into the cache
			}
			delete(c.deletes, pod.UID)
		}
		if pod.DeletionTimestamp != nil {
			continue
		}
		if !OwnedByPool(pod, pool.Name) {
			if ref := metav1.GetControllerOf(pod); ref != nil && ref.Kind == "SessionLivedBackend" {
				if done, _ := finished(pod); !done {
					n.claimed++
				}
			}
			continue
		}
		switch done, _ := finished(pod); {
		case done:
			n.failed = append(n.failed, pod)
		case pod.Labels[spawnerv1.LabelPoolTemplateHash] != hash:
			n.old = append(n.old, pod)
		case WarmReady(pod):
			n.ready = append(n.ready, pod)
		default:
			n.starting = append(n.starting, pod)
		}
	}
	for name, at := range c.creates[key] {
		if inCache[name] || now.Sub(at) >= expectationTimeout {
			delete(c.creates[key], name)
			continue
		}
		n.pendingCreates++
	}
	return n
}

func (c *Controller) expectCreate(key, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.creates[key] == nil {
		c.creates[key] = map[string]time.Time{}
	}
	c.creates[key][name] = c.o.Now()
}

func (c *Controller) expectDelete(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deletes[uid] = c.o.Now()
}

// DefaultMaxStarting bounds the warm pods one pool starts at once. A pool
// refilling after a burst of claims otherwise starts as many pods as were
// claimed, all at once: after 100 claims from a pool of 100 on the 2-core
// local cluster, 100 pod starts (load average 115) slowed every API write
// of the claims still running to seconds, and 3 of the claims' answers took
// over 30 s. Ten at a time keeps the node answering; a pod starts in ~1–3 s
// there, so a pool still refills at several pods a second.
const DefaultMaxStarting = 10

// toCreate is how many warm pods a sync creates: toward want from current
// (ready, starting and created-not-cached), at most batch at once, and no
// more than keep starting (starting includes created-not-cached) at a time.
func toCreate(want, current, starting, maxStarting, batch int) int {
	return max(0, min(want-current, batch, maxStarting-starting))
}

func (c *Controller) maxStarting() int {
	if c.o.MaxStarting > 0 {
		return c.o.MaxStarting
	}
	return DefaultMaxStarting
}

// createBatch bounds the pod creates one sync issues at once: a pool of 100
// starts in a few round trips, and a template the API server rejects fails
// a handful of creates, not a hundred.
const createBatch = 16

// sync makes one pool's world right.
func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	pool, found, err := workloop.Get(key, func(ns, name string) (*spawnerv1.BackendPool, error) {
		return c.o.Pools.BackendPools(ns).Get(name)
	})
	if err != nil {
		return 0, err
	}
	if !found {
		// Its unclaimed pods go with it (the garbage collector follows
		// their owner reference); claimed ones belong to their slabs.
		c.mu.Lock()
		delete(c.creates, key)
		c.mu.Unlock()
		return 0, nil
	}
	if pool.DeletionTimestamp != nil {
		return 0, nil
	}
	status := pool.Status.DeepCopy()
	status.ObservedGeneration = pool.Generation
	status.Selector = Selector(pool.Name)

	spec := pool.BackendSpec()
	if errs := spawnerv1.ValidateSpec(&spec, nil); len(errs) > 0 {
		setCondition(status, metav1.ConditionFalse, spawnerv1.PoolReasonInvalidSpec, errs.ToAggregate().Error(), pool.Generation)
		return 0, c.writeStatus(ctx, pool, status)
	}

	hash := TemplateHash(pool)
	sel, _ := labels.Parse(spawnerv1.LabelPool + "=" + pool.Name)
	pods, err := c.o.Pods.Pods(pool.Namespace).List(sel)
	if err != nil {
		return 0, err
	}
	n := c.classify(key, pool, hash, pods)
	want := int(pool.DesiredReplicas())

	// Failed unclaimed pods are deleted and replaced.
	for _, pod := range n.failed {
		_, why := finished(pod)
		if err := c.deletePod(ctx, pod); err != nil {
			return 0, err
		}
		c.o.Recorder.Eventf(pool, corev1.EventTypeWarning, "WarmPodFailed", "deleted warm pod %s (%s); a new one replaces it", pod.Name, why)
	}

	current := len(n.ready) + len(n.starting) + n.pendingCreates
	var (
		createErr error
		deferred  time.Duration
	)
	if current < want {
		deferred = c.refillDelay(key)
	}
	switch {
	case deferred > 0:
		// claims are under way: they go first
	case current < want:
		created, err := c.createPods(ctx, key, pool, hash, toCreate(want, current, len(n.starting)+n.pendingCreates, c.maxStarting(), createBatch))
		current += created
		if created > 0 {
			c.o.Recorder.Eventf(pool, corev1.EventTypeNormal, "ScaledUp", "started %d warm pod(s) toward %d", created, want)
		}
		createErr = err
	case current > want:
		// Starting ones first (nobody can claim them yet), then the newest.
		excess := append(sortNewestFirst(n.starting), sortNewestFirst(n.ready)...)
		drop := min(current-n.pendingCreates-want, len(excess))
		for _, pod := range excess[:max(drop, 0)] {
			if err := c.deletePod(ctx, pod); err != nil {
				return 0, err
			}
		}
		if drop > 0 {
			c.o.Recorder.Eventf(pool, corev1.EventTypeNormal, "ScaledDown", "deleted %d warm pod(s) down to %d", drop, want)
		}
	}

	// A changed spec rolls the unclaimed pods of older templates, never
	// dropping what a claim can take below want: an old pod goes as soon as
	// a new one is Ready to stand in for it.
	if len(n.old) > 0 {
		keep := max(want-len(n.ready), 0)
		old := append(notReady(n.old), sortNewestFirst(readyOnly(n.old))...)
		if drop := len(old) - keep; drop > 0 {
			for _, pod := range old[:drop] {
				if err := c.deletePod(ctx, pod); err != nil {
					return 0, err
				}
			}
			c.o.Recorder.Eventf(pool, corev1.EventTypeNormal, "Rolled", "replaced %d warm pod(s) of an older template", drop)
		}
	}

	status.Replicas = int32(current)
	status.ReadyReplicas = int32(len(n.ready))
	status.StartingReplicas = int32(max(current-len(n.ready), 0))
	status.ClaimedReplicas = int32(n.claimed)
	if len(n.ready) >= want {
		setCondition(status, metav1.ConditionTrue, spawnerv1.PoolReasonFull, fmt.Sprintf("%d warm backend(s) ready", len(n.ready)), pool.Generation)
	} else {
		setCondition(status, metav1.ConditionFalse, spawnerv1.PoolReasonStarting, fmt.Sprintf("%d of %d warm backend(s) ready", len(n.ready), want), pool.Generation)
	}
	if err := c.writeStatus(ctx, pool, status); err != nil {
		return 0, err
	}
	if createErr != nil {
		return 0, createErr
	}
	if deferred > 0 {
		return deferred, nil
	}
	if current < want {
		return time.Millisecond, nil // the next batch
	}
	return 0, nil
}

// createPods starts up to n warm pods, createBatch at a time in parallel.
func (c *Controller) createPods(ctx context.Context, key string, pool *spawnerv1.BackendPool, hash string, n int) (int, error) {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
		first   error
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pod := c.o.BuildPod(pool, hash)
			got, err := c.o.Kube.CoreV1().Pods(pool.Namespace).Create(ctx, pod, metav1.CreateOptions{})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			c.expectCreate(key, got.Name)
			created++
		}()
	}
	wg.Wait()
	if first != nil {
		c.o.Recorder.Eventf(pool, corev1.EventTypeWarning, "WarmPodCreateFailed", "%v", first)
	}
	return created, first
}

func (c *Controller) deletePod(ctx context.Context, pod *corev1.Pod) error {
	// The UID and resourceVersion preconditions: a pod a claim took a moment
	// ago (its owner reference changed) is never deleted by a stale decision.
	uid, rv := pod.UID, pod.ResourceVersion
	err := c.o.Kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if err == nil {
		c.expectDelete(pod.UID)
		c.log.Debug("deleted warm pod", "pod", pod.Namespace+"/"+pod.Name)
	}
	return workloop.IgnoreGone(err) // gone, or changed (claimed): the next sync sees it
}

func (c *Controller) writeStatus(ctx context.Context, pool *spawnerv1.BackendPool, status *spawnerv1.BackendPoolStatus) error {
	if equality.Semantic.DeepEqual(&pool.Status, status) {
		return nil
	}
	updated := pool.DeepCopy()
	updated.Status = *status
	_, err := c.o.Spawner.SpawnerV1().BackendPools(pool.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func setCondition(status *spawnerv1.BackendPoolStatus, s metav1.ConditionStatus, reason, msg string, gen int64) {
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: spawnerv1.PoolConditionReady, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
}

func sortNewestFirst(pods []*corev1.Pod) []*corev1.Pod {
	out := append([]*corev1.Pod(nil), pods...)
	sort.SliceStable(out, func(i, j int) bool {
		return out[j].CreationTimestamp.Before(&out[i].CreationTimestamp)
	})
	return out
}

func readyOnly(pods []*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		if WarmReady(p) {
			out = append(out, p)
		}
	}
	return out
}

func notReady(pods []*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		if !WarmReady(p) {
			out = append(out, p)
		}
	}
	return out
}
