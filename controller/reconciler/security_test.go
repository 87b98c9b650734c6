package reconciler

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"k8s.io/utils/ptr"

	"spawner.dev/apis/lifecycle"
)

// restrictedViolations evaluates a pod against the `restricted` Pod Security
// Standard with the very code the API server's admission plugin runs.
func restrictedViolations(t *testing.T, pod *corev1.Pod) []string {
	t.Helper()
	ev, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	lv := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	var out []string
	for _, r := range ev.EvaluatePod(lv, &pod.ObjectMeta, &pod.Spec) {
		if !r.Allowed {
			out = append(out, r.ForbiddenReason+": "+r.ForbiddenDetail)
		}
	}
	return out
}

// plainSlab is what POST /spawn {"image": ...} creates: one app container,
// nothing about security or resources.
func plainSlab() *corev1.Pod {
	slab := testSlab("plain")
	slab.Spec.Template.Containers = []corev1.Container{{Name: "app", Image: "example/root-image:1"}}
	pod := BuildPod(slab, testSidecar)
	return pod
}

func TestPlainTemplateGetsRestrictedDefaults(t *testing.T) {
	pod := plainSlab()
	if v := restrictedViolations(t, pod); len(v) > 0 {
		t.Fatalf("a plain spawn violates restricted: %v", v)
	}
	psc := pod.Spec.SecurityContext
	if psc == nil || !ptr.Deref(psc.RunAsNonRoot, false) || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v, want runAsNonRoot and RuntimeDefault seccomp", psc)
	}
	app := pod.Spec.Containers[0].SecurityContext
	// A root image (USER unset) runs, as uid 65532, instead of failing the kubelet's runAsNonRoot check.
	if app == nil || ptr.Deref(app.RunAsUser, 0) != NonRootUID || ptr.Deref(app.AllowPrivilegeEscalation, true) ||
		len(app.Capabilities.Drop) != 1 || app.Capabilities.Drop[0] != "ALL" {
		t.Errorf("app securityContext %+v", app)
	}
	if app.ReadOnlyRootFilesystem != nil {
		t.Errorf("app got readOnlyRootFilesystem %v; apps keep a writable root by default", *app.ReadOnlyRootFilesystem)
	}
}

func TestSidecarIsRestrictedAndReadOnly(t *testing.T) {
	pod := plainSlab()
	sc := pod.Spec.Containers[len(pod.Spec.Containers)-1]
	if sc.Name != "spawner-sidecar" {
		t.Fatalf("last container %q", sc.Name)
	}
	s := sc.SecurityContext
	if s == nil || !ptr.Deref(s.RunAsNonRoot, false) || ptr.Deref(s.RunAsUser, 0) != NonRootUID ||
		ptr.Deref(s.AllowPrivilegeEscalation, true) || s.Capabilities == nil || len(s.Capabilities.Drop) != 1 || s.Capabilities.Drop[0] != "ALL" ||
		s.SeccompProfile == nil || s.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || !ptr.Deref(s.ReadOnlyRootFilesystem, false) {
		t.Errorf("sidecar securityContext %+v, want the full restricted context with a read-only root", s)
	}
	// Restricted even when the app's template relaxes its own context.
	slab := testSlab("own")
	slab.Spec.Template.Containers = []corev1.Container{{Name: "app", Image: "a", SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}
	for _, v := range restrictedViolations(t, BuildPod(slab, testSidecar)) {
		if strings.Contains(v, "spawner-sidecar") {
			t.Errorf("the sidecar violates restricted: %s", v)
		}
	}
}

func TestTemplateContextKeptAsWritten(t *testing.T) {
	slab := testSlab("own")
	own := &corev1.SecurityContext{Privileged: ptr.To(true)}
	slab.Spec.Template.Containers = []corev1.Container{{Name: "app", Image: "a", SecurityContext: own}, {Name: "helper", Image: "h"}}
	pod := BuildPod(slab, testSidecar)
	if pod.Spec.SecurityContext != nil {
		t.Errorf("pod securityContext %+v added to a template that wrote its own container context", pod.Spec.SecurityContext)
	}
	if got := pod.Spec.Containers[0].SecurityContext; got == nil || !ptr.Deref(got.Privileged, false) || got.RunAsNonRoot != nil {
		t.Errorf("app context %+v, want exactly the template's", got)
	}
	if got := pod.Spec.Containers[1].SecurityContext; got == nil || ptr.Deref(got.RunAsUser, 0) != NonRootUID {
		t.Errorf("helper without a context got %+v, want the restricted defaults", got)
	}
	if v := restrictedViolations(t, pod); len(v) == 0 {
		t.Error("a privileged template passes restricted")
	}

	slab = testSlab("podlevel")
	slab.Spec.Template.Containers = []corev1.Container{{Name: "app", Image: "a"}}
	slab.Spec.Template.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), FSGroup: ptr.To[int64](1000)}
	pod = BuildPod(slab, testSidecar)
	if got := pod.Spec.SecurityContext; ptr.Deref(got.RunAsUser, 0) != 1000 || got.RunAsNonRoot != nil || got.SeccompProfile != nil {
		t.Errorf("pod context %+v, want the template's as written", got)
	}
}

