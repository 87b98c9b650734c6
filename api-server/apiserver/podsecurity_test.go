package apiserver

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// labelNamespace creates or relabels the backend namespace and waits until
// the api-server's cache has the labels.
func (e *testEnv) labelNamespace(labels map[string]string) {
	e.t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS, Labels: labels}}
	if _, err := e.kube.CoreV1().Namespaces().Get(ctx, testNS, metav1.GetOptions{}); err == nil {
		_, err = e.kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
	} else if _, err := e.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.eventually(func() bool {
		obj, ok, _ := e.s.psa.informer.GetIndexer().GetByKey(testNS)
		if !ok {
			return false
		}
		got := obj.(*corev1.Namespace).Labels
		return got[enforceLabel] == labels[enforceLabel]
	})
}

const enforceLabel = "pod-security.kubernetes.io/enforce"

// TestSpawnCheckedAgainstPodSecurity: a spawn whose pod the namespace's
// enforced level would refuse is a 422 naming the level and the reasons,
// and nothing is created; a plain spawn (restricted defaults) is admitted
// under restricted; what baseline allows (root) passes under baseline.
func TestSpawnCheckedAgainstPodSecurity(t *testing.T) {
	e := newTestEnvConfig(t, "", func(c *Config) { c.CheckPodSecurity = true })
	e.labelNamespace(map[string]string{enforceLabel: "restricted", enforceLabel + "-version": "latest"})
	created := func() int {
		l, err := e.slabs.SpawnerV1().SessionLivedBackends(testNS).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}

	if resp := e.do("POST", "/spawn", `{"image":"demo:1"}`); resp.StatusCode != 201 {
		t.Fatalf("plain spawn under restricted: %d %s", resp.StatusCode, readBody(t, resp))
	}
	for body, says := range map[string][]string{
		`{"image":"demo:1","securityContext":{"privileged":true}}`:                    {`violates PodSecurity "restricted:latest"`, "privileged (container \"app\" must not set securityContext.privileged=true)"},
		`{"image":"demo:1","securityContext":{"runAsUser":0}}`:                        {"runAsNonRoot != true", "runAsUser=0"},
		`{"image":"demo:1","securityContext":{"capabilities":{"add":["NET_ADMIN"]}}}`: {"unrestricted capabilities"},
	} {
		resp := e.do("POST", "/spawn", body)
		msg := jsonError(readBody(t, resp))
		if resp.StatusCode != 422 || !strings.Contains(msg, "namespace "+testNS) {
			t.Errorf("%s: %d %q, want 422 naming the namespace's policy", body, resp.StatusCode, msg)
		}
		for _, s := range says {
			if !strings.Contains(msg, s) {
				t.Errorf("%s: %q does not say %q", body, msg, s)
			}
		}
	}
	if n := created(); n != 1 {
		t.Errorf("%d backends created, want only the plain one", n)
	}

	// Baseline: root is allowed, privileged is not.
	e.labelNamespace(map[string]string{enforceLabel: "baseline"})
	if resp := e.do("POST", "/spawn", `{"image":"demo:1","securityContext":{"runAsUser":0}}`); resp.StatusCode != 201 {
		t.Errorf("root under baseline: %d %s", resp.StatusCode, readBody(t, resp))
	}
	resp := e.do("POST", "/spawn", `{"image":"demo:1","securityContext":{"privileged":true}}`)
	if msg := jsonError(readBody(t, resp)); resp.StatusCode != 422 || !strings.Contains(msg, `"baseline:latest"`) {
		t.Errorf("privileged under baseline: %d %q", resp.StatusCode, msg)
	}
	// No enforce label: nothing to check (the admission plugin's default, privileged).
	e.labelNamespace(map[string]string{})
	if resp := e.do("POST", "/spawn", `{"image":"demo:1","securityContext":{"privileged":true}}`); resp.StatusCode != 201 {
		t.Errorf("privileged without a policy: %d %s", resp.StatusCode, readBody(t, resp))
	}
	if n := created(); n != 3 {
		t.Errorf("%d backends created, want 3", n)
	}
}

// TestPodSecurityCheckOff: with --check-pod-security=false nothing is
// evaluated; the namespace's admission (and the controller) decide later.
func TestPodSecurityCheckOff(t *testing.T) {
	e := newTestEnv(t, "")
	if e.s.psa != nil {
		t.Fatal("check on without the flag")
	}
	if resp := e.do("POST", "/spawn", `{"image":"demo:1","securityContext":{"privileged":true}}`); resp.StatusCode != 201 {
		t.Errorf("%d %s", resp.StatusCode, readBody(t, resp))
	}
}
