// Package sweeper is the node-local half of spawner's lifecycle: it follows
// the sidecar of every backend pod on its node, records a slab Ready the
// moment its app listens, and sweeps it once idle for its grace period.
// docs/sweeper.md describes the design.
package sweeper

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/kubeclient"
	"spawner.dev/common/logs"
	"spawner.dev/common/metrics"
	"spawner.dev/common/routerproof"
	"spawner.dev/common/wire"
	"spawner.dev/generated/clientset/versioned"
)

// Config holds the sweeper's settings; zero fields take the defaults below.
type Config struct {
	// NodeName is the node whose backend pods are followed (required).
	NodeName string
	// Namespace, when set, limits the sweeper to one namespace (tests run a
	// sweeper per test namespace); empty means all.
	Namespace string
	// StatusPort is the sidecar's status port (default 9091).
	StatusPort int
	// BackoffMin and BackoffMax bound the reconnect delay (100 ms, 5 s).
	BackoffMin, BackoffMax time.Duration
	// StartupRetry spaces attempts to open a new backend's first stream
	// (50 ms), for up to StartupWindow (1 min): the pod status says the
	// sidecar runs, so its port opens within moments, and the slab's Ready
	// waits on that first event. Only then does the doubling backoff apply.
	StartupRetry, StartupWindow time.Duration
	// ConnectTimeout bounds connecting and reading the response header (2 s).
	ConnectTimeout time.Duration
	// ReadIdle is the longest silence on a stream before it is dropped and
	// reopened (150 s: two of the sidecar's 60 s keep-alives and some slack).
	// A path that drops packets is found sooner, by TCP keep-alive (30 s,
	// see streamKeepAlive); this catches a sidecar process that stopped
	// writing while its kernel still answers.
	ReadIdle time.Duration
	// ConfirmTimeout bounds the fresh read made before a sweep (2 s).
	ConfirmTimeout time.Duration
	// RetryDelay spaces retries of failed status writes (1 s).
	RetryDelay time.Duration
	// Resync is the pod informer's resync period (0: none).
	Resync time.Duration
	// ActivityMinGap is the shortest time between two writes of one
	// backend's status.activity (2 s); a change between busy and idle is
	// written as soon as it allows. ActivityRefresh (10 s) spaces writes of
	// other changes (how many connections). See activity.go.
	ActivityMinGap, ActivityRefresh time.Duration

	// The process's settings (Run; New ignores them).

	// Kube is how Run reaches the API server.
	Kube kubeclient.Options
	// Log is Run's logging.
	Log logs.Options
	// Listen is the address of /healthz and /metrics.
	Listen string
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.StatusPort == 0 {
		c.StatusPort = spawnerv1.SidecarStatusPort
	}
	def(&c.BackoffMin, 100*time.Millisecond)
	def(&c.BackoffMax, 5*time.Second)
	def(&c.StartupRetry, 50*time.Millisecond)
	def(&c.StartupWindow, time.Minute)
	def(&c.ConnectTimeout, 2*time.Second)
	def(&c.ReadIdle, 150*time.Second)
	def(&c.ConfirmTimeout, 2*time.Second)
	def(&c.RetryDelay, time.Second)
	def(&c.ActivityMinGap, 2*time.Second)
	def(&c.ActivityRefresh, 10*time.Second)
}

// Sweeper follows the backends on one node.
type Sweeper struct {
	cfg   Config
	slabs versioned.Interface
	clock Clock
	log   *slog.Logger
	m     *sweeperMetrics
	ctx   context.Context

	mu       sync.Mutex
	backends map[string]*backend // by pod namespace/name
}

// New returns a sweeper; reg receives its metrics (nil: a private registry).
func New(cfg Config, slabs versioned.Interface, clock Clock, log *slog.Logger, reg *metrics.Registry) *Sweeper {
	cfg.defaults()
	if clock == nil {
		clock = RealClock
	}
	if log == nil {
		log = slog.Default()
	}
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	s := &Sweeper{cfg: cfg, slabs: slabs, clock: clock, log: log, ctx: context.Background(), backends: map[string]*backend{}}
	s.m = newMetrics(reg, s.count)
	return s
}

