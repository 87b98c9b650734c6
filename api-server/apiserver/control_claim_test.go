package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func TestPoolSpawnValidation(t *testing.T) {
	for body, want := range map[string]string{
		`{"pool":"rooms","image":"x"}`:             "image: Forbidden",
		`{"pool":"rooms","port":8081}`:             "port: Forbidden",
		`{"pool":"rooms","args":["x"]}`:            "args: Forbidden",
		`{"pool":"Bad_Name"}`:                      "pool: Invalid",
		`{"pool":"rooms","labels":{"a":"%"}}`:      "labels[a]",
		`{"pool":"rooms","gracePeriodSeconds":-1}`: "gracePeriodSeconds",
	} {
		_, _, rerr := parseSpawn(strings.NewReader(body), "ns", "salt", "hash")
		if rerr == nil || rerr.status != 422 || !strings.Contains(rerr.msg, want) {
			t.Errorf("%s: %v, want 422 mentioning %q", body, rerr, want)
		}
	}
	req, slab, rerr := parseSpawn(strings.NewReader(`{"pool":"rooms","key":"doc","gracePeriodSeconds":7,"labels":{"team":"a"}}`), "ns", "salt", "hash")
	if rerr != nil {
		t.Fatal(rerr)
	}
	replicas := int32(2)
	pool := &spawnerv1.BackendPool{ObjectMeta: metav1.ObjectMeta{Name: "rooms"}, Spec: spawnerv1.BackendPoolSpec{
		Replicas: &replicas, HTTPPort: 8081,
		Template: spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: "demo"}}},
	}}
	if rerr := fromPool(slab, pool, req); rerr != nil {
		t.Fatal(rerr)
	}
	if slab.Spec.Template.Containers[0].Image != "demo" || slab.Spec.HTTPPort != 8081 || slab.Spec.Key != "doc" ||
		*slab.Spec.GracePeriodSeconds != 7 || slab.Spec.Template.Metadata.Labels["team"] != "a" {
		t.Errorf("spec %+v", slab.Spec)
	}
	if name, bound := spawnerv1.PodNameOf(slab); bound || name != "" || slab.Annotations[spawnerv1.AnnotationPool] != "rooms" {
		t.Errorf("a new pool backend is claiming (unbound): got %q bound %v, annotations %v", name, bound, slab.Annotations)
	}
	if pool.Spec.Template.Metadata.Labels != nil {
		t.Errorf("fromPool changed the pool's template: %v", pool.Spec.Template.Metadata.Labels)
	}
}

// lagCache makes the api-server's cached copy of pod name differ from the
// API's, as a cache a few events behind does: edit changes the cached copy
// only.
func (e *testEnv) lagCache(name string, edit func(*corev1.Pod)) {
	e.t.Helper()
	obj, ok, err := e.s.podInf.GetStore().GetByKey(testNS + "/" + name)
	if err != nil || !ok {
		e.t.Fatalf("pod %s not cached (%v)", name, err)
	}
	p := obj.(*corev1.Pod).DeepCopy()
	edit(p)
	if err := e.s.podInf.GetStore().Update(p); err != nil {
		e.t.Fatal(err)
	}
}

// conflictOnStale makes the fake API refuse a pod patch carrying the
// resourceVersion "stale" with a conflict, as the API server refuses a
// precondition on a version that changed since (the fake tracker keeps no
// versions of its own).
func (e *testEnv) conflictOnStale() *atomic.Int64 {
	var conflicts atomic.Int64
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		var p struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		_ = json.Unmarshal(a.(k8stesting.PatchAction).GetPatch(), &p)
		if p.Metadata.ResourceVersion == "stale" {
			conflicts.Add(1)
			return true, nil, apierrors.NewConflict(corev1.Resource("pods"), a.(k8stesting.PatchAction).GetName(), errors.New("the object has been modified"))
		}
		return false, nil, nil
	})
	return &conflicts
}

// TestClaimTakesAPodTheCacheDoesNotOfferYet: the pool's only pod is Ready
// in the API but not yet in the api-server's cache (a pool's status says
// Ready before every cache has the pod's update): the claim finds it by
// listing the pool's pods and is warm, not cold. Before the list, such a
// claim went cold.
func TestClaimTakesAPodTheCacheDoesNotOfferYet(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	e.lagCache("rooms-0", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse })

	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim of the pod Ready in the API", code, raw)
	}
	if exists, backend := e.podState("rooms-0"); !exists || backend != got.Name {
		t.Errorf("pod rooms-0: exists %v, backend %q, want %q", exists, backend, got.Name)
	}
	if v := e.s.metrics.claimFromList.Value(); v != 1 {
		t.Errorf("claims from the list: %v, want 1", v)
	}
}

// TestClaimRetriesAPodWhoseCachedVersionIsStale: the cache holds an older
// version of the pool's only pod (the take conflicts although nobody took
// it): the claim re-reads the pool's pods and takes it with its current
// version. A pod the API says is no longer Ready (its app died) is never
// taken, whatever the cache still says.
func TestClaimRetriesAPodWhoseCachedVersionIsStale(t *testing.T) {
	e := newTestEnv(t, "")
	conflicts := e.conflictOnStale()
	e.addPool("rooms", nil, 2)
	e.lagCache("rooms-0", func(p *corev1.Pod) { p.ResourceVersion = "stale" })
	e.lagCache("rooms-1", func(p *corev1.Pod) { p.ResourceVersion = "stale" })

	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim despite the stale cache", code, raw)
	}
	if conflicts.Load() == 0 {
		t.Fatal("no take conflicted: the test did not exercise a stale version")
	}

	// The other pod's app dies: the API has it not Ready, the cache still
	// has the Ready version it had.
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := "rooms-0"
	if slab.Annotations[spawnerv1.AnnotationPod] == other {
		other = "rooms-1"
	}
	dead, err := e.kube.CoreV1().Pods(testNS).Get(context.Background(), other, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dead.Status.Conditions[0].Status = corev1.ConditionFalse
	if _, err := e.kube.CoreV1().Pods(testNS).UpdateStatus(context.Background(), dead, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(func() bool { return len(e.s.warmCandidates(e.pool("rooms"), e.pool("rooms").TemplateHash())) == 0 })
	e.lagCache(other, func(p *corev1.Pod) {
		p.ResourceVersion = "stale"
		p.Status.Conditions[0].Status = corev1.ConditionTrue
	})
	code, got, raw = e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || *got.Warm {
		t.Fatalf("spawn: %d %s, want cold: the only unclaimed pod is dead", code, raw)
	}
	if exists, backend := e.podState(other); !exists || backend != "" {
		t.Errorf("dead pod %s: exists %v, backend %q: it was handed out", other, exists, backend)
	}
}

// addClaiming creates a slab of pool as another spawn's claim would, created
// bound to warm pod pod (preBind; "" for none) that it does not hold yet,
// and waits until it is cached. It returns the slab and its access token.
func (e *testEnv) addClaiming(name, pool, pod string) (*spawnerv1.SessionLivedBackend, string) {
	e.t.Helper()
	salt := newSalt()
	tok := e.s.creds.access.token(salt)
	spec := e.pool(pool).BackendSpec()
	slab := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: types.UID("uid-" + name), CreationTimestamp: metav1.Now(),
			Labels: map[string]string{},
			Annotations: map[string]string{spawnerv1.AnnotationPool: pool, spawnerv1.AnnotationAccessTokenSalt: salt,
				spawnerv1.AnnotationAccessTokenHash: hashToken(tok)}},
		Spec: spec,
	}
	if pod != "" {
		slab.Annotations[spawnerv1.AnnotationPod] = pod
	}
	created, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Create(context.Background(), slab, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.eventually(func() bool { _, err := e.s.slabLister.Get(name); return err == nil })
	return created, tok
}

