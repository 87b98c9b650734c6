// Package reconciler is spawner's controller: it turns every
// SessionLivedBackend (slab) into one backend pod, keeps the slab's status
// true to that pod, and deletes pod and slab when the backend ends.
//
// It has the k8s.io/sample-controller shape: shared informers for slabs and
// for spawner's pods, a rate-limited workqueue of slab keys, and one
// level-triggered sync per key that reads the world from the caches, decides,
// and writes. Time-based transitions (startup timeout, max lifetime, failed
// retention) are requeues with AddAfter; nothing polls.
package reconciler

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/generated/clientset/versioned"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"
)

// Options are the controller's behaviour settings (flags in main).
type Options struct {
	Sidecar SidecarOptions
	// AppResources: the app container's requests and limits when its
	// template sets none (applyAppResourceDefaults).
	AppResources AppResources
	// PublicBaseURL, when set, gives every backend status.url = <base>/p/<name>/.
	PublicBaseURL string
	// StartupTimeout: a backend not Ready this long after its slab was created
	// fails (Unschedulable when its pod never got a node, else StartupTimeout).
	// Zero disables the deadline.
	StartupTimeout time.Duration
	// FailedRetention: how long a failed slab is kept (for people and clients
	// to read why) before it is deleted. Its pod is deleted at once.
	FailedRetention time.Duration
	// PodGoneTimeout: how long past a terminating pod's deletion deadline the
	// controller waits for it to disappear before deleting the slab anyway
	// (the garbage collector then finishes the pod).
	PodGoneTimeout time.Duration
}

// Controller reconciles SessionLivedBackends with their pods.
type Controller struct {
	opts     Options
	kube     kubernetes.Interface
	spawner  versioned.Interface
	slabs    spawnerlisters.SessionLivedBackendLister
	pods     corelisters.PodLister
	synced   []cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	clock    clock.Clock
	metrics  *Metrics

	started     time.Time
	cachesReady atomic.Bool

	mu        sync.Mutex
	readySeen map[types.UID]bool // slabs whose spawn-to-ready latency was observed
}

// New wires a controller to its informers. slabInformer watches slabs in all
// namespaces; podInformer watches pods labelled
// app.kubernetes.io/managed-by=spawner.
func New(kube kubernetes.Interface, spawner versioned.Interface,
	slabInformer cache.SharedIndexInformer, slabLister spawnerlisters.SessionLivedBackendLister,
	podInformer cache.SharedIndexInformer, podLister corelisters.PodLister,
	recorder record.EventRecorder, metrics *Metrics, clk clock.Clock, opts Options) (*Controller, error) {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if metrics == nil {
		metrics = NewMetrics()
	}
	metrics.slabs = slabLister
	if opts.PodGoneTimeout == 0 {
		opts.PodGoneTimeout = time.Minute
	}
	c := &Controller{
		opts: opts, kube: kube, spawner: spawner,
		slabs: slabLister, pods: podLister,
		synced:   []cache.InformerSynced{slabInformer.HasSynced, podInformer.HasSynced},
		recorder: recorder, clock: clk, metrics: metrics,
		started:   clk.Now(),
		readySeen: map[types.UID]bool{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				// Per key: conflicts and API errors retry fast, then back off to a minute.
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, time.Minute),
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "slabs"}),
	}
	if metrics != nil {
		metrics.queueDepth = func() float64 { return float64(c.queue.Len()) }
	}
	if _, err := slabInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueSlab,
		UpdateFunc: func(old, obj interface{}) { c.observeTransition(old, obj); c.enqueueSlab(obj) },
		DeleteFunc: c.slabDeleted,
	}); err != nil {
		return nil, err
	}
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePodOwner,
		UpdateFunc: func(_, obj interface{}) { c.enqueuePodOwner(obj) },
		DeleteFunc: c.enqueuePodOwner,
	}); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Controller) enqueueSlab(obj interface{}) {
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.queue.Add(key)
}

// observeTransition gives the phase transitions other components write
// (Ready from the sweeper, Swept from the sweeper or the api-server) their
// Event, so every transition has one. The controller's own Swept write always
// carries Terminating too, so the object never shows Swept for it and no
// transition gets two Events.
func (c *Controller) observeTransition(old, obj interface{}) {
	o, ok1 := old.(*spawnerv1.SessionLivedBackend)
	n, ok2 := obj.(*spawnerv1.SessionLivedBackend)
	if !ok1 || !ok2 || o.Status.Phase == n.Status.Phase {
		return
	}
	var cond string
	switch n.Status.Phase {
	case lifecycle.Ready:
		cond = lifecycle.ConditionReady
	case lifecycle.Swept:
		cond = lifecycle.ConditionSwept
	default:
		return
	}
	reason, msg := "", ""
	if cnd := metaCondition(&n.Status, cond); cnd != nil {
		reason, msg = cnd.Reason, cnd.Message
	}
	c.metrics.transition(n.Status.Phase)
	c.recorder.Event(n, corev1.EventTypeNormal, string(n.Status.Phase), reason+": "+msg)
}

