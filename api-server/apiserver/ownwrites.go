package apiserver

import (
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// ownWrites is what this replica's own writes returned (a slab it created
// or bound, a warm pod it took), laid over its informer caches until the
// caches have caught up: read-your-writes for one replica, as client-go's
// MutationCache gives a controller. Under a burst of claims the caches lag
// the writes by seconds, and every read that missed them was a GET to an
// API server already seconds behind: in a burst of 100 claims against 100
// warm pods on the local cluster (one replica), 393 slab GETs and 90 pod
// GETs, most from ready URLs asking about claims this replica had just
// answered (make bench-pool, 2026-12-01). It is a view, never a lock: the
// API's preconditions decide every claim.
//
// Why not cache.MutationCache itself: it panics on a resourceVersion that is
// not an integer (a coder error to it; the API's contract calls versions
// opaque), and the fake clientset of the tests has none. Here, versions that
// both parse as integers are compared; otherwise the write holds until the
// informer delivers any later event for the object, or ownWritesTTL passes.
type ownWrites struct {
	mu      sync.Mutex
	entries map[string]ownWrite
	deleted map[types.UID]time.Time // seen deleted: a write result arriving later is not kept
	swept   time.Time
	now     func() time.Time
}

type ownWrite struct {
	obj runtime.Object
	at  time.Time
}

// ownWritesTTL bounds how long a write is laid over its cache. An
// informer's event of the write normally retires it first (observe); the
// TTL is for an object whose events never come (created and deleted within
// a relist).
const ownWritesTTL = 30 * time.Second

func newOwnWrites() *ownWrites {
	return &ownWrites{entries: map[string]ownWrite{}, deleted: map[types.UID]time.Time{}, now: time.Now}
}

// record lays obj, the result of one of this replica's writes, over its
// cache.
func (o *ownWrites) record(obj runtime.Object) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	o.sweepLocked(now)
	if _, gone := o.deleted[m.GetUID()]; gone {
		return
	}
	if cur, ok := o.entries[key]; ok && olderOrSame(obj, cur.obj) && !olderOrSame(cur.obj, obj) {
		return // a later write's result is already here
	}
	o.entries[key] = ownWrite{obj: obj, at: now}
}

// get is the object at key: cached (found) or this replica's write of it,
// whichever is newer.
func (o *ownWrites) get(key string, cached runtime.Object, found bool) (runtime.Object, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.entries[key]
	switch {
	case !ok:
		return cached, found
	case o.now().Sub(e.at) >= ownWritesTTL:
		delete(o.entries, key)
		return cached, found
	case found && olderOrSame(e.obj, cached):
		delete(o.entries, key)
		return cached, found
	}
	return e.obj, true
}

// observe retires the write at obj's key once the informer delivered obj,
// unless obj is known to be older than the write.
func (o *ownWrites) observe(obj any) {
	cur, ok := obj.(runtime.Object)
	if !ok {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if e, ok := o.entries[key]; ok && !(olderOrSame(cur, e.obj) && !olderOrSame(e.obj, cur)) {
		delete(o.entries, key)
	}
}

// observeDelete retires the write of a deleted object and keeps a later
// write result of it out.
func (o *ownWrites) observeDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if e, ok := o.entries[key]; ok {
		if em, err := meta.Accessor(e.obj); err == nil && em.GetUID() == m.GetUID() {
			delete(o.entries, key)
		}
	}
	o.deleted[m.GetUID()] = o.now()
}

// sweepLocked drops what outlived ownWritesTTL, at most once a second.
func (o *ownWrites) sweepLocked(now time.Time) {
	if now.Sub(o.swept) < time.Second {
		return
	}
	o.swept = now
	for k, e := range o.entries {
		if now.Sub(e.at) >= ownWritesTTL {
			delete(o.entries, k)
		}
	}
	for u, at := range o.deleted {
		if now.Sub(at) >= ownWritesTTL {
			delete(o.deleted, u)
		}
	}
}

// olderOrSame reports whether a is known to be no newer than b: both
// resourceVersions parse as integers (as the API server's, from etcd, do)
// and a's is not greater. Versions that do not compare tell nothing.
func olderOrSame(a, b runtime.Object) bool {
	av, aok := resourceVersion(a)
	bv, bok := resourceVersion(b)
	return aok && bok && av <= bv
}

func resourceVersion(obj runtime.Object) (uint64, bool) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(m.GetResourceVersion(), 10, 64)
	return v, err == nil
}
