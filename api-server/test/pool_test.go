//go:build cluster

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
)

type poolSpawn struct {
	Name, URL, ReadyURL string
	Spawned             bool
	Warm                *bool
}

func (e *env) poolSpawn(base, body string) (int, poolSpawn) {
	e.t.Helper()
	code, b, _ := e.call(base, "POST", "/spawn", body)
	var ps poolSpawn
	if code/100 != 2 {
		e.t.Fatalf("spawn %s: %d %s", body, code, b)
	}
	if err := json.Unmarshal([]byte(b), &ps); err != nil || ps.Warm == nil {
		e.t.Fatalf("spawn answer %q (%v): want a warm field", b, err)
	}
	return code, ps
}

// newPool creates a BackendPool of the demo app and waits until n pods are warm.
func (e *env) newPool(name string, replicas int32, grace int64) {
	e.t.Helper()
	e.newPoolWith(name, replicas, grace, nil)
}

// newPoolWith is newPool with the spec changed by edit first.
func (e *env) newPoolWith(name string, replicas int32, grace int64, edit func(*spawnerv1.BackendPoolSpec)) {
	e.t.Helper()
	tgrace := int64(2)
	p := &spawnerv1.BackendPool{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: spawnerv1.BackendPoolSpec{
			Replicas: &replicas, GracePeriodSeconds: &grace,
			Template: spawnerv1.BackendPodTemplate{
				Containers:                    []corev1.Container{{Name: "app", Image: clustertest.DemoImage, ImagePullPolicy: corev1.PullIfNotPresent}},
				TerminationGracePeriodSeconds: &tgrace,
			},
		},
	}
	if edit != nil {
		edit(&p.Spec)
	}
	if _, err := e.sp.SpawnerV1().BackendPools(e.ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitPoolReady(name, replicas)
}

func (e *env) waitPoolReady(name string, n int32) *spawnerv1.BackendPool {
	e.t.Helper()
	var got *spawnerv1.BackendPool
	clustertest.Eventually(e.t, 120*time.Second, fmt.Sprintf("pool %s with %d warm pods", name, n), func() (bool, error) {
		p, err := e.sp.SpawnerV1().BackendPools(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		got = p
		return err == nil && p.Status.ReadyReplicas == n && p.Status.Replicas == n, err
	})
	return got
}

// claimedPod checks that a warm backend is bound to a pool pod that it
// controls and that is labelled with its name, and returns that pod.
func (e *env) claimedPod(name string) *corev1.Pod {
	e.t.Helper()
	slab, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	podName, ok := spawnerv1.PodNameOf(slab)
	if !ok || podName == name {
		e.t.Fatalf("backend %s is bound to %q (bound %v), want a warm pod", name, podName, ok)
	}
	pod, err := e.kube.CoreV1().Pods(e.ns).Get(context.Background(), podName, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if !metav1.IsControlledBy(pod, slab) || pod.Labels[spawnerv1.LabelBackend] != name || pod.Labels[spawnerv1.LabelPool] == "" {
		e.t.Fatalf("pod %s: owners %v labels %v, want controlled by and labelled with %s", pod.Name, pod.OwnerReferences, pod.Labels, name)
	}
	return pod
}

// TestPoolClaimUseSweepRefill: a keyed spawn naming a pool claims a warm pod
// (warm: true, Ready at once), the same key on the other replica gets the
// same backend, HTTP and WebSocket reach it through both routers, the pool
// refills, and idle past its grace the backend is swept and deleted with its
// pod like any backend. env to a pool without a claim hook is a 422 that says
// why; an unknown pool a 404.
func TestPoolClaimUseSweepRefill(t *testing.T) {
	e := setup(t)
	e.newPool("rooms", 2, 3)

	if code, body, _ := e.call(e.a.control, "POST", "/spawn", `{"pool":"rooms","env":{"ROOM":"x"}}`); code != 422 || !strings.Contains(body, "claim hook") {
		t.Errorf("env with a hookless pool: %d %s, want 422 naming the claim hook", code, body)
	}
	if code, body, _ := e.call(e.a.control, "POST", "/spawn", `{"pool":"rooms","image":"x"}`); code != 422 {
		t.Errorf("image with a pool: %d %s, want 422", code, body)
	}
	if code, body, _ := e.call(e.a.control, "POST", "/spawn", `{"pool":"nope"}`); code != 404 {
		t.Errorf("unknown pool: %d %s, want 404", code, body)
	}

	start := time.Now()
	code, ps := e.poolSpawn(e.a.control, `{"pool":"rooms","key":"doc-42"}`)
	if code != 201 || !ps.Spawned || !*ps.Warm {
		t.Fatalf("claim: %d %+v, want a warm new backend", code, ps)
	}
	loc := e.waitReady(e.a.control, ps.Name)
	t.Logf("warm claim: POST to ready redirect in %v", time.Since(start))
	if loc != ps.URL {
		t.Fatalf("ready redirect %q, spawn url %q", loc, ps.URL)
	}
	pod := e.claimedPod(ps.Name)

	// Keyed get-or-create holds: the same key on replica b is the same backend.
	code2, ps2 := e.poolSpawn(e.b.control, `{"pool":"rooms","key":"doc-42"}`)
	if code2 != 200 || ps2.Spawned || ps2.Name != ps.Name || !*ps2.Warm {
		t.Fatalf("same key on replica b: %d %+v, want the same warm backend %s", code2, ps2, ps.Name)
	}

	// HTTP through router b, WebSocket through router a.
	clustertest.Eventually(t, 10*time.Second, "GET through router b", func() (bool, error) {
		resp, err := http.Get(onRouter(strings.Replace(ps.URL, "/?", "/headers?", 1), e.b.router))
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, fmt.Errorf("status %d", resp.StatusCode)
	})
	wsURL := "ws" + strings.TrimPrefix(strings.Replace(ps.URL, "/?", "/ws?", 1), "http")
	ws, wresp, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("websocket: %v %v", err, wresp)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	ws.WriteMessage(websocket.TextMessage, []byte("warm hello"))
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "warm hello" {
		t.Fatalf("echo %q %v", m, err)
	}

	// The pool refills and counts the claim.
	clustertest.Eventually(t, 90*time.Second, "pool refilled", func() (bool, error) {
		p, err := e.sp.SpawnerV1().BackendPools(e.ns).Get(context.Background(), "rooms", metav1.GetOptions{})
		return err == nil && p.Status.ReadyReplicas == 2 && p.Status.ClaimedReplicas == 1, err
	})

	// While the WebSocket is open, the grace period (3 s) passes unswept;
	// once it closes, the backend is swept and deleted with its pod.
	time.Sleep(5 * time.Second)
	if s, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), ps.Name, metav1.GetOptions{}); err != nil || s.Status.Phase != "Ready" {
		t.Fatalf("backend with an open WebSocket: %v %v", s.Status.Phase, err)
	}
	ws.Close()
	clustertest.Eventually(t, 60*time.Second, "idle backend and its pod deleted", func() (bool, error) {
		_, err1 := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), ps.Name, metav1.GetOptions{})
		_, err2 := e.kube.CoreV1().Pods(e.ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2), nil
	})
	// The pool's warm pods were never swept meanwhile.
	e.waitPoolReady("rooms", 2)
}

