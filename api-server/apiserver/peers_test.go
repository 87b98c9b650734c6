package apiserver

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

// apiEndpoints is the EndpointSlice of the api-server's Service "sys/api"
// with one endpoint per replica (pod name: ready).
func apiEndpoints(replicas map[string]bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: "api-x1",
		Labels: map[string]string{discoveryv1.LabelServiceName: "api"}}, AddressType: discoveryv1.AddressTypeIPv4}
	for name, ready := range replicas {
		ready := ready
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "sys", Name: name}})
	}
	return s
}

// withPeers makes a test env the replica self of Service sys/api, whose
// endpoints are replicas.
func withPeers(t *testing.T, self string, replicas map[string]bool) *testEnv {
	e := newTestEnvConfig(t, "", func(c *Config) { c.PeerService, c.PodName = "sys/api", self })
	if _, err := e.kube.DiscoveryV1().EndpointSlices("sys").Create(context.Background(), apiEndpoints(replicas), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e.s.peers.start(ctx.Done())
	e.eventually(e.s.peers.informer.HasSynced)
	return e
}

// TestReplicasTryDifferentWarmPodsFirst: two replicas of the api-server,
// each with the same 100 warm pods in its cache, offer their claims
// different pods first: each the half it owns (rendezvous hashing of replica
// and pod UID), then the other's. Before, each offered all 100 in random
// order, and concurrent claims of the two collided on a pod about as often
// as not once half the pool was taken (51 of 151 takes lost in a burst of
// 100 claims on the local cluster).
func TestReplicasTryDifferentWarmPodsFirst(t *testing.T) {
	replicas := map[string]bool{"api-a": true, "api-b": true}
	a, b := withPeers(t, "api-a", replicas), withPeers(t, "api-b", replicas)
	a.addPool("rooms", nil, 100)
	b.addPool("rooms", nil, 100)
	mine := func(e *testEnv) map[types.UID]bool {
		pool := e.pool("rooms")
		all := e.s.warmCandidates(pool, pool.TemplateHash())
		if len(all) != 100 {
			t.Fatalf("%d candidates, want 100", len(all))
		}
		owned := map[types.UID]bool{}
		for _, p := range all {
			if owner([]string{"api-a", "api-b"}, p.UID) != e.s.cfg.PodName {
				break // the rest are the other replica's
			}
			owned[p.UID] = true
		}
		// And the order past them holds only the other's.
		for _, p := range all[len(owned):] {
			if owner([]string{"api-a", "api-b"}, p.UID) == e.s.cfg.PodName {
				t.Errorf("%s: its pod %s offered after the other replica's", e.s.cfg.PodName, p.Name)
			}
		}
		return owned
	}
	resp := a.do("GET", "/metrics", "")
	if body := readBody(t, resp); !strings.Contains(body, "\nspawner_api_peer_replicas 2\n") {
		t.Errorf("metrics of a replica of two: no spawner_api_peer_replicas 2 in\n%s", body)
	}
	ma, mb := mine(a), mine(b)
	if len(ma)+len(mb) != 100 || len(ma) < 30 || len(mb) < 30 {
		t.Errorf("replica a offers %d pods first, b %d: want a split of the 100 between them", len(ma), len(mb))
	}
	for uid := range ma {
		if mb[uid] {
			t.Errorf("pod %s offered first by both replicas", uid)
		}
	}
}

// TestAReplicaNotServingSplitsNothing: a replica whose endpoint is not ready
// (starting, or leaving on SIGTERM) and one that is alone offer every warm
// pod, in random order: the other replica owns nothing it cannot take over.
func TestAReplicaNotServingSplitsNothing(t *testing.T) {
	for _, c := range []struct {
		self     string
		replicas map[string]bool
	}{
		{"api-a", map[string]bool{"api-a": false, "api-b": true}},
		{"api-a", map[string]bool{"api-a": true}},
		{"api-c", map[string]bool{"api-a": true, "api-b": true}},
	} {
		e := withPeers(t, c.self, c.replicas)
		if len(e.s.peers.replicas()) > 1 {
			t.Errorf("%s of %v: replicas %v, want no split", c.self, c.replicas, e.s.peers.replicas())
		}
	}
}

func TestPeerServiceFlagErrors(t *testing.T) {
	for _, c := range []struct{ service, self string }{{"api", "a"}, {"/api", "a"}, {"sys/", "a"}, {"sys/api", ""}} {
		if _, err := newPeers(kubefake.NewClientset(), c.service, c.self); err == nil {
			t.Errorf("--peer-service=%q --pod-name=%q: no error", c.service, c.self)
		}
	}
	if p, err := newPeers(kubefake.NewClientset(), "", ""); err != nil || p.replicas() != nil {
		t.Errorf("no --peer-service: %v, %v; want no split", p, err)
	}
}

func TestOwnerSpreadsPods(t *testing.T) {
	n := map[string]int{}
	for i := range 1000 {
		n[owner([]string{"a", "b", "c"}, types.UID(fmt.Sprintf("uid-%d", i)))]++
	}
	for _, r := range []string{"a", "b", "c"} {
		if n[r] < 250 || n[r] > 420 {
			t.Errorf("owner of 1000 pods among 3 replicas: %v, want about a third each", n)
		}
	}
}
