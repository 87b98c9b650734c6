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
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/workloop"
	"spawner.dev/generated/clientset/versioned"
	spawnerinformers "spawner.dev/generated/informers/externalversions/spawner/v1"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"
)

// Options are the controller's behaviour settings (flags in main).
type Options struct {
	Sidecar SidecarOptions
	// AppResources: the app container's requests and limits when its
	// template sets none (applyAppResourceDefaults).
	AppResources AppResources
	// PublicBaseURL, when set, gives every backend status.url: <base>/p/<name>/,
	// or with PublicHostSuffix <scheme>://<name>.<suffix>/ (spawnerv1.PublicRoutes).
	PublicBaseURL    string
	PublicHostSuffix string
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
	// PoolMaxStarting bounds the warm pods each BackendPool starts at once
	// (pool.Options.MaxStarting; 0: pool.DefaultMaxStarting).
	PoolMaxStarting int
}

// Controller reconciles SessionLivedBackends with their pods.
type Controller struct {
	opts     Options
	kube     kubernetes.Interface
	spawner  versioned.Interface
	slabs    spawnerlisters.SessionLivedBackendLister
	pods     corelisters.PodLister
	synced   []cache.InformerSynced
	queue    *workloop.Loop
	recorder record.EventRecorder
	clock    clock.Clock
	metrics  *Metrics
	log      *slog.Logger

	started time.Time

	mu        sync.Mutex
	readySeen map[types.UID]bool // slabs whose spawn-to-ready latency was observed
}

// Params is what New wires together. Kube, Spawner, Slabs, Pods and Recorder
// are required; Metrics, Clock and Logger have defaults.
type Params struct {
	Kube    kubernetes.Interface
	Spawner versioned.Interface
	// Slabs watches slabs in all namespaces (or the one Config.Namespace names).
	Slabs spawnerinformers.SessionLivedBackendInformer
	// Pods watches pods labelled app.kubernetes.io/managed-by=spawner.
	Pods     coreinformers.PodInformer
	Recorder record.EventRecorder
	Metrics  *Metrics
	Clock    clock.Clock
	// Logger defaults to slog.Default().
	Logger  *slog.Logger
	Options Options
}

// New wires a controller to its informers.
func New(p Params) (*Controller, error) {
	clk, metrics, opts, log := p.Clock, p.Metrics, p.Options, p.Logger
	if log == nil {
		log = slog.Default()
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	if metrics == nil {
		metrics = NewMetrics()
	}
	slabInformer, podInformer := p.Slabs.Informer(), p.Pods.Informer()
	metrics.slabs = p.Slabs.Lister()
	if opts.PodGoneTimeout == 0 {
		opts.PodGoneTimeout = time.Minute
	}
	c := &Controller{
		opts: opts, kube: p.Kube, spawner: p.Spawner,
		slabs: p.Slabs.Lister(), pods: p.Pods.Lister(),
		synced:   []cache.InformerSynced{slabInformer.HasSynced, podInformer.HasSynced},
		recorder: p.Recorder, clock: clk, metrics: metrics, log: log,
		started:   clk.Now(),
		readySeen: map[types.UID]bool{},
	}
	c.queue = workloop.New("slabs", c.timedSync, log)
	metrics.queueDepth = func() float64 { return float64(c.queue.Len()) }
	if _, err := slabInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.queue.Enqueue,
		UpdateFunc: func(old, obj interface{}) { c.observeTransition(old, obj); c.queue.Enqueue(obj) },
		DeleteFunc: c.slabDeleted,
	}); err != nil {
		return nil, err
	}
	if _, err := podInformer.AddEventHandler(workloop.Handler(c.queue, slabKeyOf)); err != nil {
		return nil, err
	}
	return c, nil
}

// observeTransition gives the phase transitions other components write
// (Ready from the sweeper, Swept from the sweeper or the api-server) their
// Event, so every transition has one. The controller's own Swept write always
// carries Terminating too, so the object never shows Swept for it and no
// transition gets two Events.
func (c *Controller) observeTransition(old, obj interface{}) {
	o, ok1 := old.(*spawnerv1.SessionLivedBackend)
	n, ok2 := obj.(*spawnerv1.SessionLivedBackend)
	if !ok1 || !ok2 {
		return
	}
	phase := lifecycle.Phase(n)
	if phase == lifecycle.Phase(o) || (phase != lifecycle.Ready && phase != lifecycle.Swept) {
		return
	}
	reason, msg := "", ""
	if cnd := meta.FindStatusCondition(n.Status.Conditions, lifecycle.ConditionOf(phase)); cnd != nil {
		reason, msg = cnd.Reason, cnd.Message
	}
	c.metrics.transition(phase)
	c.recorder.Event(n, corev1.EventTypeNormal, string(phase), reason+": "+msg)
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

// slabKeyOf is the key of the slab controlling a pod.
func slabKeyOf(pod *corev1.Pod) string {
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != slabGVK.Kind || ref.APIVersion != slabGVK.GroupVersion().String() {
		return ""
	}
	return pod.Namespace + "/" + ref.Name
}

// CachesSynced reports whether the informers have synced (readiness).
func (c *Controller) CachesSynced() bool { return c.queue.Synced() }

// Run waits for the caches, then syncs slabs with workers until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	return c.queue.Run(ctx, workers, c.synced...)
}

// timedSync is sync, timed for the reconcile metrics.
func (c *Controller) timedSync(ctx context.Context, key string) (time.Duration, error) {
	start := c.clock.Now()
	after, err := c.sync(ctx, key)
	c.metrics.observeReconcile(c.clock.Since(start), err)
	return after, err
}