func TestAppResourceDefaults(t *testing.T) {
	d := AppResources{CPURequest: resource.MustParse("5m"), MemoryRequest: resource.MustParse("32Mi"), MemoryLimit: resource.MustParse("512Mi")}
	pod := plainSlab()
	applyAppResourceDefaults(pod, d)
	r := pod.Spec.Containers[0].Resources
	if r.Requests.Cpu().String() != "5m" || r.Requests.Memory().String() != "32Mi" || r.Limits.Memory().String() != "512Mi" {
		t.Errorf("app resources %+v", r)
	}
	if _, ok := r.Limits[corev1.ResourceCPU]; ok {
		t.Error("a zero default CPU limit was set")
	}
	if sc := pod.Spec.Containers[len(pod.Spec.Containers)-1].Resources; sc.Limits != nil {
		t.Errorf("the sidecar got limits %v", sc.Limits)
	}

	// A template (or a spawn's "resources") that says anything is kept.
	pod = plainSlab()
	pod.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")}
	applyAppResourceDefaults(pod, d)
	if r := pod.Spec.Containers[0].Resources; r.Requests != nil || r.Limits.Memory().String() != "2Gi" {
		t.Errorf("template resources changed: %+v", r)
	}
}

func TestConfigAppResourceFlags(t *testing.T) {
	c := Config{SidecarImage: "s", SidecarPullPolicy: "IfNotPresent", Workers: 1,
		AppCPURequest: "5m", AppMemoryRequest: "32Mi", AppCPULimit: "1", AppMemoryLimit: "512Mi"}
	o, err := c.Options()
	if err != nil {
		t.Fatal(err)
	}
	if o.AppResources.CPULimit.String() != "1" || o.AppResources.MemoryRequest.String() != "32Mi" {
		t.Errorf("options %+v", o.AppResources)
	}
	c.AppMemoryRequest = "1Gi"
	if _, err := c.Options(); err == nil {
		t.Error("a default request above the default limit was accepted")
	}
	c.AppMemoryRequest = "lots"
	if _, err := c.Options(); err == nil {
		t.Error("an invalid quantity was accepted")
	}
}

func TestRejectedByPodSecurity(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	psa := apierrors.NewForbidden(gr, "b", errors.New(`violates PodSecurity "restricted:latest": privileged (container "app" must not set securityContext.privileged=true)`))
	quota := apierrors.NewForbidden(gr, "b", errors.New("exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"))
	if !rejectedByPodSecurity(psa) || rejectedByPodSecurity(quota) || rejectedByPodSecurity(errors.New("violates PodSecurity")) {
		t.Error("rejectedByPodSecurity misclassifies")
	}
}

// TestPodSecurityRejectionFailsAtOnce: a pod the namespace's Pod Security
// level forbids fails its backend with the reason on the first sync, rather
// than leaving it Pending until the startup timeout; a quota refusal (which
// may free up) is retried.
func TestPodSecurityRejectionFailsAtOnce(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	slab := newSlab()
	f := newFixture(t, slab)
	f.kube.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(gr, "b", errors.New(`violates PodSecurity "restricted:latest": privileged (container "app" must not set securityContext.privileged=true)`))
	})
	f.sync(slab)
	got := f.slab("b")
	if got.Status.Phase != lifecycle.Failed || got.Status.Reason != lifecycle.ReasonInvalidSpec || !strings.Contains(got.Status.Message, "privileged") {
		t.Errorf("status %+v, want Failed/InvalidSpec naming the Pod Security reason", got.Status)
	}

	slab = newSlab()
	f = newFixture(t, slab)
	f.kube.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(gr, "b", errors.New("exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"))
	})
	if _, err := f.c.sync(context.Background(), slab.Namespace+"/"+slab.Name); err == nil {
		t.Error("a quota refusal was not returned for a retry")
	}
	if got := f.slab("b"); got.Status.Phase == lifecycle.Failed {
		t.Errorf("a quota refusal failed the backend: %+v", got.Status)
	}
}
