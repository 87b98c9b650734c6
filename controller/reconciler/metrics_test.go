package reconciler

import (
	"net/http/httptest"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	spawnerlisters "spawner.dev/generated/listers/spawner/v1"
)

func scrape(m *Metrics) string {
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// TestPoolPodsGauge: a scrape reports each pool's ready, starting and
// claimed pods from its status; a deleted pool's series go with it, and a
// controller that stops leading reports none.
func TestPoolPodsGauge(t *testing.T) {
	m := NewMetrics()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	rooms := &spawnerv1.BackendPool{ObjectMeta: metav1.ObjectMeta{Name: "rooms", Namespace: "b"},
		Status: spawnerv1.BackendPoolStatus{ReadyReplicas: 4, StartingReplicas: 1, ClaimedReplicas: 7}}
	gone := &spawnerv1.BackendPool{ObjectMeta: metav1.ObjectMeta{Name: "gone", Namespace: "b"}}
	_ = idx.Add(rooms)
	_ = idx.Add(gone)
	m.followPools(spawnerlisters.NewBackendPoolLister(idx))
	out := scrape(m)
	for _, want := range []string{
		`spawner_controller_pool_pods{namespace="b",pool="rooms",state="ready"} 4`,
		`spawner_controller_pool_pods{namespace="b",pool="rooms",state="starting"} 1`,
		`spawner_controller_pool_pods{namespace="b",pool="rooms",state="claimed"} 7`,
		`spawner_controller_pool_pods{namespace="b",pool="gone",state="ready"} 0`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %s:\n%s", want, out)
		}
	}
	_ = idx.Delete(gone)
	if out := scrape(m); strings.Contains(out, `pool="gone"`) {
		t.Errorf("a deleted pool is still reported:\n%s", out)
	}
	m.followPools(nil)
	if out := scrape(m); strings.Contains(out, `spawner_controller_pool_pods{`) {
		t.Errorf("a controller that no longer leads reports pools:\n%s", out)
	}
}