func (c *Controller) slabDeleted(obj interface{}) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if slab, ok := obj.(*spawnerv1.SessionLivedBackend); ok {
		c.mu.Lock()
		delete(c.readySeen, slab.UID)
		c.mu.Unlock()
	}
}

// enqueuePodOwner queues the slab controlling a pod.
func (c *Controller) enqueuePodOwner(obj interface{}) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != slabGVK.Kind || ref.APIVersion != slabGVK.GroupVersion().String() {
		return
	}
	c.queue.Add(pod.Namespace + "/" + ref.Name)
}

// CachesSynced reports whether the informers have synced (readiness).
func (c *Controller) CachesSynced() bool { return c.cachesReady.Load() }

// Run waits for the caches, then processes the queue with workers until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	klog.InfoS("Waiting for informer caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("informer caches did not sync")
	}
	c.cachesReady.Store(true)
	klog.InfoS("Starting workers", "count", workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait.UntilWithContext(ctx, c.runWorker, time.Second)
		}()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) runWorker(ctx context.Context) {
	for c.processNext(ctx) {
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	start := c.clock.Now()
	after, err := c.sync(ctx, key)
	c.metrics.observeReconcile(c.clock.Since(start), err)
	if err != nil {
		if apierrors.IsConflict(err) {
			klog.V(4).InfoS("Conflict, requeueing", "slab", key)
		} else {
			klog.ErrorS(err, "Sync failed, requeueing", "slab", key)
		}
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	if after > 0 {
		c.queue.AddAfter(key, after)
	}
	return true
}

// minPositive is the earlier of two requeue delays, 0 meaning none.
func minPositive(a, b time.Duration) time.Duration {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	case a < b:
		return a
	}
	return b
}

// sync makes one slab's world right. It returns when the slab should be
// looked at again even if nothing changes (a deadline), or an error to retry.
func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		utilruntime.HandleError(err)
		return 0, nil
	}
	slab, err := c.slabs.SessionLivedBackends(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Its pod, if any, goes with it: the garbage collector follows the
		// owner reference.
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if slab.DeletionTimestamp != nil {
		return 0, nil
	}
	now := c.clock.Now()
	status := slab.Status.DeepCopy()
	status.Phase = lifecycle.PhaseOf(status.Conditions)
	ch := &statusChange{status: status, generation: slab.Generation}
	var next time.Duration

	pod, foreign, err := c.podOf(slab)
	if err != nil {
		return 0, err
	}

	// A live backend past its hard lifetime is swept, by us.
	if !lifecycle.IsEnding(status.Phase) {
		if max, ok := slab.Spec.MaxLifetime(); ok {
			left := slab.CreationTimestamp.Add(max).Sub(now)
			if left <= 0 {
				ch.record(lifecycle.ConditionSwept, lifecycle.ReasonLifetimeExceeded,
					fmt.Sprintf("maxLifetimeSeconds (%d) reached", *slab.Spec.MaxLifetimeSeconds))
			} else {
				next = minPositive(next, left)
			}
		}
	}

	if !lifecycle.IsEnding(status.Phase) {
		var after time.Duration
		pod, foreign, after, err = c.syncLive(ctx, slab, ch, pod, foreign, now)
		if err != nil {
			return 0, err
		}
		next = minPositive(next, after)
	}

	// A swept backend is terminated for the same reason it was swept.
	if status.Phase == lifecycle.Swept {
		swept := metaCondition(status, lifecycle.ConditionSwept)
		reason, msg := lifecycle.ReasonTerminationRequested, "termination requested"
		if swept != nil {
			reason, msg = swept.Reason, swept.Message
		}
		ch.record(lifecycle.ConditionTerminating, reason, msg)
	}

	if !equality.Semantic.DeepEqual(&slab.Status, status) {
		updated := slab.DeepCopy()
		updated.Status = *status
		res, err := c.spawner.SpawnerV1().SessionLivedBackends(ns).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return 0, nil
			}
			return 0, err
		}
		slab = res
		for _, t := range ch.transitions {
			c.metrics.transition(t.Phase)
			kind := corev1.EventTypeNormal
			if t.Phase == lifecycle.Failed {
				kind = corev1.EventTypeWarning
			}
			c.recorder.Event(slab, kind, string(t.Phase), t.Reason+": "+t.Message)
			klog.V(2).InfoS("Backend phase changed", "slab", key, "phase", t.Phase, "reason", t.Reason, "message", t.Message)
		}
	}
	c.observeReady(slab)

	if status.NodeName != "" && slab.Labels[spawnerv1.LabelNode] != status.NodeName {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, spawnerv1.LabelNode, status.NodeName)
		if _, err := c.spawner.SpawnerV1().SessionLivedBackends(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return 0, err
		}
	}

	switch status.Phase {
	case lifecycle.Failed:
		if pod != nil && !foreign && pod.DeletionTimestamp == nil {
			if err := c.deletePod(ctx, pod, nil); err != nil {
				return 0, err
			}
		}
		failedAt := lifecycle.TransitionTime(status.Conditions, lifecycle.ConditionFailed)
		left := time.Duration(0)
		if failedAt != nil {
			left = failedAt.Add(c.opts.FailedRetention).Sub(now)
		}
		if left > 0 {
			return minPositive(next, left), nil
		}
		return 0, c.deleteSlab(ctx, slab, "failed backend retention ("+c.opts.FailedRetention.String()+") passed")
	case lifecycle.Terminating:
		if pod != nil && !foreign {
			if pod.DeletionTimestamp == nil {
				// With the template's grace period: SIGTERM, then time to finish.
				if err := c.deletePod(ctx, pod, slab.Spec.Template.TerminationGracePeriodSeconds); err != nil {
					return 0, err
				}
				return c.opts.PodGoneTimeout + podGrace(pod), nil
			}
			// Wait for the pod's delete event; give up waiting when the
			// kubelet is far past the deadline (node gone): the garbage
			// collector finishes it once the slab is gone.
			left := pod.DeletionTimestamp.Add(c.opts.PodGoneTimeout).Sub(now)
			if left > 0 {
				return left, nil
			}
		}
		return 0, c.deleteSlab(ctx, slab, "backend terminated")
	}
	return next, nil
}