// takePod takes warm pod pod for slab as a claim's take does: the slab
// becomes its controller, and it gets the backend label.
func (e *testEnv) takePod(pod string, slab *spawnerv1.SessionLivedBackend) {
	e.t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"labels":          map[string]string{spawnerv1.LabelBackend: slab.Name},
		"ownerReferences": []metav1.OwnerReference{*metav1.NewControllerRef(slab, spawnerv1.SchemeGroupVersion.WithKind("SessionLivedBackend"))},
	}})
	if _, err := e.kube.CoreV1().Pods(testNS).Patch(context.Background(), pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		e.t.Error(err)
	}
}

// TestKeyedSpawnWaitsForAnotherClaimsBind: a spawn of a key whose backend
// another spawn (say in the other replica) is claiming right now answers
// once that claim is complete, with the same "warm" as the claim's own
// answer. Here the other claim created the slab bound to the pod it is
// taking (preBind), and takes it 300 ms later: the slab is that pod's
// backend only then. Before, the spawn answered at once, "warm": false, for
// a backend that became warm a moment later; and with bound slabs taken as
// complete, it answered "warm": true before the take, which may still lose.
func TestKeyedSpawnWaitsForAnotherClaimsBind(t *testing.T) {
	for _, pre := range []bool{false, true} {
		e := newTestEnv(t, "")
		e.addPool("rooms", nil, 1)
		pod := ""
		if pre {
			pod = "rooms-0"
		}
		claiming, _ := e.addClaiming(keyedName("doc", 1), "rooms", pod)
		patchSlab := func(patch string) {
			if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Patch(context.Background(), claiming.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Error(err)
			}
		}
		patchSlab(`{"metadata":{"labels":{"` + spawnerv1.LabelKeyHash + `":"` + keyHashLabel("doc") + `"}},"spec":{"key":"doc"}}`)
		e.eventually(func() bool { s, err := e.s.slabLister.Get(claiming.Name); return err == nil && s.Spec.Key == "doc" })

		const takeAfter = 300 * time.Millisecond
		go func() {
			time.Sleep(takeAfter)
			e.takePod("rooms-0", claiming)
			if !pre {
				patchSlab(`{"metadata":{"annotations":{"` + spawnerv1.AnnotationPod + `":"rooms-0"}}}`)
			}
		}()
		start := time.Now()
		code, got, raw := e.spawnPool(`{"pool":"rooms","key":"doc"}`)
		if code != 200 || got.Name != claiming.Name || got.Warm == nil || !*got.Warm {
			t.Fatalf("created bound %v: spawn: %d %s, want the claiming backend %s, warm", pre, code, raw, claiming.Name)
		}
		if d := time.Since(start); d < takeAfter {
			t.Errorf("created bound %v: answered after %v, before the claim was complete", pre, d)
		}
	}
}

// TestClaimTriesEveryListedPod: under a burst most takes conflict (others
// take the pods first); after the cached candidates, a claim tries every
// pod the API listed as free before it goes cold, not just 8 of them. Here
// the first 19 takes conflict (2 from the cache, 17 from the list) and the
// 20th pod is still free: the claim is warm. With 8 tries after the list
// too, 5 of 20 concurrent claims against a full pool of 20 went cold.
func TestClaimTriesEveryListedPod(t *testing.T) {
	e := newTestEnv(t, "")
	var patches atomic.Int64
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if patches.Add(1) <= 19 {
			return true, nil, apierrors.NewConflict(corev1.Resource("pods"), a.(k8stesting.PatchAction).GetName(), errors.New("taken"))
		}
		return false, nil, nil
	})
	e.addPool("rooms", nil, 20)
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn after %d takes: %d %s, want warm (a listed pod was still free)", patches.Load(), code, raw)
	}
	if n := patches.Load(); n != 20 {
		t.Errorf("%d takes, want 20", n)
	}
}