func (s *Sweeper) count() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(len(s.backends))
}

// PodListOptions selects the spawner backend pods on a node; the informer
// lists and watches nothing else.
func PodListOptions(node string) func(*metav1.ListOptions) {
	return func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		o.LabelSelector = labels.SelectorFromSet(labels.Set{spawnerv1.LabelManagedBy: spawnerv1.ManagedByValue}).String()
	}
}

// Run watches the node's backend pods until ctx ends, then closes every
// stream. ready is called once the informer has synced (may be nil).
func (s *Sweeper) Run(ctx context.Context, kube kubernetes.Interface, ready func()) error {
	if s.cfg.NodeName == "" {
		return errors.New("sweeper: no node name")
	}
	s.ctx = ctx
	factory := informers.NewSharedInformerFactoryWithOptions(kube, s.cfg.Resync,
		informers.WithNamespace(s.cfg.Namespace), // "" = all namespaces
		informers.WithTweakListOptions(PodListOptions(s.cfg.NodeName)))
	inf := factory.Core().V1().Pods().Informer()
	inf.SetTransform(trimPod)
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.syncPod(obj) },
		UpdateFunc: func(_, obj any) { s.syncPod(obj) },
		DeleteFunc: func(obj any) { s.deletePod(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		s.stopAll()
		return ctx.Err()
	}
	s.log.Info("watching backend pods", "node", s.cfg.NodeName)
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	factory.Shutdown()
	s.stopAll()
	return nil
}

// trimPod drops what the sweeper never reads (managed fields, specs of
// volumes and the like) so 500 cached pods stay small. Of the spec it keeps
// the node and the sidecar container's router proof.
func trimPod(obj any) (any, error) {
	if p, ok := obj.(*corev1.Pod); ok {
		proof := routerproof.FromPod(p, spawnerv1.SidecarContainerName)
		p.ManagedFields = nil
		p.Spec = corev1.PodSpec{NodeName: p.Spec.NodeName}
		if proof != "" {
			p.Spec.Containers = []corev1.Container{{Name: spawnerv1.SidecarContainerName,
				Env: []corev1.EnvVar{{Name: wire.SidecarRouterProofEnv, Value: proof}}}}
		}
		p.Status.Conditions = nil
	}
	return obj, nil
}

func (s *Sweeper) stopAll() {
	s.mu.Lock()
	bs := make([]*backend, 0, len(s.backends))
	for k, b := range s.backends {
		bs = append(bs, b)
		delete(s.backends, k)
	}
	s.mu.Unlock()
	for _, b := range bs {
		b.stop()
	}
	for _, b := range bs {
		<-b.done
	}
}

// targetOf says whether a pod is followed, and how. A pod is followed while
// it has an IP, its sidecar runs, and it is neither finished nor being
// deleted (those are the controller's business, never a sweep).
func (s *Sweeper) targetOf(pod *corev1.Pod) (target, bool) {
	slab := pod.Labels[spawnerv1.LabelBackend]
	if slab == "" || pod.Labels[spawnerv1.LabelManagedBy] != spawnerv1.ManagedByValue {
		return target{}, false
	}
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return target{}, false
	}
	if pod.Status.PodIP == "" || !sidecarRunning(pod) {
		return target{}, false
	}
	return target{
		uid:       pod.UID,
		namespace: pod.Namespace,
		slab:      slab,
		addr:      net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(s.cfg.StatusPort)),
		proof:     routerproof.FromPod(pod, spawnerv1.SidecarContainerName),
		grace:     gracePeriod(pod),
	}, true
}

func sidecarRunning(pod *corev1.Pod) bool {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == spawnerv1.SidecarContainerName {
			return cs.State.Running != nil
		}
	}
	return false
}

// gracePeriod reads the pod annotation the controller copies from the slab;
// missing or malformed, it is the API default (never shorter).
func gracePeriod(pod *corev1.Pod) time.Duration {
	if v, ok := pod.Annotations[spawnerv1.AnnotationGracePeriodSeconds]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
	}
	return time.Duration(spawnerv1.DefaultGracePeriodSeconds) * time.Second
}

