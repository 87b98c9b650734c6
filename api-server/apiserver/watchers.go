package apiserver

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// watchers wakes the status streams of one backend when its object changes.
// Notifications are coalesced: a stream re-reads the cache when woken.
//
// Re-reading the cache loses a state the slab held only briefly before it
// was deleted: the controller deletes a swept slab moments after writing
// Swept, and a stream that woke after both saw only "gone" (an e2e run saw
// Ready → Deleted, no Swept). So the last state of a deleted slab that has
// subscribers is kept (final) until its last subscriber leaves.
type watchers struct {
	mu    sync.Mutex
	subs  map[string]map[chan struct{}]struct{}
	final map[string]*spawnerv1.SessionLivedBackend
}

func newWatchers() *watchers {
	return &watchers{subs: map[string]map[chan struct{}]struct{}{}, final: map[string]*spawnerv1.SessionLivedBackend{}}
}

func (w *watchers) subscribe(name string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	m := w.subs[name]
	if m == nil {
		m = map[chan struct{}]struct{}{}
		w.subs[name] = m
	}
	m[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.subs[name], ch)
		if len(w.subs[name]) == 0 {
			delete(w.subs, name)
			delete(w.final, name)
		}
		w.mu.Unlock()
	}
}

// notify wakes the subscribers of the backend an informer event is about:
// a slab, or its pod (labelled with the slab's name).
func (w *watchers) notify(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	var name string
	switch o := obj.(type) {
	case *spawnerv1.SessionLivedBackend:
		name = o.Name
	case *corev1.Pod:
		name = o.Name
		if b := o.Labels[spawnerv1.LabelBackend]; b != "" {
			name = b // a claimed warm pod has a name of its own
		}
	default:
		return
	}
	w.notifyName(name)
}

// deleted records a slab's last state for its subscribers, then wakes them.
func (w *watchers) deleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	slab, ok := obj.(*spawnerv1.SessionLivedBackend)
	if !ok {
		w.notify(obj)
		return
	}
	w.mu.Lock()
	if len(w.subs[slab.Name]) > 0 {
		w.final[slab.Name] = slab
	}
	w.mu.Unlock()
	w.notifyName(slab.Name)
}

// finalState is the last state of the deleted slab name with that uid, if
// one was recorded while someone followed it.
func (w *watchers) finalState(name string, uid types.UID) (*spawnerv1.SessionLivedBackend, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	slab, ok := w.final[name]
	if !ok || slab.UID != uid {
		return nil, false
	}
	return slab, true
}

func (w *watchers) notifyName(name string) {
	w.mu.Lock()
	for ch := range w.subs[name] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
}
