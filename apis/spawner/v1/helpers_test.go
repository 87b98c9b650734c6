package v1

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func validSpec() SessionLivedBackendSpec {
	return SessionLivedBackendSpec{Template: BackendPodTemplate{
		Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}},
	}}
}

func TestDefaultsApplyWhenFieldsAreUnset(t *testing.T) {
	spec := validSpec()
	if got := spec.EffectiveHTTPPort(); got != 8080 {
		t.Errorf("EffectiveHTTPPort() = %d, want 8080", got)
	}
	if got := spec.GracePeriod(); got != 300*time.Second {
		t.Errorf("GracePeriod() = %v, want 5m", got)
	}
	if _, ok := spec.MaxLifetime(); ok {
		t.Error("MaxLifetime() reports a limit on a spec without one")
	}
}

func TestSetFieldsOverrideDefaults(t *testing.T) {
	grace, lifetime := int64(0), int64(60)
	spec := validSpec()
	spec.HTTPPort, spec.GracePeriodSeconds, spec.MaxLifetimeSeconds = 3000, &grace, &lifetime
	if got := spec.EffectiveHTTPPort(); got != 3000 {
		t.Errorf("EffectiveHTTPPort() = %d, want 3000", got)
	}
	if got := spec.GracePeriod(); got != 0 {
		t.Errorf("GracePeriod() = %v, want 0 (an explicit zero is not the default)", got)
	}
	if got, ok := spec.MaxLifetime(); !ok || got != time.Minute {
		t.Errorf("MaxLifetime() = %v, %v; want 1m, true", got, ok)
	}
}

func TestValidateSpecAcceptsTheOriginalSpawnerShape(t *testing.T) {
	grace := int64(300)
	spec := validSpec()
	spec.HTTPPort, spec.GracePeriodSeconds = 8080, &grace
	if errs := ValidateSpec(&spec, field.NewPath("spec")); len(errs) != 0 {
		t.Fatalf("ValidateSpec() = %v, want no errors", errs)
	}
}

func TestValidateSpecNamesTheBadField(t *testing.T) {
	negative := int64(-1)
	cases := map[string]struct {
		mutate    func(*SessionLivedBackendSpec)
		wantField string
	}{
		"port too high":           {func(s *SessionLivedBackendSpec) { s.HTTPPort = 70000 }, "spec.httpPort"},
		"negative port":           {func(s *SessionLivedBackendSpec) { s.HTTPPort = -1 }, "spec.httpPort"},
		"sidecar public port":     {func(s *SessionLivedBackendSpec) { s.HTTPPort = SidecarServePort }, "spec.httpPort"},
		"sidecar status port":     {func(s *SessionLivedBackendSpec) { s.HTTPPort = SidecarStatusPort }, "spec.httpPort"},
		"negative grace":          {func(s *SessionLivedBackendSpec) { s.GracePeriodSeconds = &negative }, "spec.gracePeriodSeconds"},
		"negative lifetime":       {func(s *SessionLivedBackendSpec) { s.MaxLifetimeSeconds = &negative }, "spec.maxLifetimeSeconds"},
		"key too long":            {func(s *SessionLivedBackendSpec) { s.Key = strings.Repeat("k", 254) }, "spec.key"},
		"no containers":           {func(s *SessionLivedBackendSpec) { s.Template.Containers = nil }, "spec.template.containers"},
		"container without image": {func(s *SessionLivedBackendSpec) { s.Template.Containers[0].Image = "" }, "spec.template.containers[0].image"},
		"container without name":  {func(s *SessionLivedBackendSpec) { s.Template.Containers[0].Name = "" }, "spec.template.containers[0].name"},
		"sidecar's name taken":    {func(s *SessionLivedBackendSpec) { s.Template.Containers[0].Name = SidecarContainerName }, "spec.template.containers[0].name"},
		"duplicate names": {func(s *SessionLivedBackendSpec) {
			s.Template.Containers = append(s.Template.Containers, corev1.Container{Name: "app", Image: "x"})
		}, "spec.template.containers[1].name"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			spec := validSpec()
			tc.mutate(&spec)
			errs := ValidateSpec(&spec, field.NewPath("spec"))
			if len(errs) != 1 {
				t.Fatalf("ValidateSpec() = %v, want exactly one error", errs)
			}
			if errs[0].Field != tc.wantField {
				t.Errorf("error names field %q, want %q", errs[0].Field, tc.wantField)
			}
		})
	}
}

func TestValidateSpecIdlePolicy(t *testing.T) {
	base := SessionLivedBackendSpec{Template: BackendPodTemplate{Containers: []corev1.Container{{Name: "app", Image: "x"}}}}
	for _, tc := range []struct {
		ws int32
		ok bool
	}{{0, true}, {30, true}, {MaxWSIdleSeconds, true}, {-1, false}, {MaxWSIdleSeconds + 1, false}} {
		spec := base
		spec.IdlePolicy = &IdlePolicy{WSIdleSeconds: tc.ws}
		errs := ValidateSpec(&spec, field.NewPath("spec"))
		if (len(errs) == 0) != tc.ok {
			t.Errorf("wsIdleSeconds %d: errors %v, want ok=%v", tc.ws, errs, tc.ok)
		}
		if !tc.ok && !strings.Contains(errs.ToAggregate().Error(), "spec.idlePolicy.wsIdleSeconds") {
			t.Errorf("error does not name the field: %v", errs)
		}
	}
	off := false
	spec := base
	if !spec.CountsRequests() || spec.WSIdle() != 0 {
		t.Error("defaults: requests count, no WebSocket idle rule")
	}
	spec.IdlePolicy = &IdlePolicy{WSIdleSeconds: 7, CountRequests: &off}
	if spec.CountsRequests() || spec.WSIdle() != 7*time.Second {
		t.Errorf("policy not read: %v %v", spec.CountsRequests(), spec.WSIdle())
	}
}

// TestHoldsPod: a slab holds a pod controlled by it and labelled with its
// name; a warm pod it merely names (its claim's take not done, or lost), a
// pod its take controls before its claim hook labelled it, and a pod of
// another slab of the same name (another UID) are not its.
func TestHoldsPod(t *testing.T) {
	slab := &SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: "b", UID: "uid-b"}}
	slab.Annotations = map[string]string{AnnotationPool: "rooms", AnnotationPod: "rooms-x"}
	pod := func(owner metav1.Object, kind, label string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rooms-x", Labels: map[string]string{LabelPool: "rooms"}}}
		if label != "" {
			p.Labels[LabelBackend] = label
		}
		p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(owner, SchemeGroupVersion.WithKind(kind))}
		return p
	}
	pool := &BackendPool{ObjectMeta: metav1.ObjectMeta{Name: "rooms", UID: "uid-pool"}}
	older := &SessionLivedBackend{ObjectMeta: metav1.ObjectMeta{Name: "b", UID: "uid-older"}}
	for name, tc := range map[string]struct {
		pod  *corev1.Pod
		want bool
	}{
		"taken":                 {pod(slab, "SessionLivedBackend", "b"), true},
		"still the pool's":      {pod(pool, "BackendPool", ""), false},
		"taken, hook pending":   {pod(slab, "SessionLivedBackend", ""), false},
		"an older slab's":       {pod(older, "SessionLivedBackend", "b"), false},
		"labelled, not owned":   {pod(pool, "BackendPool", "b"), false},
		"no pod (not in cache)": {nil, false},
	} {
		if got := HoldsPod(slab, tc.pod); got != tc.want {
			t.Errorf("%s: HoldsPod %v, want %v", name, got, tc.want)
		}
	}
}