// TestBindRetriesAConflictWhileClaiming: a claim that lost the pod its slab
// was created bound to (preBind) takes another and binds the slab to it.
// The controller may write the new slab's status meanwhile, which changes
// its resourceVersion; the bind then conflicts although nobody closed the
// claim. It is retried on the slab as it is, and the claim stays warm with
// the pod it took (it went cold and freed the pod: 2 of 15 sequential bench
// claims from a full pool). The pod it lost stays its pool's.
func TestBindRetriesAConflictWhileClaiming(t *testing.T) {
	e := newTestEnv(t, "")
	var binds, takes atomic.Int64
	e.slabs.PrependReactor("patch", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if strings.Contains(string(a.(k8stesting.PatchAction).GetPatch()), spawnerv1.AnnotationPod) && binds.Add(1) == 1 {
			return true, nil, apierrors.NewConflict(spawnerv1.Resource("sessionlivedbackends"), a.(k8stesting.PatchAction).GetName(), errors.New("status written meanwhile"))
		}
		return false, nil, nil
	})
	lost := ""
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if takes.Add(1) == 1 {
			lost = a.(k8stesting.PatchAction).GetName()
			return true, nil, apierrors.NewConflict(corev1.Resource("pods"), lost, errors.New("taken by another spawn"))
		}
		return false, nil, nil
	})
	e.addPool("rooms", nil, 2)
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want warm despite a lost take and one bind conflict", code, raw)
	}
	other := map[string]string{"rooms-0": "rooms-1", "rooms-1": "rooms-0"}[lost]
	if exists, backend := e.podState(other); !exists || backend != got.Name {
		t.Errorf("pod %s: exists %v, backend %q, want kept for %s", other, exists, backend, got.Name)
	}
	if exists, backend := e.podState(lost); !exists || backend != "" {
		t.Errorf("lost pod %s: exists %v, backend %q, want left to its pool", lost, exists, backend)
	}
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod, _ := spawnerv1.PodNameOf(slab); pod != other {
		t.Errorf("slab bound to %q, want %q", pod, other)
	}
	if n := binds.Load(); n != 2 {
		t.Errorf("%d binds, want 2", n)
	}
}

// TestWarmClaimIsTwoWrites: a warm claim from a full pool answers after two
// API writes, the slab's create (bound to the pod it takes: preBind) and
// the pod's take; its status write comes after the answer. Before, a third
// write bound the slab to the pod it had taken: 12–36 ms of a ~43 ms warm
// spawn on the local cluster.
func TestWarmClaimIsTwoWrites(t *testing.T) {
	e := newTestEnv(t, "")
	var mu sync.Mutex
	var writes []string
	record := func(a k8stesting.Action) (bool, runtime.Object, error) {
		if v := a.GetVerb(); v != "get" && v != "list" && v != "watch" && a.GetSubresource() != "status" {
			mu.Lock()
			writes = append(writes, v+" "+a.GetResource().Resource)
			mu.Unlock()
		}
		return false, nil, nil
	}
	e.addPool("rooms", nil, 3)
	e.slabs.PrependReactor("*", "*", record)
	e.kube.PrependReactor("*", "*", record)
	code, got, raw := e.spawnPool(`{"pool":"rooms","key":"doc-42"}`)
	mu.Lock()
	answered := slices.Clone(writes)
	mu.Unlock()
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim", code, raw)
	}
	if want := []string{"create sessionlivedbackends", "patch pods"}; !slices.Equal(answered, want) {
		t.Errorf("writes before the answer: %q, want %q", answered, want)
	}
	slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, _ := spawnerv1.PodNameOf(slab)
	p, err := e.kube.CoreV1().Pods(testNS).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil || !spawnerv1.HoldsPod(slab, p) || slab.Labels[spawnerv1.LabelNode] != "node-a" {
		t.Errorf("slab bound to %q (node label %q), which it does not hold (%v)", pod, slab.Labels[spawnerv1.LabelNode], err)
	}
}

// TestSlowTakeAfterTheControllerClosedTheClaim: a take that comes back
// after lateTake may come after the controller closed the claim (bound the
// slab cold, reconciler.ClaimTimeout after its creation): the claim reads
// the slab, answers cold as it is bound, and frees the pod it took.
func TestSlowTakeAfterTheControllerClosedTheClaim(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	var once sync.Once
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		once.Do(func() {
			list, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).List(context.Background(), metav1.ListOptions{})
			if err != nil || len(list.Items) != 1 {
				t.Errorf("slabs: %v %v", list, err)
				return
			}
			name := list.Items[0].Name
			patch := []byte(`{"metadata":{"annotations":{"` + spawnerv1.AnnotationPod + `":"` + name + `"}}}`)
			if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Error(err)
			}
			time.Sleep(lateTake + 100*time.Millisecond)
		})
		return false, nil, nil
	})
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || *got.Warm {
		t.Fatalf("spawn: %d %s, want cold: the controller closed the claim before the take", code, raw)
	}
	if exists, _ := e.podState("rooms-0"); exists {
		t.Error("the pod taken after the close was not freed")
	}
}

// TestAClaimingSlabIsNotItsPodsBackendYet: a slab created bound to the warm
// pod its claim is taking (preBind) is not that pod's backend until it
// holds it: its ready URL does not redirect (the take may lose), and a hard
// terminate leaves the pod to its pool. Once it holds it, the ready URL
// redirects. Before, a bound slab was taken as claimed whatever its pod.
func TestAClaimingSlabIsNotItsPodsBackendYet(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 2)
	ready := func(name, tok string) int {
		resp := e.do("GET", "/backend/"+name+"/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
		readBody(t, resp)
		return resp.StatusCode
	}
	claiming, tok := e.addClaiming("b-claiming", "rooms", "rooms-0")
	if code := ready(claiming.Name, tok); code != http.StatusConflict {
		t.Errorf("ready URL before the take: %d, want 409", code)
	}
	e.takePod("rooms-0", claiming)
	if code := ready(claiming.Name, tok); code != http.StatusFound {
		t.Errorf("ready URL once it holds its pod: %d, want 302", code)
	}

	doomed, _ := e.addClaiming("b-doomed", "rooms", "rooms-1")
	resp := e.do("POST", "/backend/"+doomed.Name+"/terminate", `{"hard":true}`)
	if body := readBody(t, resp); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("hard terminate: %d %s", resp.StatusCode, body)
	}
	if exists, backend := e.podState("rooms-1"); !exists || backend != "" {
		t.Errorf("pool pod rooms-1 after a hard terminate of a slab that did not hold it: exists %v, backend %q", exists, backend)
	}
	resp = e.do("POST", "/backend/"+claiming.Name+"/terminate", `{"hard":true}`)
	if body := readBody(t, resp); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("hard terminate: %d %s", resp.StatusCode, body)
	}
	if exists, _ := e.podState("rooms-0"); exists {
		t.Error("the pod a hard-terminated backend held is still there")
	}
}

