package reconciler

import (
	"net/http"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"

	"spawner.dev/common/metrics"
)

// Metrics are the controller's Prometheus metrics (see docs/controller.md).
type Metrics struct {
	Registry *metrics.Registry

	reconciles      *metrics.Counter
	reconcileErrors *metrics.Counter
	conflicts       *metrics.Counter
	reconcileTime   *metrics.Histogram
	transitions     *metrics.CounterVec
	podsCreated     *metrics.Counter
	podsDeleted     *metrics.Counter
	slabsDeleted    *metrics.Counter
	spawnToReady    *metrics.Histogram
	backends        *metrics.GaugeVec
	poolPods        *metrics.GaugeVec

	queueDepth func() float64
	slabs      spawnerlisters.SessionLivedBackendLister
	// pools is set while this controller leads (run.go), read by scrapes.
	pools atomic.Pointer[spawnerlisters.BackendPoolLister]
}

// allPhases are reported even at zero, so dashboards see every series.
var allPhases = []spawnerv1.BackendPhase{
	lifecycle.Pending, lifecycle.Scheduled, lifecycle.Running, lifecycle.Ready,
	lifecycle.Swept, lifecycle.Terminating, lifecycle.Failed,
}

// NewMetrics registers the controller's metrics in a new registry.
func NewMetrics() *Metrics {
	r := metrics.NewRegistry()
	m := &Metrics{Registry: r}
	m.reconciles = r.NewCounter("spawner_controller_reconciles_total", "Syncs of one slab key, successful or not.")
	m.reconcileErrors = r.NewCounter("spawner_controller_reconcile_errors_total", "Syncs that failed and were requeued with backoff (conflicts included).")
	m.conflicts = r.NewCounter("spawner_controller_reconcile_conflicts_total", "Syncs whose status write lost a resourceVersion race (requeued).")
	m.reconcileTime = r.NewHistogram("spawner_controller_reconcile_duration_seconds", "Time one sync took.", nil)
	r.NewGaugeFunc("spawner_controller_queue_depth", "Slab keys waiting in the workqueue.", func() float64 {
		if m.queueDepth == nil {
			return 0
		}
		return m.queueDepth()
	})
	m.backends = r.NewGaugeVec("spawner_controller_backends", "Backends (slabs) in the informer cache, by phase.", "phase")
	for _, p := range allPhases {
		m.backends.WithLabelValues(string(p))
	}
	m.poolPods = r.NewGaugeVec("spawner_controller_pool_pods",
		"Pods of each BackendPool by state (ready: warm and claimable; starting: warm, not Ready yet; claimed: live backends claimed from it), from its status.",
		"namespace", "pool", "state")
	m.transitions = r.NewCounterVec("spawner_controller_phase_transitions_total", "Phase transitions recorded by this controller, by new phase.", "phase")
	m.podsCreated = r.NewCounter("spawner_controller_pods_created_total", "Backend pods created.")
	m.podsDeleted = r.NewCounter("spawner_controller_pods_deleted_total", "Backend pods deleted (failed or terminated backends).")
	m.slabsDeleted = r.NewCounter("spawner_controller_backends_deleted_total", "Slabs deleted after termination or failed retention.")
	m.spawnToReady = r.NewHistogram("spawner_controller_spawn_to_ready_seconds",
		"From slab creation to Ready, for slabs that became Ready while this controller ran.",
		[]float64{0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300})
	return m
}

func (m *Metrics) observeReconcile(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.reconciles.Inc()
	m.reconcileTime.Observe(d.Seconds())
	if err != nil {
		m.reconcileErrors.Inc()
		if apierrors.IsConflict(err) {
			m.conflicts.Inc()
		}
	}
}

func (m *Metrics) transition(p spawnerv1.BackendPhase) {
	if m == nil {
		return
	}
	m.transitions.WithLabelValues(string(p)).Inc()
}

// ServeHTTP refreshes the by-phase gauge from the cache and renders.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m.slabs != nil {
		counts := map[spawnerv1.BackendPhase]int{}
		if list, err := m.slabs.List(labels.Everything()); err == nil {
			for _, s := range list {
				counts[lifecycle.Phase(s)]++
			}
		}
		for _, p := range allPhases {
			m.backends.WithLabelValues(string(p)).Set(float64(counts[p]))
		}
	}
	if pools := m.pools.Load(); pools != nil {
		var samples []metrics.Sample
		if list, err := (*pools).List(labels.Everything()); err == nil {
			for _, p := range list {
				for state, n := range map[string]int32{"ready": p.Status.ReadyReplicas, "starting": p.Status.StartingReplicas, "claimed": p.Status.ClaimedReplicas} {
					samples = append(samples, metrics.Sample{Labels: []string{p.Namespace, p.Name, state}, Value: float64(n)})
				}
			}
		}
		m.poolPods.Replace(samples)
	}
	m.Registry.ServeHTTP(w, r)
}

// followPools makes scrapes report the pools of lister
// (spawner_controller_pool_pods); nil stops it (this controller no longer
// leads, and its cache is gone).
func (m *Metrics) followPools(lister spawnerlisters.BackendPoolLister) {
	if m == nil {
		return
	}
	if lister == nil {
		m.pools.Store(nil)
		m.poolPods.Replace(nil)
		return
	}
	m.pools.Store(&lister)
}