// syncLive creates or adopts a live backend's pod and reads its state. It
// returns the pod (nil if none), whether that pod belongs to someone else,
// and when to look again.
func (c *Controller) syncLive(ctx context.Context, slab *spawnerv1.SessionLivedBackend, ch *statusChange,
	pod *corev1.Pod, foreign bool, now time.Time) (*corev1.Pod, bool, time.Duration, error) {
	status := ch.status
	if c.opts.PublicBaseURL != "" && status.URL == "" {
		status.URL = publicURL(c.opts.PublicBaseURL, slab.Name)
	}
	if pod == nil && ch.isTrue(lifecycle.ConditionPodCreated) {
		// The cache may lag behind our own create; ask the API server before
		// declaring the pod lost.
		live, err := c.kube.CoreV1().Pods(slab.Namespace).Get(ctx, slab.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("pod %s was deleted while the backend was live", slab.Name)})
			return nil, false, 0, nil
		case err != nil:
			return nil, false, 0, err
		}
		pod, foreign = live, !metav1.IsControlledBy(live, slab)
		if foreign {
			ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("pod %s was replaced by one this backend does not own", slab.Name)})
			return pod, foreign, 0, nil
		}
	}
	if pod == nil {
		if errs := spawnerv1.ValidateSpec(&slab.Spec, nil); len(errs) > 0 {
			ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec, Message: errs.ToAggregate().Error()})
			return nil, false, 0, nil
		}
		newPod := BuildPod(slab, c.opts.Sidecar)
		applyAppResourceDefaults(newPod, c.opts.AppResources)
		created, err := c.kube.CoreV1().Pods(slab.Namespace).Create(ctx, newPod, metav1.CreateOptions{})
		switch {
		case err == nil:
			c.metrics.podsCreated.Inc()
			pod = created
		case apierrors.IsAlreadyExists(err):
			// Created by an earlier sync or an earlier controller process
			// whose status write never happened: adopt it if it is ours.
			live, gerr := c.kube.CoreV1().Pods(slab.Namespace).Get(ctx, slab.Name, metav1.GetOptions{})
			if gerr != nil {
				return nil, false, 0, gerr // NotFound: deleted meanwhile; retry creates it
			}
			pod, foreign = live, !metav1.IsControlledBy(live, slab)
		case apierrors.IsInvalid(err):
			ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec, Message: "pod rejected by the API server: " + err.Error()})
			return nil, false, 0, nil
		case rejectedByPodSecurity(err):
			// The namespace's Pod Security level forbids what the template
			// asks for: no retry can change that, so fail now rather than
			// leave the backend Pending until the startup timeout.
			ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec, Message: "pod rejected by the namespace's Pod Security policy: " + err.Error()})
			return nil, false, 0, nil
		default:
			if c.opts.StartupTimeout > 0 && now.Sub(slab.CreationTimestamp.Time) > c.opts.StartupTimeout {
				ch.fail(Failure{Reason: lifecycle.ReasonStartupTimeout,
					Message: fmt.Sprintf("pod could not be created within %s: %v", c.opts.StartupTimeout, err)})
				return nil, false, 0, nil
			}
			c.recorder.Event(slab, corev1.EventTypeWarning, "PodCreateFailed", err.Error())
			return nil, false, 0, err
		}
	}
	if foreign {
		return pod, true, c.foreignPod(slab, ch, pod, now), nil
	}
	ch.record(lifecycle.ConditionPodCreated, lifecycle.ReasonPodCreated, "pod "+pod.Name+" created")
	if pod.DeletionTimestamp != nil {
		ch.fail(Failure{Reason: lifecycle.ReasonPodLost, Message: fmt.Sprintf("pod %s is being deleted while the backend was live", pod.Name)})
		return pod, false, 0, nil
	}
	return pod, false, applyPod(slab, ch, pod, now, c.opts.StartupTimeout), nil
}