func (s *Sweeper) syncPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	t, follow := s.targetOf(pod)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.backends[key]
	if b != nil && (!follow || b.t.uid != t.uid || b.t.addr != t.addr || b.t.proof != t.proof || b.t.slab != t.slab) {
		delete(s.backends, key)
		b.stop()
		b = nil
	}
	if !follow {
		return
	}
	if b == nil {
		s.startLocked(key, t)
		return
	}
	b.setGrace(t.grace)
}

// startLocked begins following a backend.
func (s *Sweeper) startLocked(key string, t target) *backend {
	b := newBackend(s, key, t)
	s.backends[key] = b
	go b.run()
	return b
}

func (s *Sweeper) deletePod(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	s.mu.Lock()
	b := s.backends[key]
	delete(s.backends, key)
	s.mu.Unlock()
	if b != nil {
		b.stop()
	}
}

type slabResult struct {
	slab *spawnerv1.SessionLivedBackend
	err  error
}

// prefetchSlab GETs the slab in the background (a short-lived goroutine,
// only when a deadline fires); the result arrives on the channel.
func (s *Sweeper) prefetchSlab(ctx context.Context, t target) <-chan slabResult {
	ch := make(chan slabResult, 1)
	go func() {
		slab, err := s.slabs.SpawnerV1().SessionLivedBackends(t.namespace).Get(ctx, t.slab, metav1.GetOptions{})
		ch <- slabResult{slab, err}
	}()
	return ch
}

// maxWriteAttempts bounds read-modify-write retries on conflicts.
const maxWriteAttempts = 8

// markReady is the fast path: one GET and one UpdateStatus recording Ready,
// readyTime and lastActiveTime. On success (or when nothing is left to
// record) it tells b when the slab became Ready.
func (s *Sweeper) markReady(b *backend, ev Event, received time.Time) {
	b.mu.Lock()
	t := b.t
	b.mu.Unlock()
	client := s.slabs.SpawnerV1().SessionLivedBackends(t.namespace)
	for attempt := 1; ; attempt++ {
		slab, err := client.Get(b.ctx, t.slab, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			b.log.Info("slab not found; not following its readiness or idleness")
			b.readyRecorded(received, true, time.Time{})
			return
		}
		if err != nil {
			s.m.apiErrors.Inc()
			b.log.Error("reading slab for Ready", "err", err)
			return // rearm retries
		}
		keepalive := keepaliveOf(slab)
		phase := lifecycle.Phase(slab)
		if !lifecycle.CanRecord(phase, lifecycle.ConditionReady) {
			b.readyRecorded(received, lifecycle.IsEnding(phase), keepalive)
			return
		}
		if meta.IsStatusConditionTrue(slab.Status.Conditions, lifecycle.ConditionReady) {
			// Already Ready: recorded before this sweeper restarted, or by
			// the api-server at a warm claim a moment ago. Count from its
			// readyTime, which the API stores truncated to the second:
			// readyAt rounds it up, bounded by now, so the grace clock never
			// starts before the backend was Ready. A claimed warm pod's
			// sidecar has been idle since the pod started; counting from
			// the truncated readyTime swept such a backend up to a second
			// before its grace period after the claim had passed.
			since := received
			if rt := slab.Status.ReadyTime; rt != nil {
				since = readyAt(rt.Time, received)
			} else if tt := lifecycle.TransitionTime(slab.Status.Conditions, lifecycle.ConditionReady); tt != nil {
				since = readyAt(tt.Time, received)
			}
			b.readyRecorded(since, false, keepalive)
			return
		}
		if lifecycle.ClaimRecordPending(slab, s.clock.Now()) {
			// The api-server records this claim's Ready itself (reason
			// WarmPodClaimed, readyTime at the claim): rearm asks again
			// after RetryDelay, and records it here only if it never came.
			// The sweeper follows a claimed pod from the take, before the
			// bind, and its app already listens: its own Ready write raced
			// the claim, made the bind conflict (one more GET and patch on
			// a warm spawn's path) and took the Ready condition for
			// AppListening about as often as not.
			return
		}
		lifecycle.Record(&slab.Status, lifecycle.ConditionReady, lifecycle.ReasonAppListening,
			"the application listens on its port", slab.Generation)
		now := metav1.NewTime(received)
		slab.Status.ReadyTime = &now
		last := metav1.NewTime(ev.LastActive)
		slab.Status.LastActiveTime = &last
		_, err = client.UpdateStatus(b.ctx, slab, metav1.UpdateOptions{})
		if err == nil {
			lat := s.clock.Now().Sub(received)
			s.m.readyLatency.Observe(lat.Seconds())
			s.m.readies.Inc()
			b.log.Info("recorded Ready", "write", lat)
			b.readyRecorded(received, false, keepalive)
			return
		}
		if apierrors.IsNotFound(err) {
			b.readyRecorded(received, true, time.Time{})
			return
		}
		if !apierrors.IsConflict(err) || attempt >= maxWriteAttempts {
			s.m.apiErrors.Inc()
			b.log.Error("recording Ready", "err", err)
			return
		}
	}
}

