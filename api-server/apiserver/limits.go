package apiserver

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/client-go/tools/cache"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

const indexTokenID = "tokenID"

// capRetryAfter is the Retry-After of a spawn refused by the live-backend
// cap: a backend ends when it is terminated or idle past its grace period,
// which the api-server cannot foresee; 10 s is a polite poll.
const capRetryAfter = 10 * time.Second

// recentCreate is how long a backend this replica created is counted
// against its token even when the informer cache has not shown it yet.
const recentCreate = 30 * time.Second

// tokenID is the value of spawnerv1.LabelTokenID for a control token.
func tokenID(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:16])
}

// spawnLimits are the per-control-token limits of POST /spawn: a token
// bucket (rate, burst) for requests and a cap on live backends. Each replica
// keeps its own buckets, so with N replicas behind a Service a token gets at
// most N times the rate; the cap counts the shared cache and so holds across
// replicas up to the cache's lag (milliseconds) plus concurrent creates on
// other replicas.
type spawnLimits struct {
	rate     rate.Limit // 0: no rate limit
	burst    int
	maxLive  int // 0: no cap
	inf      cache.SharedIndexInformer
	now      func() time.Time
	mu       sync.Mutex
	buckets  map[string]*rate.Limiter
	inflight map[string]map[string]time.Time // token id -> backend name -> created at
}

func newSpawnLimits(perSecond float64, burst, maxLive int, inf cache.SharedIndexInformer) *spawnLimits {
	l := &spawnLimits{rate: rate.Limit(perSecond), burst: burst, maxLive: maxLive, inf: inf, now: time.Now,
		buckets: map[string]*rate.Limiter{}, inflight: map[string]map[string]time.Time{}}
	if l.burst < 1 {
		l.burst = 1
	}
	return l
}

// tokenIndexer is the informer index the cap counts with.
func tokenIndexer(obj any) ([]string, error) {
	slab, ok := obj.(*spawnerv1.SessionLivedBackend)
	if !ok || slab.Labels[spawnerv1.LabelTokenID] == "" {
		return nil, nil
	}
	return []string{slab.Labels[spawnerv1.LabelTokenID]}, nil
}

// limitError is a refused spawn: 429 with Retry-After.
type limitError struct {
	retryAfter time.Duration
	msg        string
}

func (e *limitError) write(w http.ResponseWriter) {
	secs := int(math.Ceil(e.retryAfter.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	writeError(w, http.StatusTooManyRequests, e.msg)
}

// allow takes one token from id's bucket, or says how long to wait.
func (l *spawnLimits) allow(id string) *limitError {
	if l == nil || l.rate <= 0 {
		return nil
	}
	l.mu.Lock()
	b, ok := l.buckets[id]
	if !ok {
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[id] = b
	}
	l.mu.Unlock()
	now := l.now()
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return &limitError{d, fmt.Sprintf("spawn rate limit of this control token exceeded (%g per second, bursts of %d): retry after %s",
			float64(l.rate), l.burst, d.Round(time.Millisecond))}
	}
	return nil
}

// live counts id's live backends: the cached ones plus those this replica
// created recently and the cache has not shown yet.
func (l *spawnLimits) live(id string) int {
	idx := l.inf.GetIndexer()
	keys := map[string]bool{}
	objs, _ := idx.ByIndex(indexTokenID, id)
	for _, o := range objs {
		if slab, ok := o.(*spawnerv1.SessionLivedBackend); ok && live(slab) {
			keys[slab.Namespace+"/"+slab.Name] = true
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, at := range l.inflight[id] {
		if _, inCache, _ := idx.GetByKey(key); inCache || l.now().Sub(at) > recentCreate {
			delete(l.inflight[id], key) // the cache speaks for it now
			continue
		}
		keys[key] = true
	}
	if len(l.inflight[id]) == 0 {
		delete(l.inflight, id)
	}
	return len(keys)
}

// admit checks the cap before a new backend is created for id.
func (l *spawnLimits) admit(id string) *limitError {
	if l == nil || l.maxLive <= 0 {
		return nil
	}
	if n := l.live(id); n >= l.maxLive {
		return &limitError{capRetryAfter, fmt.Sprintf("this control token has %d live backends, its cap is %d: terminate one or wait for one to be swept", n, l.maxLive)}
	}
	return nil
}

// created records a backend (namespace/name) id just created.
func (l *spawnLimits) created(id, key string) {
	if l == nil || l.maxLive <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight[id] == nil {
		l.inflight[id] = map[string]time.Time{}
	}
	l.inflight[id][key] = l.now()
}
