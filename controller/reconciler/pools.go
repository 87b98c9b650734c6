package reconciler

import (
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/controller/pool"
	"spawner.dev/generated/clientset/versioned"
	"spawner.dev/generated/informers/externalversions"
)

// poolWorkers: pools are few and a sync issues its creates in parallel.
const poolWorkers = 2

// newPoolController wires the BackendPool reconciler (controller/pool) to
// the slab reconciler's informer factories, recorder, logger and pod builder,
// so a warm pod is built exactly like a backend's.
func newPoolController(sp versioned.Interface, kube kubernetes.Interface, spawnerFactory externalversions.SharedInformerFactory,
	pods coreinformers.PodInformer, recorder record.EventRecorder, log *slog.Logger, opts Options) (*pool.Controller, error) {
	pools := spawnerFactory.Spawner().V1().BackendPools()
	slabs := spawnerFactory.Spawner().V1().SessionLivedBackends()
	return pool.New(pool.Options{
		Kube: kube, Spawner: sp,
		PoolInformer: pools.Informer(), Pools: pools.Lister(),
		PodInformer: pods.Informer(), Pods: pods.Lister(),
		SlabInformer: slabs.Informer(), Slabs: slabs.Lister(),
		Recorder: recorder, Logger: log, MaxStarting: opts.PoolMaxStarting,
		BuildPod: func(p *spawnerv1.BackendPool, hash string) *corev1.Pod {
			return BuildWarmPod(p, hash, opts.Sidecar, opts.AppResources)
		},
	})
}
