package v1

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// EffectiveHTTPPort is spec.httpPort with the API server's default applied,
// for objects that never went through the API server (tests, dry runs).
func (s *SessionLivedBackendSpec) EffectiveHTTPPort() int32 {
	if s.HTTPPort == 0 {
		return DefaultHTTPPort
	}
	return s.HTTPPort
}

// GracePeriod is how long an idle backend is kept, with the default applied.
func (s *SessionLivedBackendSpec) GracePeriod() time.Duration {
	if s.GracePeriodSeconds == nil {
		return time.Duration(DefaultGracePeriodSeconds) * time.Second
	}
	return time.Duration(*s.GracePeriodSeconds) * time.Second
}

// MaxLifetime is the hard lifetime limit, and false when there is none.
func (s *SessionLivedBackendSpec) MaxLifetime() (time.Duration, bool) {
	if s.MaxLifetimeSeconds == nil {
		return 0, false
	}
	return time.Duration(*s.MaxLifetimeSeconds) * time.Second, true
}

// MaxWSIdleSeconds bounds spec.idlePolicy.wsIdleSeconds (a day).
const MaxWSIdleSeconds = 86400

// WSIdle is idlePolicy.wsIdleSeconds as a duration; 0 means any open
// WebSocket counts.
func (s *SessionLivedBackendSpec) WSIdle() time.Duration {
	if s.IdlePolicy == nil {
		return 0
	}
	return time.Duration(s.IdlePolicy.WSIdleSeconds) * time.Second
}

// CountsRequests says whether in-flight requests keep the backend alive
// (idlePolicy.countRequests, default true).
func (s *SessionLivedBackendSpec) CountsRequests() bool {
	return s.IdlePolicy == nil || s.IdlePolicy.CountRequests == nil || *s.IdlePolicy.CountRequests
}

// ValidateSpec checks what the CRD schema also checks, plus what a schema
// cannot say (ports the sidecar needs, unique container names). Clients such
// as the api-server call it to reject bad input before anything is created.
func ValidateSpec(spec *SessionLivedBackendSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if spec.HTTPPort != 0 && (spec.HTTPPort < 1 || spec.HTTPPort > 65535) {
		errs = append(errs, field.Invalid(path.Child("httpPort"), spec.HTTPPort, "must be between 1 and 65535"))
	}
	port := spec.EffectiveHTTPPort()
	if port == SidecarServePort || port == SidecarStatusPort {
		errs = append(errs, field.Invalid(path.Child("httpPort"), port,
			fmt.Sprintf("ports %d and %d belong to the spawner sidecar", SidecarServePort, SidecarStatusPort)))
	}
	if spec.GracePeriodSeconds != nil && *spec.GracePeriodSeconds < 0 {
		errs = append(errs, field.Invalid(path.Child("gracePeriodSeconds"), *spec.GracePeriodSeconds, "must not be negative"))
	}
	if spec.MaxLifetimeSeconds != nil && *spec.MaxLifetimeSeconds < 0 {
		errs = append(errs, field.Invalid(path.Child("maxLifetimeSeconds"), *spec.MaxLifetimeSeconds, "must not be negative"))
	}
	if p := spec.IdlePolicy; p != nil && (p.WSIdleSeconds < 0 || p.WSIdleSeconds > MaxWSIdleSeconds) {
		errs = append(errs, field.Invalid(path.Child("idlePolicy", "wsIdleSeconds"), p.WSIdleSeconds,
			fmt.Sprintf("must be between 0 (any open WebSocket counts) and %d", MaxWSIdleSeconds)))
	}
	if len(spec.Key) > 253 {
		errs = append(errs, field.TooLong(path.Child("key"), "", 253))
	}
	containers := path.Child("template", "containers")
	if len(spec.Template.Containers) == 0 {
		errs = append(errs, field.Required(containers, "at least one container (the application) is required"))
	}
	seen := map[string]bool{}
	for i, c := range spec.Template.Containers {
		switch {
		case c.Name == "":
			errs = append(errs, field.Required(containers.Index(i).Child("name"), ""))
		case c.Name == SidecarContainerName:
			errs = append(errs, field.Invalid(containers.Index(i).Child("name"), c.Name, "is reserved for the spawner sidecar"))
		case seen[c.Name]:
			errs = append(errs, field.Duplicate(containers.Index(i).Child("name"), c.Name))
		}
		seen[c.Name] = true
		if c.Image == "" {
			errs = append(errs, field.Required(containers.Index(i).Child("image"), ""))
		}
	}
	return errs
}

// PodNameOf is the name of the slab's pod: the warm pod it claimed
// (AnnotationPod), else its own name. ok is false while a claim from a pool
// is not bound yet (AnnotationPool without AnnotationPod): the slab has no
// pod, and nobody may create one for it (docs/pools.md). A slab from a pool
// may be created bound to the warm pod its claim is about to take: it is
// that pod's backend only once it holds it (HoldsPod).
func PodNameOf(slab *SessionLivedBackend) (name string, ok bool) {
	if p := slab.Annotations[AnnotationPod]; p != "" {
		return p, true
	}
	if slab.Annotations[AnnotationPool] != "" {
		return "", false
	}
	return slab.Name, true
}

// HoldsPod reports whether pod is slab's: controlled by it and labelled with
// its name. A claim's take sets both on a warm pod (with a claim hook, the
// label once the hook took the session); before that the pod is its pool's,
// or another slab's, whatever the slab's AnnotationPod says.
func HoldsPod(slab *SessionLivedBackend, pod *corev1.Pod) bool {
	return pod != nil && pod.Labels[LabelBackend] == slab.Name && metav1.IsControlledBy(pod, slab)
}