// TestWarmClaimIsReadyAtOnce: a warm claim answers with a backend that is
// Ready: its ready URL redirects on the first request, and its status
// records every milestone up to Ready (reason WarmPodClaimed, readyTime at
// the claim). Neither waits for that status write: here it takes 700 ms,
// and the answer and the redirect come before it. Before, the spawn
// answered only after the write (the last of four sequential API writes),
// and earlier still the slab stayed Pending until the sweeper followed the
// claimed pod, the ready URL answering 409 "not ready yet" (no sweeper
// here: forever).
func TestWarmClaimIsReadyAtOnce(t *testing.T) {
	e := newTestEnv(t, "")
	const statusWrite = 700 * time.Millisecond
	e.slabs.PrependReactor("update", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" {
			time.Sleep(statusWrite)
		}
		return false, nil, nil
	})
	e.addPool("rooms", nil, 1)
	before := time.Now().Add(-time.Second)
	start := time.Now()
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim", code, raw)
	}
	u, err := url.Parse(got.ReadyURL)
	if err != nil {
		t.Fatal(err)
	}
	resp := e.do("GET", u.RequestURI(), "")
	readBody(t, resp)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("ready URL answered %d, want 302 at once", resp.StatusCode)
	}
	if d := time.Since(start); d >= statusWrite {
		t.Errorf("spawn and ready URL took %v: they waited for the status write (%v)", d, statusWrite)
	}
	var slab *spawnerv1.SessionLivedBackend
	e.eventually(func() bool {
		slab, err = e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
		return err == nil && lifecycle.Phase(slab) == lifecycle.Ready
	})
	if c := meta.FindStatusCondition(slab.Status.Conditions, lifecycle.ConditionReady); c.Reason != lifecycle.ReasonWarmPodClaimed || !strings.Contains(c.Message, "rooms-0") {
		t.Errorf("Ready condition %+v, want reason %s naming the pod", c, lifecycle.ReasonWarmPodClaimed)
	}
	if rt := slab.Status.ReadyTime; rt == nil || rt.Time.Before(before) || rt.Time.After(start.Add(statusWrite)) {
		t.Errorf("readyTime %v, want the claim's time (%v)", rt, start)
	}
	// Everything the controller writes on a bound backend is there, so its
	// next sync writes nothing: the node label (with the bind), node, pod
	// IP and URL (with Ready).
	if slab.Labels[spawnerv1.LabelNode] != "node-a" || slab.Status.NodeName != "node-a" || slab.Status.PodIP != "127.0.0.1" || slab.Status.URL == "" {
		t.Errorf("node label %q, status node %q, pod IP %q, URL %q: want node-a, node-a, 127.0.0.1 and the URL",
			slab.Labels[spawnerv1.LabelNode], slab.Status.NodeName, slab.Status.PodIP, slab.Status.URL)
	}
}