// foreignPod handles a pod that has the backend's name but is not
// controlled by this slab.
func (c *Controller) foreignPod(slab *spawnerv1.SessionLivedBackend, ch *statusChange, pod *corev1.Pod, now time.Time) time.Duration {
	ref := metav1.GetControllerOf(pod)
	ours := ref != nil && ref.Kind == slabGVK.Kind && ref.APIVersion == slabGVK.GroupVersion().String()
	if !ours && pod.DeletionTimestamp == nil {
		ch.fail(Failure{Reason: lifecycle.ReasonInvalidSpec,
			Message: fmt.Sprintf("a pod named %s already exists and does not belong to this backend", pod.Name)})
		return 0
	}
	// The pod of an earlier slab of the same name, on its way out (the
	// garbage collector deletes it): wait for it, within the startup timeout.
	if c.opts.StartupTimeout > 0 && now.Sub(slab.CreationTimestamp.Time) > c.opts.StartupTimeout {
		ch.fail(Failure{Reason: lifecycle.ReasonStartupTimeout,
			Message: fmt.Sprintf("the name %s is still held by the pod of an earlier backend", pod.Name)})
		return 0
	}
	return 2 * time.Second
}

// podOf is the slab's pod from the cache, and whether it is someone else's.
func (c *Controller) podOf(slab *spawnerv1.SessionLivedBackend) (*corev1.Pod, bool, error) {
	pod, err := c.pods.Pods(slab.Namespace).Get(slab.Name)
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return pod, !metav1.IsControlledBy(pod, slab), nil
}

func (c *Controller) deletePod(ctx context.Context, pod *corev1.Pod, grace *int64) error {
	opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}, GracePeriodSeconds: grace}
	err := c.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts)
	if err == nil {
		c.metrics.podsDeleted.Inc()
		klog.V(2).InfoS("Deleted backend pod", "pod", klog.KObj(pod))
	}
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (c *Controller) deleteSlab(ctx context.Context, slab *spawnerv1.SessionLivedBackend, why string) error {
	opts := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &slab.UID}}
	err := c.spawner.SpawnerV1().SessionLivedBackends(slab.Namespace).Delete(ctx, slab.Name, opts)
	if err == nil {
		c.metrics.slabsDeleted.Inc()
		klog.V(2).InfoS("Deleted backend", "slab", klog.KObj(slab), "why", why)
	}
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// observeReady records spawn-to-ready latency once per slab, for slabs that
// became Ready while this process was running (a restarted controller does
// not replay old latencies).
func (c *Controller) observeReady(slab *spawnerv1.SessionLivedBackend) {
	if c.metrics == nil {
		return
	}
	readyAt := slab.Status.ReadyTime
	if readyAt == nil {
		readyAt = lifecycle.TransitionTime(slab.Status.Conditions, lifecycle.ConditionReady)
	}
	if readyAt == nil || !metaConditionTrue(&slab.Status, lifecycle.ConditionReady) {
		return
	}
	c.mu.Lock()
	seen := c.readySeen[slab.UID]
	c.readySeen[slab.UID] = true
	c.mu.Unlock()
	if seen || readyAt.Time.Before(c.started.Add(-time.Second)) {
		return
	}
	c.metrics.spawnToReady.Observe(readyAt.Sub(slab.CreationTimestamp.Time).Seconds())
}

func podGrace(pod *corev1.Pod) time.Duration {
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return corev1.DefaultTerminationGracePeriodSeconds * time.Second
}

func publicURL(base, name string) string {
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return base + "/p/" + name + "/"
}

func metaCondition(status *spawnerv1.SessionLivedBackendStatus, t string) *metav1.Condition {
	for i := range status.Conditions {
		if status.Conditions[i].Type == t {
			return &status.Conditions[i]
		}
	}
	return nil
}

func metaConditionTrue(status *spawnerv1.SessionLivedBackendStatus, t string) bool {
	c := metaCondition(status, t)
	return c != nil && c.Status == metav1.ConditionTrue
}
