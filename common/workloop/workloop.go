// Package workloop is the work loop every spawner controller runs, in the
// shape of k8s.io/sample-controller: informer event handlers put
// namespace/name keys on a rate-limited workqueue, and workers take each key
// to one level-triggered sync. The slab reconciler (controller/reconciler)
// and the pool reconciler (controller/pool) each run one; what differs
// between them is only their Sync.
package workloop

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Sync makes one key's world right. It returns when the key should be looked
// at again even if nothing changes (0: on its next event only), or an error
// to retry with back-off.
type Sync func(ctx context.Context, key string) (time.Duration, error)

// Loop is a workqueue of keys and the workers that sync them.
type Loop struct {
	name   string
	sync   Sync
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[string]
	synced atomic.Bool
}

// New returns a loop whose queue is called name ("slabs", "pools": the
// workqueue's name, and the "queue" attribute of its log lines). A failed
// key is retried after 5 ms, doubling up to a minute: conflicts and API
// errors retry fast, a key that keeps failing does not spin.
func New(name string, sync Sync, log *slog.Logger) *Loop {
	if log == nil {
		log = slog.Default()
	}
	return &Loop{
		name: name, sync: sync, log: log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
	}
}

// Enqueue queues an informer object's namespace/name key (an event handler).
func (l *Loop) Enqueue(obj interface{}) {
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	l.queue.Add(key)
}

// Handler returns informer event handlers that queue keyOf(obj) for every
// added, updated (the new state) or deleted (the last known state) object of
// type T; keyOf returns "" for an object of no interest. It is how a
// controller queues the owner of a dependent (a pod's slab or pool).
func Handler[T any](l *Loop, keyOf func(T) string) cache.ResourceEventHandlerFuncs {
	add := func(obj interface{}) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if o, ok := obj.(T); ok {
			if key := keyOf(o); key != "" {
				l.queue.Add(key)
			}
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    add,
		UpdateFunc: func(_, obj interface{}) { add(obj) },
		DeleteFunc: add,
	}
}

// Add queues a key.
func (l *Loop) Add(key string) { l.queue.Add(key) }

// Len is the number of keys waiting (a metric).
func (l *Loop) Len() int { return l.queue.Len() }

// Synced reports whether Run has seen the informer caches synced (readiness).
func (l *Loop) Synced() bool { return l.synced.Load() }

// Run waits for the caches, then syncs keys with workers until ctx ends.
func (l *Loop) Run(ctx context.Context, workers int, synced ...cache.InformerSynced) error {
	defer utilruntime.HandleCrash()
	defer l.queue.ShutDown()
	l.log.Info("waiting for informer caches to sync", "queue", l.name)
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("%s: informer caches did not sync", l.name)
	}
	l.synced.Store(true)
	l.log.Info("starting workers", "queue", l.name, "count", workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				for l.processNext(ctx) {
				}
			}, time.Second)
		}()
	}
	<-ctx.Done()
	l.queue.ShutDown()
	wg.Wait()
	return nil
}

func (l *Loop) processNext(ctx context.Context) bool {
	key, shutdown := l.queue.Get()
	if shutdown {
		return false
	}
	defer l.queue.Done(key)
	after, err := l.sync(ctx, key)
	if err != nil {
		if apierrors.IsConflict(err) {
			l.log.Debug("conflict, requeueing", "queue", l.name, "key", key)
		} else {
			l.log.Error("sync failed, requeueing", "queue", l.name, "key", key, "err", err)
		}
		l.queue.AddRateLimited(key)
		return true
	}
	l.queue.Forget(key)
	if after > 0 {
		l.queue.AddAfter(key, after)
	}
	return true
}

// Get reads a key's object with get (a lister's): found is false when the
// object is gone (or the key is malformed, which no handler queues), and err
// is any other error, to retry.
func Get[T any](key string, get func(namespace, name string) (T, error)) (obj T, found bool, err error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		utilruntime.HandleError(err)
		return obj, false, nil
	}
	obj, err = get(ns, name)
	if apierrors.IsNotFound(err) {
		return obj, false, nil
	}
	return obj, err == nil, err
}

// IgnoreGone is err, or nil when it says the object is already gone
// (NotFound) or has changed since it was read (Conflict, a failed
// precondition): a delete or write that the next sync decides again.
func IgnoreGone(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}