// TestReadyURLRedirectsABoundClaim: the ready URL of a backend bound to a
// warm pod redirects although its status is not Ready yet (its claim's
// status write is a moment behind, or it ran in another replica): the claim
// is done. A backend of a pool still claiming (not bound) is not ready.
// Before, the ready URL waited for the status write, up to 2 s.
func TestReadyURLRedirectsABoundClaim(t *testing.T) {
	e := newTestEnv(t, "")
	ctx := context.Background()
	for name, pod := range map[string]string{"b-warm": "rooms-0", "b-claiming": ""} {
		tok := e.addBackend(name, lifecycle.Running)
		annotations := `"` + spawnerv1.AnnotationPool + `":"rooms"`
		if pod != "" {
			annotations += `,"` + spawnerv1.AnnotationPod + `":"` + pod + `"`
		} else {
			annotations += `,"` + spawnerv1.AnnotationPod + `":null`
		}
		patch := []byte(`{"metadata":{"annotations":{` + annotations + `}}}`)
		if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		e.eventually(func() bool {
			s, ok := e.s.slab(name)
			got, _ := spawnerv1.PodNameOf(s)
			return ok && s.Annotations[spawnerv1.AnnotationPool] == "rooms" && got == pod
		})
		start := time.Now()
		resp := e.do("GET", "/backend/"+name+"/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
		body := readBody(t, resp)
		want := http.StatusFound
		if pod == "" {
			want = http.StatusConflict
		}
		if resp.StatusCode != want {
			t.Errorf("%s: ready URL answered %d %s, want %d", name, resp.StatusCode, body, want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: ready URL took %v", name, d)
		}
	}
}

// TestReadyURLAsksTheAPIWhenTheCacheIsBehind: under a burst of claims a
// replica's cache can be seconds behind: it may have a claimed backend as
// just created (claiming, not bound) while the API has it bound and Ready.
// The ready URL asks the API and redirects at once; it answered 409 "not
// ready yet" (70 of 100 claims of a burst did).
func TestReadyURLAsksTheAPIWhenTheCacheIsBehind(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim", code, raw)
	}
	e.eventually(func() bool { s, ok := e.s.slab(got.Name); return ok && lifecycle.Phase(s) == lifecycle.Ready })
	// The cache goes back to the slab as created: claiming, Pending.
	obj, ok, err := e.s.slabInf.GetStore().GetByKey(testNS + "/" + got.Name)
	if err != nil || !ok {
		t.Fatalf("slab not cached (%v)", err)
	}
	behind := obj.(*spawnerv1.SessionLivedBackend).DeepCopy()
	delete(behind.Annotations, spawnerv1.AnnotationPod)
	behind.Status = spawnerv1.SessionLivedBackendStatus{}
	if err := e.s.slabInf.GetStore().Update(behind); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(got.ReadyURL)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp := e.do("GET", u.RequestURI(), "")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("ready URL with the cache behind: %d %s, want 302", resp.StatusCode, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v: it waited on the cache instead of asking the API", d)
	}
}

// TestConcurrentClaimsInOneReplicaTryDifferentPods: concurrent claims in one
// replica pick from the same cache, which learns of a take only by watch;
// each skips the pods another claim here is taking (takenHere), so 10 claims
// against 10 warm pods send 10 takes. Without it, shuffled picks collided:
// 247 takes for 100 claims in a burst on the local cluster.
func TestConcurrentClaimsInOneReplicaTryDifferentPods(t *testing.T) {
	e := newTestEnv(t, "")
	var (
		mu    sync.Mutex
		takes int
		taken = map[string]bool{}
	)
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pa := a.(k8stesting.PatchAction)
		if !strings.Contains(string(pa.GetPatch()), "ownerReferences") {
			return false, nil, nil
		}
		time.Sleep(5 * time.Millisecond) // an API server's write: the other claims pick meanwhile
		mu.Lock()
		defer mu.Unlock()
		takes++
		if taken[pa.GetName()] { // the resourceVersion precondition, which the fake does not check
			return true, nil, apierrors.NewConflict(corev1.Resource("pods"), pa.GetName(), errors.New("taken"))
		}
		taken[pa.GetName()] = true
		return false, nil, nil
	})
	e.addPool("rooms", nil, 10)
	const n = 10
	answers := make(chan spawnAnswer, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		go func() {
			<-start
			_, a, _ := e.spawnPool(`{"pool":"rooms"}`)
			answers <- a
		}()
	}
	close(start)
	warm := 0
	for i := 0; i < n; i++ {
		if a := <-answers; a.Warm != nil && *a.Warm {
			warm++
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if takes != n || warm != n {
		t.Errorf("%d takes and %d warm claims for %d claims against %d warm pods, want %d and %d", takes, warm, n, n, n, n)
	}
}

func TestTakenHereIsAHintThatExpires(t *testing.T) {
	var th takenHere
	now := time.Now()
	if !th.reserve("a", "rooms", now) || th.reserve("a", "rooms", now.Add(time.Second)) {
		t.Fatal("a pod being taken here was offered twice")
	}
	th.release("a")
	if !th.reserve("a", "rooms", now.Add(time.Second)) {
		t.Fatal("a pod whose take was lost here is not offered again")
	}
	if !th.reserve("a", "rooms", now.Add(time.Second+takenHereFor)) {
		t.Fatalf("a pod taken here is still skipped after %v", takenHereFor)
	}
}

// TestReadyURLReadsAnUncachedClaimOnce: the ready URL of a pool backend
// this replica's cache does not have yet reads it from the API once (it
// read it twice: for the 404 check, then again as a pool backend neither
// Ready nor bound in the cache). Here it is still claiming: 409.
func TestReadyURLReadsAnUncachedClaimOnce(t *testing.T) {
	e := newTestEnv(t, "")
	tok := e.addBackend("b-claiming", lifecycle.Pending)
	patch := []byte(`{"metadata":{"annotations":{"` + spawnerv1.AnnotationPool + `":"rooms","` + spawnerv1.AnnotationPod + `":null}}}`)
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Patch(context.Background(), "b-claiming", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(func() bool {
		c, err := e.s.slabLister.Get("b-claiming")
		return err == nil && c.Annotations[spawnerv1.AnnotationPool] == "rooms"
	})
	obj, ok, err := e.s.slabInf.GetStore().GetByKey(testNS + "/b-claiming")
	if err != nil || !ok {
		t.Fatalf("slab not cached (%v)", err)
	}
	if err := e.s.slabInf.GetStore().Delete(obj); err != nil {
		t.Fatal(err)
	}
	var gets atomic.Int64
	e.slabs.PrependReactor("get", "sessionlivedbackends", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets.Add(1)
		return false, nil, nil
	})
	resp := e.do("GET", "/backend/b-claiming/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusConflict || gets.Load() != 1 {
		t.Errorf("ready URL of an uncached claiming backend: %d %s after %d GETs, want 409 after 1", resp.StatusCode, body, gets.Load())
	}
}

// TestReadyURLOfAColdPoolBackendReadsTheCache: a pool backend bound cold
// starts like any cold backend, and the cache follows it: its ready URL,
// polled until it redirects, asks the API nothing (a GET per poll was 634
// slab GETs in a burst of 100 claims that sent 13 cold).
func TestReadyURLOfAColdPoolBackendReadsTheCache(t *testing.T) {
	e := newTestEnv(t, "")
	tok := e.addBackend("b-cold", lifecycle.Running)
	patch := []byte(`{"metadata":{"annotations":{"` + spawnerv1.AnnotationPool + `":"rooms","` + spawnerv1.AnnotationPod + `":"b-cold"}}}`)
	if _, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Patch(context.Background(), "b-cold", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(func() bool {
		c, err := e.s.slabLister.Get("b-cold")
		return err == nil && c.Annotations[spawnerv1.AnnotationPod] == "b-cold"
	})
	var gets atomic.Int64
	e.slabs.PrependReactor("get", "sessionlivedbackends", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets.Add(1)
		return false, nil, nil
	})
	resp := e.do("GET", "/backend/b-cold/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusConflict || gets.Load() != 0 {
		t.Errorf("ready URL of a starting cold pool backend: %d %s after %d GETs, want 409 after none", resp.StatusCode, body, gets.Load())
	}
}

// TestReadyURLOfAClaimAheadOfThePodCacheReadsThePod: the client follows its
// ready URL to a replica whose pod cache does not have the take yet (the
// claim's slab, created bound to that pod, it has): one pod GET tells the
// claim is done; the slab, which the take did not change, is not read.
// Before, that slab was read first: two GETs on a warm claim's ready URL.
func TestReadyURLOfAClaimAheadOfThePodCacheReadsThePod(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	claiming, tok := e.addClaiming("b-claiming", "rooms", "rooms-0")
	e.takePod("rooms-0", claiming)
	e.eventually(func() bool { p, ok := e.s.pod("rooms-0"); return ok && spawnerv1.HoldsPod(claiming, p) })
	e.lagCache("rooms-0", func(p *corev1.Pod) {
		delete(p.Labels, spawnerv1.LabelBackend)
		p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(e.pool("rooms"), spawnerv1.SchemeGroupVersion.WithKind("BackendPool"))}
	})
	var slabGets, podGets atomic.Int64
	e.slabs.PrependReactor("get", "sessionlivedbackends", func(k8stesting.Action) (bool, runtime.Object, error) {
		slabGets.Add(1)
		return false, nil, nil
	})
	e.kube.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		podGets.Add(1)
		return false, nil, nil
	})
	resp := e.do("GET", "/backend/"+claiming.Name+"/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusFound || slabGets.Load() != 0 || podGets.Load() != 1 {
		t.Errorf("ready URL: %d %s after %d slab GETs and %d pod GETs, want 302 after 0 and 1", resp.StatusCode, body, slabGets.Load(), podGets.Load())
	}
}

