//go:build cluster

package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"spawner.dev/apis/lifecycle"
	spawnerv1 "spawner.dev/apis/spawner/v1"
	"spawner.dev/common/clustertest"
	"spawner.dev/common/freeport"
)

// restrict labels the test namespace as deploy/api-server/namespace.yaml
// labels spawner-backends: Pod Security `restricted`, enforced.
func (e *env) restrict() {
	e.t.Helper()
	ctx := context.Background()
	ns, err := e.kube.CoreV1().Namespaces().Get(ctx, e.ns, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	ns.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	ns.Labels["pod-security.kubernetes.io/enforce-version"] = "latest"
	if _, err := e.kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) pod(name string) *corev1.Pod {
	e.t.Helper()
	p, err := e.kube.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestRestrictedNamespace: in a namespace enforcing `restricted`, a plain
// spawn (no security context) is admitted with the restricted defaults and
// becomes Ready; a spawn asking for privileged is a 422 naming the reason
// (nothing created), and a privileged template applied directly fails at
// once with the Pod Security reason instead of staying Pending.
func TestRestrictedNamespace(t *testing.T) {
	e := setup(t)
	e.restrict()

	_, sr := e.spawn(e.a.control, demoBody(""))
	e.waitReady(e.a.control, sr.Name)
	p := e.pod(sr.Name)
	app, sidecar := p.Spec.Containers[0], p.Spec.Containers[len(p.Spec.Containers)-1]
	if psc := p.Spec.SecurityContext; psc == nil || !ptr.Deref(psc.RunAsNonRoot, false) || psc.SeccompProfile == nil ||
		psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v", psc)
	}
	for _, c := range []corev1.Container{app, sidecar} {
		sc := c.SecurityContext
		if sc == nil || ptr.Deref(sc.RunAsUser, 0) != 65532 || ptr.Deref(sc.AllowPrivilegeEscalation, true) ||
			sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("container %s securityContext %+v", c.Name, sc)
		}
	}
	if !ptr.Deref(sidecar.SecurityContext.ReadOnlyRootFilesystem, false) {
		t.Error("the sidecar's root filesystem is writable")
	}

	// A spawn asking for privileged is refused by the API with a 422 that
	// names the namespace's policy and the reason, and nothing is created.
	before := e.slabCount()
	code, body, _ := e.call(e.a.control, "POST", "/spawn", demoBody(`,"securityContext":{"privileged":true}`))
	if code != 422 || !strings.Contains(body, `violates PodSecurity \"restricted:latest\"`) || !strings.Contains(body, "privileged") {
		t.Errorf("privileged spawn: %d %s, want 422 naming restricted:latest and privileged", code, body)
	}
	t.Logf("privileged spawn: %d %s", code, strings.TrimSpace(body))
	if n := e.slabCount(); n != before {
		t.Errorf("%d backends after the refused spawn, want %d", n, before)
	}

	// A privileged template applied directly, around the API: the controller
	// fails it at once with the Pod Security reason.
	priv := &spawnerv1.SessionLivedBackend{
		ObjectMeta: metav1.ObjectMeta{Name: "privileged", Namespace: e.ns},
		Spec: spawnerv1.SessionLivedBackendSpec{Template: spawnerv1.BackendPodTemplate{Containers: []corev1.Container{{
			Name: "app", Image: clustertest.DemoImage, SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}}},
	}
	start := time.Now()
	if _, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).Create(context.Background(), priv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *spawnerv1.SessionLivedBackend
	clustertest.Eventually(t, 20*time.Second, "the privileged backend to fail", func() (bool, error) {
		var err error
		got, err = e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), "privileged", metav1.GetOptions{})
		return err == nil && got.Status.Phase == lifecycle.Failed, err
	})
	if got.Status.Reason != lifecycle.ReasonInvalidSpec || !strings.Contains(got.Status.Message, "PodSecurity") ||
		!strings.Contains(got.Status.Message, "privileged") {
		t.Errorf("status %s/%s %q, want InvalidSpec naming the Pod Security reason", got.Status.Phase, got.Status.Reason, got.Status.Message)
	}
	t.Logf("privileged template failed after %s: %s", time.Since(start).Round(time.Millisecond), got.Status.Message)
}

