//go:build cluster

package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
)

// demoClaimHook is the demo app's claim hook path (e2e/demo/chat.ClaimHookPath).
const demoClaimHook = "/spawner/claim"

func withHook(timeout int32, demoMode string) func(*spawnerv1.BackendPoolSpec) {
	return func(s *spawnerv1.BackendPoolSpec) {
		s.ClaimHook = &spawnerv1.ClaimHook{Path: demoClaimHook, TimeoutSeconds: timeout}
		if demoMode != "" {
			s.Template.Containers[0].Env = []corev1.EnvVar{{Name: "DEMO_CLAIM_HOOK", Value: demoMode}}
		}
	}
}

// routedGet GETs an app path of a backend through a router.
func routedGet(t *testing.T, backendURL, path string) (int, string) {
	t.Helper()
	resp, err := noRedirect.Get(strings.Replace(backendURL, "/?", path+"?", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b)
}

// TestPoolClaimHookDeliversKeyAndEnv: a keyed spawn with env and labels
// claims a warm demo pod of a pool with a claim hook; the app received the
// key, env and labels before the backend was Ready (its room is named after
// the key, and it echoes what the hook got), and the router keeps outsiders
// off the hook path.
func TestPoolClaimHookDeliversKeyAndEnv(t *testing.T) {
	e := setup(t)
	e.newPoolWith("hooked", 1, 60, withHook(2, ""))

	code, ps := e.poolSpawn(e.a.control, `{"pool":"hooked","key":"doc 42","env":{"TOPIC":"cats"},"labels":{"team":"a"}}`)
	if code != 201 || !*ps.Warm {
		t.Fatalf("claim: %d %+v, want a warm new backend", code, ps)
	}
	e.waitReady(e.a.control, ps.Name)
	pod := e.claimedPod(ps.Name)

	status, body := routedGet(t, ps.URL, "/session")
	var got struct {
		Room  string
		Claim *struct {
			Backend, Key string
			Env, Labels  map[string]string
		}
	}
	if err := json.Unmarshal([]byte(body), &got); status != 200 || err != nil {
		t.Fatalf("GET /session: %d %s (%v)", status, body, err)
	}
	if got.Claim == nil || got.Room != "doc 42" || got.Claim.Key != "doc 42" || got.Claim.Backend != ps.Name ||
		got.Claim.Env["TOPIC"] != "cats" || got.Claim.Labels["team"] != "a" {
		t.Fatalf("the app's session: %s; want room and key doc 42, backend %s, env TOPIC=cats, labels team=a", body, ps.Name)
	}
	// The claimed warm pod carries no env of the spawn in its spec: the hook
	// delivered it.
	for _, env := range pod.Spec.Containers[0].Env {
		if env.Name == "TOPIC" {
			t.Errorf("the warm pod's spec has the spawn's env %v", env)
		}
	}
	// Outsiders never reach the hook, with the backend's own token.
	for _, p := range []string{demoClaimHook, "/Spawner/Claim/"} {
		if status, body := routedGet(t, ps.URL, p); status != 403 {
			t.Errorf("GET %s through the router: %d %s, want 403", p, status, body)
		}
	}
	req, _ := http.NewRequest("POST", strings.Replace(ps.URL, "/?", demoClaimHook+"?", 1), strings.NewReader(`{"key":"forged"}`))
	if resp, err := noRedirect.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("POST to the hook through the router: %v %v, want 403", resp, err)
	}
	if _, body := routedGet(t, ps.URL, "/session"); !strings.Contains(body, `"room":"doc 42"`) {
		t.Errorf("after a forged claim: %s", body)
	}

	// env to a pool without a claim hook is a 422 that says why.
	e.newPool("hookless", 1, 60)
	if code, body, _ := e.call(e.b.control, "POST", "/spawn", `{"pool":"hookless","env":{"TOPIC":"cats"}}`); code != 422 || !strings.Contains(body, "spec.claimHook") {
		t.Errorf("env to a hookless pool: %d %s, want 422 naming spec.claimHook", code, body)
	}
}