// TestClaimAsksTheAPIAfterTwoLostTakes: a claim that lost two takes of
// cached pods, the first the pod its slab was created bound to (another
// spawn had them: the cache offers pods already taken), takes its next pod
// from the API's list of free pods. Before, it tried up to 8 cached pods
// first, each a slow write under a burst, and the claims of a lagging
// replica passed the controller's claim timeout and went cold.
func TestClaimAsksTheAPIAfterTwoLostTakes(t *testing.T) {
	e := newTestEnv(t, "")
	var takes atomic.Int64
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if takes.Add(1) <= 2 {
			return true, nil, apierrors.NewConflict(corev1.Resource("pods"), a.(k8stesting.PatchAction).GetName(), errors.New("taken"))
		}
		return false, nil, nil
	})
	e.addPool("rooms", nil, 10)
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want warm", code, raw)
	}
	if n, fromList := takes.Load(), e.s.metrics.claimFromList.Value(); n != 3 || fromList != 1 {
		t.Errorf("%d takes, %v claims from the list: want the third take from the list", n, fromList)
	}
}

// TestAFailedClaimIsNotAnsweredWarm: a claim that fails half-way (the API
// refuses its take and then its bind with errors that are not conflicts)
// answers with the backend it created, which the controller binds after its
// claim timeout; that answer does not say warm, although the slab was
// created bound to the pod the claim meant to take (preBind).
func TestAFailedClaimIsNotAnsweredWarm(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	e.kube.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInternalError(errors.New("etcd is away"))
	})
	e.slabs.PrependReactor("patch", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInternalError(errors.New("etcd is away"))
	})
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || *got.Warm {
		t.Fatalf("spawn: %d %s, want 201 with warm false", code, raw)
	}
	if exists, backend := e.podState("rooms-0"); !exists || backend != "" {
		t.Errorf("pool pod rooms-0: exists %v, backend %q, want left to its pool", exists, backend)
	}
}

// TestReadyURLWaitsBrieflyForTheClaimsEvents: the client follows its ready
// URL straight from the spawn's answer to a replica whose cache has the
// claim's slab but not yet its take, which arrives 10 ms later: the ready
// URL redirects once it does, asking the API nothing. Before, it read the
// pod from the API at once (a GET that took 37 ms on the local cluster
// while the claim's other writes ran).
func TestReadyURLWaitsBrieflyForTheClaimsEvents(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	claiming, tok := e.addClaiming("b-claiming", "rooms", "rooms-0")
	e.takePod("rooms-0", claiming)
	e.eventually(func() bool { p, ok := e.s.pod("rooms-0"); return ok && spawnerv1.HoldsPod(claiming, p) })
	e.lagCache("rooms-0", func(p *corev1.Pod) {
		delete(p.Labels, spawnerv1.LabelBackend)
		p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(e.pool("rooms"), spawnerv1.SchemeGroupVersion.WithKind("BackendPool"))}
	})
	var gets atomic.Int64
	count := func(k8stesting.Action) (bool, runtime.Object, error) { gets.Add(1); return false, nil, nil }
	e.slabs.PrependReactor("get", "*", count)
	e.kube.PrependReactor("get", "*", count)
	go func() {
		time.Sleep(10 * time.Millisecond)
		// Any later event of the pod brings the cache up to date.
		patch := []byte(`{"metadata":{"annotations":{"example.com/touched":"yes"}}}`)
		if _, err := e.kube.CoreV1().Pods(testNS).Patch(context.Background(), "rooms-0", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Error(err)
		}
	}()
	resp := e.do("GET", "/backend/"+claiming.Name+"/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusFound || gets.Load() != 0 {
		t.Errorf("ready URL: %d %s after %d GETs, want 302 after none", resp.StatusCode, body, gets.Load())
	}
}

// TestReadyURLOfAClaimAnsweredHereReadsNoAPI: the ready URL of a warm claim
// this replica just answered redirects from what its own writes returned
// (ownWrites), although its caches have none of the claim's events yet, as
// under a burst, when they lag by seconds. Before, it read the slab (once to
// authenticate the request, once to find it) and the pod from the API: in a
// burst of 100 claims on the local cluster, 393 slab GETs and 90 pod GETs
// while every GET took ~0.4 s.
func TestReadyURLOfAClaimAnsweredHereReadsNoAPI(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	e.events.hold()
	resp := e.do("POST", "/spawn", `{"pool":"rooms"}`)
	var got struct {
		Name     string `json:"name"`
		ReadyURL string `json:"readyUrl"`
		Warm     *bool  `json:"warm"`
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusCreated || json.Unmarshal([]byte(body), &got) != nil || got.Warm == nil || !*got.Warm {
		t.Fatalf("POST /spawn from a full pool: %d %s, want 201 warm", resp.StatusCode, body)
	}
	if _, err := e.s.slabLister.Get(got.Name); err == nil {
		t.Fatal("the cache has the claimed slab: the test needs it lagging")
	}
	var reads atomic.Int64
	count := func(a k8stesting.Action) (bool, runtime.Object, error) { reads.Add(1); return false, nil, nil }
	for _, verb := range []string{"get", "list"} {
		e.slabs.PrependReactor(verb, "*", count)
		e.kube.PrependReactor(verb, "*", count)
	}
	req, _ := http.NewRequest("GET", got.ReadyURL, nil)
	req.Header.Set("Accept", "application/json")
	r, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, r)
	if r.StatusCode != http.StatusFound || reads.Load() != 0 {
		t.Errorf("ready URL of a claim answered here, caches lagging: %d %s after %d API reads, want 302 after none", r.StatusCode, body, reads.Load())
	}
	// The router of this replica serves it once its claim recorded it
	// Ready (recordClaimed), from that write's result too.
	e.eventually(func() bool {
		slab, ok := e.s.cachedSlab(got.Name)
		return ok && lifecycle.Phase(slab) == lifecycle.Ready
	})
	if slab, up := e.s.routable(got.Name); slab == nil || up.addr == "" {
		t.Errorf("router of the claiming replica, caches lagging: slab %v, upstream %+v; want the claimed pod", slab != nil, up)
	}
}