// TestRootImageRunsUnderRestrictedDefaults: in a namespace enforcing
// `restricted`, a spawn of an image whose USER is root (uid 0), with no
// security context, is admitted and becomes Ready, because the controller
// fills in a numeric non-root uid (65532) with runAsNonRoot. The same image
// with a restricted context of its own that names no uid is admitted too,
// but the kubelet refuses to start it as root: what runs the first one is the
// default uid, and the image is indeed root. That backend fails at once
// (InvalidSpec, the kubelet's reason), not after --startup-timeout.
func TestRootImageRunsUnderRestrictedDefaults(t *testing.T) {
	e := setup(t)
	e.restrict()
	// A new image name reaches the kubelet through containerd's CRI events,
	// which lagged 4 minutes behind `ctr images import` under load here
	// (05:46 → 05:50, containerd.log): spawning before that is a pull.
	clustertest.Eventually(t, 5*time.Minute, "the node listing "+clustertest.DemoRootImage, func() (bool, error) {
		nodes, err := e.kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, n := range nodes.Items {
			for _, img := range n.Status.Images {
				if slices.Contains(img.Names, clustertest.DemoRootImage) {
					return true, nil
				}
			}
		}
		return false, errors.New("not listed: run scripts/build-images.sh")
	})
	rootBody := func(extra string) string {
		return `{"image":"` + clustertest.DemoRootImage + `","gracePeriodSeconds":60` + extra + `}`
	}

	_, sr := e.spawn(e.a.control, rootBody(""))
	loc := e.waitReady(e.a.control, sr.Name)
	app := e.pod(sr.Name).Spec.Containers[0]
	if sc := app.SecurityContext; sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || ptr.Deref(sc.RunAsUser, 0) != 65532 ||
		ptr.Deref(sc.RunAsGroup, 0) != 65532 {
		t.Errorf("the root image's app container has securityContext %+v, want runAsNonRoot and runAsUser/runAsGroup 65532", sc)
	}
	if code, body, _ := getBody(t, noRedirect, loc, nil); code != 200 || !strings.Contains(body, "spawner demo room") {
		t.Errorf("the root image's backend through the router: %d %.200s", code, body)
	}

	_, own := e.spawn(e.a.control, rootBody(`,"securityContext":{"runAsNonRoot":true,"allowPrivilegeEscalation":false,`+
		`"capabilities":{"drop":["ALL"]},"seccompProfile":{"type":"RuntimeDefault"}}`))
	start := time.Now()
	var got *spawnerv1.SessionLivedBackend
	clustertest.Eventually(t, 60*time.Second, "the root image with a context of its own to fail", func() (bool, error) {
		var err error
		got, err = e.sp.SpawnerV1().SessionLivedBackends(e.ns).Get(context.Background(), own.Name, metav1.GetOptions{})
		return err == nil && got.Status.Phase == lifecycle.Failed, err
	})
	if got.Status.Reason != lifecycle.ReasonInvalidSpec || !strings.Contains(got.Status.Message, "runAsNonRoot and image will run as root") {
		t.Errorf("the root image with runAsNonRoot and no uid: %s/%s %q, want InvalidSpec with the kubelet's refusal to run it as root",
			got.Status.Phase, got.Status.Reason, got.Status.Message)
	}
	t.Logf("the root image with a context of its own naming no uid failed after %s: %s", time.Since(start).Round(time.Millisecond), got.Status.Message)
}

// TestResourcesReachThePod: a spawn's resources are the app container's; a
// spawn without any gets the controller's defaults.
func TestResourcesReachThePod(t *testing.T) {
	e := setup(t)
	_, withRes := e.spawn(e.a.control, demoBody(`,"resources":{"requests":{"cpu":"20m","memory":"40Mi"},"limits":{"memory":"100Mi"}}`))
	_, plain := e.spawn(e.a.control, demoBody(""))
	e.waitReady(e.a.control, withRes.Name)
	e.waitReady(e.a.control, plain.Name)
	r := e.pod(withRes.Name).Spec.Containers[0].Resources
	if r.Requests.Cpu().Cmp(resource.MustParse("20m")) != 0 || r.Requests.Memory().Cmp(resource.MustParse("40Mi")) != 0 ||
		r.Limits.Memory().Cmp(resource.MustParse("100Mi")) != 0 || r.Limits.Cpu().Value() != 0 {
		t.Errorf("spawned with resources, app has %+v", r)
	}
	d := e.pod(plain.Name).Spec.Containers[0].Resources
	if d.Requests.Cpu().Cmp(resource.MustParse("5m")) != 0 || d.Requests.Memory().Cmp(resource.MustParse("32Mi")) != 0 ||
		d.Limits.Cpu().Cmp(resource.MustParse("1")) != 0 || d.Limits.Memory().Cmp(resource.MustParse("512Mi")) != 0 {
		t.Errorf("spawned without resources, app has %+v, want the controller's defaults", d)
	}
}

