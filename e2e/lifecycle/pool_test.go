//go:build cluster

package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/e2e/framework"
)

// TestDemoPoolOfMakeUp: the warm pool `make up` creates
// (deploy/examples/demo-pool.yaml, under another name so as not to touch a
// developer's own) is accepted by the CRD, its pods start from the locally
// loaded image, and a keyed spawn through the deployed api-server claims
// one warm: the demo received the key on its claim hook (through the
// sidecar, past the NetworkPolicies) and names its room after it.
func TestDemoPoolOfMakeUp(t *testing.T) {
	e := framework.Deployed(t)
	ctx := context.Background()
	raw, err := os.ReadFile("../../deploy/examples/demo-pool.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pool spawnerv1.BackendPool
	if err := yaml.UnmarshalStrict(raw, &pool); err != nil {
		t.Fatalf("deploy/examples/demo-pool.yaml: %v", err)
	}
	pool.Name = fmt.Sprintf("e2e-demo-%d", time.Now().UnixNano()%100000)
	pools := e.Spawner.SpawnerV1().BackendPools(pool.Namespace)
	if _, err := pools.Create(ctx, &pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pools.Delete(context.Background(), pool.Name, metav1.DeleteOptions{}) })
	clustertest.Eventually(t, 120*time.Second, "the demo pool Ready", func() (bool, error) {
		p, err := pools.Get(ctx, pool.Name, metav1.GetOptions{})
		return err == nil && p.Status.ReadyReplicas == *pool.Spec.Replicas, err
	})

	key := "room " + pool.Name
	var resp struct {
		framework.SpawnResponse
		Warm *bool `json:"warm"`
	}
	if code := e.Do(t, "POST", "/spawn", map[string]any{"pool": pool.Name, "key": key}, &resp); code != http.StatusCreated || resp.Warm == nil || !*resp.Warm {
		t.Fatalf("POST /spawn naming the demo pool: %d %+v, want a warm claim", code, resp)
	}
	t.Cleanup(func() { e.Do(t, "POST", "/backend/"+resp.Name+"/terminate", map[string]bool{"hard": true}, nil) })
	clustertest.Eventually(t, 30*time.Second, "the demo's room named after the key", func() (bool, error) {
		r, err := http.Get(httpURL(t, resp.URL, "/session"))
		if err != nil {
			return false, err
		}
		defer r.Body.Close()
		var s struct {
			Room  string
			Claim *struct{ Key string }
		}
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
			return false, err
		}
		return s.Room == key && s.Claim != nil && s.Claim.Key == key, fmt.Errorf("%d: room %q claim %+v", r.StatusCode, s.Room, s.Claim)
	})
}