// TestReadyURLOfAnotherReplicasClaimReadsTheAPIOnce: a replica whose caches
// have none of another replica's claim yet reads the slab and its pod from
// the API once, however often the client asks and although each request
// looks its backend up twice (to authenticate it, then to answer it): what
// the API said is laid over the caches (ownWrites). Before, each request
// read the slab twice and the pod once.
func TestReadyURLOfAnotherReplicasClaimReadsTheAPIOnce(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	e.events.hold()
	salt := newSalt()
	tok := e.s.creds.access.token(salt)
	slab := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: "b-elsewhere", Namespace: testNS, UID: "uid-b-elsewhere", CreationTimestamp: metav1.Now(),
			Labels: map[string]string{},
			Annotations: map[string]string{spawnerv1.AnnotationPool: "rooms", spawnerv1.AnnotationPod: "rooms-0",
				spawnerv1.AnnotationAccessTokenSalt: salt, spawnerv1.AnnotationAccessTokenHash: hashToken(tok)}},
		Spec: e.pool("rooms").BackendSpec(),
	}
	created, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Create(context.Background(), slab, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.takePod("rooms-0", created)
	var slabGets, podGets atomic.Int64
	e.slabs.PrependReactor("get", "sessionlivedbackends", func(k8stesting.Action) (bool, runtime.Object, error) { slabGets.Add(1); return false, nil, nil })
	e.kube.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) { podGets.Add(1); return false, nil, nil })
	for i := range 3 {
		resp := e.do("GET", "/backend/"+created.Name+"/ready?"+tokenParam+"="+url.QueryEscape(tok), "")
		if body := readBody(t, resp); resp.StatusCode != http.StatusFound {
			t.Fatalf("ready URL, request %d: %d %s, want 302", i+1, resp.StatusCode, body)
		}
	}
	if slabGets.Load() != 1 || podGets.Load() != 1 {
		t.Errorf("3 ready requests, caches lagging: %d slab GETs and %d pod GETs, want 1 and 1", slabGets.Load(), podGets.Load())
	}
}

// recordRequests records the fake API's requests (verb and resource, with
// the subresource) from now on.
func (e *testEnv) recordRequests() func() []string {
	var mu sync.Mutex
	var got []string
	record := func(a k8stesting.Action) (bool, runtime.Object, error) {
		if v := a.GetVerb(); v != "watch" {
			r := v + " " + a.GetResource().Resource
			if a.GetSubresource() != "" {
				r += "/" + a.GetSubresource()
			}
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
		}
		return false, nil, nil
	}
	e.slabs.PrependReactor("*", "*", record)
	e.kube.PrependReactor("*", "*", record)
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// TestAClaimThePoolHasNoPodForIsCreatedCold: a spawn whose pool has no free
// pod, in the cache or in the API, asks the API once and creates its
// backend bound cold: a list and one write before the answer, keyed or
// not. Before, it created the backend unbound, listed the pool and bound it
// cold with a second write.
func TestAClaimThePoolHasNoPodForIsCreatedCold(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 0)
	requests := e.recordRequests()
	for _, body := range []string{`{"pool":"rooms"}`, `{"pool":"rooms","key":"doc-7"}`} {
		before := len(requests())
		code, got, raw := e.spawnPool(body)
		if code != 201 || got.Warm == nil || *got.Warm {
			t.Fatalf("%s: %d %s, want 201 cold", body, code, raw)
		}
		var writes []string
		for _, r := range requests()[before:] {
			if !strings.HasPrefix(r, "get ") && !strings.HasPrefix(r, "list sessionlivedbackends") {
				writes = append(writes, r)
			}
		}
		if want := []string{"list pods", "create sessionlivedbackends"}; !slices.Equal(writes, want) {
			t.Errorf("%s: requests %q, want %q", body, writes, want)
		}
		slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), got.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod, bound := spawnerv1.PodNameOf(slab); !bound || pod != slab.Name || slab.Annotations[spawnerv1.AnnotationPool] != "rooms" {
			t.Errorf("%s: backend %s bound to %q (%v), want bound cold to its own name", body, slab.Name, pod, bound)
		}
		if body == `{"pool":"rooms"}` && (!strings.HasPrefix(slab.Name, slabNamePrefix) || len(slab.Name) != len(slabNamePrefix)+5) {
			t.Errorf("unkeyed backend named %q, want %s and five characters", slab.Name, slabNamePrefix)
		}
	}
	if v := e.s.metrics.claimCold.Value(); v != 2 {
		t.Errorf("%v cold claims counted, want 2", v)
	}
}

// TestAClaimWithoutAFreePodWaitsForTheTakesInFlight: a spawn that finds
// every cached pod of its pool being taken by another claim of this replica
// (reserved in takenHere) waits for that take to come back before it asks
// the API; the pod is then taken, and the spawn goes cold without trying
// it. Before, it listed the pool at once, found the pod still free and
// tried to take it too: under a burst of 100 claims against a pool of 20,
// ~255 lost takes and 80 lists that the first 20 claims waited behind.
func TestAClaimWithoutAFreePodWaitsForTheTakesInFlight(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	other, _ := e.addClaiming("b-other", "rooms", "rooms-0")
	if !e.s.taken.reserve("uid-rooms-0", "rooms", time.Now()) { // the other claim's take, in flight
		t.Fatal("rooms-0 already reserved")
	}
	requests := e.recordRequests()
	answer := make(chan spawnAnswer, 1)
	go func() { _, a, _ := e.spawnPool(`{"pool":"rooms"}`); answer <- a }()
	time.Sleep(300 * time.Millisecond)
	sent := requests()
	e.takePod("rooms-0", other) // the other claim's take comes back won
	e.s.taken.settle("uid-rooms-0")
	a := <-answer
	if len(sent) != 0 {
		t.Errorf("the spawn sent %q while another claim's take was in flight, want nothing", sent)
	}
	if a.Warm == nil || *a.Warm {
		t.Errorf("answer %+v, want cold: the pool's one pod went to the other claim", a)
	}
	var takes, lists int
	for _, r := range requests() {
		switch r {
		case "patch pods":
			takes++
		case "list pods":
			lists++
		}
	}
	if takes != 1 || lists != 1 { // the one take is takePod's
		t.Errorf("%d takes of the spawn and %d lists, want none and 1", takes-1, lists)
	}
}