// startLimited runs one more api-server on e's namespace with extra flags.
func (e *env) startLimited(extra ...string) string {
	e.t.Helper()
	dir := e.t.TempDir()
	tokens, key := filepath.Join(dir, "tokens"), filepath.Join(dir, "key")
	os.WriteFile(tokens, []byte(controlToken+"\n"), 0o600)
	os.WriteFile(key, []byte("cluster-test-access-token-key-0123456789"), 0o600)
	c := freeport.Addr(e.t)
	args := append([]string{"--kubeconfig=" + os.Getenv("KUBECONFIG"), "--backend-namespace=" + e.ns, "--control-addr=" + c,
		"--router-addr=" + freeport.Addr(e.t), "--public-url=http://127.0.0.1:1", "--token-file=" + tokens,
		"--access-token-key-file=" + key, "--log-json=false"}, extra...)
	clustertest.Start(e.t, clustertest.Binary(e.t, "api-server"), args...)
	base := "http://" + c
	clustertest.Eventually(e.t, 30*time.Second, "limited api-server /readyz", func() (bool, error) {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, fmt.Errorf("status %d", resp.StatusCode)
	})
	return base
}

func (e *env) slabCount() int {
	e.t.Helper()
	l, err := e.sp.SpawnerV1().SessionLivedBackends(e.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(l.Items)
}

// TestTokenLimits: the live-backend cap and the rate limit answer 429 with
// Retry-After and a JSON error, and create nothing.
func TestTokenLimits(t *testing.T) {
	e := setup(t)
	api := e.startLimited("--max-backends-per-token=2", "--spawn-rate-per-token=0.05", "--spawn-burst-per-token=3")
	for range 2 {
		if code, body, _ := e.call(api, "POST", "/spawn", demoBody("")); code != 201 {
			t.Fatalf("spawn under the limits: %d %s", code, body)
		}
	}
	check := func(what, retryAfter, says string) {
		t.Helper()
		code, body, h := e.call(api, "POST", "/spawn", demoBody(""))
		var msg struct{ Error string }
		if code != 429 || h.Get("Retry-After") != retryAfter || json.Unmarshal([]byte(body), &msg) != nil || !strings.Contains(msg.Error, says) {
			t.Fatalf("%s: %d Retry-After %q %s", what, code, h.Get("Retry-After"), body)
		}
		t.Logf("%s: 429 Retry-After %s %s", what, retryAfter, strings.TrimSpace(body))
	}
	check("cap", "10", "cap is 2")    // third request of the burst of 3
	check("rate", "20", "rate limit") // fourth: the bucket refills at 0.05/s
	time.Sleep(2 * time.Second)       // let any stray create show up
	if n := e.slabCount(); n != 2 {
		t.Errorf("%d backends in the namespace, want 2", n)
	}
}

// TestQuotaExhaustion: a ResourceQuota on backends in the namespace answers
// 503 with the quota's reason.
func TestQuotaExhaustion(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	q := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "backends"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{"count/sessionlivedbackends.spawner.dev": resource.MustParse("1")}}}
	if _, err := e.kube.CoreV1().ResourceQuotas(e.ns).Create(ctx, q, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Admission refuses everything until the quota controller has computed usage.
	clustertest.Eventually(t, 60*time.Second, "quota usage computed", func() (bool, error) {
		got, err := e.kube.CoreV1().ResourceQuotas(e.ns).Get(ctx, "backends", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, ok := got.Status.Used["count/sessionlivedbackends.spawner.dev"]
		return ok, nil
	})
	if code, body, _ := e.call(e.a.control, "POST", "/spawn", demoBody("")); code != 201 {
		t.Fatalf("first spawn under the quota: %d %s", code, body)
	}
	code, body, _ := e.call(e.a.control, "POST", "/spawn", demoBody(""))
	if code != 503 || !strings.Contains(body, "exceeded quota") {
		t.Fatalf("spawn beyond the quota: %d %s, want 503 naming the quota", code, body)
	}
	t.Logf("beyond the quota: %d %s", code, strings.TrimSpace(body))
}