// TestPoolConcurrentClaims: 12 concurrent unkeyed spawns over both
// replicas against a pool of 4 warm pods: 12 distinct backends, no pod
// claimed twice, the others cold, and every one becomes Ready.
func TestPoolConcurrentClaims(t *testing.T) {
	e := setup(t)
	e.newPool("burst", 4, 60)
	const n = 12
	var (
		mu    sync.Mutex
		names = map[string]bool{}
		warm  int
	)
	e.atOnce(n, func(base string) {
		_, ps := e.poolSpawn(base, `{"pool":"burst"}`)
		mu.Lock()
		defer mu.Unlock()
		names[ps.Name] = true
		if *ps.Warm {
			warm++
		}
	})
	if len(names) != n || warm == 0 || warm > 4 {
		t.Fatalf("%d distinct backends (want %d), %d warm (want 1..4)", len(names), n, warm)
	}
	pods := map[string]string{}
	for name := range names {
		e.waitReady(e.a.control, name)
		slab, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, ok := spawnerv1.PodNameOf(slab)
		if !ok {
			t.Fatalf("backend %s unbound", name)
		}
		if other, dup := pods[p]; dup {
			t.Fatalf("pod %s bound to %s and %s", p, other, name)
		}
		pods[p] = name
	}
	t.Logf("%d backends, %d warm", len(names), warm)
}

// TestClaimFinishedByController: an api-server that dies mid-claim leaves a
// claiming slab; the controller binds it after its claim timeout — to the
// warm pod the claim had taken, or cold when it had taken none — so there is
// no slab without a pod and no orphan pod.
func TestClaimFinishedByController(t *testing.T) {
	e := setup(t)
	e.newPool("half", 1, 60)
	ctx := context.Background()
	slabs := e.sp.SpawnerV1().SessionLivedBackends(e.ns)
	pool, err := e.sp.SpawnerV1().BackendPools(e.ns).Get(ctx, "half", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claiming := func(name string) *spawnerv1.SessionLivedBackend {
		s := &spawnerv1.SessionLivedBackend{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Annotations: map[string]string{spawnerv1.AnnotationPool: "half"}},
			Spec:       pool.BackendSpec(),
		}
		got, err := slabs.Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// Died after creating the slab: bound cold.
	cold := claiming("died-before-take")
	// Died after taking a pod: bound to that pod.
	taken := claiming("died-after-take")
	pods, err := e.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: spawnerv1.LabelPool + "=half"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("%d warm pods (%v)", len(pods.Items), err)
	}
	warmPod := pods.Items[0]
	warmPod.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(taken, spawnerv1.SchemeGroupVersion.WithKind("SessionLivedBackend"))}
	warmPod.Labels[spawnerv1.LabelBackend] = taken.Name
	if _, err := e.kube.CoreV1().Pods(e.ns).Update(ctx, &warmPod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	for name, wantPod := range map[string]string{cold.Name: cold.Name, taken.Name: warmPod.Name} {
		clustertest.Eventually(t, 60*time.Second, name+" bound and Ready", func() (bool, error) {
			s, err := slabs.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			p, ok := spawnerv1.PodNameOf(s)
			if ok && p != wantPod {
				return false, fmt.Errorf("%s bound to %s, want %s", name, p, wantPod)
			}
			return ok && s.Status.Phase == "Ready", fmt.Errorf("phase %s", s.Status.Phase)
		})
	}
	if _, err := e.kube.CoreV1().Pods(e.ns).Get(ctx, cold.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("cold pod of %s: %v", cold.Name, err)
	}
}