// TestClaimsWithoutAFreePodShareOneList: claims of one replica that find
// no free pod in the cache at the same time send one list of the pool
// between them, not one each; each then takes a different listed pod.
func TestClaimsWithoutAFreePodShareOneList(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 5)
	for i := 0; i < 5; i++ { // Ready in the API, not yet in the cache
		e.lagCache(fmt.Sprintf("rooms-%d", i), func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse })
	}
	var lists atomic.Int64
	listing := make(chan struct{})
	e.kube.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if lists.Add(1) == 1 {
			<-listing // slow, so that the other claims come while it runs
		}
		return false, nil, nil
	})
	const n = 5
	answers := make(chan spawnAnswer, n)
	for i := 0; i < n; i++ {
		go func() { _, a, _ := e.spawnPool(`{"pool":"rooms"}`); answers <- a }()
	}
	time.Sleep(300 * time.Millisecond)
	close(listing)
	warm := 0
	for i := 0; i < n; i++ {
		if a := <-answers; a.Warm != nil && *a.Warm {
			warm++
		}
	}
	if l := lists.Load(); l != 1 || warm != n {
		t.Errorf("%d lists and %d warm claims for %d claims against %d pods the cache lacks, want 1 and %d", l, warm, n, n, n)
	}
	if v := e.s.metrics.claimFromList.Value(); v != n {
		t.Errorf("%v claims counted as from the list, want %d", v, n)
	}
}

// TestAClaimsReadyRecordWaitsForTheClaimsInFlight: a warm claim records its
// backend Ready once no other pool spawn is in flight in its replica, with
// readyTime at the claim, and never later than recordDeferMax after its
// slab's create. Before, it wrote the record right after answering: under
// a burst of 100 claims, 100 status writes of 0.9 s on average on the API
// server the later claims' creates and takes waited for.
func TestAClaimsReadyRecordWaitsForTheClaimsInFlight(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 2)
	var records atomic.Int64
	e.slabs.PrependReactor("update", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" {
			records.Add(1)
		}
		return false, nil, nil
	})
	ready := func(name string) *metav1.Time {
		slab, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil || lifecycle.Phase(slab) != lifecycle.Ready {
			return nil
		}
		return slab.Status.ReadyTime
	}

	e.s.claims.start() // another claim, in flight
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim", code, raw)
	}
	time.Sleep(300 * time.Millisecond)
	if n := records.Load(); n != 0 {
		t.Errorf("%d Ready record(s) written while another claim was in flight, want none yet", n)
	}
	ended := time.Now()
	e.s.claims.end()
	e.eventually(func() bool { return ready(got.Name) != nil })
	if d := time.Since(ended); d > time.Second {
		t.Errorf("recorded %v after the last claim in flight ended", d)
	}
	if rt := ready(got.Name); !rt.Time.Before(ended) {
		t.Errorf("readyTime %v, want the claim's time (before %v)", rt, ended)
	}

	e.s.claims.start() // a claim that stays in flight
	defer e.s.claims.end()
	start := time.Now()
	code, got, raw = e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("second spawn: %d %s, want a warm claim", code, raw)
	}
	for ready(got.Name) == nil && time.Since(start) < recordDeferMax+2*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); ready(got.Name) == nil || d < recordDeferMax-500*time.Millisecond || d > recordDeferMax+time.Second {
		t.Errorf("with a claim in flight throughout, recorded Ready after %v (recorded: %v), want about %v", d, ready(got.Name) != nil, recordDeferMax)
	}
}

// TestAClaimsReadyRecordWaitsForTheReadyURLsOfClaims: the ready URL of a
// pool backend not recorded Ready yet is part of its claim's burst, as the
// spawn is: a replica writes its claims' Ready records only once neither
// has been in flight for recordQuiet. Before, the records went out as soon
// as the spawns were answered, while the ready URLs that follow them (a
// burst's clients, on either replica) still waited for the API server.
func TestAClaimsReadyRecordWaitsForTheReadyURLsOfClaims(t *testing.T) {
	e := newTestEnv(t, "")
	e.addPool("rooms", nil, 1)
	var records atomic.Int64
	e.slabs.PrependReactor("update", "sessionlivedbackends", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" {
			records.Add(1)
		}
		return false, nil, nil
	})
	code, got, raw := e.spawnPool(`{"pool":"rooms"}`)
	if code != 201 || got.Warm == nil || !*got.Warm {
		t.Fatalf("spawn: %d %s, want a warm claim", code, raw)
	}
	u, err := url.Parse(got.ReadyURL)
	if err != nil {
		t.Fatal(err)
	}
	// A client polling the ready URL more often than recordQuiet keeps the
	// replica's claims in flight.
	var ended time.Time
	for until := time.Now().Add(3 * recordQuiet); ; time.Sleep(recordQuiet / 5) {
		resp := e.do("GET", u.RequestURI(), "")
		readBody(t, resp)
		ended = time.Now()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("ready URL answered %d, want 302", resp.StatusCode)
		}
		if ended.After(until) {
			break
		}
	}
	if n := records.Load(); n != 0 {
		t.Errorf("%d Ready record(s) written while the claim's ready URL was polled, want none yet", n)
	}
	e.eventually(func() bool { return records.Load() > 0 })
	if d := time.Since(ended); d < recordQuiet-50*time.Millisecond || d > recordQuiet+time.Second {
		t.Errorf("recorded %v after the last ready URL, want about %v", d, recordQuiet)
	}
}

// TestClaimsInFlightIgnoreAShortLull: a lull shorter than the quiet wanted
// does not end the wait, and the wait ends that long after the last claim.
func TestClaimsInFlightIgnoreAShortLull(t *testing.T) {
	c := &claimsInFlight{lull: 100 * time.Millisecond}
	select {
	case <-c.quiet():
	default:
		t.Fatal("no claim ever started, and quiet is not closed")
	}
	c.start()
	q := c.quiet()
	c.end()
	time.Sleep(30 * time.Millisecond)
	c.start() // within the lull: the same wait
	if c.quiet() != q {
		t.Error("a claim 30 ms into a 100 ms lull started a new wait")
	}
	time.Sleep(150 * time.Millisecond)
	select {
	case <-q:
		t.Fatal("quiet closed while a claim is in flight")
	default:
	}
	c.end()
	ended := time.Now()
	<-q
	if d := time.Since(ended); d < 90*time.Millisecond {
		t.Errorf("quiet closed %v after the last claim ended, want 100 ms", d)
	}
	select {
	case <-c.quiet():
	default:
		t.Error("quiet is not closed once the lull is over")
	}
	c.start()
	select {
	case <-c.quiet():
		t.Error("a claim started after the quiet, and quiet is still closed")
	default:
	}
	c.end()
}