// TestPoolFailingClaimHookGoesCold: pools whose app answers its claim hook
// with 500, or never answers, hand out none of their warm pods: each pod
// whose hook failed is deleted (never labelled with a backend, so never
// followed or bound), the spawn starts cold and becomes Ready on its own
// pod, and the pools start new warm pods.
func TestPoolFailingClaimHookGoesCold(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	e.newPoolWith("refusing", 2, 60, withHook(1, "fail"))
	e.newPoolWith("silent", 1, 60, withHook(1, "hang"))

	for _, pool := range []string{"refusing", "silent"} {
		before, err := e.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: spawnerv1.LabelPool + "=" + pool})
		if err != nil || len(before.Items) == 0 {
			t.Fatalf("%s: %d warm pods (%v)", pool, len(before.Items), err)
		}
		start := time.Now()
		code, ps := e.poolSpawn(e.a.control, `{"pool":"`+pool+`","key":"doc-`+pool+`","env":{"TOPIC":"dogs"}}`)
		took := time.Since(start)
		if code != 201 || *ps.Warm {
			t.Fatalf("%s: %d %+v, want a new cold backend", pool, code, ps)
		}
		if pool == "silent" && took < time.Second {
			t.Errorf("silent: the spawn answered in %v, before the hook's 1 s timeout", took)
		}
		e.waitReady(e.a.control, ps.Name)
		slab, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(ctx, ps.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p, _ := spawnerv1.PodNameOf(slab); p != ps.Name {
			t.Fatalf("%s: backend bound to %q, want its own cold pod", pool, p)
		}
		for _, old := range before.Items {
			clustertest.Eventually(t, 30*time.Second, pool+": warm pod "+old.Name+" with a failed hook deleted", func() (bool, error) {
				p, err := e.kube.CoreV1().Pods(e.ns).Get(ctx, old.Name, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					return true, nil
				}
				if err != nil {
					return false, err
				}
				if b := p.Labels[spawnerv1.LabelBackend]; b != "" {
					return false, fmt.Errorf("labelled with backend %s", b)
				}
				return p.DeletionTimestamp != nil, nil
			})
		}
		// The cold pod got the spawn's env in its environment, and the
		// app names its room after the key (from Spawner-Key).
		if _, body := routedGet(t, ps.URL, "/session"); !strings.Contains(body, `"room":"doc-`+pool+`"`) || !strings.Contains(body, `"claim":null`) {
			t.Errorf("%s: cold backend's session %s", pool, body)
		}
		cold, err := e.kube.CoreV1().Pods(e.ns).Get(ctx, ps.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		hasEnv := false
		for _, env := range cold.Spec.Containers[0].Env {
			hasEnv = hasEnv || (env.Name == "TOPIC" && env.Value == "dogs")
		}
		if !hasEnv {
			t.Errorf("%s: cold pod env %v, want TOPIC=dogs", pool, cold.Spec.Containers[0].Env)
		}
	}
	e.waitPoolReady("refusing", 2)
	e.waitPoolReady("silent", 1)
}

// TestHookClaimFinishedByController: an api-server that died while a claim
// hook ran leaves a claiming slab that controls a warm pod without the
// backend label (the hook never succeeded); the controller binds the slab
// cold and deletes that pod — it never hands out a pod whose hook did not
// succeed.
func TestHookClaimFinishedByController(t *testing.T) {
	e := setup(t)
	e.newPoolWith("midhook", 1, 60, withHook(2, ""))
	ctx := context.Background()
	pool, err := e.sp.SpawnerV1().BackendPools(e.ns).Get(ctx, "midhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slab, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Create(ctx, &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: "died-in-hook", Namespace: e.ns, Annotations: map[string]string{spawnerv1.AnnotationPool: "midhook"}},
		Spec:       pool.BackendSpec(),
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := e.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: spawnerv1.LabelPool + "=midhook"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("%d warm pods (%v)", len(pods.Items), err)
	}
	taken := pods.Items[0]
	taken.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(slab, spawnerv1.SchemeGroupVersion.WithKind("SessionLivedBackend"))}
	if _, err := e.kube.CoreV1().Pods(e.ns).Update(ctx, &taken, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	clustertest.Eventually(t, 60*time.Second, "claim closed cold and Ready", func() (bool, error) {
		s, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(ctx, slab.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		p, ok := spawnerv1.PodNameOf(s)
		if ok && p != slab.Name {
			return false, fmt.Errorf("bound to the taken pod %s, whose hook never succeeded", p)
		}
		return ok && s.Status.Phase == "Ready", fmt.Errorf("phase %s", s.Status.Phase)
	})
	clustertest.Eventually(t, 30*time.Second, "the taken pod deleted", func() (bool, error) {
		p, err := e.kube.CoreV1().Pods(e.ns).Get(ctx, taken.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil), nil
	})
}
