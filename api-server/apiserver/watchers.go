package apiserver

import (
	corev1 "k8s.io/api/core/v1"
	"sync"

	"k8s.io/client-go/tools/cache"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// watchers wakes the status streams of one backend when its object changes.
// Notifications are coalesced: a stream re-reads the cache when woken.
type watchers struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

func newWatchers() *watchers { return &watchers{subs: map[string]map[chan struct{}]struct{}{}} }

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
	w.mu.Lock()
	for ch := range w.subs[name] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
}