// readyAt is when a backend became Ready, from a time the API stored
// truncated to the second (readyTime, a condition's lastTransitionTime) and
// now: the true time lies in [stored, stored+1s] and is not after now (give
// or take the claim's own few milliseconds).
func readyAt(stored, now time.Time) time.Time {
	up := stored.Add(time.Second)
	if now.Before(up) {
		up = now
	}
	if up.Before(stored) {
		return stored
	}
	return up
}

// keepaliveOf is the slab's last keepalive call (zero for none).
func keepaliveOf(slab *spawnerv1.SessionLivedBackend) time.Time {
	if a := slab.Status.Activity; a != nil && a.KeepaliveTime != nil {
		return a.KeepaliveTime.Time
	}
	return time.Time{}
}

// markSwept records Swept (reason Idle, a message naming the last activity),
// lastActiveTime and the final activity in one status write, unless the
// phase machine says the slab is past that, or the slab shows a keepalive
// call that moves the deadline past now: then keptAlive is that call's time
// and nothing is written. swept reports whether this call recorded Swept.
func (s *Sweeper) markSwept(ctx context.Context, t target, ev Event, keepalive, deadline time.Time, prefetched <-chan slabResult) (swept bool, keptAlive time.Time, err error) {
	client := s.slabs.SpawnerV1().SessionLivedBackends(t.namespace)
	for attempt := 1; ; attempt++ {
		var slab *spawnerv1.SessionLivedBackend
		if attempt == 1 && prefetched != nil {
			r := <-prefetched
			slab, err = r.slab, r.err
		} else {
			slab, err = client.Get(ctx, t.slab, metav1.GetOptions{})
		}
		if apierrors.IsNotFound(err) {
			return false, time.Time{}, nil
		}
		if err != nil {
			s.m.apiErrors.Inc()
			return false, time.Time{}, err
		}
		now := s.clock.Now()
		if k := keepaliveOf(slab); k.After(keepalive) && k.Add(t.grace).After(now) {
			return false, k, nil
		}
		phase := lifecycle.Phase(slab)
		if !lifecycle.CanRecord(phase, lifecycle.ConditionSwept) {
			return false, time.Time{}, nil
		}
		msg := sweptMessage(ev, keepalive, now, t.grace)
		if !lifecycle.Record(&slab.Status, lifecycle.ConditionSwept, lifecycle.ReasonIdle, msg, slab.Generation) {
			return false, time.Time{}, nil
		}
		last := metav1.NewTime(ev.LastActive)
		slab.Status.LastActiveTime = &last
		setSweptActivity(&slab.Status, ev, keepalive, deadline, now)
		_, err = client.UpdateStatus(ctx, slab, metav1.UpdateOptions{})
		if err == nil {
			s.m.sweeps.Inc()
			s.log.Info("swept idle backend", "backend", t.namespace+"/"+t.slab, "why", msg)
			return true, time.Time{}, nil
		}
		if apierrors.IsNotFound(err) {
			return false, time.Time{}, nil
		}
		if !apierrors.IsConflict(err) || attempt >= maxWriteAttempts {
			s.m.apiErrors.Inc()
			return false, time.Time{}, err
		}
	}
}
