package reconciler

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

// NonRootUID is the uid (and gid) backend containers run as when their
// template says nothing about security, and the uid the sidecar always runs
// as: 65532, distroless's "nonroot", the USER of every image
// scripts/imagebuilder builds. A numeric uid lets the kubelet check
// runAsNonRoot without reading the image's /etc/passwd, and runs an image
// whose USER is root (or unset) as non-root instead of refusing to start it.
const NonRootUID int64 = 65532

// restrictedContainerContext is the container securityContext of the
// Kubernetes "restricted" Pod Security Standard: non-root with a numeric
// uid, no privilege escalation, no capabilities, the runtime's default
// seccomp profile.
func restrictedContainerContext() *corev1.SecurityContext {
	uid := NonRootUID
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptrTo(true),
		RunAsUser:                &uid,
		RunAsGroup:               &uid,
		AllowPrivilegeEscalation: ptrTo(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// sidecarSecurityContext is the sidecar's: restricted, and a read-only root
// filesystem (the sidecar writes no file; it only proxies and counts).
func sidecarSecurityContext() *corev1.SecurityContext {
	sc := restrictedContainerContext()
	sc.ReadOnlyRootFilesystem = ptrTo(true)
	return sc
}

// applyRestrictedDefaults gives a backend pod template (its pod
// securityContext and its container lists) that says nothing
// about security the restricted Pod Security Standard, so that a plain
// {"image": ...} spawn is admitted into a namespace that enforces
// `restricted` (deploy/ labels spawner-backends so) and runs even when its
// image's USER is root:
//
//   - a template with no pod securityContext and no container
//     securityContext gets the pod-level restricted fields (runAsNonRoot,
//     RuntimeDefault seccomp);
//   - every container (and init container) without a securityContext gets
//     restrictedContainerContext.
//
// Whatever the template wrote is kept as written: a template that needs
// more (a uid of its own, a capability, privileged) says so, and the
// namespace's policy decides. Apps get no read-only root filesystem by
// default: restricted does not ask for it, and common images write under /
// (nginx's /var/cache/nginx, Python's __pycache__, anything using /tmp
// without an emptyDir), so it would break ordinary images for little gain
// once the process is non-root without capabilities.
func applyRestrictedDefaults(podContext **corev1.PodSecurityContext, containerLists ...[]corev1.Container) {
	said := *podContext != nil
	for _, cs := range containerLists {
		for i := range cs {
			if cs[i].SecurityContext != nil && cs[i].Name != spawnerv1.SidecarContainerName {
				said = true
			}
		}
	}
	if !said {
		*podContext = &corev1.PodSecurityContext{
			RunAsNonRoot:   ptrTo(true),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}
	}
	for _, cs := range containerLists {
		for i := range cs {
			if cs[i].SecurityContext == nil {
				cs[i].SecurityContext = restrictedContainerContext()
			}
		}
	}
}

// AppResources are the requests and limits the app container (the first)
// gets when its template sets none at all, so that one backend cannot take
// a node's memory or CPU. Zero quantities are left out.
type AppResources struct {
	CPURequest, MemoryRequest, CPULimit, MemoryLimit resource.Quantity
}

// applyAppResourceDefaults sets d on the app container when it has neither
// requests nor limits; a template (or a spawn's "resources") that sets any
// is kept as written.
func applyAppResourceDefaults(pod *corev1.Pod, d AppResources) {
	if len(pod.Spec.Containers) == 0 {
		return
	}
	app := &pod.Spec.Containers[0]
	if len(app.Resources.Requests) > 0 || len(app.Resources.Limits) > 0 {
		return
	}
	put := func(l *corev1.ResourceList, name corev1.ResourceName, q resource.Quantity) {
		if q.IsZero() {
			return
		}
		if *l == nil {
			*l = corev1.ResourceList{}
		}
		(*l)[name] = q
	}
	put(&app.Resources.Requests, corev1.ResourceCPU, d.CPURequest)
	put(&app.Resources.Requests, corev1.ResourceMemory, d.MemoryRequest)
	put(&app.Resources.Limits, corev1.ResourceCPU, d.CPULimit)
	put(&app.Resources.Limits, corev1.ResourceMemory, d.MemoryLimit)
}

func ptrTo[T any](v T) *T { return &v }

// rejectedByPodSecurity reports whether a pod create failed because the
// namespace's Pod Security admission forbids the pod (403, "violates
// PodSecurity"), as opposed to a quota, which may free up.
func rejectedByPodSecurity(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "violates PodSecurity")
}
